"""The gated engine (core/gated.py) against the brute-force reference and finite differences.

Every truncation mode x cell x loss, float64: the engine's gradient against
``reference_gated.gradients`` and against central differences of the truncated objective
(each loss re-run from the constant state before its window, so the differences see exactly
the terms the truncated gradient keeps). Seeded random shapes include T = 1, B = 1, H = 1
and T not a multiple of K.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import reference as ref
import reference_gated as rg

from bptt_cli.core import gated
from bptt_cli.core.bptt import Workspace
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.truncation import parse

CELLS = ("gru", "lstm")
LOSSES = ("cross_entropy", "mse")
MODES = ("full", "k_truncated:0", "k_truncated:3", "subsequence:4", "tbptt:2:5", "tbptt:3:3")
SHAPES = ((1, 1, 1, 1, 2), (7, 2, 3, 3, 4), (9, 3, 2, 4, 3), (10, 1, 2, 1, 2))  # (T, B, I, H, O)


def _seed(*parts) -> int:
    return zlib.crc32(" ".join(map(str, parts)).encode())  # stable across runs (unlike hash())


def _problem(cell, loss, shape, seed, with_h0=True):
    T, B, I, H, O = shape
    return rg.random_problem(np.random.default_rng(seed), cell, T, B, I, H, O, loss, with_h0=with_h0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_reference(cell, loss, mode):
    for k, shape in enumerate(SHAPES):
        params, x, targets, mask, h0 = _problem(cell, loss, shape, _seed(cell, loss, mode, k), with_h0=k % 2 == 1)
        want_loss, want = rg.gradients(params, x, targets, mask, mode, cell, loss, h0)
        got_loss, got, last = gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, loss=loss, h0=h0)
        assert abs(got_loss - want_loss) <= 1e-12 * max(1.0, abs(want_loss))
        for key in rg.KEYS:
            assert got[key].shape == params[key].shape
            err = ref.rel_err(got[key], want[key])
            assert err <= 1e-10, f"{cell} {loss} {mode} shape {shape}: {key} rel err {err:.1e}"
        states, _ = rg.forward(params, x, cell, h0)
        np.testing.assert_allclose(last, states[-1], rtol=0, atol=1e-13)


def _truncated_objective(params, x, targets, mask, mode, cell, loss, h0, fixed_states):
    """sum_t m_t L_t / sum(m), each L_t re-run from the constant state before f(t) (from
    ``fixed_states``, the unperturbed forward), with the engine's own forward."""
    T, B, _ = x.shape
    tr = parse(mode)
    starts = tr.starts(T)
    total = 0.0
    for f in sorted(set(starts.tolist())):
        ts = [t for t in range(T) if starts[t] == f]
        last = max(ts)
        _, y = gated.forward(params, x[f : last + 1], cell, h0=fixed_states[f])
        for t in ts:
            for b in range(B):
                if mask[t, b]:
                    total += ref.step_loss(y[t - f, b], targets[t, b], loss)[0]
    return total / float(mask.sum())


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("cell", CELLS)
def test_gradients_match_finite_differences(cell, loss, mode):
    params, x, targets, mask, h0 = _problem(cell, loss, (7, 2, 2, 2, 3), _seed("fd", cell, loss, mode))
    fixed, _ = gated.forward(params, x, cell, h0=h0)
    _, grads, _ = gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, loss=loss, h0=h0)
    eps = 1e-4  # fourth-order central differences: truncation ~eps^4, rounding ~1e-16 / eps
    for key in rg.KEYS:
        fd = np.zeros_like(params[key])
        for idx in np.ndindex(params[key].shape):
            old = params[key][idx]
            at = {}
            for k in (-2, -1, 1, 2):
                params[key][idx] = old + k * eps
                at[k] = _truncated_objective(params, x, targets, mask, mode, cell, loss, h0, fixed)
            params[key][idx] = old
            fd[idx] = (8 * (at[1] - at[-1]) - (at[2] - at[-2])) / (12 * eps)
        err = ref.rel_err(grads[key], fd)
        assert err <= 1e-8, f"{cell} {loss} {mode}: {key} rel err {err:.1e} against finite differences"


