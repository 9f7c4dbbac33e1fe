"""The run directory: create it, append logs, write checkpoints and summaries, read it back.

    runs/<name>/<UTC timestamp>-<id>/
        config.yaml        the fully resolved config, written before training starts
        metrics.jsonl      one object per logged optimizer update (append-only, flushed per line)
        eval.jsonl         held-out metrics every train.eval_every steps
        diagnostics.jsonl  gradient flow, truncation bias, spectrum (when enabled)
        checkpoint.npz     parameters, optimizer state, counters, hidden state (atomic)
        summary.json       status RUNNING -> completed | diverged | interrupted | failed (atomic)

Every log line carries an explicit ``step``. Lines are never rewritten while a run goes on;
``truncate_logs`` (used by resume) keeps the lines up to the checkpoint's step and drops
the rest, a torn last line included, in one atomic replace per file.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import tempfile
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from bptt_cli.core.errors import BpttError

LOGS = ("metrics", "eval", "diagnostics")
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")


class RunError(BpttError, ValueError):
    """A run directory is missing, malformed or not allowed here."""


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


def dumps(record: dict) -> str:
    return json.dumps(_jsonable(record), separators=(",", ":"), allow_nan=False)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def new_run_dir(root: Path, name: str) -> Path:
    """Create ``root/name/<UTC timestamp>-<id>`` exclusively; never reuses an existing folder."""
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for _ in range(100):
        path = parent / f"{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RunError(f"could not create a new run directory under {parent}")  # pragma: no cover


def claim_run_dir(path: Path) -> Path:
    """Use ``path`` for a new run: it must not exist or be an empty folder."""
    path = Path(path)
    if path.exists():
        if not path.is_dir():
            raise RunError(f"--run-dir {path} exists and is not a folder")
        if any(path.iterdir()):
            raise RunError(f"--run-dir {path} is not empty; pick a new folder, or use --resume {path} to continue it")
    path.mkdir(parents=True, exist_ok=True)
    return path


class RunWriter:
    """Appends log lines (flushed one by one) and writes checkpoints and summaries atomically."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._files: dict[str, Any] = {}

    def write_config(self, text: str) -> None:
        atomic_write(self.path / "config.yaml", text.encode())

    def append(self, log: str, record: dict) -> None:
        f = self._files.get(log)
        if f is None:
            f = self._files[log] = open(self.path / f"{log}.jsonl", "a", encoding="utf-8")
        f.write(dumps(record) + "\n")
        f.flush()  # a killed process keeps every finished line

    def checkpoint(self, arrays: dict[str, np.ndarray]) -> None:
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        for f in self._files.values():
            os.fsync(f.fileno())  # logs up to the checkpoint are on disk before it is
        atomic_write(self.path / "checkpoint.npz", buf.getvalue())

    def summary(self, data: dict) -> None:
        atomic_write(self.path / "summary.json", (json.dumps(_jsonable(data), indent=2) + "\n").encode())

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()


def read_jsonl(path: Path, *, strict: bool = False) -> tuple[list[dict], list[str]]:
    """(records, problems). A torn last line (a run killed mid-write) is a problem, not an error;
    a malformed line elsewhere is named by file and line, and raises when ``strict``."""
    records: list[dict] = []
    problems: list[str] = []
    if not path.exists():
        return records, problems
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n")
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            if not isinstance(rec, dict) or "step" not in rec:
                raise ValueError("not an object with a 'step'")
        except ValueError as e:
            last = i == len(lines) or (i == len(lines) - 1 and lines[-1] == "")
            msg = f"{path.name}:{i}: {'torn last line (ignored)' if last else f'malformed line ({e})'}"
            if strict and not last:
                raise RunError(msg) from None
            problems.append(msg)
            continue
        records.append(rec)
    return records, problems


def truncate_logs(path: Path, step: int) -> None:
    """Keep only log lines with ``step <= step`` (resume from a checkpoint taken at ``step``)."""
    for log in LOGS:
        p = path / f"{log}.jsonl"
        if not p.exists():
            continue
        records, _ = read_jsonl(p)
        kept = [r for r in records if r["step"] <= step]
        atomic_write(p, "".join(dumps(r) + "\n" for r in kept).encode())


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
    return (Path(path) / "config.yaml").is_file()


def load_run(path: Path) -> Run:
    """Read a run directory, also one that is still going or was killed."""
    import yaml

    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path} is not a run directory (no such folder)")
    if not is_run_dir(path):
        raise RunError(f"{path} is not a run directory (it has no config.yaml)")
    try:
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise RunError(f"{path / 'config.yaml'} is not valid YAML: {e}") from None
    summary: dict = {}
    problems: list[str] = []
    if (path / "summary.json").exists():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except ValueError as e:
            problems.append(f"summary.json: unreadable ({e})")
    run = Run(path, config, summary, problems=problems)
    for log in LOGS:
        records, probs = read_jsonl(path / f"{log}.jsonl")
        setattr(run, log, records)
        run.problems.extend(probs)
    return run


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (itself included), sorted by path."""
    root = Path(root)
    if is_run_dir(root):
        return [root]
    if not root.is_dir():
        raise RunError(f"{root} is not a folder")
    return sorted(p.parent for p in root.rglob("config.yaml") if p.parent != root)


def load_checkpoint(path: Path) -> dict[str, np.ndarray]:
    p = Path(path) / "checkpoint.npz"
    if not p.exists():
        raise RunError(f"{path} has no checkpoint.npz to resume from")
    try:
        with np.load(p, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise RunError(f"{p} is unreadable ({e}); the run cannot be resumed from it") from None


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
