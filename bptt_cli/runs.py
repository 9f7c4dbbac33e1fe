"""The run directory: create it, append logs, write checkpoints and summaries, read it back.

    runs/<name>/<UTC timestamp>-<id>/
        config.yaml        the fully resolved config, written before training starts
        metrics.jsonl      one object per logged optimizer update (append-only, flushed per line)
        eval.jsonl         held-out metrics every train.eval_every steps
        diagnostics.jsonl  gradient flow, truncation bias, spectrum (when enabled)
        checkpoint.npz     parameters, optimizer state, counters, hidden state (atomic)
        summary.json       status RUNNING -> completed | diverged | interrupted | failed (atomic)
        error.log          the traceback of an internal error (atomic; only when one happened)
        run.lock           pid, host and start of the process writing the run (while it does)

Every log line carries an explicit ``step``. Lines are never rewritten while a run goes on;
``truncate_logs`` (used by resume) keeps the lines up to the checkpoint's step and drops
the rest, a torn last line included, in one atomic replace per file.

Files read back are untrusted (``safeio``): a damaged file is a problem named by file and
reported, never a traceback, and ``bptt runs`` goes on past a damaged run. Writes never follow
a symlink and follow the umask. One process writes a run at a time: ``RunLock`` holds an
``flock`` on ``run.lock`` (pid, host, start) for the run's life; the kernel drops it when the
process dies, so a summary that still says ``running`` with nobody holding the lock is a run
that was killed, read back as ``crashed`` with its last logged step.
"""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
import socket
import stat
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bptt_cli import safeio
from bptt_cli.core.errors import BpttError
from bptt_cli.safeio import opt, req

LOGS = ("metrics", "eval", "diagnostics")
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")  # what a writer records
# Every status a run or compare variant is reported with (tables, JSON, CSV): the recorded
# ones, crashed (the summary says running, its writer is gone), and for compare variants
# "not started" and damaged (files bptt cannot read back).
REPORTED_STATUSES = STATUSES + ("crashed", "not started", "damaged")
LOCK = "run.lock"
# The version of the files' schema (bptt_cli/schemas.py, docs/runs.md), written into
# summary.json and compare.json; it versions every file of their directory.
SCHEMA_VERSION = 1


class RunError(BpttError, ValueError):
    """A run directory is missing, malformed or not allowed here."""


class RunBusy(RunError):
    """Another process is writing this run."""


class RunWriteError(BpttError, OSError):
    """Writing a run's files failed mid-run (disk full, folder deleted, permissions): the run
    failed, which is exit 1, not a mistake in the input."""

    exit_code = 1


def _os_reason(e: OSError) -> str:
    return e.strerror or str(e)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (np.floating, float)):
        f = float(v)
        return f if math.isfinite(f) else None  # JSON has no NaN/Inf; None reads as "not finite"
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    return v


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of dotted keys: {"model": {"hidden": 64}} -> {"model.hidden": 64}
    (lists and empty dicts stay values). How configs and records are tabulated, tracked and
    compared: ``bptt show``, the notebook API, TensorBoard and MLflow."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dumps(record: dict) -> str:
    return json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``.

    The rename replaces the directory entry: a symlink at ``path`` is replaced by the file,
    never written through. The file gets the mode the umask gives (mkstemp makes 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), safeio.file_mode())
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_error_log(run_dir: Path, text: str) -> Path | None:
    """Write ``error.log`` (replacing a symlink there, never its target); None if it could not be
    written (the run directory deleted, the disk full), so a message never points to nothing."""
    path = Path(run_dir) / "error.log"
    try:
        atomic_write(path, text.encode("utf-8", errors="replace"))
    except OSError:
        return None
    return path


