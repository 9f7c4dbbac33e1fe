r"""Gradient checks a user can run on their own settings, in float64.

Two checks, each a row per parameter:

- ``finite differences`` / ``full``: central differences of the total loss
  L = sum(m L_tb) / sum(m) against the engine's untruncated gradient;
- ``reference`` / every mode: the engine's gradient against :func:`reference_gradients`, the
  definition of truncated BPTT written out as plainly as possible, loops and all:

      for each step t, for the samples b with m_tb = 1:
          h_{f(t)-1}  <- the forward's state, held constant
          re-run steps f(t) .. t from it, then backpropagate L_tb alone back to step f(t)
      sum, divide by sum(m)

  with f(t) from the lecture's table, re-derived here rather than taken from the engine.

Relative errors are ||a - b|| / max(||a|| + ||b||, floor), per parameter.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bptt_cli.core import bptt
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.losses import LOSSES
from bptt_cli.core.model import PARAM_NAMES, check_activation, forward
from bptt_cli.core.truncation import Truncation, parse

FD_FLOOR = 1e-2  # below this gradient norm the FD check is absolute (1e-6 * 1e-2): FD noise is ~1e-10
REF_FLOOR = 1e-12
MAX_ENTRIES = 60  # per parameter for finite differences; the rest is covered by the reference rows


def rel_error(a: np.ndarray, b: np.ndarray, floor: float) -> float:
    """||a - b|| / max(||a|| + ||b||, floor), in float64."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(a) + np.linalg.norm(b), floor))


