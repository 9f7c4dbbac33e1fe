"""The config schema, YAML loading, dotted overrides, and the errors a user sees.

One YAML file gives everything about a run. The schema is a tree of frozen pydantic models
that refuse unknown keys; ``Config()`` is the built-in default (the quickstart).

    load_config("configs/delay.yaml", ["truncation.mode=k_truncated:5", "clip.threshold=1"])
        -> Config(name=..., seed=..., task=..., model=..., truncation=..., clip=..., ...)

Reading rules (the same for files and ``--set`` values):
- YAML is read with a safe loader only; ``!!python/...`` and other non-plain tags are refused.
- ``1e-3`` is a number (YAML 1.1 would read it as a string; we follow YAML 1.2 here).
- Integers are strict: ``true`` and ``'10'`` are not integers; an integral float such as
  ``10.0`` or ``1e3`` is accepted as the integer it names (as the task parameters do).
- Numbers are strict too: booleans and quoted strings are not numbers; an integer is a float.

Every mistake raises :class:`ConfigError` with one readable message: the file, line and
column where known, the dotted key, what was given and what is allowed.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic.fields import FieldInfo

from bptt_cli.core import truncation as _truncation
from bptt_cli.core.errors import BpttError
from bptt_cli.tasks import get_task_class
from bptt_cli.tasks.base import TaskError

__all__ = [
    "ClipConfig",
    "CompareConfig",
    "Config",
    "ConfigError",
    "DiagnosticsConfig",
    "Expectation",
    "ModelConfig",
    "OptimizerConfig",
    "TaskConfig",
    "TrainConfig",
    "TruncationConfig",
    "apply_overrides",
    "describe_schema",
    "dump_yaml",
    "from_dict",
    "load_config",
    "parse_expectation",
    "smoke",
    "to_dict",
]


# ---------------------------------------------------------------------------------------
# The error
# ---------------------------------------------------------------------------------------
class ConfigError(BpttError, ValueError):
    """A config is not what the schema allows. ``str()`` is the whole message for the user:

        configs/delay.yaml:12:3: truncation.mdoe: unknown key (did you mean truncation.mode?) ...

    ``path`` is the dotted key (None for the file as a whole), ``source`` the file name (or the
    ``--set`` override to blame), ``line`` and ``column`` 1-based where known. When several
    keys are wrong, ``others`` holds the rest and ``str()`` shows one per line.
    """

    def __init__(
        self,
        message: str,
        path: str | None = None,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        others: Sequence[ConfigError] = (),
    ) -> None:
        self.message = message
        self.path = path
        self.source = source
        self.line = line
        self.column = column
        self.others = tuple(others)
        super().__init__(message)

    def __reduce__(self):  # keep the attributes across processes (compare's workers)
        return (type(self), (self.message, self.path, self.source, self.line, self.column, self.others))

    def _one_line(self) -> str:
        where = self.source or ""
        if self.source and self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        parts = [p for p in (where, self.path) if p]
        return ": ".join([*parts, self.message])

    def __str__(self) -> str:
        return "\n".join(e._one_line() for e in (self, *self.others))


def _hint(word: str, choices: Sequence[str], prefix: str = "") -> str:
    near = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {prefix}{near[0]}?)" if near else ""


def _join(*parts: str | None) -> str | None:
    path = ".".join(p for p in parts if p)
    return path or None


# ---------------------------------------------------------------------------------------
# Field types
# ---------------------------------------------------------------------------------------
def _integral(value: Any) -> Any:
    """10.0 -> 10 (a float that names an integer); anything else is left for the strict check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[int, BeforeValidator(_integral), Strict()]
