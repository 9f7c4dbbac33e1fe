"""Fixtures shared by the CLI, run-directory, trainer and resume tests: a config small enough
to train in a fraction of a second, a CliRunner call, and logs read back without time fields."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest
from typer.testing import CliRunner

# A delay task small enough that a run of a few steps takes milliseconds. delay 2 < the
# tbptt chunk K1 = 4 used in the tests, so every chunk carries a loss (none is skipped).
SMALL_TRAIN = (
    "model.hidden=8",
    "train.batch_size=4",
    "train.eval_size=16",
    "train.steps=8",
    "train.eval_every=4",
)
SMALL = (*SMALL_TRAIN, "task.length=12", "task.delay=2")
# The stateful text task on a short generated corpus (its hidden state carries across steps).
SMALL_TEXT = (*SMALL_TRAIN, "task.name=text", "task.length=10", "task.n_sentences=80")

TIME_KEYS = ("time",)


@pytest.fixture(autouse=True)
def _private_text_cache(tmp_path_factory, monkeypatch):
    """The text task caches encoded corpora (``BPTT_CACHE_DIR``, else ~/.cache/bptt): tests
    keep theirs in one temporary folder per session, never in the user's home."""
    monkeypatch.setenv("BPTT_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "bptt-cache"))


@pytest.fixture
def small() -> list[str]:
    """``--set`` overrides (also ``load_config`` overrides) for a tiny, fast run."""
    return list(SMALL)


@pytest.fixture
def invoke() -> Callable:
    """Run ``bptt ARGS...`` in process. COLUMNS is wide so the stderr console (sized by it) does not
    wrap messages; stdout off a terminal has a fixed width of its own (see cli.py)."""
    from bptt_cli.cli import app

    runner = CliRunner()

    def run(*args, env: dict | None = None):
        return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "250", **(env or {})})

    return run


def strip_time(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIME_KEYS} for r in records]


def read_logs(run_dir: Path) -> dict[str, list[dict]]:
    """{"metrics": [...], "eval": [...], "diagnostics": [...]} of a run, time fields dropped; any
    malformed or torn line fails the test."""
    from bptt_cli import runs

    out = {}
    for log in runs.LOGS:
        records, problems = runs.read_jsonl(Path(run_dir) / f"{log}.jsonl", strict=True)
        assert problems == [], problems
        out[log] = strip_time(records)
    return out


def sets(*overrides: str) -> list[str]:
    """``--set`` arguments for each override."""
    return [a for s in overrides for a in ("--set", s)]


def stderr_of(result) -> str:
    """stderr alone where Click keeps it apart (8.2+), else the mixed output."""
    try:
        return result.stderr
    except ValueError:
        return result.output


def one_line(text: str) -> str:
    """Rich wraps long messages at the console width; compare them with whitespace collapsed."""
    return " ".join(text.split())
