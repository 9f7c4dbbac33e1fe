"""Randomised and adaptive truncation (issue 11): the engine against the brute force for a
given draw, unbiasedness as a statistic, the adaptive choice of K in closed form, and the
specs' grammar."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt_cli.core import adaptive, bptt
from bptt_cli.core.bptt import Workspace, chunked_pass, loss_and_gradients
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.truncation import VALID_FORMS, parse

KEYS = ref.KEYS
HYP = settings(max_examples=150, derandomize=True, deadline=None)
RANDOM_SPECS = ("random_k:1", "random_k:2.5", "artbp:1.5", "artbp:4")


def _given(spec, p, x, tg, m, draw, act, lk, h0):
    tr = parse(spec)
    if tr.mode == "random_k":
        return ref.random_k_given(p, x, tg, m, tr.mean, draw, act, lk, h0)
    return ref.artbp_given(p, x, tg, m, tr.mean, draw, act, lk, h0)


# -- the fast paths against the brute force, for a fixed draw --------------------------------
CASES = [(1, 1), (1, 3), (2, 1), (7, 2), (13, 1), (24, 3)]  # (T, B): T = 1 and B = 1 included


@pytest.mark.parametrize("spec", RANDOM_SPECS)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("lk", ref.LOSSES)
def test_random_modes_match_the_brute_force_for_a_given_draw(spec, act, lk):
    tr = parse(spec)
    for i, (T, B) in enumerate(CASES):
        rng = np.random.default_rng([i, len(spec), len(act), len(lk)])
        p, x, tg, m, h0 = ref.random_problem(rng, T, B, 3, 4, 3, lk, with_h0=i % 2 == 0)
        draw = tr.draw(T, np.random.default_rng(100 + i))  # the engine draws first thing from its rng
        loss, grads, h_last = loss_and_gradients(p, x, tg, m, spec, activation=act, loss=lk, h0=h0,
                                                 rng=np.random.default_rng(100 + i))
        want_loss, want = _given(spec, p, x, tg, m, draw, act, lk, h0)
        assert loss == pytest.approx(want_loss, rel=1e-12)
        for k in KEYS:
            assert ref.rel_err(grads[k], want[k]) < 1e-10, f"{spec} {act} {lk} T={T} B={B}: {k}"
        hs, _, _ = ref.forward(p, x, act, h0)
        np.testing.assert_allclose(h_last, hs[-1], rtol=1e-12, atol=1e-14)


def test_random_k_draws_every_window_length_and_caps_it_at_t():
    """The draw the check above relies on is not degenerate: long and short windows, L_t <= t."""
    L = parse("random_k:3").draw(400, np.random.default_rng(0))
    assert L.dtype == np.int64 and L.shape == (400,)
    assert (L <= np.arange(400)).all() and L[0] == 0
    assert L.max() >= 15 and (L == 0).sum() > 50
    assert abs(L[50:].mean() - 3) < 0.5  # geometric with mean 3 away from the cap


def test_artbp_draw_cuts_at_rate_one_over_mean():
    cut = parse("artbp:4").draw(4000, np.random.default_rng(1))
    assert cut.dtype == bool and cut[0]
    assert abs(cut[1:].mean() - 0.25) < 0.03


@pytest.mark.parametrize("spec", ["artbp:1.5", "artbp:3"])
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("lk", ref.LOSSES)
@pytest.mark.parametrize("small", [True, False], ids=["small_chunks", "blocked_chain"])
def test_artbp_chunked_pass_matches_the_replay(spec, act, lk, small, monkeypatch):
    """update_every: chunk, with updates between chunks: every chunk's loss and gradient and
    the final weights, through both chunk loops (a chunk fits one block, or it does not)."""
    if not small:
        monkeypatch.setattr(bptt, "_BLOCK_BYTES", 1)  # blocks of one step: the _chain_gradients loop
    tr = parse(spec)
    lr = 0.01
    for i, (T, B) in enumerate([(1, 1), (9, 1), (17, 2)]):
        rng = np.random.default_rng([i, len(act), len(lk), 7])
        p, x, tg, m, h0 = ref.random_problem(rng, T, B, 3, 4, 3, lk, with_h0=i != 1)
        cut = tr.draw(T, np.random.default_rng(i))
        params = {k: v.copy() for k, v in p.items()}
        got = []

        def on_chunk(c, loss, grads, params=params, got=got):
            got.append((c, loss, {k: g.copy() for k, g in grads.items()}))
            for k in KEYS:
                params[k] -= lr * grads[k]

        ws = Workspace()
        h_last = chunked_pass(params, x, tg, m, spec, on_chunk, activation=act, loss=lk, h0=h0, workspace=ws,
                              rng=np.random.default_rng(i))
        want_params, want, want_h = ref.chunked_replay(p, x, tg, m, spec, act, lk, h0, lr=lr, cut=cut)
        assert [c for c, _, _ in got] == [c for c, _, _ in want]
        firsts, lasts = ws.chunks()
        np.testing.assert_array_equal(firsts, np.flatnonzero(cut))
        np.testing.assert_array_equal(lasts, np.append(firsts[1:], T))
        for (c, loss, g), (_, want_loss, w) in zip(got, want):
            assert loss == pytest.approx(want_loss, rel=1e-12, abs=1e-300)
            for k in KEYS:
                assert ref.rel_err(g[k], w[k]) < 1e-10, f"chunk {c} {k}"
        for k in KEYS:
            assert ref.rel_err(params[k], want_params[k]) < 1e-10, k
        assert ref.rel_err(h_last, want_h) < 1e-10


def test_random_modes_in_float32_stay_close_to_float64():
    rng = np.random.default_rng(5)
    p, x, tg, m, _ = ref.random_problem(rng, 30, 4, 3, 8, 3, "cross_entropy")
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    for spec in ("random_k:4", "artbp:5"):
        _, g64, _ = loss_and_gradients(p, x, tg, m, spec, rng=np.random.default_rng(3))
        _, g32, _ = loss_and_gradients(p32, x.astype(np.float32), tg, m, spec, rng=np.random.default_rng(3))
        for k in KEYS:
            assert g32[k].dtype == np.float32
            assert ref.rel_err(g32[k], g64[k]) < 1e-4, (spec, k)


# -- unbiasedness -----------------------------------------------------------------------------
def _z_max(samples: np.ndarray, full: np.ndarray) -> float:
    """max over coordinates of |mean - full| / standard error; a coordinate without scatter
    counts its distance from full in units of 1e-9 of the gradient's scale."""
    n = len(samples)
    se = samples.std(axis=0, ddof=1) / math.sqrt(n)
    floor = 1e-9 * np.abs(full).max()
    return float((np.abs(samples.mean(axis=0) - full) / np.maximum(se, floor)).max())


