"""The encoded text behind the ``text`` task, at any size: read in chunks, encoded through a
lookup table, memory-mapped from a cache that every process shares.

A corpus is its text as ids into its vocabulary, the sorted set of its characters::

    text    "the cat ."
    vocab   " .aceht"               sorted by code point, V = 7
    ids     6 5 4 0 3 2 6 0 1       (N,) uint8 when V <= 256, uint16 when V <= 65,536, else uint32

Reading a file never holds more than a chunk of it (``CHUNK_BYTES``) in memory::

    pass 1  sha256 of the bytes, chunk by chunk        -> the cache key, and the data fingerprint
            the key's two files exist and check out    -> np.load(mmap_mode="r"); done
    pass 2  decode chunk by chunk, mark code points    -> vocabulary (V), N, the ids dtype
    pass 3  decode again, ids = lut[code points]       -> a temp file in the cache directory,
            (lut: code point -> id, 0x110000 entries)     cumulative counts, sha256 again
            fsync, os.replace to the key's names       -> readers only ever see complete files

UTF-8 across chunk boundaries: a chunk is decoded with ``final=False``, so an incomplete
sequence at its end (at most 3 bytes) is carried into the next chunk; an invalid byte is
reported with its offset in the file. A BOM at the very start is dropped, as ``utf-8-sig``
does; a U+FEFF anywhere else is a character like any other. An ASCII chunk (most text) skips
the decoder: its bytes are its code points, and with V <= 256 ``bytes.translate`` through a
256-byte table turns them into ids.

The cache (``<cache_dir>/text/``) holds two files per key, ``v1-<sha256>.ids.npy`` (the ids,
memory-mapped by readers) and ``v1-<sha256>.meta.npz`` (vocabulary, N, cumulative counts).
Both are a pure function of the file's bytes, so builders racing on one key write identical
files, each under a temp name of its own, and whichever ``os.replace`` lands last is as good
as the first. No file is ever changed in place, so a process that maps one keeps a consistent
copy whatever happens to the name. A cached pair that fails its checks (npy header, shape,
dtype, size, vocabulary, counts) is rebuilt. An unwritable cache directory falls back to an unlinked temp file, and
that to memory, without failing.

Counts. The chance level needs the unigram counts of the training prefix ``ids[:stop]``.
``cum (R, V)`` holds ``cum[r] = counts of ids[: r * stride]``, so ``counts(stop)`` is one row
plus a bincount of fewer than ``stride`` ids: never a pass over the corpus.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import secrets
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from bptt_cli.tasks.base import TaskError

CHUNK_BYTES = 1 << 20  # bytes read (and decoded) at a time; tests shrink it to cut sequences
MAX_TEXT_BYTES = 16 << 30  # a larger file is refused: three passes over it would take minutes
MAX_VOCAB = 65_536  # distinct characters; the one-hot input (T, B, V) is V wide
FORMAT = "v1"  # in the cache's file names: a new layout never reads an old one
N_CODE_POINTS = 0x110000
STRIDE_MIN = 1 << 20  # characters between rows of the cumulative counts ...
CUM_MAX_ENTRIES = 1 << 22  # ... widened so the table stays under 4M entries (32 MB)
META_MAX_BYTES = 64 << 20  # a meta file larger than the largest one we write is damaged
STALE_TEMP_SECONDS = 24 * 3600  # temp files of builders killed mid-write are swept after this

Chunks = Callable[[], Iterator[bytes]]  # a fresh pass over the bytes on every call


def ids_dtype(n_vocab: int) -> np.dtype:
    """The smallest unsigned dtype that holds ids 0 .. n_vocab - 1."""
    if n_vocab <= 1 << 8:
        return np.dtype(np.uint8)
    if n_vocab <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.uint32)


def default_cache_dir() -> Path | None:
    """``$BPTT_CACHE_DIR``, else ``$XDG_CACHE_HOME/bptt``, else ``~/.cache/bptt`` (None: no home)."""
    env = os.environ.get("BPTT_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "bptt"
    try:
        return Path.home() / ".cache" / "bptt"
    except RuntimeError:  # no HOME and no passwd entry
        return None


@dataclass(frozen=True, eq=False)
class Corpus:
    """A text as ids ``(N,)`` into ``vocab``; ``ids`` may be a read-only memory map."""

    ids: np.ndarray  # (N,) uint8 / uint16 / uint32
    codes: np.ndarray  # (V,) uint32 code points of the vocabulary, increasing
    sha256: str  # of the bytes read (a BOM included)
    cum: np.ndarray  # (R, V) int64, R = N // stride + 1: cum[r] = counts of ids[: r * stride]
    stride: int
    storage: str  # "cache", "temp" or "memory": where the ids live

    @property
    def vocab(self) -> str:
        return self.codes.astype("<u4").tobytes().decode("utf-32-le")

    def counts(self, stop: int) -> np.ndarray:
        """``(V,)`` int64 occurrences of each id in ``ids[:stop]``."""
        r = stop // self.stride
        out = self.cum[r].copy()
        for a in range(r * self.stride, stop, CHUNK_BYTES):  # fewer than stride ids
            out += np.bincount(self.ids[a : min(stop, a + CHUNK_BYTES)], minlength=len(self.codes))
        return out

    def decode(self, start: int = 0, stop: int | None = None) -> str:
        """The text of ``ids[start:stop]`` (for tests and samples; the whole text may not fit)."""
        return self.codes[self.ids[start:stop]].astype("<u4").tobytes().decode("utf-32-le")


# -- reading --------------------------------------------------------------------------------


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int, where: str) -> TaskError:
    kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
    return TaskError(f"{where} is {kind}, not a regular file; a regular UTF-8 text file is needed", "path")


def open_regular(path: Path, where: str) -> io.BufferedReader:
    """``path`` opened for reading if it is a regular file (symlinks followed), else a TaskError.

    Opened non-blocking, so a FIFO with no writer cannot hang the open; ``fstat`` of the open
    descriptor decides, so a file swapped after a check cannot slip through.
    """
    try:
        mode = os.stat(path).st_mode  # only for the message: a socket cannot even be opened
        if not stat.S_ISREG(mode):
            raise _not_regular(mode, where)
    except FileNotFoundError:
        raise TaskError(f"{where} does not exist", "path") from None
    except OSError:
        pass  # the open below reports it
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise TaskError(f"{where} does not exist", "path") from None
    except OSError as e:
        raise TaskError(f"{where} cannot be read ({e.strerror})", "path") from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise _not_regular(mode, where)
    return os.fdopen(fd, "rb")


def file_chunks(f: io.BufferedReader, where: str) -> Chunks:
    """Passes over an open file, ``CHUNK_BYTES`` at a time, refusing more than ``MAX_TEXT_BYTES``."""

    def chunks() -> Iterator[bytes]:
        total = 0
        try:
            f.seek(0)
            while chunk := f.read(CHUNK_BYTES):
                total += len(chunk)
                if total > MAX_TEXT_BYTES:
                    raise TaskError(
                        f"{where} has more than {MAX_TEXT_BYTES:,} bytes; text files up to "
                        f"{MAX_TEXT_BYTES:,} bytes ({MAX_TEXT_BYTES / 2**30:g} GiB) are supported",
                        "path",
                    )
                yield chunk
        except OSError as e:
            raise TaskError(f"{where} cannot be read ({e.strerror})", "path") from None

    return chunks


def _decode(buf: bytes, offset: int, final: bool, where: str) -> tuple[np.ndarray | None, int]:
    """Code points ``(n,)`` uint32 of the complete sequences in ``buf`` (at file offset
    ``offset``) and the number of bytes they used; None for ASCII (most text), whose code
    points are its bytes."""
    if buf.isascii():
        return None, len(buf)
    try:
        text, used = codecs.utf_8_decode(buf, "strict", final)
    except UnicodeDecodeError as e:
        raise TaskError(
            f"{where} is not UTF-8 text: byte {buf[e.start]:#04x} at offset {offset + e.start} cannot be decoded",
            "path",
        ) from None
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4"), used


def code_points(chunks: Iterable[bytes], where: str) -> Iterator[tuple[bytes, np.ndarray | None]]:
    """The text, chunk by chunk, BOM dropped: (the bytes, their code points ``(n,)`` uint32,
    or None when the bytes are ASCII and so their own code points)."""
    buf, offset, started = b"", 0, False
    for chunk in chunks:
        buf = buf + chunk if buf else bytes(chunk)
        if not started:
            if len(buf) < len(codecs.BOM_UTF8) and codecs.BOM_UTF8.startswith(buf):
                continue  # could still be a BOM
            started = True
            if buf.startswith(codecs.BOM_UTF8):
                buf, offset = buf[len(codecs.BOM_UTF8) :], len(codecs.BOM_UTF8)
        codes, used = _decode(buf, offset, False, where)
        if used:
            yield buf[:used] if used < len(buf) else buf, codes
        buf, offset = buf[used:], offset + used  # at most 3 bytes of an unfinished sequence
    if buf:
        codes, used = _decode(buf, offset, True, where)  # an unfinished sequence raises here
        yield buf, codes


def _hashed(chunks: Iterable[bytes], h) -> Iterator[bytes]:
    for chunk in chunks:
        h.update(chunk)
        yield chunk


def sha256(chunks: Iterable[bytes]) -> tuple[str, int]:
    """(hex digest, byte count) of the chunks."""
    h, n = hashlib.sha256(), 0
    for chunk in chunks:
        h.update(chunk)
        n += len(chunk)
    return h.hexdigest(), n


def scan(chunks: Iterable[bytes], where: str) -> tuple[np.ndarray, int]:
    """Pass 2: the vocabulary's code points ``(V,)`` uint32, increasing, and the length N."""
    seen = np.zeros(N_CODE_POINTS, dtype=bool)
    news = b"\1" * 128 + b"\0" * 128  # ASCII byte -> 1 until seen (translate and `in` run at memory speed)
    n = 0
    for raw, codes in code_points(chunks, where):
        n += len(raw) if codes is None else len(codes)
        if b"\1" in raw.translate(news):  # an ASCII character not seen before (rare after the first chunk)
            seen[np.flatnonzero(np.bincount(np.frombuffer(raw, dtype=np.uint8), minlength=128)[:128])] = True
            news = bytes(0 if c >= 128 or seen[c] else 1 for c in range(256))
        if codes is not None:  # the rest: few characters, mostly repeats
            seen[codes[codes >= 128]] = True
    return np.flatnonzero(seen).astype(np.uint32), n


