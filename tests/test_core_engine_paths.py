"""The engine's fast paths against the brute-force reference: chunk updates on a shared
workspace, the workspace's states accessor, the bounded-memory lag sweep, and the exact
O(T) k-truncation of the identity activation. All in float64 against ``tests/reference.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import reference as ref

from bptt_cli.core import bptt
from bptt_cli.core.errors import DivergedError, InvalidInputError

KEYS = ref.KEYS
TOL = 1e-10


def assert_grads_match(got: dict, want: dict, what: str, tol: float = TOL) -> None:
    assert set(got) == set(KEYS), sorted(got)
    for k in KEYS:
        assert got[k].shape == want[k].shape, (what, k)
        err = ref.rel_err(got[k], want[k])
        assert err < tol, f"{what}: gradient {k} off, relative error {err:.3e}"


# -- chunk updates on the workspace ----------------------------------------------------------
@pytest.mark.parametrize("spec", ["subsequence:3", "tbptt:2:5", "tbptt:3:3", "k_truncated:2", "full"])
def test_chunked_pass_with_a_shared_workspace_matches_replay(spec):
    """One workspace across lengths, batch sizes and a plain loss_and_gradients call in between:
    what one call leaves in the buffers must not leak into the next."""
    ws = bptt.Workspace()
    rng = np.random.default_rng(30)
    for T, B, lk in [(11, 2, "mse"), (7, 3, "cross_entropy"), (11, 2, "cross_entropy"), (1, 1, "mse")]:
        p, x, tg, m, h0 = ref.random_problem(rng, T, B, 3, 4, 3, lk, density=0.7, with_h0=True)
        bptt.loss_and_gradients(p, x * 2, tg, m, "k_truncated:3", activation="tanh", loss=lk, workspace=ws)
        lr = 0.05
        seen = []

        def on_chunk(index, loss, grads, p=p, seen=seen, lr=lr):
            seen.append((index, loss, {k: grads[k].copy() for k in KEYS}))
            for k in KEYS:
                p[k] -= lr * grads[k]

        p0 = {k: v.copy() for k, v in p.items()}
        h_last = bptt.chunked_pass(p, x, tg, m, spec, on_chunk, activation="tanh", loss=lk, h0=h0, workspace=ws)
        p_ref, records, h_ref = ref.chunked_replay(p0, x, tg, m, spec, "tanh", lk, h0, lr=lr)
        assert [i for i, _, _ in seen] == [i for i, _, _ in records]
        for (i, L, g), (_, L_r, g_r) in zip(seen, records):
            assert L == pytest.approx(L_r, rel=1e-10), f"{spec} T={T} chunk {i} loss"
            assert_grads_match(g, g_r, f"{spec} T={T} B={B} chunk {i}")
        assert_grads_match(p, p_ref, f"{spec} T={T} final weights")
        np.testing.assert_allclose(h_last, h_ref, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("spec", ["tbptt:3:5", "subsequence:3"])  # overlapping windows; the small-chunk loop
def test_chunk_grads_are_fresh_arrays(spec):
    """The callback may keep a chunk's gradients: later chunks and calls never write into them."""
    rng = np.random.default_rng(31)
    p, x, tg, m, _ = ref.random_problem(rng, 9, 2, 3, 4, 3, "cross_entropy", density=1.0)
    ws = bptt.Workspace()
    kept = []
    bptt.chunked_pass(p, x, tg, m, spec, lambda i, L, g: kept.append((g, {k: v.copy() for k, v in g.items()})),
                      workspace=ws)
    bptt.chunked_pass(p, x * 0.5, tg, m, spec, lambda i, L, g: None, workspace=ws)
    assert len(kept) == 3
    for i, (g, copy) in enumerate(kept):
        for k in KEYS:
            np.testing.assert_array_equal(g[k], copy[k], err_msg=f"chunk {i} {k} overwritten")
            for j, (other, _) in enumerate(kept):
                if j != i:
                    assert not np.shares_memory(g[k], other[k]), (i, j, k)


