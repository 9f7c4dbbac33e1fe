"""Hostile run directories: every file bptt reads back is untrusted, every path may be wrong,
two processes may reach for one run, a process may die at any moment.

Each case asserts the exit code, ONE message line on stderr (besides the ``run: DIR`` line of
``train``), no traceback, and that nothing outside the temporary run root was created,
changed or deleted. Cases that could hang (FIFOs, bombs) or need real processes (kills,
concurrent writers, umask, unwritable folders) run ``bptt`` in a subprocess with a 20 s
timeout that fails the test; the others run in process, which is faster.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from bptt_cli import runs, safeio
from bptt_cli.config import load_config
from bptt_cli.session import execute

from conftest import SMALL, SMALL_TEXT  # noqa: E402  (tests/ is on sys.path under pytest)
from test_resume import LONG, assert_same_run, lines_in, reference_run, start, stop_after, wait_for  # noqa: E402

HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="bptt plot needs the plot extra (matplotlib)")

TIMEOUT = 20


# -- the world of one test: a run root, a folder outside it, a checker -----------------------------
def _tree(top: Path, skip: Path) -> dict[str, tuple]:
    """Every entry under ``top`` but ``skip``: type, and the content hash of files and link targets."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        d = Path(dirpath)
        if d == skip or skip in d.parents:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            p = d / name
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[str(p)] = ("link", os.readlink(p))
            elif stat.S_ISREG(st.st_mode):
                out[str(p)] = ("file", hashlib.sha256(p.read_bytes()).hexdigest(), stat.S_IMODE(st.st_mode))
            else:
                out[str(p)] = ("other", stat.S_IFMT(st.st_mode))
    return out


