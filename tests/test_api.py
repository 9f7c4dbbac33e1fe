"""The notebook API (bptt_cli.api), its documented example, and extending a finished run:
``--resume DIR --set train.steps=N`` must give the run a config with N steps gives from the start."""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptt_cli import api, runs
from bptt_cli.cli import app
from bptt_cli.core.errors import BpttError

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["train.steps=6", "train.eval_every=4", "train.eval_size=16", "train.batch_size=8", "model.hidden=16", "task.length=12"]


def test_run_returns_the_run_read_back_with_tables(tmp_path):
    pd = pytest.importorskip("pandas")
    run = api.run(None, SMALL, runs_root=tmp_path)
    assert run.status == "completed" and run.path.parent.parent == tmp_path
    assert isinstance(run.metrics, pd.DataFrame)
    assert list(run.metrics["update"]) == list(range(1, 7))
    assert {"loss", "grad_norm", "clipped_norm", "grad_norms.W_hh"} <= set(run.metrics.columns)
    assert list(run.eval["step"]) == [4, 6]  # every 4 steps and at the end
    assert run.final["eval.accuracy"] == run.eval["accuracy"].iloc[-1]
    assert run.config["model"]["hidden"] == 16 and run.summary["steps_done"] == 6
    again = api.load_run(run.path)
    pd.testing.assert_frame_equal(again.metrics, run.metrics)
    assert again.summary == run.summary


def test_tables_are_lists_of_flat_dicts_without_pandas(tmp_path, monkeypatch):
    run = api.run({"name": "plain", "train": {"steps": 3, "eval_size": 16, "batch_size": 4}, "model": {"hidden": 8}},
                  runs_root=tmp_path)  # fmt: skip
    monkeypatch.setitem(sys.modules, "pandas", None)
    back = api.load_run(run.path)
    assert isinstance(back.metrics, list) and len(back.metrics) == 3
    assert back.metrics[0]["update"] == 1 and "grad_norms.W_hh" in back.metrics[0]
    assert back.path.parent.name == "plain"


def test_compare_and_load_compare(tmp_path):
    pytest.importorskip("pandas")
    cmp = api.compare(None, SMALL, modes=["full", "k_truncated:2"], seeds=[0, 1], runs_root=tmp_path)
    assert list(cmp.variants["mode"]) == ["full", "full", "k_truncated:2", "k_truncated:2"]
    assert list(cmp.variants["seed"]) == [0, 1, 0, 1]
    assert set(cmp.variants["status"]) == {"completed"}
    assert len(cmp.groups) == 2
    one = cmp.run(cmp.variants["id"][2])
    assert one.config["truncation"] == {"mode": "k_truncated", "k": 2, "update_every": "auto"} and one.status == "completed"
    assert sorted(cmp.runs()) == sorted(cmp.variants["id"])
    assert list(api.load_compare(cmp.path).variants["id"]) == list(cmp.variants["id"])


def test_api_errors_are_bptt_errors(tmp_path):
    with pytest.raises(BpttError, match="model.hiden"):
        api.run(None, ["model.hiden=3"], runs_root=tmp_path)
    with pytest.raises(BpttError, match="not a compare directory"):
        api.load_compare(tmp_path)


def _exec_example(code: str, where: str, tmp_path: Path, monkeypatch) -> str:
    """Run a documented example as a reader would, from a folder with the shipped configs;
    what it printed."""
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, where, "exec"), {})
    return out.getvalue()


