r"""Diagnostics that make the lecture visible: gradient flow by lag, truncation bias, spectrum.

Notation as in ``bptt.py`` (0-indexed): a_t = W_xh x_t + W_hh h_{t-1} + b_h, h_t = phi(a_t),
y_t = W_hy h_t + b_y, and L_tb the per-step loss of sample b at step t.

Gradient flow by lag
--------------------
The lecture's vanishing/exploding claim is about dh_t/dh_{t-j}, a product of j step
Jacobians diag(phi'(a_s)) W_hh. What a loss actually sends back is the adjoint

    G_j[t] = dL_t/dh_{t-j}      G_0[t] = W_hy^T dL_t/dy_t
    G_{j+1}[t] = W_hh^T (phi'(a_{t-j}) * G_j[t])          (rows: (G_j[t] * phi'(a_{t-j})) @ W_hh)

through the full, untruncated graph, whatever mode the run trains with. As in the engine's
``k_truncated`` sweep, Python loops over the lag j and ONE batched matmul advances the adjoints
of every (t, b) at once; the chains are kept in the order of t, so the live ones and the phi'
rows they need are contiguous slices and nothing is gathered (``_lag_norms``).

    lag j:  chains t >= j (from the first supervised step), at steps t - j,
            G (rows_j, H) -> (rows_{j+1}, H),  rows_j = (last supervised t - max(j, first) + 1) B

In a training run the pass reuses the step's own work: the forward pass's hidden states
(``hs=``) and the mode's gradient (``grads=`` of :func:`bias_for_mode`), so it costs the lag
sweep, the spectrum and, unless the mode is full BPTT, one full gradient.

Two choices, so that the numbers mean the same thing on every batch:
- only supervised steps count: the mean at lag j is over the (t, b) with m_tb = 1 and t >= j
  (an unsupervised step has L_t = 0 and would only dilute the mean with zeros);
- L_t is the per-step loss L_tb itself, not m_tb L_tb / sum(m): the norms do not shrink as
  the batch or the number of supervised steps grows.

Gated cells
-----------
For ``cell="gru"`` / ``"lstm"`` the profile is ``gated.lag_profile``'s ||dL_t/d state_{t-j}||
with the same averaging, h and (LSTM) c separately: ``norms`` and its fit are h's, and the
LSTM adds ``norms_c`` with ``slope_c`` and ``decay_per_step_c``; the c path is the one the
forget gate keeps open. W_hh's spectrum is an Elman quantity (a gated step's Jacobian depends
on its gates, not on one matrix), so ``spectrum`` reports it as None for gated cells, and
:func:`gates` adds the share of saturated forget (LSTM) / update (GRU) gates.
"""

from __future__ import annotations

import math

import numpy as np

from bptt_cli.core.bptt import Workspace, _dphi_into, check_inputs, loss_and_gradients
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.model import ACTIVATIONS, PARAM_NAMES, check_activation, forward
from bptt_cli.core.truncation import Truncation, parse

CELLS = ("elman", "gru", "lstm")
SATURATION = 0.99  # a tanh unit with |h| above this passes back at most 1 - 0.99^2 ~ 2% of its adjoint


def _step_loss_grad(y: np.ndarray, targets: np.ndarray, loss: str) -> np.ndarray:
    """dL_tb/dy_t for N selected entries, unnormalised: y (N, O), targets (N,) int or (N, O)."""
    if loss == "cross_entropy":
        p = np.exp(y - y.max(axis=1, keepdims=True))  # (N, O)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(p)), targets] -= 1  # softmax - onehot
        return p
    return y - targets  # mse: d(0.5 ||y - target||^2)/dy


def _fit_decay(lags: list[int], norms: list[float | None]) -> float | None:
    """Least-squares slope of log(norm) against lag over the lags with a finite norm > 0."""
    pts = [(j, math.log(n)) for j, n in zip(lags, norms) if n is not None and 0 < n < math.inf]
    if len(pts) < 2:
        return None
    j = np.array([p[0] for p in pts], dtype=np.float64)
    ln = np.array([p[1] for p in pts], dtype=np.float64)
    jc = j - j.mean()
    return float(jc @ (ln - ln.mean()) / (jc @ jc))


