"""YAML in and out: a safe loader that remembers where every key is, and the dump.

Reading rules (the same for files and ``--set`` values):
- YAML is read with a safe loader only; ``!!python/...`` and other non-plain tags are refused.
- ``1e-3`` is a number (YAML 1.1 would read it as a string; we follow YAML 1.2 here).
- A key given twice in one mapping is refused, with both lines.

A config file is untrusted input, so reading one is bounded before anything is built:

- only a regular file of at most ``MAX_CONFIG_BYTES`` (1 MB) is read: a FIFO, a device such
  as ``/dev/zero`` or a directory is refused from ``stat`` alone, and the open is
  non-blocking so nothing can make it wait;
- control characters (C0 but tab, newline and carriage return; DEL; the C1 block) are
  refused with their line and column, in the file and in any string it spells with escapes;
- while the composer builds the node graph it counts nodes as they would be after every
  alias is expanded, and how deep they nest: more than ``MAX_NODES`` nodes or ``MAX_DEPTH``
  levels is refused at once, so a 1 KB "billion laughs" file or 20,000 nested ``[`` end in a
  message, never a hang or a RecursionError. An alias to its own enclosing node (a cycle)
  is refused too. Every later walk over the data is then bounded by those numbers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bptt_cli.config.errors import ConfigError, _join, _printable
from bptt_cli.safeio import file_kind

if TYPE_CHECKING:
    from bptt_cli.config.schema import Config


# ---------------------------------------------------------------------------------------
# YAML in
# ---------------------------------------------------------------------------------------
MAX_CONFIG_BYTES = 1_048_576  # 1 MB; the shipped configs are about 2 KB
MAX_DEPTH = 64  # nesting levels, aliases expanded; a config needs 4
MAX_NODES = 5_000  # YAML nodes, aliases expanded; a config has about 60, one with a large grid a few hundred

# What YAML calls non-printable: C0 controls but tab, LF and CR; DEL; C1 but NEL; surrogates; U+FFFE/F.
_CONTROL = re.compile("[^\x09\x0a\x0d\x20-\x7e\x85\xa0-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_C0_NAMES = [
    "NUL", "SOH", "STX", "ETX", "EOT", "ENQ", "ACK", "BEL", "BS", "HT", "LF", "VT", "FF", "CR", "SO", "SI",
    "DLE", "DC1", "DC2", "DC3", "DC4", "NAK", "SYN", "ETB", "CAN", "EM", "SUB", "ESC", "FS", "GS", "RS", "US",
]  # fmt: skip


def _char_name(ch: str) -> str:
    code = ord(ch)
    name = _C0_NAMES[code] if code < 32 else "DEL" if code == 0x7F else None
    return f"U+{code:04X}" + (f" ({name})" if name else "")


def _control_at(text: str) -> tuple[str, int, int] | None:
    """(character, line, column), 1-based, of the first control character in ``text``, or None."""
    m = _CONTROL.search(text)
    if m is None:
        return None
    i = m.start()
    return m.group(), text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)


class _Refused(Exception):
    """A limit hit while composing; ``_parse_yaml`` turns it into a ConfigError at ``mark``."""

    def __init__(self, message: str, mark: yaml.Mark | None) -> None:
        super().__init__(message)
        self.message, self.mark = message, mark


class _BoundedComposer(yaml.composer.Composer):
    """PyYAML's composer, refusing a document whose node graph, aliases expanded, is too big
    or too deep.

    The composer recurses once per nesting level and returns the same node object for every
    alias of an anchor, so the graph it builds is small even when its expansion is
    astronomically large. ``compose_node`` is wrapped to keep two running numbers: the depth
    of the node being composed and the expanded size of everything composed so far (an alias
    adds the expanded size of its target, measured once per target and memoised by id).
    """

    def __init__(self) -> None:
        super().__init__()
        self._depth = 0  # of the node being composed
        self._expanded = 0  # nodes composed so far, aliases expanded
        self._done: set[int] = set()  # ids of nodes whose composition has finished
        self._measured: dict[int, tuple[int, int]] = {}  # id -> (expanded size, height)

    def compose_node(self, parent, index):
        event = self.peek_event()
        self._depth += 1
        try:
            if isinstance(event, yaml.AliasEvent):
                target = self.anchors.get(event.anchor)
                if target is not None:  # else the composer says "found undefined alias"
                    if id(target) not in self._done:
                        raise _Refused(f"alias *{event.anchor} refers to a node that contains it (a cycle)", event.start_mark)
                    size, height = self._measure(target)
                    self._grow(size, event.start_mark, aliased=True)
                    if self._depth - 1 + height > MAX_DEPTH:
                        raise _Refused(
                            f"alias *{event.anchor} nests values more than {MAX_DEPTH} levels deep", event.start_mark
                        )
                return super().compose_node(parent, index)
            if self._depth > MAX_DEPTH:
                raise _Refused(f"values nest more than {MAX_DEPTH} levels deep; a config needs a handful", event.start_mark)
            self._grow(1, event.start_mark, aliased=False)
            node = super().compose_node(parent, index)
            self._done.add(id(node))
            return node
        finally:
            self._depth -= 1

    def _grow(self, n: int, mark: yaml.Mark, aliased: bool) -> None:
        self._expanded += n
        if self._expanded > MAX_NODES:
            if aliased:
                raise _Refused(
                    f"aliases expand to too many nodes (more than {MAX_NODES:,}); "
                    "a config needs a few hundred (is this a YAML alias bomb?)",
                    mark,
                )
            raise _Refused(f"too many values (more than {MAX_NODES:,}); a config needs a few hundred", mark)

    def _measure(self, root: yaml.Node) -> tuple[int, int]:
        """(nodes, height) of ``root``'s subtree with aliases expanded, without expanding them:
        an iterative post-order walk over the graph, memoised by node id."""
        memo = self._measured
        stack: list[tuple[yaml.Node, bool]] = [(root, False)]
        while stack:
            node, ready = stack.pop()
            if id(node) in memo:
                continue
            kids = _children(node)
            if ready:
                sizes = [memo[id(k)] for k in kids]
                memo[id(node)] = (1 + sum(s for s, _ in sizes), 1 + max((h for _, h in sizes), default=0))
            else:
                stack.append((node, True))
                stack.extend((k, False) for k in kids if id(k) not in memo)
        return memo[id(root)]


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


class _PyLoader(
    yaml.reader.Reader,
    yaml.scanner.Scanner,
    yaml.parser.Parser,
    _BoundedComposer,
    yaml.constructor.SafeConstructor,
    yaml.resolver.Resolver,
):
    """The safe loader in pure Python: PyYAML's scanner and parser, our composer."""

    def __init__(self, stream) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        _BoundedComposer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)


