"""Brute-force BPTT for the tests, written as plainly as possible.

Nothing here imports ``bptt_cli``: the truncation formulas, the forward pass, the losses and
the backward pass are re-derived from the lecture so that an agreement with the engine is
evidence, not an echo. One sample at a time, column vectors, one explicit outer product per
step and per loss, loops everywhere. Slow on purpose; keep the shapes small.

Model (time 0-indexed, ``h_{-1} = h0``)::

    a_t = W_xh x_t + W_hh h_{t-1} + b_h      h_t = phi(a_t)      y_t = W_hy h_t + b_y

Arrays are time-major: ``x (T, B, I)``, ``hs (T+1, B, H)`` with ``hs[t+1] = h_t`` and
``hs[0] = h0``, ``y (T, B, O)``; ``targets (T, B)`` ints or ``(T, B, O)`` floats; ``mask (T, B)``.
"""

from __future__ import annotations

import numpy as np

KEYS = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")
ACTIVATIONS = ("tanh", "relu", "identity")
LOSSES = ("cross_entropy", "mse")


# -- truncation, straight from the lecture's table ------------------------------------------
def parse_spec(spec: str) -> tuple[str, tuple[int, ...]]:
    mode, *args = spec.split(":")
    return mode, tuple(int(a) for a in args)


