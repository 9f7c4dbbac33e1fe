"""Reading a whole config: a YAML file or plain data, then overrides, then validation."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bptt_cli.config.errors import ConfigError
from bptt_cli.config.overrides import _blame, apply_overrides
from bptt_cli.config.schema import Config, to_dict
from bptt_cli.config.wording import _locate, _translate_one
from bptt_cli.config.yaml_io import Marks, _check_keys, _parse_yaml, _read


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
    try:
        _check_keys(data)  # before the deep copy of apply_overrides: the data may come from a file
    except ConfigError as e:
        raise _locate(e, source, {}, {}) from None
    merged = apply_overrides(data, overrides)
    return _validate(merged, source, {}, _blame(overrides))


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
        log_every=min(t["log_every"], 3),  # at least one metrics line from the few updates left
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
