"""The ``bptt`` command line through Typer's CliRunner (and a real subprocess for the module
entry point): what each command writes, prints and exits with, bad input included."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import typer.main
import yaml

from bptt_cli import runs
from bptt_cli.cli import app
from bptt_cli.config import Config, load_config
from bptt_cli.tasks import REGISTRY

from conftest import one_line, read_logs, stderr_of  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").glob("*.yaml"))
ANSI = "\x1b["
METRIC_KEYS = {"step", "update", "loss", "grad_norm", "clipped_norm", "clipped", "grad_norms", "lr", "time"}




def summary_of(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def only_run(root: Path) -> Path:
    found = runs.find_runs(root)
    assert len(found) == 1, found
    return found[0]


def assert_user_error(result, *fragments: str) -> None:
    """Exit 2, one message on stderr naming every fragment, nothing on stdout, no traceback."""
    err = one_line(stderr_of(result))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert err.startswith("error: "), err
    assert err.count("error: ") == 1, err
    for f in fragments:
        if f.startswith("re:"):
            assert re.search(f[3:], err), f"{f[3:]!r} does not match {err!r}"
        else:
            assert f in err, f"{f!r} not in {err!r}"
    if stderr_of(result) is not result.output:
        assert result.stdout == ""


# -- the quickstart ---------------------------------------------------------------------------
def test_quickstart_runs_and_writes_every_file(invoke, tmp_path):
    result = invoke("train", "--runs-root", tmp_path, "--set", "train.steps=30")
    assert result.exit_code == 0, result.output
    run = only_run(tmp_path)
    assert run.parent == tmp_path / "quickstart"
    assert {p.name for p in run.iterdir()} == {"config.yaml", "metrics.jsonl", "eval.jsonl", "checkpoint.npz", "summary.json"}

    assert load_config(run / "config.yaml") == load_config(None, ["train.steps=30"])

    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 31))
    assert [m["update"] for m in metrics] == list(range(1, 31))
    for m in metrics:
        assert METRIC_KEYS <= set(m), set(m)
        assert set(m["grad_norms"]) == {"W_xh", "W_hh", "b_h", "W_hy", "b_y"}
        assert all(math.isfinite(m[k]) for k in ("loss", "grad_norm", "clipped_norm", "lr", "time"))
    evals = [json.loads(line) for line in (run / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [30]  # eval_every 50 > 30 steps: only at the end
    assert {"loss", "accuracy"} <= set(evals[0])

    ckpt = runs.load_checkpoint(run)
    assert int(ckpt["step"]) == 30 and int(ckpt["update"]) == 30
    assert {"param/W_hh", "optim/t"} <= set(ckpt)

    s = summary_of(run)
    assert s["status"] == "completed"
    assert s["steps_done"] == 30 and s["updates"] == 30 and s["steps"] == 30
    assert s["seed"] == 0 and s["task"] == "delay" and s["truncation"] == "full"
    assert s["final"]["train.loss"] == metrics[-1]["loss"]
    assert s["final"]["eval.accuracy"] == evals[-1]["accuracy"]
    assert s["best"]["eval.loss"] == evals[-1]["loss"]
    assert s["env"]["numpy"] == np.__version__ and s["env"]["python"].startswith("3.")
    assert s["wall_time"] > 0 and s["updates_per_second"] > 0

    out = result.stdout
    assert "Training log" in out and "Summary" in out and "completed" in out
    assert ANSI not in result.output  # not a terminal: plain text
    assert f"run: {run}" in one_line(stderr_of(result))


def test_config_yaml_of_a_finished_run_reproduces_it(invoke, tmp_path, small):
    first, second = tmp_path / "first", tmp_path / "second"
    result = invoke("train", "--run-dir", first, *[a for s in small for a in ("--set", s)], "-q")
    assert result.exit_code == 0, result.output
    result = invoke("train", first / "config.yaml", "--run-dir", second, "-q")
    assert result.exit_code == 0, result.output
    assert (first / "config.yaml").read_text() == (second / "config.yaml").read_text()
    a, b = read_logs(first), read_logs(second)
    assert a["metrics"] and a == b


def test_two_runs_started_in_the_same_second_get_different_directories(invoke, tmp_path, small):
    sets = [a for s in small for a in ("--set", s)]
    for _ in range(2):
        result = invoke("train", "--runs-root", tmp_path, *sets, "--set", "train.steps=1", "-q")
        assert result.exit_code == 0, result.output
    found = runs.find_runs(tmp_path)
    assert len(found) == 2 and found[0] != found[1]
    assert all(summary_of(p)["status"] == "completed" for p in found)


# -- bad input: exit 2, one message, no traceback -------------------------------------------
BAD_FILES = {
    "yaml-syntax": ("name: x\ntask:\n  name: delay\n  delay: [1, 2\n", [], [r"re:bad\.yaml:\d+:\d+: invalid YAML"]),
    "unknown-key": ("truncation:\n  mdoe: full\n", [], ["bad.yaml:2:3", "truncation.mdoe", "did you mean truncation.mode?"]),
    "unknown-top-key": ("lr: 0.1\n", [], ["bad.yaml:1:1", "unknown key", "did you mean optimizer.lr?"]),
    "wrong-type": ("model:\n  hidden: abc\n", [], ["bad.yaml:2:3", "model.hidden", "expected an integer", "'abc'"]),
    "quoted-number": ("model:\n  hidden: '12'\n", [], ["model.hidden", "quoted string"]),
    "out-of-range": ("model:\n  hidden: 0\n", [], ["bad.yaml:2:3", "model.hidden", ">= 1", "got 0"]),
    "bad-choice": ("model:\n  activation: tahn\n", [], ["model.activation", "tanh, relu, identity", "did you mean tanh?"]),
    "bad-truncation": ("truncation:\n  mode: tbptt:8:4\n", [], ["truncation.mode", "valid forms", "k_truncated:K", "tbptt:K1:K2"]),
    "unknown-truncation": ("truncation: trunc:3\n", [], ["truncation", "valid forms", "subsequence:K"]),
    "unknown-task": ("task:\n  name: delai\n", [], ["bad.yaml:2:3", "task.name", "unknown task 'delai'", "did you mean 'delay'?"]),
    "bad-task-param": ("task:\n  name: delay\n  delay: -1\n", [], ["bad.yaml:3:3", "task.delay", "0 <= delay"]),
    "unknown-task-param": ("task:\n  name: delay\n  dealy: 3\n", [], ["task.dealy", "did you mean task.delay?"]),
    "not-a-mapping": ("- 1\n- 2\n", [], ["bad.yaml:1:1", "top level must be a mapping"]),
    "empty": ("", [], ["bad.yaml", "empty"]),
    "bad-set": ("name: ok\n", ["--set", "model.hidden"], ["--set expects KEY=VALUE", "'model.hidden'"]),
    "bad-set-value": ("name: ok\n", ["--set", "model.hidden=big"], ["--set model.hidden=big", "model.hidden", "expected an integer"]),
    "set-unknown-key": ("name: ok\n", ["--set", "model.hiden=3"], ["--set model.hiden=3", "did you mean model.hidden?"]),
    "bad-expect": ("name: ok\n", ["--expect", "eval.accuracy=0.9"], ["expected METRIC OP NUMBER", "'eval.accuracy=0.9'"]),
    "bad-expect-metric": ("name: ok\n", ["--expect", "accuracy>=0.9"], ["train.<name> or eval.<name>"]),
}


@pytest.mark.parametrize("case", list(BAD_FILES), ids=list(BAD_FILES))
def test_a_bad_config_exits_2_with_one_clear_message(invoke, tmp_path, case):
    text, extra, fragments = BAD_FILES[case]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text, encoding="utf-8")
    result = invoke("train", cfg, "--runs-root", tmp_path / "runs", *extra)
    assert_user_error(result, *fragments)
    assert not (tmp_path / "runs").exists()  # nothing recorded for a config that never ran


@pytest.mark.parametrize(
    "tag",
    ["!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system"],
)
def test_python_tags_are_refused_and_nothing_runs(invoke, tmp_path, tag):
    marker = tmp_path / "MARKER"
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(f"name: {tag} ['touch {marker}']\n", encoding="utf-8")
    for command in (["train", cfg, "--runs-root", tmp_path / "runs"], ["validate", cfg]):
        result = invoke(*command)
        assert_user_error(result, "evil.yaml:1:", "unsupported YAML tag", "only plain YAML")
        assert not marker.exists()
    assert not (tmp_path / "runs").exists()


def test_a_missing_config_file(invoke, tmp_path):
    result = invoke("train", tmp_path / "nope.yaml", "--runs-root", tmp_path)
    assert_user_error(result, "nope.yaml", "no such config file")


def test_run_dir_that_is_not_empty_is_refused(invoke, tmp_path, small):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "precious.txt").write_text("keep")
    result = invoke("train", "--run-dir", target, *[a for s in small for a in ("--set", s)])
    assert_user_error(result, "is not empty", "--resume")
    assert sorted(p.name for p in target.iterdir()) == ["precious.txt"]


def test_resume_of_a_folder_that_is_not_a_run(invoke, tmp_path):
    result = invoke("train", "--resume", tmp_path)
    assert_user_error(result, "not a run directory")
    result = invoke("train", "--resume", tmp_path / "missing")
    assert_user_error(result, "not a run directory")


def test_resume_takes_no_config_and_no_override_but_more_steps(invoke, tmp_path, small):
    run = tmp_path / "r"
    assert invoke("train", "--run-dir", run, *[a for s in small for a in ("--set", s)], "-q").exit_code == 0
    result = invoke("train", run / "config.yaml", "--resume", run)
    assert_user_error(result, "--resume takes the config from the run directory")
    result = invoke("train", "--resume", run, "--set", "model.hidden=3")  # extending: tests/test_api.py
    assert_user_error(result, "--resume may change only train.steps")


def test_a_missing_text_file_is_a_user_error(invoke, tmp_path):
    result = invoke("train", "--runs-root", tmp_path / "runs", "--set", "task.name=text", "--set", f"task.path={tmp_path / 'none.txt'}")
    assert_user_error(result, "task 'text' parameter 'path'", "does not exist")
    assert not (tmp_path / "runs").exists()


# -- divergence -------------------------------------------------------------------------------
DIVERGE = ("clip.mode=none", "model.activation=identity", "model.spectral_radius=1.5", "optimizer.name=sgd", "optimizer.lr=0.1")


def test_divergence_is_a_result_with_finite_logs(invoke, tmp_path, small):
    run = tmp_path / "boom"
    sets = [a for s in (*small, *DIVERGE, "train.steps=40") for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets)
    assert result.exit_code == 0, result.output
    s = summary_of(run)
    assert s["status"] == "diverged"
    d = s["diverged_at"]
    assert d["what"] == "loss" or d["what"].startswith("gradient")
    assert s["steps_done"] == d["step"] - 1 < 40
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert lines, "the steps before the blow-up are logged"
    for line in lines:
        rec = json.loads(line, parse_constant=lambda c: pytest.fail(f"non-finite {c} in metrics.jsonl"))
        assert all(math.isfinite(rec[k]) for k in ("loss", "grad_norm", "clipped_norm"))
        assert all(math.isfinite(v) for v in rec["grad_norms"].values())
    assert [json.loads(x)["step"] for x in lines] == list(range(1, d["step"]))
    assert "diverged" in one_line(stderr_of(result)) and f"step {d['step']}" in one_line(stderr_of(result))
    assert "NaN/Inf" in result.stdout  # the table marks the step that blew up
    if (run / "checkpoint.npz").exists():  # only the last periodic one: never non-finite weights
        assert all(np.isfinite(v).all() for v in runs.load_checkpoint(run).values())


def test_divergence_at_the_first_step(invoke, tmp_path, small):
    run = tmp_path / "boom"
    sets = [a for s in (*small, "task.length=40", "clip.mode=none", "model.activation=identity", "model.spectral_radius=30") for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets, "-q")
    assert result.exit_code == 0, result.output
    s = summary_of(run)
    assert s["status"] == "diverged" and s["diverged_at"]["step"] == 1 and s["steps_done"] == 0
    assert runs.read_jsonl(run / "metrics.jsonl") == ([], [])
    shown = invoke("show", run)
    assert shown.exit_code == 0, shown.output
    assert "diverged" in shown.stdout


def test_resume_of_a_diverged_run_is_refused(invoke, tmp_path, small):
    run = tmp_path / "boom"
    sets = [a for s in (*small, *DIVERGE, "train.steps=40") for a in ("--set", s)]
    assert invoke("train", "--run-dir", run, *sets, "-q").exit_code == 0
    before = (run / "metrics.jsonl").read_bytes()
    result = invoke("train", "--resume", run)
    assert_user_error(result, "diverged at step")
    assert (run / "metrics.jsonl").read_bytes() == before  # nothing replayed or rewritten
    assert summary_of(run)["status"] == "diverged"


def test_fail_on_diverge_exits_1(invoke, tmp_path, small):
    sets = [a for s in (*small, *DIVERGE, "train.steps=40") for a in ("--set", s)]
    result = invoke("train", "--run-dir", tmp_path / "boom", *sets, "--fail-on-diverge", "-q")
    assert result.exit_code == 1, result.output
    assert summary_of(tmp_path / "boom")["status"] == "diverged"
    assert "Traceback" not in result.output


# -- expectations, --json, --quiet -------------------------------------------------------------
def test_a_met_expectation_exits_0(invoke, tmp_path, small):
    run = tmp_path / "r"
    sets = [a for s in small for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets, "--expect", "eval.accuracy>=0.0", "--expect", "train.loss<1e9", "-q")
    assert result.exit_code == 0, result.output
    rows = summary_of(run)["expectations"]
    assert [(r["expect"], r["ok"]) for r in rows] == [("eval.accuracy>=0.0", True), ("train.loss<1000000000.0", True)]


def test_a_failed_expectation_exits_1_naming_metric_bound_and_value(invoke, tmp_path, small):
    run = tmp_path / "r"
    sets = [a for s in small for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets, "--expect", "eval.accuracy>=1.5", "-q")
    assert result.exit_code == 1, result.output
    s = summary_of(run)
    assert s["status"] == "completed"
    (row,) = s["expectations"]
    assert row["metric"] == "eval.accuracy" and row["ok"] is False
    assert row["value"] == s["final"]["eval.accuracy"]
    lines = [x for x in stderr_of(result).splitlines() if "expectation failed" in x]
    assert len(lines) == 1
    assert "eval.accuracy" in lines[0] and "1.5" in lines[0]
    assert re.search(r"= \d", lines[0]), lines[0]  # the value that missed


def test_an_expectation_on_a_metric_never_logged_fails(invoke, tmp_path, small):
    run = tmp_path / "r"
    sets = [a for s in small for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets, "--expect", "eval.bpc<9", "-q")
    assert result.exit_code == 1, result.output
    (row,) = summary_of(run)["expectations"]
    assert row["value"] is None and row["ok"] is False


def test_json_prints_the_summary_on_stdout(invoke, tmp_path, small):
    run = tmp_path / "r"
    sets = [a for s in small for a in ("--set", s)]
    result = invoke("train", "--run-dir", run, *sets, "--json")
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed == summary_of(run)
    assert printed["status"] == "completed"


def test_quiet_prints_only_the_summary(invoke, tmp_path, small):
    sets = [a for s in small for a in ("--set", s)]
    result = invoke("train", "--run-dir", tmp_path / "r", *sets, "--quiet")
    assert result.exit_code == 0, result.output
    assert "Summary" in result.stdout and "Training log" not in result.stdout


def test_every_thins_the_table(invoke, tmp_path, small):
    run = tmp_path / "r"
    sets = [a for s in small for a in ("--set", s)]
    assert invoke("train", "--run-dir", run, *sets, "--set", "train.eval_every=0", "-q").exit_code == 0
    full = invoke("show", run, "--every", "1")
    thin = invoke("show", run, "--every", "4")
    assert full.exit_code == 0 and thin.exit_code == 0, full.output + thin.output
    rows = lambda out: [x.split()[:2] for x in out.splitlines() if re.match(r"\s+\d+\s+\d+\s", x)]  # noqa: E731
    assert [r[0] for r in rows(full.stdout)] == [str(i) for i in range(1, 9)]
    assert [r[0] for r in rows(thin.stdout)] == ["1", "5", "8"]  # every 4th and the last


# -- smoke runs of every shipped config ---------------------------------------------------------
@pytest.mark.parametrize("config", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_smoke_runs_every_shipped_config(invoke, tmp_path, config):
    result = invoke("train", config, "--smoke", "--runs-root", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    s = json.loads(result.stdout)
    assert s["status"] == "completed"
    assert 1 <= s["steps_done"] <= 3
    run = only_run(tmp_path)
    assert (run / "diagnostics.jsonl").exists()  # smoke runs one diagnostic pass


def test_configs_ship_a_quickstart_and_one_per_task():
    names = {p.stem for p in SHIPPED}
    assert "quickstart" in names, f"configs/quickstart.yaml is missing (found {sorted(names)})"
    tasks = {load_config(p).task.name for p in SHIPPED}
    assert set(REGISTRY) <= tasks, f"no shipped config for {sorted(set(REGISTRY) - tasks)}"


def test_the_quickstart_file_is_the_built_in_default():
    path = ROOT / "configs" / "quickstart.yaml"
    if not path.exists():
        pytest.skip("configs/quickstart.yaml is not written yet")
    assert load_config(path) == Config()


# -- show, runs, tasks, validate -----------------------------------------------------------------
@pytest.fixture
def finished(invoke, tmp_path, small) -> Path:
    run = tmp_path / "runs" / "done"
    result = invoke("train", "--run-dir", run, *[a for s in small for a in ("--set", s)], "-q")
    assert result.exit_code == 0, result.output
    return run


def test_show_renders_a_completed_run(invoke, finished):
    result = invoke("show", finished)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "Training log" in out and "Summary" in out and "completed" in out
    assert "eval acc" in out
    assert "note:" not in out
    assert ANSI not in result.output


def test_show_reads_a_run_with_a_torn_last_line(invoke, finished):
    with open(finished / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 9, "update": 9, "lo')
    result = invoke("show", finished)
    assert result.exit_code == 0, result.output
    assert "Training log" in result.stdout
    assert "metrics.jsonl:9" in one_line(result.output) and "torn" in result.output


def test_show_json_prints_the_summary(invoke, finished):
    result = invoke("show", finished, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == summary_of(finished)


def test_show_of_a_folder_that_is_not_a_run(invoke, tmp_path):
    assert_user_error(invoke("show", tmp_path), "not a run directory")


def test_runs_lists_every_run(invoke, tmp_path, small, finished):
    sets = [a for s in small for a in ("--set", s)]
    other = tmp_path / "runs" / "other"
    assert invoke("train", "--run-dir", other, *sets, "--set", "name=second", "-q").exit_code == 0
    result = invoke("runs", tmp_path / "runs")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "quickstart" in out and "second" in out  # the paths may be shortened to fit
    assert out.count("completed") == 2
    assert "8/8" in out  # steps done / steps


def test_runs_of_an_empty_folder_says_so(invoke, tmp_path):
    result = invoke("runs", tmp_path)
    assert result.exit_code == 0, result.output
    assert "no runs" in stderr_of(result)
    assert_user_error(invoke("runs", tmp_path / "missing"), "not a folder")


def test_tasks_lists_every_task(invoke):
    result = invoke("tasks")
    assert result.exit_code == 0, result.output
    for name, cls in REGISTRY.items():
        assert name in result.stdout
        for p in cls.params:
            assert p.name in result.stdout


def test_validate_prints_yaml_that_loads_back_equal(invoke, tmp_path):
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("name: mine\ntask:\n  name: delay\n  delay: 3\ntruncation: tbptt:4:8\noptimizer:\n  name: sgd\n  lr: 1e-2\n")
    result = invoke("validate", cfg, "--set", "clip.threshold=2")
    assert result.exit_code == 0, result.output
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(result.stdout)
    assert load_config(resolved) == load_config(cfg, ["clip.threshold=2"])
    data = yaml.safe_load(result.stdout)
    assert data["truncation"]["k1"] == 4 and data["optimizer"]["momentum"] == 0.0  # defaults filled in


def test_validate_of_a_bad_config(invoke, tmp_path):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("train:\n  stpes: 3\n")
    assert_user_error(invoke("validate", cfg), "train.stpes", "did you mean train.steps?")


# -- help ------------------------------------------------------------------------------------------
def test_help_of_the_app_and_every_command(invoke):
    result = invoke("--help")
    assert result.exit_code == 0, result.output
    commands = sorted(typer.main.get_command(app).commands)
    assert {"train", "show", "runs", "tasks", "validate"} <= set(commands)
    for name in commands:
        assert name in result.stdout
        sub = invoke(name, "--help")
        assert sub.exit_code == 0, f"{name}: {sub.output}"
        assert "Usage" in sub.stdout


def test_python_dash_m_works():
    proc = subprocess.run([sys.executable, "-m", "bptt_cli", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "train" in proc.stdout and "Usage" in proc.stdout


# -- determinism -----------------------------------------------------------------------------------
def test_same_config_and_seed_give_identical_logs(invoke, tmp_path, small):
    sets = [a for s in (*small, "train.eval_every=2", "truncation.mode=tbptt:4:8") for a in ("--set", s)]
    for name in ("a", "b"):
        assert invoke("train", "--run-dir", tmp_path / name, *sets, "-q").exit_code == 0
    a, b = read_logs(tmp_path / "a"), read_logs(tmp_path / "b")
    assert len(a["metrics"]) == 8 * 3 and len(a["eval"]) == 4
    assert a == b


def test_a_different_seed_gives_different_logs(invoke, tmp_path, small):
    sets = [a for s in small for a in ("--set", s)]
    assert invoke("train", "--run-dir", tmp_path / "s0", *sets, "--set", "seed=0", "-q").exit_code == 0
    assert invoke("train", "--run-dir", tmp_path / "s1", *sets, "--set", "seed=1", "-q").exit_code == 0
    a, b = read_logs(tmp_path / "s0"), read_logs(tmp_path / "s1")
    assert [m["step"] for m in a["metrics"]] == [m["step"] for m in b["metrics"]]
    assert [m["loss"] for m in a["metrics"]] != [m["loss"] for m in b["metrics"]]
    assert a["eval"] != b["eval"]


# -- known rendering problems ----------------------------------------------------------------------
def test_tables_are_readable_in_an_80_column_terminal(finished):
    from rich.console import Console

    from bptt_cli import render

    console = Console(file=io.StringIO(), width=80)
    console.print(render.metrics_table(runs.load_run(finished).metrics, runs.load_run(finished).eval))
    for table in render.runs_tables([{"path": "runs/quickstart/20240101T000000Z-abcdef", "name": "quickstart",
                                      "status": "completed", "task": "delay", "truncation": "tbptt:5:20",
                                      "steps_done": 400, "steps": 400, "final_loss": 0.1234, "eval": "acc 0.9"}]):  # fmt: skip
        console.print(table)
    text = console.file.getvalue()
    assert "…" not in text, text


def test_off_a_terminal_train_and_compare_log_plain_progress_lines(invoke, tmp_path, small):
    sets = [a for s in small for a in ("--set", s)]  # 8 steps, evaluation every 4
    result = invoke("train", "--run-dir", tmp_path / "r", *sets)
    assert result.exit_code == 0, result.output
    err = stderr_of(result)
    logged = [line for line in err.splitlines() if line.startswith("step ")]
    assert [line.split(":")[0] for line in logged] == ["step 4/8", "step 8/8"]
    assert all("train loss" in line and "eval loss" in line and "accuracy" in line for line in logged)
    assert "\x1b[" not in result.output  # no ANSI codes off a terminal

    result = invoke("compare", "--modes", "full,k_truncated:1", "--workers", "1", "--runs-root", tmp_path, *sets)
    assert result.exit_code == 0, result.output
    finished = [line for line in stderr_of(result).splitlines() if line.startswith("variant ")]
    assert len(finished) == 2 and all("completed at step 8" in line for line in finished)
    assert finished[-1].endswith("(2/2)")


def test_version_is_printed_by_the_option_and_the_command(invoke):
    from bptt_cli import __version__

    for args in (["--version"], ["version"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"bptt {__version__}"


def test_shell_completion_is_offered(invoke):
    result = invoke("--show-completion", "bash")
    assert result.exit_code == 0, result.output
    assert "_bptt_completion" in result.output and "complete" in result.output