Float = Annotated[float, Strict(), Field(allow_inf_nan=False)]
Str = Annotated[str, Strict()]
Bool = Annotated[bool, Strict()]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------
class TaskConfig(_Section):
    """The task and its own parameters. In YAML the parameters sit beside ``name``:
    ``task: {name: delay, delay: 5, length: 30}``; here they are resolved (defaults filled)
    into ``params``.
    """

    name: Str = Field("delay", description="task name, one of those `bptt tasks` lists")
    params: dict[str, Any] = Field(
        default_factory=dict, description="the task's parameters, defaults filled in (read-only)"
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve(cls, data: Any) -> Any:
        if isinstance(data, TaskConfig) or not isinstance(data, Mapping):
            return data  # an instance is already resolved; pydantic reports a non-mapping
        data = dict(data)
        name = data.pop("name", "delay")
        if not isinstance(name, str):
            raise ConfigError(f"expected a task name (a string), got {name!r}", "name")
        # The Python API may pass params=...; YAML puts them beside name.
        given = dict(data["params"]) if set(data) == {"params"} and isinstance(data["params"], Mapping) else data
        try:
            task_cls = get_task_class(name)
        except TaskError as e:
            raise ConfigError(str(e), "name") from None
        known = [p.name for p in task_cls.params]
        for key in given:
            if key not in known:
                raise ConfigError(
                    f"unknown key{_hint(str(key), ['name', *known], 'task.')}; "
                    f"task {name!r} takes: name, {', '.join(known) or '(no parameters)'}",
                    str(key),
                )
        try:
            resolved = task_cls.check_params(given)
        except TaskError as e:
            raise ConfigError(str(e), e.param) from None
        return {"name": name, "params": resolved}

    @model_serializer(mode="wrap")
    def _flat(self, handler) -> dict[str, Any]:
        return {"name": self.name, **handler(self)["params"]}


class ModelConfig(_Section):
    """The Elman RNN: h_t = phi(W_xh x_t + W_hh h_{t-1} + b_h), y_t = W_hy h_t + b_y."""

    hidden: Annotated[Int, Field(ge=1)] = Field(64, description="hidden units H")
    activation: Literal["tanh", "relu", "identity"] = Field("tanh", description="phi, the hidden nonlinearity")
    init: Literal["orthogonal", "gaussian", "identity"] = Field(
        "orthogonal", description="initialisation of W_hh (identity = IRNN)"
    )
    spectral_radius: Annotated[Float, Field(gt=0)] = Field(
        1.0, description="scale of W_hh: < 1 vanishing, > 1 exploding gradients"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="floating-point type of every array")


_TRUNCATION_RULES = (
    "valid settings: mode full; mode k_truncated with k >= 0; mode subsequence with k >= 1; "
    "mode tbptt with k2 >= k1 >= 1 (or a spec in mode: full, k_truncated:K, subsequence:K, tbptt:K1:K2)"
)
_WINDOW_KEYS = {"full": (), "k_truncated": ("k",), "subsequence": ("k",), "tbptt": ("k1", "k2")}
_WINDOW_RULE = {
    ("k_truncated", "k"): ("k >= 0", 0),
    ("subsequence", "k"): ("k >= 1", 1),
    ("tbptt", "k1"): ("k1 >= 1", 1),
}


class TruncationConfig(_Section):
    """Which terms the backward pass keeps (see ``bptt_cli.core.truncation``) and when to update.

    ``mode`` also takes a whole spec (``k_truncated:5``, ``tbptt:5:20``), split here into mode
    and k / k1, k2; the section itself may be written as a spec: ``truncation: tbptt:5:20``.
    """

    mode: Str = Field("full", description="full, k_truncated, subsequence or tbptt (or a spec such as k_truncated:5)")
    k: Int | None = Field(None, description="window K of k_truncated (>= 0) and subsequence (>= 1)")
    k1: Int | None = Field(None, description="tbptt: steps between updates K1 (>= 1)")
    k2: Int | None = Field(None, description="tbptt: steps back each gradient reaches K2 (>= k1)")
    update_every: Literal["auto", "sequence", "chunk"] = Field(
        "auto", description="sequence: one update per batch; chunk: one per chunk (subsequence/tbptt); auto picks"
    )

    @model_validator(mode="before")
    @classmethod
    def _split_spec(cls, data: Any) -> Any:
        if isinstance(data, str):
            data = {"mode": data}
        if not isinstance(data, Mapping) or not isinstance(data.get("mode"), str) or ":" not in data["mode"]:
            return data
        data = dict(data)
        spec = data["mode"]
        try:
            tr = _truncation.parse(spec)
        except ValueError as e:
            raise ConfigError(str(e), "mode") from None
        data["mode"] = tr.mode
        values = {"k_truncated": {"k": tr.k}, "subsequence": {"k": tr.k}, "tbptt": {"k1": tr.k, "k2": tr.k2}}
        for key, value in values.get(tr.mode, {}).items():
            if data.get(key) is not None and data[key] != value:
                raise ConfigError(
                    f"mode {spec!r} sets {key} = {value} but {key} is also given as {data[key]!r}; give it once",
                    key,
                )
            data[key] = value
        return data

    @model_validator(mode="after")
    def _check(self) -> TruncationConfig:
        if self.mode not in _WINDOW_KEYS:
            raise ConfigError(
                f"unknown mode {self.mode!r}{_hint(self.mode, list(_WINDOW_KEYS))}; {_TRUNCATION_RULES}", "mode"
            )
        needed = _WINDOW_KEYS[self.mode]
        for key in ("k", "k1", "k2"):
            value = getattr(self, key)
            if key in needed and value is None:
                raise ConfigError(f"mode {self.mode} needs {key}; {_TRUNCATION_RULES}", key)
            if key not in needed and value is not None:
                uses = " and ".join(m for m, keys in _WINDOW_KEYS.items() if key in keys)
                raise ConfigError(
                    f"{key} = {value} is not used by mode {self.mode} (only by {uses}); "
                    f"remove it or change the mode; {_TRUNCATION_RULES}",
                    key,
                )
            rule = _WINDOW_RULE.get((self.mode, key))
            if rule and value < rule[1]:
                raise ConfigError(f"{self.mode} needs {rule[0]}, got {value}; {_TRUNCATION_RULES}", key)
        if self.mode == "tbptt" and self.k2 < self.k1:
            raise ConfigError(f"tbptt needs k2 >= k1, got k1 = {self.k1}, k2 = {self.k2}; {_TRUNCATION_RULES}", "k2")
        try:
            tr = _truncation.parse(self.spec)
        except ValueError as e:  # the engine's own rules, should they ever be stricter than ours
            raise ConfigError(f"{e}; {_TRUNCATION_RULES}") from None
        if self.update_every == "chunk" and tr.default_update != "chunk":
            raise ConfigError(
                f"'chunk' needs a mode with chunks (subsequence or tbptt); mode {self.mode} has none, "
                f"so use 'auto' or 'sequence'",
                "update_every",
            )
        return self

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``k_truncated:5``."""
        if self.mode == "tbptt":
            raw = f"tbptt:{self.k1}:{self.k2}"
        elif self.mode in ("k_truncated", "subsequence"):
            raw = f"{self.mode}:{self.k}"
        else:
            raw = self.mode
        return str(_truncation.parse(raw))

    def to_truncation(self) -> _truncation.Truncation:
        """The engine's truncation object."""
        return _truncation.parse(self.spec)

    @property
    def update(self) -> Literal["sequence", "chunk"]:
        """The update schedule with ``auto`` resolved (chunk for subsequence and tbptt)."""
        if self.update_every == "auto":
            return self.to_truncation().default_update  # type: ignore[return-value]
        return self.update_every

    @model_serializer(mode="wrap")
    def _compact(self, handler) -> dict[str, Any]:
        out = handler(self)
        return {k: v for k, v in out.items() if not (k in ("k", "k1", "k2") and v is None)}


class ClipConfig(_Section):
    """Gradient clipping, applied to the whole gradient before each update."""

    mode: Literal["none", "global_norm", "per_param_norm", "value"] = Field(
        "global_norm", description="none, global_norm (Pascanu et al. 2013), per_param_norm or value"
    )
    threshold: Annotated[Float, Field(gt=0)] | None = Field(
        5.0, description="the norm (or value) bound c; null turns clipping off"
    )

    @model_validator(mode="before")
    @classmethod
    def _no_clip(cls, data: Any) -> Any:
        # "threshold: null" and "mode: none" say the same thing; keep one canonical form.
        if isinstance(data, Mapping):
            data = dict(data)
            if "mode" in data and data["mode"] is None:  # `--set clip.mode=none` reads as null
                data["mode"] = "none"
            if "threshold" in data and data["threshold"] is None:
                data["mode"] = "none"
            if data.get("mode") == "none":
                data["threshold"] = None
        return data


_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.0, "nesterov": False},
    "adagrad": {"eps": 1e-10},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
}
Unit = Annotated[Float, Field(ge=0, lt=1)]  # in [0, 1)
Positive = Annotated[Float, Field(gt=0)]