def _mkdirs(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise RunError(f"{what} {path} exists and is not a folder") from None
    except NotADirectoryError:
        raise RunError(f"{what} {path}: a part of the path is a file, not a folder") from None
    except OSError as e:
        raise RunError(f"{what} {path} cannot be created ({_os_reason(e)})") from None
    if not path.is_dir():
        raise RunError(f"{what} {path} exists and is not a folder")


def cache_dir(runs_root: Path) -> Path:
    """Where runs under ``runs_root`` keep shared caches (the text task's encoded corpora):
    ``runs_root/.cache``, next to the runs, so every variant of a compare reads one copy."""
    return Path(runs_root).resolve() / ".cache"


def new_run_dir(root: Path, name: str) -> Path:
    """Create ``root/name/<UTC timestamp>-<id>`` exclusively; never reuses an existing folder."""
    if name in ("", ".", "..") or Path(name).name != name or "\\" in name:
        raise RunError(f"run name {name!r} must be one folder name (no '/', '..' or absolute path), so the run stays under {root}")
    parent = Path(root) / name
    _mkdirs(parent, "--runs-root folder")
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for _ in range(100):
        path = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise RunError(f"cannot create a run directory in {parent} ({_os_reason(e)})") from None
    raise RunError(f"could not create a new run directory under {parent}")  # pragma: no cover


def claim_run_dir(path: Path) -> Path:
    """Use ``path`` for a new run: it must not exist or be an empty folder."""
    path = Path(path)
    if path.is_symlink():
        raise RunError(f"--run-dir {path} is a symlink; give the folder itself")
    if path.exists():
        if not path.is_dir():
            raise RunError(f"--run-dir {path} exists and is not a folder")
        try:
            full = any(path.iterdir())
        except OSError as e:
            raise RunError(f"--run-dir {path} cannot be read ({_os_reason(e)})") from None
        if full:
            raise RunError(f"--run-dir {path} is not empty; pick a new folder, or use --resume {path} to continue it")
    _mkdirs(path, "--run-dir")
    if not os.access(path, os.W_OK | os.X_OK):
        raise RunError(f"--run-dir {path} is not writable")
    return path


class RunLock:
    """One writer per run: an exclusive ``flock`` on ``run.lock`` held for the run's life.

    The file records who holds it (pid, host, start) for the message a second writer gets.
    The kernel releases the lock when the holder dies, so a free lock is a dead writer.
    Readers probe with a shared lock held for microseconds; ``acquire`` retries for about a
    second so such a probe never makes a writer fail.
    """

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self, *, tries: int = 20) -> "RunLock":
        import fcntl

        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise RunError(f"{self.path} is a symlink; bptt does not follow it") from None
            raise RunError(f"cannot take the lock {self.path} ({_os_reason(e)})") from None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise RunError(f"{self.path} is not a regular file")
            for attempt in range(tries):
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError as e:
                    if e.errno in _NO_LOCKS:
                        break  # a filesystem without locks: run as before, unguarded
                    if not isinstance(e, BlockingIOError):
                        raise
                    if attempt == tries - 1:
                        raise RunBusy(f"{self.path.parent} is being written by {_holder_text(_read_holder(fd))}; "
                                      "wait for it to end or stop that process first") from None  # fmt: skip
                    time.sleep(0.05)
                    continue
                if _same_file(fd, self.path):
                    break
                # The holder removed the file as it let go: lock the file that is there now.
                os.close(fd)
                fd = -1
                fd = os.open(self.path, flags, 0o666)
            else:
                raise RunBusy(f"{self.path.parent} is being written by another process")
            info = {"pid": os.getpid(), "host": socket.gethostname(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        except OSError as e:
            if fd >= 0:
                os.close(fd)
            raise RunError(f"cannot take the lock {self.path} ({_os_reason(e)})") from None
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the file, then drop the lock (a waiter that locked the removed file sees it
        is gone and retries). A killed writer leaves the file, unlocked."""
        if self._fd is not None:
            try:
                if _same_file(self._fd, self.path):
                    self.path.unlink()
            except OSError:
                pass
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _read_holder(fd: int) -> dict:
    try:
        info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", errors="replace"))
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _holder_text(info: dict) -> str:
    def clean(v: Any) -> str:
        return "".join(c for c in str(v) if c.isprintable())[:80]

    if not info:
        return "another process"
    return f"pid {clean(info.get('pid'))} on {clean(info.get('host'))} (since {clean(info.get('started'))})"


def lock_holder(run_dir: Path) -> dict | None:
    """Who holds the run's lock ({} when the file says nothing readable), or None when nobody does."""
    import fcntl

    path = Path(run_dir) / LOCK
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError:
        return None  # no lock file: nobody took it (or a run from before the lock)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_holder(fd)
        except OSError as e:  # no locks on this filesystem: the writer may be alive
            return {} if e.errno in _NO_LOCKS else None
        return None
    finally:
        os.close(fd)  # also drops the probe's shared lock


class RunWriter:
    """Appends log lines (flushed one by one) and writes checkpoints and summaries atomically.

    Every OS error (disk full, the folder deleted, permissions) becomes a ``RunWriteError``
    naming the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files: dict[str, Any] = {}

    def _failed(self, name: str, e: OSError) -> RunWriteError:
        return RunWriteError(f"cannot write {self.path / name} ({_os_reason(e)})")

    def write_config(self, text: str) -> None:
        try:
            atomic_write(self.path / "config.yaml", text.encode())
        except OSError as e:
            raise self._failed("config.yaml", e) from None

    def append(self, log: str, record: dict) -> None:
        name = f"{log}.jsonl"
        try:
            f = self._files.get(log)
            if f is None:
                f = self._files[log] = safeio.open_append(self.path / name)
            f.write(dumps(record) + "\n")
            f.flush()  # a killed process keeps every finished line
        except OSError as e:
            raise self._failed(name, e) from None

    def checkpoint(self, arrays: dict[str, np.ndarray]) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        try:
            for f in self._files.values():
                os.fsync(f.fileno())  # logs up to the checkpoint are on disk before it is
            atomic_write(self.path / "checkpoint.npz", buf.getvalue())
        except OSError as e:
            raise self._failed("checkpoint.npz", e) from None

    def summary(self, data: dict) -> None:
        try:
            data["schema_version"] = SCHEMA_VERSION  # the caller's dict too: what --json prints is the file
            data = {"schema_version": SCHEMA_VERSION, **{k: v for k, v in data.items() if k != "schema_version"}}
            atomic_write(self.path / "summary.json", (json.dumps(_jsonable(data), indent=2) + "\n").encode())
        except OSError as e:
            raise self._failed("summary.json", e) from None

    def close(self) -> None:
        for f in self._files.values():
            try:
                f.close()
            except OSError:
                pass  # a failed flush was reported when it happened
        self._files.clear()


# -- reading back (untrusted: see safeio) -----------------------------------------------------
_NUM, _INT = opt("num"), "int"
# The documented shape of each log's records; keys a record must have are in LOG_REQUIRED.
LOG_SHAPES: dict[str, Any] = {
    "metrics": {"step": _INT, "update": _INT, "chunk": _INT, "loss": _NUM, "grad_norm": _NUM, "clipped_norm": _NUM,
                "clipped": opt("bool"), "grad_norms": opt(("map", _NUM)), "lr": _NUM, "time": _NUM, "k": opt(_INT), "beta": _NUM},
    "eval": ("map", _NUM),
    "diagnostics": {
        "step": _INT, "update": _INT,
        "flow": opt({"lags": ("list", _INT), "norms": ("list", _NUM), "decay_per_step": _NUM,
                     "halves_every": _NUM, "doubles_every": _NUM, "norms_c": opt(("list", _NUM)), "decay_per_step_c": _NUM}),
        "bias": opt({"cosine": _NUM, "rel_error": _NUM}),
        "spectrum": opt({"spectral_radius": _NUM, "saturated_share": _NUM, "gate": opt("str"), "gate_high": _NUM, "gate_low": _NUM}),
    },
}  # fmt: skip
LOG_REQUIRED = {"metrics": ("step",), "eval": ("step", "loss"), "diagnostics": ("step",)}
SUMMARY_SHAPE: dict[str, Any] = {
    "schema_version": opt(_INT), "status": "str", "name": opt("str"), "run_dir": opt("str"), "task": opt("str"), "truncation": opt("str"),
    "update_every": opt("str"), "clip": opt({"mode": opt("str"), "threshold": _NUM}), "optimizer": opt("str"),
    "seed": opt(_INT), "steps": opt(_INT), "batch_size": opt(_INT), "chance": opt(("map", _NUM)),
    "started": opt("str"), "resumed": opt(_INT), "env": opt(("map", opt("str"))), "steps_done": opt(_INT),
    "updates": opt(_INT), "sequences": opt(_INT), "final": opt(("map", _NUM)), "best": opt(("map", _NUM)),
    "diverged_at": opt({"step": opt(_INT), "update": opt(_INT), "what": opt("str"), "time": _NUM}),
    "target_reached": opt({"step": opt(_INT), "update": opt(_INT), "target": opt("str")}),
    "wall_time": _NUM, "updates_per_second": _NUM, "finished": opt("str"), "error": opt("str"),
    "diagnostics": opt(("map", _NUM)),
    "expectations": opt(("list", {"expect": req("str"), "metric": req("str"), "value": req(_NUM), "ok": req("bool")})),
    "data": opt("str"), "config_digest": opt("str"),
    "threads": opt({"count": opt(_INT), "source": opt("str"), "reason": opt("str")}),
    "cell": opt("str"), "k_range": opt(("list", opt(_INT))), "k_last": opt(_INT), "tracking": opt(("map", "any")),
    "evaluation": opt("str"),
}  # fmt: skip


def _check_record(rec: Any, log: str | None) -> str | None:
    if not isinstance(rec, dict):
        return "not an object with a 'step'"
    for key in LOG_REQUIRED.get(log or "", ("step",)):
        if key not in rec:
            return f"no {key!r}"
    if log in LOG_SHAPES:
        return safeio.check_shape(rec, LOG_SHAPES[log])
    return None if isinstance(rec.get("step"), int) and not isinstance(rec["step"], bool) else "'step' is not an integer"


def read_jsonl(path: Path, *, strict: bool = False) -> tuple[list[dict], list[str]]:
    """(records, problems). A torn last line (a run killed mid-write) is a problem, not an error;
    a malformed line elsewhere, or a record not of its log's documented shape, is named by file
    and line, and raises when ``strict``. A log that is not a regular file is one problem."""
    path = Path(path)
    records: list[dict] = []
    problems: list[str] = []
    if not os.path.lexists(path):
        return records, problems
    log = path.name[: -len(".jsonl")] if path.name.endswith(".jsonl") else None
    try:
        for i, raw, last in safeio.iter_lines(path):
            if raw is None:
                msg = f"{path.name}:{i}: malformed line (longer than {safeio.MAX_LINE:,} bytes)"
                if strict:
                    raise RunError(msg)
                problems.append(msg)
                continue
            line = raw.decode("utf-8", errors="replace")
            if not line.strip():
                continue
            try:
                rec = safeio.parse_json(line, f"{path.name}:{i}")
            except safeio.UnsafeFile as e:
                if last and not line.endswith("\n"):
                    problems.append(f"{path.name}:{i}: torn last line (ignored)")
                    continue
                msg = f"{path.name}:{i}: malformed line ({str(e).split(': ', 1)[-1]})"
                if strict:
                    raise RunError(msg) from None
                problems.append(msg)
                continue
            problem = _check_record(rec, log)
            if problem and last and not line.endswith("\n"):
                problems.append(f"{path.name}:{i}: torn last line (ignored)")
                continue
            if problem:
                msg = f"{path.name}:{i}: malformed line ({problem})"
                if strict:
                    raise RunError(msg)
                problems.append(msg)
                continue
            records.append(rec)
    except safeio.UnsafeFile as e:
        if strict:
            raise RunError(str(e)) from None
        problems.append(f"{path.name}{str(e).removeprefix(str(path))} (ignored)")
    return records, problems


def truncate_logs(path: Path, step: int) -> None:
    """Keep only log lines with ``step <= step`` (resume from a checkpoint taken at ``step``)."""
    for log in LOGS:
        p = path / f"{log}.jsonl"
        if not os.path.lexists(p):
            continue
        if not stat.S_ISREG(os.lstat(p).st_mode):
            raise RunError(f"{p} is not a regular file (a symlink, folder or device); the run cannot be resumed")
        records, _ = read_jsonl(p)
        kept = [r for r in records if r["step"] <= step]
        try:
            atomic_write(p, "".join(dumps(r) + "\n" for r in kept).encode())
        except OSError as e:
            raise RunError(f"cannot rewrite {p} ({_os_reason(e)})") from None


def last_record(path: Path) -> dict:
    """The last well-formed record of a JSONL log, or {}."""
    records, _ = read_jsonl(path)
    return records[-1] if records else {}


def step_losses(metrics: list[dict]) -> tuple[list[int], list[float]]:
    """(steps, mean loss of each step's logged updates): one point per training batch, so a
    chunk-update run (several updates per step) lines up with the others."""
    by_step: dict[int, list[float]] = {}
    for m in metrics:
        if m.get("loss") is not None:
            by_step.setdefault(m["step"], []).append(m["loss"])
    steps = sorted(by_step)
    return steps, [sum(by_step[s]) / len(by_step[s]) for s in steps]


def remove_temporaries(path: Path) -> None:
    """Delete temporary files left by an atomic write that a kill interrupted."""
    for p in Path(path).glob(".*.tmp"):
        if p.is_file() and not p.is_symlink():
            p.unlink(missing_ok=True)


@dataclass
class Run:
    """A run directory read back: plain data for rendering and scripts."""

    path: Path
    config: dict
    summary: dict
    metrics: list[dict] = field(default_factory=list)
    eval: list[dict] = field(default_factory=list)
    diagnostics: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")


def is_run_dir(path: Path) -> bool:
    """A folder with a config.yaml entry (of whatever type: ``load_run`` judges it)."""
    return os.path.lexists(Path(path) / "config.yaml") and Path(path).is_dir()


def read_summary(path: Path) -> tuple[dict, list[str]]:
    """(summary, problems) of a run directory: {} when there is none or it is not an object;
    keys whose value is not of the documented shape are dropped and named."""
    p = Path(path) / "summary.json"
    if not os.path.lexists(p):
        return {}, []
    try:
        data = safeio.read_json(p)
    except safeio.UnsafeFile as e:
        return {}, [f"summary.json{str(e).removeprefix(str(p))} (ignored)"]
    if not isinstance(data, dict):
        return {}, [f"summary.json: expected an object, got {safeio._describe(data)} (ignored)"]
    problems = []
    for key, shape in SUMMARY_SHAPE.items():
        if key in data:
            problem = safeio.check_shape(data[key], shape, key)
            if problem is None and key == "status" and data[key] not in STATUSES:
                problem = f"status: {data[key][:40]!r} is not one of {', '.join(STATUSES)}"
            if problem:
                problems.append(f"summary.json: {problem} (ignored)")
                del data[key]
    return data, problems


def read_config(path: Path) -> dict:
    """The config.yaml of a run directory as plain data, through the config package's safe
    loader (bounded YAML, validated); RunError naming the file when it is not a valid config."""
    from bptt_cli import config as cfgmod

    p = Path(path) / "config.yaml"
    try:
        safeio.read_text(p)  # a regular file (no FIFO, device or symlink), 1 MB at most, UTF-8, no control characters
        return cfgmod.to_dict(cfgmod.load_config(p))
    except BpttError as e:
        msg = str(e).splitlines()[0]
        raise RunError(msg if str(p) in msg else f"{p}: {msg}") from None
    except RecursionError:
        raise RunError(f"{p} is not a valid run config: nested too deeply") from None


def load_run(path: Path, *, logs: bool = True, config: bool = True) -> Run:
    """Read a run directory, also one that is still going or was killed.

    A summary that says ``running`` while nobody holds the run's lock belongs to a process that
    died: it reads back as ``crashed``, with the step and update of the last logged line.
    ``logs=False`` reads the summary (and config) only, with the last logged line of a crashed
    run read from the end of metrics.jsonl: what a listing of many runs needs, at a fraction
    of the cost. ``config=False`` also skips validating config.yaml ({} in its place)."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory ({'not a folder' if path.exists() else 'no such folder'})")
    if not is_run_dir(path):
        raise RunError(f"{path} is not a run directory (it has no config.yaml)")
    summary, problems = read_summary(path)
    run = Run(path, read_config(path) if config else {}, summary, problems=problems)
    if logs:
        for log in LOGS:
            records, probs = read_jsonl(path / f"{log}.jsonl")
            setattr(run, log, records)
            run.problems.extend(probs)
    if summary.get("status") == "running" and lock_holder(path) is None:
        last = (run.metrics[-1] if run.metrics else {}) if logs else _last_line(path / "metrics.jsonl")
        steps = max((m["step"] for m in run.metrics), default=0) if logs else last.get("step", 0)
        summary.update(status="crashed", steps_done=steps, updates=last.get("update", 0))
        run.problems.append(
            f"the process writing this run is gone (summary.json still said running); last logged step "
            f"{summary['steps_done']}. Continue with: bptt train --resume {path}"
        )
    return run


def _last_line(path: Path, tail: int = 65536) -> dict:
    """The last well-formed record among the final ``tail`` bytes of a JSONL log, or {}."""
    try:
        with safeio.open_regular(path) as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - tail))
            lines = f.read().split(b"\n")
    except (OSError, safeio.UnsafeFile):
        return {}
    for raw in reversed(lines[1:] if len(lines) > 1 else lines):
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if isinstance(rec, dict) and _check_record(rec, "metrics") is None:
            return rec
    return {}


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (itself included), sorted by path."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        raise RunError(f"{root} is not a folder")
    try:
        return sorted(p.parent for p in root.rglob("config.yaml") if p.parent != root and p.parent.is_dir())
    except OSError as e:
        raise RunError(f"cannot list {root} ({_os_reason(e)})") from None


def load_checkpoint(path: Path, *, cap: int = safeio.NPZ_CAP) -> dict[str, np.ndarray]:
    """The arrays of ``path/checkpoint.npz``, checked before loading (names, dtypes, sizes
    against ``cap`` bytes; never pickles)."""
    p = Path(path) / "checkpoint.npz"
    if not os.path.lexists(p):
        raise RunError(f"{path} has no checkpoint.npz to resume from")
    try:
        return safeio.load_npz(p, cap=cap)
    except safeio.UnsafeFile as e:
        raise RunError(f"{p} is unreadable: {str(e).removeprefix(str(p)).lstrip(': ')}; the run cannot be resumed from it") from None


def environment() -> dict[str, str | None]:
    """Versions of Python and numpy, and the project's git commit when available."""
    import platform
    import subprocess

    import bptt_cli

    commit = None
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(bptt_cli.__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
        )
        if out.returncode == 0:
            commit = out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"python": platform.python_version(), "numpy": np.__version__, "bptt": bptt_cli.__version__, "git_commit": commit}
