"""Per-step losses, each forward with its backward.

Both take outputs ``y (T, B, O)``, a ``mask (T, B)`` of 0/1 and return the masked mean
``L = sum(m * L_tb) / sum(m)`` together with ``dy = dL/dy (T, B, O)``.
"""

from __future__ import annotations

import numpy as np


def cross_entropy(y: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """Softmax cross-entropy over the last axis; ``targets (T, B)`` integer class indices."""
    peak = y.max(axis=-1, keepdims=True)  # (T, B, 1)
    z = y - peak  # shifted for a stable exp
    np.exp(z, out=z)
    total = z.sum(axis=-1, keepdims=True)  # (T, B, 1)
    z /= total  # z is now softmax(y)
    tgt = targets[..., None]  # (T, B, 1)
    logp = (np.take_along_axis(y, tgt, -1) - peak - np.log(total))[..., 0]  # (T, B)
    n = mask.sum(dtype=np.float64)
    loss = float(-(mask * logp).sum(dtype=np.float64) / n)
    # dL/dy = (softmax - onehot) * m / n, written into the softmax buffer
    np.put_along_axis(z, tgt, np.take_along_axis(z, tgt, -1) - 1, -1)
    z *= (mask / n).astype(y.dtype, copy=False)[..., None]
    dy = z
    return loss, dy


def mse(y: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> tuple[float, np.ndarray]:
    """0.5 * squared error summed over outputs; ``targets (T, B, O)`` floats."""
    n = mask.sum(dtype=np.float64)
    diff = y - targets  # (T, B, O)
    w = (mask / n).astype(y.dtype, copy=False)[..., None]  # (T, B, 1)
    loss = float(0.5 * (w * diff * diff).sum(dtype=np.float64))
    diff *= w
    return loss, diff


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