class World:
    def __init__(self, tmp: Path, base: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "root"  # --runs-root and working directory of every call
        self.outside = tmp / "outside"
        self.root.mkdir()
        self.outside.mkdir()
        self.precious = self.outside / "precious.txt"
        self.precious.write_text("keep me\n")
        self.run = self.root / "exp" / "run1"
        shutil.copytree(base, self.run)

    def bptt(self, *args, sub: bool = False, cwd: Path | None = None, umask: int = -1, invoke=None):
        """Run ``bptt ARGS``; assert nothing outside the run root changed. Returns
        (exit code, stdout, stderr)."""
        before = _tree(self.tmp, self.root)
        if sub:
            try:
                p = subprocess.run(
                    [sys.executable, "-m", "bptt_cli", *map(str, args)],
                    cwd=cwd or self.root, capture_output=True, text=True, timeout=TIMEOUT,
                    env={**os.environ, "COLUMNS": "250"}, umask=umask,
                )  # fmt: skip
            except subprocess.TimeoutExpired:
                pytest.fail(f"bptt {' '.join(map(str, args))} hung for {TIMEOUT} s")
            code, out, err = p.returncode, p.stdout, p.stderr
        else:
            old = Path.cwd()
            os.chdir(cwd or self.root)
            try:
                r = invoke(*args)
            finally:
                os.chdir(old)
            if r.exception is not None and not isinstance(r.exception, SystemExit):
                import traceback

                pytest.fail("".join(traceback.format_exception(r.exception)))
            code, out, err = r.exit_code, r.stdout, r.stderr
        assert _tree(self.tmp, self.root) == before, "something outside the run root changed"
        assert self.precious.read_text() == "keep me\n"
        assert "Traceback" not in out + err
        return code, out, err


def messages(err: str) -> list[str]:
    """stderr lines but the ``run: DIR`` announcement of train."""
    return [line for line in err.splitlines() if line.strip() and not line.startswith("run: ")]


def one_error(code: int, err: str, want_code: int, *fragments: str) -> str:
    msgs = messages(err)
    assert code == want_code, err
    assert len(msgs) == 1, msgs
    assert msgs[0].startswith("error: "), msgs
    for f in fragments:
        assert f in msgs[0], (f, msgs[0])
    return msgs[0]


@pytest.fixture(scope="module")
def base_run(tmp_path_factory) -> Path:
    """A small run stopped at step 4 of 8: readable, showable and resumable."""
    d = tmp_path_factory.mktemp("base") / "run"
    d.mkdir()
    s = execute(load_config(None, list(SMALL)), d, stop=stop_after(4))
    assert s["status"] == "interrupted" and s["steps_done"] == 4
    return d


@pytest.fixture
def w(tmp_path, base_run) -> World:
    return World(tmp_path, base_run)


# -- corrupted summary.json: show/runs flag it and go on ---------------------------------------------
SUMMARIES = {
    "null": "null",
    "list": "[]",
    "string": '"running"',
    "number": "42",
    "diverged_at-string": '{"status": "diverged", "diverged_at": "step 3"}',
    "steps-text": '{"status": "running", "steps": "many", "steps_done": "x"}',
    "final-list": '{"status": "completed", "final": [1, 2]}',
    "status-unknown": '{"status": "exploded"}',
    "error-number": '{"status": "failed", "error": 7}',
    "expectations-garbage": '{"status": "completed", "expectations": [1, "a"]}',
    "expectations-empty": '{"status": "completed", "expectations": [{}]}',
    "clip-string": '{"status": "completed", "clip": "global_norm"}',
    "escape-codes": '{"status": "completed", "name": "\\u001b[2J\\u001b[31mowned"}',
    "not-json": "{status: completed",
    "nan": '{"status": "completed", "wall_time": NaN}',
    "deep": "[" * 100_000 + "]" * 100_000,
    "markup": '{"status": "completed", "name": "[/]", "task": "[/x]", "truncation": "[bold]k"}',
}


@pytest.mark.parametrize("damage", list(SUMMARIES), ids=list(SUMMARIES))
def test_a_corrupted_summary_is_flagged_by_show_and_runs(w, invoke, damage):
    (w.run / "summary.json").write_text(SUMMARIES[damage])
    code, out, err = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and messages(err) == [], err
    if damage == "markup":  # names read from a run print as they are, never as rich markup
        assert "[/x]" in out
    else:
        assert "summary.json" in out and "note:" in out
    assert "\x1b[2J" not in out
    code, out, err = w.bptt("show", "--json", w.run, invoke=invoke)
    assert code == 0 and isinstance(json.loads(out), dict)
    code, out, err = w.bptt("runs", w.root, invoke=invoke)
    assert code == 0 and messages(err) == [] and "run1" in out


def test_a_huge_summary_is_refused_without_reading_it(w, invoke):
    (w.run / "summary.json").write_bytes(b" " * (safeio.MAX_SMALL + 1))
    code, out, _ = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and "summary.json is 1,000,001 bytes, more than the 1,000,000 allowed" in " ".join(out.split())


def test_train_resume_with_a_summary_that_is_a_list_resumes(w, invoke):
    (w.run / "summary.json").write_text("[]")
    code, _, err = w.bptt("train", "--resume", w.run, "-q", invoke=invoke)
    assert code == 0 and messages(err) == [], err
    assert json.loads((w.run / "summary.json").read_text())["steps_done"] == 8


# -- corrupted config.yaml: show refuses it by name, runs skips it and lists the rest ------------------
CONFIGS = {
    "list": b"- a\n- b\n",
    "not-utf8": b"name: \xff\xfe\n",
    "nul": b"name: a\x00b\n",
    "escape": b"name: \x1b[31mred\n",
    "unknown-key": b"name: x\nmodel: {hiden: 8}\n",
    "huge": b"name: x\n" + b"#" * safeio.MAX_SMALL,
    "deep": b"a: " + b"[" * 20_000 + b"]" * 20_000 + b"\n",
}


@pytest.mark.parametrize("damage", list(CONFIGS), ids=list(CONFIGS))
def test_a_corrupted_config_is_one_message_and_runs_goes_on(w, invoke, damage, base_run):
    shutil.copytree(base_run, w.root / "exp" / "run2")
    (w.run / "config.yaml").write_bytes(CONFIGS[damage])
    code, _, err = w.bptt("show", w.run, invoke=invoke)
    one_error(code, err, 2, "config.yaml")
    code, out, err = w.bptt("runs", w.root, invoke=invoke)
    assert code == 0, err
    assert "run2" in out and "run1" not in out
    assert len(messages(err)) == 1 and messages(err)[0].startswith("skipping ") and "config.yaml" in err
    code, _, err = w.bptt("train", "--resume", w.run, invoke=invoke)
    one_error(code, err, 2, "config.yaml")


def test_a_yaml_alias_bomb_as_run_config_ends_quickly(w):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + prev] * 9)}]")
    (w.run / "config.yaml").write_text("\n".join(lines) + "\n")
    code, _, err = w.bptt("show", w.run, sub=True)
    one_error(code, err, 2, "config.yaml")


