"""The ``--set KEY=VALUE`` grammar: dotted keys, values typed as in YAML 1.2."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bptt_cli.config.errors import ConfigError
from bptt_cli.config.schema import _OPTIMIZER_DEFAULTS
from bptt_cli.config.yaml_io import _char_name, _control_at, _parse_yaml

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
        bad = _control_at(str(item))
        if bad:
            ch, _, _ = bad
            raise ConfigError(
                f"control character {_char_name(ch)} at character {str(item).index(ch) + 1}; "
                "--set values must be plain text",
                None, f"--set {item}",
            )
        key, eq, text = str(item).partition("=")
        key = key.strip()
        if not eq or not _KEY.fullmatch(key):
            raise ConfigError(f"{_OVERRIDE_FORM}; got {item!r}")
        _set(out, key, _parse_value(text, item), item)
    return out


def _blame(overrides: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in overrides:
        key = str(item).partition("=")[0].strip()
        out[key] = str(item)
    return out