@pytest.mark.parametrize("lk", ref.LOSSES)
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
@pytest.mark.parametrize("block_steps", [2, None])  # chunks longer than a block; the default: one block
def test_chunks_of_non_overlapping_windows_on_both_loops(monkeypatch, act, lk, block_steps):
    """subsequence chunks that fit a block run the small-chunk loop, longer ones the blocked
    forward and chain; both match the replay, and each test sees the loop it means to."""
    rng = np.random.default_rng([36, ref.ACTIVATIONS.index(act), ref.LOSSES.index(lk)])
    T, B, H = 11, 2, 3
    p, x, tg, m, h0 = ref.random_problem(rng, T, B, 2, H, 3, lk, density=0.7, with_h0=True)
    if block_steps:
        monkeypatch.setattr(bptt, "_BLOCK_BYTES", block_steps * B * H * 8)
    calls = []
    small = bptt._small_chunks
    monkeypatch.setattr(bptt, "_small_chunks", lambda *a, **k: calls.append(1) or small(*a, **k))
    lr = 0.05
    seen = []

    def on_chunk(index, loss, grads):
        seen.append((index, loss, {k: grads[k].copy() for k in KEYS}))
        for k in KEYS:
            p[k] -= lr * grads[k]

    p0 = {k: v.copy() for k, v in p.items()}
    bptt.chunked_pass(p, x, tg, m, "subsequence:4", on_chunk, activation=act, loss=lk, h0=h0)
    assert bool(calls) == (block_steps is None)
    p_ref, records, _ = ref.chunked_replay(p0, x, tg, m, "subsequence:4", act, lk, h0, lr=lr)
    assert [i for i, _, _ in seen] == [i for i, _, _ in records]
    for (i, L, g), (_, L_r, g_r) in zip(seen, records):
        assert L == pytest.approx(L_r, rel=1e-10), f"{act} {lk} chunk {i} loss"
        assert_grads_match(g, g_r, f"{act} {lk} blocks of {block_steps} chunk {i}")
    assert_grads_match(p, p_ref, f"{act} {lk} blocks of {block_steps} final weights")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_small_chunks_refuse_a_non_finite_gradient(monkeypatch, dtype):
    """The small-chunk loop checks its gradients with one dot product against zeros: a NaN
    in phi' (planted in chunk 1, where the loss stays finite) must still stop the pass."""
    rng = np.random.default_rng(37)
    p, x, tg, m, _ = ref.random_problem(rng, 9, 2, 2, 3, 2, "cross_entropy", density=1.0)
    p = {k: v.astype(dtype) for k, v in p.items()}
    dphi_into = bptt._dphi_into
    n_calls = []

    def poisoned(activation, h, out):
        r = dphi_into(activation, h, out)
        n_calls.append(1)
        if len(n_calls) == 2:
            out[0, 0, 0] = np.nan
        return r

    monkeypatch.setattr(bptt, "_dphi_into", poisoned)
    seen = []
    with pytest.raises(DivergedError, match="gradient"):
        bptt.chunked_pass(p, x.astype(dtype), tg, m, "subsequence:3", lambda i, L, g: seen.append(i))
    assert seen == [0]


# -- the states accessor ---------------------------------------------------------------------
def test_workspace_states_after_each_entry_point():
    rng = np.random.default_rng(32)
    p, x, tg, m, h0 = ref.random_problem(rng, 8, 3, 2, 5, 3, "mse", with_h0=True)
    ws = bptt.Workspace()
    with pytest.raises(InvalidInputError, match="no forward pass"):
        ws.states()
    hs_r, _, _ = ref.forward(p, x, "relu", h0)
    bptt.loss_and_gradients(p, x, tg, m, "k_truncated:2", activation="relu", loss="mse", h0=h0, workspace=ws)
    assert ws.states().shape == (9, 3, 5)
    np.testing.assert_allclose(ws.states(), hs_r, rtol=1e-12, atol=1e-14)
    # chunked_pass: with no update every chunk runs with the same weights, so the same states.
    _, x2, _, _, _ = ref.random_problem(rng, 8, 3, 2, 5, 3, "mse")
    bptt.chunked_pass(p, x2, tg, m, "subsequence:3", lambda *a: None, activation="relu", loss="mse", workspace=ws)
    np.testing.assert_allclose(ws.states(), ref.forward(p, x2, "relu")[0], rtol=1e-12, atol=1e-14)


