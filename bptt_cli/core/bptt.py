r"""Backpropagation through time, exact for every truncation mode.

Notation (the lecture's, 0-indexed): a_t = W_xh x_t + W_hh h_{t-1} + b_h, h_t = phi(a_t),
y_t = W_hy h_t + b_y, and the total loss L = sum_t sum_b m_tb L_tb / sum(m).

What is computed
----------------
For the loss at step t the gradient flows back through steps f(t) .. t and stops there:
h_{f(t)-1} is a constant (``detach()``), although the local weight gradient of step f(t),
which uses h_{f(t)-1} as its input, still counts. With delta_s^{(t)} = dL_t/da_s,

    dL_t/dh_t       = W_hy^T dL_t/dy_t                      (the direct term)
    dL_t/dh_{s-1}   = W_hh^T delta_s^{(t)},  delta_s^{(t)} = phi'(a_s) * dL_t/dh_s,  f(t) < s <= t
    dL/dW_hh        = sum_t sum_{s=f(t)}^{t} delta_s^{(t)} h_{s-1}^T      (dW_xh: x_s, db_h: 1)

The lecture's product of Jacobians dh_t/dh_{t-k} = prod phi'(a) W_hh is never formed: the
adjoints are pushed back one step at a time. Writing A_s = sum_t delta_s^{(t)} (the summed
pre-activation adjoint at step s), every weight gradient is a matmul over many steps at
once (a block of steps at a time, see below), never an outer product per step:
dW_hh = A^T [h_{-1} .. h_{T-2}], dW_xh = A^T x, db_h = sum A.

How it is vectorised
--------------------
Every mode is "chunks of C steps whose losses look back W steps from the chunk's last step"
(see ``truncation.py``). Two loops cover them (and a shortcut for the identity activation,
below), and Python never iterates over (t, s) pairs:

    W == C   full (C = T), subsequence:K, tbptt:K:K
             ONE backward chain t = T-1 .. 0, cut at every chunk start: a chunk's windows all
             begin at its first step, so the adjoint leaving it, dL/dh_{start-1}, is dropped
             instead of propagated. Each step is on exactly one window.

    W > C    k_truncated:K (C = 1, W = K + 1), tbptt:K1:K2 with K2 > K1 (C = K1, W = K2)
             windows overlap, so every chunk needs a chain of its own. Chain c starts at the
             chunk's last step e_c = (c+1)C - 1 and walks back; at lag j all live chains sit
             at steps e_c - j, evenly spaced C apart, so a strided view holds them and ONE
             batched matmul advances all of them:

    lag j:   chains c = j//C .. nC-1   at steps s = e_c - j      (chunk losses injected while j < C)

So Python runs T iterations (W == C) or W iterations per group of chains (W > C), each a
handful of NumPy calls on preallocated buffers. In the lag sweep the time axis is padded to
a multiple of C with zero losses so the views stay regular.

    W > C, phi = identity (W a multiple of C)
             the Jacobian is the constant W_hh, so the adjoints regroup by their offset in
             blocks of W steps into three passes of one matvec per step, with the powers
             W_hh^2 .. W_hh^{W-1}: exact, O(T) instead of O(W T) (``_identity_gradients``).

The random modes (``truncation.py``; derivations in docs/truncation.md) reuse these loops:

    random_k:MEAN  loss t keeps lags j <= L_t, its lag-j adjoint weighted 1 / q^j
             (``_random_k_gradients``): the lag sweep with one chain per loss, chains sorted
             by L_t so the live ones are a shrinking prefix, stepping back with W_hh / q so
             each chain carries its lag's weight
    artbp:MEAN     the single chain, cut at the drawn points as at chunk starts, carrying the
             adjoint with W_hh / (1 - c) across every other step (``_chain_gradients``)

Every pass walks time in pieces: the forward pass and the chain in blocks of a few steps
sized for the L2 cache (a block's input projections, steps and outputs; or its direct
terms, steps and share of every weight gradient, while its rows are still in cache), the
lag sweep in spans of a few hundred steps, last first, each handing the adjoints its chains
leave in the span before to that span. Only h_t (T+1, B, H) and the outputs (O, T, B) span
the whole sequence, so memory grows as O(T B (H + O)) in every mode; the lag sweep adds
O((S + W) B H) for its spans of S steps.

``chunked_pass`` (``update_every: chunk``) runs the same pieces one chunk at a time, with
the W_hh each earlier step ran with for windows that reach back into earlier chunks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bptt_cli.core.errors import DivergedError, InvalidInputError
from bptt_cli.core.losses import LOSSES, CrossEntropyChunks
from bptt_cli.core.model import ACTIVATIONS, PARAM_NAMES, check_activation, forward_into
from bptt_cli.core.truncation import Truncation, parse


class Workspace:
    """Work buffers reused across calls with the same shapes (never the returned gradients).

    ``states()`` reads the hidden states of the last forward pass run with this workspace, so
    a caller (diagnostics) can reuse a training step's forward instead of running it again.
    """

    def __init__(self) -> None:
        self._bufs: dict[tuple, np.ndarray] = {}
        self._states: np.ndarray | None = None
        self._chunks: tuple | None = None

    def states(self) -> np.ndarray:
        """hs (T+1, B, H) of the last forward pass: hs[0] = h0, hs[t+1] = h_t.

        Filled by ``loss_and_gradients``, ``forward_and_loss`` and ``chunked_pass`` (where
        step t ran with the weights of its chunk, before that chunk's update). A view of a
        work buffer: valid until the next call with this workspace; copy it to keep it.
        """
        if self._states is None:
            raise InvalidInputError("no forward pass has run with this workspace yet")
        return self._states

    def chunks(self) -> tuple[np.ndarray, np.ndarray]:
        """(firsts, lasts) of the chunks of the running or last ``chunked_pass``: chunk i (the
        ``on_chunk`` index) is steps firsts[i] .. lasts[i] - 1. Set before the first callback,
        so an ``on_chunk`` can read it; artbp's chunks are drawn anew on every pass."""
        if self._chunks is None:
            raise InvalidInputError("no chunked pass has run with this workspace yet")
        return self._chunks

    def get(self, name: str, shape: tuple, dtype, zero: bool = False) -> np.ndarray:
        key = (name, shape, np.dtype(dtype))
        buf = self._bufs.get(key)
        if buf is None:
            # One shape per name: drop buffers of an older shape so memory does not pile up.
            for k in [k for k in self._bufs if k[0] == name]:
                del self._bufs[k]
            buf = np.zeros(shape, dtype=dtype)
            self._bufs[key] = buf
        elif zero:
            buf.fill(0)
        return buf


def _fmt_shape(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_inputs(params, x, targets, mask, h0, loss: str):
    """Validate shapes, dtypes and values; return (targets, mask, h0) in the engine's dtypes."""
    if not isinstance(params, dict) or set(params) != set(PARAM_NAMES):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise InvalidInputError(f"params must be a dict with keys {', '.join(PARAM_NAMES)}, got {got}")
    dt = params["W_hh"].dtype
    if dt not in (np.float32, np.float64):
        raise InvalidInputError(f"params must be float32 or float64, got W_hh of dtype {dt}")
    H, I = params["W_xh"].shape if params["W_xh"].ndim == 2 else (None, None)
    O = params["W_hy"].shape[0] if params["W_hy"].ndim == 2 else None
    expected = {"W_xh": (H, I), "W_hh": (H, H), "b_h": (H,), "W_hy": (O, H), "b_y": (O,)}
    for k in PARAM_NAMES:
        p = params[k]
        if not isinstance(p, np.ndarray) or p.shape != expected[k] or None in expected[k]:
            raise InvalidInputError(
                f"params[{k!r}] must have shape {_fmt_shape(expected[k])} for H={H}, I={I}, O={O}, "
                f"got {_fmt_shape(getattr(p, 'shape', ()))}"
            )
        if p.dtype != dt:
            raise InvalidInputError(f"params[{k!r}] has dtype {p.dtype} but W_hh has {dt}; use one dtype")
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != I:
        raise InvalidInputError(f"x must have shape (T, B, I={I}), got {_fmt_shape(getattr(x, 'shape', ()))}")
    if x.dtype != dt:
        raise InvalidInputError(f"x has dtype {x.dtype} but the parameters are {dt}; cast one of them")
    T, B, _ = x.shape
    if T < 1 or B < 1:
        raise InvalidInputError(f"x must have T >= 1 and B >= 1, got shape {_fmt_shape(x.shape)}")
    if not np.isfinite(x).all():
        raise InvalidInputError("x contains NaN or Inf")

    mask = np.asarray(mask)
    if mask.shape != (T, B):
        raise InvalidInputError(f"mask must have shape (T, B) = {_fmt_shape((T, B))}, got {_fmt_shape(mask.shape)}")
    if mask.dtype != dt:
        if not (mask.dtype == bool or np.issubdtype(mask.dtype, np.number)):
            raise InvalidInputError(f"mask must be numeric or bool, got dtype {mask.dtype}")
        mask = mask.astype(dt)
    if not ((mask == 0) | (mask == 1)).all():
        raise InvalidInputError("mask values must be 0 or 1")
    if not mask.any():
        raise InvalidInputError("mask has no supervised step (all zeros): the loss is undefined")

    if loss not in LOSSES:
        raise InvalidInputError(f"loss must be one of {', '.join(LOSSES)}, got {loss!r}")
    targets = np.asarray(targets)
    if loss == "cross_entropy":
        if targets.shape != (T, B):
            raise InvalidInputError(
                f"cross_entropy targets must have shape (T, B) = {_fmt_shape((T, B))}, got {_fmt_shape(targets.shape)}"
            )
        if not np.issubdtype(targets.dtype, np.integer):
            raise InvalidInputError(f"cross_entropy targets must be integer class indices, got dtype {targets.dtype}")
        if targets.size and (targets.min() < 0 or targets.max() >= O):
            raise InvalidInputError(
                f"cross_entropy targets must lie in [0, {O - 1}] (O = {O}), got values in "
                f"[{targets.min()}, {targets.max()}]"
            )
    else:
        if targets.shape != (T, B, O):
            raise InvalidInputError(
                f"mse targets must have shape (T, B, O) = {_fmt_shape((T, B, O))}, got {_fmt_shape(targets.shape)}"
            )
        if not np.issubdtype(targets.dtype, np.floating) and not np.issubdtype(targets.dtype, np.integer):
            raise InvalidInputError(f"mse targets must be numeric, got dtype {targets.dtype}")
        targets = targets.astype(dt, copy=False)
        if not np.isfinite(targets).all():
            raise InvalidInputError("targets contain NaN or Inf")

    if h0 is not None:
        h0 = np.asarray(h0)
        if h0.shape != (B, H):
            raise InvalidInputError(f"h0 must have shape (B, H) = {_fmt_shape((B, H))}, got {_fmt_shape(h0.shape)}")
        if not np.isfinite(h0).all():
            raise InvalidInputError("h0 contains NaN or Inf")
    return targets, mask, h0


def _grads_layout(params: dict) -> tuple[int, list]:
    """(size, [(key, byte offset, shape)]): how ``_new_grads`` cuts its flat buffer."""
    parts, at = [], 0
    for k in PARAM_NAMES:
        parts.append((k, at * params[k].itemsize, params[k].shape))
        at += params[k].size
    return at, parts


def _new_grads(params: dict, zero: bool = True, layout: tuple | None = None) -> dict:
    """Gradients with the params' keys and shapes: C-ordered views into one fresh buffer,
    so a call allocates once and checks finiteness once (``_check_finite_grads``). Zeroed,
    unless ``zero`` is False for a caller that writes every element. ``layout``: that of
    ``_grads_layout(params)``, for a caller that makes many."""
    dt = params["W_hh"].dtype
    size, parts = layout or _grads_layout(params)
    flat = (np.zeros if zero else np.empty)(size, dt)
    return {k: np.ndarray(shape, dt, flat, offset) for k, offset, shape in parts}  # views, no copies


def _check_finite_grads(grads: dict) -> None:
    flat = grads["W_xh"].base  # the buffer of _new_grads
    if flat is not None and flat.size == sum(g.size for g in grads.values()) and np.isfinite(flat).all():
        return
    for k, g in grads.items():
        if not np.isfinite(g).all():
            raise DivergedError(f"gradient {k}")


def _block_steps(T: int, B: int, H: int, dtype) -> int:
    """Steps per block: a block's (B, H) rows of h, dL/dh and A stay in the L2 cache together.

    At most T, the whole sequence's length: ``chunked_pass`` passes its T for every chunk, so
    chunks of different lengths share one set of block buffers.
    """
    return min(T, max(1, _BLOCK_BYTES // (B * H * np.dtype(dtype).itemsize)))


_BLOCK_BYTES = 1 << 18


def _chain_gradients(params: dict, x, hs, dy, C: int, activation: str, ws: Workspace, T_seq: int | None = None,
                     cut: list | None = None, W_back: np.ndarray | None = None) -> dict:
    """W == C: the classic backward loop over t = T-1 .. 0, cut at every chunk start; the grads.

    x (T, B, I); hs (T+1, B, H) with hs[t+1] = h_t; dy (O, T, B) class-major dL/dy. Time runs
    in blocks of Tb steps, last block first: the block's direct terms dL/dh_t = dL/dy_t @ W_hy
    (one matmul), the loop over its steps turning them into the adjoints A_t in place, then
    the block's share of every weight gradient (one matmul each), all while the block's rows
    are still in cache. ARTBP (``artbp:MEAN``): ``cut`` (T,) bools cut the chain at the steps
    where they are True as well, and ``W_back`` = W_hh / (1 - c) carries the adjoint across
    every other step, so it arrives multiplied by the compensation factor 1/(1 - c).
    """
    T, B, I = x.shape
    H = hs.shape[2]
    O = dy.shape[0]
    dt = hs.dtype
    W_hh, W_hy = params["W_hh"] if W_back is None else W_back, params["W_hy"]
    # T_seq: chunked_pass calls this per chunk; the buffers are sized by the whole sequence.
    buf = ws.get("block", (_block_steps(T_seq or T, B, H, dt), B, H), dt)  # dL/dh_t of a block's steps, then A_t
    dphi_buf = ws.get("dphi_block", buf.shape, dt)
    Tb = min(T, buf.shape[0])
    g = ws.get("g", (B, H), dt, zero=True)  # dL/dh_t from the steps after t
    ones = _ones(ws, "ones_block", buf.shape[0] * B, dt)  # one size for every chunk length
    grads = _new_grads(params, zero=False)  # the first block writes every element
    first = True  # the last block, which runs first, writes the gradients instead of adding to them
    for t0 in range((T - 1) // Tb * Tb, -1, -Tb):
        t1 = min(t0 + Tb, T)
        n = (t1 - t0) * B
        dy_b = dy[:, t0:t1].reshape(O, n)  # (O, n) view
        dh = buf[: t1 - t0]
        np.matmul(dy_b.T, W_hy, out=dh.reshape(n, H))
        dphi = _dphi_into(activation, hs[t0 + 1 : t1 + 1], dphi_buf[: t1 - t0])  # phi'(a_t), or None
        rows = zip(range(t1 - 1, t0 - 1, -1), dh[::-1], dphi[::-1] if dphi is not None else [None] * (t1 - t0))
        for t, da, dphi_t in rows:
            # da starts as the direct term dL/dh_t and becomes A_t = phi'(a_t) * dL/dh_t
            g += da
            if dphi_t is None:
                da[...] = g
            else:
                np.multiply(g, dphi_t, out=da)
            if t % C == 0 or (cut is not None and cut[t]):  # chunk start: h_{t-1} is a constant for its losses
                g.fill(0)
            elif t > 0:
                np.matmul(da, W_hh, out=g)  # dL/dh_{t-1} = dL/da_t @ W_hh
        A = dh.reshape(n, H)
        _acc(grads["W_hh"], A.T, hs[t0:t1].reshape(n, H), first)
        _acc(grads["W_xh"], A.T, x[t0:t1].reshape(n, I), first)
        _acc(grads["b_h"], ones[:n], A, first)  # the sum over rows; BLAS is 3x faster than A.sum(axis=0)
        _acc(grads["W_hy"], dy_b, hs[t0 + 1 : t1 + 1].reshape(n, H), first)
        if first:
            dy_b.sum(axis=1, out=grads["b_y"])
        else:
            grads["b_y"] += dy_b.sum(axis=1)
        first = False
    return grads


def _acc(out: np.ndarray, a: np.ndarray, b: np.ndarray, first: bool) -> None:
    """out = a @ b for the first block of a sum (no temporary), out += a @ b after it."""
    if first:
        np.matmul(a, b, out=out)
    else:
        out += a @ b


def _ones(ws: Workspace, name: str, n: int, dt) -> np.ndarray:
    """A vector of n ones kept in the workspace: ones @ A sums A's rows in one BLAS call."""
    buf = ws.get(name, (n,), dt)
    if buf[0] != 1:  # a fresh (zeroed) buffer
        buf.fill(1)
    return buf


def _lag_gradients(params: dict, x, hs, dy, C: int, W: int, activation: str, ws: Workspace) -> dict:
    """W > C: the gradients through overlapping windows, time in spans of S steps, last first.

    x (T, B, I); hs (T+1, B, H); dy (O, T, B). A span covers whole chunks, steps s0 .. e0-1,
    and its chains reach P = W - C steps further back, so its work buffers (dL/dh_t,
    phi'(a_t) and A_t) hold the P + S rows of steps s0 - P .. e0-1 and never the whole
    sequence: memory beyond hs and the outputs is O((S + W) B H), not O(T B H).

        steps    s0-P .. s0-1 | s0 ............. e0-1 | e0 .. e0+P-1
                 carry out    | this span's chunks    | carry in (from the later span)

    The rows s0 .. e0-1 of A are complete once this span's chains have run, because the
    later span's chains, which also reach them, ran first and left their share in the carry
    (at most P rows, S >= P). Those rows go straight into the weight gradients (one matmul
    each); the rows s0-P .. s0-1 become the carry of the span before.
    """
    T, B, I = x.shape
    H = hs.shape[2]
    O = dy.shape[0]
    dt = hs.dtype
    W_hh, W_hy = params["W_hh"], params["W_hy"]
    nC = -(-T // C)  # chunks; the last may run past T, with zero losses there
    P = W - C
    n = max(1, _GROUP_BYTES // (B * H * dt.itemsize))  # chains per group
    m = max(-(-P // C), -(-_SPAN_BYTES // (B * H * dt.itemsize * C)), 1)  # chunks per span, S = mC >= P
    if m > n:
        m = -(-m // n) * n  # whole groups, so only the sequence's last group is short
    rows = P + m * C
    dh = ws.get("lag_dh", (rows, B, H), dt)  # dL/dh_t through the output alone (the direct term)
    dphi = ws.get("lag_dphi", (rows, B, H), dt) if activation != "identity" else None
    A = ws.get("lag_A", (rows, B, H), dt)
    carry = ws.get("lag_carry", (P, B, H), dt)
    G = ws.get("G", (min(n, m), B, H), dt)  # dL/dh at each chain's current step
    D = ws.get("D", (min(n, m), B, H), dt)  # dL/da there
    ones = _ones(ws, "ones_span", m * C * B, dt)
    grads = _new_grads(params)
    for k0 in range((nC - 1) // m * m, -1, -m):
        k1 = min(k0 + m, nC)
        s0, e0 = k0 * C, k1 * C
        t1 = min(e0, T)  # the span's last real step + 1
        base = s0 - P  # row r of the buffers is step base + r
        S = e0 - s0
        nt = (t1 - s0) * B
        np.matmul(dy[:, s0:t1].reshape(O, nt).T, W_hy, out=dh[P : P + t1 - s0].reshape(nt, H))
        dh[P + t1 - s0 : P + S] = 0  # padding past T: no losses
        if dphi is not None:
            f0 = max(s0 - P, 0)
            _dphi_into(activation, hs[f0 + 1 : t1 + 1], dphi[f0 - base : t1 - base])
            dphi[t1 - base : e0 - base] = 0
        A[: P + S] = 0
        if k1 < nC:  # a later span ran: its chains' share of steps e0-P .. e0-1
            A[S : S + P] += carry
        for c0 in range(k0, k1, n):
            c1 = min(c0 + n, k1)
            _lag_sweep(dh, dphi, W_hh, C, min(W, c1 * C), c0, c1, A, G[: c1 - c0], D[: c1 - c0], base)
        carry[...] = A[:P]
        Ab = A[P : P + t1 - s0].reshape(nt, H)
        grads["W_hh"] += Ab.T @ hs[s0:t1].reshape(nt, H)
        grads["W_xh"] += Ab.T @ x[s0:t1].reshape(nt, I)
        grads["b_h"] += ones[:nt] @ Ab  # the sum over rows; BLAS is 3x faster than A.sum(axis=0)
    dy2 = dy.reshape(O, T * B)
    np.matmul(dy2, hs[1:].reshape(T * B, H), out=grads["W_hy"])
    dy2.sum(axis=1, out=grads["b_y"])
    return grads


_SPAN_BYTES = 1 << 22  # per work buffer of the lag sweep: spans of S steps, S B H of these bytes
_GROUP_BYTES = 1 << 18  # chain buffer size per group: L2-sized work, still big matmuls


def _lag_sweep(dh, dphi, W_hh, C: int, lags: int, c0: int, c1: int, A, G, D, base: int) -> None:
    """Chains c0 .. c1-1 through their W lags, adding each lag's dL/da into A (see _lag_gradients).

    Row r of dh, dphi and A is step base + r. G[i], D[i] belong to chain c0 + i; at lag j the
    live chains are c = max(c0, j//C) .. c1-1, at steps (c+1)C - 1 - j (chains of earlier
    chunks have reached step 0 and stopped). The chains run in groups: a group's chain
    buffers and the rows of A and phi' it touches stay in cache across its W lags, where one
    sweep over all chains would stream the span's arrays from memory W times.
    """
    G[...] = dh[(c0 + 1) * C - 1 - base : c1 * C - base : C]  # lag 0: each chain starts at its chunk's last step
    for j in range(lags):
        lo = max(c0, j // C)
        p0 = (lo + 1) * C - 1 - j - base
        at = slice(p0, p0 + (c1 - lo) * C, C)  # the rows of the steps the live chains are at
        g = G[lo - c0 :]
        if dphi is None:
            da = g
        else:
            da = D[lo - c0 :]
            np.multiply(g, dphi[at], out=da)
        A[at] += da
        if j + 1 == lags:
            break
        lo2 = max(c0, (j + 1) // C)
        if lo2 == c1:
            break
        # G and D are contiguous (chains, B, H) buffers: as (chains * B, H) rows the step is
        # one BLAS call; the 3-D form makes one per chain (about 15% slower on config A).
        H = W_hh.shape[0]
        if da is g:  # identity: G is the matmul's input, write into D
            np.matmul(g[lo2 - lo :].reshape(-1, H), W_hh, out=D[lo2 - c0 :].reshape(-1, H))
            G, D = D, G
        else:  # dL/dh_{s-1} = dL/da_s @ W_hh
            np.matmul(da[lo2 - lo :].reshape(-1, H), W_hh, out=G[lo2 - c0 :].reshape(-1, H))
        if j + 1 < C:  # still inside the chunk: add the losses of step s-1
            G[lo2 - c0 :] += dh[p0 - 1 : p0 - 1 + (c1 - lo2) * C : C]


def _random_k_gradients(params: dict, x, hs, dy, L: np.ndarray, q: float, supervised: np.ndarray, activation: str,
                        ws: Workspace) -> dict:
    r"""``random_k:MEAN``: loss t keeps lags j <= L_t, lag j weighted by 1 / q^j; the grads.

    x (T, B, I); hs (T+1, B, H); dy (O, T, B); L (T,) the drawn window lengths (L_t <= t);
    q = P(L >= 1), so P(L >= j) = q^j; supervised (T,) bool, the steps with a loss. The lag
    sweep of ``k_truncated`` with one chain per loss, each running only as far as its own L_t:

        A_s = sum_t  1[L_t >= t - s] / q^(t-s)  delta_s^{(t)},   E[A_s] = the full A_s

    The chains are sorted by L_t, longest first, so at lag j the live ones (L_t >= j) are a
    prefix of the chain buffer that shrinks as j grows, and a chain is dropped once its L_t
    is passed: the sweep costs sum_t (L_t + 1) chain-steps, E = (MEAN + 1) per loss, as
    ``k_truncated:MEAN`` does. Every live chain at lag j carries the same weight 1/q^j (its
    mask is 1 by construction), one scalar per lag; the chains carry it themselves by
    stepping back with W_hh / q instead of W_hh, so what a chain adds into A at lag j is
    already q^(-j) delta_s^{(t)}. The live chains sit at the distinct steps t - j, so a
    gather of their phi' rows and one indexed add into A serve all of them (no duplicate
    indices). Memory: A, phi' (T, B, H) and two chain buffers of at most T B H, beside hs.
    """
    T, B, I = x.shape
    H = hs.shape[2]
    O = dy.shape[0]
    dt = hs.dtype
    W_q, W_hy = params["W_hh"] * (1.0 / q), params["W_hy"]  # the step back, times the next lag's 1/q
    ts = np.flatnonzero(supervised)
    order = np.argsort(-L[ts], kind="stable")  # longest window first
    ts = ts[order]
    Ls = L[ts]
    n = len(ts)
    live = np.searchsorted(-Ls, -np.arange(int(Ls[0]) + 2), side="right")  # live[j] = #chains with L_t >= j
    A = ws.get("rk_A", (T, B, H), dt, zero=True)
    G = ws.get("rk_G", (T, B, H), dt)[:n]  # dL_t/dh at each chain's current step
    D = ws.get("rk_D", (T, B, H), dt)[:n]
    np.matmul(dy[:, ts].reshape(O, n * B).T, W_hy, out=G.reshape(n * B, H))  # lag 0: the direct terms
    dphi = _dphi_into(activation, hs[1:], ws.get("rk_dphi", (T, B, H), dt))  # phi'(a_s), or None
    for j in range(int(Ls[0]) + 1):
        nj = int(live[j])
        at = ts[:nj] - j  # the steps the live chains are at, all distinct
        g = G[:nj]
        da = g if dphi is None else np.multiply(g, dphi[at], out=D[:nj])  # q^(-j) dL_t/da_s
        A[at] += da
        n1 = int(live[j + 1])
        if n1 == 0:
            break
        # q^(-j-1) dL_t/dh_{s-1} = (q^(-j) dL_t/da_s) @ (W_hh / q), for the chains live at lag j + 1
        out = D if da is g else G
        np.matmul(da[:n1].reshape(n1 * B, H), W_q, out=out[:n1].reshape(n1 * B, H))
        if da is g:
            G, D = D, G
    A2 = A.reshape(T * B, H)
    grads = _new_grads(params, zero=False)
    np.matmul(A2.T, hs[:T].reshape(T * B, H), out=grads["W_hh"])
    np.matmul(A2.T, x.reshape(T * B, I), out=grads["W_xh"])
    np.matmul(_ones(ws, "ones_rk", T * B, dt), A2, out=grads["b_h"])
    dy2 = dy.reshape(O, T * B)
    np.matmul(dy2, hs[1:].reshape(T * B, H), out=grads["W_hy"])
    dy2.sum(axis=1, out=grads["b_y"])
    return grads


def _powers_pay(T: int, B: int, H: int, C: int, W: int, dtype) -> bool:
    """Whether ``_identity_gradients`` applies and beats the lag sweep: windows of whole chunks
    (W a multiple of C), the W powers of W_hh small enough to keep, and their cost (W H^3)
    plus three matvecs per step (3 T B H^2) below the sweep's W per step (W T B H^2)."""
    return W % C == 0 and W * H * H * np.dtype(dtype).itemsize <= _POWERS_BYTES and 3 * T * B + W * H < W * T * B


_POWERS_BYTES = 1 << 26


def _identity_gradients(params: dict, x, hs, dy, C: int, W: int, ws: Workspace) -> dict | None:
    r"""W > C, phi = identity, W a multiple of C: exact and O(T), from powers of W_hh.

    With phi' = 1 the step Jacobian is the constant W_hh, so (rows, as in the code, with
    e_t = dL_t/dh_t the direct term and M = W_hh) the adjoint of a_s for the loss at t is

        delta_s^{(t)} = e_t M^{t-s},     and     A_s = sum_{t: f(t) <= s <= t} e_t M^{t-s}.

    f(t) <= s holds for t up to the last step of the chunk W - C steps after s's chunk:
    t <= C floor(s/C) + W - 1 (W a multiple of C; k_truncated:K is C = 1, W = K + 1). Cut
    time into blocks of L = W steps, s = qL + r with 0 <= r < L, and let r' = C floor(r/C)
    (the offset of s's chunk in its block). The window of losses covering s then runs from s
    to the end of block q, and on into block q+1 up to offset r' - 1:

        A_s = sum_{t=s}^{qL+L-1} e_t M^{t-s}  +  sum_{u=0}^{r'-1} e_{(q+1)L+u} M^{L-r+u}
            = R_s                             +  P_{q+1}(r') M^{L-r}

        R_s       = e_s + R_{s+1} M  inside block q, R = 0 past its end   (a chain cut at blocks)
        P_q(r')   = sum_{u<r'} e_{qL+u} M^u                                (a prefix sum of F)

        block:    q                                  q+1
        steps:    [qL ...... s ......... qL+L-1]     [(q+1)L .. (q+1)L+r'-1 ....]
        A_s:             R_s: the suffix of q         P_{q+1}(r') M^{L-r}: the head of q+1

    Every term keeps its sign: no difference of two large sums (as in "full minus the part
    beyond the window"), so the result is as accurate as the lag sweep's. The cost is the
    powers M^2 .. M^{L-1} (L - 2 products of H x H matrices) and three matvecs per step (R,
    F_u = e_u M^u, and the head times M^{L-r}), where the lag sweep makes W per step.

    Blocks are laid out offset-major, (L, G, B, H) for a group of G blocks, so each of the
    three passes is one matmul per offset r over the G blocks' rows. Groups run last first:
    a group's last block needs the P of the first block of the group after it, carried in
    slot G of the P buffer. Memory beyond the states: O(G L B H) and the L powers. Returns
    None when a power overflows (a spectral radius far above 1): its zero rows would turn
    into NaN, where the lag sweep keeps them zero.
    """
    T, B, I = x.shape
    H = hs.shape[2]
    O = dy.shape[0]
    dt = hs.dtype
    M, W_hy = params["W_hh"], params["W_hy"]
    L = W
    nQ = -(-T // L)  # blocks; the last may run past T, with zero losses there
    G = min(nQ, max(1, -(-_SPAN_BYTES // (L * B * H * dt.itemsize))))  # blocks per group
    GB = G * B
    Mp = ws.get("powers", (L, H, H), dt)  # Mp[j] = M^j, j >= 1
    if L > 1:
        Mp[1] = M
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught just below
        for j in range(2, L):
            np.matmul(Mp[j - 1], M, out=Mp[j])
    if L > 1 and not np.isfinite(Mp[L - 1]).all():
        return None
    Etm = ws.get("id_time", (G * L, B, H), dt)  # time-major rows: e_t, later A_t
    A = ws.get("id_A", (L, G, B, H), dt)  # offset-major: A[r, g] is step (q0 + g) L + r
    Pb = ws.get("id_P", (L, G + 1, B, H), dt)  # Pb[u, g] = P_{q0+g}(u+1); slot G: the next group's first block
    tmp = ws.get("id_tmp", (GB, H), dt)
    ones = _ones(ws, "ones_powers", G * L * B, dt)
    grads = _new_grads(params)
    heads = L - C  # P is needed at r' - 1 for r' = C, 2C, .., L - C: offsets u < L - C
    for q0 in range((nQ - 1) // G * G, -1, -G):
        q1 = min(q0 + G, nQ)
        s0, t1 = q0 * L, min(q1 * L, T)
        nt = (t1 - s0) * B
        np.matmul(dy[:, s0:t1].reshape(O, nt).T, W_hy, out=Etm[: t1 - s0].reshape(nt, H))  # e_t
        Etm[t1 - s0 :] = 0  # past T (or past this group's blocks): no losses
        A[...] = Etm.reshape(G, L, B, H).transpose(1, 0, 2, 3)
        # F_u = e_u M^u, summed into the prefixes P(u+1), for the blocks of this group.
        if q1 == nQ:
            Pb[:, G] = 0  # no block after the last one
        if heads > 0:
            Pb[0, :G] = A[0]
            for u in range(1, heads):
                np.matmul(A[u].reshape(GB, H), Mp[u], out=Pb[u, :G].reshape(GB, H))
                Pb[u, :G] += Pb[u - 1, :G]
        # R: the chain inside each block, all G blocks per matmul.
        for r in range(L - 2, -1, -1):
            np.matmul(A[r + 1].reshape(GB, H), M, out=tmp)
            A[r] += tmp.reshape(G, B, H)
        # The heads of the next blocks: A_s += P_{q+1}(r') M^{L-r} for r >= C.
        for r in range(C, L):
            rp = C * (r // C)
            np.matmul(Pb[rp - 1, 1 : G + 1].reshape(GB, H), Mp[L - r], out=tmp)
            A[r] += tmp.reshape(G, B, H)
        if heads > 0:
            Pb[:heads, G] = Pb[:heads, 0]  # the group before needs this group's first block
        Etm.reshape(G, L, B, H)[...] = A.transpose(1, 0, 2, 3)
        Ab = Etm[: t1 - s0].reshape(nt, H)
        grads["W_hh"] += Ab.T @ hs[s0:t1].reshape(nt, H)
        grads["W_xh"] += Ab.T @ x[s0:t1].reshape(nt, I)
        grads["b_h"] += ones[:nt] @ Ab
    dy2 = dy.reshape(O, T * B)
    np.matmul(dy2, hs[1:].reshape(T * B, H), out=grads["W_hy"])
    dy2.sum(axis=1, out=grads["b_y"])
    return grads


def _dphi_into(activation: str, h: np.ndarray, out: np.ndarray) -> np.ndarray | None:
    """phi'(a) for h = phi(a), written into ``out``; None for the identity (phi' = 1)."""
    if activation == "identity":
        return None
    if activation == "tanh":
        np.multiply(h, h, out=out)
        np.subtract(1, out, out=out)
    else:
        np.greater(h, 0, out=out)
    return out


def _forward_span(params, x, hs, y, t0: int, t1: int, activation: str, ws: Workspace, W_hhT, W_hyT, T_seq: int) -> None:
    """Steps t0 .. t1-1 of the forward pass in blocks: h_t into hs[t+1], W_hy h_t into y[:, t-t0].

    y (O, t1-t0, B) class-major, without b_y; hs[t0] must hold h_{t0-1}. A block's input
    projections, its steps and its outputs run while the block's rows are in cache.
    """
    B, H = hs.shape[1:]
    O = W_hyT.shape[1]
    Tb = _block_steps(T_seq, B, max(H, O), hs.dtype)  # T_seq: the whole sequence's length
    xw = ws.get("xw_block", (Tb, B, H), hs.dtype)  # a block's input projections
    y_rows = ws.get("y_block", (Tb * B, O), hs.dtype)  # a block's outputs, one row per (t, b)
    for b0 in range(t0, t1, Tb):
        b1 = min(b0 + Tb, t1)
        forward_into(params, x[b0:b1], hs[b0 : b1 + 1], xw[: b1 - b0], activation, W_hhT)
        n = (b1 - b0) * B
        # Row-major matmul, then a transposing copy: twice as fast as one matmul into y's layout.
        np.matmul(hs[b0 + 1 : b1 + 1].reshape(n, H), W_hyT, out=y_rows[:n])
        y[:, b0 - t0 : b1 - t0] = y_rows[:n].T.reshape(O, b1 - b0, B)


def forward_and_loss(params, x, targets, mask, h0, activation: str, loss: str, ws: Workspace):
    """The forward pass and the loss of checked inputs: (loss, hs (T+1, B, H), dy (O, T, B)).

    hs[t+1] = h_t lives in the workspace (``ws.states()``). The outputs, and so dy = dL/dy,
    are class-major, y (O, T, B), so the loss reduces over contiguous rows (losses.py).
    """
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    O = params["W_hy"].shape[0]
    dt = x.dtype
    hs = ws.get("hs", (T + 1, B, H), dt)  # hs[t+1] = h_t
    hs[0] = 0 if h0 is None else h0
    ws._states = hs
    y = ws.get("y", (O, T, B), dt)
    W_hhT = np.ascontiguousarray(params["W_hh"].T)
    W_hyT = np.ascontiguousarray(params["W_hy"].T)
    _forward_span(params, x, hs, y, 0, T, activation, ws, W_hhT, W_hyT, T)
    y += params["b_y"][:, None, None]
    if loss == "mse":
        targets = np.moveaxis(targets, -1, 0)  # (O, T, B), a view
    value, dy = LOSSES[loss](y, targets, mask, axis=0)  # dy (O, T, B)
    if not math.isfinite(value):
        raise DivergedError("loss")
    return value, hs, dy


def loss_and_gradients(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    truncation: str | Truncation,
    *,
    activation: str = "tanh",
    loss: str = "cross_entropy",
    h0: np.ndarray | None = None,
    workspace: Workspace | None = None,
    rng: np.random.Generator | None = None,
    cell: str = "elman",
) -> tuple[float, dict, np.ndarray]:
    """Loss and the truncated gradient of one whole sequence batch, with no update inside.

    x (T, B, I); targets (T, B) int for cross_entropy or (T, B, O) for mse; mask (T, B);
    h0 (B, H) or None for zeros. Returns (loss, grads with the params' keys and shapes,
    h_last (B, H)). Raises InvalidInputError for bad inputs and DivergedError when the loss
    or a gradient is not finite. Pass the same ``workspace`` to calls of one shape to reuse
    the work buffers; the returned gradients are fresh arrays that later calls never touch.
    ``rng``: the Generator the random modes (random_k, artbp) draw from, first thing
    (``Truncation.draw``); required by them, ignored by the others. An adaptive mode must
    be given as the ``with_k(K)`` it runs with (``core/adaptive.py`` picks K).
    ``cell``: ``elman`` (this engine) or ``gru``/``lstm`` (``core/gated.py``, its parameter keys).
    """
    if cell != "elman":  # the gated cells' engine; ``activation`` is the Elman cell's alone
        from bptt_cli.core import gated

        return gated.loss_and_gradients(params, x, targets, mask, truncation, cell=cell, loss=loss, h0=h0,
                                        workspace=workspace, rng=rng)
    tr = parse(truncation)
    check_activation(activation)
    targets, mask, h0 = check_inputs(params, x, targets, mask, h0, loss)
    ws = workspace if workspace is not None else Workspace()
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    dt = x.dtype

    if tr.random:
        draw = tr.draw(T, rng)  # before the forward pass: a bad rng is refused at no cost
        value, hs, dy = forward_and_loss(params, x, targets, mask, h0, activation, loss, ws)
        if tr.mode == "random_k":
            q = float(tr.keep_prob(1))
            grads = _random_k_gradients(params, x, hs, dy, draw, q, mask.any(axis=1), activation, ws)
        else:  # artbp: one chain cut at the drawn points, W_hh / (1 - c) across the others
            W_back = params["W_hh"] * tr.compensation
            grads = _chain_gradients(params, x, hs, dy, T, activation, ws, cut=draw.tolist(), W_back=W_back)
        _check_finite_grads(grads)
        return value, grads, hs[T].copy()
    C, W = tr.chunk_and_window(T)  # refuses an adaptive mode without its K
    value, hs, dy = forward_and_loss(params, x, targets, mask, h0, activation, loss, ws)
    if W == C:
        grads = _chain_gradients(params, x, hs, dy, C, activation, ws)
    else:
        grads = None
        if activation == "identity" and _powers_pay(T, B, H, C, W, dt):
            grads = _identity_gradients(params, x, hs, dy, C, W, ws)  # None if W_hh^(W-1) overflows
        if grads is None:
            grads = _lag_gradients(params, x, hs, dy, C, W, activation, ws)
    _check_finite_grads(grads)
    return value, grads, hs[T].copy()


def chunked_pass(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    truncation: str | Truncation,
    on_chunk: Callable[[int, float, dict], None],
    *,
    activation: str = "tanh",
    loss: str = "cross_entropy",
    h0: np.ndarray | None = None,
    workspace: Workspace | None = None,
    rng: np.random.Generator | None = None,
    cell: str = "elman",
) -> np.ndarray:
    """The ``update_every: chunk`` schedule: an update after every chunk, inside one sequence.

    Chunks are blocks of ``truncation.chunk_length(T)`` steps (K for subsequence, K1 for
    tbptt, 1 for k_truncated, T for full). For each chunk in order, the forward runs with
    the current parameters (the hidden state carries on: the forward is never truncated),
    the chunk's loss sum(m L)/sum(m) over its own steps is differentiated through each
    step's window f(t) .. t, and ``on_chunk(index, loss, grads)`` is called; it may update
    ``params`` in place, and later chunks run with the updated weights. ``grads`` holds
    fresh arrays that the pass never touches again (the callback may keep or modify them).
    A window that reaches into an earlier chunk uses the stored states and, for each step's
    Jacobian, the W_hh that step actually ran with. Chunks without a supervised step are
    skipped. Returns h_last (B, H); ``workspace`` as in ``loss_and_gradients``.

    The engine is that of ``loss_and_gradients``, one chunk at a time: the blocked forward
    into the workspace's hs, the class-major loss, and weight gradients as matmuls over the
    window's rows. Chunks whose windows do not overlap (W == C: full, subsequence, tbptt:K:K)
    run the chain of ``_chain_gradients`` over their own steps, or, when a chunk fits one
    block, ``_small_chunks``: the same arithmetic in the fewest NumPy calls per chunk, which
    at a few steps per chunk cost as much as the arithmetic; overlapping windows (W > C)
    run ``_window_gradients``, which keeps the W_hh of the last W // C + 2 chunks in a ring::

        tbptt:2:5   steps             0 1|2 3|4 5|6 7     chunks of C = 2, windows of W = 5
                    chunk 3's window:       3|4 5|6 7     steps 3 .. 5 with chunk 1's and 2's W_hh

    ``artbp:MEAN`` (Tallec & Ollivier's online schedule): the chunks are the segments between
    the cuts drawn from ``rng`` (``Truncation.chunk_bounds``), each chunk's window is itself,
    and its chain carries the adjoint with W_hh / (1 - c), the compensation of the uncut steps
    it crosses. ``workspace.chunks()`` gives every chunk's steps, for the callback.
    """
    if cell != "elman":  # gru / lstm: core/gated.py
        from bptt_cli.core import gated

        return gated.chunked_pass(params, x, targets, mask, truncation, on_chunk, cell=cell, loss=loss, h0=h0,
                                  workspace=workspace, rng=rng)
    tr = parse(truncation)
    check_activation(activation)
    targets, mask, h0 = check_inputs(params, x, targets, mask, h0, loss)
    ws = workspace if workspace is not None else Workspace()
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    O = params["W_hy"].shape[0]
    dt = x.dtype
    comp = None  # artbp's compensation factor 1 / (1 - c)
    if tr.mode == "artbp":
        firsts, lasts = tr.chunk_bounds(T, rng)
        f_of, comp = firsts, tr.compensation
        C = int((lasts - firsts).max())
    elif tr.mode == "random_k":
        raise InvalidInputError(f"{tr} runs with update_every: sequence (its windows are drawn per loss, not per chunk)")
    else:
        C = tr.chunk_length(T)  # refuses an adaptive mode without its K
        firsts = np.arange(0, T, C)
        f_of = tr.starts(T)[firsts]  # every step of a chunk shares its window start
        lasts = np.minimum(firsts + C, T)
    ws._chunks = (firsts, lasts)
    Wmax = int((lasts - f_of).max())  # the longest window, in steps
    overlap = bool((f_of < firsts).any())
    supervised = np.add.reduceat(mask.sum(axis=1), firsts) > 0
    hs = ws.get("hs", (T + 1, B, H), dt)
    hs[0] = 0 if h0 is None else h0
    ws._states = hs
    # artbp's longest segment changes from pass to pass: a buffer for T steps is allocated once
    y_flat = ws.get("chunk_y", (O * (T if comp is not None else C) * B,), dt)
    if not overlap and C <= _block_steps(T, B, max(H, O), dt):
        _small_chunks(params, x, targets, mask, hs, y_flat, firsts, lasts, supervised, on_chunk, activation, loss, ws,
                      comp)
        return hs[T].copy()
    ce = CrossEntropyChunks(targets, mask, firsts, lasts, dt) if loss == "cross_entropy" else None
    R = Wmax // C + 2  # chunks a window can reach: its own and those its W - C extra steps touch
    W_ran = ws.get("W_ran", (R, H, H), dt) if overlap else None  # W_ran[c % R]: chunk c's W_hh
    for c, (a, b, f) in enumerate(zip(firsts.tolist(), lasts.tolist(), f_of.tolist())):
        n = b - a
        y = y_flat[: O * n * B].reshape(O, n, B)  # contiguous whatever n
        # The weights may have changed since the last chunk, so the transposed copies are redone;
        # for a few steps the copy (25 us at H = 128) costs more than matmuls from the view save.
        W_hhT = np.ascontiguousarray(params["W_hh"].T) if n >= 16 else params["W_hh"].T
        W_hyT = np.ascontiguousarray(params["W_hy"].T)
        _forward_span(params, x, hs, y, a, b, activation, ws, W_hhT, W_hyT, T)
        if overlap:
            W_ran[c % R] = params["W_hh"]
        if not supervised[c]:
            continue
        y += params["b_y"][:, None, None]
        if ce is not None:
            value, dy = ce(c, a, b, y.reshape(O, n * B)), y  # y becomes dL/dy
        else:
            value, dy = LOSSES[loss](y, np.moveaxis(targets[a:b], -1, 0), mask[a:b], axis=0)  # dy (O, n, B)
        if not math.isfinite(value):
            raise DivergedError("loss")
        if f == a:  # the window is the chunk itself
            W_back = None if comp is None else params["W_hh"] * comp
            grads = _chain_gradients(params, x[a:b], hs[a : b + 1], dy, n, activation, ws, T, W_back=W_back)
        else:
            grads = _window_gradients(params, x, hs, dy, a, b, f, C, W_ran, activation, ws)
        _check_finite_grads(grads)
        on_chunk(c, value, grads)
    return hs[T].copy()


def _small_chunks(params, x, targets, mask, hs, y_flat, firsts, lasts, supervised, on_chunk, activation: str,
                  loss: str, ws: Workspace, comp: float | None = None) -> None:
    """``chunked_pass`` for chunks of a few steps whose windows do not overlap (W == C).

    A chunk of n steps (n B rows that fit one block of ``_block_steps``) does the work of one
    block of ``loss_and_gradients`` plus its own loss and gradient buffer, and at the chunk
    sizes where update-per-chunk is used (K = 5: 160 rows at B = 32) the NumPy calls and
    Python around the arithmetic cost as much as the arithmetic. So this loop makes as few as
    it can: the views of the work buffers for a chunk's length and everything that depends
    only on the targets and the mask (``CrossEntropyChunks``) are made once per sequence,
    the output bias enters in the transposing copy, the backward chain starts from the
    chunk's last step with nothing flowing in, and the finiteness check is one dot product.
    The arithmetic is that of ``_forward_span``, ``cross_entropy`` and ``_chain_gradients``
    on the chunk; the matmuls read the transposed weights through views, which OpenBLAS
    0.3.31 turns into the same bits as the copies (checked on config A, float32 and 64).
    ``comp``: artbp's 1 / (1 - c); the chain then runs with W_hh * comp (every step it
    crosses inside a segment is uncut).
    """
    T, B, I = x.shape
    H = hs.shape[2]
    O = params["W_hy"].shape[0]
    dt = hs.dtype
    # The buffers of _forward_span and _chain_gradients, shapes and all, so a workspace that
    # also serves loss_and_gradients or longer chunks keeps one set: a chunk fits their blocks.
    Tf, Tc = _block_steps(T, B, max(H, O), dt), _block_steps(T, B, H, dt)
    xw = ws.get("xw_block", (Tf, B, H), dt)  # a chunk's input projections
    y_rows = ws.get("y_block", (Tf * B, O), dt)  # a chunk's outputs, one row per (t, b)
    A_buf = ws.get("block", (Tc, B, H), dt)  # dL/dh_t, then A_t
    dphi_buf = ws.get("dphi_block", (Tc, B, H), dt)
    ones = _ones(ws, "ones_block", Tc * B, dt)
    g = ws.get("g", (B, H), dt)
    ce = CrossEntropyChunks(targets, mask, firsts, lasts, dt) if loss == "cross_entropy" else None
    layout = _grads_layout(params)
    zeros = ws.get("zeros_grads", (layout[0],), dt)  # zeros @ grads is 0, or NaN if one is not finite
    phi, tanh = ACTIVATIONS[activation][0], activation == "tanh"
    views: dict = {}  # chunk length -> the work buffers' views for it (two lengths; artbp's vary)

    def views_for(n: int) -> tuple:
        N = n * B
        A = A_buf[:n]  # (n, B, H)
        A2 = A.reshape(N, H)
        dphi = dphi_buf[:n]
        steps = list(zip(A[:0:-1], A[-2::-1], dphi[-2::-1]))  # t = n-1 .. 1: (A_t, A_{t-1}, phi'(a_{t-1}))
        return (xw[:n], xw[:n].reshape(N, H), y_rows[:N], y_rows[:N].T, y_flat[: O * N].reshape(O, N),
                A2, A2.T, A[n - 1], dphi, dphi[n - 1], steps, ones[:N])

    for c, (a, b, sup) in enumerate(zip(firsts.tolist(), lasts.tolist(), supervised.tolist())):
        n = b - a
        N = n * B
        v = views.get(n) or views.setdefault(n, views_for(n))
        xw_c, xw2, y_c, y_cT, z, A2, A2T, A_last, dphi, dphi_last, steps, ones_c = v
        hs_c = hs[a : b + 1]  # h_{a-1} .. h_{b-1}
        x2 = x[a:b].reshape(N, I)
        W_hh, W_hy = params["W_hh"], params["W_hy"]
        # The forward of forward_into, from views of the transposed weights: for a few steps
        # their copies (20 us for W_hh^T at H = 128) cost more than the matmuls from them save.
        np.matmul(x2, params["W_xh"].T, out=xw2)
        xw2 += params["b_h"]
        W_hhT = W_hh.T
        for h_prev, h, xw_t in zip(hs_c[:-1], hs_c[1:], xw_c):
            np.matmul(h_prev, W_hhT, out=h)
            h += xw_t
            if tanh:
                np.tanh(h, out=h)  # phi(h), without a Python call around it
            else:
                phi(h)
        if not sup:
            continue
        h_rows = hs_c[1:].reshape(N, H)
        np.matmul(h_rows, W_hy.T, out=y_c)
        np.add(y_cT, params["b_y"][:, None], out=z)  # y, class-major (O, n B)
        if ce is not None:
            value = ce(c, a, b, z)  # z becomes dL/dy
            dy2 = z
        else:
            value, dy = LOSSES[loss](z.reshape(O, n, B), np.moveaxis(targets[a:b], -1, 0), mask[a:b], axis=0)
            dy2 = dy.reshape(O, N)
        if not math.isfinite(value):
            raise DivergedError("loss")
        # The chain over the chunk: A_t = phi'(a_t) * (dL/dy_t @ W_hy + A_{t+1} @ W_hh), cut at a.
        np.matmul(dy2.T, W_hy, out=A2)  # the direct terms dL/dh_t
        if comp is not None:
            W_hh = W_hh * comp
        if _dphi_into(activation, hs_c[1:], dphi) is None:  # phi' = 1
            for A_t, da, _ in steps:
                np.matmul(A_t, W_hh, out=g)  # dL/dh_{t-1} from the steps after it
                da += g
        else:
            A_last *= dphi_last
            for A_t, da, dphi_t in steps:
                np.matmul(A_t, W_hh, out=g)
                da += g
                da *= dphi_t
        grads = _new_grads(params, zero=False, layout=layout)  # every element written below
        np.matmul(A2T, hs_c[:-1].reshape(N, H), out=grads["W_hh"])
        np.matmul(A2T, x2, out=grads["W_xh"])
        np.matmul(ones_c, A2, out=grads["b_h"])  # the sum over rows
        np.matmul(dy2, h_rows, out=grads["W_hy"])
        dy2.sum(axis=1, out=grads["b_y"])
        if np.dot(zeros, grads["W_xh"].base) != 0:  # the one buffer under all five
            _check_finite_grads(grads)
        on_chunk(c, value, grads)


def _window_gradients(params, x, hs, dy, a: int, b: int, f: int, C: int, W_ran, activation: str, ws: Workspace) -> dict:
    """One chunk's gradient under overlapping windows (W > C), for ``chunked_pass``.

    The chunk covers steps a .. b-1 and its window f .. b-1 (f < a); dy (O, b-a, B) is its
    dL/dy. One backward chain from b-1 to f: the direct terms enter on the chunk's own
    steps, and step s's Jacobian uses W_ran[(s // C) % len(W_ran)], the W_hh it ran with.
    The window's adjoints A_s (b-f, B, H) then give every weight gradient as one matmul.
    """
    B, H = hs.shape[1:]
    I = x.shape[2]
    O = dy.shape[0]
    dt = hs.dtype
    R = W_ran.shape[0]
    n, L = b - a, b - f
    A = ws.get("chunk_A", (R * C, B, H), dt)[:L]  # A[s - f] = dL_chunk/da_s; R * C >= any window
    dphi = _dphi_into(activation, hs[f + 1 : b + 1], ws.get("chunk_dphi", (R * C, B, H), dt)[:L])
    dy2 = dy.reshape(O, n * B)
    np.matmul(dy2.T, params["W_hy"], out=A[a - f :].reshape(n * B, H))  # direct terms dL/dh_t
    g = ws.get("g", (B, H), dt, zero=True)  # dL/dh_s from the steps after s
    for s in range(b - 1, f - 1, -1):
        row = A[s - f]
        if s >= a:
            g += row
        if dphi is None:
            row[...] = g
        else:
            np.multiply(g, dphi[s - f], out=row)
        if s > f:
            np.matmul(row, W_ran[(s // C) % R], out=g)  # dL/dh_{s-1} = dL/da_s @ W_hh(s)
    A2 = A.reshape(L * B, H)
    grads = _new_grads(params, zero=False)  # every element written below
    np.matmul(A2.T, x[f:b].reshape(L * B, I), out=grads["W_xh"])
    np.matmul(A2.T, hs[f:b].reshape(L * B, H), out=grads["W_hh"])
    np.matmul(_ones(ws, "ones_window", R * C * B, dt)[: L * B], A2, out=grads["b_h"])  # the sum over rows
    np.matmul(dy2, hs[a + 1 : b + 1].reshape(n * B, H), out=grads["W_hy"])
    dy2.sum(axis=1, out=grads["b_y"])
    return grads


def state_jacobian(
    params: dict, x: np.ndarray, t: int, j: int, *, activation: str = "tanh", h0: np.ndarray | None = None,
    cell: str = "elman",
) -> np.ndarray:
    """dh_t/dh_{t-j} (B, H, H): the lecture's product of step Jacobians diag(phi'(a_s)) W_hh
    for s = t down to t-j+1 (column convention: J[b] @ dh_{t-j} = dh_t). For ``cell`` gru or
    lstm, d state_t / d state_{t-j} (B, S, S), S = H or 2H (h then c), from core/gated.py."""
    if cell != "elman":
        from bptt_cli.core import gated

        return gated.state_jacobian(params, x, t, j, cell=cell, h0=h0)
    from bptt_cli.core.model import forward

    T, B, _ = x.shape
    if not (0 <= j <= t < T):
        raise InvalidInputError(f"need 0 <= j <= t < T = {T}, got t={t}, j={j}")
    hs, _ = forward(params, x, activation=activation, h0=h0)
    H = params["W_hh"].shape[0]
    dphi_of = ACTIVATIONS[activation][1]
    J = np.broadcast_to(np.eye(H, dtype=x.dtype), (B, H, H)).copy()
    for s in range(t, t - j, -1):
        step = params["W_hh"] if dphi_of is None else dphi_of(hs[s + 1])[:, :, None] * params["W_hh"]
        J = J @ step
    return J