def test_a_fifo_as_config_does_not_hang_any_reader(w, base_run):
    shutil.copytree(base_run, w.root / "exp" / "run2")
    (w.run / "config.yaml").unlink()
    os.mkfifo(w.run / "config.yaml")
    code, _, err = w.bptt("show", w.run, sub=True)
    one_error(code, err, 2, "config.yaml", "FIFO")
    code, out, err = w.bptt("runs", w.root, sub=True)
    assert code == 0 and len(messages(err)) == 1 and "FIFO" in err
    assert "run2" in out


def test_a_fifo_as_summary_or_log_is_flagged_not_waited_on(w):
    for name in ("summary.json", "eval.jsonl"):
        (w.run / name).unlink(missing_ok=True)
        os.mkfifo(w.run / name)
    code, out, err = w.bptt("show", w.run, sub=True)
    assert code == 0 and messages(err) == [], err
    assert "FIFO" in out


def test_a_config_symlinked_to_a_device_is_refused(w, invoke):
    (w.run / "config.yaml").unlink()
    (w.run / "config.yaml").symlink_to("/dev/zero")
    code, _, err = w.bptt("show", w.run, invoke=invoke)
    one_error(code, err, 2, "config.yaml", "symlink")


# -- corrupted logs ----------------------------------------------------------------------------------
def test_metrics_that_is_a_directory_is_flagged_and_resume_refuses(w, invoke):
    (w.run / "metrics.jsonl").unlink()
    (w.run / "metrics.jsonl").mkdir()
    code, out, err = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and messages(err) == [] and "metrics.jsonl" in out and "directory" in out
    code, _, err = w.bptt("train", "--resume", w.run, invoke=invoke)
    one_error(code, err, 2, "metrics.jsonl", "not a regular file")


@pytest.mark.parametrize(
    "log,line",
    [
        ("eval.jsonl", '{"step": 4, "update": 4, "accuracy": 0.5}'),  # no loss
        ("eval.jsonl", '{"step": 4, "loss": "low"}'),
        ("metrics.jsonl", '{"step": "four", "loss": 1.0}'),
        ("metrics.jsonl", '{"step": true, "loss": 1.0}'),
        ("metrics.jsonl", '{"step": 3, "grad_norm": "big"}'),
        ("diagnostics.jsonl", '{"step": 1, "flow": {"lags": [0, 1], "norms": ["a", "b"]}}'),
        ("diagnostics.jsonl", '{"step": 1, "bias": "yes"}'),
        ("metrics.jsonl", '{"step": 3, "note": "\\u001b[2J"}'),
    ],
    ids=["eval-no-loss", "eval-loss-text", "step-text", "step-bool", "grad-norm-text", "flow-text", "bias-text", "escape"],
)
def test_a_malformed_log_line_is_named_and_skipped_by_show_and_plot(w, invoke, log, line):
    with open(w.run / log, "a") as f:
        f.write(line + "\n" + '{"step": 4, "update": 4, "loss": 1.0}\n')
    code, out, err = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and messages(err) == [], err
    assert f"{log}:" in out and "malformed" in out
    if HAS_MATPLOTLIB:  # bptt plot needs the plot extra
        code, _, err = w.bptt("plot", w.run, invoke=invoke)
        assert code == 0 and messages(err)[0].startswith("wrote"), err


