"""The run directory (``bptt_cli.runs``): atomic writes, append-only logs read back with torn
and malformed lines named, truncation for resume, claiming and finding run directories."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt_cli import runs
from bptt_cli.runs import RunError


def _write_lines(path: Path, records: list[dict], tail: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + tail, encoding="utf-8")


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


# -- atomic writes --------------------------------------------------------------------------
def test_atomic_write_replaces_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "summary.json"
    runs.atomic_write(target, b"first")
    runs.atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert _leftovers(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_atomic_write_that_fails_keeps_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.npz"
    runs.atomic_write(target, b"old")

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(runs.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        runs.atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert _leftovers(tmp_path) == []


def test_writer_checkpoint_and_summary_are_atomic_and_readable(tmp_path):
    w = runs.RunWriter(tmp_path)
    arrays = {"param/W_hh": np.eye(3, dtype=np.float32), "step": np.array(7, dtype=np.int64)}
    w.checkpoint(arrays)
    w.summary({"status": "running", "loss": float("nan"), "n": np.int64(3), "ok": np.bool_(True)})
    w.close()
    assert _leftovers(tmp_path) == []
    back = runs.load_checkpoint(tmp_path)
    assert set(back) == set(arrays)
    np.testing.assert_array_equal(back["param/W_hh"], arrays["param/W_hh"])
    assert int(back["step"]) == 7
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"schema_version": runs.SCHEMA_VERSION, "status": "running", "loss": None, "n": 3, "ok": True}  # NaN is written as null


def test_writer_appends_are_flushed_line_by_line(tmp_path):
    w = runs.RunWriter(tmp_path)
    w.append("metrics", {"step": 1, "loss": 1.5})
    # Read while the file is still open: a killed process keeps every finished line.
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step":1,"loss":1.5}\n'
    w.append("metrics", {"step": 2, "loss": float("inf"), "g": np.float32(0.5)})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == [{"step": 1, "loss": 1.5}, {"step": 2, "loss": None, "g": 0.5}]
    w.close()


def test_dumps_writes_strict_json():
    text = runs.dumps({"step": 1, "a": float("nan"), "b": [np.float64("-inf"), 2], "c": np.arange(2)})
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"step": 1, "a": None, "b": [None, 2], "c": [0, 1]}


# -- reading logs back ------------------------------------------------------------------------
def test_read_jsonl_of_a_missing_file_is_empty(tmp_path):
    assert runs.read_jsonl(tmp_path / "eval.jsonl") == ([], [])


def test_read_jsonl_reports_a_torn_last_line_as_a_problem(tmp_path):
    p = tmp_path / "metrics.jsonl"
    _write_lines(p, [{"step": 1}, {"step": 2}], tail='{"step": 3, "lo')
    for strict in (False, True):  # a torn tail is what a kill leaves: never an error
        records, problems = runs.read_jsonl(p, strict=strict)
        assert [r["step"] for r in records] == [1, 2]
        assert len(problems) == 1
        assert problems[0].startswith("metrics.jsonl:3:") and "torn" in problems[0]


def test_read_jsonl_names_a_malformed_middle_line_by_file_and_line(tmp_path):
    p = tmp_path / "eval.jsonl"
    p.write_text('{"step": 1, "loss": 1.0}\nnot json\n{"step": 3, "loss": 0.5}\n', encoding="utf-8")
    records, problems = runs.read_jsonl(p)
    assert [r["step"] for r in records] == [1, 3]
    assert len(problems) == 1 and problems[0].startswith("eval.jsonl:2: malformed")
    with pytest.raises(RunError, match=r"eval\.jsonl:2: malformed"):
        runs.read_jsonl(p, strict=True)


def test_read_jsonl_refuses_records_without_a_step(tmp_path):
    p = tmp_path / "metrics.jsonl"
    p.write_text('{"loss": 1}\n[1, 2]\n{"step": 1}\n', encoding="utf-8")
    records, problems = runs.read_jsonl(p)
    assert records == [{"step": 1}]
    assert [q.split(":")[1] for q in problems] == ["1", "2"]
    with pytest.raises(RunError, match=r"metrics\.jsonl:1:"):
        runs.read_jsonl(p, strict=True)


def test_truncate_logs_keeps_steps_up_to_the_checkpoint_and_drops_a_torn_line(tmp_path):
    _write_lines(tmp_path / "metrics.jsonl", [{"step": s, "update": s} for s in range(1, 8)], tail='{"step": 8, "up')
    _write_lines(tmp_path / "eval.jsonl", [{"step": s, "loss": 1.0} for s in (2, 4, 6)])
    runs.truncate_logs(tmp_path, 4)
    metrics, problems = runs.read_jsonl(tmp_path / "metrics.jsonl", strict=True)
    assert problems == []
    assert [r["step"] for r in metrics] == [1, 2, 3, 4]
    assert [r["step"] for r in runs.read_jsonl(tmp_path / "eval.jsonl")[0]] == [2, 4]
    assert not (tmp_path / "diagnostics.jsonl").exists()  # logs that never existed are not created
    assert _leftovers(tmp_path) == []


@settings(max_examples=60, deadline=None)
@given(
    steps=st.lists(st.integers(0, 30), max_size=25),
    keep=st.integers(0, 30),
    torn=st.text(alphabet='{}"step:0123456789, ', max_size=12),
)
def test_truncate_logs_keeps_exactly_the_lines_at_or_before_the_step(steps, keep, torn):
    records = [{"step": s, "i": i} for i, s in enumerate(sorted(steps))]
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        tail = "" if not torn.strip() or _is_record(torn) else torn  # a torn tail, never a whole line
        _write_lines(folder / "metrics.jsonl", records, tail=tail)
        runs.truncate_logs(folder, keep)
        back, problems = runs.read_jsonl(folder / "metrics.jsonl", strict=True)
        assert problems == []
        assert back == [r for r in records if r["step"] <= keep]
        assert (folder / "metrics.jsonl").read_text().endswith("\n") or not back


def _is_record(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict) and "step" in json.loads(text)
    except ValueError:
        return False


# -- run directories --------------------------------------------------------------------------
def test_new_run_dir_never_reuses_a_folder_within_one_second(tmp_path):
    made = [runs.new_run_dir(tmp_path, "same") for _ in range(30)]
    assert len(set(made)) == 30
    for p in made:
        assert p.is_dir() and not any(p.iterdir())
        assert p.parent == tmp_path / "same"
        assert re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f]{6}", p.name), p.name


def test_claim_run_dir_takes_a_new_or_empty_folder(tmp_path):
    assert runs.claim_run_dir(tmp_path / "a" / "b").is_dir()  # created with its parents
    (tmp_path / "empty").mkdir()
    assert runs.claim_run_dir(tmp_path / "empty") == tmp_path / "empty"


def test_claim_run_dir_refuses_a_non_empty_folder_and_a_file(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("keep me")
    with pytest.raises(RunError, match="not empty"):
        runs.claim_run_dir(full)
    assert (full / "notes.txt").read_text() == "keep me"
    (tmp_path / "file").write_text("x")
    with pytest.raises(RunError, match="not a folder"):
        runs.claim_run_dir(tmp_path / "file")


def _fake_run(path: Path, **summary) -> Path:
    path.mkdir(parents=True)
    (path / "config.yaml").write_text("name: x\n")
    if summary:
        (path / "summary.json").write_text(json.dumps(summary))
    return path


def test_find_runs_finds_nested_run_directories_sorted(tmp_path):
    b = _fake_run(tmp_path / "beta" / "20240101T000000Z-bbbbbb")
    a = _fake_run(tmp_path / "alpha" / "20240101T000000Z-aaaaaa")
    (tmp_path / "alpha" / "not-a-run").mkdir()
    assert runs.find_runs(tmp_path) == [a, b]
    assert runs.find_runs(a) == [a]  # a run directory is its own list
    assert runs.find_runs(tmp_path / "alpha" / "not-a-run") == []
    with pytest.raises(RunError, match="not a folder"):
        runs.find_runs(tmp_path / "missing")


def test_load_run_reads_a_killed_run_and_names_its_problems(tmp_path):
    run = _fake_run(tmp_path / "r", status="running")
    _write_lines(run / "metrics.jsonl", [{"step": 1}, {"step": 2}], tail='{"st')
    loaded = runs.load_run(run)
    assert loaded.status == "crashed"  # nobody holds its lock: the writer died
    assert loaded.summary["steps_done"] == 2
    assert [m["step"] for m in loaded.metrics] == [1, 2]
    assert loaded.eval == [] and loaded.diagnostics == []
    assert any("metrics.jsonl:3" in p and "torn" in p for p in loaded.problems)
    assert any("bptt train --resume" in p for p in loaded.problems)


def test_a_run_whose_writer_holds_the_lock_reads_as_running(tmp_path):
    run = _fake_run(tmp_path / "r", status="running")
    with runs.RunLock(run):
        assert runs.load_run(run).status == "running"
        holder = runs.lock_holder(run)
        assert holder is not None and holder["pid"] == os.getpid()
        with pytest.raises(runs.RunBusy, match=f"pid {os.getpid()}"):
            runs.RunLock(run).acquire(tries=1)
    assert runs.lock_holder(run) is None
    assert runs.load_run(run).status == "crashed"
    runs.RunLock(run).acquire().release()  # free again after its holder let go


def test_load_run_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        runs.load_run(tmp_path)
    with pytest.raises(RunError, match="no such folder"):
        runs.load_run(tmp_path / "missing")


def test_load_checkpoint_of_a_missing_or_pickled_file_is_a_run_error(tmp_path):
    with pytest.raises(RunError, match="no checkpoint"):
        runs.load_checkpoint(tmp_path)
    np.save(tmp_path / "checkpoint.npz", np.array([{"a": 1}], dtype=object))  # pickled data is refused
    (tmp_path / "checkpoint.npz.npy").rename(tmp_path / "checkpoint.npz")
    with pytest.raises(RunError, match="unreadable"):
        runs.load_checkpoint(tmp_path)


def test_load_checkpoint_of_a_corrupt_zip_is_a_run_error(tmp_path):
    (tmp_path / "checkpoint.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(RunError, match="unreadable"):
        runs.load_checkpoint(tmp_path)


def test_environment_names_python_and_numpy_versions():
    env = runs.environment()
    assert env["numpy"] == np.__version__
    assert re.fullmatch(r"3\.\d+\.\d+.*", env["python"])
    assert env["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}", env["git_commit"])
    assert all(v is None or isinstance(v, str) for v in env.values())


def test_load_checkpoint_checks_sizes_against_the_cap_before_loading(tmp_path):
    w = runs.RunWriter(tmp_path)
    w.checkpoint({"param/W_hh": np.zeros((64, 64)), "step": np.array(3)})
    assert runs.load_checkpoint(tmp_path, cap=64 * 64 * 8 + 8)["param/W_hh"].shape == (64, 64)
    with pytest.raises(RunError, match="more than the 16,384 allowed"):
        runs.load_checkpoint(tmp_path, cap=16 * 1024)  # refused from the zip directory, before unpacking
    (tmp_path / "checkpoint.npz").write_bytes(b"\0" * (3 << 20))
    with pytest.raises(RunError, match="more than a checkpoint of this run can be"):
        runs.load_checkpoint(tmp_path, cap=1024)


def test_safeio_check_shape_names_the_first_key_that_is_wrong():
    from bptt_cli.safeio import check_shape, opt

    shape = {"step": "int", "flow": opt({"norms": ("list", opt("num"))})}
    assert check_shape({"step": 1, "flow": {"norms": [1.0, None]}}, shape) is None
    assert check_shape({"step": True}, shape) == "step: expected an integer, got a boolean"
    assert check_shape({"step": 1, "flow": {"norms": [1, "x"]}}, shape) == "flow.norms[1]: expected a number or null, got the string 'x'"
    assert check_shape([], shape) == "expected an object, got a list"


def test_a_filesystem_without_locks_runs_unguarded_and_never_reads_as_crashed(tmp_path, monkeypatch):
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = _fake_run(tmp_path / "r", status="running")
    with runs.RunLock(run):
        assert runs.lock_holder(run) == {}
        assert runs.load_run(run).status == "running"  # cannot tell whether it died: keep what the summary says


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", ""])
def test_new_run_dir_keeps_the_run_under_its_root(tmp_path, name):
    root = tmp_path / "root"
    with pytest.raises(RunError, match="one folder name"):
        runs.new_run_dir(root, name)
    assert not root.exists() and sorted(p.name for p in tmp_path.iterdir()) == []
