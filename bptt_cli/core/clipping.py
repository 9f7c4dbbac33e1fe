"""Gradient clipping: the lecture's remedy for exploding gradients (not for vanishing ones).

Modes:
    none            leave the gradient alone
    global_norm     if ||g|| > c:  g <- c g / ||g||, the norm over all parameters (Pascanu,
                    Mikolov & Bengio 2013); keeps the direction
    per_param_norm  the same, separately for each parameter
    value           each entry into [-c, c] (min-char-rnn); changes the direction
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bptt_cli.core.errors import InvalidInputError

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
    if mode not in MODES:
        raise InvalidInputError(f"clip mode must be one of {', '.join(MODES)}, got {mode!r}")
    norms = param_norms(grads)
    before = float(np.sqrt(sum(n * n for n in norms.values())))
    if mode == "none":
        return dict(grads), ClipRecord(before, before, False, norms)
    if threshold is None or not np.isfinite(threshold) or threshold <= 0:
        raise InvalidInputError(f"clip threshold must be a positive number for mode {mode!r}, got {threshold!r}")
    c = float(threshold)
    out = dict(grads)
    if mode == "global_norm":
        if before > c:
            scale = c / before
            out = {k: g * g.dtype.type(scale) for k, g in grads.items()}
    elif mode == "per_param_norm":
        for k, n in norms.items():
            if n > c:
                out[k] = grads[k] * grads[k].dtype.type(c / n)
    else:
        for k, g in grads.items():
            if np.abs(g).max(initial=0) > c:
                out[k] = np.clip(g, -c, c)
    clipped = any(out[k] is not grads[k] for k in grads)
    after = global_norm(out) if clipped else before
    return out, ClipRecord(before, after, clipped, norms)
