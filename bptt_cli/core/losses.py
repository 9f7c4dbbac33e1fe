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
    peak = yc.max(axis=0)  # (T, B)
    z = np.empty(yc.shape, y.dtype)  # C-contiguous whatever y's layout, so z.reshape(-1) is a view
    np.subtract(yc, peak, out=z)  # shifted for a stable exp
    zf = z.reshape(-1)
    at_target = targets.reshape(-1) * targets.size
    at_target += np.arange(targets.size)  # flat index of [targets[t, b], t, b]
    shifted = zf[at_target]  # y_target - peak, (T*B,)
    np.exp(z, out=z)
    total = z.sum(axis=0)  # (T, B)
    z /= total  # z is now softmax(y)
    logp = shifted - np.log(total.reshape(-1))
    m = mask.reshape(-1)
    n = float(m.sum(dtype=np.float64))
    loss = -float(np.dot(m.astype(np.float64), logp.astype(np.float64))) / n
    # dL/dy = (softmax - onehot) * m / n, written into the softmax buffer
    zf[at_target] -= 1
    z *= (mask * (1 / n)).astype(y.dtype, copy=False)
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