def _stride(n: int, n_vocab: int) -> int:
    return max(STRIDE_MIN, -(-n * n_vocab // CUM_MAX_ENTRIES))


def encode(
    chunks: Iterable[bytes], codes: np.ndarray, n: int, emit: Callable[[np.ndarray], object], where: str
) -> tuple[np.ndarray, int, str]:
    """Pass 3: hand the ids to ``emit`` chunk by chunk; return (cum, stride, sha256 of the bytes).

    A file that no longer gives N characters, or other bytes, changed between the passes.
    """
    V = len(codes)
    dtype = ids_dtype(V)
    lut = np.zeros(N_CODE_POINTS, dtype=dtype)  # code point -> id
    lut[codes] = np.arange(V, dtype=dtype)
    table = lut[:256].tobytes() if dtype == np.uint8 else None  # for bytes.translate
    stride = _stride(n, V)
    cum = np.zeros((n // stride + 1, V), dtype=np.int64)  # (R, V)
    running = np.zeros(V, dtype=np.int64)
    pos, row = 0, 1  # ids emitted so far; the next row of cum to fill
    h = hashlib.sha256()
    changed = TaskError(f"{where} changed while it was being read; run again once it is complete", "path")
    for raw, cp in code_points(_hashed(chunks, h), where):
        if cp is not None:
            ids = lut.take(cp)  # (n,)
        elif table is not None:  # ASCII: one lookup per byte, in C
            ids = np.frombuffer(raw.translate(table), dtype=np.uint8)
        else:
            ids = lut.take(np.frombuffer(raw, dtype=np.uint8))
        if pos + len(ids) > n:
            raise changed
        emit(ids)
        a = 0
        while a < len(ids):  # split at multiples of the stride
            take = min(len(ids) - a, row * stride - pos)
            running += np.bincount(ids[a : a + take], minlength=V)
            pos, a = pos + take, a + take
            if pos == row * stride:
                cum[row] = running
                row += 1
    if pos != n:
        raise changed
    return cum, stride, h.hexdigest()


# -- building and opening -------------------------------------------------------------------


def load_file(path: Path, where: str, cache_dir: Path | None) -> Corpus:
    """The corpus of the UTF-8 file ``path``, from ``cache_dir`` when cached there, else built
    (and cached when the directory is writable). ``where`` starts every error message."""
    with open_regular(path, where) as f:
        if (size := os.fstat(f.fileno()).st_size) > MAX_TEXT_BYTES:  # refused before reading (a sparse file)
            raise TaskError(
                f"{where} is {size:,} bytes; text files up to {MAX_TEXT_BYTES:,} bytes "
                f"({MAX_TEXT_BYTES / 2**30:g} GiB) are supported",
                "path",
            )
        chunks = file_chunks(f, where)
        key, size = sha256(chunks())
        if size == 0:
            raise TaskError(f"{where} is empty", "path")
        folder = None if cache_dir is None else Path(cache_dir) / "text"
        if folder is not None and (hit := open_cached(folder, key)) is not None:
            return hit
        codes, n = scan(chunks(), where)
        _check_vocab(codes, where)
        return build(chunks, key, codes, n, folder, where)


def load_bytes(data: bytes, where: str) -> Corpus:
    """The corpus of UTF-8 ``data`` held in memory (the generated corpus)."""
    view = memoryview(data)

    def chunks() -> Iterator[bytes]:
        for a in range(0, len(view), CHUNK_BYTES):
            yield view[a : a + CHUNK_BYTES].tobytes()

    key, _ = sha256(chunks())
    codes, n = scan(chunks(), where)
    _check_vocab(codes, where)
    return build(chunks, key, codes, n, None, where, temp=False)


def _check_vocab(codes: np.ndarray, where: str) -> None:
    if len(codes) > MAX_VOCAB:
        raise TaskError(
            f"{where} has {len(codes):,} distinct characters; at most {MAX_VOCAB:,} are supported "
            "(each is one input and one output unit)",
            "path",
        )


def build(
    chunks: Chunks, key: str, codes: np.ndarray, n: int, folder: Path | None, where: str, temp: bool = True
) -> Corpus:
    """Pass 3 into the cache folder, else (``temp``) an unlinked temp file, else memory."""
    if n > 0:  # an empty memory map cannot exist; an empty corpus is refused by the task anyway
        if folder is not None:
            try:
                return _build_cached(chunks, key, codes, n, folder, where)
            except OSError:
                pass  # unwritable, full, or a file in the way: the run does not need the cache
        if temp:
            try:
                return _build_temp(chunks, key, codes, n, where)
            except OSError:
                pass
    ids = np.empty(n, dtype=ids_dtype(len(codes)))
    pos = 0

    def emit(part: np.ndarray) -> None:
        nonlocal pos
        ids[pos : pos + len(part)] = part
        pos += len(part)

    cum, stride, sha = encode(chunks(), codes, n, emit, where)
    _check_same(sha, key, where)
    return Corpus(ids, codes, key, cum, stride, "memory")


def _check_same(sha: str, key: str, where: str) -> None:
    if sha != key:
        raise TaskError(f"{where} changed while it was being read; run again once it is complete", "path")


def _npy_header(dtype: np.dtype, n: int) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (n,)}
    )
    return buf.getvalue()


def _write_ids(
    f, chunks: Chunks, codes: np.ndarray, n: int, where: str, durable: bool = True
) -> tuple[np.ndarray, int, str, int]:
    """An .npy of the ids written to ``f`` as they are made: (cum, stride, sha256, header bytes).
    ``durable``: fsync before returning (a cache file must be complete on disk before its rename)."""
    header = _npy_header(ids_dtype(len(codes)), n)
    f.write(header)
    cum, stride, sha = encode(chunks(), codes, n, lambda ids: f.write(ids.tobytes()), where)
    f.flush()
    if durable:
        os.fsync(f.fileno())
    return cum, stride, sha, len(header)


def _build_temp(chunks: Chunks, key: str, codes: np.ndarray, n: int, where: str) -> Corpus:
    with tempfile.TemporaryFile(prefix="bptt-text-") as f:  # unlinked: gone when unmapped
        cum, stride, sha, offset = _write_ids(f, chunks, codes, n, where, durable=False)
        _check_same(sha, key, where)
        ids = np.memmap(f, dtype=ids_dtype(len(codes)), mode="r", offset=offset, shape=(n,))
    return Corpus(np.asarray(ids), codes, key, cum, stride, "temp")


def cache_paths(folder: Path, key: str) -> tuple[Path, Path]:
    """(ids, meta) file names of ``key`` in ``folder``."""
    return folder / f"{FORMAT}-{key}.ids.npy", folder / f"{FORMAT}-{key}.meta.npz"


def _temp_file(folder: Path, key: str):
    """A new file of our own in ``folder`` (mode from the umask, never through a symlink)."""
    path = folder / f".{FORMAT}-{key[:16]}.{os.getpid()}.{secrets.token_hex(6)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
    return path, os.fdopen(os.open(path, flags, 0o666), "wb")


def _build_cached(chunks: Chunks, key: str, codes: np.ndarray, n: int, folder: Path, where: str) -> Corpus:
    folder.mkdir(parents=True, exist_ok=True)
    ids_path, meta_path = cache_paths(folder, key)
    temps: list[Path] = []
    try:
        tmp, f = _temp_file(folder, key)
        temps.append(tmp)
        with f:
            cum, stride, sha, _ = _write_ids(f, chunks, codes, n, where)
        _check_same(sha, key, where)
        tmp_meta, f = _temp_file(folder, key)
        temps.append(tmp_meta)
        with f:
            np.savez(f, codes=codes, cum=cum, stride=np.int64(stride), n=np.int64(n), sha256=np.str_(key))
            f.flush()
            os.fsync(f.fileno())
        # ids first: a reader goes by the meta file, so it never meets a meta without its ids
        os.replace(tmp, ids_path)
        os.replace(tmp_meta, meta_path)
        temps.clear()
        _fsync_dir(folder)
    finally:
        for t in temps:
            t.unlink(missing_ok=True)
    _sweep(folder)
    hit = open_cached(folder, key)
    if hit is None:  # replaced by something else under our feet: fall back to a private copy
        raise OSError(f"the cache entry {ids_path} could not be read back")
    return hit


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep(folder: Path) -> None:
    """Remove temp files that builders killed mid-write left behind (a day old or more)."""
    now = time.time()
    for p in folder.glob(f".{FORMAT}-*.tmp"):
        try:
            if now - p.lstat().st_mtime > STALE_TEMP_SECONDS:
                p.unlink()
        except OSError:
            pass


def open_cached(folder: Path, key: str) -> Corpus | None:
    """The cached corpus of ``key``, or None when it is missing or fails a check (then rebuilt)."""
    ids_path, meta_path = cache_paths(folder, key)
    try:
        if not stat.S_ISREG(os.stat(meta_path).st_mode) or os.stat(meta_path).st_size > META_MAX_BYTES:
            return None
        with np.load(meta_path, allow_pickle=False) as z:
            codes, cum = z["codes"], z["cum"]
            stride, n, sha = int(z["stride"]), int(z["n"]), str(z["sha256"])
        V = len(codes)
        ok = (
            sha == key
            and codes.dtype == np.uint32
            and codes.ndim == 1
            and 1 <= V <= N_CODE_POINTS
            and bool((np.diff(codes.astype(np.int64)) > 0).all())
            and int(codes[-1]) < N_CODE_POINTS
            and n >= 1
            and stride == _stride(n, V)
            and cum.dtype == np.int64
            and cum.shape == (n // stride + 1, V)
            and not cum[0].any()
            and int(cum[-1].sum()) == (n // stride) * stride
        )
        if not ok:
            return None
        ids = np.load(ids_path, mmap_mode="r", allow_pickle=False)
        if (
            not isinstance(ids, np.memmap)
            or ids.dtype != ids_dtype(V)
            or ids.shape != (n,)
            or os.stat(ids_path).st_size != ids.offset + n * ids.dtype.itemsize
        ):
            return None
    except Exception:  # noqa: BLE001 - any way a damaged file fails to load means "rebuild it"
        return None
    return Corpus(np.asarray(ids), codes, key, cum, stride, "cache")
