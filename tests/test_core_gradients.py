"""The engine's numbers: forward, losses, gradients of every truncation mode, chunk updates,
state Jacobians. Every backward is checked in float64 against finite differences or against
the brute-force reference in ``tests/reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import reference as ref
from bptt_cli.core import bptt, losses, model, truncation

KEYS = ref.KEYS
ACTS = ref.ACTIVATIONS
LOSSES = ref.LOSSES

FD_EPS = 1e-6
FD_TOL = 1e-6
# Relative errors use ||a-b|| / max(||a||+||b||, floor). Central differences at eps=1e-6 carry
# ~1e-10 of rounding noise per entry, so a parameter whose true gradient is ~0 (a dead relu
# unit, W_hh when nothing precedes it) is compared with this floor instead of its own norm.
FD_FLOOR = 1e-2
EXACT_TOL = 1e-9  # engine vs reference: same maths, different summation order


def run(p, x, tg, m, spec, act, lk, h0=None, **kw):
    return bptt.loss_and_gradients(p, x, tg, m, spec, activation=act, loss=lk, h0=h0, **kw)


def assert_grads_match(got: dict, want: dict, tol: float = EXACT_TOL, floor: float = 1e-12, what=""):
    assert set(got) == set(KEYS), sorted(got)
    for k in KEYS:
        assert got[k].shape == want[k].shape, (what, k, got[k].shape)
        err = ref.rel_err(got[k], want[k], floor)
        assert err < tol, f"{what}: gradient {k} off, relative error {err:.3e}"


# -- model -----------------------------------------------------------------------------------
def test_init_shapes_dtype_and_seed():
    net = model.RNN.init(3, 5, 2)
    shapes = {"W_xh": (5, 3), "W_hh": (5, 5), "b_h": (5,), "W_hy": (2, 5), "b_y": (2,)}
    assert set(net.params) == set(shapes)
    for k, s in shapes.items():
        assert net.params[k].shape == s, k
        assert net.params[k].dtype == np.float32, k
    assert net.activation == "tanh"
    again = model.RNN.init(3, 5, 2)
    for k in shapes:
        np.testing.assert_array_equal(net.params[k], again.params[k])
    other = model.RNN.init(3, 5, 2, seed=1)
    assert not np.array_equal(net.params["W_hh"], other.params["W_hh"])
    net64 = model.RNN.init(3, 5, 2, activation="relu", dtype=np.float64)
    assert net64.activation == "relu"
    assert all(v.dtype == np.float64 for v in net64.params.values())


@pytest.mark.parametrize("rho", [0.5, 1.0, 1.7])
def test_init_orthogonal_and_identity(rho):
    H = 12
    W = model.RNN.init(2, H, 2, init="orthogonal", spectral_radius=rho, dtype=np.float64).params["W_hh"]
    np.testing.assert_allclose(W.T @ W, rho**2 * np.eye(H), atol=1e-12)
    W = model.RNN.init(2, H, 2, init="identity", spectral_radius=rho, dtype=np.float64).params["W_hh"]
    np.testing.assert_allclose(W, rho * np.eye(H), atol=0)


def test_init_gaussian_std():
    H, rho = 400, 1.3
    W = model.RNN.init(2, H, 2, init="gaussian", spectral_radius=rho, dtype=np.float64).params["W_hh"]
    assert W.std() == pytest.approx(rho / np.sqrt(H), rel=0.02)
    assert abs(W.mean()) < 0.05 * rho / np.sqrt(H)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_h0", [False, True])
def test_forward_matches_reference(act, with_h0):
    rng = np.random.default_rng(1)
    p, x, _, _, h0 = ref.random_problem(rng, 6, 3, 2, 4, 3, "mse", with_h0=with_h0)
    hs, y = model.forward(p, x, activation=act, h0=h0)
    hs_r, _, y_r = ref.forward(p, x, act, h0)
    assert hs.shape == (7, 3, 4) and y.shape == (6, 3, 3)
    np.testing.assert_allclose(hs, hs_r, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(y, y_r, rtol=1e-12, atol=1e-14)


# -- losses ----------------------------------------------------------------------------------
@pytest.mark.parametrize("lk", LOSSES)
def test_losses_value_and_dy(lk):
    rng = np.random.default_rng(2)
    T, B, O = 4, 3, 5
    y = rng.normal(0, 2, (T, B, O))
    tg = rng.integers(0, O, (T, B)) if lk == "cross_entropy" else rng.normal(size=(T, B, O))
    m = (rng.random((T, B)) < 0.5).astype(np.float64)
    m[0, 0] = 1
    fn = losses.cross_entropy if lk == "cross_entropy" else losses.mse

    def plain(yy):
        tot = sum(ref.step_loss(yy[t, b], tg[t, b], lk)[0] for t in range(T) for b in range(B) if m[t, b])
        return tot / m.sum()

    L, dy = fn(y, tg, m)
    assert float(L) == pytest.approx(plain(y), rel=1e-12)
    assert dy.shape == y.shape
    fd = np.zeros_like(y)
    for i in np.ndindex(y.shape):
        yp, ym = y.copy(), y.copy()
        yp[i] += FD_EPS
        ym[i] -= FD_EPS
        fd[i] = (plain(yp) - plain(ym)) / (2 * FD_EPS)
    assert ref.rel_err(dy, fd) < FD_TOL
    assert np.all(dy[m == 0] == 0)


def test_cross_entropy_is_stable_for_large_logits():
    y = np.array([[[1000.0, 0.0, -1000.0]]])
    L, dy = losses.cross_entropy(y, np.array([[1]]), np.ones((1, 1)))
    assert float(L) == pytest.approx(1000.0, rel=1e-12)
    assert np.all(np.isfinite(dy))


# -- finite differences against `full` -------------------------------------------------------
FD_SHAPES = [  # (T, B, I, H, O, density)
    (1, 1, 2, 3, 2, 1.0),
    (5, 1, 3, 4, 3, 0.3),
    (4, 3, 2, 5, 4, 0.5),
    (7, 2, 3, 3, 2, 0.1),
    (6, 2, 1, 4, 3, 0.0),  # a single supervised entry (the adding problem's shape)
]


def _fd_problem(shape, act, lk, seed):
    """A problem whose relu pre-activations stay clear of the kink at 0."""
    T, B, I, H, O, density = shape
    for attempt in range(200):
        rng = np.random.default_rng([seed, attempt])
        prob = ref.random_problem(rng, T, B, I, H, O, lk, density=density, with_h0=bool(seed % 2))
        p, x, _, _, h0 = prob
        _, pre, _ = ref.forward(p, x, act, h0)
        if act != "relu" or np.min(np.abs(pre)) > 1e-3:
            return prob
    pytest.fail("no kink-free relu draw found")


@pytest.mark.parametrize("shape", FD_SHAPES, ids=lambda s: "T{}B{}I{}H{}O{}m{}".format(*s))
@pytest.mark.parametrize("lk", LOSSES)
@pytest.mark.parametrize("act", ACTS)
def test_full_gradient_finite_differences(act, lk, shape):
    p, x, tg, m, h0 = _fd_problem(shape, act, lk, seed=FD_SHAPES.index(shape))
    L, g, _ = run(p, x, tg, m, "full", act, lk, h0)
    assert isinstance(L, float)
    assert L == pytest.approx(ref.loss(p, x, tg, m, act, lk, h0), rel=1e-12)
    for k in KEYS:
        assert g[k].shape == p[k].shape and g[k].dtype == np.float64, k
        fd = np.zeros_like(p[k])
        for i in np.ndindex(p[k].shape):
            q = {kk: v.copy() for kk, v in p.items()}
            q[k][i] += FD_EPS
            lp = ref.loss(q, x, tg, m, act, lk, h0)
            q[k][i] -= 2 * FD_EPS
            lm = ref.loss(q, x, tg, m, act, lk, h0)
            fd[i] = (lp - lm) / (2 * FD_EPS)
        err = ref.rel_err(g[k], fd, FD_FLOOR)
        assert err < FD_TOL, f"{act}/{lk} {shape}: d{k} vs finite differences, rel error {err:.2e}"


# -- every mode against the brute-force reference --------------------------------------------
@st.composite
def specs(draw, T: int) -> str:
    mode = draw(st.sampled_from(["full", "k_truncated", "subsequence", "tbptt"]))
    if mode == "full":
        return "full"
    if mode == "k_truncated":
        return f"k_truncated:{draw(st.integers(0, T + 1))}"
    if mode == "subsequence":
        return f"subsequence:{draw(st.integers(1, T + 1))}"
    k1 = draw(st.integers(1, T + 1))
    return f"tbptt:{k1}:{k1 + draw(st.integers(0, T + 1))}"


@st.composite
def problems(draw, chunky: bool = False):
    T = draw(st.integers(1, 12))
    shape = (T, draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 5)),
             draw(st.integers(2, 4)))
    act = draw(st.sampled_from(ACTS))
    lk = draw(st.sampled_from(LOSSES))
    spec = draw(specs(T))
    density = draw(st.sampled_from([0.15, 0.5, 1.0]))
    with_h0 = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    prob = ref.random_problem(rng, *shape, lk, density=density, with_h0=with_h0)
    return prob, spec, act, lk


@settings(max_examples=400, derandomize=True, deadline=None)
@given(problems())
def test_every_mode_matches_reference(case):
    (p, x, tg, m, h0), spec, act, lk = case
    L, g, h_last = run(p, x, tg, m, spec, act, lk, h0)
    L_r, g_r = ref.gradients(p, x, tg, m, spec, act, lk, h0)
    assert L == pytest.approx(L_r, rel=1e-12)
    assert_grads_match(g, g_r, what=f"{spec} {act} {lk} T={x.shape[0]} B={x.shape[1]}")
    hs_r, _, _ = ref.forward(p, x, act, h0)
    np.testing.assert_allclose(h_last, hs_r[-1], rtol=1e-12, atol=1e-14)


def test_spec_string_and_truncation_object_agree():
    rng = np.random.default_rng(3)
    p, x, tg, m, h0 = ref.random_problem(rng, 8, 2, 3, 4, 3, "cross_entropy")
    for spec in ["full", "k_truncated:2", "subsequence:3", "tbptt:2:5"]:
        L1, g1, h1 = run(p, x, tg, m, spec, "tanh", "cross_entropy")
        L2, g2, h2 = run(p, x, tg, m, truncation.parse(spec), "tanh", "cross_entropy")
        assert L1 == L2
        np.testing.assert_array_equal(h1, h2)
        for k in KEYS:
            np.testing.assert_array_equal(g1[k], g2[k], err_msg=f"{spec} {k}")


def test_truncation_changes_the_gradient():
    """Guard against a test suite that passes because every mode returns `full`."""
    rng = np.random.default_rng(4)
    p, x, tg, m, _ = ref.random_problem(rng, 10, 2, 3, 4, 3, "mse", density=1.0)
    _, g_full, _ = run(p, x, tg, m, "full", "tanh", "mse")
    for spec in ["k_truncated:2", "subsequence:3", "tbptt:3:5"]:
        _, g, _ = run(p, x, tg, m, spec, "tanh", "mse")
        assert ref.rel_err(g["W_hh"], g_full["W_hh"]) > 1e-6, spec
        # The output layer never depends on the window.
        np.testing.assert_allclose(g["W_hy"], g_full["W_hy"], rtol=1e-12)
        np.testing.assert_allclose(g["b_y"], g_full["b_y"], rtol=1e-12)


# -- the identities --------------------------------------------------------------------------
IDENTITY_CASES = [(T, act, lk) for T in (1, 2, 7) for act in ACTS for lk in LOSSES]


@pytest.mark.parametrize("T, act, lk", IDENTITY_CASES)
def test_identities(T, act, lk):
    rng = np.random.default_rng([T, ACTS.index(act), LOSSES.index(lk)])
    p, x, tg, m, h0 = ref.random_problem(rng, T, 3, 2, 4, 3, lk, density=0.6, with_h0=True)

    def grads(spec):
        return run(p, x, tg, m, spec, act, lk, h0)[1]

    full = grads("full")
    for K in (T - 1, T, T + 5):
        if K >= 0:
            assert_grads_match(grads(f"k_truncated:{K}"), full, what=f"k_truncated:{K} vs full")
    for K in (T, T + 1, 3 * T):
        assert_grads_match(grads(f"subsequence:{K}"), full, what=f"subsequence:{K} vs full")
    for K in range(1, T + 2):
        assert_grads_match(grads(f"tbptt:{K}:{K}"), grads(f"subsequence:{K}"), what=f"tbptt:{K}:{K}")
    # tbptt whose K2 reaches back past the start of the sequence is full as well.
    assert_grads_match(grads(f"tbptt:1:{T + 1}"), full, what="tbptt:1:T+1 vs full")


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
def test_k_truncated_zero_keeps_only_local_terms(act, lk):
    rng = np.random.default_rng([5, ACTS.index(act), LOSSES.index(lk)])
    p, x, tg, m, h0 = ref.random_problem(rng, 9, 3, 3, 5, 4, lk, density=0.5, with_h0=True)
    _, g, _ = run(p, x, tg, m, "k_truncated:0", act, lk, h0)
    assert_grads_match(g, ref.k0_gradients(p, x, tg, m, act, lk, h0), what=f"k_truncated:0 {act} {lk}")


# -- chunk updates ---------------------------------------------------------------------------
def _chunked(p, x, tg, m, spec, act, lk, h0, lr):
    """Run the engine's chunk schedule with an in-place SGD step; return what it saw."""
    seen = []

    def on_chunk(index, loss, grads):
        seen.append((index, float(loss), {k: grads[k].copy() for k in KEYS}))
        if lr:
            for k in KEYS:
                p[k] -= lr * grads[k]

    h_last = bptt.chunked_pass(p, x, tg, m, spec, on_chunk, activation=act, loss=lk, h0=h0)
    return seen, h_last


