"""Per-step losses, each forward with its backward.

Both take outputs ``y (T, B, O)``, a ``mask (T, B)`` of 0/1 and return the masked mean
``L = sum(m * L_tb) / sum(m)`` together with ``dy = dL/dy``, shaped like ``y``.

``axis`` names the class axis of ``y`` (and of mse targets): -1 for ``(T, B, O)``, or 0 for
the class-major ``(O, T, B)`` that the engine uses, because NumPy reduces over a leading axis
a whole contiguous (T, B) plane at a time but over a short trailing axis (O = 10) one row of
O values at a time, some 20 to 60 times slower.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy over the class axis; ``targets (T, B)`` integer class indices.

    Few NumPy calls, because ``chunked_pass`` calls it once per chunk of a handful of steps:
    the class-major buffer z (O, T, B) is written once and the target entries are reached
    through flat indices target * T*B + (t*B + b) instead of a three-array fancy index.
    """
    yc = y if axis == 0 else np.moveaxis(y, axis, 0)  # (O, T, B), a view
    peak = np.maximum.reduce(yc, axis=0)  # (T, B); the ufunc itself skips ndarray.max's Python layer
    z = np.empty(yc.shape, y.dtype)  # C-contiguous whatever y's layout, so z.reshape(-1) is a view
    np.subtract(yc, peak, out=z)  # shifted for a stable exp
    zf = z.reshape(-1)
    nt = targets.size
    at_target = targets.reshape(-1) * nt
    at_target += np.arange(nt)  # flat index of [targets[t, b], t, b]
    logp = zf[at_target]  # y_target - peak, (T*B,)
    np.exp(z, out=z)
    total = np.add.reduce(z, axis=0)  # (T, B)
    z /= total  # z is now softmax(y)
    logp -= np.log(total).reshape(-1)  # log softmax(y) at the target
    m = mask.reshape(-1)
    n = float(np.add.reduce(m, dtype=np.float64))
    if logp.dtype != np.float64:  # accumulate in float64 whatever the run's dtype
        m, logp = m.astype(np.float64), logp.astype(np.float64)
    loss = -float(np.dot(m, logp)) / n
    # dL/dy = (softmax - onehot) * m / n, written into the softmax buffer
    zf[at_target] -= 1
    z *= mask * (1 / n)
    return loss, z if axis == 0 else np.moveaxis(z, 0, axis)


def mse(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """0.5 * squared error summed over outputs; ``targets (T, B, O)`` floats, laid out like ``y``."""
    n = mask.sum(dtype=np.float64)
    diff = np.moveaxis(y - targets, axis, 0)  # (O, T, B), a view
    w = (mask / n).astype(y.dtype, copy=False)  # (T, B)
    loss = float(0.5 * (w * diff * diff).sum(dtype=np.float64))
    diff *= w
    return loss, np.moveaxis(diff, 0, axis)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