@pytest.mark.parametrize("mode", ("full", "k_truncated:2", "subsequence:3", "tbptt:2:5", "tbptt:3:3"))
@pytest.mark.parametrize("cell", CELLS)
def test_chunked_pass_matches_replay(cell, mode):
    for k, loss in enumerate(LOSSES):
        params, x, targets, mask, h0 = _problem(cell, loss, (8, 2, 2, 3, 3), _seed("chunk", cell, mode, loss))
        mask[2:4] = 0  # an unsupervised chunk for short chunks: skipped by both
        want_params, records, want_last = rg.chunked_replay(params, x, targets, mask, mode, cell, loss, h0, lr=0.3)
        got = []
        p = {key: v.copy() for key, v in params.items()}

        def on_chunk(index, value, grads, p=p, got=got):
            got.append((index, value, grads))
            for key in p:
                p[key] -= 0.3 * grads[key]

        last = gated.chunked_pass(p, x, targets, mask, mode, on_chunk, cell=cell, loss=loss, h0=h0,
                                  workspace=Workspace())
        assert [r[0] for r in got] == [r[0] for r in records]
        for (_, want_value, want), (_, value, grads) in zip(records, got):
            assert abs(value - want_value) <= 1e-12 * max(1.0, abs(want_value))
            for key in rg.KEYS:
                assert ref.rel_err(grads[key], want[key]) <= 1e-10, f"{cell} {mode} {loss}: {key}"
        for key in rg.KEYS:
            assert ref.rel_err(p[key], want_params[key]) <= 1e-12
        np.testing.assert_allclose(last, want_last, rtol=0, atol=1e-12)


@pytest.mark.parametrize("cell", CELLS)
def test_chunked_pass_full_equals_loss_and_gradients(cell):
    params, x, targets, mask, h0 = _problem(cell, "cross_entropy", (6, 2, 2, 3, 3), 5)
    value, grads, last = gated.loss_and_gradients(params, x, targets, mask, "full", cell=cell, h0=h0)
    seen = []
    last2 = gated.chunked_pass(params, x, targets, mask, "full", lambda i, v, g: seen.append((i, v, g)), cell=cell,
                               h0=h0)
    assert len(seen) == 1 and seen[0][0] == 0 and abs(seen[0][1] - value) < 1e-13
    for key in rg.KEYS:
        assert ref.rel_err(seen[0][2][key], grads[key]) < 1e-13
    np.testing.assert_allclose(last2, last, atol=1e-14)


@pytest.mark.parametrize("cell", CELLS)
def test_state_jacobian_matches_reference_and_differences(cell):
    params, x, _, _, h0 = _problem(cell, "mse", (6, 2, 2, 3, 2), _seed("jac", cell))
    H = 3
    S = H if cell == "gru" else 2 * H
    for t, j in ((5, 0), (5, 1), (4, 3), (2, 2)):
        J = gated.state_jacobian(params, x, t, j, cell=cell, h0=h0)
        assert J.shape == (2, S, S)
        assert ref.rel_err(J, rg.jacobian(params, x, t, j, cell, h0)) <= 1e-12
    # central differences of state_5 in state_3, the forward run from a perturbed state_3
    states, _ = gated.forward(params, x, cell, h0=h0)
    flat = states[3] if cell == "gru" else np.concatenate([states[3][0], states[3][1]], axis=1)  # (B, S)
    fd = np.zeros((2, S, S))
    eps = 1e-6
    for k in range(S):
        outs = []
        for sign in (1, -1):
            s = flat.copy()
            s[:, k] += sign * eps
            s0 = s if cell == "gru" else (s[:, :H], s[:, H:])
            st, _ = gated.forward(params, x[3:5], cell, h0=s0)
            outs.append(st[2] if cell == "gru" else np.concatenate([st[2][0], st[2][1]], axis=1))
        fd[:, :, k] = (outs[0] - outs[1]) / (2 * eps)
    assert ref.rel_err(gated.state_jacobian(params, x, 4, 2, cell=cell, h0=h0), fd) <= 1e-8


