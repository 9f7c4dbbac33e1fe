"""Files bptt reads back are untrusted input; this is the one door they come in through.

A run or compare directory may have been edited, truncated, replaced by a FIFO, symlinked
somewhere else or crafted to exhaust memory. Every reader here:

- opens without blocking (a FIFO or device must not hang the reader) and accepts only a
  regular file, checked on the open descriptor (``fstat``), so nothing swaps it in between;
- reads at most a size limit (1 MB for configs, plans and summaries; logs are streamed line
  by line with a limit per line);
- refuses control characters in text (a terminal must not receive escape codes from a file);
- checks JSON against the documented shape (``check_shape``), so a summary that is ``null``,
  a ``diverged_at`` that is a string or a step that is text never reaches the renderers;
- reads ``.npz`` checkpoints by their zip directory and ``.npy`` headers first: member names,
  dtypes (never objects, never pickles), shapes and uncompressed sizes are checked against
  a byte cap BEFORE any array is allocated.

Each refusal is an :class:`UnsafeFile` naming the file: one line for the user, exit 2.

Writes live in ``runs.py``; the helpers at the bottom (``umask``, ``file_mode``,
``open_append``) are the pieces they share: files follow the user's umask and a write never
follows a symlink to somewhere else.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import stat
import zipfile
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from bptt_cli.core.errors import BpttError

MAX_SMALL = 1_000_000  # configs, plans, summaries: bytes
MAX_LINE = 1_000_000  # one line of a JSONL log: bytes
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # everything but \t \n \r


class UnsafeFile(BpttError, ValueError):
    """A file read back from a run or compare directory is not what bptt wrote."""


# -- opening ------------------------------------------------------------------------------
def file_kind(mode: int) -> str | None:
    """What a file of this ``st_mode`` is, for a message; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: Path, *, follow: bool = False) -> IO[bytes]:
    """Open ``path`` for reading; only a regular file is accepted. O_NONBLOCK keeps the open of
    a FIFO from waiting for a writer; the type is checked on the descriptor itself. A symlink
    is refused unless ``follow`` (bptt never makes one inside a run or compare directory)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise UnsafeFile(f"{path}: no such file") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnsafeFile(f"{path} is a symlink; bptt does not follow it here") from None
        if e.errno == errno.EISDIR:
            raise UnsafeFile(f"{path} is a directory, not a file") from None
        raise UnsafeFile(f"{path} cannot be read ({e.strerror or e})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{path} is {file_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: Path, limit: int = MAX_SMALL) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > limit:
            raise UnsafeFile(f"{path} is {size:,} bytes, more than the {limit:,} allowed")
        try:
            data = f.read(limit + 1)
        except OSError as e:
            raise UnsafeFile(f"{path} cannot be read ({e.strerror or e})") from None
    if len(data) > limit:  # it grew while we read
        raise UnsafeFile(f"{path} is more than the {limit:,} bytes allowed")
    return data


def check_text(text: str, where: str) -> None:
    m = _CONTROL.search(text)
    if m:
        line = text.count("\n", 0, m.start()) + 1
        raise UnsafeFile(f"{where}:{line}: control character {ord(m.group()):#04x} is not allowed")


def read_text(path: Path, limit: int = MAX_SMALL) -> str:
    """UTF-8 text of at most ``limit`` bytes with no control characters but tab and newlines."""
    raw = read_bytes(path, limit)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UnsafeFile(f"{path} is not UTF-8 text: byte {raw[e.start]:#04x} at offset {e.start}") from None
    check_text(text, str(path))
    return text


def _no_control_strings(value: Any, where: str) -> None:
    """A JSON string may spell a control character as an escape (``\\u001b``)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif isinstance(v, str):
            m = _CONTROL.search(v)
            if m:
                raise UnsafeFile(f"{where}: a string holds control character {ord(m.group()):#04x}, which is not allowed")


def parse_json(text: str, where: str) -> Any:
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise UnsafeFile(f"{where}: nested too deeply") from None
    except ValueError as e:
        raise UnsafeFile(f"{where} is not valid JSON ({e})") from None
    if "\\" in text:
        _no_control_strings(value, where)
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)  # NaN and Infinity are not JSON


def read_json(path: Path, shape: Any = None, limit: int = MAX_SMALL) -> Any:
    """A JSON file of at most ``limit`` bytes, checked against ``shape`` (see ``check_shape``)."""
    value = parse_json(read_text(path, limit), str(path))
    if shape is not None:
        problem = check_shape(value, shape)
        if problem:
            raise UnsafeFile(f"{path}: {problem}")
    return value


