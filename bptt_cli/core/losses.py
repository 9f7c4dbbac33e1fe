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
    """Softmax cross-entropy over the class axis; ``targets (T, B)`` integer class indices."""
    yc = np.moveaxis(y, axis, 0)  # (O, T, B), a view
    peak = yc.max(axis=0)  # (T, B)
    z = yc - peak  # shifted for a stable exp
    np.exp(z, out=z)
    total = z.sum(axis=0)  # (T, B)
    z /= total  # z is now softmax(y)
    at_target = (targets, *np.indices(targets.shape, sparse=True))  # picks [targets[t, b], t, b]
    logp = yc[at_target] - peak - np.log(total)  # (T, B)
    n = mask.sum(dtype=np.float64)
    loss = float(-(mask * logp).sum(dtype=np.float64) / n)
    # dL/dy = (softmax - onehot) * m / n, written into the softmax buffer
    z[at_target] -= 1
    z *= (mask / n).astype(y.dtype, copy=False)
    return loss, np.moveaxis(z, 0, axis)


def mse(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """0.5 * squared error summed over outputs; ``targets (T, B, O)`` floats, laid out like ``y``."""
    n = mask.sum(dtype=np.float64)
    diff = np.moveaxis(y - targets, axis, 0)  # (O, T, B), a view
    w = (mask / n).astype(y.dtype, copy=False)  # (T, B)
    loss = float(0.5 * (w * diff * diff).sum(dtype=np.float64))
    diff *= w
    return loss, np.moveaxis(diff, 0, axis)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
