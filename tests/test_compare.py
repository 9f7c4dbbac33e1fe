"""``bptt compare`` end to end: fair variants (same data and initial weights per seed), results
that do not depend on the number of workers or the executor, failures that stay in their own
variant (divergence, SIGKILL, Ctrl-C), ``--resume``, the CSV/JSON files, and bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import multiprocessing
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bptt_cli import compare as cmp
from bptt_cli import render, runs
from bptt_cli.config import load_config
from bptt_cli.core.losses import LOSSES
from bptt_cli.core.model import RNN, forward
from bptt_cli.tasks import make_task

from conftest import SMALL, one_line, read_logs, sets, stderr_of  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
DELAY = ROOT / "configs" / "delay.yaml"  # its compare: section is overridden by --modes below
# SMALL with 6 steps and an evaluation every 3: a variant trains in a few milliseconds.
TINY = (*SMALL, "train.steps=6", "train.eval_every=3")
MODES = "full,k_truncated:2,subsequence:4"  # T = 12, delay 2: every subsequence chunk is scored






def run_compare(invoke, root: Path, *args, overrides=TINY, workers: int | None = 1) -> tuple[Path, object]:
    """``bptt compare configs/delay.yaml`` into ``root``; returns (compare dir, CliRunner result)."""
    extra = ["--workers", workers] if workers is not None else []
    result = invoke("compare", DELAY, "--runs-root", root, *sets(*overrides), *extra, "-q", *args)
    assert result.exit_code == 0, result.output
    found = sorted((root / "delay").glob("compare-*"))
    assert len(found) == 1, found
    return found[0], result


def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def variant_dirs(path: Path) -> dict[str, Path]:
    variants, _ = cmp.read_plan(path)
    return {v.id: path / v.id for v in variants}


def outcome(path: Path) -> dict[str, dict]:
    """Everything a variant's run produced that must not depend on how it was run: logs (time
    fields dropped) and the summary's counters and final metrics."""
    out = {}
    for vid, d in variant_dirs(path).items():
        s = summary_of(d)
        keys = ("status", "steps_done", "updates", "sequences", "final", "best", "diverged_at")
        out[vid] = {**read_logs(d), **{k: s.get(k) for k in keys}}
    return out