class OptimizerConfig(_Section):
    """The optimizer, ``name`` plus its own keys (``momentum`` is for sgd only, and so on)."""

    name: Literal["sgd", "adagrad", "rmsprop", "adam"] = Field("adam", description="sgd, adagrad, rmsprop or adam")
    lr: Positive = Field(0.003, description="learning rate")
    momentum: Unit | None = Field(None, description="sgd only: momentum in [0, 1) (default 0)")
    nesterov: Bool | None = Field(None, description="sgd only: Nesterov momentum (default false; needs momentum > 0)")
    alpha: Unit | None = Field(None, description="rmsprop only: decay of the squared-gradient average (default 0.99)")
    beta1: Unit | None = Field(None, description="adam only: decay of the first moment (default 0.9)")
    beta2: Unit | None = Field(None, description="adam only: decay of the second moment (default 0.999)")
    eps: Positive | None = Field(None, description="adagrad (default 1e-10), rmsprop and adam (default 1e-8)")

    @model_validator(mode="before")
    @classmethod
    def _own_keys(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        name = data.get("name", "adam")
        if not isinstance(name, str) or name not in _OPTIMIZER_DEFAULTS:
            return data  # pydantic names the allowed optimizers
        own = ["lr", *_OPTIMIZER_DEFAULTS[name]]
        data = {k: v for k, v in data.items() if v is not None or k in own}  # null means "not set"
        for key in data:
            if key == "name" or key in own:
                continue
            owners = [n for n, keys in _OPTIMIZER_DEFAULTS.items() if key in keys]
            why = f"{key} belongs to {' and '.join(owners)}" if owners else f"unknown key{_hint(str(key), own, 'optimizer.')}"
            raise ConfigError(f"{why}; optimizer {name} takes: {', '.join(own)}", str(key))
        return {**_OPTIMIZER_DEFAULTS[name], **data}

    @model_validator(mode="after")
    def _nesterov(self) -> OptimizerConfig:
        if self.nesterov and not self.momentum:
            raise ConfigError("nesterov needs momentum > 0 (momentum is 0)", "nesterov")
        return self

    def hyper(self) -> dict[str, Any]:
        """Keyword arguments for ``bptt_cli.core.optim.make(name, **hyper)``."""
        return {"lr": self.lr, **{k: getattr(self, k) for k in _OPTIMIZER_DEFAULTS[self.name]}}

    @model_serializer(mode="wrap")
    def _own(self, handler) -> dict[str, Any]:
        out = handler(self)
        return {"name": self.name, **{k: out[k] for k in self.hyper()}}


_METRIC = re.compile(r"[A-Za-z_](?:[\w.@=:-]*\w)?")  # agreement logs accuracy@d=8
_EXPECTATION = re.compile(
    r"\s*(?P<metric>[^<>\s]+?)\s*(?P<op>>=|<=|>|<)\s*(?P<bound>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*"
)
_EXPECTATION_FORM = (
    "expected METRIC OP NUMBER such as eval.accuracy>=0.9 or train.loss<0.5, "
    "with METRIC train.<name> or eval.<name> and OP one of >=, <=, >, <"
)


@dataclass(frozen=True)
class Expectation:
    """A bound on a logged metric, e.g. ``eval.accuracy>=0.9``; ``str()`` gives that form back."""

    metric: str  # train.<key> or eval.<key>
    op: str  # >=, <=, > or <
    bound: float

    @property
    def stream(self) -> str:
        """``train`` or ``eval``."""
        return self.metric.split(".", 1)[0]

    @property
    def key(self) -> str:
        """The metric's key within its stream, e.g. ``accuracy``."""
        return self.metric.split(".", 1)[1]

    def check(self, value: float) -> bool:
        """Whether ``value`` meets the bound (NaN never does)."""
        if value is None or math.isnan(value):
            return False
        return {">=": value >= self.bound, "<=": value <= self.bound, ">": value > self.bound, "<": value < self.bound}[
            self.op
        ]

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.bound!r}"


