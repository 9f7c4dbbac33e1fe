"""What every sequence task provides, and the checks every task shares.

A task is built from its own parameters plus a seed and a dtype. Its batches are a pure
function of ``(seed, step)``: the training batch of step ``i`` is the same whatever ran
before it, so resuming a run, or comparing variants of the same seed, sees identical data
without saving any generator state. The evaluation set is drawn from a stream of its own
and never overlaps the training stream's seeds.

Layout (time-major, the engine's): ``x (T, B, I)``; ``targets (T, B)`` int64 class indices
for ``cross_entropy`` or ``(T, B, O)`` floats for ``mse``; ``mask (T, B)`` of 0/1 in the
dtype of ``x`` saying which steps carry a loss.
"""

from __future__ import annotations

import difflib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Mapping

import numpy as np

from bptt_cli.core.errors import InvalidInputError

LossKind = Literal["cross_entropy", "mse"]

# Upper bounds of the parameters that size a batch, so a typo (1e7) is refused at validation
# instead of failing with a MemoryError mid-run. One (T, B, H) float32 state is 1.6 GB at
# T = 100,000, B = 32, H = 128: the longest sequences the engine is benchmarked on.
MAX_LENGTH = 100_000  # T, and any distance or gap that sets T
MAX_SYMBOLS = 1024  # one-hot widths of the synthetic tasks (vocabularies, classes, fillers)

# Stream ids mixed into the seed: training and evaluation never share a generator.
TRAIN_STREAM = 0
EVAL_STREAM = 1
CORPUS_STREAM = 2  # the text task's generated corpus, fixed for the whole run


class TaskError(InvalidInputError):
    """A task parameter is unknown or out of range; ``param`` names it (None for the task name)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        self.param = param
        super().__init__(message)


@dataclass(frozen=True)
class Batch:
    """One batch in the engine's layout (see the module docstring for shapes)."""

    x: np.ndarray
    targets: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class Param:
    """A documented task parameter: its default, its type and the values it allows."""

    name: str
    default: Any
    help: str
    kind: type = int
    low: float | None = None  # inclusive lower bound, None for none
    high: float | None = None  # inclusive upper bound, None for none
    optional: bool = False  # None is allowed (e.g. a text file path)

    def allowed(self) -> str:
        if self.low is not None and self.high is not None:
            rng = f"{self.low:g} <= {self.name} <= {self.high:g}"
        elif self.low is not None:
            rng = f"{self.name} >= {self.low:g}"
        elif self.high is not None:
            rng = f"{self.name} <= {self.high:g}"
        else:
            rng = f"any {self.kind.__name__}"
        return rng + (" or null" if self.optional else "")


def closest(name: str, choices: list[str]) -> str:
    """' (did you mean X?)' for the nearest choice, or '' when nothing is near."""
    near = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return f" (did you mean {near[0]!r}?)" if near else ""