def _flat(grads) -> np.ndarray:
    return np.concatenate([grads[k].ravel() for k in KEYS])


@pytest.mark.parametrize("act", ["tanh", "identity"])
def test_random_modes_are_unbiased_and_k1_is_not(act):
    """The mean of N estimates is within 4 standard errors of the full gradient in every
    coordinate for random_k and artbp; k_truncated:1 on the same problem is not."""
    rng = np.random.default_rng(11)
    T, N = 7, 3000
    p, x, tg, m, h0 = ref.random_problem(rng, T, 2, 2, 3, 2, "cross_entropy", density=0.8, with_h0=True)
    p["W_hh"] *= 1.5  # long-range terms large enough that dropping them shows
    kw = {"activation": act, "loss": "cross_entropy", "h0": h0}
    full = _flat(loss_and_gradients(p, x, tg, m, "full", **kw)[1])
    ws = Workspace()
    for spec in ("random_k:2", "artbp:3"):
        draws = np.random.default_rng(2024)
        samples = np.stack([_flat(loss_and_gradients(p, x, tg, m, spec, **kw, workspace=ws, rng=draws)[1])
                            for _ in range(N)])
        assert samples.std(axis=0).max() > 0, spec  # a real estimator, not the full gradient
        assert _z_max(samples, full) < 4, spec
    k1 = np.stack([_flat(loss_and_gradients(p, x, tg, m, "k_truncated:1", **kw)[1])] * 50)
    assert _z_max(k1, full) > 4