def parse_expectation(s: str) -> Expectation:
    """Parse ``METRIC OP NUMBER`` (``eval.accuracy>=0.9``); ConfigError naming the form if bad."""
    if not isinstance(s, str):
        raise ConfigError(f"{_EXPECTATION_FORM}; got {s!r}")
    m = _EXPECTATION.fullmatch(s)
    if not m:
        raise ConfigError(f"{_EXPECTATION_FORM}; got {s!r}")
    metric = m["metric"]
    stream, _, key = metric.partition(".")
    if stream not in ("train", "eval"):
        raise ConfigError(
            f"metric {metric!r} must be train.<name> or eval.<name>"
            + (f" (e.g. eval.{metric.split('.')[-1]})" if metric.split(".")[-1] else "")
            + f"; {_EXPECTATION_FORM}"
        )
    if not _METRIC.fullmatch(key):
        flipped = next((f" (did you mean {op[::-1]}?)" for op in ("=>", "=<") if op in s), "")
        raise ConfigError(f"{_EXPECTATION_FORM}; got {s!r}{flipped}")
    bound = float(m["bound"])
    if not math.isfinite(bound):
        raise ConfigError(f"the bound must be a finite number; {_EXPECTATION_FORM}; got {s!r}")
    return Expectation(metric, m["op"], bound)


class TrainConfig(_Section):
    """The training loop: how long, how big, and how often to evaluate, log and save."""

    steps: Annotated[Int, Field(ge=1)] = Field(400, description="training batches (a chunk-update mode makes several updates per batch)")
    batch_size: Annotated[Int, Field(ge=1)] = Field(32, description="sequences per batch B (parallel streams for text)")
    eval_every: Annotated[Int, Field(ge=0)] = Field(50, description="held-out evaluation every N steps; 0 = only at the end")
    eval_size: Annotated[Int, Field(ge=1)] = Field(256, description="sequences in the fixed held-out set")
    log_every: Annotated[Int, Field(ge=1)] = Field(1, description="write a metrics line every N updates")
    diagnostics_every: Annotated[Int, Field(ge=0)] = Field(0, description="gradient-flow diagnostics every N updates; 0 = off")
    checkpoint_every: Annotated[Int, Field(ge=1)] = Field(100, description="save a checkpoint every N steps (and at the end)")
    target: Str | None = Field(None, description="stop early once met, e.g. eval.accuracy>=0.99; null = run all steps")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_expectation(value))


