"""Per-step losses, each forward with its backward.

Both take outputs ``y (T, B, O)``, a ``mask (T, B)`` of 0/1 and return the masked mean
``L = sum(m * L_tb) / sum(m)`` together with ``dy = dL/dy``, shaped like ``y``.

``axis`` names the class axis of ``y`` (and of mse targets): -1 for ``(T, B, O)``, or 0 for
the class-major ``(O, T, B)`` that the engine uses, because NumPy reduces over a leading axis
a whole contiguous (T, B) plane at a time but over a short trailing axis (O = 10) one row of
O values at a time, some 20 to 60 times slower.

``CrossEntropyChunks`` is ``cross_entropy`` for ``chunked_pass``'s chunks of one sequence,
with what depends only on the targets and the mask computed once per sequence.
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


class CrossEntropyChunks:
    """``cross_entropy`` of each chunk of one sequence, in place on the chunk's outputs.

    ``chunked_pass`` computes a loss per chunk of a few steps, where the NumPy calls, not
    the arithmetic, set the time. What depends only on the targets and the mask is computed
    once per sequence here: each step's flat index of its target entry inside its chunk's
    buffer, each chunk's sum(m), and the mask scaled by 1 / sum(m) of its chunk. Chunks are
    steps firsts[c] .. lasts[c]-1 of targets (T, B) and mask (T, B); the values are those of
    ``cross_entropy(y, targets[a:b], mask[a:b], axis=0)``, bit for bit.
    """

    def __init__(self, targets: np.ndarray, mask: np.ndarray, firsts: np.ndarray, lasts: np.ndarray, dtype) -> None:
        T, B = mask.shape
        rows = (lasts - firsts) * B  # rows of each chunk
        chunk_of = np.repeat(np.arange(len(firsts)), lasts - firsts)  # (T,) each step's chunk
        local = np.arange(T * B).reshape(T, B) - (firsts * B)[chunk_of][:, None]  # (t - a) B + b
        self._at = (targets * rows[chunk_of][:, None] + local).reshape(-1)  # [target, t - a, b], flat
        step_sums = mask.sum(axis=1, dtype=np.float64)
        sums = np.add.reduceat(step_sums, firsts)  # sum(m) of each chunk, exact integers
        self._sums = sums.tolist()
        self._m = mask.astype(np.float64).reshape(-1)
        inv = 1 / np.maximum(sums, 1)  # an unsupervised chunk (sum 0) is never asked for
        self._w = (mask * inv[chunk_of][:, None]).astype(dtype).reshape(-1)  # m / sum(m)
        self._B = B

    def __call__(self, c: int, a: int, b: int, z: np.ndarray) -> float:
        """The loss of chunk c (steps a .. b-1) from its outputs z (O, (b-a) B), C-contiguous,
        which become dL/dy. The chunk must have a supervised step."""
        r0, r1 = a * self._B, b * self._B
        zf = z.reshape(-1)  # a view
        at = self._at[r0:r1]
        np.subtract(z, np.maximum.reduce(z, axis=0), out=z)  # shifted for a stable exp
        logp = zf[at]  # y_target - peak
        np.exp(z, out=z)
        total = np.add.reduce(z, axis=0)
        z /= total  # softmax(y)
        logp -= np.log(total, out=total)  # log softmax(y) at the target
        loss = -float(np.dot(self._m[r0:r1], logp)) / self._sums[c]  # in float64 (m is) whatever the dtype
        zf[at] -= 1  # dL/dy = (softmax - onehot) * m / sum(m)
        z *= self._w[r0:r1]
        return loss


def mse(y: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, axis: int = -1) -> tuple[float, np.ndarray]:
    """0.5 * squared error summed over outputs; ``targets (T, B, O)`` floats, laid out like ``y``."""
    n = mask.sum(dtype=np.float64)
    diff = np.moveaxis(y - targets, axis, 0)  # (O, T, B), a view
    w = (mask / n).astype(y.dtype, copy=False)  # (T, B)
    loss = float(0.5 * (w * diff * diff).sum(dtype=np.float64))
    diff *= w
    return loss, np.moveaxis(diff, 0, axis)


LOSSES = {"cross_entropy": cross_entropy, "mse": mse}