_Loader: type = _PyLoader
try:  # libyaml's scanner and parser are ~100x faster: 1 MB of blank lines in 0.05 s, not 6 s
    from yaml._yaml import CParser

    class _CLoader(_BoundedComposer, CParser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver):
        """libyaml's parser (iterative, in C) feeding our composer: the same nodes and marks."""

        def __init__(self, stream) -> None:
            CParser.__init__(self, stream)
            _BoundedComposer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            yaml.resolver.Resolver.__init__(self)

    _Loader = _CLoader
except ImportError:  # PyYAML built without libyaml
    pass

for _cls in {_PyLoader, _Loader}:  # "1e-3" is a float, as in YAML 1.2
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )

_MERGE_TAG = "tag:yaml.org,2002:merge"
Marks = dict[str, tuple[int, int]]  # dotted key -> (line, column), 1-based


def _key_marks(node: yaml.Node | None, source: str) -> Marks:
    """Where each mapping key is; refuses a key given twice in one mapping.

    The walk follows aliases (a key under an alias is reported at its anchor's line), which
    is safe because the loader has bounded the expanded graph: at most MAX_NODES nodes and
    MAX_DEPTH levels, so this is linear in what the loader accepted, never exponential.
    """
    marks: Marks = {}

    def walk(node: yaml.Node, prefix: tuple[str, ...], depth: int) -> None:
        if depth > MAX_DEPTH:  # the loader has refused anything deeper
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


_BRACKET = re.compile(r"[\[\]{}]")