def iter_lines(path: Path, limit: int = MAX_LINE) -> Iterator[tuple[int, bytes | None, bool]]:
    """(line number, raw line or None when over ``limit``, is it the last line) of a regular file,
    streamed so a log of any length is read in bounded memory."""
    with open_regular(path) as f:
        n = 0
        pending: tuple[int, bytes | None] | None = None
        while True:
            line = f.readline(limit + 1)
            if not line:
                break
            if len(line) > limit and not line.endswith(b"\n"):
                while True:  # skip the rest of an over-long line
                    rest = f.readline(limit)
                    if not rest or rest.endswith(b"\n"):
                        break
                line = None  # type: ignore[assignment]
            n += 1
            if pending is not None:
                yield pending[0], pending[1], False
            pending = (n, line)
        if pending is not None:
            yield pending[0], pending[1], True


# -- shapes -------------------------------------------------------------------------------
# A shape is: "int" (not bool), "num" (int or float, not bool), "str", "bool", "any",
# ("opt", s) for s or null, ("list", s), ("map", s) for an object of s values, or a dict
# {key: s} for an object whose listed keys (when present) have those shapes; ("req", s) in
# such a dict marks a key that must be present.
def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_TYPES = {"int": (_is_int, "an integer"), "num": (_is_num, "a number"), "str": (lambda v: isinstance(v, str), "a string"),
          "bool": (lambda v: isinstance(v, bool), "true or false"), "any": (lambda v: True, "anything")}  # fmt: skip