@pytest.mark.parametrize("cell", CELLS)
def test_lag_profile_from_jacobians(cell):
    T, B, H = 6, 2, 3
    params, x, targets, mask, h0 = _problem(cell, "cross_entropy", (T, B, 2, H, 3), _seed("lag", cell))
    mask[:] = 0
    mask[5, 0] = mask[4, 1] = mask[2, 0] = 1
    prof = gated.lag_profile(params, x, targets, mask, cell=cell, loss="cross_entropy", max_lag=4, h0=h0)
    assert prof["lags"] == [0, 1, 2, 3, 4]
    assert ("c" in prof) == (cell == "lstm")
    _, y = rg.forward(params, x, cell, h0)
    for j in range(5):
        hs, cs, n = 0.0, 0.0, 0
        for t, b in zip(*np.nonzero(mask)):
            if t < j:
                continue
            dh = params["W_hy"].T @ ref.step_loss(y[t, b], targets[t, b], "cross_entropy")[1]
            d_state = dh if cell == "gru" else np.concatenate([dh, np.zeros(H)])
            g = d_state @ rg.jacobian(params, x, int(t), j, cell, h0)[b]  # dL_t/d state_{t-j}
            hs += np.linalg.norm(g[:H])
            cs += np.linalg.norm(g[H:])
            n += 1
        assert prof["counts"][j] == n
        assert abs(prof["h"][j] - hs / n) <= 1e-10 * max(1.0, hs / n)
        if cell == "lstm":
            assert abs(prof["c"][j] - cs / n) <= 1e-10 * max(1.0, cs / n)


def test_gate_saturation_counts_forget_gates():
    p = gated.init_params("lstm", 2, 4, 3, forget_bias=20.0, rng=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(5, 3, 2))
    sat = gated.gate_saturation(p, x, cell="lstm")
    assert sat == {"gate": "forget", "high": 1.0, "low": 0.0}
    p = gated.init_params("gru", 2, 4, 3, rng=0, dtype=np.float64)
    p["bias_ih"][4:8] = -20.0  # z
    sat = gated.gate_saturation(p, x, cell="gru")
    assert sat["gate"] == "update" and sat["low"] == 1.0 and sat["high"] == 0.0


@pytest.mark.parametrize("init", gated.INITS)
@pytest.mark.parametrize("cell", CELLS)
def test_init_params(cell, init):
    G, H = gated.GATES[cell], 5
    p = gated.init_params(cell, 3, H, 4, init=init, forget_bias=1.5, rng=np.random.default_rng(1), dtype=np.float32)
    assert tuple(p) == gated.param_names(cell)
    assert p["weight_ih"].shape == (G * H, 3) and p["weight_hh"].shape == (G * H, H)
    assert all(v.dtype == np.float32 for v in p.values())
    assert np.abs(p["weight_ih"]).max() <= 1 / np.sqrt(H)
    if init == "orthogonal":
        for g in range(G):
            blk = p["weight_hh"][g * H : (g + 1) * H].astype(np.float64)
            np.testing.assert_allclose(blk @ blk.T, np.eye(H), atol=1e-5)
    else:
        assert np.abs(p["weight_hh"]).max() <= 1 / np.sqrt(H)
    if cell == "lstm":
        assert (p["bias_ih"][H : 2 * H] == 1.5).all() and (p["bias_hh"][H : 2 * H] == 0).all()
    again = gated.init_params(cell, 3, H, 4, init=init, forget_bias=1.5, rng=np.random.default_rng(1))
    assert all((again[k] == p[k]).all() for k in p)


