"""``delay`` (echo): repeat the symbol seen ``delay`` steps ago.

    s_t ~ Uniform{0, ..., V-1}  independently,     x_t = onehot(s_t)
    target_t = s_{t-D}   for t >= D;   no loss for t < D

V = ``vocab``, D = ``delay``, T = ``length``. The dependency length is exactly D: a network
trained with truncation tau < D never sees the gradient that links a target to its input.
Chance (the best input-blind predictor is uniform over V): loss ln V, accuracy 1/V.
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, MAX_SYMBOLS, Batch, Param, Task, TaskError


class DelayTask(Task):
    """x ``(T, B, V)`` one-hot, targets ``(T, B)`` int64, mask ``(T, B)`` zero for t < D."""

    name = "delay"
    description = "Echo: output the symbol seen `delay` steps ago (dependency length = delay)."
    params = (
        Param("vocab", 8, "number of symbols (one-hot input and output size)", int, low=2, high=MAX_SYMBOLS),
        Param("delay", 5, "steps between a symbol and its echo; must be < length", int, low=0, high=MAX_LENGTH - 1),
        Param("length", 30, "sequence length T", int, low=1, high=MAX_LENGTH),
    )
    loss = "cross_entropy"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        self.n_in = self.n_out = self.p["vocab"]
        self.length = self.p["length"]

    @classmethod
    def _check_combination(cls, p) -> None:
        if p["delay"] >= p["length"]:
            raise TaskError(
                f"task 'delay' parameter 'delay' is {p['delay']} but must be < length ({p['length']}), "
                "or no step would carry a loss",
                "delay",
            )

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, D, V = self.length, self.p["delay"], self.p["vocab"]
        s = rng.integers(0, V, size=(T, batch_size))  # (T, B)
        x = np.eye(V, dtype=self.dtype)[s]  # (T, B, V)
        targets = np.zeros((T, batch_size), dtype=np.int64)
        targets[D:] = s[: T - D]
        mask = np.zeros((T, batch_size), dtype=self.dtype)
        mask[D:] = 1
        return Batch(x, targets, mask)

    def chance(self) -> dict[str, float]:
        V = self.p["vocab"]
        return {"loss": float(np.log(V)), "accuracy": 1.0 / V}
