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
  For the gated cells (``cell="gru"`` / ``"lstm"``) the held state is the whole state (h, and
  c for the LSTM), and each step is written out gate by gate in PyTorch's layout and order
  (``_gated_step`` / ``_gated_step_back``), apart from the engine's ``core/gated.py``.

Relative errors are ||a - b|| / max(||a|| + ||b||, floor), per parameter.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from bptt_cli.core import bptt
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.losses import LOSSES
from bptt_cli.core.model import PARAM_NAMES, check_activation, forward

CELLS = ("elman", "gru", "lstm")
GATED_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "W_hy", "b_y")  # PyTorch's layout, then the readout
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


def param_names(cell: str) -> tuple[str, ...]:
    """The parameter keys of ``cell``."""
    if cell not in CELLS:
        raise InvalidInputError(f"cell must be one of {', '.join(CELLS)}, got {cell!r}")
    return PARAM_NAMES if cell == "elman" else GATED_NAMES


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def _gated_step(params: dict, cell: str, x: np.ndarray, h: np.ndarray, c: np.ndarray | None):
    """One step for rows x (n, I), h (n, H), c (n, H) or None: (h', c', cache)."""
    H = h.shape[1]
    gi = x @ params["weight_ih"].T + params["bias_ih"]  # (n, G H), gates in PyTorch's order
    gh = h @ params["weight_hh"].T + params["bias_hh"]
    blk = [slice(k * H, (k + 1) * H) for k in range(4 if cell == "lstm" else 3)]
    if cell == "gru":  # r, z, n
        r = _sigmoid(gi[:, blk[0]] + gh[:, blk[0]])
        z = _sigmoid(gi[:, blk[1]] + gh[:, blk[1]])
        hn = gh[:, blk[2]]
        n = np.tanh(gi[:, blk[2]] + r * hn)
        return (1 - z) * n + z * h, None, {"x": x, "h": h, "r": r, "z": z, "n": n, "hn": hn}
    i, f, g, o = (  # i, f, g, o
        _sigmoid(gi[:, blk[0]] + gh[:, blk[0]]),
        _sigmoid(gi[:, blk[1]] + gh[:, blk[1]]),
        np.tanh(gi[:, blk[2]] + gh[:, blk[2]]),
        _sigmoid(gi[:, blk[3]] + gh[:, blk[3]]),
    )
    c_new = f * c + i * g
    return o * np.tanh(c_new), c_new, {"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "c_new": c_new}


def _gated_step_back(params: dict, cell: str, k: dict, dh_new, dc_new, grads: dict):
    """Adjoints of (h, c) before a step from those after it; adds the step's weight gradients."""
    if cell == "gru":
        r, z, n, hn, h = k["r"], k["z"], k["n"], k["hn"], k["h"]
        dz = dh_new * (h - n)
        dan = dh_new * (1 - z) * (1 - n * n)  # adjoint of W_in x + b_in + r * (W_hn h + b_hn)
        dar = dan * hn * r * (1 - r)
        daz = dz * z * (1 - z)
        d_in = np.concatenate([dar, daz, dan], axis=1)  # (n, 3H): input side
        d_hid = np.concatenate([dar, daz, dan * r], axis=1)  # hidden side: n's is scaled by r
        dh, dc = dh_new * z, None
    else:
        c, i, f, g, o, tc = k["c"], k["i"], k["f"], k["g"], k["o"], np.tanh(k["c_new"])
        dc_all = dc_new + dh_new * o * (1 - tc * tc)
        d_in = np.concatenate(
            [dc_all * g * i * (1 - i), dc_all * c * f * (1 - f), dc_all * i * (1 - g * g), dh_new * tc * o * (1 - o)], axis=1
        )
        d_hid = d_in
        dh, dc = 0.0, dc_all * f
    grads["weight_ih"] += d_in.T @ k["x"]
    grads["bias_ih"] += d_in.sum(axis=0)
    grads["weight_hh"] += d_hid.T @ k["h"]
    grads["bias_hh"] += d_hid.sum(axis=0)
    return dh + d_hid @ params["weight_hh"], dc


def _gated_reference(params, x, targets, mask, tr: Truncation, cell: str, loss: str, h0) -> dict:
    """:func:`reference_gradients` for a gated cell: the whole state (h, c) held at f(t) - 1."""
    T, B, _ = x.shape
    H = params["weight_hh"].shape[1]
    hs = np.zeros((T + 1, B, H), dtype=x.dtype)  # hs[t+1] = h_t
    cs = np.zeros((T + 1, B, H), dtype=x.dtype)
    if h0 is not None:
        h0 = np.asarray(h0[0] if isinstance(h0, tuple) else h0) if cell == "gru" else h0
        if cell == "lstm":
            hs[0], cs[0] = h0[0], h0[1]
        else:
            hs[0] = h0
    for t in range(T):
        hs[t + 1], c_new, _ = _gated_step(params, cell, x[t], hs[t], cs[t] if cell == "lstm" else None)
        if cell == "lstm":
            cs[t + 1] = c_new
    grads = {k: np.zeros_like(params[k]) for k in GATED_NAMES}
    for t in range(T):
        rows = np.nonzero(mask[t])[0]
        if len(rows) == 0:
            continue
        f = window_start(tr, t)
        h, c = hs[f, rows].copy(), cs[f, rows].copy()  # the state before step f: a constant
        caches = {}
        for s in range(f, t + 1):  # re-run steps f .. t
            h, c, caches[s] = _gated_step(params, cell, x[s, rows], h, c if cell == "lstm" else None)
        dy = _step_loss_grad(h @ params["W_hy"].T + params["b_y"], targets[t, rows], loss) * mask[t, rows][:, None]
        grads["W_hy"] += dy.T @ h
        grads["b_y"] += dy.sum(axis=0)
        dh, dc = dy @ params["W_hy"], np.zeros_like(h)
        for s in range(t, f - 1, -1):  # back to step f, whose local terms still count
            dh, dc = _gated_step_back(params, cell, caches[s], dh, dc, grads)
    n = float(np.sum(mask))
    return {k: g / n for k, g in grads.items()}


def reference_gradients(params, x, targets, mask, truncation, activation, loss, h0=None, *, cell: str = "elman") -> dict:
    """Truncated BPTT by its definition: one re-run and one backward chain per loss step.

    Rows are samples: x (T, B, I), h (B, H) (for the LSTM, h0 (2, B, H) = (h, c)). Slow on
    purpose (O(T * window) Python steps); keep the problem small. Inputs are assumed valid
    (run the engine on them first). ``activation`` is the Elman cell's; gated cells ignore it.
    """
    tr = parse(truncation)
    if cell != "elman":
        param_names(cell)
        return _gated_reference(params, x, targets, mask, tr, cell, loss, h0)
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
def fixed_window(spec: str | Truncation) -> bool:
    """Whether a mode keeps one window per step for good (what the reference re-derives):
    not adaptive (K is picked while training) and not random (windows drawn per pass)."""
    tr = parse(spec)
    return not getattr(tr, "random", False) and getattr(tr, "adaptive", None) is None


def _total_loss(params, x, targets, mask, activation, loss, h0, cell="elman"):
    if cell == "elman":
        hs, y = forward(params, x, activation=activation, h0=h0)
    else:  # the reference's own forward, gate by gate
        hs = None
        h = np.zeros((x.shape[1], params["weight_hh"].shape[1]))
        c = np.zeros_like(h)
        if h0 is not None:
            h, c = (np.array(h0[0]), np.array(h0[1])) if cell == "lstm" else (np.array(h0), c)
        y = np.empty((x.shape[0], x.shape[1], params["W_hy"].shape[0]))
        for t in range(x.shape[0]):
            h, c, _ = _gated_step(params, cell, x[t], h, c if cell == "lstm" else None)
            y[t] = h @ params["W_hy"].T + params["b_y"]
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
    cell: str = "elman",
) -> list[dict]:
    """Check the engine's gradients on one batch; a list of rows, one per (check, mode, param).

    ``cell``: elman (``activation`` applies), gru or lstm (``activation`` is ignored; h0 of the
    LSTM is (2, B, H) = (h, c)); the engine is called with ``cell=`` for the gated cells.

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
    for spec in specs:
        if not fixed_window(spec):
            why = "draws its windows at random" if parse(spec).random else "picks K while it trains"
            raise InvalidInputError(
                f"{spec} {why}; gradcheck checks modes with a fixed window: full, k_truncated:K, "
                "subsequence:K, tbptt:K1:K2 (check the k_truncated:K an adaptive run uses)"
            )
    if not eps > 0:
        raise InvalidInputError(f"eps must be > 0, got {eps!r}")
    if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)) or max_entries < 1:
        raise InvalidInputError(f"max_entries must be an integer >= 1, got {max_entries!r}")
    engine = bptt.loss_and_gradients if engine is None else engine
    names = param_names(cell)
    if not isinstance(params, dict) or set(params) != set(names):
        raise InvalidInputError(f"params of cell {cell} must be a dict with keys {', '.join(names)}")
    p64 = {k: np.array(params[k], dtype=np.float64) for k in names}
    x = np.array(x, dtype=np.float64)
    mask = np.array(mask, dtype=np.float64)
    targets = np.array(targets) if loss == "cross_entropy" else np.array(targets, dtype=np.float64)
    h0 = None if h0 is None else np.array(h0, dtype=np.float64)  # an LSTM's (h, c) pair stacks to (2, B, H)
    kw = {"activation": activation, "loss": loss, "h0": h0}
    if cell != "elman":
        kw["cell"] = cell

    engine_grads = {"full": engine(p64, x, targets, mask, "full", **kw)[1]}  # validates the inputs
    rows = []
    rng = np.random.default_rng(0)  # local: which entries finite differences visit
    relu = cell == "elman" and activation == "relu"
    _, hs = _total_loss(p64, x, targets, mask, activation, loss, h0, cell)
    active = hs > 0 if relu else None
    for k in names:
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
            lp, hp = _total_loss(p64, x, targets, mask, activation, loss, h0, cell)
            flat[i] = old - eps
            lm, hm = _total_loss(p64, x, targets, mask, activation, loss, h0, cell)
            flat[i] = old
            if relu and not (np.array_equal(hp > 0, active) and np.array_equal(hm > 0, active)):
                continue
            fd.append((lp - lm) / (2 * eps))
            eng.append(engine_grads["full"][k].reshape(-1)[i])
        err = rel_error(np.array(fd), np.array(eng), FD_FLOOR) if fd else 0.0
        rows.append(_row("finite differences", "full", k, err, tol_fd, len(fd)))

    for spec in specs:
        if spec not in engine_grads:
            engine_grads[spec] = engine(p64, x, targets, mask, spec, **kw)[1]
        want = reference_gradients(p64, x, targets, mask, spec, activation, loss, h0, cell=cell)
        for k in names:
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