def test_an_overlong_log_line_is_skipped_in_bounded_memory(w, invoke):
    with open(w.run / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "x": "' + "a" * (safeio.MAX_LINE + 10) + '"}\n')
    code, out, err = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and "longer than" in " ".join(out.split())


def test_a_symlinked_log_is_neither_read_nor_written_through(w, invoke):
    (w.run / "metrics.jsonl").unlink()
    (w.run / "metrics.jsonl").symlink_to(w.precious)
    code, out, err = w.bptt("show", w.run, invoke=invoke)
    assert code == 0 and "symlink" in out
    code, _, err = w.bptt("train", "--resume", w.run, invoke=invoke)
    one_error(code, err, 2, "metrics.jsonl")


def test_a_symlinked_error_log_is_replaced_not_written_through(w, invoke, monkeypatch):
    from bptt_cli.trainer import Trainer

    (w.run / "error.log").symlink_to(w.precious)

    def broken(self, state):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr(Trainer, "run", broken)
    code, _, err = w.bptt("train", "--resume", w.run, invoke=invoke)
    one_error(code, err, 1, "RuntimeError: boom", "error.log")
    assert not (w.run / "error.log").is_symlink() and "boom" in (w.run / "error.log").read_text()
    s = json.loads((w.run / "summary.json").read_text())
    assert s["status"] == "failed" and "boom" in s["error"]