def test_lstm_h0_tuple_equals_stacked():
    params, x, targets, mask, h0 = _problem("lstm", "mse", (4, 2, 2, 3, 2), 3)
    a = gated.loss_and_gradients(params, x, targets, mask, "k_truncated:1", cell="lstm", loss="mse", h0=h0)
    b = gated.loss_and_gradients(params, x, targets, mask, "k_truncated:1", cell="lstm", loss="mse",
                                 h0=(h0[0], h0[1]))
    assert a[0] == b[0] and all((a[1][k] == b[1][k]).all() for k in a[1])


@pytest.mark.parametrize("cell", CELLS)
def test_float32_close_to_float64_and_workspace_reuse(cell):
    params, x, targets, mask, h0 = _problem(cell, "cross_entropy", (12, 4, 3, 8, 5), _seed("f32", cell))
    p32 = {k: v.astype(np.float32) for k, v in params.items()}
    ws = Workspace()
    for mode in ("full", "k_truncated:3", "tbptt:3:3", "tbptt:2:5"):
        _, g64, _ = gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, h0=h0)
        _, g32, last = gated.loss_and_gradients(p32, x.astype(np.float32), targets, mask, mode, cell=cell,
                                                    h0=h0.astype(np.float32), workspace=ws)
        assert last.dtype == np.float32 and all(g.dtype == np.float32 for g in g32.values())
        for k in rg.KEYS:
            assert ref.rel_err(g32[k], g64[k]) < 1e-4, (mode, k)
        # the same workspace again, after calls of other modes, gives the same bits
        _, again, _ = gated.loss_and_gradients(p32, x.astype(np.float32), targets, mask, mode, cell=cell,
                                               h0=h0.astype(np.float32), workspace=ws)
        assert all((again[k] == g32[k]).all() for k in rg.KEYS)


def _call(params, x, targets, mask, cell="gru", h0=None, mode="full"):
    return gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, h0=h0)


@pytest.mark.parametrize("cell", CELLS)
def test_bad_inputs(cell):
    params, x, targets, mask, _ = _problem(cell, "cross_entropy", (4, 2, 2, 3, 3), 9, with_h0=False)
    bad = dict(params)
    bad["W_xh"] = bad.pop("weight_ih")
    with pytest.raises(InvalidInputError, match="keys weight_ih, weight_hh"):
        _call(bad, x, targets, mask, cell)
    bad = dict(params, weight_hh=params["weight_hh"][:, :2])
    with pytest.raises(InvalidInputError, match=r"params\['weight_hh'\].*must have shape"):
        _call(bad, x, targets, mask, cell)
    bad = dict(params, weight_ih=params["weight_ih"][:-1])
    with pytest.raises(InvalidInputError, match="weight_ih"):
        _call(bad, x, targets, mask, cell)
    bad = dict(params, b_y=params["b_y"].astype(np.float32))
    with pytest.raises(InvalidInputError, match="dtype"):
        _call(bad, x, targets, mask, cell)
    with pytest.raises(InvalidInputError, match="h0 of a"):
        _call(params, x, targets, mask, cell, h0=np.zeros((2, 4)))
    with pytest.raises(InvalidInputError, match="h0 of a"):
        _call(params, x, targets, mask, cell, h0=np.zeros((3, 2, 3)))
    with pytest.raises(InvalidInputError, match=r"x must have shape"):
        _call(params, x[:, :, :1], targets, mask, cell)
    with pytest.raises(InvalidInputError, match="cell must be one of"):
        _call(params, x, targets, mask, "rnn")
    with pytest.raises(InvalidInputError, match="mask"):
        _call(params, x, targets, mask[:2], cell)
    with pytest.raises(InvalidInputError, match="truncation"):
        _call(params, x, targets, mask, cell, mode="k_truncated:-1")


def test_random_modes_refused_for_gated_cells():
    try:
        tr = parse("random_k:5")
    except InvalidInputError:
        pytest.skip("truncation.py does not parse random_k yet")
    params, x, targets, mask, _ = _problem("lstm", "cross_entropy", (4, 2, 2, 3, 3), 9, with_h0=False)
    with pytest.raises(InvalidInputError, match="elman cell only"):
        gated.loss_and_gradients(params, x, targets, mask, tr, cell="lstm", rng=np.random.default_rng(0))


