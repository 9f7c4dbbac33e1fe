"""Diagnostics (gradient flow by lag, truncation bias, spectrum) and the gradient check.

The lecture's claims, checked exactly where they are exact: for the identity activation and
W_hh = rho * Q (Q orthogonal), a loss at the last step sends back ||(W_hh^T)^j g|| = rho^j ||g||.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import reference as ref
from bptt_cli.core import bptt, diagnostics, gradcheck, model
from bptt_cli.core.errors import InvalidInputError

KEYS = ref.KEYS
ACTS = ref.ACTIVATIONS
LOSSES = ref.LOSSES
MODES = ["full", "k_truncated:0", "k_truncated:2", "subsequence:3", "tbptt:2:4"]


def _problem(seed, T=6, B=3, I=3, H=5, O=4, lk="cross_entropy", density=0.6, with_h0=True):
    return ref.random_problem(np.random.default_rng(seed), T, B, I, H, O, lk, density=density, with_h0=with_h0)


def _kink_free(seed, T=6, B=3, I=3, H=5, O=4, lk="cross_entropy"):
    """A relu problem with no pre-activation within 1e-3 of the kink (for exact comparisons)."""
    for s in range(seed, seed + 50):
        prob = _problem(s, T, B, I, H, O, lk)
        _, pre, _ = ref.forward(prob[0], prob[1], "relu", prob[4])
        if np.min(np.abs(pre)) > 1e-3:
            return prob
    pytest.fail("no kink-free relu draw found")


# -- gradient flow by lag ---------------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.9, 1.0, 1.1])
def test_lag_profile_is_rho_to_the_j(rho):
    """One loss per sequence, at the last step: ||dL/dh_{T-1-j}|| = rho^j ||dL/dh_{T-1}|| exactly."""
    T, B = 40, 3
    net = model.RNN.init(3, 8, 4, activation="identity", init="orthogonal", spectral_radius=rho,
                         seed=7, dtype=np.float64)
    rng = np.random.default_rng(8)
    x = rng.normal(size=(T, B, 3))
    tg = rng.integers(0, 4, (T, B))
    m = np.zeros((T, B))
    m[-1] = 1
    flow = diagnostics.gradient_flow(net.params, x, tg, m, activation="identity", loss="cross_entropy")
    assert flow["lags"] == list(range(T))
    assert flow["counts"] == [B] * T
    n0 = flow["norms"][0]
    assert n0 > 0
    for j, n in zip(flow["lags"], flow["norms"]):
        assert n == pytest.approx(rho**j * n0, rel=1e-9), f"rho={rho} lag {j}"
    assert flow["decay_per_step"] == pytest.approx(rho, rel=1e-9)
    if rho < 1:
        assert flow["halves_every"] == pytest.approx(math.log(2) / -math.log(rho), rel=1e-6)
        assert flow["doubles_every"] is None
    elif rho > 1:
        assert flow["doubles_every"] == pytest.approx(math.log(2) / math.log(rho), rel=1e-6)
        assert flow["halves_every"] is None


def _flow_by_loops(p, x, tg, m, act, lk, h0, max_lag):
    """Mean ||dL_tb/dh_{t-j}|| over supervised (t, b), one chain per (t, b): plainest form."""
    T, B, _ = x.shape
    _, pre, y = ref.forward(p, x, act, h0)
    sums = {}
    for t in range(T):
        for b in range(B):
            if not m[t, b]:
                continue
            g = p["W_hy"].T @ ref.step_loss(y[t, b], tg[t, b], lk)[1]  # dL_tb/dh_t, unnormalised
            for j in range(min(t, max_lag) + 1):
                sums.setdefault(j, []).append(np.linalg.norm(g))
                g = p["W_hh"].T @ (ref.dphi(pre[t - j, b], act) * g)
    return [float(np.mean(sums[j])) for j in sorted(sums)], [len(sums[j]) for j in sorted(sums)]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
@pytest.mark.parametrize("max_lag", [50, 3])
def test_gradient_flow_matches_per_step_chains(act, lk, max_lag):
    p, x, tg, m, h0 = _problem(21, T=9, lk=lk, density=0.5)
    flow = diagnostics.gradient_flow(p, x, tg, m, activation=act, loss=lk, h0=h0, max_lag=max_lag)
    want, counts = _flow_by_loops(p, x, tg, m, act, lk, h0, max_lag)
    assert flow["lags"] == list(range(len(want)))
    assert flow["counts"] == counts
    np.testing.assert_allclose(flow["norms"], want, rtol=1e-12)


def test_gradient_flow_does_not_depend_on_batch_size():
    """Unnormalised per-step losses: the same sample twice gives the same profile."""
    p, x, tg, m, _ = _problem(22, T=8, B=2, density=1.0, with_h0=False)
    one = diagnostics.gradient_flow(p, x[:, :1], tg[:, :1], m[:, :1], activation="tanh", loss="cross_entropy")
    two = diagnostics.gradient_flow(p, np.concatenate([x[:, :1]] * 2, axis=1), np.concatenate([tg[:, :1]] * 2, axis=1),
                                    np.concatenate([m[:, :1]] * 2, axis=1), activation="tanh", loss="cross_entropy")
    np.testing.assert_allclose(one["norms"], two["norms"], rtol=1e-12)


def test_gradient_flow_stops_at_the_last_supervised_step():
    p, x, tg, m, _ = _problem(23, T=10, density=1.0)
    m[:] = 0
    m[3, 1] = 1
    flow = diagnostics.gradient_flow(p, x, tg, m, activation="tanh", loss="cross_entropy")
    assert flow["lags"] == [0, 1, 2, 3] and flow["counts"] == [1, 1, 1, 1]
    m[:] = 0
    m[0, 0] = 1
    flow = diagnostics.gradient_flow(p, x, tg, m, activation="tanh", loss="cross_entropy")
    assert flow["lags"] == [0] and flow["decay_per_step"] is None
    assert flow["halves_every"] is None and flow["doubles_every"] is None


def test_gradient_flow_float32_and_bad_max_lag():
    net = model.RNN.init(3, 6, 2, activation="tanh", seed=1)  # float32
    rng = np.random.default_rng(2)
    x = rng.normal(size=(12, 4, 3)).astype(np.float32)
    tg = rng.integers(0, 2, (12, 4))
    m = np.ones((12, 4), dtype=np.float32)
    flow = diagnostics.gradient_flow(net.params, x, tg, m, activation="tanh", loss="cross_entropy", max_lag=5)
    assert flow["lags"] == [0, 1, 2, 3, 4, 5]
    assert all(isinstance(n, float) and n > 0 for n in flow["norms"])
    for bad in (-1, 2.5, True):
        with pytest.raises(InvalidInputError, match="max_lag"):
            diagnostics.gradient_flow(net.params, x, tg, m, activation="tanh", loss="cross_entropy", max_lag=bad)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
def test_gradient_flow_from_given_states_equals_its_own_forward(act, lk):
    """hs from the caller (the training step's forward pass) replaces the forward pass: the
    engine's blocked forward gives the same profile, and a late, gappy mask changes nothing."""
    p, x, tg, m, h0 = _problem(24, T=11, lk=lk, density=0.5)
    m[:3] = 0  # chains start at the first supervised step
    m[6] = 0  # a step with no loss inside the run of chains
    own = diagnostics.gradient_flow(p, x, tg, m, activation=act, loss=lk, h0=h0, max_lag=6)
    hs, _ = model.forward(p, x, activation=act, h0=h0)
    given = diagnostics.gradient_flow(p, x, tg, m, activation=act, loss=lk, h0=h0, max_lag=6, hs=hs)
    assert given == own
    ws = bptt.Workspace()
    bptt.loss_and_gradients(p, x, tg, m, "full", activation=act, loss=lk, h0=h0, workspace=ws)
    engine = diagnostics.gradient_flow(p, x, tg, m, activation=act, loss=lk, h0=h0, max_lag=6, hs=ws.states())
    assert engine["counts"] == own["counts"]
    np.testing.assert_allclose(engine["norms"], own["norms"], rtol=1e-12)
    want, counts = _flow_by_loops(p, x, tg, m, act, lk, h0, 6)
    assert own["counts"] == counts
    np.testing.assert_allclose(own["norms"], want, rtol=1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("per_group", [1, 2, 3])
def test_gradient_flow_in_groups_of_chains_matches_per_step_chains(monkeypatch, act, per_group):
    """Chains run through their lags a group at a time; any group size gives the same profile."""
    p, x, tg, m, h0 = _problem(26, T=10, density=0.6)
    m[:2] = 0
    B, H = x.shape[1], p["W_hh"].shape[0]
    monkeypatch.setattr(diagnostics, "_GROUP_BYTES", per_group * B * H * 8)
    for max_lag in (50, 4):
        flow = diagnostics.gradient_flow(p, x, tg, m, activation=act, loss="cross_entropy", h0=h0, max_lag=max_lag)
        want, counts = _flow_by_loops(p, x, tg, m, act, "cross_entropy", h0, max_lag)
        assert flow["counts"] == counts
        np.testing.assert_allclose(flow["norms"], want, rtol=1e-12)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("per_group", [1, 3, 50])
def test_gradient_flow_float32_follows_float64(monkeypatch, act, per_group):
    """The run's dtype: float32 chains (phi' multiplied in place, the buffers swapped every lag)
    give the float64 profile to float32 accuracy, for groups of one chain up to all of them."""
    p, x, tg, m, h0 = _problem(27, T=14, B=4, H=9, density=0.7)
    m[:2] = 0
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    B, H = x.shape[1], p["W_hh"].shape[0]
    monkeypatch.setattr(diagnostics, "_GROUP_BYTES", per_group * B * H * 4)
    kw = {"activation": act, "loss": "cross_entropy", "max_lag": 8}
    f32 = diagnostics.gradient_flow(p32, x.astype(np.float32), tg, m, h0=h0.astype(np.float32), **kw)
    want, counts = _flow_by_loops(p, x, tg, m, act, "cross_entropy", h0, 8)
    assert f32["counts"] == counts
    np.testing.assert_allclose(f32["norms"], want, rtol=1e-4)


@pytest.mark.parametrize("act", ACTS)
def test_gradient_flow_with_a_workspace_equals_fresh_buffers(act):
    """Buffers kept in the training step's workspace give the same profile on every call, for
    a second shape too, and leave the workspace's hidden states (the flow's own hs) alone."""
    ws = bptt.Workspace()
    for seed, T, max_lag in ((28, 10, 50), (29, 7, 3), (28, 10, 50)):
        p, x, tg, m, h0 = _problem(seed, T=T, density=0.6)
        kw = {"activation": act, "loss": "cross_entropy", "h0": h0, "max_lag": max_lag}
        bptt.loss_and_gradients(p, x, tg, m, "full", activation=act, loss="cross_entropy", h0=h0, workspace=ws)
        hs = ws.states()
        saved = hs.copy()
        fresh = diagnostics.gradient_flow(p, x, tg, m, **kw, hs=saved.copy())
        assert diagnostics.gradient_flow(p, x, tg, m, **kw, hs=hs, workspace=ws) == fresh
        assert diagnostics.gradient_flow(p, x, tg, m, **kw, hs=hs, workspace=ws) == fresh
        np.testing.assert_array_equal(ws.states(), saved)


def test_gradient_flow_keeps_no_buffer_that_grows_with_t(monkeypatch):
    """What the workspace keeps between passes is sized by the group of chains and max_lag:
    the same for T = 30 and T = 300 (phi' is taken a group's span at a time, not for all T)."""
    kept = []
    for T in (30, 300):
        p, x, tg, m, h0 = _problem(30, T=T, density=0.8)
        B, H = x.shape[1], p["W_hh"].shape[0]
        monkeypatch.setattr(diagnostics, "_GROUP_BYTES", 4 * B * H * 8)
        ws = bptt.Workspace()
        flow = diagnostics.gradient_flow(p, x, tg, m, activation="tanh", loss="cross_entropy", h0=h0, max_lag=5,
                                         workspace=ws)
        want, _ = _flow_by_loops(p, x, tg, m, "tanh", "cross_entropy", h0, 5)
        np.testing.assert_allclose(flow["norms"], want, rtol=1e-12)
        kept.append(sorted((k[0], k[1]) for k in ws._bufs if k[0].startswith("flow_")))
    assert kept[0] == kept[1] and kept[0]


def test_gradient_flow_refuses_states_of_another_shape():
    p, x, tg, m, h0 = _problem(25)
    hs, _ = model.forward(p, x, activation="tanh", h0=h0)
    for bad in (hs[1:], hs.astype(np.float32), hs[:, :1]):
        with pytest.raises(InvalidInputError, match="hs must"):
            diagnostics.gradient_flow(p, x, tg, m, activation="tanh", loss="cross_entropy", h0=h0, hs=bad)


def test_gradient_flow_float32_norms_past_the_float32_square_range():
    """Adjoints near 1e20 square past float32's range: the norms are redone in float64, not inf."""
    net = model.RNN.init(3, 6, 2, activation="identity", init="orthogonal", seed=1)  # float32
    p = dict(net.params, W_hy=net.params["W_hy"] * np.float32(1e20))
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    tg = rng.integers(0, 2, (5, 2))
    m = np.ones((5, 2), dtype=np.float32)
    with np.errstate(over="ignore"):
        flow = diagnostics.gradient_flow(p, x, tg, m, activation="identity", loss="cross_entropy")
    p64 = {k: v.astype(np.float64) for k, v in p.items()}
    want = diagnostics.gradient_flow(p64, x.astype(np.float64), tg, m, activation="identity", loss="cross_entropy")
    assert all(math.isfinite(n) and n > 1e19 for n in flow["norms"])
    np.testing.assert_allclose(flow["norms"], want["norms"], rtol=1e-5)


@pytest.mark.parametrize(
    "decay, text",
    [
        (0.87, "x0.87 per step, halves every 5.0 steps"),
        (1.05, "x1.05 per step, doubles every 14.2 steps"),
        (1.0, "x1.00 per step, neither halves nor doubles"),
        (0.001, "x0.001 per step, halves every 0.1 steps"),
    ],
)
def test_describe_decay(decay, text):
    assert diagnostics.describe_decay(decay) == text


def test_describe_decay_without_estimate():
    assert "no decay estimate" in diagnostics.describe_decay(None)


# -- truncation bias --------------------------------------------------------------------------
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
def test_bias_is_exactly_zero_when_the_window_covers_everything(act, lk):
    T = 7
    p, x, tg, m, h0 = _problem(31, T=T, lk=lk)
    for spec in ["full", f"k_truncated:{T - 1}", f"k_truncated:{T + 3}"]:
        bias = diagnostics.bias_for_mode(p, x, tg, m, spec, activation=act, loss=lk, h0=h0)
        assert bias["mode"] == spec
        assert bias["cosine"] == 1.0 and bias["rel_error"] == 0.0, (spec, bias)
        for k in KEYS:
            assert bias["per_param"][k]["cosine"] == 1.0 and bias["per_param"][k]["rel_error"] == 0.0, (spec, k)


def test_bias_is_positive_for_k_truncated_zero_on_long_dependencies():
    T, B = 20, 8
    net = model.RNN.init(4, 16, 3, activation="tanh", spectral_radius=1.0, seed=3, dtype=np.float64)
    rng = np.random.default_rng(4)
    x = rng.normal(size=(T, B, 4))
    tg = rng.integers(0, 3, (T, B))
    m = np.ones((T, B))
    bias = diagnostics.bias_for_mode(net.params, x, tg, m, "k_truncated:0", activation="tanh", loss="cross_entropy")
    assert bias["rel_error"] > 1e-3 and bias["cosine"] < 1.0
    for k in ("W_xh", "W_hh", "b_h"):
        assert bias["per_param"][k]["rel_error"] > 1e-3, k
    # The output layer is never truncated.
    for k in ("W_hy", "b_y"):
        assert bias["per_param"][k] == {**bias["per_param"][k], "cosine": 1.0, "rel_error": 0.0}
    wider = diagnostics.bias_for_mode(net.params, x, tg, m, "k_truncated:8", activation="tanh", loss="cross_entropy")
    assert 0 < wider["rel_error"] < bias["rel_error"]


@pytest.mark.parametrize("spec", ["full", "k_truncated:2", "tbptt:2:4", "k_truncated:20"])
def test_bias_from_the_callers_gradient_equals_the_computed_one(spec):
    p, x, tg, m, h0 = _problem(32, T=7)
    kw = {"activation": "tanh", "loss": "cross_entropy", "h0": h0}
    _, g, _ = bptt.loss_and_gradients(p, x, tg, m, spec, **kw)
    assert diagnostics.bias_for_mode(p, x, tg, m, spec, **kw, grads=g) == diagnostics.bias_for_mode(p, x, tg, m, spec, **kw)


def test_bias_of_a_mode_that_is_full_reuses_the_gradient_as_the_full_one():
    """full, and k_truncated:K with K >= T-1, are full BPTT: the given gradient is compared with
    itself (no second gradient), whatever it holds."""
    p, x, tg, m, h0 = _problem(33, T=7)
    kw = {"activation": "tanh", "loss": "cross_entropy", "h0": h0}
    _, g, _ = bptt.loss_and_gradients(p, x, tg, m, "full", **kw)
    doubled = {k: 2 * v for k, v in g.items()}
    for spec in ("full", "k_truncated:6"):
        bias = diagnostics.bias_for_mode(p, x, tg, m, spec, **kw, grads=doubled)
        assert bias["cosine"] == 1.0 and bias["rel_error"] == 0.0
        assert bias["norm_full"] == pytest.approx(2 * diagnostics.bias_for_mode(p, x, tg, m, spec, **kw)["norm_full"])
    assert diagnostics.bias_for_mode(p, x, tg, m, "k_truncated:5", **kw, grads=doubled)["rel_error"] > 0.5


def test_truncation_bias_by_hand():
    full = {"a": np.array([3.0, 4.0]), "b": np.array([0.0])}
    mode = {"a": np.array([4.0, 3.0]), "b": np.array([1.0])}
    out = diagnostics.truncation_bias(mode, full)
    assert out["cosine"] == pytest.approx(24 / (5 * math.sqrt(26)))
    assert out["rel_error"] == pytest.approx(math.sqrt(3) / 5)
    assert out["per_param"]["a"]["cosine"] == pytest.approx(24 / 25)
    assert out["per_param"]["a"]["rel_error"] == pytest.approx(math.sqrt(2) / 5)
    assert out["per_param"]["b"]["cosine"] is None  # ||g_full|| = 0: no angle
    assert out["per_param"]["b"]["rel_error"] is None
    opposite = diagnostics.truncation_bias({"a": -full["a"]}, {"a": full["a"]})
    assert opposite["cosine"] == -1.0 and opposite["rel_error"] == 2.0
    zeros = diagnostics.truncation_bias({"a": np.zeros(2)}, {"a": np.zeros(2)})
    assert zeros["cosine"] == 1.0 and zeros["rel_error"] is None


def test_truncation_bias_float32_is_exact_when_equal():
    rng = np.random.default_rng(5)
    g = {k: rng.normal(size=(7, 3)).astype(np.float32) for k in KEYS}
    out = diagnostics.truncation_bias(g, {k: v.copy() for k, v in g.items()})
    assert out["cosine"] == 1.0 and out["rel_error"] == 0.0


def test_truncation_bias_refuses_mismatched_gradients():
    with pytest.raises(InvalidInputError, match="same keys"):
        diagnostics.truncation_bias({"a": np.zeros(2)}, {"b": np.zeros(2)})
    with pytest.raises(InvalidInputError, match="shape"):
        diagnostics.truncation_bias({"a": np.zeros(2)}, {"a": np.zeros(3)})


# -- spectrum ---------------------------------------------------------------------------------
def test_spectrum_of_a_known_matrix():
    # Eigenvalues +-1 (W^2 = I), singular values 2 and 0.5: radius and norm differ.
    out = diagnostics.spectrum({"W_hh": np.array([[0.0, 2.0], [0.5, 0.0]], dtype=np.float32)})
    assert out["spectral_radius"] == pytest.approx(1.0, rel=1e-12)
    assert out["max_singular_value"] == pytest.approx(2.0, rel=1e-12)
    assert out["saturated_share"] is None
    # A rotation by 90 degrees scaled by 0.9: complex eigenvalues of modulus 0.9.
    rot = diagnostics.spectrum({"W_hh": 0.9 * np.array([[0.0, -1.0], [1.0, 0.0]])})
    assert rot["spectral_radius"] == pytest.approx(0.9, rel=1e-12)
    assert rot["max_singular_value"] == pytest.approx(0.9, rel=1e-12)


@pytest.mark.parametrize("rho", [0.5, 1.3])
def test_spectrum_of_orthogonal_init(rho):
    net = model.RNN.init(2, 16, 2, init="orthogonal", spectral_radius=rho, seed=4, dtype=np.float64)
    out = diagnostics.spectrum(net.params)
    assert out["spectral_radius"] == pytest.approx(rho, rel=1e-9)
    assert out["max_singular_value"] == pytest.approx(rho, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_spectrum_max_singular_value_is_the_matrix_2_norm(seed):
    """sigma_max from the top eigenvalue of W^T W is numpy's 2-norm (a full SVD) of W."""
    rng = np.random.default_rng(seed)
    for H in (1, 2, 7, 64):
        W = rng.normal(size=(H, H)) * 10.0 ** rng.uniform(-3, 3)
        out = diagnostics.spectrum({"W_hh": W})
        assert out["max_singular_value"] == pytest.approx(np.linalg.norm(W, 2), rel=1e-12), H
        assert out["spectral_radius"] == pytest.approx(np.max(np.abs(np.linalg.eigvals(W))), rel=1e-12), H
    assert diagnostics.spectrum({"W_hh": np.zeros((3, 3))})["max_singular_value"] == 0.0


def test_saturation_share_of_handcrafted_states():
    hs = np.array([[[0.995, -0.999, 0.5, 0.0]], [[1.0, -0.98, 0.99, -0.9901]]])  # (T=2, B=1, H=4)
    W = {"W_hh": np.eye(4)}
    assert diagnostics.spectrum(W, hs, "tanh")["saturated_share"] == pytest.approx(4 / 8)
    assert diagnostics.spectrum(W, hs, "relu")["saturated_share"] is None
    assert diagnostics.spectrum(W, None, "tanh")["saturated_share"] is None


# -- gradcheck --------------------------------------------------------------------------------
def _assert_all_ok(rows, what):
    bad = [r for r in rows if not r["ok"]]
    assert not bad, f"{what}: " + "; ".join(f"{r['check']} {r['mode']} {r['param']} {r['rel_error']:.2e}" for r in bad)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
def test_gradcheck_passes(act, lk):
    p, x, tg, m, h0 = _problem(41 + ACTS.index(act), lk=lk)
    rows = gradcheck.run_gradcheck(p, x, tg, m, MODES, activation=act, loss=lk, h0=h0)
    _assert_all_ok(rows, f"{act} {lk}")
    fd = [r for r in rows if r["check"] == "finite differences"]
    assert [r["param"] for r in fd] == list(KEYS) and {r["mode"] for r in fd} == {"full"}
    assert {r["tolerance"] for r in fd} == {1e-6}
    refs = [r for r in rows if r["check"] == "reference"]
    assert [(r["mode"], r["param"]) for r in refs] == [(s, k) for s in MODES for k in KEYS]
    assert {r["tolerance"] for r in refs} == {1e-9}
    assert set(rows[0]) == {"check", "mode", "param", "rel_error", "tolerance", "ok", "entries"}
    if act != "relu":
        assert all(r["entries"] == p[r["param"]].size for r in fd)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("lk", LOSSES)
def test_reference_gradients_agree_with_the_test_suite_reference(act, lk):
    """Two brute-force references, written separately, give the same numbers."""
    p, x, tg, m, h0 = _kink_free(51, lk=lk) if act == "relu" else _problem(51, lk=lk)
    for spec in MODES + ["subsequence:4", "tbptt:1:3", "k_truncated:9"]:
        got = gradcheck.reference_gradients(p, x, tg, m, spec, act, lk, h0)
        _, want = ref.gradients(p, x, tg, m, spec, act, lk, h0)
        for k in KEYS:
            assert ref.rel_err(got[k], want[k]) < 1e-12, (spec, k)


def test_gradcheck_subsets_big_parameters_deterministically():
    p, x, tg, m, h0 = _problem(61, T=4, B=2, I=12, H=7, O=3)  # W_xh has 84 entries, W_hh 49
    rows = gradcheck.run_gradcheck(p, x, tg, m, ["full"], activation="tanh", loss="cross_entropy", h0=h0)
    fd = {r["param"]: r for r in rows if r["check"] == "finite differences"}
    assert fd["W_xh"]["entries"] == 60 and fd["W_hh"]["entries"] == 49
    _assert_all_ok(rows, "subset")
    again = gradcheck.run_gradcheck(p, x, tg, m, ["full"], activation="tanh", loss="cross_entropy", h0=h0)
    assert [r["rel_error"] for r in again] == [r["rel_error"] for r in rows]


def test_gradcheck_skips_relu_kinks():
    """A pre-activation inside (-eps, eps): its nudges cross the kink, so those entries are skipped."""
    p, x, tg, m, h0 = _kink_free(71, lk="mse")
    m[:] = 1
    # Put unit 0 of step 0, sample 0 exactly on the kink by moving its bias.
    a00 = p["W_xh"][0] @ x[0, 0] + p["W_hh"][0] @ h0[0] + p["b_h"][0]
    p["b_h"][0] -= a00 + 1e-7  # a = -1e-7: off, but a nudge of +1e-6 turns it on
    rows = gradcheck.run_gradcheck(p, x, tg, m, ["full"], activation="relu", loss="mse", h0=h0)
    fd = {r["param"]: r for r in rows if r["check"] == "finite differences"}
    assert fd["b_h"]["entries"] < p["b_h"].size
    _assert_all_ok(rows, "relu with a unit on the kink")


def test_gradcheck_fails_on_a_broken_engine():
    p, x, tg, m, h0 = _problem(81)

    def broken(*args, **kw):
        L, g, h = bptt.loss_and_gradients(*args, **kw)
        g = dict(g, W_hh=g["W_hh"] * 1.01)
        return L, g, h

    rows = gradcheck.run_gradcheck(p, x, tg, m, MODES, activation="tanh", loss="cross_entropy", h0=h0, engine=broken)
    for r in rows:
        assert r["ok"] == (r["param"] != "W_hh"), r
    assert sum(not r["ok"] for r in rows) == 1 + len(MODES)


def test_gradcheck_catches_a_wrong_window():
    """An engine that silently runs full BPTT for every mode fails the truncated modes' rows."""
    p, x, tg, m, h0 = _problem(82, T=8, density=1.0)

    def always_full(params, x, targets, mask, truncation, **kw):
        return bptt.loss_and_gradients(params, x, targets, mask, "full", **kw)

    rows = gradcheck.run_gradcheck(p, x, tg, m, ["full", "k_truncated:1"], activation="tanh", loss="cross_entropy",
                                   h0=h0, engine=always_full)
    failed = {(r["mode"], r["param"]) for r in rows if not r["ok"]}
    assert failed == {("k_truncated:1", k) for k in ("W_xh", "W_hh", "b_h")}


def test_gradcheck_casts_float32_and_refuses_bad_modes():
    net = model.RNN.init(3, 4, 3, activation="tanh", seed=2)  # float32
    rng = np.random.default_rng(3)
    x = rng.normal(size=(5, 2, 3)).astype(np.float32)
    tg = rng.integers(0, 3, (5, 2))
    m = np.ones((5, 2), dtype=np.float32)
    saved = {k: v.copy() for k, v in net.params.items()}
    rows = gradcheck.run_gradcheck(net.params, x, tg, m, ["k_truncated:1"], activation="tanh", loss="cross_entropy")
    _assert_all_ok(rows, "float32 input")
    for k in KEYS:
        assert net.params[k].dtype == np.float32
        np.testing.assert_array_equal(net.params[k], saved[k])
    with pytest.raises(InvalidInputError, match="valid forms"):
        gradcheck.run_gradcheck(net.params, x, tg, m, ["k_truncated:-1"], activation="tanh", loss="cross_entropy")


# -- no side effects --------------------------------------------------------------------------
def test_diagnostics_do_not_mutate_their_inputs():
    p, x, tg, m, h0 = _problem(91, lk="mse")
    saved = ({k: v.copy() for k, v in p.items()}, x.copy(), tg.copy(), m.copy(), h0.copy())
    ids = {k: id(v) for k, v in p.items()}
    kw = {"activation": "tanh", "loss": "mse", "h0": h0}
    diagnostics.gradient_flow(p, x, tg, m, **kw)
    diagnostics.bias_for_mode(p, x, tg, m, "subsequence:2", **kw)
    hs, _ = model.forward(p, x, activation="tanh", h0=h0)
    diagnostics.spectrum(p, hs[1:], "tanh")
    gradcheck.run_gradcheck(p, x, tg, m, ["tbptt:2:3"], **kw)
    for k in KEYS:
        assert id(p[k]) == ids[k]
        np.testing.assert_array_equal(p[k], saved[0][k], err_msg=k)
    for got, want in zip((x, tg, m, h0), saved[1:]):
        np.testing.assert_array_equal(got, want)