class Task(ABC):
    """Base class of every task. Subclasses declare ``name``, ``description`` and ``params``,
    set ``n_in``, ``n_out``, ``length`` in ``__init__`` after calling ``super().__init__``,
    and implement ``_sample``.
    """

    name: ClassVar[str]
    description: ClassVar[str]  # one line, for `bptt tasks`
    params: ClassVar[tuple[Param, ...]]
    loss: ClassVar[LossKind]
    stateful: ClassVar[bool] = False  # hidden state carries across training batches

    n_in: int
    n_out: int
    length: int  # T, the number of time steps of every batch

    def __init__(
        self, params: Mapping[str, Any] | None = None, *, seed: int = 0, dtype=np.float32, cache_dir: Path | None = None
    ) -> None:
        self.seed = int(seed)
        self.cache_dir = None if cache_dir is None else Path(cache_dir)  # where tasks that read files cache them
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise TaskError(f"dtype must be float32 or float64, got {self.dtype}", "dtype")
        self.p: dict[str, Any] = self.check_params(params or {})

    # -- parameters -------------------------------------------------------------------
    @classmethod
    def check_params(cls, given: Mapping[str, Any]) -> dict[str, Any]:
        """Return the full parameter dict (defaults filled in) or raise TaskError naming the bad one."""
        known = {p.name: p for p in cls.params}
        for key in given:
            if key not in known:
                raise TaskError(
                    f"task {cls.name!r} has no parameter {key!r}{closest(key, list(known))}; "
                    f"its parameters are: {', '.join(known) or '(none)'}",
                    key,
                )
        out: dict[str, Any] = {}
        for p in cls.params:
            value = given.get(p.name, p.default)
            out[p.name] = _check_value(cls.name, p, value)
        cls._check_combination(out)
        return out

    @classmethod
    def _check_combination(cls, p: dict[str, Any]) -> None:
        """Cross-parameter checks (e.g. a range's low <= high); raise TaskError."""

    # -- data -------------------------------------------------------------------------
    def rng(self, stream: int, index: int = 0) -> np.random.Generator:
        """The generator of one stream and index: a pure function of (seed, stream, index)."""
        return np.random.default_rng([self.seed, stream, index])

    def train_batch(self, step: int, batch_size: int) -> Batch:
        """The training batch of step ``step`` (0-based): the same on every call and machine."""
        _check_batch_size(batch_size)
        return self._sample(self.rng(TRAIN_STREAM, step), batch_size)

    def eval_batch(self, size: int) -> Batch:
        """The fixed held-out set of ``size`` sequences, drawn from its own stream."""
        _check_batch_size(size)
        return self._sample(self.rng(EVAL_STREAM), size)

    @abstractmethod
    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """Draw ``batch_size`` sequences from ``rng``."""

    # -- metrics ----------------------------------------------------------------------
    def metrics(self, y: np.ndarray, batch: Batch) -> dict[str, float]:
        """Task metrics beyond the loss from outputs ``y (T, B, O)``: accuracy on supervised
        steps for classification tasks, nothing for regression. Subclasses may add more.
        """
        if self.loss != "cross_entropy":
            return {}
        sel = batch.mask > 0
        n = int(sel.sum())
        if n == 0:
            return {}
        pred = y.argmax(axis=-1)
        return {"accuracy": float((pred[sel] == batch.targets[sel]).mean())}

    @abstractmethod
    def chance(self) -> dict[str, float]:
        """Loss (and accuracy, for classification) of the best input-blind predictor,
        under the engine's loss convention (mean over supervised entries; mse is 0.5 * sum
        of squares over outputs)."""

    def fingerprint(self) -> str | None:
        """A hash of data read from outside the config (a text file), or None when the config
        and seed alone determine every batch. Resume compares it with the one recorded."""
        return None

    def describe(self) -> dict[str, Any]:
        """Plain data for tables and summaries."""
        return {
            "name": self.name,
            "loss": self.loss,
            "n_in": self.n_in,
            "n_out": self.n_out,
            "length": self.length,
            "stateful": self.stateful,
            "params": dict(self.p),
        }


def _check_batch_size(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
        raise TaskError(f"batch size must be a positive integer, got {n!r}", "batch_size")


def _check_value(task: str, p: Param, value: Any) -> Any:
    where = f"task {task!r} parameter {p.name!r}"
    if value is None:
        if p.optional:
            return None
        raise TaskError(f"{where} must be set ({p.allowed()})", p.name)
    if p.kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
            raise TaskError(f"{where} must be a number ({p.allowed()}), got {value!r}", p.name)
        value = float(value)
        if not np.isfinite(value):
            raise TaskError(f"{where} must be finite ({p.allowed()}), got {value!r}", p.name)
    elif p.kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            else:
                raise TaskError(f"{where} must be an integer ({p.allowed()}), got {value!r}", p.name)
        value = int(value)
    elif p.kind is str:
        if not isinstance(value, str):
            raise TaskError(f"{where} must be a string, got {value!r}", p.name)
    elif p.kind is bool:
        if not isinstance(value, bool):
            raise TaskError(f"{where} must be true or false, got {value!r}", p.name)
    if p.kind in (int, float):
        if (p.low is not None and value < p.low) or (p.high is not None and value > p.high):
            raise TaskError(f"{where} is {value!r}; allowed: {p.allowed()}", p.name)
    return value