class DiagnosticsConfig(_Section):
    """Gradient-flow diagnostics (run every ``train.diagnostics_every`` updates)."""

    max_lag: Annotated[Int, Field(ge=1)] = Field(50, description="longest lag j measured for ||dL_t/dh_{t-j}||")


class CompareConfig(_Section):
    """Defaults for ``bptt compare``; its command-line options override them."""

    modes: list[Str] | None = Field(None, description="truncation specs to compare; null = full, k_truncated:K, subsequence:K")
    seeds: Union[int, list[int], None] = Field(None, description="a count of seeds from `seed` on, or a list of seeds")
    grid: dict[str, list[Any]] | None = Field(None, description="dotted key -> values, e.g. clip.threshold: [1, 5, null]")

    @field_validator("modes")
    @classmethod
    def _modes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must list at least one truncation spec, or be null for the default set")
        out = []
        for i, spec in enumerate(value):
            try:
                canon = str(_truncation.parse(spec))
            except ValueError as e:
                raise ConfigError(str(e), str(i)) from None
            if canon in out:
                raise ConfigError(f"{spec!r} is listed twice", str(i))
            out.append(canon)
        return out

    @field_validator("seeds", mode="before")
    @classmethod
    def _seeds(cls, value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError(f"a count of seeds must be >= 1, got {value}")
            return value
        if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            if any(s < 0 for s in value):
                raise ValueError(f"seeds must be >= 0, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"seeds must be distinct, got {value}")
            return value
        raise ValueError(f"expected a count (an integer >= 1) or a non-empty list of integer seeds, got {value!r}")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping) or not value:
            raise ValueError(f"expected a mapping of dotted keys to lists of values, got {value!r}")
        for key, values in value.items():
            if not isinstance(key, str):
                raise ValueError(f"grid keys are dotted config keys such as clip.threshold, got {key!r}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"expected a non-empty list of values, got {values!r}", key)
        return value


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SECTIONS = ("task", "model", "truncation", "clip", "optimizer", "train", "diagnostics")


class Config(_Section):
    """A whole run. ``Config()`` is the built-in default: the quickstart."""

    name: Str = Field("quickstart", description="run name, the directory under runs/ (letters, digits, -, _, .)")
    seed: Annotated[Int, Field(ge=0)] = Field(0, description="seed of the initial weights and of the task's data")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the sequence task and its parameters")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the RNN")
    truncation: TruncationConfig = Field(default_factory=TruncationConfig, description="the truncation mode")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="gradient clipping")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="the optimizer")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig, description="gradient diagnostics")
    compare: CompareConfig | None = Field(None, description="defaults for `bptt compare`; null = none")

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        # A section whose keys are all commented out reads as null: take it as "all defaults".
        if isinstance(data, Mapping):
            data = {k: ({} if k in _SECTIONS and v is None else v) for k, v in data.items()}
        return data

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        if not _SAFE_NAME.fullmatch(value):
            raise ValueError(
                "must be a safe directory name: 1-100 letters, digits, '-', '_' or '.', "
                f"starting with a letter or digit; got {value!r}"
            )
        return value

    @model_validator(mode="after")
    def _check_grid(self) -> Config:
        if self.compare is None or not self.compare.grid:
            return self
        base = to_dict(self)
        base.pop("compare")
        valid = _override_keys(self)
        for key, values in self.compare.grid.items():
            if key not in valid:
                raise ConfigError(f"unknown config key{_hint(key, valid)}", f"compare.grid.{key}")
            for value in values:  # each grid point must make a valid config on its own
                try:
                    from_dict(_set(copy.deepcopy(base), key, value))
                except ConfigError as e:
                    raise ConfigError(f"value {value!r} gives: {e}", f"compare.grid.{key}") from None
        return self


def _override_keys(cfg: Config) -> list[str]:
    """Every dotted key a grid may name for this config (with its own task's parameters)."""
    return [k for k, _, _ in describe_schema(cfg.task.name) if not k.startswith("compare.")]


# ---------------------------------------------------------------------------------------
# Schema description
# ---------------------------------------------------------------------------------------
def describe_schema(task: str = "delay") -> list[tuple[str, object, str]]:
    """(dotted key, default, help) for every field, with ``task``'s own parameters."""
    out: list[tuple[str, object, str]] = []
    for name, info in Config.model_fields.items():
        sub = _model_of(info.annotation)
        if sub is None:
            out.append((name, info.default, info.description or ""))
        elif sub is TaskConfig:
            out.append(("task.name", task, TaskConfig.model_fields["name"].description or ""))
            for p in get_task_class(task).params:
                out.append((f"task.{p.name}", p.default, f"{task}: {p.help} ({p.allowed()})"))
        else:
            defaults = sub() if sub is not CompareConfig else None
            for fname, finfo in sub.model_fields.items():
                default = finfo.default
                if defaults is not None:
                    default = getattr(defaults, fname)
                if sub is OptimizerConfig and default is None:
                    default = next(d[fname] for d in _OPTIMIZER_DEFAULTS.values() if fname in d)
                out.append((f"{name}.{fname}", default, finfo.description or ""))
    return out


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class inside ``X`` or ``X | None``, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            return arg
    return None