# -- checkpoints ---------------------------------------------------------------------------------
def _npz(members: dict[str, bytes], compress: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npy_header(shape, descr="<f8") -> bytes:
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": descr, "fortran_order": False, "shape": shape})
    return b.getvalue()


def _resume_refused(w, invoke, *fragments, sub=False):
    before = {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file()}
    code, _, err = w.bptt("train", "--resume", w.run, sub=sub, invoke=invoke)
    msg = one_error(code, err, 2, *fragments)
    after = {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file()}
    assert after == before, "a refused resume changed the run"
    return msg


def test_random_bytes_as_checkpoint_is_not_a_zip(w, invoke):
    (w.run / "checkpoint.npz").write_bytes(np.random.default_rng(0).bytes(4096))
    msg = _resume_refused(w, invoke, "not a checkpoint (not a zip file)")
    assert "pickle" not in msg


def test_a_zip_bomb_header_claiming_gigabytes_is_refused_before_allocating(w):
    member = _npy_header((1 << 29,)) + bytes(1 << 20)  # claims 4 GiB, holds 1 MiB of zeros
    (w.run / "checkpoint.npz").write_bytes(_npz({"param/W_hh.npy": member}))
    _resume_refused(w, None, "more than the", "allowed", sub=True)


def test_a_highly_compressible_member_larger_than_its_header_is_refused(w, invoke):
    member = _npy_header((2, 2)) + bytes(8 << 20)  # header: 32 bytes; unpacks to 8 MiB
    data = _npz({"param/W_hh.npy": member})
    assert len(data) < 64 << 10
    (w.run / "checkpoint.npz").write_bytes(data)
    _resume_refused(w, invoke, "checkpoint.npz", "member param/W_hh.npy")


def test_a_member_whose_size_disagrees_with_its_header_is_refused(w, invoke):
    member = _npy_header((2, 2)) + bytes(100)  # 32 bytes of data expected
    (w.run / "checkpoint.npz").write_bytes(_npz({"step.npy": member}))
    _resume_refused(w, invoke, "its header describes")


def test_an_object_array_in_a_checkpoint_is_refused_never_unpickled(w, invoke):
    buf = io.BytesIO()
    np.savez(buf, step=np.array([{"evil": 1}], dtype=object))
    (w.run / "checkpoint.npz").write_bytes(buf.getvalue())
    _resume_refused(w, invoke, "dtype object")


def test_a_checkpoint_member_with_a_path_name_is_refused(w, invoke):
    (w.run / "checkpoint.npz").write_bytes(_npz({"../../evil.npy": _npy_header((1,)) + bytes(8)}))
    _resume_refused(w, invoke, "is not an array of a checkpoint")


def test_a_symlinked_checkpoint_is_not_followed(w, invoke):
    real = w.outside / "checkpoint.npz"
    shutil.copy(w.run / "checkpoint.npz", real)
    (w.run / "checkpoint.npz").unlink()
    (w.run / "checkpoint.npz").symlink_to(real)
    _resume_refused(w, invoke, "checkpoint.npz", "symlink")


def test_a_fifo_as_checkpoint_does_not_hang(w):
    (w.run / "checkpoint.npz").unlink()
    os.mkfifo(w.run / "checkpoint.npz")
    code, _, err = w.bptt("train", "--resume", w.run, sub=True)
    one_error(code, err, 2, "checkpoint.npz", "FIFO")


@pytest.mark.parametrize("step", [10**9, -3], ids=["future", "negative"])
def test_a_checkpoint_step_outside_the_run_is_refused(w, invoke, step):
    arrays = runs.load_checkpoint(w.run)
    arrays["step"] = np.array(step, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    (w.run / "checkpoint.npz").write_bytes(buf.getvalue())
    _resume_refused(w, invoke, "checkpoint.npz", "beyond" if step > 0 else "negative")


def test_lowering_train_steps_below_the_checkpoint_is_refused(w, invoke):
    cfg = w.run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 8", "steps: 2"))
    _resume_refused(w, invoke, "step 4", "train.steps = 2")


def test_changing_the_config_of_a_run_is_refused_on_resume(w, invoke):
    cfg = w.run / "config.yaml"
    text = cfg.read_text()
    assert "\nseed: 0\n" in text
    cfg.write_text(text.replace("\nseed: 0\n", "\nseed: 1\n", 1))  # a valid config, another experiment
    _resume_refused(w, invoke, "changed since the run started", "only train.steps")


def test_raising_train_steps_is_allowed(w, invoke):
    cfg = w.run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 8", "steps: 10"))
    code, _, err = w.bptt("train", "--resume", w.run, "-q", invoke=invoke)
    assert code == 0, err
    assert json.loads((w.run / "summary.json").read_text())["steps_done"] == 10


# -- the text task's data ------------------------------------------------------------------------------
def _text_run(w, invoke, corpus: Path) -> Path:
    sets = [a for s in (*SMALL_TRAIN_TEXT, f"task.path={corpus.name}") for a in ("--set", s)]
    run = w.root / "text-run"
    code, _, err = w.bptt("train", "--run-dir", run, *sets, "-q", invoke=invoke)
    assert code == 0, err
    return run


def _stopped_early(run: Path) -> None:
    """Make a finished 6-step run one that stopped at 6 of 8 steps, so it can be resumed."""
    s = json.loads((run / "summary.json").read_text())
    s["status"] = "interrupted"
    (run / "summary.json").write_text(json.dumps(s))
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("steps: 6", "steps: 8"))


SMALL_TRAIN_TEXT = tuple(s for s in SMALL_TEXT if not s.startswith("task.n_sentences")) + ("train.steps=6",)
CORPUS = "the cat sat on the mat. the dog ran in the fog. " * 20


def test_task_path_is_stored_absolute_so_resume_works_from_elsewhere(w, invoke):
    corpus = w.root / "corpus.txt"
    corpus.write_text(CORPUS)
    run = _text_run(w, invoke, corpus)
    assert f"path: {corpus}" in (run / "config.yaml").read_text()
    _stopped_early(run)
    elsewhere = w.root / "elsewhere"
    elsewhere.mkdir()
    code, _, err = w.bptt("train", "--resume", run, "-q", cwd=elsewhere, invoke=invoke)
    assert code == 0, err


def test_resume_refuses_a_text_file_changed_since_the_start(w, invoke):
    corpus = w.root / "corpus.txt"
    corpus.write_text(CORPUS)
    run = _text_run(w, invoke, corpus)
    _stopped_early(run)
    corpus.write_text(CORPUS.replace("cat", "bat"))
    w.run = run
    _resume_refused(w, invoke, "data changed since the run started")


# -- one writer per run, dead runs -----------------------------------------------------------------
def test_a_second_writer_is_refused_with_who_holds_the_run(w):
    before = {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file()}
    with runs.RunLock(w.run):
        code, _, err = w.bptt("train", "--resume", w.run, sub=True)
        one_error(code, err, 2, "is being written by", f"pid {os.getpid()}")
        code, out, err = w.bptt("show", w.run, sub=True)
    assert code == 0
    after = {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file() and p.name != runs.LOCK}
    assert after == before


def test_kill_9_reads_as_crashed_then_two_concurrent_resumes_end_as_one_uninterrupted_run(tmp_path, base_run):
    w = World(tmp_path, base_run)
    run = w.root / "long"
    proc = start(run, "train.checkpoint_every=5", log=tmp_path / "stderr.txt")
    wait_for(proc, lambda: (run / "checkpoint.npz").exists() and lines_in(run / "metrics.jsonl") >= 12, "twelve logged updates")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    logged = max(r["step"] for r in runs.read_jsonl(run / "metrics.jsonl")[0])  # a torn last line aside

    code, out, err = w.bptt("runs", w.root, sub=True)
    assert code == 0 and messages(err) == []
    row = next(line for line in out.splitlines() if line.lstrip().startswith("long"))
    assert "crashed" in row
    assert f"{logged}/1500" in row.replace(",", "")
    code, out, err = w.bptt("show", "--json", run, sub=True)
    shown = json.loads(out)
    assert shown["status"] == "crashed" and shown["steps_done"] == logged
    assert shown["updates"] == logged  # one update per step here: the real count, not 0

    env = {**os.environ, "COLUMNS": "250"}
    cmd = [sys.executable, "-m", "bptt_cli", "train", "--resume", str(run), "-q"]
    procs = [subprocess.Popen(cmd, cwd=w.root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        results = [(p.wait(timeout=60), p.stderr.read()) for p in procs]
    finally:
        for p in procs:
            p.kill()
    codes = sorted(c for c, _ in results)
    assert codes in ([0, 0], [0, 2]), results
    for c, e in results:
        assert "Traceback" not in e
        if c == 2:
            assert len(messages(e)) == 1 and "is being written by" in e
        elif codes == [0, 0]:
            assert "already completed" in e or messages(e) == [], e
    assert_same_run(run, reference_run(tmp_path, LONG))


@pytest.mark.parametrize("kind", ["symlink", "directory"])
def test_a_planted_lock_file_is_refused_not_followed(w, invoke, kind):
    if kind == "symlink":
        (w.run / runs.LOCK).symlink_to(w.precious)
    else:
        (w.run / runs.LOCK).mkdir()
    _resume_refused(w, invoke, runs.LOCK)


# -- paths and the OS ----------------------------------------------------------------------------
def test_run_dir_that_is_a_symlink_is_refused(w, invoke, small):
    (w.outside / "target").mkdir()
    (w.root / "link").symlink_to(w.outside / "target")
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--run-dir", w.root / "link", invoke=invoke)
    one_error(code, err, 2, "symlink")
    assert not any((w.outside / "target").iterdir())


def test_runs_root_that_is_a_file(w, invoke, small):
    (w.root / "afile").write_text("x")
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--runs-root", w.root / "afile", invoke=invoke)
    one_error(code, err, 2, "afile", "not a folder")


def test_run_dir_under_a_file(w, invoke, small):
    (w.root / "afile").write_text("x")
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--run-dir", w.root / "afile" / "sub", invoke=invoke)
    one_error(code, err, 2, "afile", "is a file")


def test_runs_root_where_nothing_can_be_created(w, small):
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--runs-root", "/sys/bptt-runs", sub=True)
    one_error(code, err, 2, "/sys/bptt-runs", "cannot be created")


def test_an_unwritable_current_directory_with_the_default_runs_root(w, small):
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], sub=True, cwd=Path("/sys"))
    one_error(code, err, 2, "runs", "cannot be created")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_runs_root(w, small):
    ro = w.root / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--runs-root", ro, sub=True)
        one_error(code, err, 2, str(ro))
    finally:
        ro.chmod(0o755)


@pytest.mark.parametrize("mask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_files_follow_the_umask(w, small, mask, mode):
    run = w.root / "masked"
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--run-dir", run, "-q", sub=True, umask=mask)
    assert code == 0, err
    files = sorted(p for p in run.iterdir())
    assert {p.name for p in files} >= {"config.yaml", "summary.json", "checkpoint.npz", "metrics.jsonl", "eval.jsonl"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: oct(mode) for p in files}


@needs_matplotlib
def test_plot_to_an_unknown_format_names_the_allowed_ones(w, invoke):
    code, _, err = w.bptt("plot", w.run, "--out", w.root / "x.txt", invoke=invoke)
    one_error(code, err, 2, "x.txt", ".png", ".pdf", ".svg")
    assert not (w.root / "x.txt").exists()


def test_a_full_disk_on_a_metrics_append_fails_the_run_with_its_reason(w, invoke, small, monkeypatch):
    import errno

    real = safeio.open_append

    class Full(io.StringIO):
        def write(self, s):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.safeio, "open_append", lambda p: Full() if p.name == "metrics.jsonl" else real(p))
    run = w.root / "full"
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--run-dir", run, invoke=invoke)
    one_error(code, err, 1, "metrics.jsonl", "No space left on device")
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "failed" and "No space left" in s["error"]
    assert not (run / "error.log").exists()  # the message did not promise one


def test_the_run_directory_deleted_mid_run_is_one_message(w, invoke, small, monkeypatch):
    real = runs.RunWriter.checkpoint
    calls = {"n": 0}

    def vanish(self, arrays):
        calls["n"] += 1
        if calls["n"] == 3:
            shutil.rmtree(self.path)
        return real(self, arrays)

    monkeypatch.setattr(runs.RunWriter, "checkpoint", vanish)
    run = w.root / "gone"
    sets = [a for s in (*small, "train.checkpoint_every=1") for a in ("--set", s)]
    code, _, err = w.bptt("train", *sets, "--run-dir", run, invoke=invoke)
    one_error(code, err, 1, "cannot write", "checkpoint.npz")
    assert not run.exists()


def test_not_enough_memory_before_training_names_what_was_too_big(w, invoke, small, monkeypatch):
    from bptt_cli.trainer import Trainer

    def too_big(self, cfg, **kw):
        raise MemoryError

    monkeypatch.setattr(Trainer, "__init__", too_big)
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], invoke=invoke)
    one_error(code, err, 2, "not enough memory", "model.hidden")
    assert not (w.root / "quickstart").exists()