def start_of(spec: str, t: int) -> int:
    """f(t): the earliest step whose local gradient counts for the loss at step t."""
    mode, args = parse_spec(spec)
    if mode == "full":
        return 0
    if mode == "k_truncated":
        (k,) = args
        return max(0, t - k)
    if mode == "subsequence":
        (k,) = args
        return k * (t // k)
    if mode == "tbptt":
        k1, k2 = args
        return max(0, k1 * (t // k1) + k1 - k2)
    raise AssertionError(f"reference does not know mode {mode!r}")


def chunk_size(spec: str, T: int) -> int:
    """C of the ``update_every: chunk`` schedule."""
    mode, args = parse_spec(spec)
    return {"full": T, "k_truncated": 1, "subsequence": args[0] if args else 0,
            "tbptt": args[0] if args else 0}[mode]


# -- pieces -----------------------------------------------------------------------------------
def phi(a: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(a)
    if activation == "relu":
        return np.maximum(a, 0.0)
    if activation == "identity":
        return a.copy()
    raise AssertionError(activation)


def dphi(a: np.ndarray, activation: str) -> np.ndarray:
    """phi'(a) as a function of the pre-activation; relu'(0) = 0."""
    if activation == "tanh":
        return 1.0 - np.tanh(a) ** 2
    if activation == "relu":
        return (a > 0).astype(a.dtype)
    if activation == "identity":
        return np.ones_like(a)
    raise AssertionError(activation)


def step_loss(y: np.ndarray, target, loss: str) -> tuple[float, np.ndarray]:
    """Loss of one output vector ``y (O,)`` and its derivative dL/dy (O,)."""
    if loss == "cross_entropy":
        z = y - y.max()
        L = np.log(np.exp(z).sum()) - z[int(target)]
        dy = np.exp(z) / np.exp(z).sum()
        dy[int(target)] -= 1.0
        return float(L), dy
    if loss == "mse":
        d = y - target
        return float(0.5 * np.sum(d * d)), d
    raise AssertionError(loss)


def zeros_like_params(params: dict) -> dict:
    return {k: np.zeros_like(params[k]) for k in KEYS}


# -- forward ----------------------------------------------------------------------------------
def forward(params: dict, x: np.ndarray, activation: str, h0: np.ndarray | None = None):
    """Return ``hs (T+1, B, H)``, pre-activations ``pre (T, B, H)`` and ``y (T, B, O)``."""
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    O = params["W_hy"].shape[0]
    hs = np.zeros((T + 1, B, H), dtype=x.dtype)
    if h0 is not None:
        hs[0] = h0
    pre = np.zeros((T, B, H), dtype=x.dtype)
    y = np.zeros((T, B, O), dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            a = params["W_xh"] @ x[t, b] + params["W_hh"] @ hs[t, b] + params["b_h"]
            pre[t, b] = a
            hs[t + 1, b] = phi(a, activation)
            y[t, b] = params["W_hy"] @ hs[t + 1, b] + params["b_y"]
    return hs, pre, y


def loss(params, x, targets, mask, activation, loss_kind, h0=None) -> float:
    """L = sum(m * L_tb) / sum(m)."""
    _, _, y = forward(params, x, activation, h0)
    T, B, _ = x.shape
    total = 0.0
    for t in range(T):
        for b in range(B):
            if mask[t, b]:
                total += float(mask[t, b]) * step_loss(y[t, b], targets[t, b], loss_kind)[0]
    return total / float(np.sum(mask))


# -- backward ---------------------------------------------------------------------------------
def _backprop_window(grads, dy, t, f, x_b, h_b, pre_b, W_hh_at, W_hy, activation, mult=1.0):
    """Add the gradient of one loss L_t of one sample, taken through steps f..t, to ``grads``.

    Indexed by time for that sample: ``x_b[s] = x_s``, ``h_b[s] = h_{s-1}`` (so ``h_b[f]`` is
    the constant h_{f-1} and ``h_b[t+1] = h_t``), ``pre_b[s] = a_s``, ``W_hh_at[s]`` the W_hh
    that step s ran with. The local terms of step f count; the path into h_{f-1} is cut.
    ``mult``: a factor on the adjoint at every step it crosses (ARTBP's 1/(1-c)).
    """
    grads["W_hy"] += np.outer(dy, h_b[t + 1])
    grads["b_y"] += dy
    dh = W_hy.T @ dy
    for s in range(t, f - 1, -1):
        da = dh * dphi(pre_b[s], activation)
        grads["W_xh"] += np.outer(da, x_b[s])
        grads["W_hh"] += np.outer(da, h_b[s])
        grads["b_h"] += da
        dh = mult * (W_hh_at[s].T @ da)


def gradients(params, x, targets, mask, spec, activation, loss_kind, h0=None):
    """Loss and gradients of one whole-sequence pass under truncation ``spec``.

    For every supervised (t, b): copy h_{f(t)-1} as a constant, re-run steps f(t)..t from it,
    backpropagate L_tb alone, add. Divide by sum(m) at the end.
    """
    T, B, _ = x.shape
    hs, _, _ = forward(params, x, activation, h0)
    grads = zeros_like_params(params)
    total = 0.0
    for t in range(T):
        f = start_of(spec, t)
        for b in range(B):
            if not mask[t, b]:
                continue
            # Re-run f..t from a constant copy of h_{f-1} (the forward pass itself is untruncated).
            h_b = {f: hs[f, b].copy()}
            pre_b = {}
            for s in range(f, t + 1):
                pre_b[s] = params["W_xh"] @ x[s, b] + params["W_hh"] @ h_b[s] + params["b_h"]
                h_b[s + 1] = phi(pre_b[s], activation)
            y_tb = params["W_hy"] @ h_b[t + 1] + params["b_y"]
            L, dy = step_loss(y_tb, targets[t, b], loss_kind)
            total += float(mask[t, b]) * L
            W_hh_at = {s: params["W_hh"] for s in range(f, t + 1)}
            _backprop_window(grads, float(mask[t, b]) * dy, t, f, x[:, b], h_b, pre_b,
                             W_hh_at, params["W_hy"], activation)
    n = float(np.sum(mask))
    return total / n, {k: g / n for k, g in grads.items()}


def k0_gradients(params, x, targets, mask, activation, loss_kind, h0=None):
    """``k_truncated:0`` written out: da_t = (W_hy^T dL_t/dy_t) * phi'(a_t), nothing else.

    dW_xh = sum_t da_t x_t^T, dW_hh = sum_t da_t h_{t-1}^T, db_h = sum_t da_t; the output
    layer's gradient is the usual one. Vectorised with einsum: an independent formula.
    """
    T, B, _ = x.shape
    hs, pre, y = forward(params, x, activation, h0)
    dy = np.zeros_like(y)
    for t in range(T):
        for b in range(B):
            if mask[t, b]:
                dy[t, b] = float(mask[t, b]) * step_loss(y[t, b], targets[t, b], loss_kind)[1]
    n = float(np.sum(mask))
    dy /= n
    da = np.einsum("tbo,oh->tbh", dy, params["W_hy"]) * dphi(pre, activation)
    return {
        "W_xh": np.einsum("tbh,tbi->hi", da, x),
        "W_hh": np.einsum("tbh,tbk->hk", da, hs[:-1]),
        "b_h": da.sum(axis=(0, 1)),
        "W_hy": np.einsum("tbo,tbh->oh", dy, hs[1:]),
        "b_y": dy.sum(axis=(0, 1)),
    }


def chunked_replay(params, x, targets, mask, spec, activation, loss_kind, h0=None, lr=0.0,
                   per_step_weights=True, cut=None):
    """The ``update_every: chunk`` schedule replayed by brute force.

    Chunks are consecutive blocks of C steps. Each chunk runs forward with the weights of the
    moment (state carried over), stores h, a and the W_hh of every step, then takes each of
    its losses back through f(t)..t using the stored states and per-step W_hh, normalises by
    the chunk's own sum(m) and (if lr) applies p <- p - lr * g. Chunks without a supervised
    step are skipped. Returns ``(final params, [(index, loss, grads)], h_last)``.

    ``spec = "artbp:MEAN"`` with ``cut`` (T,) bool, a given draw: the chunks are the segments
    that start where cut is True, each loss looks back to its segment's start, and the
    adjoint is multiplied by 1/(1 - 1/MEAN) at every step it crosses (none of them is cut).
    """
    params = {k: v.copy() for k, v in params.items()}
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    mult = 1.0
    if cut is not None:
        starts = [u for u in range(T) if cut[u]]
        bounds = list(zip(starts, starts[1:] + [T]))
        mult = 1.0 / (1.0 - 1.0 / parse_spec_mean(spec))
    else:
        C = chunk_size(spec, T)
        bounds = [(c0, min(c0 + C, T)) for c0 in range(0, T, C)]
    hs = np.zeros((T + 1, B, H), dtype=x.dtype)
    if h0 is not None:
        hs[0] = h0
    pre = np.zeros((T, B, H), dtype=x.dtype)
    W_hh_at: dict[int, np.ndarray] = {}
    records = []
    for index, (c0, c1) in enumerate(bounds):
        steps = range(c0, c1)
        for s in steps:
            W_hh_at[s] = params["W_hh"].copy()
            for b in range(B):
                a = params["W_xh"] @ x[s, b] + params["W_hh"] @ hs[s, b] + params["b_h"]
                pre[s, b] = a
                hs[s + 1, b] = phi(a, activation)
        n = float(sum(mask[s, b] for s in steps for b in range(B)))
        if n == 0:
            continue
        grads = zeros_like_params(params)
        total = 0.0
        for t in steps:
            f = c0 if cut is not None else start_of(spec, t)
            for b in range(B):
                if not mask[t, b]:
                    continue
                y_tb = params["W_hy"] @ hs[t + 1, b] + params["b_y"]
                L, dy = step_loss(y_tb, targets[t, b], loss_kind)
                total += float(mask[t, b]) * L
                W_at = W_hh_at if per_step_weights else {u: params["W_hh"] for u in W_hh_at}
                _backprop_window(grads, float(mask[t, b]) * dy, t, f, x[:, b], hs[:, b],
                                 pre[:, b], W_at, params["W_hy"], activation, mult)
        grads = {k: g / n for k, g in grads.items()}
        records.append((index, total / n, grads))
        if lr:
            for k in KEYS:
                params[k] = params[k] - lr * grads[k]
    return params, records, hs[-1].copy()


# -- randomised truncation, for a given draw ------------------------------------------------
def parse_spec_mean(spec: str) -> float:
    """MEAN of ``random_k:MEAN`` / ``artbp:MEAN``."""
    mode, mean = spec.split(":")
    assert mode in ("random_k", "artbp"), spec
    return float(mean)


def weighted_gradients(params, x, targets, mask, activation, loss_kind, h0=None, *, lag_weight,
                       step_mult=None):
    """Loss and gradients with every term of the full gradient reweighted, for a given draw.

    For every supervised (t, b) the adjoint of L_tb is pushed back from t towards step 0 one
    step at a time; the local terms of step s = t - j are multiplied by ``lag_weight(t, j)``,
    and the adjoint crossing from step u into step u-1 (dL/dh_{u-1} from a_u) by
    ``step_mult[u]``, where 0 is a cut (nothing flows on). Divide by sum(m) at the end.
    """
    T, B, _ = x.shape
    hs, pre, y = forward(params, x, activation, h0)
    grads = zeros_like_params(params)
    total = 0.0
    for t in range(T):
        for b in range(B):
            if not mask[t, b]:
                continue
            L, dy = step_loss(y[t, b], targets[t, b], loss_kind)
            dy = float(mask[t, b]) * dy
            total += float(mask[t, b]) * L
            grads["W_hy"] += np.outer(dy, hs[t + 1, b])
            grads["b_y"] += dy
            dh = params["W_hy"].T @ dy
            for s in range(t, -1, -1):
                w = lag_weight(t, t - s)
                da = dh * dphi(pre[s, b], activation)
                grads["W_xh"] += w * np.outer(da, x[s, b])
                grads["W_hh"] += w * np.outer(da, hs[s, b])
                grads["b_h"] += w * da
                m = 1.0 if step_mult is None else step_mult[s]
                if s == 0 or m == 0:
                    break
                dh = m * (params["W_hh"].T @ da)
    n = float(np.sum(mask))
    return total / n, {k: g / n for k, g in grads.items()}


def random_k_given(params, x, targets, mask, mean, L, activation, loss_kind, h0=None):
    """``random_k:MEAN`` for the window lengths L (T,): loss t keeps lags j <= L[t], lag j
    weighted by 1 / P(G >= j) = 1 / q^j with G geometric on {0, 1, ..}, q = MEAN / (MEAN + 1)."""
    q = mean / (mean + 1.0)
    return weighted_gradients(params, x, targets, mask, activation, loss_kind, h0,
                              lag_weight=lambda t, j: (j <= L[t]) / q**j)


def artbp_given(params, x, targets, mask, mean, cut, activation, loss_kind, h0=None):
    """``artbp:MEAN`` for the cuts ``cut`` (T,) bool: the adjoint stops at a cut step and is
    multiplied by 1 / (1 - c), c = 1 / MEAN, at every other step it crosses."""
    k = 1.0 / (1.0 - 1.0 / mean)
    mult = [0.0 if cut[u] else k for u in range(len(cut))]
    return weighted_gradients(params, x, targets, mask, activation, loss_kind, h0,
                              lag_weight=lambda t, j: 1.0, step_mult=mult)


def jacobian(params, x, t, j, activation, h0=None) -> np.ndarray:
    """dh_t/dh_{t-j} per sample, ``(B, H, H)``: the product of diag(phi'(a_s)) W_hh, s = t-j+1..t."""
    _, pre, _ = forward(params, x, activation, h0)
    B = x.shape[1]
    H = params["W_hh"].shape[0]
    out = np.zeros((B, H, H), dtype=x.dtype)
    for b in range(B):
        J = np.eye(H, dtype=x.dtype)
        for s in range(t - j + 1, t + 1):
            J = (dphi(pre[s, b], activation)[:, None] * params["W_hh"]) @ J
        out[b] = J
    return out


# -- random problems --------------------------------------------------------------------------
def random_params(rng: np.random.Generator, I: int, H: int, O: int, dtype=np.float64,
                  scale: float = 1.0) -> dict:
    """Dense random parameters (non-zero biases, so every term of the gradient is exercised)."""
    p = {
        "W_xh": rng.normal(0, 1 / np.sqrt(I), (H, I)),
        "W_hh": rng.normal(0, scale / np.sqrt(H), (H, H)),
        "b_h": rng.normal(0, 0.3, H),
        "W_hy": rng.normal(0, 1 / np.sqrt(H), (O, H)),
        "b_y": rng.normal(0, 0.3, O),
    }
    return {k: v.astype(dtype) for k, v in p.items()}


def random_problem(rng: np.random.Generator, T, B, I, H, O, loss_kind, *, density=0.5,
                   with_h0=False, dtype=np.float64):
    """``(params, x, targets, mask, h0)``; the mask has at least one 1."""
    params = random_params(rng, I, H, O, dtype)
    x, targets, mask = random_inputs(rng, T, B, I, O, loss_kind, density=density, dtype=dtype)
    h0 = rng.normal(0, 0.5, (B, H)).astype(dtype) if with_h0 else None
    return params, x, targets, mask, h0


def random_inputs(rng: np.random.Generator, T, B, I, O, loss_kind, *, density=0.5, dtype=np.float64):
    """``(x, targets, mask)`` of a random problem, whatever the cell; the mask has at least one 1."""
    x = rng.normal(0, 1, (T, B, I)).astype(dtype)
    if loss_kind == "cross_entropy":
        targets = rng.integers(0, O, (T, B)).astype(np.int64)
    else:
        targets = rng.normal(0, 1, (T, B, O)).astype(dtype)
    mask = (rng.random((T, B)) < density).astype(dtype)
    if mask.sum() == 0:
        mask[rng.integers(T), rng.integers(B)] = 1
    return x, targets, mask


def rel_err(a: np.ndarray, b: np.ndarray, floor: float = 1e-12) -> float:
    """||a - b|| / max(||a|| + ||b||, floor)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), floor))