# Big enough that every chunk's update changes the weights visibly, small enough not to diverge.
LR = {"cross_entropy": 0.1, "mse": 0.02}


def _check_chunked_against_replay(p, x, tg, m, spec, act, lk, h0, lr, replay=None):
    p_engine = {k: v.copy() for k, v in p.items()}
    seen, h_last = _chunked(p_engine, x, tg, m, spec, act, lk, h0, lr)
    p_ref, records, h_ref = replay or ref.chunked_replay(p, x, tg, m, spec, act, lk, h0, lr=lr)
    what = f"{spec} {act} {lk} lr={lr}"
    assert [i for i, _, _ in seen] == [i for i, _, _ in records], what
    for (i, L, g), (_, L_r, g_r) in zip(seen, records):
        assert L == pytest.approx(L_r, rel=1e-10), f"{what} chunk {i} loss"
        assert_grads_match(g, g_r, what=f"{what} chunk {i}")
    assert_grads_match(p_engine, p_ref, what=f"{what} final weights")
    np.testing.assert_allclose(h_last, h_ref, rtol=1e-10, atol=1e-13, err_msg=what)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
@pytest.mark.parametrize("spec", ["tbptt:2:5", "tbptt:3:4", "tbptt:1:3"])
def test_tbptt_chunk_updates_match_replay(spec, act, lk):
    rng = np.random.default_rng([6, ACTS.index(act), LOSSES.index(lk)])
    p, x, tg, m, h0 = ref.random_problem(rng, 11, 2, 3, 4, 3, lk, density=0.7, with_h0=True)
    _check_chunked_against_replay(p, x, tg, m, spec, act, lk, h0, lr=LR[lk])