def digest(path: Path) -> dict[str, str]:
    """sha256 of every file in a run directory."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir()) if p.is_file()}


def first_loss(run_dir: Path) -> float:
    return read_logs(run_dir)["metrics"][0]["loss"]


# -- fairness: the same data and initial weights for every variant of a seed ---------------------
def test_variants_of_a_seed_share_data_and_initial_weights(invoke, tmp_path):
    path, _ = run_compare(invoke, tmp_path, "--modes", MODES, "--seeds", "2")
    dirs = variant_dirs(path)
    assert set(dirs) == {f"{m}_seed{s}" for m in ("full", "k_truncated-2", "subsequence-4") for s in (0, 1)}

    # The resolved configs differ only in the truncation mode.
    for seed in (0, 1):
        configs = [load_config(dirs[f"{m}_seed{seed}"] / "config.yaml") for m in ("full", "k_truncated-2", "subsequence-4")]
        assert [c.seed for c in configs] == [seed] * 3
        shared = [(c.task, c.model, c.clip, c.optimizer, c.train) for c in configs]
        assert shared[1:] == shared[:1] * 2
        assert [c.truncation.spec for c in configs] == ["full", "k_truncated:2", "subsequence:4"]

    # Update 1 of a sequence-update mode is the loss of the first batch under the initial
    # weights: truncation changes the backward pass only, so full and k_truncated agree exactly.
    for seed in (0, 1):
        assert first_loss(dirs[f"full_seed{seed}"]) == first_loss(dirs[f"k_truncated-2_seed{seed}"])
    assert first_loss(dirs["full_seed0"]) != first_loss(dirs["full_seed1"])

    # The same number computed here from the task and RNN.init of the variant's config, and the
    # loss of the first subsequence chunk from the same forward pass restricted to its 4 steps.
    for seed in (0, 1):
        cfg = load_config(dirs[f"full_seed{seed}"] / "config.yaml")
        task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=np.dtype(cfg.model.dtype))
        b = task.train_batch(0, cfg.train.batch_size)
        m = cfg.model
        model = RNN.init(
            task.n_in, m.hidden, task.n_out,
            activation=m.activation, init=m.init, spectral_radius=m.spectral_radius, seed=cfg.seed, dtype=m.dtype,
        )  # fmt: skip
        _, y = forward(model.params, b.x, activation=m.activation)  # y (T, B, O)
        whole, _ = LOSSES[task.loss](y, b.targets, b.mask)
        chunk, _ = LOSSES[task.loss](y[:4], b.targets[:4], b.mask[:4])
        assert first_loss(dirs[f"full_seed{seed}"]) == pytest.approx(whole, rel=1e-6)
        sub = read_logs(dirs[f"subsequence-4_seed{seed}"])["metrics"]
        assert (sub[0]["step"], sub[0]["chunk"]) == (1, 0)
        assert sub[0]["loss"] == pytest.approx(chunk, rel=1e-6)


# -- the number of workers and the executor do not change any result ------------------------------
def test_one_and_two_workers_give_identical_runs(invoke, tmp_path):
    one, _ = run_compare(invoke, tmp_path / "one", "--modes", MODES, "--seeds", "2", workers=1)
    two, _ = run_compare(invoke, tmp_path / "two", "--modes", MODES, "--seeds", "2", workers=2)
    a, b = outcome(one), outcome(two)
    assert len(a) == 6
    assert all(o["status"] == "completed" and o["metrics"] and o["eval"] for o in a.values())
    assert a == b


def test_dask_cluster_gives_the_same_rows_as_local_workers(invoke, tmp_path):
    distributed = pytest.importorskip("distributed")
    local, _ = run_compare(invoke, tmp_path / "local", "--modes", "full,subsequence:4", workers=1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        try:
            result = invoke(
                "compare", DELAY, "--runs-root", tmp_path / "dask", *sets(*TINY), "--modes", "full,subsequence:4",
                "--scheduler", cluster.scheduler_address, "-q",
            )  # fmt: skip
        finally:
            try:  # the CLI's Client, should it be left open, would outlive the cluster
                distributed.default_client().close()
            except ValueError:
                pass
    assert result.exit_code == 0, result.output
    (dask,) = sorted((tmp_path / "dask" / "delay").glob("compare-*"))
    assert outcome(dask) == outcome(local)
    strip = ("path", "run_dir", *(k + s for k in ("wall_time_s", "ms_per_update", "ms_per_sequence") for s in ("", "_std")))
    for kind in ("variants", "rows"):
        rows_dask = [{k: v for k, v in r.items() if k not in strip} for r in cmp.collect(dask)[kind]]
        rows_local = [{k: v for k, v in r.items() if k not in strip} for r in cmp.collect(local)[kind]]
        assert rows_dask == rows_local


def test_bad_scheduler_address_is_a_user_error(invoke, tmp_path):
    pytest.importorskip("distributed")
    # An address Dask refuses at once (an unreachable host would take the 10 s connect timeout).
    result = invoke("compare", DELAY, "--runs-root", tmp_path, *sets(*TINY), "--modes", "full", "--scheduler", "foo://bar")
    assert result.exit_code == 2, result.output
    assert "--scheduler foo://bar: cannot connect (unknown address scheme 'foo'" in one_line(stderr_of(result))
    assert "Traceback" not in result.output


# -- one variant's failure stays in that variant -----------------------------------------------
def test_a_diverging_variant_leaves_the_others_completed(invoke, tmp_path):
    # A linear RNN with spectral radius 30 over 40 steps overflows float32 on the first batch.
    overrides = (*TINY, "task.length=40", "model.activation=identity", "clip.mode=none")
    path, result = run_compare(
        invoke, tmp_path, "--modes", "full,k_truncated:2", "--grid", "model.spectral_radius=0.9,30", overrides=overrides
    )
    rows = {r["id"]: r for r in json.loads((path / "compare.json").read_text())["variants"]}
    assert set(rows) == {f"{m}_spectral_radius-{r}_seed0" for m in ("full", "k_truncated-2") for r in ("0.9", "30")}
    for vid, row in rows.items():
        s = summary_of(path / vid)
        if vid.endswith("radius-30_seed0"):
            assert s["status"] == row["status"] == "diverged"
            assert s["diverged_at"]["step"] >= 1
            assert row["stopped_at"] == s["diverged_at"]["step"]
        else:
            assert s["status"] == row["status"] == "completed"
            assert s["steps_done"] == 6 and row["stopped_at"] is None
    out = one_line(result.stdout)
    assert "1/1 diverged" in out and "diverged" in out


def test_a_worker_killed_by_sigkill_fails_only_its_own_variant(tmp_path):
    base = load_config(DELAY, list(TINY))
    short = cmp.plan(base, modes=["full", "k_truncated:2"], seeds=[0])
    # Runs for minutes unless killed; it goes first so it is running while the short ones finish.
    (long,) = cmp.plan(load_config(DELAY, [*TINY, "train.steps=1000000"]), modes=["subsequence:4"], seeds=[0])
    variants = [long, *short]
    path = tmp_path / "cmp"
    path.mkdir()
    cmp.write_plan(path, variants, {"name": "delay", "budget": "sequences"})

    killed: list[int] = []
    deadline = time.monotonic() + 60

    def on_progress(prog: cmp.Progress) -> None:
        if killed:
            return
        others_done = all(prog.status.get(v.id) == "completed" for v in short)
        # The executor's worker processes; finished ones drop out. (Polled only until the kill,
        # so this never races the executor for the killed process's exit status.)
        children = multiprocessing.active_children()
        if others_done and prog.steps.get(long.id, 0) > 0 and len(children) == 1:
            os.kill(children[0].pid, signal.SIGKILL)
            killed.append(children[0].pid)

    executor = cmp.ProcessPerTaskExecutor(2)
    try:
        prog = cmp.execute_all(
            path, variants, executor, stop=lambda: time.monotonic() > deadline, on_progress=on_progress, poll=0.02
        )
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    assert killed, "the long variant was never seen running alone"
    assert prog.status == {long.id: "failed", short[0].id: "completed", short[1].id: "completed"}
    s = summary_of(path / long.id)
    assert s["status"] == "failed"
    assert "killed by signal 9" in s["error"]
    logged = read_logs(path / long.id)["metrics"]  # the logs up to the kill are kept
    assert logged and s["steps_done"] == logged[-1]["step"] > 0
    for v in short:
        assert summary_of(path / v.id)["status"] == "completed"
    row = {r["id"]: r for r in cmp.collect(path)["variants"]}[long.id]
    assert (row["status"], row["stopped_at"]) == ("failed", s["steps_done"])


# -- Ctrl-C and --resume ------------------------------------------------------------------------
def test_resume_runs_only_the_missing_variants(invoke, tmp_path):
    path, _ = run_compare(invoke, tmp_path, "--modes", MODES, "--seeds", "2")
    before = outcome(path)
    dirs = variant_dirs(path)
    # One variant never started (its directory is gone), one was interrupted before its first
    # checkpoint (it has to start again from scratch).
    gone, cut = dirs["k_truncated-2_seed1"], dirs["subsequence-4_seed0"]
    for p in gone.iterdir():
        p.unlink()
    gone.rmdir()
    s = summary_of(cut)
    (cut / "checkpoint.npz").unlink()
    runs.RunWriter(cut).summary({**s, "status": "interrupted"})
    untouched = {vid: digest(d) for vid, d in dirs.items() if d not in (gone, cut)}

    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    assert result.exit_code == 0, result.output
    assert {vid: digest(dirs[vid]) for vid in untouched} == untouched
    assert summary_of(gone)["status"] == summary_of(cut)["status"] == "completed"
    assert outcome(path) == before


def test_resume_takes_nothing_but_the_directory(invoke, tmp_path):
    path, _ = run_compare(invoke, tmp_path, "--modes", "full")
    result = invoke("compare", "--resume", path, "--set", "train.steps=3")
    assert result.exit_code == 2, result.output
    assert "--resume takes everything from the compare directory" in one_line(stderr_of(result))
    result = invoke("compare", "--resume", tmp_path)
    assert result.exit_code == 2, result.output
    assert "is not a compare directory (no plan.json)" in one_line(stderr_of(result))
    assert "Traceback" not in result.output


# Long enough to be running when SIGINT arrives (each variant well over 0.5 s), short enough to
# run three times.
LONG = (*SMALL, "train.steps=2000", "train.eval_every=500")


def test_ctrl_c_interrupts_every_worker_and_resume_finishes_them(invoke, tmp_path):
    root = tmp_path / "interrupted"
    args = ["--modes", "full,k_truncated:2", "--seeds", "2", *sets(*LONG)]
    log = tmp_path / "stderr.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bptt_cli", "compare", str(DELAY), "--runs-root", str(root), "--workers", "2", "-q", *args],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "COLUMNS": "250"},
            start_new_session=True,  # its own process group: the workers get Ctrl-C too, as in a terminal
        )
    try:
        deadline = time.monotonic() + 60
        while not any(p.stat().st_size > 0 for p in root.glob("delay/compare-*/*/metrics.jsonl")):
            assert proc.poll() is None, f"compare ended (exit {proc.returncode}) before SIGINT: {log.read_text()}"
            assert time.monotonic() < deadline, "no metrics within 60 s"
            time.sleep(0.01)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        assert proc.wait(timeout=60) == 130, log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    message = one_line(log.read_text())
    assert "Traceback" not in message
    (path,) = sorted((root / "delay").glob("compare-*"))
    assert f"bptt compare --resume {path}" in message
    statuses = {r["id"]: r["status"] for r in cmp.collect(path)["variants"]}
    assert len(statuses) == 4
    assert set(statuses.values()) <= {"interrupted", "not started", "completed"}, statuses
    assert "interrupted" in statuses.values(), statuses
    for vid, st in statuses.items():
        if st == "interrupted":  # stopped on a step boundary, with a checkpoint to resume from
            assert (path / vid / "checkpoint.npz").exists()

    result = invoke("compare", "--resume", path, "--workers", 1, "-q")
    assert result.exit_code == 0, result.output
    assert {r["status"] for r in cmp.collect(path)["variants"]} == {"completed"}
    reference, _ = run_compare(invoke, tmp_path / "reference", *args)
    assert outcome(path) == outcome(reference)


def test_workers_start_with_ctrl_c_ignored_until_their_variant_handles_it():
    # The cause of a flaky Ctrl-C test: a worker still starting (unpickling its call, before
    # run_variant installed its handler) took the Ctrl-C sent to the process group as a
    # KeyboardInterrupt outside any handler; and the fork server, hit while still importing,
    # died, so the next start failed in the executor's thread and the compare hung. Workers
    # now come from a fork server started with SIGINT ignored.
    executor = cmp.ProcessPerTaskExecutor(1)
    try:
        assert executor.submit(signal.getsignal, signal.SIGINT).result(timeout=60) == signal.SIG_IGN
    finally:
        executor.shutdown(wait=True)


def test_a_worker_that_cannot_start_fails_its_call_not_the_executor():
    executor = cmp.ProcessPerTaskExecutor(1)

    class Broken:
        def __init__(self, *args, **kwargs):
            pass

        def start(self):
            raise EOFError("unexpected EOF")  # what a dead fork server gives

    real = executor._ctx
    executor._ctx = type("Ctx", (), {"Process": Broken, "Pipe": staticmethod(real.Pipe)})()
    try:
        with pytest.raises(cmp.VariantFailed, match="cannot start a worker process"):
            executor.submit(os.getpid).result(timeout=60)
        executor._ctx = real
        assert executor.submit(os.getpid).result(timeout=60) != os.getpid()  # and it goes on
    finally:
        executor.shutdown(wait=True)


# -- the results files and the table -------------------------------------------------------------
def test_csv_and_json_hold_the_numbers_the_table_shows(invoke, tmp_path):
    path, result = run_compare(invoke, tmp_path, "--modes", MODES, "--seeds", "2")
    data = json.loads((path / "compare.json").read_text(encoding="utf-8"))
    with open(path / "compare.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))  # one row per variant
    with open(path / "compare_summary.csv", newline="", encoding="utf-8") as f:
        aggregates = list(csv.DictReader(f))  # one row per mode/grid point
    assert len(table) == 6 and len(aggregates) == 3
    assert data["budget"] == "sequences" and len(data["variants"]) == 6 and len(data["rows"]) == 3
    stdout = result.stdout
    lines = stdout.splitlines()
    by_group = {r["group"]: r for r in aggregates}

    for row in data["rows"]:
        ids = [v["id"] for v in data["variants"] if v["group"] == row["group"]]
        assert len(ids) == 2
        finals = [summary_of(path / vid)["final"] for vid in ids]
        for key, col in (("eval.loss", "eval_loss"), ("train.loss", "train_loss"), ("eval.accuracy", "metric_value")):
            values = [s[key] for s in finals]
            assert row[col] == pytest.approx(statistics.fmean(values), rel=1e-12)
            assert row[col + "_std"] == pytest.approx(statistics.stdev(values), rel=1e-9)
            assert float(by_group[row["group"]][col + "_mean"]) == row[col]  # repr in the CSV: exact round trip
        updates = [summary_of(path / vid)["updates"] for vid in ids]
        assert row["updates"] == statistics.fmean(updates) == float(by_group[row["group"]]["updates_mean"])
        assert row["metric"] == "accuracy" and row["statuses"] == {"completed": 2}
        assert by_group[row["group"]]["n_completed"] == "2"
        # The outcome table's row of this group shows the mean +- std as formatted for display.
        (line,) = [ln for ln in lines if ln.strip().startswith(row["group"] + " ") and "2/2 ok" in ln]
        assert f"{render.fmt(row['eval_loss'])} ± {render.fmt(row['eval_loss_std'], 2)}" in line
        assert f"{render.fmt(row['metric_value'])} ± {render.fmt(row['metric_value_std'], 2)}" in line

    for v in data["variants"]:
        (csv_row,) = [r for r in table if r["id"] == v["id"]]
        s = summary_of(path / v["id"])
        assert v["eval_loss"] == s["final"]["eval.loss"] == float(csv_row["eval_loss"])
        assert int(csv_row["updates"]) == v["updates"] == s["updates"]
        assert int(csv_row["seed"]) == v["seed"] and csv_row["status"] == "completed"
    assert "(chance 0.125)" in stdout  # under the accuracy header

    # bptt show COMPARE_DIR reads the same numbers back from the files.
    shown = invoke("show", path, "--json")
    assert shown.exit_code == 0, shown.output
    again = json.loads(shown.stdout)
    assert again["rows"] == data["rows"] and again["variants"] == data["variants"]


@pytest.mark.parametrize("column", ["eval_loss", "group", "updates"])
def test_sort_orders_the_rows(invoke, tmp_path, column):
    path, result = run_compare(invoke, tmp_path, "--modes", MODES, "--sort", column)
    rows = json.loads((path / "compare.json").read_text())["rows"]
    expected = [r["group"] for r in sorted(rows, key=lambda r: r[column])]
    lines = [ln.strip() for ln in result.stdout.splitlines()]
    shown = [ln.split()[0] for ln in lines if ln.split() and ln.split()[0] in expected and "1/1 ok" in ln]
    assert shown == expected


# -- fair budgets --------------------------------------------------------------------------------
@pytest.mark.parametrize("budget", ["sequences", "updates"])
def test_budget_equalises_sequences_or_updates(invoke, tmp_path, budget):
    # T = 12 and subsequence:4: three chunk updates per batch against one for full.
    path, result = run_compare(invoke, tmp_path, "--modes", "full,k_truncated:2,subsequence:4", "--budget", budget)
    full, ktr, sub = (summary_of(path / vid) for vid in ("full_seed0", "k_truncated-2_seed0", "subsequence-4_seed0"))
    assert full["updates"] == ktr["updates"] == 6 and full["sequences"] == ktr["sequences"] == 24
    if budget == "sequences":
        assert (sub["updates"], sub["sequences"]) == (18, 24)
    else:
        assert (sub["updates"], sub["sequences"]) == (6, 8)
    assert all(s["status"] == "completed" for s in (full, ktr, sub))
    assert f"({budget} budget)" in result.stdout


def test_updates_budget_follows_a_grid_over_train_steps(invoke, tmp_path):
    path, _ = run_compare(invoke, tmp_path, "--modes", "full,subsequence:4", "--grid", "train.steps=3,12", "--budget", "updates")
    for steps in (3, 12):
        full = summary_of(path / f"full_steps-{steps}_seed0")
        sub = summary_of(path / f"subsequence-4_steps-{steps}_seed0")
        assert full["updates"] == sub["updates"] == steps


# -- bad input ------------------------------------------------------------------------------------
VALID_MODES = "valid forms: full, k_truncated:K (K >= 0), subsequence:K (K >= 1), tbptt:K1:K2 (K2 >= K1 >= 1)"
SORT_LIST = ", ".join(render.SORT_KEYS)


BAD_OPTIONS = [
    (["--modes", "foo"], ["--modes: bad truncation 'foo': unknown mode 'foo'", VALID_MODES]),
    (["--modes", "full,k_truncated:-1"], ["bad truncation 'k_truncated:-1': K must be >= 0", VALID_MODES]),
    (["--modes", "subsequence"], ["subsequence takes 1 integer argument", VALID_MODES]),
    (["--modes", ","], ["--modes needs a comma-separated list such as full,k_truncated:5,subsequence:10"]),
    (["--grid", "clip.threshold"], ["--grid expects KEY=V1,V2,... with a dotted key, e.g. clip.threshold=1,5,none", "'clip.threshold'"]),
    (["--grid", "=1,2"], ["--grid expects KEY=V1,V2,..."]),
    (["--grid", "clip.threshold="], ["--grid expects KEY=V1,V2,..."]),
    (["--grid", "nokey=1,2"], ["nokey: unknown key", "allowed at the top level: name, seed, task"]),
    (["--grid", "clip.thresh=1"], ["clip.thresh: unknown key (did you mean clip.threshold?)", "allowed in clip: mode, threshold"]),
    (["--grid", "model.hidden=8,-3"], ["model.hidden: must be >= 1", "got -3"]),
    (["--grid", "clip.threshold=1,5,1"], ["--grid clip.threshold lists 1 more than once; each value makes one variant"]),
    (["--seeds", "0"], ["--seeds 0: a count must be >= 1; to name a single seed, add a comma: --seeds 0,"]),
    (["--seeds", "a"], ["--seeds takes a count (3) or a list of seeds (3,7,11), got 'a'"]),
    (["--seeds", "3,3"], ["--seeds list must hold distinct seeds >= 0"]),
    (["--budget", "steps"], ["--budget must be sequences or updates, got 'steps'"]),
    (["--sort", "loss"], [f"--sort must be one of {SORT_LIST}, got 'loss'"]),
]


@pytest.mark.parametrize("args, fragments", BAD_OPTIONS, ids=[" ".join(a) for a, _ in BAD_OPTIONS])
def test_bad_options_exit_2_naming_the_valid_forms(invoke, tmp_path, args, fragments):
    result = invoke("compare", DELAY, "--runs-root", tmp_path, *sets(*TINY), "--workers", 1, *args)
    err = one_line(stderr_of(result))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"
    assert result.stdout == ""
    assert not (tmp_path / "delay").exists()  # nothing ran, no compare directory was made


def test_no_k_anywhere_asks_for_modes(invoke, tmp_path):
    # The quickstart trains full BPTT and names no K, so there is no default set to build.
    result = invoke("compare", "--runs-root", tmp_path, *sets(*TINY))
    assert result.exit_code == 2, result.output
    assert "no modes to compare: pass --modes" in one_line(stderr_of(result))


def test_text_variants_share_one_encoded_corpus_next_to_the_runs(invoke, tmp_path, monkeypatch):
    """The text task's encoded copy is kept in <runs root>/.cache, once per file content,
    and every variant of a compare (and a later train) reads that copy instead of its own."""
    home_cache = tmp_path / "user-cache"
    monkeypatch.setenv("BPTT_CACHE_DIR", str(home_cache))
    text = tmp_path / "corpus.txt"
    text.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    cfg = tmp_path / "text.yaml"
    cfg.write_text(f"name: text\ntask: {{name: text, path: {text}, length: 10}}\n", encoding="utf-8")
    root = tmp_path / "runs"
    small = sets("model.hidden=8", "train.batch_size=4", "train.eval_size=8", "train.steps=4", "train.eval_every=2")
    result = invoke("compare", cfg, "--runs-root", root, *small, "--modes", "full,k_truncated:2", "--workers", "2", "-q")
    assert result.exit_code == 0, result.output
    entries = sorted(p.name for p in (root / ".cache" / "text").iterdir())
    assert len([e for e in entries if e.endswith(".ids.npy")]) == 1, entries
    stamp = {p: p.stat().st_mtime_ns for p in (root / ".cache" / "text").iterdir()}
    result = invoke("train", cfg, "--runs-root", root, *small, "-q")
    assert result.exit_code == 0, result.output
    assert {p: p.stat().st_mtime_ns for p in (root / ".cache" / "text").iterdir()} == stamp  # read, not rebuilt
    assert not home_cache.exists()