# -- the lag sweep in spans ------------------------------------------------------------------
@pytest.mark.parametrize("span_steps", [1, 2, 3, 7])
@pytest.mark.parametrize("spec", ["k_truncated:1", "k_truncated:4", "tbptt:2:5", "tbptt:3:4", "tbptt:2:9"])
@pytest.mark.parametrize("act", ref.ACTIVATIONS)
def test_lag_sweep_in_short_spans_matches_reference(monkeypatch, act, spec, span_steps):
    """Spans of a few steps (rounded up to whole chunks and to at least W - C steps), so the
    carries between spans and the padding of the last span are all exercised."""
    rng = np.random.default_rng([33, span_steps, len(spec), ref.ACTIVATIONS.index(act)])
    T, B, H = 13, 2, 3
    p, x, tg, m, h0 = ref.random_problem(rng, T, B, 2, H, 3, "mse", density=0.8, with_h0=True)
    monkeypatch.setattr(bptt, "_SPAN_BYTES", span_steps * B * H * 8)
    monkeypatch.setattr(bptt, "_GROUP_BYTES", B * H * 8)  # one chain per group
    _, g, _ = bptt.loss_and_gradients(p, x, tg, m, spec, activation=act, loss="mse", h0=h0)
    assert_grads_match(g, ref.gradients(p, x, tg, m, spec, act, "mse", h0)[1], f"{spec} {act} span {span_steps}")


def test_lag_sweep_memory_does_not_grow_with_T(monkeypatch):
    """Besides hs (T+1, B, H) and the outputs (O, T, B), no work buffer spans the sequence:
    the same buffers serve T = 600 and T = 1,200."""
    B, H, O = 2, 3, 2
    monkeypatch.setattr(bptt, "_SPAN_BYTES", 16 * B * H * 8)
    monkeypatch.setattr(bptt, "_BLOCK_BYTES", 16 * B * H * 8)  # the forward's blocks, 16 steps too
    rng = np.random.default_rng(34)
    for spec in ["k_truncated:20", "tbptt:5:20"]:
        sizes = []
        for T in (600, 1200):
            p, x, tg, m, _ = ref.random_problem(rng, T, B, 2, H, O, "cross_entropy")
            ws = bptt.Workspace()
            bptt.loss_and_gradients(p, x, tg, m, spec, workspace=ws)
            big = {key[0]: buf.shape for key, buf in ws._bufs.items() if buf.size >= T * B}
            assert set(big) <= {"hs", "y"}, f"{spec}: buffers of the sequence's length: {big}"
            sizes.append(sum(buf.size for key, buf in ws._bufs.items() if key[0] not in ("hs", "y")))
        assert sizes[0] == sizes[1], f"{spec}: work buffers grow with T: {sizes}"


# -- exact O(T) k-truncation for the identity activation ------------------------------------
def _spec_cw(spec: str) -> tuple[int, int]:
    """(C, W) of a spec without the reduction to full, so short sequences reach the path too."""
    mode, *args = spec.split(":")
    return (1, int(args[0]) + 1) if mode == "k_truncated" else (int(args[0]), int(args[1]))


IDENTITY_CASES = [  # (T, B, H, spec): T < K, T not a multiple of K+1, K = 0, B = 1, H = 1, tbptt
    (1, 1, 1, "k_truncated:0"),
    (9, 2, 3, "k_truncated:0"),
    (3, 2, 4, "k_truncated:6"),
    (10, 1, 3, "k_truncated:3"),
    (11, 2, 1, "k_truncated:3"),
    (17, 3, 5, "k_truncated:4"),
    (23, 2, 4, "k_truncated:2"),
    (12, 2, 3, "k_truncated:11"),
    (13, 2, 3, "k_truncated:1"),
    (14, 2, 4, "tbptt:2:6"),
    (13, 1, 3, "tbptt:3:9"),
    (10, 2, 3, "tbptt:5:10"),
    (9, 2, 2, "tbptt:3:3"),
]