def test_chunk_replay_is_sensitive_to_per_step_weights():
    """Jacobians with the current W_hh give other weights, so the replay test above bites."""
    rng = np.random.default_rng(8)
    p, x, tg, m, h0 = ref.random_problem(rng, 11, 2, 3, 4, 3, "mse", density=0.7, with_h0=True)
    lr = LR["mse"]
    right = ref.chunked_replay(p, x, tg, m, "tbptt:2:5", "tanh", "mse", h0, lr=lr)[0]
    wrong = ref.chunked_replay(p, x, tg, m, "tbptt:2:5", "tanh", "mse", h0, lr=lr,
                               per_step_weights=False)[0]
    assert ref.rel_err(right["W_hh"], wrong["W_hh"]) > 1e-6


@settings(max_examples=100, derandomize=True, deadline=None)
@given(problems(), st.booleans())
def test_chunked_pass_matches_replay_every_mode(case, update):
    (p, x, tg, m, h0), spec, act, lk = case
    lr = LR[lk] if update else 0.0
    replay = ref.chunked_replay(p, x, tg, m, spec, act, lk, h0, lr=lr)
    assume(max(float(np.abs(v).max()) for v in replay[0].values()) < 1e3)  # no runaway draws
    _check_chunked_against_replay(p, x, tg, m, spec, act, lk, h0, lr, replay)