def _model_at(parts: Sequence[str]) -> type[BaseModel] | None:
    model: type[BaseModel] | None = Config
    for part in parts:
        if model is None or part not in model.model_fields:
            return None
        model = _model_of(model.model_fields[part].annotation)
    return model


# ---------------------------------------------------------------------------------------
# Plain data and YAML out
# ---------------------------------------------------------------------------------------
def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data in schema order; the task's parameters sit beside its name."""
    return cfg.model_dump(mode="python")


def dump_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML; ``load_config`` of it gives an equal Config."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False, allow_unicode=True)


# ---------------------------------------------------------------------------------------
# YAML in
# ---------------------------------------------------------------------------------------
class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``1e-3`` as a float (YAML 1.2) and remembers where each key is."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

_MERGE_TAG = "tag:yaml.org,2002:merge"
Marks = dict[str, tuple[int, int]]  # dotted key -> (line, column), 1-based


def _key_marks(node: yaml.Node | None, source: str) -> Marks:
    """Where each mapping key is; refuses a key given twice in one mapping."""
    marks: Marks = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...], depth: int) -> None:
        if depth > 50:  # aliases can nest deeply; configs never do
            return
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    for merged in value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]:
                        walk(merged, prefix, depth + 1)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):
                    continue
                path = (*prefix, key_node.value)
                line, col = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                if key_node.value in seen:
                    raise ConfigError(
                        f"key given twice (first on line {seen[key_node.value]})", ".".join(path), source, line, col
                    )
                seen[key_node.value] = line
                marks.setdefault(".".join(path), (line, col))
                walk(value_node, path, depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, (*prefix, str(i)), depth + 1)

    if node is not None:
        walk(node, (), 0)
    return marks


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


def _parse_yaml(text: str, source: str) -> tuple[Any, Marks]:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        marks = _key_marks(node, source)
        data = loader.construct_document(node) if node is not None else None
    except yaml.constructor.ConstructorError as e:
        mark = e.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        tag = re.search(r"tag '([^']*)'", e.problem or "")
        if tag:
            raise ConfigError(
                f"unsupported YAML tag {_short_tag(tag[1])}; only plain YAML is allowed "
                "(mappings, lists, strings, numbers, true/false, null)",
                None, source, line, col,
            ) from None
        raise ConfigError(f"invalid YAML: {e.problem}", None, source, line, col) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        what = e.problem or "syntax error"
        if e.context and e.context_mark and e.context_mark is not mark:
            what += f" ({e.context} on line {e.context_mark.line + 1})"
        raise ConfigError(f"invalid YAML: {what}", None, source, line, col) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {e}", None, source) from None
    finally:
        loader.dispose()
    return data, marks


def _read(path: Path) -> str:
    source = str(path)
    if not path.exists():
        raise ConfigError("no such config file", None, source)
    if path.is_dir():
        raise ConfigError("is a directory, not a YAML config file", None, source)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", None, source) from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}", None, source) from None


def _check_keys(data: Any, prefix: str | None = None) -> None:
    """Every mapping key is a string (YAML reads yes/no/on/off and numbers as other types)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if not isinstance(key, str):
                raise ConfigError(
                    f"key {key!r} is not a string (YAML reads numbers, true/false, yes/no and on/off "
                    "as non-strings; quote it)",
                    prefix,
                )
            _check_keys(value, _join(prefix, key))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            _check_keys(item, _join(prefix, str(i)))


# ---------------------------------------------------------------------------------------
# Overrides
# ---------------------------------------------------------------------------------------
_OVERRIDE_FORM = "--set expects KEY=VALUE with a dotted key such as truncation.k=5"
_KEY = re.compile(r"[A-Za-z_][\w-]*(?:\.[A-Za-z0-9_][\w-]*)*")
_INT = re.compile(r"[-+]?\d+")
_FLOAT = re.compile(r"[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?")


def _parse_value(text: str, override: str) -> Any:
    """An override's value, typed: int, float (1e-3 too), null, bool, a YAML list or mapping, else a string."""
    s = text.strip()
    if _INT.fullmatch(s):
        return int(s)
    if _FLOAT.fullmatch(s):
        return float(s)
    low = s.lower()
    if low in ("", "none", "null", "~"):
        return None
    if low in ("true", "false"):
        return low == "true"
    if s[:1] in ("[", "{", "'", '"'):
        try:
            value, _ = _parse_yaml(s, f"--set {override}")
        except ConfigError as e:
            raise ConfigError(f"cannot read the value {s!r}: {e.message}", None, f"--set {override}") from None
        return value
    return s


