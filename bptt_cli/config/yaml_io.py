"""YAML in and out: a safe loader that remembers where every key is, and the dump.

Reading rules (the same for files and ``--set`` values):
- YAML is read with a safe loader only; ``!!python/...`` and other non-plain tags are refused.
- ``1e-3`` is a number (YAML 1.1 would read it as a string; we follow YAML 1.2 here).
- A key given twice in one mapping is refused, with both lines.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bptt_cli.config.errors import ConfigError, _join

if TYPE_CHECKING:
    from bptt_cli.config.schema import Config


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


def dump_yaml(cfg: "Config") -> str:
    """The fully resolved config as YAML; ``load_config`` of it gives an equal Config."""
    return yaml.safe_dump(cfg.model_dump(mode="python"), sort_keys=False, default_flow_style=False, allow_unicode=True)