@settings(max_examples=100, derandomize=True, deadline=None)
@given(problems())
def test_chunk_grads_without_updates_sum_to_the_sequence_grad(case):
    (p, x, tg, m, h0), spec, act, lk = case
    T = x.shape[0]
    C = ref.chunk_size(spec, T)
    p_before = {k: v.copy() for k, v in p.items()}
    seen, h_last = _chunked(p, x, tg, m, spec, act, lk, h0, lr=0.0)
    for k in KEYS:
        np.testing.assert_array_equal(p[k], p_before[k])
    L, g, h_seq = run(p, x, tg, m, spec, act, lk, h0)
    N = float(m.sum())
    weights = [float(m[c:c + C].sum()) for c in range(0, T, C)]
    weights = [w for w in weights if w > 0]  # one callback per supervised chunk, in order
    assert len(seen) == len(weights), f"{len(seen)} callbacks for {len(weights)} supervised chunks"
    total = {k: sum(w * gg[k] for w, (_, _, gg) in zip(weights, seen)) / N for k in KEYS}
    assert_grads_match(total, g, what=f"{spec} {act} {lk} sum of chunks")
    assert sum(w * Lc for w, (_, Lc, _) in zip(weights, seen)) / N == pytest.approx(L, rel=1e-10)
    np.testing.assert_allclose(h_last, h_seq, rtol=1e-12, atol=1e-14)


