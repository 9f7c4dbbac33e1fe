"""``agreement``: the lecture's long-range agreement, stripped to its skeleton.

A first token from C = ``n_classes`` classes (the "gender" set by the first words), then d
filler tokens drawn from F = ``n_fillers``, then a query token; the only loss is at the query,
whose target is the first token's class. The dependency length is d + 1 steps.

With ``min_distance`` unset, d = ``distance`` for every sequence and T = d + 2. With
``min_distance`` set, each sequence draws d uniformly from [min_distance, distance] and is
left-padded to T = distance + 2, so the query is always the last step::

    step     0 ... T-d-3 | T-d-2 | T-d-1 ... T-2 | T-1
    input    pad ...     | class | filler x d    | query
    target   (no loss)                           | class

Input tokens (I = C + F + 2): 0..C-1 the classes, C..C+F-1 the fillers, C+F the query,
C+F+1 the pad. Output classes O = C. Because no other token is a class token, d is the
distance from the only class token to the end, so ``metrics`` recovers it from the batch.

Chance: loss ln C, accuracy 1/C (at every distance).
"""

from __future__ import annotations

import numpy as np

from bptt_cli.tasks.base import MAX_LENGTH, MAX_SYMBOLS, Batch, Param, Task, TaskError


class AgreementTask(Task):
    """x ``(T, B, C+F+2)`` one-hot, targets ``(T, B)`` int64, mask ``(T, B)`` one at the last step."""

    name = "agreement"
    description = "Agreement: recall the first token's class after `distance` fillers (loss at the query)."
    params = (
        Param("n_classes", 2, "classes of the first token (output size)", int, low=2, high=MAX_SYMBOLS),
        Param("n_fillers", 8, "filler tokens between the first token and the query", int, low=1, high=MAX_SYMBOLS),
        Param(
            "distance",
            8,
            "fillers between the first token and the query (the maximum with min_distance)",
            int,
            low=1,
            high=MAX_LENGTH,
        ),
        Param(
            "min_distance",
            None,
            "if set, each sequence draws its distance uniformly in [min_distance, distance]",
            int,
            low=1,
            high=MAX_LENGTH,
            optional=True,
        ),
    )
    loss = "cross_entropy"

    def __init__(self, params=None, **kw) -> None:
        super().__init__(params, **kw)  # seed, dtype, cache_dir
        C, F = self.p["n_classes"], self.p["n_fillers"]
        self.n_in, self.n_out = C + F + 2, C
        self.length = self.p["distance"] + 2
        self._query, self._pad = C + F, C + F + 1

    @classmethod
    def _check_combination(cls, p) -> None:
        if p["min_distance"] is not None and p["min_distance"] > p["distance"]:
            raise TaskError(
                f"task 'agreement' parameter 'min_distance' is {p['min_distance']} "
                f"but must be <= distance ({p['distance']})",
                "min_distance",
            )

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, B = self.length, batch_size
        C, F = self.p["n_classes"], self.p["n_fillers"]
        cols = np.arange(B)
        cls = rng.integers(0, C, size=B)
        fillers = rng.integers(C, C + F, size=(T, B))
        if self.p["min_distance"] is None:
            d = np.full(B, self.p["distance"])
        else:
            d = rng.integers(self.p["min_distance"], self.p["distance"] + 1, size=B)
        first = T - 2 - d  # (B,) step of the class token
        t = np.arange(T)[:, None]  # (T, 1)
        tokens = np.where((t > first) & (t < T - 1), fillers, self._pad)  # (T, B)
        tokens[first, cols] = cls
        tokens[T - 1] = self._query
        x = np.eye(self.n_in, dtype=self.dtype)[tokens]  # (T, B, I)
        targets = np.zeros((T, B), dtype=np.int64)
        targets[T - 1] = cls
        mask = np.zeros((T, B), dtype=self.dtype)
        mask[T - 1] = 1
        return Batch(x, targets, mask)

    def distances(self, batch: Batch) -> np.ndarray:
        """The distance d ``(B,)`` of each sequence, read from where its class token sits."""
        is_class = batch.x[:, :, : self.p["n_classes"]].any(axis=-1)  # (T, B)
        return self.length - 2 - is_class.argmax(axis=0)

    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """Accuracy at the query; with varying distances also ``accuracy@d=k`` for every
        distance k present in the batch.
        """
        out = super().metrics(y, batch)
        if self.p["min_distance"] is None:
            return out
        d = self.distances(batch)  # (B,)
        correct = y[-1].argmax(axis=-1) == batch.targets[-1]  # (B,)
        hits = np.bincount(d, weights=correct, minlength=self.p["distance"] + 1)
        seen = np.bincount(d, minlength=self.p["distance"] + 1)
        for k in np.flatnonzero(seen):
            out[f"accuracy@d={k}"] = float(hits[k] / seen[k])
        return out

    def chance(self) -> dict[str, float]:
        C = self.p["n_classes"]
        return {"loss": float(np.log(C)), "accuracy": 1.0 / C}
