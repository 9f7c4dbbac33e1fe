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

The package is cut along those seams, each module importing only those before it:
``errors`` (ConfigError), ``schema`` (what a valid config is), ``yaml_io`` (reading YAML with
key positions, and dumping it), ``overrides`` (the ``--set`` grammar), ``wording``
(pydantic's errors in our words) and ``load`` (the whole read). One call goes back up: a
``compare.grid`` check in ``schema`` validates each grid point through ``load`` at call time.
This module only re-exports.
"""

from bptt_cli.config.errors import ConfigError
from bptt_cli.config.load import from_dict, load_config, smoke
from bptt_cli.config.overrides import apply_overrides
from bptt_cli.config.schema import (
    ClipConfig,
    CompareConfig,
    Config,
    DiagnosticsConfig,
    Expectation,
    ModelConfig,
    OptimizerConfig,
    TaskConfig,
    TrainConfig,
    TruncationConfig,
    describe_schema,
    parse_expectation,
    to_dict,
)
from bptt_cli.config.yaml_io import dump_yaml

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
