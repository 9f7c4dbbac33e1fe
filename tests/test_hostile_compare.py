"""``bptt compare`` against hostile input and hostile events: a tampered plan.json (paths that
lead out, wrong types, not JSON, too big, a FIFO), symlinked variant directories, variants that
all fail, unmet ``--expect``, unbounded planning, a variant killed mid-run and run again (what a
Dask retry does), the compare parent killed with -9, and Dask with a relative runs root and Ctrl-C.

Every case asserts the exit code, one message, no traceback, and that nothing outside the
temporary root was touched. Subprocesses run with a timeout (20 s; 60 s with a Dask cluster)
that fails the test if hit; nothing asserts wall-clock times."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from bptt_cli import compare as cmp
from bptt_cli.config import load_config

from conftest import SMALL, one_line, read_logs, sets, stderr_of  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
DELAY = ROOT / "configs" / "delay.yaml"
TINY = (*SMALL, "train.steps=6", "train.eval_every=3")
TIMEOUT = 20
DASK_TIMEOUT = 60






def tree(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (symlinks by their target), to show nothing changed."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(root))] = "-> " + os.readlink(p)
        elif p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[str(p.relative_to(root))] = "dir"
    return out


def victim(tmp_path: Path) -> Path:
    """A folder next to the runs root that bptt must never touch."""
    v = tmp_path / "victim"
    v.mkdir()
    (v / "precious.txt").write_text("keep me\n")
    (v / "metrics.jsonl").write_text('{"step": 1}\n')
    return v


def user_error(result, *fragments: str, code: int = 2) -> str:
    """Exit ``code``, exactly one ``error:`` line naming every fragment, no traceback."""
    err = one_line(stderr_of(result))
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    assert err.count("error: ") == 1, err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    return err


def small_compare(invoke, root: Path, *args, overrides=TINY) -> Path:
    result = invoke("compare", DELAY, "--runs-root", root, *sets(*overrides), "--modes", "full,k_truncated:2", "--workers", 1, "-q", *args)
    assert result.exit_code == 0, result.output
    (path,) = sorted((root / "delay").glob("compare-*"))
    return path


def edit_plan(path: Path, edit) -> None:
    data = json.loads((path / "plan.json").read_text())
    edit(data)
    (path / "plan.json").write_text(json.dumps(data))


# -- a tampered plan.json -------------------------------------------------------------------------
@pytest.mark.parametrize("bad_id", ["../../victim", "ABSOLUTE", "..", "full seed0", "a/b"])
def test_plan_ids_that_lead_elsewhere_are_refused_and_nothing_is_deleted(invoke, tmp_path, bad_id):
    target = victim(tmp_path)
    path = small_compare(invoke, tmp_path / "runs")
    bad_id = str(target) if bad_id == "ABSOLUTE" else bad_id
    (path / "k_truncated-2_seed0" / "summary.json").unlink()  # would be re-run if the plan were accepted

    def edit(data):
        data["variants"][0]["id"] = bad_id

    edit_plan(path, edit)
    before, inside = tree(tmp_path / "victim"), tree(path)
    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    user_error(result, f"{path / 'plan.json'}", "is not a plain directory name")
    assert tree(target) == before
    assert tree(path) == inside  # nothing created, run or deleted in the compare directory either


def test_a_symlinked_variant_directory_is_refused_and_its_target_untouched(invoke, tmp_path):
    target = victim(tmp_path)
    path = small_compare(invoke, tmp_path / "runs")
    d = path / "full_seed0"
    for p in d.iterdir():
        p.unlink()
    d.rmdir()
    d.symlink_to(target, target_is_directory=True)
    before = tree(target)
    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    user_error(result, f"{d} is a symbolic link")
    assert tree(target) == before
    shown = invoke("show", path)  # the readers refuse it too, rather than read elsewhere
    user_error(shown, f"{d} is a symbolic link")


PLAN_DAMAGE = [
    ("not json", lambda p: p.write_text("{not json"), "is not valid JSON"),
    ("not utf-8", lambda p: p.write_bytes(b"\xff\xfe\x00garbage"), "is not valid JSON"),
    ("null", lambda p: p.write_text("null"), "expected an object with a list of 'variants'"),
    ("variants a dict", lambda p: p.write_text('{"variants": {"a": 1}}'), "expected an object with a list of 'variants'"),
    ("no variants", lambda p: p.write_text('{"variants": []}'), "a plan holds 1 to 10,000"),
    ("deep nesting", lambda p: p.write_text("[" * 100_000 + "]" * 100_000), "is not valid JSON"),
]


@pytest.mark.parametrize("name, damage, fragment", PLAN_DAMAGE, ids=[d[0] for d in PLAN_DAMAGE])
def test_a_damaged_plan_is_one_message_naming_plan_json(invoke, tmp_path, name, damage, fragment):
    path = small_compare(invoke, tmp_path / "runs")
    damage(path / "plan.json")
    before = tree(path)
    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    user_error(result, str(path / "plan.json"), fragment)
    assert tree(path) == before


FIELD_DAMAGE = [
    ("seed a string", lambda v: v.update(seed="0"), "variants[0].seed must be a int, got str"),
    ("seed a bool", lambda v: v.update(seed=True), "variants[0].seed must be a int, got bool"),
    ("config a list", lambda v: v.update(config=[1]), "variants[0].config must be a dict, got list"),
    ("extra field", lambda v: v.update(extra=1), "must be an object with exactly the fields id, mode, grid, seed, config"),
    ("id missing", lambda v: v.pop("id"), "must be an object with exactly the fields"),
    ("bad config", lambda v: v["config"]["model"].update(hidden=-1), "variants[0].config is not a valid config"),
    ("unknown key", lambda v: v["config"].update(pork=1), "pork: unknown key"),
]


@pytest.mark.parametrize("name, damage, fragment", FIELD_DAMAGE, ids=[d[0] for d in FIELD_DAMAGE])
def test_plan_fields_of_the_wrong_type_are_refused(invoke, tmp_path, name, damage, fragment):
    path = small_compare(invoke, tmp_path / "runs")
    edit_plan(path, lambda data: damage(data["variants"][0]))
    before = tree(path)
    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    user_error(result, str(path / "plan.json"), fragment)
    assert tree(path) == before


def test_a_duplicated_variant_id_is_refused(invoke, tmp_path):
    path = small_compare(invoke, tmp_path / "runs")
    edit_plan(path, lambda data: data["variants"].append(dict(data["variants"][0])))
    user_error(invoke("compare", "--resume", path, "-q"), "variant id 'full_seed0' appears twice")


def test_a_huge_plan_or_a_fifo_is_refused_without_reading_it(invoke, tmp_path):
    path = small_compare(invoke, tmp_path / "runs")
    plan = path / "plan.json"
    plan.unlink()
    with open(plan, "wb") as f:  # sparse: the size alone refuses it, nothing is read
        f.truncate(cmp.PLAN_LIMIT + 1)
    user_error(invoke("compare", "--resume", path, "-q"), str(plan), f"more than the {cmp.PLAN_LIMIT:,} allowed")
    plan.unlink()
    os.mkfifo(plan)  # opening a FIFO for reading would wait for a writer forever
    user_error(invoke("compare", "--resume", path, "-q"), str(plan), "is not a regular file")


# -- compare tells the truth ----------------------------------------------------------------------
def test_every_variant_failing_exits_1_with_failed_rows_and_the_error(invoke, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(bytes(range(128, 256)) * 8)  # not UTF-8
    text = ROOT / "configs" / "text.yaml"
    result = invoke(
        "compare", text, "--smoke", "--modes", "full,subsequence:5", "--set", f"task.path={bad}",
        "--runs-root", tmp_path / "runs", "--workers", 1,
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    err = stderr_of(result)
    lines = [ln for ln in err.splitlines() if ln.startswith("variant ")]
    assert len(lines) == 2 and all(": failed at step 0: TaskError: " in ln and "is not UTF-8 text" in ln for ln in lines), err
    assert "2 of 2 variants did not complete" in one_line(err)
    (path,) = sorted((tmp_path / "runs" / "text").glob("compare-*"))
    data = json.loads((path / "compare.json").read_text())
    assert [v["status"] for v in data["variants"]] == ["failed", "failed"]
    assert all("is not UTF-8 text" in v["error"] for v in data["variants"])
    assert [r["statuses"] for r in data["rows"]] == [{"failed": 1}, {"failed": 1}]
    out = one_line(result.stdout)
    assert "1/1 failed" in out and "not started" not in out and "is not UTF-8 text" in out


def test_expect_is_checked_on_every_variant(invoke, tmp_path):
    root = tmp_path / "runs"
    result = invoke(
        "compare", DELAY, "--runs-root", root, *sets(*TINY), "--modes", "full,k_truncated:2", "--workers", 1, "-q",
        "--expect", "eval.accuracy>=0.99", "--expect", "eval.loss<1000.0",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    err = one_line(stderr_of(result))
    for vid in ("full_seed0", "k_truncated-2_seed0"):
        assert f"expectation failed: {vid}: eval.accuracy = " in err and "wanted eval.accuracy>=0.99" in err
    assert "eval.loss<1000.0" not in err  # met, so not reported
    (path,) = sorted((root / "delay").glob("compare-*"))
    rows = json.loads((path / "compare.json").read_text())["expectations"]
    assert [(r["id"], r["expect"], r["ok"]) for r in rows] == [
        ("full_seed0", "eval.accuracy>=0.99", False),
        ("full_seed0", "eval.loss<1000.0", True),
        ("k_truncated-2_seed0", "eval.accuracy>=0.99", False),
        ("k_truncated-2_seed0", "eval.loss<1000.0", True),
    ]
    met = invoke("compare", "--resume", path, "-q", "--expect", "eval.loss<1000")
    assert met.exit_code == 0, met.output
    bad = invoke("compare", "--resume", path, "-q", "--expect", "eval.accuracy=>1")
    user_error(bad, "eval.accuracy=>1")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--seeds", "100000000"], "--seeds 100000000 would make 100,000,000 variants; a compare runs at most 10,000"),
        (["--seeds", "5000", "--modes", "full,k_truncated:2,subsequence:4"], "3 modes x 5000 seeds would make 15,000 variants"),
        (["--modes", "full,k_truncated:2,subsequence:4", "--grid", "clip.threshold=" + ",".join(map(str, range(1, 201))),
          "--grid", "model.hidden=" + ",".join(map(str, range(1, 101)))],
         "3 modes x 1 seeds x 200 clip.threshold values x 100 model.hidden values would make 60,000 variants"),
    ],
    ids=["seeds 1e8", "modes x seeds", "grid product"],
)
def test_unbounded_planning_is_refused_before_anything_is_written(invoke, tmp_path, args, fragment):
    result = invoke("compare", DELAY, "--runs-root", tmp_path / "runs", *sets(*TINY), *args)
    user_error(result, fragment)
    assert not (tmp_path / "runs").exists()


def test_a_grid_point_that_cannot_fit_in_memory_is_refused_before_anything_is_written(invoke, tmp_path):
    budget = pytest.importorskip("bptt_cli.budget")
    if not hasattr(budget, "check_budget"):
        pytest.skip("no memory budget check")
    result = invoke("compare", DELAY, "--runs-root", tmp_path / "runs", *sets(*TINY), "--modes", "full", "--grid", "model.hidden=8,300000")
    user_error(result, "variant full {'model.hidden': 300000} seed 0: model.hidden", "lower model.hidden")
    assert not (tmp_path / "runs").exists()


def test_the_cli_refuses_a_huge_seed_count_in_a_fresh_process_quickly():
    """The same refusal from the command line, under the subprocess timeout (no list is built)."""
    proc = subprocess.run(
        [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--seeds", "100000000", "--runs-root", "/nonexistent/never"],
        capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("error: ") == 1
    assert not Path("/nonexistent/never").exists()


def test_a_relative_text_path_is_planned_absolute_so_resume_works_from_elsewhere(invoke, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "corpus.txt").write_text("the cat sat on the mat. the dog ran to the cat. " * 40)
    monkeypatch.chdir(data)
    root = tmp_path / "runs"
    result = invoke(
        "compare", ROOT / "configs" / "text.yaml", "--smoke", "--modes", "full", "--set", "task.path=corpus.txt",
        "--runs-root", root, "--workers", 1, "-q",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = sorted((root / "text").glob("compare-*"))
    (v,) = cmp.read_plan(path)[0]
    assert v.config["task"]["path"] == str(data / "corpus.txt")
    for p in (path / v.id).iterdir():
        p.unlink()
    (path / v.id).rmdir()
    monkeypatch.chdir(tmp_path)  # where corpus.txt is not
    again = invoke("compare", "--resume", path, "--workers", 1, "-q")
    assert again.exit_code == 0, again.output
    assert json.loads((path / v.id / "summary.json").read_text())["status"] == "completed"


# -- idempotent variants: a killed variant run again (a Dask retry) ---------------------------------
KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from bptt_cli.compare import run_variant
    config, run_dir, kill_at = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    calls = []
    def stop():  # polled after every step: die there, between two checkpoints, as a killed worker would
        calls.append(1)
        if len(calls) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return False
    run_variant(config, run_dir, stop)
    """
)


