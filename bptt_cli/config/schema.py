"""The config schema: a tree of frozen, strict pydantic models, one per section.

``Config()`` is the built-in default (the quickstart). Every field has a default and a
one-line description; ``describe_schema`` lists them as dotted keys for ``bptt validate``,
error hints and the docs. Reading YAML, applying ``--set`` overrides and wording pydantic's
errors live in the sibling modules; this one only says what a valid config is.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    field_validator,
    model_serializer,
    model_validator,
)

from bptt_cli.config.errors import ConfigError, _hint, _repr
from bptt_cli.core import truncation as _truncation
from bptt_cli.tasks import get_task_class
from bptt_cli.tasks.base import TaskError


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

# Upper bounds: a value past these can only mean a hang, an overflowing counter or an
# out-of-memory error, never an experiment. Memory (hidden, batch and eval sizes, sequence
# length) is bounded against the machine by ``bptt_cli.budget``, before a run starts.
MAX_COUNT = 10**9  # steps, sizes and intervals: 1e9 training batches would take years
MAX_SEED = 2**32 - 1  # the range most tools accept for a seed (numpy's legacy RandomState, CUDA)
MAX_SEEDS = 1000  # seeds in one compare
MAX_SPECTRAL_RADIUS = 1000.0  # 1000**T overflows float32 within 13 steps already
MAX_LR = 1000.0
Count = Annotated[Int, Field(ge=1, le=MAX_COUNT)]
Every = Annotated[Int, Field(ge=0, le=MAX_COUNT)]  # an interval where 0 means "off" or "only at the end"


class _Section(BaseModel):
    # Built at import, each model once (Config reuses its sections' schemas). Not defer_build:
    # Config's default_factory sections then build their validators a second time, and
    # importing the package plus loading the quickstart took 87-105 ms of CPU against 55-80
    # eager (pydantic 2.13, 2026-12-02). `bptt --help` imports no config at all.
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
            raise ConfigError(f"expected a task name (a string), got {_repr(name)}", "name")
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
        params = handler(self)["params"]
        # Parameters a task added later stay out of the data at their default, so earlier
        # configs dump and digest as before (a resume compares digests).
        for p in get_task_class(self.name).params:
            if p.name in getattr(get_task_class(self.name), "quiet_defaults", ()) and params.get(p.name) == p.default:
                params.pop(p.name)
        return {"name": self.name, **params}


class MatrixInit(_Section):
    """How one weight matrix starts (``model.init_params.W_xh`` and so on)."""

    dist: Literal["default", "gaussian", "uniform", "orthogonal", "identity"] = Field(
        "default", description="default (init/spectral_radius for W_hh, N(0, 1/fan-in) otherwise), gaussian, uniform, orthogonal, identity"
    )
    std: Annotated[Float, Field(gt=0)] | None = Field(None, description="gaussian: the standard deviation")
    scale: Annotated[Float, Field(gt=0)] | None = Field(None, description="uniform: entries drawn from [-scale, scale]")
    gain: Annotated[Float, Field(gt=0)] | None = Field(None, description="orthogonal, identity: the factor (default 1)")

    @model_validator(mode="after")
    def _keys(self) -> MatrixInit:
        takes = {"default": (), "gaussian": ("std",), "uniform": ("scale",), "orthogonal": ("gain",), "identity": ("gain",)}
        for key in ("std", "scale", "gain"):
            value = getattr(self, key)
            if key in takes[self.dist] and key != "gain" and value is None:
                raise ConfigError(f"dist {self.dist} needs {key} (a number > 0)", key)
            if key not in takes[self.dist] and value is not None:
                allowed = ", ".join(takes[self.dist]) or "nothing else"
                raise ConfigError(f"{key} is not used by dist {self.dist} (it takes {allowed})", key)
        return self

    @model_serializer(mode="wrap")
    def _compact(self, handler) -> dict[str, Any]:
        return {k: v for k, v in handler(self).items() if v is not None}


class InitParams(_Section):
    """Per-parameter initialisation of the Elman cell; every entry at its default draws what
    ``init`` and ``spectral_radius`` draw, bit for bit."""

    W_xh: MatrixInit = Field(default_factory=MatrixInit, description="input weights (H, I)")
    W_hh: MatrixInit = Field(
        default_factory=MatrixInit, description="recurrent weights (H, H); other than default, overrides init and spectral_radius"
    )
    W_hy: MatrixInit = Field(default_factory=MatrixInit, description="output weights (O, H)")
    b_h: Float = Field(0.0, description="hidden bias, a constant")
    b_y: Float = Field(0.0, description="output bias, a constant")

    def to_core(self) -> dict[str, Any] | None:
        """The ``init_params`` argument of ``core.model.RNN.init`` (None: all defaults)."""
        return None if self == InitParams() else self.model_dump(mode="python")


def init_file(path: Path) -> Path:
    """The file ``model.init_from`` names: the path itself, or a run directory's checkpoint.npz."""
    file = path / "checkpoint.npz" if path.is_dir() else path
    if not file.is_file():
        what = "a run directory without checkpoint.npz" if path.is_dir() else "no such file"
        raise ConfigError(
            f"{str(path)!r}: {what}; expected an .npz of W_xh, W_hh, b_h, W_hy, b_y or a run directory", "init_from"
        )
    return file