# -- adaptive ---------------------------------------------------------------------------------
def test_adaptive_with_delta_to_zero_picks_t_minus_1_and_equals_full():
    rng = np.random.default_rng(3)
    T = 12
    p, x, tg, m, h0 = ref.random_problem(rng, T, 3, 3, 5, 4, "cross_entropy", with_h0=True)
    tr = parse("adaptive:1e-12")
    delta, kmin, kmax = tr.adaptive
    K, beta = adaptive.adapt(p, x, tg, m, activation="tanh", loss="cross_entropy", delta=delta, kmin=kmin,
                             kmax=kmax, h0=h0)
    assert 0 < beta < 1 and K == T - 1
    kw = {"activation": "tanh", "loss": "cross_entropy", "h0": h0}
    _, g, _ = loss_and_gradients(p, x, tg, m, tr.with_k(K), **kw)
    _, g_full, _ = loss_and_gradients(p, x, tg, m, "full", **kw)
    for k in KEYS:
        np.testing.assert_array_equal(g[k], g_full[k])


@pytest.mark.parametrize("rho, delta", [(0.8, 0.05), (0.5, 0.01), (0.9, 0.3)])
def test_adaptive_recovers_rho_of_a_scaled_orthogonal_identity_rnn(rho, delta):
    """phi = identity, W_hh = rho Q: every row adjoint shrinks by exactly rho per step back, so
    beta = rho and K = ceil(log(delta (1 - rho)) / log(rho)), the closed form."""
    rng = np.random.default_rng(int(rho * 100))
    T, B, H = 80, 3, 6
    p, x, tg, _, _ = ref.random_problem(rng, T, B, 2, H, 3, "mse")
    Q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    p["W_hh"] = rho * Q
    mask = np.zeros((T, B))
    mask[-1] = 1  # one loss step: every lag averages the same (t, b), so the profile is exactly geometric
    K, beta = adaptive.adapt(p, x, tg, mask, activation="identity", loss="mse", delta=delta, max_lag=60)
    assert beta == pytest.approx(rho, abs=1e-6)
    closed = math.ceil(math.log(delta * (1 - rho)) / math.log(rho))
    assert K == closed
    assert rho**K / (1 - rho) <= delta < rho ** (K - 1) / (1 - rho)
    # KMIN, KMAX and T-1 clamp it
    assert adaptive.adapt(p, x, tg, mask, activation="identity", loss="mse", delta=delta, kmin=closed + 3,
                          kmax=closed + 5)[0] == closed + 3
    assert adaptive.adapt(p, x, tg, mask, activation="identity", loss="mse", delta=delta, kmin=1, kmax=2)[0] == 2
    assert adaptive.choose_k(rho, delta, 1, None, closed - 1) == closed - 2


def test_choose_k_edges():
    assert adaptive.choose_k(0.0, 0.1, 1, None, 50) == 1
    assert adaptive.choose_k(1.0, 0.1, 1, None, 50) == 49  # no decay: the longest window allowed
    assert adaptive.choose_k(math.inf, 0.1, 2, 9, 50) == 9
    assert adaptive.choose_k(0.5, 0.1, 1, None, 1) == 0  # T = 1: K = T-1 = 0 is full
    for beta in np.linspace(0.01, 0.99, 37):
        for delta in (0.3, 0.01, 1e-6):
            K = adaptive.choose_k(float(beta), delta, 1, None, 10**6)
            assert beta**K / (1 - beta) <= delta and (K == 1 or beta ** (K - 1) / (1 - beta) > delta)