def gradient_flow(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    *,
    activation: str,
    loss: str,
    h0: np.ndarray | None = None,
    max_lag: int = 50,
    hs: np.ndarray | None = None,
    workspace: Workspace | None = None,
    cell: str = "elman",
) -> dict:
    """Mean ||dL_t/dh_{t-j}|| by lag j through the full graph, and its fitted per-step decay.

    x (T, B, I); targets (T, B) int or (T, B, O); mask (T, B); h0 (B, H) or None. Lags run
    j = 0 .. min(T-1, max_lag), and stop early at the last supervised step (no loss reaches
    further back). See the module docstring for which (t, b) are averaged and why. hs
    (T+1, B, H): the hidden states of the forward pass of these weights and inputs, e.g.
    ``Workspace.states()`` after the training step's ``loss_and_gradients``; without it the
    forward pass runs here. workspace: keeps the sweep's work buffers between calls (the
    trainer's own, under names of their own: its states, and so ``hs``, are not written).

    Returns plain JSON-ready data::

        lags            [0, 1, ..., J]
        norms           mean over supervised (t, b) with t >= j of ||dL_tb/dh_{t-j}||
        counts          how many (t, b) each mean is over
        slope           least-squares slope of log(norm) vs lag, over lags with norm > 0
        decay_per_step  exp(slope): the factor the gradient norm changes by per step back
        halves_every    ln 2 / -slope when slope < 0, else None
        doubles_every   ln 2 / slope when slope > 0, else None

    slope, decay_per_step, halves_every and doubles_every are None with fewer than two lags of
    non-zero norm. The adjoints and their squared norms run in the parameters' dtype and the
    norms are summed in float64 (float32 squares that overflow, past adjoints of ~1e19, send
    the whole profile through float64 instead); nothing is modified. It costs about what a ``k_truncated:max_lag`` backward
    does: one (rows, H) @ (H, H) matmul per lag, and no gather (see ``_lag_norms``).

    ``cell`` gru or lstm: the profile of ``gated.lag_profile`` (``hs`` and ``workspace`` are
    not used; its own forward pass runs), see the module docstring; the LSTM's record adds
    ``norms_c``, ``slope_c``, ``decay_per_step_c`` for the cell state c.
    """
    if cell != "elman":
        return _gated_flow(params, x, targets, mask, cell=cell, loss=loss, h0=h0, max_lag=max_lag)
    check_activation(activation)
    targets, mask, h0 = check_inputs(params, x, targets, mask, h0, loss)
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise InvalidInputError(f"max_lag must be an integer >= 0, got {max_lag!r}")
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    if hs is None:
        hs, _ = forward(params, x, activation=activation, h0=h0)
    elif not isinstance(hs, np.ndarray) or hs.shape != (T + 1, B, H) or hs.dtype != x.dtype:
        raise InvalidInputError(
            f"hs must be the forward pass's states, shape (T+1, B, H) = ({T + 1}, {B}, {H}) and dtype "
            f"{x.dtype}, got {getattr(hs, 'shape', None)} {getattr(hs, 'dtype', None)}"
        )
    lags, norms, counts = _lag_norms(params, hs, targets, mask, activation, loss, int(max_lag), workspace)
    if hs.dtype != np.float64 and not all(math.isfinite(v) for v in norms):
        # Squares of float32 adjoints beyond ~1e19 overflow: the whole profile again in float64.
        p64 = {k: v.astype(np.float64) for k, v in params.items()}
        t64 = targets.astype(np.float64) if loss == "mse" else targets
        lags, norms, counts = _lag_norms(p64, hs.astype(np.float64), t64, mask, activation, loss, int(max_lag))
    return {"lags": lags, "norms": norms, "counts": counts, **_fit_record(lags, norms)}