def test_the_documented_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    doc = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = doc.split("## Runs from a notebook", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "api.run(" in code and "api.compare(" in code
    printed = _exec_example(code, "docs/api.md", tmp_path, monkeypatch)
    assert printed.startswith("completed ") and "k_truncated:2" in printed, printed


def test_the_readme_example_of_the_api_runs(tmp_path, monkeypatch):
    pytest.importorskip("pandas")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = [b.split("```", 1)[0] for b in readme.split("```python\n")[1:]]
    code = next((b for b in blocks if "from bptt_cli import api" in b), None)
    if code is None:
        pytest.skip("README has no example of bptt_cli.api yet")
    assert _exec_example(code, "README.md", tmp_path, monkeypatch)


# -- extending a finished run ---------------------------------------------------------------
def _train(*args: str) -> None:
    result = CliRunner().invoke(app, ["train", "--quiet", *args])
    assert result.exit_code == 0, result.output


def _logs(d: Path) -> dict:
    return {log: [{k: v for k, v in r.items() if k != "time"} for r in runs.read_jsonl(d / f"{log}.jsonl")[0]] for log in runs.LOGS}


@pytest.mark.parametrize(
    "mode",
    [
        ["truncation.mode=k_truncated:3"],
        ["truncation.mode=tbptt:2:4", "train.log_every=2"],  # several updates per step, every other one logged
        ["task.name=text", "task.path=" + str(ROOT / "README.md"), "truncation.mode=subsequence:4"],  # carries h across batches
    ],
    ids=["k_truncated", "tbptt-chunks", "text-stateful"],
)
def test_extending_a_finished_run_gives_the_run_configured_longer(tmp_path, mode):
    common = ["train.eval_every=4", "train.eval_size=16", "train.batch_size=4", "model.hidden=12",
              "train.diagnostics_every=3", "diagnostics.max_lag=3", "train.checkpoint_every=2", *mode]  # fmt: skip
    if "task.name=text" not in mode:
        common.append("task.length=10")
    short, long_ = tmp_path / "short", tmp_path / "long"
    sets = [a for s in common for a in ("--set", s)]
    _train(*sets, "--set", "train.steps=6", "--run-dir", str(short))  # ends with an evaluation off the schedule (6)
    assert json.loads((short / "summary.json").read_text())["status"] == "completed"
    _train("--resume", str(short), "--set", "train.steps=11")
    _train(*sets, "--set", "train.steps=11", "--run-dir", str(long_))

    assert _logs(short) == _logs(long_)  # every logged number, bit for bit (the eval at 6 is gone)
    a, b = np.load(short / "checkpoint.npz"), np.load(long_ / "checkpoint.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        if k != "elapsed":  # training seconds, the one thing a clock decides
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (short, long_))
    for key in ("status", "steps", "steps_done", "updates", "final", "best"):
        assert sa[key] == sb[key], key
    assert sa["resumed"] == 1
    assert "steps: 11" in (short / "config.yaml").read_text()


def test_extend_through_the_api(tmp_path):
    run = api.run(None, SMALL, runs_root=tmp_path)
    longer = api.extend(run.path, 9)
    assert longer.status == "completed" and longer.summary["steps_done"] == 9
    assert len(longer.metrics) == 9 and longer.path == run.path


def test_resume_refuses_any_other_change_and_says_what_may_change(tmp_path):
    d = tmp_path / "run"
    _train(*[a for s in SMALL for a in ("--set", s)], "--run-dir", str(d))
    before = (d / "metrics.jsonl").read_bytes()
    runner = CliRunner()
    cases = {
        ("--set", "model.hidden=8", "--set", "train.steps=9"): ["train.steps (to more steps), train.threads and tracking.*", "model.hidden (16 -> 8)"],
        ("--set", "train.steps=4"): ["train.steps can only grow", "has 6"],
        ("--set", "train.steps=6"): ["already completed", "--set train.steps=N with N > 6"],
        ("--set", "train.target=eval.accuracy>=0.5"): ["train.target"],
    }  # fmt: skip
    for args, words in cases.items():
        result = runner.invoke(app, ["train", "--quiet", "--resume", str(d), *args])
        assert result.exit_code == 2, result.output
        for w in words:
            assert w in result.output, (args, result.output)
    assert (d / "metrics.jsonl").read_bytes() == before  # nothing was touched
    assert "steps: 6" in (d / "config.yaml").read_text()


def test_compare_with_a_grid_replaces_the_configs_own(tmp_path):
    """As bptt compare --grid does: the config's grid (here one with an Elman point, which refuses
    forget_bias) is replaced, not validated against the overrides."""
    cmp = api.compare(
        ROOT / "configs" / "experiments" / "gating.yaml",
        ["model.forget_bias=3", "train.threads=1"],
        modes=["full"],
        seeds=1,
        grid={"task.distance": [10]},
        runs_root=tmp_path,
        smoke=True,
    )
    rows = cmp.variants if isinstance(cmp.variants, list) else cmp.variants.to_dict("records")
    assert [r["status"] for r in rows] == ["completed"]
    assert cmp.run(rows[0]["id"]).config["model"]["forget_bias"] == 3
