"""``temporal_order`` (Hochreiter & Schmidhuber 1997; Pascanu, Mikolov & Bengio 2013).

Six symbols, one-hot: 0 = A and 1 = B (relevant), 2..5 distractors. With L = ``length``::

    x_t = onehot(distractor ~ Uniform{2..5})   except at
    t1 ~ Uniform[floor(0.1 L), floor(0.2 L)):  a1 in {A, B}
    t2 ~ Uniform[floor(0.5 L), floor(0.6 L)):  a2 in {A, B}
    target_{L-1} = 2 a1 + a2   (AA = 0, AB = 1, BA = 2, BB = 3);  no loss before the last step

The first relevant symbol is between 0.8 L and 0.9 L steps before the target: the dependency
length grows with ``length``. Solved means under 1% of fresh sequences misclassified
(``error_rate`` < 0.01). Chance: loss ln 4, accuracy 1/4, error rate 3/4.
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, Batch, Param, Task

N_SYMBOLS = 6
N_DISTRACTORS = 4


def windows(length: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The half-open step ranges ``[lo, hi)`` of the first and the second relevant symbol."""
    return (length // 10, length // 5), (length // 2, 6 * length // 10)


class TemporalOrderTask(Task):
    """x ``(T, B, 6)`` one-hot, targets ``(T, B)`` int64 in 0..3, mask ``(T, B)`` one at the last step."""

    name = "temporal_order"
    description = "Temporal order: classify the order of two A/B symbols hidden among distractors."
    params = (Param("length", 50, "sequence length T (relevant symbols near 0.1 T and 0.5 T)", int, low=10, high=MAX_LENGTH),)
    loss = "cross_entropy"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        self.n_in, self.n_out = N_SYMBOLS, 4
        self.length = self.p["length"]

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
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

    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """Accuracy and ``error_rate`` (share misclassified) at the last step."""
        out = super().metrics(y, batch)
        if "accuracy" in out:
            out["error_rate"] = 1.0 - out["accuracy"]
        return out

    def chance(self) -> dict[str, float]:
        return {"loss": float(np.log(4)), "accuracy": 0.25, "error_rate": 0.75}