def _fit_record(lags: list[int], norms: list) -> dict:
    """slope, decay_per_step, halves_every, doubles_every of a lag profile (see gradient_flow)."""
    slope = _fit_decay(lags, norms)
    out = {"slope": slope, "decay_per_step": None if slope is None else math.exp(slope), "halves_every": None, "doubles_every": None}
    if slope is not None and slope < 0:
        out["halves_every"] = math.log(2) / -slope
    elif slope is not None and slope > 0:
        out["doubles_every"] = math.log(2) / slope
    return out


def _check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise InvalidInputError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")


def _gated_flow(params, x, targets, mask, *, cell: str, loss: str, h0, max_lag) -> dict:
    """:func:`gradient_flow` for a gated cell, from ``gated.lag_profile``."""
    from bptt_cli.core import gated

    _check_cell(cell)
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise InvalidInputError(f"max_lag must be an integer >= 0, got {max_lag!r}")
    prof = gated.lag_profile(params, x, targets, mask, cell=cell, loss=loss, max_lag=int(max_lag), h0=h0)
    norms = [None if v is None else float(v) for v in prof["h"]]
    lags = list(range(len(norms)))
    per_step = np.asarray(mask).astype(bool).sum(axis=1, dtype=np.int64)  # (T,)
    from_j = np.cumsum(per_step[::-1])[::-1]  # supervised (t, b) with t >= j
    out = {"lags": lags, "norms": norms, "counts": [int(from_j[j]) for j in lags], **_fit_record(lags, norms)}
    if "c" in prof:
        norms_c = [None if v is None else float(v) for v in prof["c"]]
        fit_c = _fit_record(lags, norms_c)
        out.update(norms_c=norms_c, slope_c=fit_c["slope"], decay_per_step_c=fit_c["decay_per_step"])
    return out


def gates(params: dict, x: np.ndarray, *, cell: str, h0=None) -> dict | None:
    """Shares of saturated gates of a gated cell on inputs x (T, B, I), None for elman.

    ``gated.gate_saturation``: the forget gate (LSTM) or update gate z (GRU), the share of
    entries above 0.95 (the state is kept: gradient flows back through it) and below 0.05
    (the state is overwritten: the path through it is cut).
    """
    _check_cell(cell)
    if cell == "elman":
        return None
    from bptt_cli.core import gated

    return gated.gate_saturation(params, x, cell=cell, h0=h0)


