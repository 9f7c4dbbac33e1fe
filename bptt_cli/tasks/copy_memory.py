"""``copy_memory`` (Arjovsky, Shah & Bengio 2016): remember N symbols across a gap.

Layout, N = ``n_symbols``, G = ``gap``, T = G + 2N + 1 (the delimiter is a step of its own)::

    step     0 ... N-1  | N ... N+G-1 | N+G       | N+G+1 ... T-1
    input    s_0...s_N-1 | blank x G   | delimiter | blank x N
    target   blank x N   | blank x G   | blank     | s_0 ... s_N-1

Input symbols (I = 10): 0 blank, 1..8 the categories, 9 the delimiter. Output classes
(O = 9): 0 blank, 1..8 the categories (the delimiter is never a target). Every step carries a
loss, as in the paper. Symbol s_i is recalled at step N+G+1+i: the dependency length is
G + N + 1.

Chance: the best input-blind predictor outputs blank with certainty for the first T - N steps
and a uniform guess over the 8 categories for the last N, so the loss is N ln 8 / T and the
accuracy (T - N + N/8) / T. (The paper's gap counts the delimiter, so its T_paper = G + 1 and
its baseline N ln 8 / (T_paper + 2N) is the same number.)
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, MAX_SYMBOLS, Batch, Param, Task

N_CATEGORIES = 8
BLANK = 0
DELIMITER = N_CATEGORIES + 1


class CopyMemoryTask(Task):
    """x ``(T, B, 10)`` one-hot, targets ``(T, B)`` int64 in 0..8, mask ``(T, B)`` all ones."""

    name = "copy_memory"
    description = "Copy memory: reproduce the first n_symbols inputs after a gap of blanks."
    params = (
        Param("n_symbols", 10, "symbols to remember (from 8 categories)", int, low=1, high=MAX_SYMBOLS),
        Param("gap", 10, "blank steps between the symbols and the delimiter", int, low=0, high=MAX_LENGTH),
    )
    loss = "cross_entropy"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        self.n_in, self.n_out = N_CATEGORIES + 2, N_CATEGORIES + 1
        self.length = self.p["gap"] + 2 * self.p["n_symbols"] + 1

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, N = self.length, self.p["n_symbols"]
        s = rng.integers(1, N_CATEGORIES + 1, size=(N, batch_size))  # (N, B)
        inputs = np.full((T, batch_size), BLANK, dtype=np.int64)
        inputs[:N] = s
        inputs[T - N - 1] = DELIMITER
        x = np.eye(self.n_in, dtype=self.dtype)[inputs]  # (T, B, I)
        targets = np.full((T, batch_size), BLANK, dtype=np.int64)
        targets[T - N :] = s
        mask = np.ones((T, batch_size), dtype=self.dtype)
        return Batch(x, targets, mask)

    def chance(self) -> dict[str, float]:
        T, N = self.length, self.p["n_symbols"]
        return {
            "loss": float(N * np.log(N_CATEGORIES) / T),
            "accuracy": (T - N + N / N_CATEGORIES) / T,
        }
