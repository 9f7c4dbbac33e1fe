"""``sine``: next-step prediction of a sum of sines.

For each sequence, K = ``n_waves`` frequencies f_k ~ Uniform[min_freq, max_freq] (cycles per
step) and phases phi_k ~ Uniform[0, 2 pi) are drawn, and T + 1 samples of

    v_t = (1/K) sum_k sin(2 pi f_k t + phi_k) + sigma eps_t,    eps_t ~ N(0, 1),  t = 0..T

with sigma = ``noise``; x_t = v_t and target_t = v_{t+1} for t = 0..T-1, mse at every step.
The 1/K keeps the noise-free signal in [-1, 1]. A wave of period 1/f needs memory of about
that many steps to be identified, so lower frequencies mean longer dependencies.

Chance: with uniform phases E[v_t] = 0 at every t, so the best input-blind predictor is 0,
and its loss under the 0.5 * squared-error convention is

    0.5 E[v^2] = 0.5 (K (1/K^2) (1/2) + sigma^2) = 1/(4K) + sigma^2 / 2

(0.125 with the defaults).
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, MAX_SYMBOLS, Batch, Param, Task, TaskError


class SineTask(Task):
    """x ``(T, B, 1)``, targets ``(T, B, 1)`` float (the next input), mask ``(T, B)`` all ones."""

    name = "sine"
    description = "Sine: predict the next value of a sum of sines with random frequencies and phases (mse)."
    params = (
        Param("n_waves", 2, "sines summed per sequence (amplitude 1/n_waves each)", int, low=1, high=MAX_SYMBOLS),
        Param("length", 50, "sequence length T", int, low=1, high=MAX_LENGTH),
        Param("noise", 0.0, "standard deviation of Gaussian noise added to every sample", float, low=0.0, high=100.0),
        Param("min_freq", 0.02, "lowest frequency, in cycles per step", float, low=0.0, high=0.5),
        Param("max_freq", 0.1, "highest frequency, in cycles per step", float, low=0.0, high=0.5),
    )
    loss = "mse"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        self.n_in = self.n_out = 1
        self.length = self.p["length"]

    @classmethod
    def _check_combination(cls, p) -> None:
        if p["min_freq"] > p["max_freq"]:
            raise TaskError(
                f"task 'sine' parameter 'min_freq' is {p['min_freq']:g} "
                f"but must be <= max_freq ({p['max_freq']:g})",
                "min_freq",
            )

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, B, K = self.length, batch_size, self.p["n_waves"]
        f = rng.uniform(self.p["min_freq"], self.p["max_freq"], size=(B, K))
        phi = rng.uniform(0.0, 2 * np.pi, size=(B, K))
        eps = rng.standard_normal((T + 1, B))
        t = np.arange(T + 1, dtype=np.float64)[:, None, None]  # (T+1, 1, 1)
        v = np.sin(2 * np.pi * f * t + phi).mean(axis=-1) + self.p["noise"] * eps  # (T+1, B)
        # Cast once so every target is bit-identical to the next input.
        v = v.astype(self.dtype)[:, :, None]  # (T+1, B, 1)
        mask = np.ones((T, B), dtype=self.dtype)
        return Batch(v[:-1], v[1:].copy(), mask)  # no shared memory between x and targets

    def chance(self) -> dict[str, float]:
        return {"loss": 1.0 / (4 * self.p["n_waves"]) + 0.5 * self.p["noise"] ** 2}