def test_chunks_without_supervision_are_skipped():
    rng = np.random.default_rng(9)
    p, x, tg, m, _ = ref.random_problem(rng, 9, 2, 2, 3, 2, "cross_entropy", density=1.0)
    m[:] = 0
    m[7, 1] = 1  # only chunk 2 of subsequence:3 is supervised
    seen, _ = _chunked(p, x, tg, m, "subsequence:3", "tanh", "cross_entropy", None, lr=0.1)
    assert [i for i, _, _ in seen] == [2]


# -- state Jacobians -------------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.9, 1.0, 1.1])
def test_lecture_claim_spectral_norm_is_rho_to_the_j(rho):
    """Identity activation, W_hh = rho*Q: dh_t/dh_{t-j} = (rho Q)^j, spectral norm rho^j."""
    T, B, H = 60, 2, 8
    net = model.RNN.init(3, H, 2, activation="identity", init="orthogonal", spectral_radius=rho,
                         seed=11, dtype=np.float64)
    x = np.random.default_rng(10).normal(size=(T, B, 3))
    for j in (0, 1, 2, 5, 13, 30, 59):
        J = bptt.state_jacobian(net.params, x, T - 1, j, activation="identity")
        assert J.shape == (B, H, H)
        for b in range(B):
            s = np.linalg.norm(J[b], 2)
            assert s == pytest.approx(rho**j, rel=1e-9), f"rho={rho} j={j}: {s} vs {rho**j}"


