"""Truncation of the backward pass: the lecture's f(t), one definition for every mode.

For the loss at step t, f(t) is the earliest step whose local gradient counts: the gradient
of L_t is taken through steps f(t) .. t inclusive, with h_{f(t)-1} held constant. The forward
pass is never truncated.

    mode            spec            f(t)
    untruncated     full            0
    k-truncated     k_truncated:K   max(0, t - K)                        K >= 0
    subsequence     subsequence:K   K * floor(t / K)                     K >= 1
    TBPTT(k1, k2)   tbptt:K1:K2     max(0, K1 * floor(t / K1) + K1 - K2)  K2 >= K1 >= 1

Three more modes choose their windows as they go (docs/truncation.md has the derivations):

    adaptive        adaptive:DELTA[:KMIN:KMAX]   k_truncated:K with K picked from the lag
                    profile (core/adaptive.py, Aicher, Foti & Fox 2019); ``with_k(K)`` is the
                    mode the engine runs until the next adaptation
    random_k        random_k:MEAN   loss t keeps lags j <= L_t, L_t ~ Geometric on {0, 1, ..}
                    with mean MEAN (capped at t), lag j weighted 1 / P(L >= j): unbiased
    artbp           artbp:MEAN      Tallec & Ollivier's ARTBP: a cut before each step u >= 1
                    with probability c = 1/MEAN, the adjoint crossing an uncut step scaled by
                    1/(1 - c): unbiased; the segments between cuts are its chunks

The random modes take their draw from a ``numpy.random.Generator`` (``draw``), so a run's seed
and step fix it.

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

import math
import re
from dataclasses import dataclass

import numpy as np

from bptt_cli.core.errors import InvalidInputError

MODES = ("full", "k_truncated", "subsequence", "tbptt", "adaptive", "random_k", "artbp")
RANDOM_MODES = ("random_k", "artbp")
VALID_FORMS = (
    "full, k_truncated:K (K >= 0), subsequence:K (K >= 1), tbptt:K1:K2 (K2 >= K1 >= 1), "
    "adaptive:DELTA or adaptive:DELTA:KMIN:KMAX (0 < DELTA < 1, 1 <= KMIN <= KMAX), "
    "random_k:MEAN (MEAN >= 1), artbp:MEAN (MEAN > 1)"
)


def _num(x: float) -> str:
    """A float as the shortest text that parses back to it: 5 for 5.0, 0.1 for 0.1."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(float(x))


