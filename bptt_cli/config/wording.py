"""pydantic's validation errors in our words: the key, what was given, what is allowed.

Each error becomes one :class:`ConfigError` located at the file, line and column of its
key, or at the ``--set`` override that set it.
"""

from __future__ import annotations

import re
import types
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Union, get_args, get_origin

import annotated_types
from pydantic.fields import FieldInfo

from bptt_cli.config.errors import ConfigError, _hint, _join, _repr
from bptt_cli.config.overrides import _FLOAT
from bptt_cli.config.schema import _model_at, describe_schema
from bptt_cli.config.yaml_io import Marks


def _number(bound: float) -> str:
    """A bound as a user would type it: 1000000000 and 4294967295 whole, 0.5 and 1e-08 short."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


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
            bounds.append(f">= {_number(obj.ge)}")
        elif isinstance(obj, annotated_types.Gt):
            bounds.append(f"> {_number(obj.gt)}")
        elif isinstance(obj, annotated_types.Le):
            bounds.append(f"<= {_number(obj.le)}")
        elif isinstance(obj, annotated_types.Lt):
            bounds.append(f"< {_number(obj.lt)}")
        elif get_origin(obj) is Annotated:
            for a in get_args(obj)[1:]:
                collect(a)
            collect(get_args(obj)[0])
        elif get_origin(obj) in (Union, types.UnionType):
            for a in get_args(obj):
                collect(a)

    collect(info.annotation)
    collect(info)
    bounds = list(dict.fromkeys(bounds))
    if len(bounds) == 2 and bounds[0].startswith(">= ") and bounds[1].startswith("<= "):
        bounds = [f"from {bounds[0][3:]} to {bounds[1][3:]}"]
    text = (" " + " and ".join(bounds)) if bounds else ""
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


_RANGE = {
    "greater_than": (">", "gt"),
    "greater_than_equal": (">=", "ge"),
    "less_than": ("<", "lt"),
    "less_than_equal": ("<=", "le"),
}


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
        return path, f"expected an integer{_allowed(loc)}, got {_repr(given)}{_quoted_number(given)}"
    if kind in ("float_type", "float_parsing"):
        return path, f"expected a number{_allowed(loc)}, got {_repr(given)}{_quoted_number(given)}"
    if kind == "finite_number":
        return path, f"expected a finite number{_allowed(loc)}, got {_repr(given)}"
    if kind in _RANGE:  # the side that was crossed: "must be <= 1000000000, got 1e18"
        op, name = _RANGE[kind]
        if name in ctx:
            null = " or null" if _allowed(loc).endswith(" or null") else ""
            return path, f"must be {op} {_number(ctx[name])}{null}, got {_repr(given)}"
        return path, f"must be{_allowed(loc) or ' in range'}, got {_repr(given)}"
    if kind == "string_type":
        return path, f"expected a string, got {_repr(given)}"
    if kind == "bool_type":
        return path, f"expected true or false, got {_repr(given)}"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        hint = _hint(str(given), choices) if isinstance(given, str) else ""
        return path, f"expected one of {', '.join(choices)}, got {_repr(given)}{hint}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, f"expected a mapping (indented key: value lines), got {_repr(given)}"
    if kind == "list_type":
        return path, f"expected a list, got {_repr(given)}"
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