def _flow_too_deep(text: str) -> tuple[int, int] | None:
    """(line, column) of the first ``[`` or ``{`` more than MAX_DEPTH levels deep, or None.

    PyYAML's scanner keeps one pending simple key per open flow level and rescans them all at
    every token, so 100,000 nested ``[`` take minutes before the composer sees a node. This
    count runs first; it ignores quoting, so a string with dozens of unbalanced brackets
    could be refused too, a price no real config pays.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return None
    depth = 0
    for m in _BRACKET.finditer(text):
        if m.group() in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                i = m.start()
                return text.count("\n", 0, i) + 1, i - text.rfind("\n", 0, i)
        elif depth:
            depth -= 1
    return None


def _short_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:") :] if tag.startswith("tag:yaml.org,2002:") else tag


def _parse_yaml(text: str, source: str) -> tuple[Any, Marks]:
    bad = _control_at(text)
    if bad:
        ch, line, col = bad
        raise ConfigError(
            f"control character {_char_name(ch)}; a config must be plain text (tabs and newlines are fine)",
            None, source, line, col,
        )
    deep = _flow_too_deep(text)
    if deep:
        raise ConfigError(f"values nest more than {MAX_DEPTH} levels deep; a config needs a handful", None, source, *deep)
    loader = None
    try:
        loader = _Loader(text)
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
        if what == "found character that cannot start any token" and line is not None:  # libyaml omits which
            row = text.split("\n")[line - 1] if line <= text.count("\n") + 1 else ""
            if 0 < col <= len(row):
                what = f"found character {row[col - 1]!r} that cannot start any token"
        if e.context and e.context_mark and e.context_mark is not mark:
            what += f" ({e.context} on line {e.context_mark.line + 1})"
        raise ConfigError(f"invalid YAML: {what}", None, source, line, col) from None
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML: {_printable(str(e))}", None, source) from None
    except _Refused as e:
        line, col = (e.mark.line + 1, e.mark.column + 1) if e.mark else (None, None)
        raise ConfigError(e.message, None, source, line, col) from None
    except RecursionError:  # the limits above should make this unreachable; never a traceback
        raise ConfigError(f"values nest too deeply (more than {MAX_DEPTH} levels)", None, source) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, marks


def _read(path: Path, limit: int = MAX_CONFIG_BYTES) -> str:
    """The text of a config file: a regular file of at most ``limit`` bytes, UTF-8."""
    source = str(path)

    def refuse(kind: str) -> ConfigError:
        if kind == "a directory":
            return ConfigError("is a directory, not a YAML config file", None, source)
        return ConfigError(f"is {kind}, not a YAML config file; give a regular file", None, source)

    try:
        st = os.stat(path)  # follows a symlink: what counts is what it points to
    except FileNotFoundError:
        raise ConfigError("no such config file", None, source) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ConfigError(f"cannot read the config file: {getattr(e, 'strerror', None) or e}", None, source) from None
    kind = file_kind(st.st_mode)
    if kind:
        raise refuse(kind)
    too_big = f"a config file may be at most {limit:,} bytes"
    if st.st_size > limit:
        raise ConfigError(f"is {st.st_size:,} bytes; {too_big}", None, source)
    try:
        # Non-blocking: should the path be swapped for a FIFO after the stat, the open does not wait.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", None, source) from None
    try:
        kind = file_kind(os.fstat(fd).st_mode)
        if kind:
            raise refuse(kind)
        chunks, size = [], 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read the config file: {e.strerror or e}", None, source) from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > limit:  # it grew after the stat
        raise ConfigError(f"is more than {limit:,} bytes; {too_big}", None, source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}", None, source) from None


def _check_keys(data: Any, prefix: str | None = None) -> None:
    """Plain data a config may hold: every mapping key a string (YAML reads yes/no/on/off and
    numbers as other types), no string with a control character (a double-quoted YAML string
    can spell one as an escape), at most ``MAX_DEPTH`` levels, no container inside itself.

    Iterative, and each container is checked once however often it is shared (a YAML alias
    gives the same object), so nothing here can recurse too deep or follow aliases exponentially.
    """
    seen: set[int] = set()
    stack: list[tuple[Any, str | None, int]] = [(data, prefix, 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            bad = _control_at(value)
            if bad:
                raise ConfigError(
                    f"the value contains the control character {_char_name(bad[0])}; config values must be plain text",
                    path,
                )
            continue
        if not isinstance(value, (Mapping, list)):
            continue
        if depth >= MAX_DEPTH:
            raise ConfigError(f"values nest more than {MAX_DEPTH} levels deep; a config needs a handful", path)
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Mapping):
            for key, item in reversed(list(value.items())):  # reversed: the first key is checked first
                if not isinstance(key, str):
                    raise ConfigError(
                        f"key {key!r} is not a string (YAML reads numbers, true/false, yes/no and on/off "
                        "as non-strings; quote it)",
                        path,
                    )
                bad = _control_at(key)
                if bad:
                    raise ConfigError(
                        f"key {key!r} contains the control character {_char_name(bad[0])}", path
                    )
                stack.append((item, _join(path, key), depth + 1))
        else:
            stack.extend((item, _join(path, str(i)), depth + 1) for i, item in reversed(list(enumerate(value))))


def dump_yaml(cfg: "Config") -> str:
    """The fully resolved config as YAML; ``load_config`` of it gives an equal Config."""
    return yaml.safe_dump(cfg.model_dump(mode="python"), sort_keys=False, default_flow_style=False, allow_unicode=True)