def _describe(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return f"the number {v!r}"
    if isinstance(v, str):
        return f"the string {v[:40]!r}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _wanted(shape: Any) -> str:
    if isinstance(shape, str):
        return _TYPES[shape][1]
    if isinstance(shape, dict):
        return "an object"
    kind, inner = shape
    if kind == "req":
        return _wanted(inner)
    if kind == "opt":
        return f"{_wanted(inner)} or null"
    return "a list" if kind == "list" else "an object"


_SIMPLE = {"int": frozenset({int}), "num": frozenset({int, float}), "str": frozenset({str}), "bool": frozenset({bool})}
_MISSING = object()


def _types(shape: Any) -> frozenset | None:
    """The exact types a simple shape admits (``type(True)`` is bool, so booleans are never
    numbers), or None for a shape that needs a walk."""
    if isinstance(shape, str):
        return _SIMPLE.get(shape)
    if isinstance(shape, tuple) and shape[0] in ("opt", "req"):
        inner = _types(shape[1])
        return None if inner is None else inner | {type(None)} if shape[0] == "opt" else inner
    return None


def _compile(shape: Any):
    """A fast yes/no test for ``shape`` (a log may hold a million records); the slow walk
    below runs only for a record that fails, to say where."""
    types = _types(shape)
    if types is not None:
        return lambda v: type(v) in types
    if shape == "any":
        return lambda v: True
    if isinstance(shape, dict):
        items = [(k, _compile(s), isinstance(s, tuple) and s[0] == "req") for k, s in shape.items()]

        def record(v: Any) -> bool:
            if type(v) is not dict:
                return False
            for k, ok, required in items:
                x = v.get(k, _MISSING)
                if x is _MISSING:
                    if required:
                        return False
                elif not ok(x):
                    return False
            return True

        return record
    kind, inner = shape
    f = _compile(inner)
    if kind == "opt":
        return lambda v: v is None or f(v)
    if kind == "req":
        return f
    if kind == "list":
        return lambda v: type(v) is list and all(map(f, v))
    return lambda v: type(v) is dict and all(map(f, v.values()))  # "map"


_COMPILED: dict[int, tuple[Any, Any]] = {}


def check_shape(value: Any, shape: Any, where: str = "") -> str | None:
    """None when ``value`` has ``shape``, else a short sentence naming the first key that does not."""
    hit = _COMPILED.get(id(shape))
    if hit is None or hit[0] is not shape:
        hit = _COMPILED[id(shape)] = (shape, _compile(shape))
    if hit[1](value):
        return None
    return _explain(value, shape, where)


def _explain(value: Any, shape: Any, where: str = "") -> str | None:
    at = f"{where}: " if where else ""
    if isinstance(shape, str):
        ok, _ = _TYPES[shape]
        return None if ok(value) else f"{at}expected {_wanted(shape)}, got {_describe(value)}"
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            return f"{at}expected an object, got {_describe(value)}"
        for k, s in shape.items():
            if k in value:
                p = _explain(value[k], s, f"{where}.{k}" if where else k)
                if p:
                    return p
            elif isinstance(s, tuple) and s[0] == "req":
                return f"{at}no {k!r}"
        return None
    kind, inner = shape
    if kind == "req":
        return _explain(value, inner, where)
    if kind == "opt":
        if value is None:
            return None
        problem = _explain(value, inner, where)
        return f"{at}expected {_wanted(shape)}, got {_describe(value)}" if problem and isinstance(inner, str) else problem
    if kind == "list":
        if not isinstance(value, list):
            return f"{at}expected a list, got {_describe(value)}"
        for i, x in enumerate(value):
            p = _explain(x, inner, f"{where}[{i}]")
            if p:
                return p
        return None
    if kind == "map":
        if not isinstance(value, dict):
            return f"{at}expected an object, got {_describe(value)}"
        for k, x in value.items():
            p = _explain(x, inner, f"{where}.{k}" if where else k)
            if p:
                return p
        return None
    raise ValueError(f"unknown shape {shape!r}")  # pragma: no cover


def opt(s: Any) -> tuple[str, Any]:
    return ("opt", s)


def req(s: Any) -> tuple[str, Any]:
    return ("req", s)


# -- checkpoints ----------------------------------------------------------------------------
_MEMBER = re.compile(r"[A-Za-z0-9_./-]{1,200}")
NPZ_CAP = 1 << 30  # bytes of arrays a checkpoint may hold when the caller gives no cap
NPZ_MEMBERS = 10_000  # a checkpoint holds a few dozen arrays; a zip directory of millions is an attack


def load_npz(path: Path, *, cap: int = NPZ_CAP) -> dict[str, np.ndarray]:
    """The arrays of an ``.npz`` written by ``np.savez``, checked before any is loaded.

    Every member must be ``<name>.npy`` with a plain name, a numeric or boolean dtype, and an
    uncompressed size equal to what its header's shape and dtype imply; the arrays together
    may hold at most ``cap`` bytes. Pickles are never loaded.
    """
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > cap + (1 << 20):  # np.savez stores arrays uncompressed: the file is about their size
            raise UnsafeFile(f"{path} is {size:,} bytes, more than a checkpoint of this run can be ({cap:,} bytes of arrays)")
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
            raise UnsafeFile(f"{path} is not a checkpoint (not a zip file)") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > NPZ_MEMBERS:
                raise UnsafeFile(f"{path} has {len(infos):,} members, more than the {NPZ_MEMBERS:,} a checkpoint can have")
            names = [i.filename for i in infos]
            if len(set(names)) != len(names):
                raise UnsafeFile(f"{path}: a member name appears twice")
            total = 0
            plan = []
            for info in infos:
                name = info.filename
                if not name.endswith(".npy") or not _MEMBER.fullmatch(name) or ".." in name.split("/"):
                    raise UnsafeFile(f"{path}: member {name[:60]!r} is not an array of a checkpoint")
                if info.file_size > cap + 10_240:  # the data and an .npy header (at most 10 kB)
                    raise UnsafeFile(f"{path}: member {name} unpacks to {info.file_size:,} bytes, more than the {cap:,} allowed")
                plan.append(info)
            out: dict[str, np.ndarray] = {}
            for info in plan:
                name = info.filename
                try:
                    with zf.open(info) as m:
                        version = np.lib.format.read_magic(m)
                        if version == (1, 0):
                            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
                        elif version in ((2, 0), (3, 0)):
                            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
                        else:
                            raise ValueError(f"unknown .npy version {version}")
                        header = m.tell()
                        if dtype.hasobject or dtype.kind not in "biufc":
                            raise UnsafeFile(f"{path}: member {name} has dtype {dtype}, not numbers")
                        nbytes = math.prod(shape) * dtype.itemsize
                        total += nbytes
                        if nbytes > cap or total > cap:
                            raise UnsafeFile(
                                f"{path}: arrays of shape {shape} ({name}) make {total:,} bytes, more than the {cap:,} allowed"
                            )
                        if info.file_size != header + nbytes:
                            raise UnsafeFile(
                                f"{path}: member {name} unpacks to {info.file_size:,} bytes but its header "
                                f"describes {header + nbytes:,}"
                            )
                        data = m.read(nbytes)
                except UnsafeFile:
                    raise
                except (ValueError, OSError, EOFError, zipfile.BadZipFile, NotImplementedError, RuntimeError) as e:
                    raise UnsafeFile(f"{path}: member {name} is unreadable ({e})") from None
                if len(data) != nbytes:
                    raise UnsafeFile(f"{path}: member {name} is truncated")
                arr = np.frombuffer(data, dtype=dtype)
                arr = arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)
                out[name[: -len(".npy")]] = arr.copy()
            return out


# -- writing --------------------------------------------------------------------------------
_UMASK: int | None = None


def umask() -> int:
    """The process umask, read once. /proc gives it without changing it (no window in which a
    thread could create a file with umask 0); elsewhere it is set and put back at once."""
    global _UMASK
    if _UMASK is None:
        try:
            with open("/proc/self/status", encoding="ascii", errors="replace") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
                        break
        except OSError:
            pass
        if _UMASK is None:
            _UMASK = os.umask(0o022)
            os.umask(_UMASK)
    return _UMASK


def file_mode() -> int:
    """The mode ``open`` would give a new file: 0o666 less the umask."""
    return 0o666 & ~umask()


def open_append(path: Path) -> IO[str]:
    """Open a log for appending without following a symlink (a link planted in a run
    directory must not make bptt write to its target)."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, 0o666)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, f"{file_kind(st.st_mode)}, not a regular file", str(path))
        return os.fdopen(fd, "a", encoding="utf-8")
    except BaseException:
        os.close(fd)
        raise
