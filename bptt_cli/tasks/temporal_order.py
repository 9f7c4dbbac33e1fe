"""``temporal_order`` (Hochreiter & Schmidhuber 1997; Pascanu, Mikolov & Bengio 2013).

``variant: basic`` (the default). Six symbols, one-hot: 0 = A and 1 = B (relevant), 2..5
distractors; every sequence has L = ``length`` steps. This is the generator of Pascanu et
al.'s released code (``tempOrder.py``) at a fixed length::

    x_t = onehot(distractor ~ Uniform{2..5})   except at
    t1 ~ Uniform[floor(0.1 L), floor(0.2 L)):  a1 in {A, B}
    t2 ~ Uniform[floor(0.5 L), floor(0.6 L)):  a2 in {A, B}
    target_{L-1} = 2 a1 + a2   (AA = 0, AB = 1, BA = 2, BB = 3);  no loss before the last step

``variant: hochreiter``. Task 6a of Hochreiter & Schmidhuber (1997), "two relevant, widely
separated symbols", with its ranges scaled by L (they are the paper's at L = 100). Eight
symbols: 0 = X, 1 = Y (relevant), 2..5 = a, b, c, d (distractors), 6 = E (start marker),
7 = B (end marker, the trigger). Each sequence has its own length n, all ranges inclusive::

    n  ~ Uniform{L .. L + floor(0.1 L)}        (100 .. 110)
    x_0 = E,  x_{n-1} = B,  x_t = onehot(a, b, c, d) otherwise, except at
    t1 ~ Uniform{floor(0.1 L) .. floor(0.2 L)}:  X or Y    (10 .. 20)
    t2 ~ Uniform{floor(0.5 L) .. floor(0.6 L)}:  X or Y    (50 .. 60)
    target_{n-1} = 2 a1 + a2   (XX = Q = 0, XY = R = 1, YX = S = 2, YY = U = 3)

A batch is T = L + floor(0.1 L) steps long; a sequence shorter than that is followed by
all-zero inputs, which come after its only supervised step and so change nothing it is
scored on. The first relevant symbol is between 0.8 L and L steps before the target.

Solved means under 1% of fresh sequences misclassified (``error_rate`` < 0.01). Chance:
loss ln 4, accuracy 1/4, error rate 3/4.
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, Batch, Param, Task, TaskError

N_SYMBOLS = 6
N_DISTRACTORS = 4
VARIANTS = ("basic", "hochreiter")
E, TRIGGER = 6, 7  # hochreiter's start and end markers


def windows(length: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """basic: the half-open step ranges ``[lo, hi)`` of the first and the second relevant symbol."""
    return (length // 10, length // 5), (length // 2, 6 * length // 10)


class TemporalOrderTask(Task):
    """x ``(T, B, 6 or 8)`` one-hot, targets ``(T, B)`` int64 in 0..3, mask ``(T, B)`` one at each
    sequence's last step."""

    name = "temporal_order"
    description = "Temporal order: classify the order of two A/B symbols hidden among distractors."
    params = (
        Param("length", 50, "sequence length L (relevant symbols near 0.1 L and 0.5 L)", int, low=10, high=MAX_LENGTH),
        Param("variant", "basic", "basic (6 symbols, length L) or hochreiter (task 6a: 8 symbols, markers, L .. 1.1 L)", str),
    )
    loss = "cross_entropy"
    quiet_defaults = ("variant",)  # left out of a dumped config at its default (schema.py)

    @classmethod
    def _check_combination(cls, p: dict) -> None:
        if p["variant"] not in VARIANTS:
            raise TaskError(
                f"task 'temporal_order' parameter 'variant' is {p['variant']!r}; allowed: {', '.join(VARIANTS)}", "variant"
            )

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        L = self.p["length"]
        self.hochreiter = self.p["variant"] == "hochreiter"
        self.n_in, self.n_out = (8 if self.hochreiter else N_SYMBOLS), 4
        self.length = L + L // 10 if self.hochreiter else L

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        if self.hochreiter:
            return self._sample_6a(rng, batch_size)
        T, B = self.length, batch_size
        cols = np.arange(B)
        (lo1, hi1), (lo2, hi2) = windows(T)
        s = rng.integers(N_SYMBOLS - N_DISTRACTORS, N_SYMBOLS, size=(T, B))  # (T, B)
        t1 = rng.integers(lo1, hi1, size=B)
        t2 = rng.integers(lo2, hi2, size=B)
        a = rng.integers(0, 2, size=(2, B))  # 0 = A, 1 = B
        s[t1, cols] = a[0]
        s[t2, cols] = a[1]
        x = np.eye(N_SYMBOLS, dtype=self.dtype)[s]  # (T, B, 6)
        targets = np.zeros((T, B), dtype=np.int64)
        targets[-1] = 2 * a[0] + a[1]
        mask = np.zeros((T, B), dtype=self.dtype)
        mask[-1] = 1
        return Batch(x, targets, mask)

    def _sample_6a(self, rng: np.random.Generator, batch_size: int) -> Batch:
        L, T, B = self.p["length"], self.length, batch_size
        cols = np.arange(B)
        n = rng.integers(L, T, size=B, endpoint=True)  # (B,) each sequence's length
        t1 = rng.integers(L // 10, L // 5, size=B, endpoint=True)
        t2 = rng.integers(L // 2, 6 * L // 10, size=B, endpoint=True)
        a = rng.integers(0, 2, size=(2, B))  # 0 = X, 1 = Y
        s = rng.integers(2, 6, size=(T, B))  # (T, B) distractors a..d
        s[0] = E
        s[t1, cols] = a[0]
        s[t2, cols] = a[1]
        s[n - 1, cols] = TRIGGER
        x = np.eye(8, dtype=self.dtype)[s]  # (T, B, 8)
        x[np.arange(T)[:, None] >= n] = 0  # past each sequence's end: no symbol
        targets = np.zeros((T, B), dtype=np.int64)
        targets[n - 1, cols] = 2 * a[0] + a[1]
        mask = np.zeros((T, B), dtype=self.dtype)
        mask[n - 1, cols] = 1
        return Batch(x, targets, mask)

    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """Accuracy and ``error_rate`` (share misclassified) at each sequence's last step."""
        out = super().metrics(y, batch)
        if "accuracy" in out:
            out["error_rate"] = 1.0 - out["accuracy"]
        return out

    def chance(self) -> dict[str, float]:
        return {"loss": float(np.log(4)), "accuracy": 0.25, "error_rate": 0.75}
