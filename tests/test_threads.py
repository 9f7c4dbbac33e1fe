"""BLAS threads (``bptt_cli.threads``): who decides the count (explicit > env > auto), that
auto never asks for more than the cores or the compare budget, that the count reaches the
summary, and that the limit really holds while the trainer runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from threadpoolctl import threadpool_info, threadpool_limits

from bptt_cli import threads
from bptt_cli.config import load_config
from bptt_cli.session import execute

from conftest import SMALL, one_line  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
NO_ENV: dict[str, str] = {}
BIG = dict(batch=256, hidden=1024)  # B*H*H = 268M: far above the per-thread line


def run_dir(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def blas_threads() -> int | None:
    """The thread count the loaded BLAS reports right now (None if threadpoolctl finds none)."""
    counts = [i["num_threads"] for i in threadpool_info() if i.get("user_api") == "blas"]
    return counts[0] if counts else None


@pytest.fixture
def clean_env(monkeypatch):
    """No BLAS thread variable and no inherited budget in this process, as on a fresh shell."""
    for v in (*threads.BLAS_THREAD_VARS, threads.OWN_VARS_MARK, threads.BUDGET_VAR):
        monkeypatch.delenv(v, raising=False)


# -- the choice -------------------------------------------------------------------------
def test_small_problems_get_one_thread_even_with_many_cores():
    c = threads.choose("auto", batch=32, hidden=64, cores=64, environ=NO_ENV)  # the quickstart
    assert (c.count, c.source) == (1, "auto")
    assert "131,072" in c.reason


def test_large_problems_use_the_cores_they_are_given():
    assert threads.choose("auto", **BIG, cores=4, environ=NO_ENV).count == 4
    # One more thread per WORK_PER_THREAD multiply-adds: B*H*H of exactly 3 units gives 3.
    h = 1024
    b = 3 * threads.WORK_PER_THREAD // (h * h)
    assert threads.choose("auto", batch=b, hidden=h, cores=8, environ=NO_ENV).count == 3
    assert threads.choose("auto", batch=b - 1, hidden=h, cores=8, environ=NO_ENV).count == 2


def test_float64_counts_double():
    b, h = threads.WORK_PER_THREAD // (256 * 256), 256  # one unit in float32
    assert threads.choose("auto", batch=b, hidden=h, cores=8, environ=NO_ENV).count == 1
    assert threads.choose("auto", batch=b, hidden=h, dtype="float64", cores=8, environ=NO_ENV).count == 2


def test_auto_does_not_follow_the_load_of_the_moment(monkeypatch):
    """Another thread count changes the last bits of a BLAS matmul, so auto must give one
    count for one problem on one machine whatever else runs: otherwise reruns and resumes differ."""
    import os

    seen = {threads.choose("auto", **BIG, cores=2, environ=NO_ENV).count for _ in range(3)}
    monkeypatch.setattr(os, "getloadavg", lambda: (50.0, 50.0, 50.0), raising=False)
    seen.add(threads.choose("auto", **BIG, cores=2, environ=NO_ENV).count)
    assert seen == {2}


@settings(max_examples=200, deadline=None)
@given(
    batch=st.integers(1, 4096),
    hidden=st.integers(1, 4096),
    dtype=st.sampled_from(["float32", "float64"]),
    cores=st.integers(1, 256),
    budget=st.none() | st.integers(1, 256),
)
def test_auto_stays_within_the_cores_and_budget(batch, hidden, dtype, cores, budget):
    c = threads.choose("auto", batch=batch, hidden=hidden, dtype=dtype, cores=cores, budget=budget, environ=NO_ENV)
    assert 1 <= c.count <= cores
    if budget is not None:
        assert c.count <= budget


def test_available_cores_is_what_the_process_may_use():
    n = threads.available_cores()
    assert 1 <= n <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert n <= len(os.sched_getaffinity(0))


@pytest.mark.parametrize("text, expected", [("auto", "auto"), ("AUTO", "auto"), ("1", 1), (" 8 ", 8), ("1024", 1024), (3, 3)])
def test_parse_setting(text, expected):
    assert threads.parse_setting(text) == expected


@pytest.mark.parametrize("text", ["0", "-1", "1025", "two", "", "1.5", True])
def test_parse_setting_refuses_with_one_message(text):
    with pytest.raises(threads.ThreadsError, match=r"--threads must be auto or a whole number from 1 to 1024"):
        threads.parse_setting(text)


# -- applied ----------------------------------------------------------------------------
def _blas_or_skip():
    if blas_threads() is None:
        pytest.skip("threadpoolctl finds no BLAS in this NumPy")


def test_the_limit_holds_while_the_trainer_runs_and_is_restored_after(tmp_path, clean_env):
    """Read the BLAS thread count from inside training (``on_event`` runs between the
    trainer's steps, in the same process) under an outer limit the run must override."""
    _blas_or_skip()
    with threadpool_limits(limits=2, user_api="blas"):
        outer = blas_threads()
        if outer == 1:
            pytest.skip("this BLAS cannot run 2 threads, so a limit of 1 cannot be told apart")
        seen: list[int | None] = []
        cfg = load_config(None, [*SMALL, "train.threads=1"])
        summary = execute(cfg, run_dir(tmp_path), on_event=lambda ev: seen.append(blas_threads()))
        after = blas_threads()
    assert seen and set(seen) == {1}, seen
    assert after == outer
    assert summary["threads"]["count"] == 1 and summary["threads"]["source"] == "explicit"


def test_auto_runs_the_quickstart_on_one_thread(tmp_path, clean_env):
    _blas_or_skip()
    with threadpool_limits(limits=2, user_api="blas"):
        if blas_threads() == 1:
            pytest.skip("this BLAS cannot run 2 threads")
        seen: list[int | None] = []
        summary = execute(load_config(None, list(SMALL)), run_dir(tmp_path), on_event=lambda ev: seen.append(blas_threads()))
    assert set(seen) == {1}
    assert summary["threads"]["source"] == "auto"


def test_the_limit_is_restored_when_the_run_stops_early(tmp_path, clean_env):
    _blas_or_skip()
    with threadpool_limits(limits=2, user_api="blas"):
        outer = blas_threads()
        summary = execute(load_config(None, [*SMALL, "train.threads=1"]), run_dir(tmp_path), stop=lambda: True)
        assert summary["status"] == "interrupted"
        assert blas_threads() == outer


# -- the command line -------------------------------------------------------------------
def test_train_threads_lands_in_summary_json(invoke, small, tmp_path, clean_env):
    result = invoke("train", "--threads", "1", "--json", "--runs-root", tmp_path, *[a for s in small for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    (run,) = [p.parent for p in tmp_path.rglob("summary.json")]
    recorded = json.loads((run / "summary.json").read_text(encoding="utf-8"))["threads"]
    assert recorded == {"count": 1, "source": "explicit", "reason": "--threads / train.threads 1"}
    assert "threads: 1" in (run / "config.yaml").read_text(encoding="utf-8")


def test_train_quiet_summary_shows_the_threads(invoke, small, tmp_path, clean_env):
    result = invoke("train", "--quiet", "--runs-root", tmp_path, *[a for s in small for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    assert re.search(r"threads\s+1 BLAS \(auto: B\*H\*H=", result.stdout), result.stdout


@pytest.mark.parametrize("command", ["train", "compare", "gradcheck"])
def test_bad_threads_exits_2_with_one_message(invoke, tmp_path, command):
    extra = ["--runs-root", tmp_path, "--modes", "full"] if command == "compare" else ["--runs-root", tmp_path] if command == "train" else []
    result = invoke(command, "--threads", "0", *extra)
    assert result.exit_code == 2, result.output
    err = one_line(result.stderr)
    assert err == "error: --threads must be auto or a whole number from 1 to 1024, got '0'", err
    assert "Traceback" not in result.output
    assert not list(tmp_path.rglob("config.yaml"))  # nothing was started


def test_gradcheck_accepts_threads(invoke):
    result = invoke("gradcheck", "--threads", "1", "--steps", "4", "--modes", "full", "--json")
    assert result.exit_code == 0, result.output


# -- compare: workers x threads <= cores ------------------------------------------------
def test_process_executor_gives_each_worker_its_share(clean_env):
    from bptt_cli.compare import ProcessPerTaskExecutor

    cores = threads.available_cores()
    for workers in (1, 2, cores, cores + 3):
        ex = ProcessPerTaskExecutor(workers)
        try:
            share = int(ex._env[threads.BUDGET_VAR])
            assert share >= 1 and (share * workers <= cores or share == 1)
            assert set(ex._env[threads.OWN_VARS_MARK].split(",")) == set(threads.BLAS_THREAD_VARS)
        finally:
            ex.shutdown()


def test_run_variant_passes_its_budget_to_the_run(tmp_path, clean_env):
    from bptt_cli.compare import run_variant
    from bptt_cli.config import to_dict

    cfg = load_config(None, [*SMALL, "model.hidden=256", "model.init=gaussian", "train.batch_size=128", "train.steps=1", "train.eval_size=4"])
    summary = run_variant(to_dict(cfg), str(tmp_path / "v"), thread_budget=1)
    assert summary["threads"]["count"] == 1 and summary["threads"]["source"] == "auto"


def test_compare_with_process_workers_keeps_workers_times_threads_within_cores(invoke, tmp_path, clean_env):
    """Two worker processes on a problem big enough that auto alone would take every core."""
    cores = threads.available_cores()
    sets = [*SMALL, "model.hidden=256", "model.init=gaussian", "train.batch_size=128", "train.steps=1", "train.eval_size=4"]
    result = invoke(
        "compare", "--workers", "2", "--modes", "full", "--seeds", "2", "--quiet", "--json",
        "--runs-root", tmp_path, *[a for s in sets for a in ("--set", s)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    counts = [json.loads(p.read_text(encoding="utf-8"))["threads"] for p in tmp_path.rglob("summary.json")]
    assert len(counts) == 2, counts
    for c in counts:
        assert c["source"] == "auto"
        assert 2 * c["count"] <= cores or c["count"] == 1, counts


# -- start-up ---------------------------------------------------------------------------
def test_help_loads_no_numpy_pydantic_rich_or_yaml():
    """`bptt --help` needs typer only; the layers load when a command runs."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from bptt_cli.cli import app\n"
        "r = CliRunner().invoke(app, ['--help'])\n"
        "assert r.exit_code == 0, r.output\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'numpy', 'pydantic', 'rich', 'yaml', 'threadpoolctl'}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout


def test_sort_keys_in_the_help_are_renders():
    from bptt_cli import cli, render

    assert cli.SORT_KEYS == render.SORT_KEYS


def test_dask_workers_share_their_cores_among_their_threads(tmp_path, clean_env):
    """A Dask worker running 2 tasks at once gives each variant half of its cores."""
    distributed = pytest.importorskip("distributed")
    from bptt_cli.compare import run_variant
    from bptt_cli.config import to_dict

    cores = threads.available_cores()
    cfg = to_dict(load_config(None, [*SMALL, "model.hidden=256", "model.init=gaussian", "train.batch_size=128", "train.steps=1", "train.eval_size=4"]))
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            summary = client.submit(run_variant, cfg, str(tmp_path / "v"), pure=False).result()
    assert summary["threads"]["count"] <= max(1, cores // 2)
    if cores >= 2:
        assert f"a share of {cores // 2}" in summary["threads"]["reason"], summary["threads"]


def test_resume_may_change_the_threads(invoke, tmp_path, clean_env):
    """Threads change how fast a run goes, not what it computes: --resume takes --threads."""
    cfg = load_config(None, [*SMALL, "train.threads=2"])
    first = execute(cfg, run_dir(tmp_path), stop=lambda: True)
    assert first["status"] == "interrupted"
    result = invoke("train", "--resume", tmp_path / "run", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert summary["status"] == "completed" and summary["threads"]["count"] == 1