def test_a_variant_killed_mid_run_and_run_again_has_the_logs_of_an_uninterrupted_run(tmp_path):
    cfg = load_config(DELAY, [*SMALL, "train.steps=300", "train.eval_every=50", "train.checkpoint_every=40"])
    (v,) = cmp.plan(cfg, modes=["k_truncated:2"], seeds=[0])
    reference = tmp_path / "reference"
    cmp.run_variant(v.config, str(reference))
    retried = tmp_path / "retried"
    # Killed twice: after step 136 (checkpoint at 120), then, resumed from 120, after step 219
    # (checkpoint at 200). stop() is polled once before the first step and once after each step.
    for kill_at, last_step in ((137, 136), (100, 219)):
        proc = subprocess.run(
            [sys.executable, "-c", KILLER, json.dumps(v.config), str(retried), str(kill_at)],
            capture_output=True, text=True, timeout=TIMEOUT, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        assert read_logs(retried)["metrics"][-1]["step"] == last_step  # logged past its last checkpoint
    summary = cmp.run_variant(v.config, str(retried))  # what Dask does when the worker died: the same call again
    assert summary["status"] == "completed"
    assert read_logs(retried) == read_logs(reference)  # no duplicated or missing line
    steps = [m["step"] for m in read_logs(retried)["metrics"]]
    assert steps == sorted(steps) and len(steps) == len(set(steps)) == 300
    again = cmp.run_variant(v.config, str(retried))  # and once more: a finished variant is left as it is
    assert again["status"] == "completed" and read_logs(retried) == read_logs(reference)


def test_a_variant_without_checkpoint_starts_again_without_following_links(tmp_path):
    target = victim(tmp_path)
    before = tree(target)
    cfg = load_config(DELAY, list(TINY))
    (v,) = cmp.plan(cfg, modes=["full"], seeds=[0])
    d = tmp_path / "runs" / "v"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("leftover: true\n")  # killed before its first checkpoint
    (d / "metrics.jsonl").symlink_to(target / "metrics.jsonl")  # a log that points elsewhere
    assert cmp.run_variant(v.config, str(d))["status"] == "completed"
    assert tree(target) == before  # the link was removed, not followed
    assert not (d / "metrics.jsonl").is_symlink() and read_logs(d)["metrics"][-1]["step"] == 6

    # Files bptt did not write are never deleted: such a folder is not taken for a fresh run.
    other = tmp_path / "runs" / "other"
    other.mkdir()
    (other / "config.yaml").write_text("leftover: true\n")
    (other / "notes.txt").write_text("mine\n")
    with pytest.raises(cmp.VariantFailed, match="notes.txt"):
        cmp.run_variant(v.config, str(other))
    assert (other / "notes.txt").read_text() == "mine\n"


def test_a_variant_still_being_written_is_not_cleared(tmp_path):
    from bptt_cli import runs

    if not hasattr(runs, "RunLock"):
        pytest.skip("run directories have no lock")
    (v,) = cmp.plan(load_config(DELAY, list(TINY)), modes=["full"], seeds=[0])
    d = tmp_path / "runs" / "v"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text("written: just now\n")  # its writer has not checkpointed yet
    with runs.RunLock(d):
        with pytest.raises(cmp.VariantFailed, match="is being written by another process"):
            cmp.run_variant(v.config, str(d))
    assert (d / "config.yaml").read_text() == "written: just now\n"


def test_a_relative_run_dir_is_refused(tmp_path):
    (v,) = cmp.plan(load_config(DELAY, list(TINY)), modes=["full"], seeds=[0])
    with pytest.raises(cmp.VariantFailed, match="run_dir must be absolute"):
        cmp.run_variant(v.config, "relative/dir")


# -- workers die with their parent ---------------------------------------------------------------
def _group(pgid: int) -> dict[int, str]:
    """{pid: state} of the live (non-zombie) processes in process group ``pgid``."""
    out = {}
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out[int(p.name)] = fields[0]
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads process groups from /proc")
def test_workers_stop_when_the_compare_parent_is_killed(tmp_path):
    root = tmp_path / "runs"
    long = sets(*SMALL, "train.steps=10000000", "train.eval_every=1000", "train.checkpoint_every=50")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--runs-root", str(root), "--workers", "2", "-q",
         "--modes", "full,k_truncated:2", *long],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + TIMEOUT
        while len([p for p in root.glob("delay/compare-*/*/metrics.jsonl") if p.stat().st_size > 0]) < 2:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the variants did not start within the timeout"
            time.sleep(0.02)
        workers = set(_group(proc.pid)) - {proc.pid}
        assert len(workers) >= 2  # two variants (and the fork server)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        while set(_group(proc.pid)) & workers:
            assert time.monotonic() < deadline + TIMEOUT, f"orphaned workers still alive: {_group(proc.pid)}"
            time.sleep(0.05)
    finally:
        for pid in _group(proc.pid):
            os.kill(pid, signal.SIGKILL)
        proc.wait()
    # They stopped on a step boundary (SIGTERM from the kernel, or the parent seen gone), so each
    # left an exact checkpoint and says how it ended, ready for --resume.
    (path,) = sorted((root / "delay").glob("compare-*"))
    for vid in ("full_seed0", "k_truncated-2_seed0"):
        s = json.loads((path / vid / "summary.json").read_text())
        assert s["status"] == "interrupted", s
        assert read_logs(path / vid)["metrics"][-1]["step"] == s["steps_done"]