def test_estimate_decay_edges():
    assert adaptive.estimate_decay([2.0 * 0.7**j for j in range(12)], burn_in=3) == pytest.approx(0.7, rel=1e-12)
    # the burn-in is left out: a non-geometric start does not move the fit
    assert adaptive.estimate_decay([9.0, 0.1, 5.0] + [0.6**j for j in range(3, 12)], burn_in=3) == pytest.approx(0.6)
    assert adaptive.estimate_decay([1.0]) == 0.0  # nothing flows back
    assert adaptive.estimate_decay([1.0, 0.0, 0.0, 0.0], burn_in=1) == 0.0
    assert adaptive.estimate_decay([1.0, 3.0, math.inf]) == math.inf
    with pytest.raises(InvalidInputError, match="burn_in"):
        adaptive.estimate_decay([1.0, 0.5], burn_in=-1)


# -- specs and the rng contract ---------------------------------------------------------------
@pytest.mark.parametrize("spec", ["adaptive:0.1", "adaptive:0.01:2:30", "adaptive:0.5:3:3", "random_k:5",
                                  "random_k:7.5", "random_k:1", "artbp:10", "artbp:1.25"])
def test_new_specs_round_trip(spec):
    tr = parse(spec)
    assert str(tr) == spec and parse(str(tr)) == tr
    assert tr.random == (tr.mode in ("random_k", "artbp"))
    assert (tr.adaptive is not None) == (tr.mode == "adaptive")


def test_adaptive_fields_and_with_k():
    assert parse("adaptive:0.1").adaptive == (0.1, 1, None)
    assert parse("adaptive:0.25:2:40").adaptive == (0.25, 2, 40)
    assert str(parse("adaptive:0.1").with_k(7)) == "k_truncated:7"
    assert parse("random_k:3").default_update == "sequence" and parse("artbp:3").default_update == "chunk"
    with pytest.raises(InvalidInputError, match="with_k is for adaptive"):
        parse("full").with_k(3)


@pytest.mark.parametrize(
    "spec, why",
    [
        ("adaptive", "adaptive takes DELTA, or DELTA:KMIN:KMAX"),
        ("adaptive:0", "0 < DELTA < 1"),
        ("adaptive:1", "0 < DELTA < 1"),
        ("adaptive:-0.5", "0 < DELTA < 1"),
        ("adaptive:x", "DELTA 'x' is not a number"),
        ("adaptive:0.1:3", "adaptive takes DELTA, or DELTA:KMIN:KMAX"),
        ("adaptive:0.1:0:5", "1 <= KMIN <= KMAX"),
        ("adaptive:0.1:6:5", "1 <= KMIN <= KMAX"),
        ("adaptive:0.1:1.5:5", "'1.5' is not an integer"),
        ("random_k", "random_k takes 1 argument, MEAN"),
        ("random_k:0.5", "random_k needs MEAN >= 1"),
        ("random_k:inf", "MEAN must be finite"),
        ("random_k:2:3", "random_k takes 1 argument"),
        ("artbp:1", "artbp needs MEAN > 1"),
        ("artbp:abc", "MEAN 'abc' is not a number"),
        ("random:5", "did you mean 'random_k'?"),
    ],
)
def test_bad_new_specs(spec, why):
    with pytest.raises(InvalidInputError) as info:
        parse(spec)
    msg = str(info.value)
    assert why in msg and VALID_FORMS in msg, msg


def test_random_modes_need_an_rng_and_deterministic_modes_ignore_it():
    rng = np.random.default_rng(0)
    p, x, tg, m, _ = ref.random_problem(rng, 8, 2, 3, 4, 3, "cross_entropy")
    for spec in ("random_k:3", "artbp:3"):
        with pytest.raises(InvalidInputError, match="pass rng=numpy.random.Generator"):
            loss_and_gradients(p, x, tg, m, spec)
        if spec.startswith("artbp"):
            with pytest.raises(InvalidInputError, match="pass rng"):
                chunked_pass(p, x, tg, m, spec, lambda *a: None, rng=12)
        # the same generator state gives the same estimate
        a = loss_and_gradients(p, x, tg, m, spec, rng=np.random.default_rng(9))[1]
        b = loss_and_gradients(p, x, tg, m, spec, rng=np.random.default_rng(9))[1]
        for k in KEYS:
            np.testing.assert_array_equal(a[k], b[k])
    g0 = loss_and_gradients(p, x, tg, m, "k_truncated:2")[1]
    g1 = loss_and_gradients(p, x, tg, m, "k_truncated:2", rng=np.random.default_rng(1))[1]
    for k in KEYS:
        np.testing.assert_array_equal(g0[k], g1[k])