def _set(data: dict, key: str, value: Any, override: str | None = None) -> dict:
    parts = key.split(".")
    cur = data
    for i, part in enumerate(parts[:-1]):
        nxt = cur.get(part)
        if nxt is None:
            nxt = cur[part] = {}
        elif isinstance(nxt, str) and ".".join(parts[: i + 1]) == "truncation":
            nxt = cur[part] = {"mode": nxt}  # the section was given as a spec string
        elif not isinstance(nxt, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(
                f"cannot set {key}: {where} is {nxt!r}, not a mapping", key, f"--set {override}" if override else None
            )
        cur = nxt
    # A whole spec (or full) in truncation.mode replaces the window: drop the old k, k1, k2.
    if key == "truncation.mode" and isinstance(value, str) and (":" in value or value.strip() == "full"):
        for k in ("k", "k1", "k2"):
            cur.pop(k, None)
    # Another optimizer brings its own keys: drop those of the old one (lr stays).
    if key == "optimizer.name" and isinstance(value, str) and value in _OPTIMIZER_DEFAULTS and cur.get("name") != value:
        for k in [k for k in cur if k not in ("name", "lr", *_OPTIMIZER_DEFAULTS[value])]:
            del cur[k]
    cur[parts[-1]] = value
    return data


def apply_overrides(data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``data`` (not changed) with each ``a.b.c=value`` set, creating sections as needed.

    Values are typed as in YAML 1.2: ``5`` int, ``1e-3`` float, ``none``/``null``/``~`` (or
    nothing) null, ``true``/``false`` bool, ``[1, 2]`` a list; anything else is a string
    (``k_truncated:5``). Task parameters are ``task.<param>=...``. Setting
    ``truncation.mode`` to a whole spec (``tbptt:5:20``) or to ``full`` drops the old k, k1, k2;
    setting ``optimizer.name`` drops the keys of the old optimizer (``lr`` stays).
    Unknown keys are left for validation, which names them.
    """
    out = copy.deepcopy(dict(data))
    if isinstance(overrides, str):
        overrides = [overrides]
    for item in overrides:
        key, eq, text = str(item).partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            raise ConfigError(f"{_OVERRIDE_FORM}; got {item!r}")
        _set(out, key, _parse_value(text, item), item)
    return out


# ---------------------------------------------------------------------------------------
# Validation and pydantic's errors in our words
# ---------------------------------------------------------------------------------------
def _allowed(loc: Sequence[str]) -> str:
    """The constraints of the field at ``loc``, e.g. ' >= 1' (with ' or null' if optional)."""
    model = _model_at(loc[:-1])
    info = model.model_fields.get(loc[-1]) if model is not None else None
    if info is None:
        return ""
    bounds: list[str] = []
    optional = False

    def collect(obj: Any) -> None:
        nonlocal optional
        if obj is type(None):
            optional = True
        elif isinstance(obj, FieldInfo):
            for m in obj.metadata:
                collect(m)
        elif isinstance(obj, annotated_types.Ge):
            bounds.append(f">= {obj.ge:g}")
        elif isinstance(obj, annotated_types.Gt):
            bounds.append(f"> {obj.gt:g}")
        elif isinstance(obj, annotated_types.Le):
            bounds.append(f"<= {obj.le:g}")
        elif isinstance(obj, annotated_types.Lt):
            bounds.append(f"< {obj.lt:g}")
        elif get_origin(obj) is Annotated:
            for a in get_args(obj)[1:]:
                collect(a)
            collect(get_args(obj)[0])
        elif get_origin(obj) in (Union, types.UnionType):
            for a in get_args(obj):
                collect(a)

    collect(info.annotation)
    collect(info)
    text = (" " + " and ".join(dict.fromkeys(bounds))) if bounds else ""
    return text + (" or null" if optional else "")


def _quoted_number(value: Any) -> str:
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return " (a quoted string: remove the quotes)"
    return ""


def _unknown_key(loc: Sequence[str]) -> str:
    parent, key = list(loc[:-1]), loc[-1]
    model = _model_at(parent)
    valid = list(model.model_fields) if model is not None else []
    prefix = ".".join(parent) + "." if parent else ""
    hint = _hint(key, valid, prefix)
    if not hint:  # perhaps the right key in the wrong section: lr at the top level
        elsewhere = [k for k, _, _ in describe_schema() if k.rsplit(".", 1)[-1] == key]
        hint = f" (did you mean {elsewhere[0]}?)" if elsewhere else ""
    where = f"in {'.'.join(parent)}" if parent else "at the top level"
    return f"unknown key{hint}; allowed {where}: {', '.join(valid)}"


def _translate_one(err: Mapping[str, Any]) -> tuple[str | None, str]:
    loc = [str(p) for p in err["loc"]]
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    path = _join(*loc)
    if kind in ("value_error", "assertion_error"):
        inner = ctx.get("error")
        if isinstance(inner, ConfigError):
            return _join(*loc, inner.path), inner.message
        return path, str(inner) if inner is not None else err["msg"]
    if kind == "extra_forbidden":
        return path, _unknown_key(loc)
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return path, f"expected an integer{_allowed(loc)}, got {given!r}{_quoted_number(given)}"
    if kind in ("float_type", "float_parsing"):
        return path, f"expected a number{_allowed(loc)}, got {given!r}{_quoted_number(given)}"
    if kind == "finite_number":
        return path, f"expected a finite number{_allowed(loc)}, got {given!r}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        return path, f"must be{_allowed(loc) or ' in range'}, got {given!r}"
    if kind == "string_type":
        return path, f"expected a string, got {given!r}"
    if kind == "bool_type":
        return path, f"expected true or false, got {given!r}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _hint(str(given), choices) if isinstance(given, str) else ""
        return path, f"expected one of {', '.join(choices)}, got {given!r}{hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected a mapping (indented key: value lines), got {given!r}"
    if kind == "list_type":
        return path, f"expected a list, got {given!r}"
    return path, err["msg"]


def _locate(e: ConfigError, source: str | None, marks: Marks, blame: Mapping[str, str]) -> ConfigError:
    """``e`` with the file, line and column of its key, or the --set override that set it."""
    if e.source is not None or e.path is None:
        return ConfigError(e.message, e.path, e.source or source, e.line, e.column)
    for key, item in blame.items():
        if e.path == key or e.path.startswith(key + ".") or key.startswith(e.path + "."):
            return ConfigError(e.message, e.path, f"--set {item}")
    probe = e.path
    while probe:
        if probe in marks:
            line, col = marks[probe]
            return ConfigError(e.message, e.path, source, line, col)
        probe = probe.rpartition(".")[0]
    return ConfigError(e.message, e.path, source)


def _validate(data: Any, source: str | None, marks: Marks, blame: Mapping[str, str]) -> Config:
    try:
        _check_keys(data)
        return Config.model_validate(data)
    except ValidationError as exc:
        errors = []
        for err in exc.errors(include_url=False):
            path, message = _translate_one(err)
            errors.append(_locate(ConfigError(message, path), source, marks, blame))
        raise ConfigError(
            errors[0].message, errors[0].path, errors[0].source, errors[0].line, errors[0].column, errors[1:10]
        ) from None
    except ConfigError as e:
        raise _locate(e, source, marks, blame) from None


def from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), *, source: str | None = None) -> Config:
    """Validate plain data (as read from YAML) into a Config; ConfigError if it is not valid."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"expected a mapping of config keys, got {type(data).__name__}", None, source)
    merged = apply_overrides(data, overrides)
    return _validate(merged, source, {}, _blame(overrides))


def _blame(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        out[key] = str(item)
    return out


def load_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> Config:
    """Read, merge and validate a config: ``path`` (None for the built-in default) then ``overrides``."""
    if path is None:
        data: Any = {}
        source, marks = None, {}
    else:
        path = Path(path)
        source = str(path)
        data, marks = _parse_yaml(_read(path), source)
        if data is None:
            raise ConfigError("the file is empty; expected a mapping of config keys (see configs/quickstart.yaml)", None, source)
        if not isinstance(data, dict):
            raise ConfigError(
                f"the top level must be a mapping of config keys (name: ..., task: ...), got a {type(data).__name__}",
                None, source, 1, 1,
            )
    merged = apply_overrides(data, overrides)
    return _validate(merged, source, marks, _blame(overrides))


# ---------------------------------------------------------------------------------------
# CI smoke runs
# ---------------------------------------------------------------------------------------
SMOKE_MAX_LENGTH = 100


def smoke(cfg: Config) -> Config:
    """A copy shrunk to run in seconds for CI: a few steps, a small evaluation set, one
    diagnostic pass, a checkpoint every step. The task keeps its sequence length (so every
    code path of the config still runs) unless that is over SMOKE_MAX_LENGTH.
    """
    data = to_dict(cfg)
    t = data["train"]
    t.update(
        steps=min(t["steps"], 3),
        eval_size=min(t["eval_size"], 16),
        eval_every=0,
        batch_size=min(t["batch_size"], 8),
        diagnostics_every=1,
        checkpoint_every=1,
    )
    length = data["task"].get("length")
    if isinstance(length, int) and length > SMOKE_MAX_LENGTH:
        shorter = copy.deepcopy(data)
        shorter["task"]["length"] = SMOKE_MAX_LENGTH
        try:
            return from_dict(shorter)
        except ConfigError:
            pass  # the task needs its length (e.g. a delay close to it): keep it
    return from_dict(data)