# -- Dask: relative runs root, Ctrl-C -------------------------------------------------------------
@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None, worker_dashboard_address=None
    ) as c:  # fmt: skip
        yield c


def test_dask_with_a_relative_runs_root_writes_where_the_client_is(tmp_path, cluster):
    cwd = tmp_path / "client"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--runs-root", "rel", "--modes", "full,k_truncated:2",
         *sets(*TINY, "name=hostile-dask-rel"), "--scheduler", cluster.scheduler_address, "-q"],
        capture_output=True, text=True, timeout=DASK_TIMEOUT, cwd=cwd,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    (path,) = sorted((cwd / "rel" / "hostile-dask-rel").glob("compare-*"))
    rows = json.loads((path / "compare.json").read_text())["variants"]
    assert [r["status"] for r in rows] == ["completed", "completed"]
    assert [read_logs(path / r["id"])["metrics"][-1]["step"] for r in rows] == [6, 6]
    assert not list(ROOT.glob("rel/hostile-dask-rel")) and not list(Path.cwd().glob("rel/hostile-dask-rel"))


def _start_long_dask_compare(tmp_path, cluster, modes: str, name: str):
    """A compare of endless variants on the cluster, returned once two of them are training:
    (process, its stderr log)."""
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--runs-root", "runs", "--modes", modes,
             *sets(*SMALL, "train.steps=10000000", "train.eval_every=1000", f"name={name}"),
             "--scheduler", cluster.scheduler_address, "-q"],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path,
        )  # fmt: skip
    deadline = time.monotonic() + DASK_TIMEOUT
    while len([p for p in tmp_path.glob("runs/*/compare-*/*/metrics.jsonl") if p.stat().st_size > 0]) < 2:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"the variants did not start (exit {proc.returncode}): {log.read_text()}")
        time.sleep(0.05)
    return proc, log