@pytest.mark.parametrize("act", ACTS)
def test_state_jacobian_matches_product_of_step_jacobians(act):
    rng = np.random.default_rng(12)
    p, x, _, _, h0 = ref.random_problem(rng, 9, 3, 2, 4, 2, "mse", with_h0=True)
    for t, j in [(8, 0), (8, 1), (8, 4), (5, 5), (3, 2)]:
        J = bptt.state_jacobian(p, x, t, j, activation=act, h0=h0)
        np.testing.assert_allclose(J, ref.jacobian(p, x, t, j, act, h0), rtol=1e-10, atol=1e-14,
                                   err_msg=f"t={t} j={j}")


def test_state_jacobian_column_convention_by_finite_differences():
    """J[b] @ dh_{t-j} = dh_t: perturb h_{t-j} and re-run the later steps."""
    rng = np.random.default_rng(13)
    p, x, _, _, _ = ref.random_problem(rng, 8, 2, 3, 5, 2, "mse")
    t, j = 7, 3
    J = bptt.state_jacobian(p, x, t, j, activation="tanh")
    hs, _, _ = ref.forward(p, x, "tanh")
    start = hs[t - j + 1]  # h_{t-j}
    fd = np.zeros_like(J)
    for i in range(start.shape[1]):
        d = np.zeros_like(start)
        d[:, i] = FD_EPS
        hp = ref.forward(p, x[t - j + 1:t + 1], "tanh", start + d)[0][-1]
        hm = ref.forward(p, x[t - j + 1:t + 1], "tanh", start - d)[0][-1]
        fd[:, :, i] = (hp - hm) / (2 * FD_EPS)
    assert ref.rel_err(J, fd) < FD_TOL


# -- results, buffers, dtypes ----------------------------------------------------------------
def test_h_last_is_forward_last_state():
    rng = np.random.default_rng(14)
    p, x, tg, m, h0 = ref.random_problem(rng, 7, 3, 2, 4, 3, "cross_entropy", with_h0=True)
    hs, _ = model.forward(p, x, activation="relu", h0=h0)
    for spec in ["full", "k_truncated:1", "subsequence:2", "tbptt:2:3"]:
        _, _, h_last = run(p, x, tg, m, spec, "relu", "cross_entropy", h0)
        assert h_last.shape == (3, 4)
        np.testing.assert_allclose(h_last, hs[-1], rtol=1e-13, atol=1e-15)