@dataclass(frozen=True)
class Truncation:
    """A truncation mode; build one with :func:`parse`."""

    mode: str
    k: int | None = None  # K of k_truncated / subsequence, K1 of tbptt
    k2: int | None = None  # K2 of tbptt
    mean: float | None = None  # MEAN of random_k (window length L) and artbp (segment length)
    bounds: tuple | None = None  # (DELTA, KMIN, KMAX) of adaptive; KMAX None = unbounded (T-1)

    def __str__(self) -> str:
        if self.mode == "full":
            return "full"
        if self.mode == "tbptt":
            return f"tbptt:{self.k}:{self.k2}"
        if self.mode in RANDOM_MODES:
            return f"{self.mode}:{_num(self.mean)}"
        if self.mode == "adaptive":
            delta, kmin, kmax = self.bounds
            return f"adaptive:{_num(delta)}" if kmax is None else f"adaptive:{_num(delta)}:{kmin}:{kmax}"
        return f"{self.mode}:{self.k}"

    @property
    def random(self) -> bool:
        """True for the randomised modes (random_k, artbp): the engine needs a Generator."""
        return self.mode in RANDOM_MODES

    @property
    def adaptive(self) -> tuple | None:
        """(DELTA, KMIN, KMAX) of an adaptive mode (KMAX None: up to T-1), else None."""
        return self.bounds if self.mode == "adaptive" else None

    def with_k(self, k: int) -> Truncation:
        """The ``k_truncated:K`` an adaptive mode runs with once it has picked K."""
        if self.mode != "adaptive":
            raise InvalidInputError(f"with_k is for adaptive truncation, not {self}")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise InvalidInputError(f"adaptive K must be an integer >= 0, got {k!r}")
        return Truncation("k_truncated", int(k))

    @property
    def default_update(self) -> str:
        """``sequence`` (one update per batch) or ``chunk`` (one update per chunk)."""
        return "chunk" if self.mode in ("subsequence", "tbptt", "artbp") else "sequence"

    def _fixed(self, what: str) -> None:
        if self.mode == "adaptive":
            raise InvalidInputError(
                f"{self} picks K as it trains: choose K with bptt_cli.core.adaptive.adapt and run "
                f"truncation.with_k(K) ({what} needs a fixed window)"
            )
        if self.random:
            raise InvalidInputError(f"{self} draws its windows at random: {what} needs a fixed window")

    def draw(self, T: int, rng: np.random.Generator | None) -> np.ndarray:
        """The random part of one pass over T steps, drawn from ``rng``.

        random_k: L (T,) int64, the window length of the loss at step t (it keeps lags
        j = 0 .. L_t), L_t = min(G_t, t) with G_t iid geometric on {0, 1, ...}, P(G >= j) = q^j,
        q = MEAN / (MEAN + 1), so E[G] = MEAN. artbp: cut (T,) bool, cut[u] = True when
        h_{u-1} is a constant for the steps from u on: cut[0] always, cut[u] with probability
        c = 1/MEAN for u >= 1, independently. The engine calls this first thing with the rng
        it is given, so a caller holding a generator in the same state gets the same draw.
        """
        if not self.random:
            raise InvalidInputError(f"{self} is not a random truncation mode")
        if not isinstance(rng, np.random.Generator):
            raise InvalidInputError(
                f"{self} is random: pass rng=numpy.random.Generator (e.g. np.random.default_rng(seed)), got {rng!r}"
            )
        if T < 1:
            raise InvalidInputError(f"sequence length T must be >= 1, got {T}")
        if self.mode == "random_k":
            G = rng.geometric(1.0 / (self.mean + 1.0), size=T) - 1  # support {0, 1, ...}
            return np.minimum(G, np.arange(T)).astype(np.int64)
        cut = rng.random(T) < 1.0 / self.mean
        cut[0] = True  # h_{-1} = h0 is an input: nothing flows into it
        return cut

    def keep_prob(self, j: np.ndarray | int) -> np.ndarray | float:
        """random_k: P(L >= j) = q^j, q = MEAN / (MEAN + 1), the probability lag j is kept."""
        return (self.mean / (self.mean + 1.0)) ** np.asarray(j, dtype=np.float64)

    @property
    def compensation(self) -> float:
        """artbp: 1 / (1 - c) with c = 1/MEAN, the factor on an adjoint crossing an uncut step."""
        return 1.0 / (1.0 - 1.0 / self.mean)

    def chunk_bounds(self, T: int, rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(firsts, lasts) of the ``update_every: chunk`` chunks: chunk i is steps firsts[i] ..
        lasts[i] - 1. Fixed blocks of ``chunk_length(T)`` steps; for artbp the segments between
        the cuts of ``draw(T, rng)``."""
        if self.mode == "artbp":
            firsts = np.flatnonzero(self.draw(T, rng))
            return firsts, np.append(firsts[1:], T)
        C = self.chunk_length(T)
        firsts = np.arange(0, T, C)
        return firsts, np.minimum(firsts + C, T)

    def chunk_and_window(self, T: int) -> tuple[int, int]:
        """(C, W) for a sequence of T steps, reduced to (T, T) when every f(t) is 0.

        The reduction is exact (f is non-decreasing, so f(T-1) = 0 means f = 0 everywhere)
        and lets ``k_truncated:K`` with K >= T-1 run as cheaply as ``full``.
        """
        if T < 1:
            raise InvalidInputError(f"sequence length T must be >= 1, got {T}")
        self._fixed("chunk_and_window")
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
        (tbptt), 1 (k_truncated: every step is its own chunk), T (full). artbp's chunks are
        random (``chunk_bounds``): this is their mean length MEAN, rounded, at most T."""
        if self.mode == "artbp":
            return max(1, min(T, round(self.mean)))
        if self.mode in ("adaptive", "random_k"):
            self._fixed("chunk_length")
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
    if mode in ("adaptive", "random_k", "artbp"):
        return _parse_new(mode, args, bad)
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


def _parse_new(mode: str, args: list[str], bad) -> Truncation:
    """adaptive:DELTA[:KMIN:KMAX], random_k:MEAN, artbp:MEAN."""

    def number(a: str, name: str) -> float:
        try:
            value = float(a.strip())
        except ValueError:
            raise bad(f"{name} {a!r} is not a number") from None
        if not math.isfinite(value):
            raise bad(f"{name} must be finite, got {a!r}")
        return value

    if mode in RANDOM_MODES:
        if len(args) != 1:
            raise bad(f"{mode} takes 1 argument, MEAN")
        mean = number(args[0], "MEAN")
        if mode == "random_k" and mean < 1:
            raise bad(f"random_k needs MEAN >= 1 (the mean window length), got {_num(mean)}")
        if mode == "artbp" and mean <= 1:
            # MEAN = 1 would cut before every step: c = 1 leaves nothing to compensate with.
            raise bad(f"artbp needs MEAN > 1 (the mean segment length; c = 1/MEAN < 1), got {_num(mean)}")
        return Truncation(mode, mean=mean)
    if len(args) not in (1, 3):
        raise bad("adaptive takes DELTA, or DELTA:KMIN:KMAX")
    delta = number(args[0], "DELTA")
    if not 0 < delta < 1:
        raise bad(f"adaptive needs 0 < DELTA < 1 (the tolerated relative bias), got {_num(delta)}")
    kmin, kmax = 1, None
    if len(args) == 3:
        for a in args[1:]:
            if not re.fullmatch(r"[+-]?\d+", a.strip()):
                raise bad(f"{a!r} is not an integer")
        kmin, kmax = int(args[1]), int(args[2])
        if not 1 <= kmin <= kmax:
            raise bad(f"adaptive needs 1 <= KMIN <= KMAX, got KMIN = {kmin}, KMAX = {kmax}")
    return Truncation("adaptive", bounds=(delta, kmin, kmax))