def test_step_calls_reported():
    for cell in CELLS:
        calls = gated.step_calls(cell)
        assert calls["forward"] <= 12 and calls["backward"] <= 7


@pytest.mark.parametrize("cell", CELLS)
def test_dispatch_from_bptt_and_model(cell):
    from bptt_cli.core import bptt, model

    params, x, targets, mask, h0 = _problem(cell, "mse", (5, 2, 2, 3, 2), 4)
    mask[:] = 1
    want = gated.loss_and_gradients(params, x, targets, mask, "tbptt:2:3", cell=cell, loss="mse", h0=h0)
    got = bptt.loss_and_gradients(params, x, targets, mask, "tbptt:2:3", cell=cell, loss="mse", h0=h0)
    assert got[0] == want[0] and all((got[1][k] == want[1][k]).all() for k in rg.KEYS)
    seen = []
    bptt.chunked_pass(params, x, targets, mask, "subsequence:2", lambda i, v, g: seen.append(i), cell=cell,
                      loss="mse", h0=h0)
    assert seen == [0, 1, 2]
    J = bptt.state_jacobian(params, x, 4, 2, cell=cell, h0=h0)
    assert (J == gated.state_jacobian(params, x, 4, 2, cell=cell, h0=h0)).all()
    states, y = model.forward(params, x, cell=cell, h0=h0)
    want_states, want_y = rg.forward(params, x, cell, h0)
    assert ref.rel_err(states, want_states) < 1e-13 and ref.rel_err(y, want_y) < 1e-13
    net = model.RNN.init(2, 3, 4, cell=cell, init="pytorch", seed=3, dtype=np.float64)
    assert net.cell == cell and net.sizes == (2, 3, 4)
    assert tuple(net.params) == model.param_names(cell) == gated.PARAM_NAMES
    assert model.param_names() == model.PARAM_NAMES


@pytest.mark.parametrize("form", ("exp", "tanh"))
@pytest.mark.parametrize("mode", MODES)
def test_both_lstm_gate_forms_match_reference(monkeypatch, form, mode):
    """The LSTM forward has two forms of its gate nonlinearities, chosen by B H: one np.tanh for
    every gate (small blocks) and one np.exp (larger ones). The shapes above are all small, so
    each form is forced here in turn, the chunk updates included."""
    monkeypatch.setattr(gated, "_TANH_FORM", 0 if form == "exp" else 10**9)
    assert gated.step_calls("lstm", 2, 3)["forward"] == (12 if form == "exp" else 10)  # the form in force
    for k, shape in enumerate(SHAPES):
        params, x, targets, mask, h0 = _problem("lstm", "cross_entropy", shape, _seed("form", mode, k))
        _, want = rg.gradients(params, x, targets, mask, mode, "lstm", "cross_entropy", h0)
        _, got, _ = gated.loss_and_gradients(params, x, targets, mask, mode, cell="lstm", loss="cross_entropy", h0=h0)
        for key in rg.KEYS:
            assert ref.rel_err(got[key], want[key]) <= 1e-10, f"{form} {mode} {shape}: {key}"
    params, x, targets, mask, h0 = _problem("lstm", "mse", (8, 2, 2, 3, 3), _seed("form chunk", mode))
    want_params, records, _ = rg.chunked_replay(params, x, targets, mask, mode, "lstm", "mse", h0, lr=0.3)
    p = {key: v.copy() for key, v in params.items()}

    def on_chunk(index, value, grads):
        for key in p:
            p[key] -= 0.3 * grads[key]

    gated.chunked_pass(p, x, targets, mask, mode, on_chunk, cell="lstm", loss="mse", h0=h0)
    for key in rg.KEYS:
        assert ref.rel_err(p[key], want_params[key]) <= 1e-12, f"{form} {mode} chunks: {key}"
