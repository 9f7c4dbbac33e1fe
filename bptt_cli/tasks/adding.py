"""``adding`` (Hochreiter & Schmidhuber 1997, two-channel form of Le, Jaitly & Hinton 2015).

    x_t = (u_t, m_t)     u_t ~ Uniform[0, 1),   m_t = 1 at exactly two steps p1, p2, else 0
    p1 ~ Uniform{0, ..., T//2 - 1},   p2 ~ Uniform{T//2, ..., T-1}
    target_{T-1} = u_{p1} + u_{p2};   no loss before the last step

T = ``length``; the dependency length is T - 1 - p1, up to T - 1.
Chance: the best input-blind prediction is E[u_{p1} + u_{p2}] = 1.0, whose squared error is
Var = 2 * (1/12) = 1/6; under the engine's 0.5 * squared-error convention the loss is
1/12 = 0.08333...
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, Batch, Param, Task


class AddingTask(Task):
    """x ``(T, B, 2)``, targets ``(T, B, 1)`` float (zero but at the last step), mask ``(T, B)``
    one at the last step only.
    """

    name = "adding"
    description = "Adding problem: sum the two marked values; one target at the last step (mse)."
    params = (Param("length", 50, "sequence length T (the first mark is in the first half)", int, low=4, high=MAX_LENGTH),)
    loss = "mse"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        self.n_in, self.n_out = 2, 1
        self.length = self.p["length"]

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, B = self.length, batch_size
        cols = np.arange(B)
        # Cast before summing so the target is exactly the sum of the values the network sees.
        u = rng.random((T, B)).astype(self.dtype)  # (T, B)
        p1 = rng.integers(0, T // 2, size=B)
        p2 = rng.integers(T // 2, T, size=B)
        x = np.zeros((T, B, 2), dtype=self.dtype)
        x[:, :, 0] = u
        x[p1, cols, 1] = 1
        x[p2, cols, 1] = 1
        targets = np.zeros((T, B, 1), dtype=self.dtype)
        targets[-1, :, 0] = u[p1, cols] + u[p2, cols]
        mask = np.zeros((T, B), dtype=self.dtype)
        mask[-1] = 1
        return Batch(x, targets, mask)

    def chance(self) -> dict[str, float]:
        return {"loss": 1.0 / 12.0}