def test_dask_ctrl_c_stops_running_variants_and_compare_json_says_so(tmp_path, cluster):
    proc, log = _start_long_dask_compare(tmp_path, cluster, "full,k_truncated:2,subsequence:4", "hostile-dask-stop")
    try:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=DASK_TIMEOUT) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    message = one_line(log.read_text())
    assert "Traceback" not in message and "bptt compare --resume" in message
    (path,) = sorted(tmp_path.glob("runs/hostile-dask-stop/compare-*"))
    rows = {r["id"]: r["status"] for r in json.loads((path / "compare.json").read_text())["variants"]}
    # Two workers: two variants were running and stopped after their current step; the third
    # never started (it returned at once when it saw the stop flag) and left no directory.
    assert sorted(rows.values()) == ["interrupted", "interrupted", "not started"], rows
    for vid, status in rows.items():
        if status == "interrupted":
            s = json.loads((path / vid / "summary.json").read_text())
            assert s["status"] == "interrupted" and s["steps_done"] < 10_000_000
            assert read_logs(path / vid)["metrics"][-1]["step"] == s["steps_done"]
        else:
            assert not (path / vid).exists()


def test_dask_variants_stop_when_the_compare_client_is_killed(tmp_path, cluster):
    proc, log = _start_long_dask_compare(tmp_path, cluster, "full,k_truncated:2", "hostile-dask-orphan")
    try:
        proc.kill()  # SIGKILL: no Ctrl-C handling, no stop flag set by the client
        proc.wait(timeout=DASK_TIMEOUT)
        (path,) = sorted(tmp_path.glob("runs/hostile-dask-orphan/compare-*"))
        summaries = [path / vid / "summary.json" for vid in ("full_seed0", "k_truncated-2_seed0")]
        # The tasks see themselves released by the scheduler and stop after their current step.
        deadline = time.monotonic() + DASK_TIMEOUT
        while not all(json.loads(s.read_text()).get("status") == "interrupted" for s in summaries):
            assert time.monotonic() < deadline, [json.loads(s.read_text()).get("status") for s in summaries]
            time.sleep(0.1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for s in summaries:
        assert read_logs(s.parent)["metrics"][-1]["step"] == json.loads(s.read_text())["steps_done"]


def test_a_dask_worker_killed_mid_variant_leaves_the_logs_of_an_uninterrupted_run(tmp_path, cluster):
    """Dask runs the variant again on another worker when its worker dies; the same call then
    finds the checkpoint and resumes from it (logs cut back to it) instead of appending a
    second copy from step 1. (Last in this module: it kills one of the cluster's workers.)"""
    distributed = pytest.importorskip("distributed")
    overrides = (*SMALL, "train.steps=2000", "train.eval_every=200", "train.checkpoint_every=100", "name=hostile-dask-kill")
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--runs-root", "runs", "--modes", "k_truncated:2",
             *sets(*overrides), "--scheduler", cluster.scheduler_address, "-q"],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + DASK_TIMEOUT
        metrics = tmp_path / "runs" / "hostile-dask-kill"
        while not any(p.read_bytes().count(b"\n") > 150 for p in metrics.glob("compare-*/*/metrics.jsonl")):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the variant did not get going within the timeout"
            time.sleep(0.05)
        with distributed.Client(cluster.scheduler_address, timeout="20s") as client:
            (addr,) = [a for a, keys in client.processing().items() if keys]
            pid = client.run(os.getpid, workers=[addr])[addr]
            os.kill(pid, signal.SIGKILL)
        (path,) = sorted(metrics.glob("compare-*"))
        killed_at = read_logs(path / "k_truncated-2_seed0")["metrics"][-1]["step"]
        assert proc.wait(timeout=DASK_TIMEOUT) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed_at < 2000  # the kill came mid-run
    d = path / "k_truncated-2_seed0"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed"] >= 1, summary
    (v,) = cmp.read_plan(path)[0]
    cmp.run_variant(v.config, str(tmp_path / "reference"))
    assert read_logs(d) == read_logs(tmp_path / "reference")