def test_inputs_are_not_modified():
    rng = np.random.default_rng(15)
    prob = ref.random_problem(rng, 6, 2, 3, 4, 3, "mse", with_h0=True)
    p, x, tg, m, h0 = prob
    saved = [{k: v.copy() for k, v in p.items()}, x.copy(), tg.copy(), m.copy(), h0.copy()]
    run(p, x, tg, m, "tbptt:2:4", "tanh", "mse", h0)
    for k in KEYS:
        np.testing.assert_array_equal(p[k], saved[0][k])
    for a, b in zip((x, tg, m, h0), saved[1:]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("use_workspace", [True, False])
@pytest.mark.parametrize("spec", ["full", "k_truncated:3", "subsequence:4", "tbptt:2:5"])
def test_returned_grads_survive_later_calls(spec, use_workspace):
    rng = np.random.default_rng(16)
    p, x, tg, m, _ = ref.random_problem(rng, 10, 4, 3, 6, 3, "cross_entropy", density=0.6)
    _, x2, tg2, m2, _ = ref.random_problem(rng, 10, 4, 3, 6, 3, "cross_entropy", density=0.6)
    kw = {"workspace": bptt.Workspace()} if use_workspace else {}
    L1, g1, h1 = run(p, x, tg, m, spec, "tanh", "cross_entropy", **kw)
    kept = ({k: v.copy() for k, v in g1.items()}, h1.copy())
    L2, g2, h2 = run(p, x2, tg2, m2, spec, "tanh", "cross_entropy", **kw)
    for k in KEYS:
        np.testing.assert_array_equal(g1[k], kept[0][k], err_msg=f"{k} overwritten by a later call")
        assert not np.shares_memory(g1[k], g2[k]), k
    np.testing.assert_array_equal(h1, kept[1])
    # And the workspace does not change the answer.
    L3, g3, _ = run(p, x2, tg2, m2, spec, "tanh", "cross_entropy")
    assert L2 == pytest.approx(L3, rel=1e-14)
    assert_grads_match(g2, g3, tol=1e-13, what="with vs without workspace")
    assert_grads_match(g1, ref.gradients(p, x, tg, m, spec, "tanh", "cross_entropy")[1], what=spec)


def test_workspace_reused_across_shapes():
    ws = bptt.Workspace()
    rng = np.random.default_rng(17)
    for T, B in [(5, 2), (9, 3), (5, 2), (1, 1)]:
        p, x, tg, m, _ = ref.random_problem(rng, T, B, 2, 3, 2, "mse")
        _, g, _ = run(p, x, tg, m, "k_truncated:2", "tanh", "mse", workspace=ws)
        assert_grads_match(g, ref.gradients(p, x, tg, m, "k_truncated:2", "tanh", "mse")[1],
                           what=f"T={T} B={B}")


@pytest.mark.parametrize("spec", ["subsequence:4", "tbptt:4:6", "tbptt:4:9", "k_truncated:3"])
@pytest.mark.parametrize("lengths", [(10, 9), (11, 9), (9, 10), (12, 10, 9, 11)], ids=str)
def test_workspace_reused_across_sequence_lengths(spec, lengths):
    """Same B and H, different T: buffers padded to a whole number of chunks may be reused, and
    what a longer sequence left in them must not leak into a shorter one."""
    ws = bptt.Workspace()
    rng = np.random.default_rng(19)
    for T in lengths:
        p, x, tg, m, h0 = ref.random_problem(rng, T, 2, 3, 4, 3, "mse", density=1.0, with_h0=True)
        _, g, _ = run(p, x, tg, m, spec, "tanh", "mse", h0, workspace=ws)
        _, g_r = ref.gradients(p, x, tg, m, spec, "tanh", "mse", h0)
        assert_grads_match(g, g_r, what=f"{spec} T={T} after T in {lengths}")


def test_non_contiguous_inputs():
    rng = np.random.default_rng(20)
    p, x, tg, m, h0 = ref.random_problem(rng, 7, 3, 4, 5, 3, "mse", with_h0=True)
    wide = np.zeros((7, 6, 8))
    wide[:, ::2, ::2] = x
    strided = wide[:, ::2, ::2]  # same values, non-contiguous
    pf = {k: np.asfortranarray(v) for k, v in p.items()}
    _, g, h = run(pf, strided, np.asfortranarray(tg), m.T.copy().T, "tbptt:2:3", "tanh", "mse", h0.T.copy().T)
    _, g_r = ref.gradients(p, x, tg, m, "tbptt:2:3", "tanh", "mse", h0)
    assert_grads_match(g, g_r, what="non-contiguous inputs")


@pytest.mark.parametrize("spec", ["full", "k_truncated:4", "tbptt:3:6"])
@pytest.mark.parametrize("lk", LOSSES)
def test_float32_path(spec, lk):
    rng = np.random.default_rng(18)
    p, x, tg, m, h0 = ref.random_problem(rng, 20, 4, 3, 16, 5, lk, density=0.5, with_h0=True)
    L64, g64, _ = run(p, x, tg, m, spec, "tanh", lk, h0)
    f32 = lambda a: a.astype(np.float32)  # noqa: E731
    p32 = {k: f32(v) for k, v in p.items()}
    tg32 = tg if lk == "cross_entropy" else f32(tg)
    L32, g32, h32 = run(p32, f32(x), tg32, f32(m), spec, "tanh", lk, f32(h0))
    assert h32.dtype == np.float32
    assert L32 == pytest.approx(L64, rel=1e-5)
    for k in KEYS:
        assert g32[k].dtype == np.float32, k
        assert ref.rel_err(g32[k], g64[k], 1e-3) < 1e-4, k
    hs, y = model.forward(p32, f32(x), activation="tanh", h0=f32(h0))
    assert hs.dtype == np.float32 and y.dtype == np.float32