@pytest.mark.parametrize("groups", ["one", "many"])
@pytest.mark.parametrize("lk", ref.LOSSES)
@pytest.mark.parametrize("T, B, H, spec", IDENTITY_CASES)
def test_identity_powers_match_reference(monkeypatch, T, B, H, spec, lk, groups):
    rng = np.random.default_rng([35, T, B, H, len(spec), ref.LOSSES.index(lk)])
    p, x, tg, m, h0 = ref.random_problem(rng, T, B, 2, H, 3, lk, density=0.8, with_h0=True)
    if groups == "many":  # one block per group: every group boundary carries a prefix
        monkeypatch.setattr(bptt, "_SPAN_BYTES", 1)
    C, W = _spec_cw(spec)
    ws = bptt.Workspace()
    _, hs, dy = bptt.forward_and_loss(p, x, tg, m, h0, "identity", lk, ws)
    g = bptt._identity_gradients(p, x, hs, dy, C, W, ws)
    _, g_r = ref.gradients(p, x, tg, m, spec, "identity", lk, h0)
    assert_grads_match(g, g_r, f"{spec} T={T} B={B} H={H} {lk} {groups} group(s)")


@pytest.mark.parametrize("spec", ["k_truncated:3", "k_truncated:5", "tbptt:2:4", "tbptt:3:9"])
def test_identity_activation_takes_the_powers_path(monkeypatch, spec):
    """loss_and_gradients picks the O(T) path by itself (W >= 4, where three matvecs per step
    beat W of them), and it equals the reference."""
    def no_sweep(*args, **kwargs):
        raise AssertionError("the lag sweep ran for the identity activation")

    monkeypatch.setattr(bptt, "_lag_gradients", no_sweep)
    rng = np.random.default_rng(36)
    p, x, tg, m, h0 = ref.random_problem(rng, 40, 2, 3, 4, 3, "mse", density=0.6, with_h0=True)
    _, g, _ = bptt.loss_and_gradients(p, x, tg, m, spec, activation="identity", loss="mse", h0=h0)
    assert_grads_match(g, ref.gradients(p, x, tg, m, spec, "identity", "mse", h0)[1], spec)


def test_identity_powers_stay_accurate_over_long_windows():
    """K = 60 with a spectral radius near 1: the powers reach W_hh^60 and the result still
    agrees with the lag sweep (same maths, no powers) to float64 rounding."""
    rng = np.random.default_rng(37)
    T, B, H = 200, 2, 6
    p, x, tg, m, _ = ref.random_problem(rng, T, B, 3, H, 3, "cross_entropy")
    q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    p["W_hh"] = 0.98 * q
    ws = bptt.Workspace()
    _, hs, dy = bptt.forward_and_loss(p, x, tg, m, None, "identity", "cross_entropy", ws)
    g = bptt._identity_gradients(p, x, hs, dy, 1, 61, ws)
    g_sweep = bptt._lag_gradients(p, x, hs, dy, 1, 61, "identity", ws)
    assert_grads_match(g, g_sweep, "k_truncated:60 powers vs sweep", tol=1e-12)


def test_identity_powers_that_overflow_fall_back_to_the_sweep():
    """W_hh = 4 Q in float32: W_hh^70 overflows, yet the gradient of a loss at step 5 alone
    is finite (it reaches back 5 steps). The powers would turn the zero rows of the
    unsupervised steps into NaN; the sweep runs instead and gets it right."""
    rng = np.random.default_rng(38)
    T, B, H = 100, 1, 3
    p, x, tg, m, _ = ref.random_problem(rng, T, B, 2, H, 2, "mse")
    q, _ = np.linalg.qr(rng.normal(size=(H, H)))
    p["W_hh"] = 4.0 * q
    p["b_h"][:] = 0
    x[:] = 0  # all states stay 0: a finite forward whatever 4^t
    m[:] = 0
    m[5] = 1
    p32 = {k: v.astype(np.float32) for k, v in p.items()}
    f32 = lambda a: a.astype(np.float32)
    _, g, _ = bptt.loss_and_gradients(p32, f32(x), f32(tg), f32(m), "k_truncated:70", activation="identity",
                                      loss="mse")
    _, g_r = ref.gradients(p, x, tg, m, "k_truncated:70", "identity", "mse")
    for k in KEYS:
        assert ref.rel_err(g[k], g_r[k], 1e-6) < 1e-5, k
    ws = bptt.Workspace()
    _, hs, dy = bptt.forward_and_loss(p32, f32(x), tg.astype(np.float32), f32(m), None, "identity", "mse", ws)
    assert bptt._identity_gradients(p32, f32(x), hs, dy, 1, 71, ws) is None
