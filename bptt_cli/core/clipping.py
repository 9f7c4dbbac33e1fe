"""Gradient clipping: the lecture's remedy for exploding gradients (not for vanishing ones).

Modes:
    none            leave the gradient alone
    global_norm     if ||g|| > c:  g <- c g / ||g||, the norm over all parameters (Pascanu,
                    Mikolov & Bengio 2013); keeps the direction
    per_param_norm  the same, separately for each parameter
    value           each entry into [-c, c] (min-char-rnn); changes the direction

``clip`` returns clipped copies and leaves its input alone; ``clip_in_place`` clips a
gradient held in an ``optim.Flat`` (one buffer per dtype), as the trainer does on every
update, with a few calls over the buffers and no temporaries. Both give the same numbers and
the same ``ClipRecord``; the norms are accumulated in float64 whatever the dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.optim import Flat

MODES = ("none", "global_norm", "per_param_norm", "value")


@dataclass(frozen=True)
class ClipRecord:
    """Global gradient norms before and after clipping, and whether anything changed."""

    norm_before: float
    norm_after: float
    clipped: bool
    param_norms: dict = field(default_factory=dict)  # each parameter's norm before clipping


def param_norms(grads: dict) -> dict[str, float]:
    """The L2 norm of each gradient, accumulated in float64."""
    return {k: float(np.sqrt(np.dot(g.ravel().astype(np.float64, copy=False), g.ravel()))) for k, g in grads.items()}


def global_norm(grads: dict) -> float:
    """sqrt(sum over parameters of ||g_k||^2)."""
    return float(np.sqrt(sum(n * n for n in param_norms(grads).values())))


def clip(grads: dict, mode: str, threshold: float | None) -> tuple[dict, ClipRecord]:
    """Return (clipped gradients, record). The input dict and arrays are never modified."""
    _check(mode, threshold)
    flat = Flat(grads)
    flat.assign(grads)
    rec = clip_in_place(flat, mode, threshold)
    return (flat.arrays if rec.clipped else dict(grads)), rec


def clip_in_place(grads: Flat, mode: str, threshold: float | None) -> ClipRecord:
    """Clip the gradients held in ``grads`` (see ``optim.Flat``) in place; return the record.

    The same numbers as :func:`clip`, from a few calls over the flat buffers: the norms read
    a float64 copy of a float32 buffer (scratch kept by ``grads``), the scaling and the value
    clip write the buffers in place, and nothing else is allocated.
    """
    _check(mode, threshold)
    norms = _norms(grads)
    before = float(np.sqrt(sum(n * n for n in norms.values())))
    if mode == "none":
        return ClipRecord(before, before, False, norms)
    c = float(threshold)
    clipped = False
    if mode == "global_norm":
        if before > c:
            for buf, _ in grads.groups:
                buf *= buf.dtype.type(c / before)
            clipped = True
    elif mode == "per_param_norm":
        for k, n in norms.items():
            if n > c:
                g = grads.arrays[k]
                g *= g.dtype.type(c / n)
                clipped = True
    else:
        for buf, _ in grads.groups:
            # max |g| > c, as two reductions instead of a temporary |g|
            if buf.size and (buf.max() > c or -buf.min() > c):
                np.clip(buf, -c, c, out=buf)
                clipped = True
    after = float(np.sqrt(sum(n * n for n in _norms(grads).values()))) if clipped else before
    return ClipRecord(before, after, clipped, norms)


def _check(mode: str, threshold) -> None:
    if mode not in MODES:
        raise InvalidInputError(f"clip mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode != "none" and (threshold is None or not np.isfinite(threshold) or threshold <= 0):
        raise InvalidInputError(f"clip threshold must be a positive number for mode {mode!r}, got {threshold!r}")


def _norms(grads: Flat) -> dict[str, float]:
    """:func:`param_norms` of a Flat: one cast of each float32 buffer to float64, one dot per key."""
    out = {}
    scratch = None
    for i, (buf, spans) in enumerate(grads.groups):
        if buf.dtype != np.float64:
            scratch = scratch or grads.scratch("norms", np.float64)
            np.copyto(scratch[i], buf)
            buf = scratch[i]
        for k, a, b in spans:
            out[k] = float(np.sqrt(np.dot(buf[a:b], buf[a:b])))
    return {k: out[k] for k in grads.arrays}
