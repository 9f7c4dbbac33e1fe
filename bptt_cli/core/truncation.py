"""Truncation of the backward pass: the lecture's f(t), one definition for every mode.

For the loss at step t, f(t) is the earliest step whose local gradient counts: the gradient
of L_t is taken through steps f(t) .. t inclusive, with h_{f(t)-1} held constant. The forward
pass is never truncated.

    mode            spec            f(t)
    untruncated     full            0
    k-truncated     k_truncated:K   max(0, t - K)                        K >= 0
    subsequence     subsequence:K   K * floor(t / K)                     K >= 1
    TBPTT(k1, k2)   tbptt:K1:K2     max(0, K1 * floor(t / K1) + K1 - K2)  K2 >= K1 >= 1

Every mode is the same shape underneath: the losses fall into consecutive *chunks* of C
steps, and the gradient of each chunk's losses runs back W steps from the chunk's last step
(nominal last step (c+1)C - 1, even when the final chunk is cut short by T):

    f(t) = max(0, C * floor(t / C) + C - W)

    full: C = T, W = T      k_truncated:K: C = 1, W = K + 1
    subsequence:K: C = W = K      tbptt:K1:K2: C = K1, W = K2

    t:     0 1 2 3 4 5 6 7 8 9          subsequence:4 (C = W = 4)
    chunk: [0 1 2 3|4 5 6 7|8 9]        each loss sees back to its chunk's start
    tbptt:4:6 (C = 4, W = 6): chunk [4..7] sees back to step 2; chunk [8..9] to step 6

The engine (``bptt.py``) runs W == C modes as one backward chain cut at chunk starts, and
W > C modes (overlapping windows) as one sweep per lag j = 0 .. W-1 over the chunks of a span
of steps at once, span by span; with the identity activation and W a multiple of C, as
three passes of one matvec per step using powers of W_hh.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from bptt_cli.core.errors import InvalidInputError

MODES = ("full", "k_truncated", "subsequence", "tbptt")
VALID_FORMS = "full, k_truncated:K (K >= 0), subsequence:K (K >= 1), tbptt:K1:K2 (K2 >= K1 >= 1)"


@dataclass(frozen=True)
class Truncation:
    """A truncation mode; build one with :func:`parse`."""

    mode: str
    k: int | None = None  # K of k_truncated / subsequence, K1 of tbptt
    k2: int | None = None  # K2 of tbptt

    def __str__(self) -> str:
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return f"tbptt:{self.k}:{self.k2}"
        return f"{self.mode}:{self.k}"

    @property
    def default_update(self) -> str:
        """``sequence`` (one update per batch) or ``chunk`` (one update per chunk)."""
        return "chunk" if self.mode in ("subsequence", "tbptt") else "sequence"

    def chunk_and_window(self, T: int) -> tuple[int, int]:
        """(C, W) for a sequence of T steps, reduced to (T, T) when every f(t) is 0.

        The reduction is exact (f is non-decreasing, so f(T-1) = 0 means f = 0 everywhere)
        and lets ``k_truncated:K`` with K >= T-1 run as cheaply as ``full``.
        """
        if T < 1:
            raise InvalidInputError(f"sequence length T must be >= 1, got {T}")
        if self.mode == "full":
            return T, T
        if self.mode == "k_truncated":
            C, W = 1, self.k + 1
        elif self.mode == "subsequence":
            C = W = self.k
        else:
            C, W = self.k, self.k2
        if C * ((T - 1) // C) + C - W <= 0:
            return T, T
        return C, W

    def starts(self, T: int) -> np.ndarray:
        """f(t) for t = 0 .. T-1, shape (T,), int64."""
        C, W = self.chunk_and_window(T)
        t = np.arange(T, dtype=np.int64)
        return np.maximum(0, C * (t // C) + C - W)

    def chunk_length(self, T: int) -> int:
        """Steps per optimizer update under ``update_every: chunk``: K (subsequence), K1
        (tbptt), 1 (k_truncated: every step is its own chunk), T (full)."""
        if self.mode in ("subsequence", "tbptt"):
            return min(self.k, T)
        return 1 if self.mode == "k_truncated" else T


def parse(spec: str | Truncation) -> Truncation:
    """Parse a spec string such as ``k_truncated:5``; a Truncation is returned as it is."""
    if isinstance(spec, Truncation):
        return spec
    if not isinstance(spec, str):
        raise InvalidInputError(f"truncation must be a spec string ({VALID_FORMS}), got {spec!r}")
    text = spec.strip()
    parts = text.split(":")
    mode, args = parts[0], parts[1:]

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"bad truncation {spec!r}: {why}; valid forms: {VALID_FORMS}")

    if mode not in MODES:
        return_hint = ""
        import difflib

        near = difflib.get_close_matches(mode, MODES, n=1)
        if near:
            return_hint = f" (did you mean {near[0]!r}?)"
        raise bad(f"unknown mode {mode!r}{return_hint}")
    expected = {"full": 0, "k_truncated": 1, "subsequence": 1, "tbptt": 2}[mode]
    if len(args) != expected:
        raise bad(f"{mode} takes {expected} integer argument{'s' if expected != 1 else ''}")
    nums = []
    for a in args:
        if not re.fullmatch(r"[+-]?\d+", a.strip()):
            raise bad(f"{a!r} is not an integer")
        nums.append(int(a))
    if mode == "full":
        return Truncation("full")
    if mode == "k_truncated":
        if nums[0] < 0:
            raise bad("K must be >= 0")
        return Truncation("k_truncated", nums[0])
    if mode == "subsequence":
        if nums[0] < 1:
            raise bad("K must be >= 1")
        return Truncation("subsequence", nums[0])
    k1, k2 = nums
    if k1 < 1 or k2 < k1:
        raise bad("tbptt needs K2 >= K1 >= 1")
    return Truncation("tbptt", k1, k2)