def test_modes_without_a_fixed_window_are_refused_where_one_is_needed():
    rng = np.random.default_rng(0)
    p, x, tg, m, _ = ref.random_problem(rng, 8, 2, 3, 4, 3, "cross_entropy")
    with pytest.raises(InvalidInputError, match=r"with_k\(K\)"):
        loss_and_gradients(p, x, tg, m, "adaptive:0.1")
    with pytest.raises(InvalidInputError, match=r"with_k\(K\)"):
        chunked_pass(p, x, tg, m, "adaptive:0.1", lambda *a: None)
    with pytest.raises(InvalidInputError, match="update_every: sequence"):
        chunked_pass(p, x, tg, m, "random_k:3", lambda *a: None, rng=np.random.default_rng(0))
    with pytest.raises(InvalidInputError, match="draws its windows at random"):
        parse("random_k:3").chunk_and_window(8)
    assert parse("artbp:3.4").chunk_length(8) == 3  # the mean segment, for planning; chunk_bounds has the real ones


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_adapt_takes_the_gated_cells_profile(cell):
    from bptt_cli.core import diagnostics, gated

    rng = np.random.default_rng(4)
    p = gated.init_params(cell, 3, 5, 4, rng=rng, dtype=np.float64)
    x = rng.normal(size=(20, 2, 3))
    tg = rng.integers(0, 4, (20, 2))
    m = np.ones((20, 2))
    K, beta = adaptive.adapt(p, x, tg, m, activation="tanh", loss="cross_entropy", delta=0.1, cell=cell)
    flow = diagnostics.gradient_flow(p, x, tg, m, activation="tanh", loss="cross_entropy", max_lag=19, cell=cell)
    assert beta == adaptive.estimate_decay(flow["norms"])
    assert K == adaptive.choose_k(beta, 0.1, 1, None, 20) and 1 <= K <= 19


def test_estimate_decay_leaves_out_lags_without_data():
    assert adaptive.estimate_decay([1.0, 0.5, None, 0.125, 0.0625], burn_in=0) == pytest.approx(0.5)



@HYP
@given(mean=st.floats(1.0, 1e6, allow_nan=False), delta=st.floats(1e-9, 0.999), kmin=st.integers(1, 50),
       extra=st.integers(0, 50))
def test_specs_round_trip_for_any_value(mean, delta, kmin, extra):
    for spec in (f"random_k:{mean!r}", f"artbp:{mean + 1e-3!r}", f"adaptive:{delta!r}",
                 f"adaptive:{delta!r}:{kmin}:{kmin + extra}"):
        tr = parse(spec)
        assert parse(str(tr)) == tr


@HYP
@given(T=st.integers(1, 60), mean=st.floats(1.01, 20), seed=st.integers(0, 2**32 - 1))
def test_draws_are_well_formed(T, mean, seed):
    L = parse(f"random_k:{mean!r}").draw(T, np.random.default_rng(seed))
    assert L.shape == (T,) and (L >= 0).all() and (L <= np.arange(T)).all()
    firsts, lasts = parse(f"artbp:{mean!r}").chunk_bounds(T, np.random.default_rng(seed))
    assert firsts[0] == 0 and lasts[-1] == T and (firsts < lasts).all()
    np.testing.assert_array_equal(firsts[1:], lasts[:-1])  # the segments tile 0 .. T-1