def test_not_enough_memory_while_training_is_a_failed_run(w, invoke, small, monkeypatch):
    from bptt_cli.trainer import Trainer

    def oom(self, state):
        raise MemoryError("cannot allocate")
        yield  # pragma: no cover

    monkeypatch.setattr(Trainer, "run", oom)
    run = w.root / "oom"
    code, _, err = w.bptt("train", *[a for s in small for a in ("--set", s)], "--run-dir", run, invoke=invoke)
    one_error(code, err, 1, "MemoryError", "error.log")
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"


def test_atomic_write_replaces_a_symlink_instead_of_its_target(w):
    link = w.root / "summary.json"
    link.symlink_to(w.precious)
    runs.atomic_write(link, b"{}")
    assert not link.is_symlink() and link.read_bytes() == b"{}"
    assert w.precious.read_text() == "keep me\n"


def test_a_final_checkpoint_that_cannot_be_written_ends_the_run_failed(w, invoke, small, monkeypatch):
    real = runs.RunWriter.checkpoint
    calls = {"n": 0}

    def second_fails(self, arrays):
        calls["n"] += 1
        if calls["n"] == 2:  # the first is taken at the start, the second at the end
            raise runs.RunWriteError(f"cannot write {self.path / 'checkpoint.npz'} (No space left on device)")
        return real(self, arrays)

    monkeypatch.setattr(runs.RunWriter, "checkpoint", second_fails)
    run = w.root / "late"
    sets = [a for s in (*small, "train.checkpoint_every=100") for a in ("--set", s)]
    code, _, err = w.bptt("train", *sets, "--run-dir", run, "-q", invoke=invoke)
    one_error(code, err, 1, "checkpoint.npz", "No space left")
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "failed" and "No space left" in s["error"] and s["steps_done"] == 8