def _file_sha256(file: Path) -> str:
    from bptt_cli import safeio

    digest = hashlib.sha256()
    try:
        with safeio.open_regular(file) as f:
            if os.fstat(f.fileno()).st_size > safeio.NPZ_CAP:
                raise ConfigError(f"{str(file)!r} is larger than any set of weights bptt reads ({safeio.NPZ_CAP:,} bytes)", "init_from")
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except (OSError, safeio.UnsafeFile) as e:
        raise ConfigError(f"{str(file)!r} cannot be read ({e})", "init_from") from None
    return f"sha256:{digest.hexdigest()}"


GATED = ("gru", "lstm")
MAX_FORGET_BIAS = 100.0  # sigmoid(100) is 1 in float64: a larger bias changes nothing


class ModelConfig(_Section):
    """The recurrent cell. elman: h_t = phi(W_xh x_t + W_hh h_{t-1} + b_h); gru and lstm:
    PyTorch's cells, in its layout and gate order (docs/cells.md); all read out y_t = W_hy h_t + b_y.

    ``activation`` and ``spectral_radius`` belong to the Elman cell and ``forget_bias`` to the
    LSTM: a value other than the default on another cell is refused rather than ignored. A gated
    cell's ``init`` defaults to ``pytorch`` when not given. ``cell`` is left out of the plain data
    when it is elman and ``forget_bias`` unless the cell is lstm, so every Elman config reads,
    dumps and digests exactly as before these keys existed.
    """

    cell: Literal["elman", "gru", "lstm"] = Field("elman", description="the recurrent cell: elman, gru or lstm")
    hidden: Count = Field(64, description="hidden units H")
    activation: Literal["tanh", "relu", "identity"] = Field(
        "tanh", description="phi, the hidden nonlinearity (elman only; gated cells have their own)"
    )
    init: Literal["orthogonal", "gaussian", "identity", "pytorch"] = Field(
        "orthogonal",
        description="elman: W_hh orthogonal, gaussian or identity (IRNN); gru, lstm: pytorch (their default) or orthogonal",
    )
    spectral_radius: Annotated[Float, Field(gt=0, le=MAX_SPECTRAL_RADIUS)] = Field(
        1.0, description="scale of W_hh: < 1 vanishing, > 1 exploding gradients (elman only)"
    )
    forget_bias: Annotated[Float, Field(ge=-MAX_FORGET_BIAS, le=MAX_FORGET_BIAS)] = Field(
        1.0, description="lstm only: initial bias of the forget gate (in bias_ih; bias_hh's is 0)"
    )
    dtype: Literal["float32", "float64"] = Field("float32", description="floating-point type of every array")

    init_params: InitParams = Field(
        default_factory=InitParams,
        description="elman, per parameter: W_xh, W_hh, W_hy {dist, std | scale | gain}; b_h, b_y a constant (docs/classics.md)",
    )
    init_from: Str | None = Field(
        None, description="start from these weights: an .npz of W_xh, W_hh, b_h, W_hy, b_y, or a run directory (its checkpoint)"
    )
    init_from_sha256: Str | None = Field(
        None, description="sha256 of init_from's file, recorded when the config is read; another file is refused"
    )

    @model_validator(mode="before")
    @classmethod
    def _init_file(cls, data: Any) -> Any:
        # A user's config names a file; the recorded config (config.yaml) holds its absolute
        # path and hash too, so a resume reads no file and a changed file is refused at loading.
        if not isinstance(data, Mapping):
            return data
        if data.get("init_from") is None:
            if data.get("init_from_sha256") is not None:
                raise ConfigError("init_from_sha256 is only recorded with init_from; remove it", "init_from_sha256")
            return data
        if not isinstance(data["init_from"], str) or data.get("init_from_sha256") is not None:
            return data
        path = Path(data["init_from"])
        return {**data, "init_from": str(path.resolve()), "init_from_sha256": _file_sha256(init_file(path))}

    @model_validator(mode="before")
    @classmethod
    def _gated_init(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and data.get("cell") in GATED and data.get("init") is None:
            data = {**data, "init": "pytorch"}  # PyTorch's own default for its gated cells
        return data

    @model_validator(mode="after")
    def _cell_keys(self) -> ModelConfig:
        cell = self.cell
        if cell == "elman" and self.init == "pytorch":
            raise ConfigError("pytorch is for the gru and lstm cells; elman takes init orthogonal, gaussian or identity", "init")
        if cell in GATED:
            if self.init != "pytorch" and self.init != "orthogonal":
                raise ConfigError(
                    f"cell {cell} takes pytorch (uniform +-1/sqrt(H), the default) or orthogonal "
                    f"(orthogonal recurrent blocks), got {self.init!r}",
                    "init",
                )
            if self.activation != "tanh":
                raise ConfigError(
                    f"{self.activation!r} is the elman cell's nonlinearity; cell {cell} has its own "
                    "(sigmoid gates, tanh): remove model.activation or use cell: elman",
                    "activation",
                )
            if self.spectral_radius != 1.0:
                raise ConfigError(
                    f"{self.spectral_radius!r} scales the elman cell's W_hh; cell {cell} takes none: "
                    "remove model.spectral_radius or use cell: elman",
                    "spectral_radius",
                )
        if cell != "elman" and self.init_params != InitParams():
            raise ConfigError(f"init_params sets the elman cell's parameters; cell {cell} takes init only", "init_params")
        if cell != "lstm" and self.forget_bias != 1.0:
            raise ConfigError(
                f"{self.forget_bias!r} is the lstm's forget-gate bias; cell {cell} has no forget gate: "
                "remove model.forget_bias or use cell: lstm",
                "forget_bias",
            )
        return self

    @model_serializer(mode="wrap")
    def _cell_keys_only(self, handler) -> dict[str, Any]:
        out = handler(self)
        if self.cell == "elman":
            del out["cell"]
        if self.cell != "lstm":
            del out["forget_bias"]
        if self.init_params == InitParams():  # classics keys: out of the data when unused, as above
            del out["init_params"]
        for key in ("init_from", "init_from_sha256"):
            if out[key] is None:
                del out[key]
        return out


_TRUNCATION_RULES = (
    "valid settings: mode full; mode k_truncated with k >= 0; mode subsequence with k >= 1; "
    "mode tbptt with k2 >= k1 >= 1 (or a spec in mode: full, k_truncated:K, subsequence:K, tbptt:K1:K2); "
    "the spec modes adaptive:DELTA[:KMIN:KMAX], random_k:MEAN, artbp:MEAN"
)
_SPEC_MODES = ("adaptive", "random_k", "artbp")  # their arguments stay in the spec: mode random_k:5
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

    mode: Str = Field(
        "full",
        description="full, k_truncated, subsequence or tbptt (or a spec such as k_truncated:5); "
        "adaptive:DELTA[:KMIN:KMAX], random_k:MEAN and artbp:MEAN stay whole specs",
    )
    k: Int | None = Field(None, description="window K of k_truncated (>= 0) and subsequence (>= 1)")
    k1: Int | None = Field(None, description="tbptt: steps between updates K1 (>= 1)")
    k2: Int | None = Field(None, description="tbptt: steps back each gradient reaches K2 (>= k1)")
    update_every: Literal["auto", "sequence", "chunk"] = Field(
        "auto", description="sequence: one update per batch; chunk: one per chunk (subsequence/tbptt/artbp); auto picks"
    )
    adapt_every: Count = Field(10, description="adaptive: re-estimate K from the lag profile every N updates (other modes ignore it)")

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
        if tr.mode in _SPEC_MODES:
            data["mode"] = str(tr)  # canonical: random_k:5.0 -> random_k:5
            return data
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
        if self.mode.split(":", 1)[0] in _SPEC_MODES:
            return self._check_spec_mode()
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
                f"'chunk' needs a mode with chunks (subsequence or tbptt) or artbp; mode {self.mode} has none, "
                f"so use 'auto' or 'sequence'",
                "update_every",
            )
        return self

    def _check_spec_mode(self) -> TruncationConfig:
        """adaptive, random_k, artbp: the spec carries every argument, k / k1 / k2 are not used."""
        name = self.mode.split(":", 1)[0]
        if ":" not in self.mode:
            form = {"adaptive": "adaptive:DELTA or adaptive:DELTA:KMIN:KMAX", "random_k": "random_k:MEAN", "artbp": "artbp:MEAN"}
            raise ConfigError(f"mode {name} takes its arguments in the spec: {form[name]}; {_TRUNCATION_RULES}", "mode")
        for key in ("k", "k1", "k2"):
            if getattr(self, key) is not None:
                raise ConfigError(
                    f"{key} = {getattr(self, key)} is not used by mode {name} (its arguments are in the spec "
                    f"{self.mode}); remove it; {_TRUNCATION_RULES}",
                    key,
                )
        try:
            tr = _truncation.parse(self.mode)
        except ValueError as e:
            raise ConfigError(str(e), "mode") from None
        if self.update_every == "chunk" and tr.default_update != "chunk":
            raise ConfigError(
                f"'chunk' needs a mode with chunks (subsequence or tbptt) or artbp; mode {name} has none, "
                f"so use 'auto' or 'sequence'",
                "update_every",
            )
        return self

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``k_truncated:5``."""
        if self.mode.split(":", 1)[0] in _SPEC_MODES:
            raw = self.mode
        elif self.mode == "tbptt":
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
        out = {k: v for k, v in out.items() if not (k in ("k", "k1", "k2") and v is None)}
        if out.get("adapt_every") == 10 and not self.mode.startswith("adaptive"):
            del out["adapt_every"]  # the default, unused: configs without adaptive read as before
        return out


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
    "adagrad": {"eps": 1e-10, "eps_inside_sqrt": False},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8, "eps_inside_sqrt": False},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "eps_inside_sqrt": False},
}
Unit = Annotated[Float, Field(ge=0, lt=1)]  # in [0, 1)
Positive = Annotated[Float, Field(gt=0)]
Epsilon = Annotated[Float, Field(gt=0, le=1)]  # a larger eps only hides the gradient


class OptimizerConfig(_Section):
    """The optimizer, ``name`` plus its own keys (``momentum`` is for sgd only, and so on)."""

    name: Literal["sgd", "adagrad", "rmsprop", "adam"] = Field("adam", description="sgd, adagrad, rmsprop or adam")
    lr: Annotated[Float, Field(gt=0, le=MAX_LR)] = Field(0.003, description="learning rate")
    momentum: Unit | None = Field(None, description="sgd only: momentum in [0, 1) (default 0)")
    nesterov: Bool | None = Field(None, description="sgd only: Nesterov momentum (default false; needs momentum > 0)")
    alpha: Unit | None = Field(None, description="rmsprop only: decay of the squared-gradient average (default 0.99)")
    beta1: Unit | None = Field(None, description="adam only: decay of the first moment (default 0.9)")
    beta2: Unit | None = Field(None, description="adam only: decay of the second moment (default 0.999)")
    eps: Epsilon | None = Field(None, description="adagrad (default 1e-10), rmsprop and adam (default 1e-8)")
    eps_inside_sqrt: Bool | None = Field(
        None, description="adagrad, rmsprop, adam: divide by sqrt(acc + eps), not sqrt(acc) + eps (default false)"
    )


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
        """Keyword arguments for ``bptt_cli.core.optim.make(name, **hyper)``; eps_inside_sqrt
        only when true, so every earlier config dumps and digests as before."""
        keys = [k for k in _OPTIMIZER_DEFAULTS[self.name] if k != "eps_inside_sqrt" or getattr(self, k)]
        return {"lr": self.lr, **{k: getattr(self, k) for k in keys}}

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


MAX_THREADS = 1024


class TrainConfig(_Section):
    """The training loop: how long, how big, and how often to evaluate, log and save."""

    steps: Count = Field(400, description="training batches (a chunk-update mode makes several updates per batch)")
    batch_size: Count = Field(32, description="sequences per batch B (parallel streams for text)")
    eval_every: Every = Field(50, description="held-out evaluation every N steps; 0 = only at the end")
    eval_size: Count = Field(256, description="sequences in the fixed held-out set")
    log_every: Count = Field(1, description="write a metrics line every N updates (at most the run's updates)")
    diagnostics_every: Every = Field(0, description="gradient-flow diagnostics every N updates; 0 = off")
    checkpoint_every: Count = Field(100, description="save a checkpoint every N steps (and at the end)")
    target: Str | None = Field(None, description="stop early once met, e.g. eval.accuracy>=0.99; null = run all steps")
    loss_reduction: Literal["mean", "sum"] = Field(
        "mean", description="training loss over an update's supervised steps and batch: mean, or sum (n times the gradient)"
    )
    threads: Union[Literal["auto"], Int] = Field(
        "auto", description="BLAS threads: auto picks from the model size and free cores; OPENBLAS_NUM_THREADS etc. win over auto"
    )

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, value: Any) -> Any:
        value = _integral(value)
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_THREADS):
            return value
        raise ValueError(f"expected auto or a whole number of threads from 1 to {MAX_THREADS}, got {value!r}")

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else str(parse_expectation(value))

    @model_serializer(mode="wrap")
    def _compact(self, handler) -> dict[str, Any]:
        out = handler(self)
        if self.loss_reduction == "mean":  # the default stays out of the data: earlier configs digest as before
            del out["loss_reduction"]
        return out


class DiagnosticsConfig(_Section):
    """Gradient-flow diagnostics (run every ``train.diagnostics_every`` updates)."""

    max_lag: Count = Field(50, description="longest lag j measured for ||dL_t/dh_{t-j}||")


class CompareConfig(_Section):
    """Defaults for ``bptt compare``; its command-line options override them."""

    modes: list[Str] | None = Field(None, description="truncation specs to compare; null = full, k_truncated:K, subsequence:K")
    seeds: Union[int, list[int], None] = Field(None, description="a count of seeds from `seed` on, or a list of seeds")
    grid: dict[str, list[Any]] | None = Field(
        None,
        description="dotted key -> values, e.g. clip.threshold: [1, 5, null]; keys that vary together: "
        '"model.cell,model.hidden": [[elman, 67], [gru, 36]]',
    )

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
            if not 1 <= value <= MAX_SEEDS:
                raise ValueError(f"a count of seeds must be from 1 to {MAX_SEEDS}, got {value}")
            return value
        if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) for s in value):
            if len(value) > MAX_SEEDS:
                raise ValueError(f"at most {MAX_SEEDS} seeds, got {len(value)}")
            if any(not 0 <= s <= MAX_SEED for s in value):
                raise ValueError(f"seeds must be from 0 to {MAX_SEED}, got {value}")
            if len(set(value)) != len(value):
                raise ValueError(f"seeds must be distinct, got {value}")
            return value
        raise ValueError(f"expected a count (an integer >= 1) or a non-empty list of integer seeds, got {_repr(value)}")

    @field_validator("grid", mode="before")
    @classmethod
    def _grid(cls, value: Any) -> Any:
        if value is None:
            return None
        if not isinstance(value, Mapping) or not value:
            raise ValueError(f"expected a mapping of dotted keys to lists of values, got {_repr(value)}")
        seen: dict[str, str] = {}  # dotted key -> the grid entry that varies it
        for key, values in value.items():
            if not isinstance(key, str):
                raise ValueError(f"grid keys are dotted config keys such as clip.threshold, got {key!r}")
            keys = grid_key_parts(key)
            if len(keys) > 1 and (not all(keys) or len(set(keys)) != len(keys)):
                raise ConfigError(
                    "keys that vary together are distinct dotted keys joined by commas, "
                    "e.g. model.cell,model.hidden", key,
                )
            for k in keys:
                if k in seen:
                    raise ConfigError(f"{k} is also varied by the grid entry {seen[k]!r}; vary each key in one entry", key)
                seen[k] = key
            if not isinstance(values, list) or not values:
                raise ConfigError(f"expected a non-empty list of values, got {_repr(values)}", key)
            if len(keys) > 1:  # one list of len(keys) values per grid point, in the key's order
                for v in values:
                    if not isinstance(v, list) or len(v) != len(keys):
                        raise ConfigError(
                            f"expected a list of [{', '.join(keys)}] lists of {len(keys)} values each, "
                            f"e.g. [[elman, 67], [gru, 36]]; got {_repr(v)}", key,
                        )
        return value


class MlflowConfig(_Section):
    """Where ``tracking.mlflow`` logs: a tracking URI and an experiment."""

    uri: Str | None = Field(
        None, description="tracking URI (sqlite:///mlflow.db, http://host:5000, a folder); null = MLflow's default (MLFLOW_TRACKING_URI)"
    )
    experiment: Str | None = Field(None, description="experiment name; null = the config's name")


class TrackingConfig(_Section):
    """Live logging to TensorBoard and MLflow (``bptt_cli.tracking``), off by default. It only
    records: no number a run computes depends on it, and a backend that fails never stops a run.
    Left out of the plain data while off, so configs without it dump and digest as before."""

    tensorboard: Union[Bool, Str] = Field(
        False, description="true: event files in <run dir>/tensorboard; a folder: under it by run name; false = off"
    )
    mlflow: MlflowConfig | None = Field(None, description="{uri, experiment} (true: MLflow's defaults); null = off")

    @field_validator("tensorboard", mode="before")
    @classmethod
    def _folder(cls, value: Any) -> Any:
        if isinstance(value, bool) or (isinstance(value, str) and value.strip()):
            return value
        raise ValueError(f"expected true, false or a folder for the event files, got {_repr(value)}")

    @field_validator("mlflow", mode="before")
    @classmethod
    def _switch(cls, value: Any) -> Any:
        if value is True:
            return {}
        return None if value is False else value

    @property
    def enabled(self) -> bool:
        return bool(self.tensorboard) or self.mlflow is not None


_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_SECTIONS = ("task", "model", "truncation", "clip", "optimizer", "train", "diagnostics", "tracking")


class Config(_Section):
    """A whole run. ``Config()`` is the built-in default: the quickstart."""

    name: Str = Field("quickstart", description="run name, the directory under runs/ (letters, digits, -, _, .)")
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] = Field(0, description="seed of the initial weights and of the task's data (0 to 2**32 - 1)")
    task: TaskConfig = Field(default_factory=TaskConfig, description="the sequence task and its parameters")
    model: ModelConfig = Field(default_factory=ModelConfig, description="the RNN")
    truncation: TruncationConfig = Field(default_factory=TruncationConfig, description="the truncation mode")
    clip: ClipConfig = Field(default_factory=ClipConfig, description="gradient clipping")
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig, description="the optimizer")
    train: TrainConfig = Field(default_factory=TrainConfig, description="the training loop")
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig, description="gradient diagnostics")
    compare: CompareConfig | None = Field(None, description="defaults for `bptt compare`; null = none")
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="TensorBoard and MLflow logging; off by default")

    @model_serializer(mode="wrap")
    def _tracking_when_on(self, handler) -> dict[str, Any]:
        out = handler(self)
        if not self.tracking.enabled:
            out.pop("tracking", None)  # off: every config without the section dumps as before it existed
        return out

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
                f"starting with a letter or digit; got {_repr(value)}"
            )
        return value

    @model_validator(mode="after")
    def _seed_range(self) -> Config:
        count = self.compare.seeds if self.compare is not None else None
        if isinstance(count, int) and self.seed + count - 1 > MAX_SEED:
            raise ConfigError(
                f"{count} seeds from seed {self.seed} on pass the largest seed, {MAX_SEED}; "
                "lower seed or the count",
                "compare.seeds",
            )
        return self

    @model_validator(mode="after")
    def _cell_takes_the_mode(self) -> Config:
        # Checked here so a compare refuses such a variant when it is planned (exit 2), not when it runs.
        tr = _truncation.parse(self.truncation.spec)
        if self.model.cell != "elman" and (tr.random or tr.adaptive is not None):
            raise ConfigError(
                f"{tr} is implemented for the elman cell only; gated cells (gru, lstm) take full, "
                "k_truncated:K, subsequence:K or tbptt:K1:K2",
                "truncation.mode",
            )
        return self

    @model_validator(mode="after")
    def _check_grid(self) -> Config:
        if self.compare is None or not self.compare.grid:
            return self
        from bptt_cli.config.load import from_dict  # the whole read, which validates through here
        from bptt_cli.config.overrides import _set

        base = to_dict(self)
        base.pop("compare")
        valid = _override_keys(self)
        for key, values in self.compare.grid.items():
            keys = grid_key_parts(key)
            for k in keys:
                if k not in valid:
                    raise ConfigError(f"unknown config key{_hint(k, valid)}", f"compare.grid.{key}")
            for value in values:  # each grid point must make a valid config on its own
                data = copy.deepcopy(base)
                try:
                    for k, v in zip(keys, value if len(keys) > 1 else [value]):
                        data = _set(data, k, v)
                    from_dict(data)
                except ConfigError as e:
                    raise ConfigError(f"value {value!r} gives: {e}", f"compare.grid.{key}") from None
        return self


def grid_key_parts(key: str) -> list[str]:
    """A grid key's dotted keys: ``model.cell,model.hidden`` -> both (varied together, one
    value of each per grid point); a plain key -> itself."""
    return [k.strip() for k in key.split(",")]


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
# Plain data
# ---------------------------------------------------------------------------------------
def to_dict(cfg: Config) -> dict[str, Any]:
    """Plain data in schema order; the task's parameters sit beside its name."""
    return cfg.model_dump(mode="python")