# -- the brute-force reference -----------------------------------------------------------------
def window_start(tr: Truncation, t: int) -> int:
    """f(t), the lecture's formulas one by one."""
    if tr.mode == "full":
        return 0
    if tr.mode == "k_truncated":
        return max(0, t - tr.k)
    if tr.mode == "subsequence":
        return tr.k * (t // tr.k)
    return max(0, tr.k * (t // tr.k) + tr.k - tr.k2)  # tbptt:K1:K2


def _phi(a: np.ndarray, activation: str) -> np.ndarray:
    if activation == "tanh":
        return np.tanh(a)
    if activation == "relu":
        return np.maximum(a, 0.0)
    return a.copy()


def _dphi(a: np.ndarray, activation: str) -> np.ndarray:
    """phi'(a) from the pre-activation; relu'(0) = 0."""
    if activation == "tanh":
        return 1.0 - np.tanh(a) ** 2
    if activation == "relu":
        return (a > 0).astype(a.dtype)
    return np.ones_like(a)


def _step_loss_grad(y: np.ndarray, target, loss: str) -> np.ndarray:
    """dL/dy of one step's loss for rows y (n, O): softmax - onehot, or y - target."""
    if loss == "cross_entropy":
        p = np.exp(y - y.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(p)), target] -= 1.0
        return p
    return y - target


def reference_gradients(params, x, targets, mask, truncation, activation, loss, h0=None) -> dict:
    """Truncated BPTT by its definition: one re-run and one backward chain per loss step.

    Rows are samples: x (T, B, I), h (B, H). Slow on purpose (O(T * window) Python steps);
    keep the problem small. Inputs are assumed valid (run the engine on them first).
    """
    tr = parse(truncation)
    T, B, _ = x.shape
    W_xh, W_hh, b_h, W_hy, b_y = (params[k] for k in PARAM_NAMES)
    hs = np.zeros((T + 1, B, W_hh.shape[0]), dtype=x.dtype)  # hs[t+1] = h_t
    if h0 is not None:
        hs[0] = h0
    for t in range(T):
        hs[t + 1] = _phi(x[t] @ W_xh.T + hs[t] @ W_hh.T + b_h, activation)

    grads = {k: np.zeros_like(params[k]) for k in PARAM_NAMES}
    for t in range(T):
        rows = np.nonzero(mask[t])[0]
        if len(rows) == 0:
            continue
        f = window_start(tr, t)
        h = {f - 1: hs[f, rows].copy()}  # h_{f-1}: a constant
        a = {}
        for s in range(f, t + 1):  # re-run steps f .. t
            a[s] = x[s, rows] @ W_xh.T + h[s - 1] @ W_hh.T + b_h
            h[s] = _phi(a[s], activation)
        y = h[t] @ W_hy.T + b_y
        dy = _step_loss_grad(y, targets[t, rows], loss) * mask[t, rows][:, None]  # (n, O)
        grads["W_hy"] += dy.T @ h[t]
        grads["b_y"] += dy.sum(axis=0)
        dh = dy @ W_hy  # dL_t/dh_t
        for s in range(t, f - 1, -1):  # back to step f, whose local terms still count
            da = dh * _dphi(a[s], activation)
            grads["W_xh"] += da.T @ x[s, rows]
            grads["W_hh"] += da.T @ h[s - 1]
            grads["b_h"] += da.sum(axis=0)
            dh = da @ W_hh
    n = float(np.sum(mask))
    return {k: g / n for k, g in grads.items()}


# -- the check ------------------------------------------------------------------------------------
def _total_loss(params, x, targets, mask, activation, loss, h0):
    hs, y = forward(params, x, activation=activation, h0=h0)
    return LOSSES[loss](y, targets, mask)[0], hs


def run_gradcheck(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    modes: list[str],
    *,
    activation: str,
    loss: str,
    h0: np.ndarray | None = None,
    eps: float = 1e-6,
    tol_fd: float = 1e-6,
    tol_ref: float = 1e-9,
    engine: Callable | None = None,
    max_entries: int = MAX_ENTRIES,
) -> list[dict]:
    """Check the engine's gradients on one batch; a list of rows, one per (check, mode, param).

    Everything is cast to float64 first (copies: float32 inputs are fine and stay untouched).
    ``engine`` has the signature of ``bptt.loss_and_gradients`` (the default); a test can pass
    a deliberately wrong one and watch its rows fail.

    Rows: ``{"check": "finite differences" | "reference", "mode", "param", "rel_error",
    "tolerance", "ok", "entries"}``; ``ok`` is rel_error <= tolerance (False for NaN).

    Finite differences: ``(L(p + eps) - L(p - eps)) / 2 eps`` against ``full``, on every entry
    of a parameter up to ``max_entries`` and on a fixed random subset of that many beyond it
    (seeded locally, so the same entries every time; ``entries`` says how many were used). For
    relu, an entry whose nudge flips any unit between active and inactive (a kink inside
    [p - eps, p + eps], where a difference quotient means nothing) is skipped. The relative
    error's floor is FD_FLOOR = 1e-2: a parameter whose gradient is ~0 is checked absolutely
    (to tol_fd * 1e-2) instead of against the ~1e-10 rounding noise of a difference quotient.

    Reference rows compare whole gradients with :func:`reference_gradients` for every mode in
    ``modes`` (floor 1e-12: the same maths summed in a different order).
    """
    check_activation(activation)
    specs = [str(parse(m)) for m in modes]
    if not eps > 0:
        raise InvalidInputError(f"eps must be > 0, got {eps!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)) or max_entries < 1:
        raise InvalidInputError(f"max_entries must be an integer >= 1, got {max_entries!r}")
    engine = bptt.loss_and_gradients if engine is None else engine
    if not isinstance(params, dict) or set(params) != set(PARAM_NAMES):
        raise InvalidInputError(f"params must be a dict with keys {', '.join(PARAM_NAMES)}")
    p64 = {k: np.array(params[k], dtype=np.float64) for k in PARAM_NAMES}
    x = np.array(x, dtype=np.float64)
    mask = np.array(mask, dtype=np.float64)
    targets = np.array(targets) if loss == "cross_entropy" else np.array(targets, dtype=np.float64)
    h0 = None if h0 is None else np.array(h0, dtype=np.float64)
    kw = {"activation": activation, "loss": loss, "h0": h0}

    engine_grads = {"full": engine(p64, x, targets, mask, "full", **kw)[1]}  # validates the inputs
    rows = []
    rng = np.random.default_rng(0)  # local: which entries finite differences visit
    _, hs = _total_loss(p64, x, targets, mask, activation, loss, h0)
    active = hs > 0
    for k in PARAM_NAMES:
        p = p64[k]
        flat = p.reshape(-1)  # a view: nudges write through to p64[k]
        if flat.size <= max_entries:
            idx = np.arange(flat.size)
        else:
            idx = np.sort(rng.choice(flat.size, max_entries, replace=False))
        fd, eng = [], []
        for i in idx:
            old = flat[i]
            flat[i] = old + eps
            lp, hp = _total_loss(p64, x, targets, mask, activation, loss, h0)
            flat[i] = old - eps
            lm, hm = _total_loss(p64, x, targets, mask, activation, loss, h0)
            flat[i] = old
            if activation == "relu" and not (np.array_equal(hp > 0, active) and np.array_equal(hm > 0, active)):
                continue
            fd.append((lp - lm) / (2 * eps))
            eng.append(engine_grads["full"][k].reshape(-1)[i])
        err = rel_error(np.array(fd), np.array(eng), FD_FLOOR) if fd else 0.0
        rows.append(_row("finite differences", "full", k, err, tol_fd, len(fd)))

    for spec in specs:
        if spec not in engine_grads:
            engine_grads[spec] = engine(p64, x, targets, mask, spec, **kw)[1]
        want = reference_gradients(p64, x, targets, mask, spec, activation, loss, h0)
        for k in PARAM_NAMES:
            err = rel_error(engine_grads[spec][k], want[k], REF_FLOOR)
            rows.append(_row("reference", spec, k, err, tol_ref, want[k].size))
    return rows


def _row(check: str, mode: str, param: str, err: float, tol: float, entries: int) -> dict:
    return {
        "check": check,
        "mode": mode,
        "param": param,
        "rel_error": err,
        "tolerance": tol,
        "ok": bool(err <= tol),  # False for NaN
        "entries": int(entries),
    }