def _lag_norms(params, hs, targets, mask, activation: str, loss: str, max_lag: int, ws: Workspace | None = None):
    """(lags, norms, counts) of the lag profile, every chain at once, with no gather.

    One chain per step t from the first supervised step t0 to the last one t1 (each a
    (B, H) block of rows), kept in the order of t. At lag j, chain t holds dL_t/dh_{t-j}
    and sits at step t - j, so the live chains (t >= j) are a suffix of the buffer and the
    steps they sit at are a contiguous run of phi' rows:

        chains  t0 ........ t1           (n, B, H), n = t1 - t0 + 1
        lag j:  live t >= j, at steps max(t0 - j, 0) .. t1 - j

    A (t, b) with m_tb = 0 starts at zero and stays zero (the chain is linear), adding
    nothing to a lag's sum of norms; the mean divides by the supervised count alone. As in
    the engine's lag sweep, the chains run in groups through all their lags, so a group's
    buffers and the phi' rows it walks stay in cache (about 20% faster on config A than one
    sweep of all chains per lag). Per lag, after the lag's row norms: phi' multiplied into the
    chains in place, and one matmul into the other buffer. The matmuls are the floor: config A's
    3.9 GFLOP take ~43 ms at this machine's float32 matmul peak (~90 GFLOP/s on one core), of
    the sweep's ~53 ms (``benchmarks/bench_train.py`` prints both).
    ``ws``: where the work buffers live between calls (fresh arrays without it).
    """
    T, B, H = hs.shape[0] - 1, hs.shape[1], hs.shape[2]
    steps = np.flatnonzero(mask.any(axis=1))
    t0, t1 = int(steps[0]), int(steps[-1])
    n = t1 - t0 + 1
    J = min(T - 1, max_lag, t1)
    per_step = mask.sum(axis=1, dtype=np.int64)  # (T,)
    from_j = np.cumsum(per_step[::-1])[::-1]  # supervised (t, b) with t >= j

    # Lag 0: G_0 = dL_tb/dh_t = (dL_tb/dy_t) W_hy for the chains' steps, zero where m_tb = 0.
    W_hy = params["W_hy"]
    y = hs[t0 + 1 : t1 + 2].reshape(n * B, H) @ W_hy.T
    y += params["b_y"]
    tg = targets[t0 : t1 + 1]
    dy = _step_loss_grad(y, tg.reshape(n * B, *tg.shape[2:]), loss)  # (n B, O)
    dy *= mask[t0 : t1 + 1].reshape(n * B, 1)
    dt = hs.dtype

    def buffer(name: str, shape: tuple) -> np.ndarray:
        # Kept in the workspace between passes: a fresh MB-sized array right after a training
        # step costs its page faults again (~3 ms of a config A pass). Every one is sized by
        # the group and J, never by T, so what the workspace keeps stays bounded.
        return np.empty(shape, dtype=dt) if ws is None else ws.get("flow_" + name, shape, dt)

    W_hh = params["W_hh"]
    # Rows (chain, b) in 2-D buffers: chain c of a group is rows c B .. c B + B - 1.
    per_group = min(n, max(1, _GROUP_BYTES // (B * H * hs.itemsize)))
    G = buffer("chains", (per_group * B, H))  # the group's chains: dL_t/dh at their steps
    N = buffer("next", (per_group * B, H))  # where the next lag's matmul writes; the two swap every lag
    sq = buffer("sq", (J + 1, per_group * B))  # ||dL_tb/dh_{t-j}||^2 of the group's rows
    # phi'(a_s) of the steps a group walks, row (s - s_lo) B + b: fewer than per_group + J steps
    P = None if ACTIVATIONS[activation][1] is None else buffer("dphi", (min(per_group + J, t1 + 1) * B, H))
    dphi = None
    sums = np.zeros(J + 1)  # float64
    for c0 in range(0, n, per_group):
        R = (min(c0 + per_group, n) - c0) * B  # the group's rows
        g, nxt = G[:R], N[:R]
        np.matmul(dy[c0 * B : c0 * B + R], W_hy, out=g)  # G_0 of the group's chains
        sq.fill(0)  # rows of chains that reached step 0 before the last lag count as 0
        first = t0 + c0  # the group's earliest chain t
        # Lags j < J multiply chain t >= j + 1 by phi'(a_{t-j}): steps max(1, first - J + 1) .. the last chain's t.
        s_lo = max(1, first - J + 1)
        s_hi = first + R // B - 1
        if P is not None:
            dphi = _dphi_into(activation, hs[s_lo + 1 : s_hi + 2].reshape(-1, H), P[: max(0, s_hi - s_lo + 1) * B])
        for j in range(J + 1):
            lo = max(0, j - first) * B  # first live row: chains t >= j
            if lo >= R:
                break  # every chain of the group has reached step 0
            _row_sq(g[lo:], sq[j, lo:R])
            lo1 = max(0, j + 1 - first) * B  # first row still live at lag j + 1
            if j == J or lo1 >= R:
                break
            live = g[lo1:]
            if dphi is not None:  # in place: this lag's norms are taken, and g is not read again
                s0 = (first - j - s_lo) * B + lo1  # phi' row of the first live row (its step >= s_lo)
                np.multiply(live, dphi[s0 : s0 + R - lo1], out=live)  # dL_t/da_{t-j}
            np.matmul(live, W_hh, out=nxt[lo1:])  # dL_t/dh_{t-j-1}
            g, nxt = nxt, g
        np.sqrt(sq, out=sq)
        sums += sq.sum(axis=1, dtype=np.float64)
    lags = list(range(J + 1))
    return lags, [float(s) / int(from_j[j]) for j, s in enumerate(sums)], [int(from_j[j]) for j in lags]


_GROUP_BYTES = 1 << 19  # a group's chain buffer: L2-sized work, still big matmuls


if hasattr(np, "vecdot"):  # NumPy >= 2: about a quarter faster than einsum on (N, 128) float32 rows

    def _row_sq(rows: np.ndarray, out: np.ndarray) -> None:
        """out[i] = ||rows[i]||^2 for rows (N, H), out (N,), in the rows' dtype."""
        np.vecdot(rows, rows, out=out)

else:  # pragma: no cover - NumPy 1.x

    def _row_sq(rows: np.ndarray, out: np.ndarray) -> None:
        """out[i] = ||rows[i]||^2 for rows (N, H), out (N,), in the rows' dtype."""
        np.einsum("ij,ij->i", rows, rows, out=out)


def describe_decay(decay: float | None) -> str:
    """"x0.87 per step, halves every 5.0 steps" (or "doubles every ..."), from decay_per_step."""
    if decay is None or not math.isfinite(decay) or decay <= 0:
        return "no decay estimate (needs two lags with a non-zero gradient norm)"
    factor = f"x{decay:.2f}" if 0.01 <= decay < 100 else f"x{decay:.3g}"
    slope = math.log(decay)
    if slope < 0:
        return f"{factor} per step, halves every {math.log(2) / -slope:.1f} steps"
    if slope > 0:
        return f"{factor} per step, doubles every {math.log(2) / slope:.1f} steps"
    return f"{factor} per step, neither halves nor doubles"


def _compare(a: np.ndarray, b: np.ndarray) -> dict:
    """Cosine and ||a - b|| / ||b|| in float64; exactly 1 and 0 when a and b are equal."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    na = float(np.sqrt(a @ a))
    nb = float(np.sqrt(b @ b))
    if np.array_equal(a, b):
        return {"cosine": 1.0, "rel_error": 0.0 if nb > 0 else None, "norm_mode": na, "norm_full": nb}
    cos = None if na == 0 or nb == 0 else float(np.clip((a @ b) / (na * nb), -1.0, 1.0))
    d = a - b
    rel = float(np.sqrt(d @ d)) / nb if nb > 0 else None
    return {"cosine": cos, "rel_error": rel, "norm_mode": na, "norm_full": nb}


def truncation_bias(grads_mode: dict, grads_full: dict) -> dict:
    """How far a mode's gradient is from the full-BPTT gradient on the same batch and weights.

    Returns ``{"cosine", "rel_error", "norm_mode", "norm_full", "per_param": {name: {same
    keys}}}``: the overall numbers are over all parameters concatenated (in the order of
    ``grads_full``). cosine = <g_mode, g_full> / (||g_mode|| ||g_full||), clipped to [-1, 1],
    None if either norm is 0 (unless the two are equal); rel_error = ||g_mode - g_full|| /
    ||g_full||, None if ||g_full|| = 0. Equal arrays give exactly 1.0 and 0.0. Computed in float64.
    """
    if set(grads_mode) != set(grads_full):
        raise InvalidInputError(
            f"gradients to compare must have the same keys, got {sorted(grads_mode)} and {sorted(grads_full)}"
        )
    for k, g_full in grads_full.items():
        if np.shape(grads_mode[k]) != np.shape(g_full):
            raise InvalidInputError(
                f"gradient {k!r} has shape {np.shape(grads_mode[k])} in the mode and {np.shape(g_full)} in full"
            )
    keys = list(grads_full)
    out = _compare(
        np.concatenate([np.ravel(grads_mode[k]) for k in keys]) if keys else np.zeros(0),
        np.concatenate([np.ravel(grads_full[k]) for k in keys]) if keys else np.zeros(0),
    )
    out["per_param"] = {k: _compare(grads_mode[k], grads_full[k]) for k in keys}
    return out


def spectrum(params: dict, hs: np.ndarray | None = None, activation: str = "tanh", *, cell: str = "elman") -> dict:
    """Spectral radius and largest singular value of W_hh (float64), and tanh saturation.

    hs: hidden states of any shape, e.g. ``forward(...)[0][1:]`` (T, B, H) (leave out h0 if
    it is not the network's own). Returns ``{"spectral_radius", "max_singular_value",
    "saturated_share"}``; saturated_share is the fraction of entries of hs with |h| > 0.99,
    None unless the activation is tanh and hs is given.

    Gated cells (``cell`` gru or lstm) have no single W_hh whose spectrum governs the flow:
    radius and singular value are None (n/a), and saturated_share is over the h entries of
    hs: h states of any shape (``Workspace.states()`` holds h alone for every cell), or the
    LSTM's whole states (T, 2, B, H) from ``forward``, whose h is index 0 of axis 1.
    """
    _check_cell(cell)
    if cell != "elman":
        share = None
        if hs is not None:
            h = np.asarray(hs)
            h = h[:, 0] if cell == "lstm" and h.ndim == 4 else h
            share = float((np.count_nonzero(h > SATURATION) + np.count_nonzero(h < -SATURATION)) / h.size) if h.size else None
        return {"spectral_radius": None, "max_singular_value": None, "saturated_share": share}
    check_activation(activation)
    W = np.asarray(params.get("W_hh") if isinstance(params, dict) else None, dtype=np.float64)
    if W.ndim != 2 or W.shape[0] != W.shape[1] or W.size == 0:
        raise InvalidInputError(f"params must hold a square W_hh (H, H), got shape {W.shape}")
    radius = float(np.max(np.abs(np.linalg.eigvals(W))))
    # sigma_max^2 is the largest eigenvalue of the symmetric W^T W: eigvalsh of it is about half
    # the time of the SVD behind norm(W, 2) at H = 128, and equal to it to ~1e-15 relative
    sigma = math.sqrt(max(float(np.linalg.eigvalsh(W.T @ W)[-1]), 0.0))
    share = None
    if activation == "tanh" and hs is not None:
        hs = np.asarray(hs)
        # |h| > s as two comparisons: no |hs| temporary the size of hs
        share = float((np.count_nonzero(hs > SATURATION) + np.count_nonzero(hs < -SATURATION)) / hs.size) if hs.size else None
    return {"spectral_radius": radius, "max_singular_value": sigma, "saturated_share": share}


def bias_for_mode(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    truncation: str | Truncation,
    *,
    activation: str,
    loss: str,
    h0: np.ndarray | None = None,
    grads: dict | None = None,
    workspace: Workspace | None = None,
    cell: str = "elman",
) -> dict:
    """:func:`truncation_bias` of ``truncation``'s gradient against ``full`` on one batch.

    Both gradients come from ``bptt.loss_and_gradients`` on the same weights and inputs
    (no update, no randomness: params and inputs are read, never written). ``grads``: the
    mode's gradient when the caller already has it (the training step's); a mode that
    reduces to full BPTT on this T (``full``, ``k_truncated:K`` with K >= T-1, ...) is its
    own full gradient, so then nothing is computed here. ``workspace`` is passed on to the
    engine (its hidden states are overwritten). The result of :func:`truncation_bias` gets a
    ``"mode"`` key with the canonical spec string. ``cell``: the engine's cell (any of them).
    """
    tr = parse(truncation)
    _check_cell(cell)
    kw = {"activation": activation, "loss": loss, "h0": h0, "workspace": workspace}
    if cell != "elman":
        kw["cell"] = cell
    if grads is None:
        _, grads, _ = loss_and_gradients(params, x, targets, mask, tr, **kw)
    T = np.shape(x)[0]
    if tr.chunk_and_window(T) == (T, T):
        g_full = grads
    else:
        _, g_full, _ = loss_and_gradients(params, x, targets, mask, "full", **kw)
    names = PARAM_NAMES if cell == "elman" else tuple(g_full)
    out = truncation_bias({k: grads[k] for k in names}, {k: g_full[k] for k in names})
    out["mode"] = str(tr)
    return out