# -- any JSON at all: reading and rendering never raise ---------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_scalars = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=8)
_json = st.recursive(_scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)
_keys = st.sampled_from(["status", "steps", "steps_done", "final", "best", "diverged_at", "clip", "chance", "expectations",
                         "error", "diagnostics", "target_reached", "updates", "step", "loss", "flow", "bias", "norms", "lags"])  # fmt: skip
_records = st.dictionaries(_keys, _json, max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(summary=_json | _records, lines=st.lists(_records | _json, max_size=4), log=st.sampled_from(runs.LOGS))
def test_any_json_in_a_run_reads_and_renders_without_raising(base_run, tmp_path_factory, summary, lines, log):
    from rich.console import Console

    from bptt_cli import render

    run = tmp_path_factory.mktemp("fuzz") / "run"
    shutil.copytree(base_run, run)
    (run / "summary.json").write_text(json.dumps(summary))
    with open(run / f"{log}.jsonl", "a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in lines))
    loaded = runs.load_run(run)
    console = Console(file=io.StringIO(), width=100, markup=False)
    console.print(render.run_report(loaded))
    console.print(render.summary_panel(loaded.summary))
    shutil.rmtree(run)


def test_a_new_run_into_a_folder_that_already_holds_one_is_refused_under_the_lock(w):
    """Two `train --run-dir D` that both found D empty: the second to take the lock must not
    write into the first's logs."""
    before = {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file()}
    with pytest.raises(runs.RunError, match="already holds a run"):
        execute(load_config(None, list(SMALL)), w.run)
    assert {p.name: p.read_bytes() for p in w.run.iterdir() if p.is_file()} == before


@needs_matplotlib
def test_plot_of_a_compare_directory_skips_a_damaged_variant(w, invoke, small):
    sets = [a for s in small for a in ("--set", s)]
    code, _, err = w.bptt("compare", "--modes", "full,k_truncated:2", *sets, "--workers", "1", "--runs-root", w.root / "cmp", "-q", invoke=invoke)
    assert code == 0, err
    (cmp_dir,) = [p.parent for p in (w.root / "cmp").rglob("plan.json")]
    variants = sorted(p.parent for p in cmp_dir.rglob("config.yaml"))
    assert len(variants) == 2
    (variants[0] / "config.yaml").write_bytes(b"- not\n- a config\n")
    code, _, err = w.bptt("plot", cmp_dir, invoke=invoke)
    msgs = messages(err)
    assert code == 0 and len(msgs) == 2, msgs
    assert msgs[0].startswith(f"skipping {variants[0]}") and msgs[1].startswith("wrote")
