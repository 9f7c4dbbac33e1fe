"""Per-step losses, each forward with its backward.

Both take outputs ``y (T, B, O)``, a ``mask (T, B)`` of 0/1 and return the masked mean
``L = sum(m * L_tb) / sum(m)`` together with ``dy = dL/dy``, shaped like ``y``.

``axis`` names the class axis of ``y`` (and of mse targets): -1 for ``(T, B, O)``, or 0 for
the class-major ``(O, T, B)`` that the engine uses, because NumPy reduces over a leading axis
with whole contiguous rows at a time but over a short trailing axis (O = 10) one row of O
values at a time, some 20 to 60 times slower.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy over the class axis; ``targets (T, B)`` integer class indices."""
    peak = y.max(axis=axis, keepdims=True)  # (T, B, 1)
    z = y - peak  # shifted for a stable exp
    np.exp(z, out=z)
    total = z.sum(axis=axis, keepdims=True)  # (T, B, 1)
    z /= total  # z is now softmax(y)
    tgt = np.expand_dims(targets, axis)  # (T, B, 1)
    logp = (np.take_along_axis(y, tgt, axis) - peak - np.log(total)).squeeze(axis)  # (T, B)
    n = mask.sum(dtype=np.float64)
    loss = float(-(mask * logp).sum(dtype=np.float64) / n)
    # dL/dy = (softmax - onehot) * m / n, written into the softmax buffer
    np.put_along_axis(z, tgt, np.take_along_axis(z, tgt, axis) - 1, axis)
    z *= np.expand_dims((mask / n).astype(y.dtype, copy=False), axis)
    dy = z
    return loss, dy


def mse(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """0.5 * squared error summed over outputs; ``targets (T, B, O)`` floats, laid out like ``y``."""
    n = mask.sum(dtype=np.float64)
    diff = y - targets  # (T, B, O)
    w = np.expand_dims((mask / n).astype(y.dtype, copy=False), axis)  # (T, B, 1)
    loss = float(0.5 * (w * diff * diff).sum(dtype=np.float64))
    diff *= w
    return loss, diff


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
