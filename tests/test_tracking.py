"""Tracking: what a run logs live to TensorBoard and MLflow (read back with the tools' own
readers), compares grouped under one parent, exports of runs that exist, and backends that
fail without touching the run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from bptt_cli import config as cfgmod
from bptt_cli import runs, tracking
from bptt_cli.session import execute

SMALL = [
    "train.steps=6", "train.eval_every=3", "train.eval_size=16", "train.batch_size=8",
    "train.diagnostics_every=2", "model.hidden=16", "task.length=12", "diagnostics.max_lag=4",
]  # fmt: skip


def _cfg(*extra: str) -> cfgmod.Config:
    return cfgmod.load_config(None, [*SMALL, *extra])


def _run(tmp_path: Path, name: str, *extra: str) -> tuple[Path, dict]:
    d = tmp_path / name
    d.mkdir()
    return d, execute(_cfg(*extra), d)


def _lines(path: Path, drop=("time",)) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in drop} for r in runs.read_jsonl(path)[0]]


def _tensorboard():
    pytest.importorskip("tensorboardX")
    ea = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

    def read(logdir: Path):
        acc = ea.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
        acc.Reload()
        return acc

    return read


@pytest.fixture(autouse=True)
def _empty_cwd(tmp_path_factory, monkeypatch):
    """Every test runs in an empty current directory that must stay empty: a run writes to its
    run directory and the stores it names, nowhere else (MLflow's default artifact root is
    ./mlruns)."""
    cwd = tmp_path_factory.mktemp("cwd")
    monkeypatch.chdir(cwd)
    yield
    assert sorted(p.name for p in cwd.iterdir()) == []


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    pytest.importorskip("alembic")
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


# -- what is sent --------------------------------------------------------------------------
def test_metric_values_take_every_number_of_a_record_at_its_update():
    rec = {"step": 3, "update": 7, "chunk": 1, "loss": 0.5, "grad_norm": 2.0, "clipped_norm": 1.0, "clipped": True,
           "grad_norms": {"W_hh": 1.5}, "lr": 0.01, "time": 0.2}  # fmt: skip
    x, values = tracking.metric_values("metrics", rec)
    assert x == 7
    assert values == {"train/loss": 0.5, "train/grad_norm": 2.0, "train/clipped_norm": 1.0, "train/clipped": 1.0,
                      "train/grad_norms.W_hh": 1.5, "train/lr": 0.01}  # fmt: skip
    diag = {"step": 2, "update": 4, "flow": {"lags": [1, 2], "norms": [1.0, 0.5], "decay_per_step": 0.5},
            "bias": {"cosine": 0.9, "rel_error": None}}  # fmt: skip
    assert tracking.metric_values("diagnostics", diag) == (4, {"diagnostics/flow.decay_per_step": 0.5, "diagnostics/bias.cosine": 0.9})
    assert tracking.metric_values("eval", {"step": 3, "update": 3, "loss": 1.0, "accuracy@d=8": 0.5, "time": 1.0}) == (
        3, {"eval/loss": 1.0, "eval/accuracy@d=8": 0.5})  # fmt: skip
    assert tracking.mlflow_key("eval/accuracy@d=8") == "eval/accuracy_d_8"
    config = cfgmod.to_dict(_cfg("truncation.mode=tbptt:2:4", "seed=7"))
    assert tracking.tags_of(config) == {"bptt.name": "quickstart", "bptt.task": "delay", "bptt.mode": "tbptt:2:4", "bptt.seed": "7"}


def test_tracking_config_is_off_by_default_and_left_out_of_the_dump():
    assert not cfgmod.Config().tracking.enabled
    assert "tracking" not in cfgmod.dump_yaml(cfgmod.Config())
    cfg = cfgmod.load_config(None, ["tracking.tensorboard=true", "tracking.mlflow=true"])
    assert cfg.tracking.enabled and cfg.tracking.mlflow == cfgmod.load_config(None, ["tracking.mlflow={}"]).tracking.mlflow
    assert cfgmod.load_config(None, ["tracking.mlflow.uri=sqlite:///x.db"]).tracking.mlflow.uri == "sqlite:///x.db"
    for bad, words in (("tracking.tensorboard=5", "true, false or a folder"), ("tracking.mlflow.url=x", "uri, experiment")):
        with pytest.raises(cfgmod.ConfigError, match=words):
            cfgmod.load_config(None, [bad])


# -- live ----------------------------------------------------------------------------------
def test_a_run_logs_live_to_tensorboard_and_its_numbers_do_not_change(tmp_path):
    read = _tensorboard()
    plain, _ = _run(tmp_path, "plain")
    tracked, summary = _run(tmp_path, "tracked", f"tracking.tensorboard={tmp_path / 'tb'}")
    for log in runs.LOGS:  # tracking records, it never computes
        assert _lines(plain / f"{log}.jsonl") == _lines(tracked / f"{log}.jsonl"), log

    tb = summary["tracking"]["tensorboard"]
    assert tb["status"] == "ok", tb
    assert tb["logdir"] == str((tmp_path / "tb" / tmp_path.name / "tracked").resolve())  # PATH/<parent>/<run>
    acc = read(Path(tb["logdir"]))
    metrics = runs.read_jsonl(tracked / "metrics.jsonl")[0]
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [m["update"] for m in metrics]
    assert [e.value for e in loss] == [float(np.float32(m["loss"])) for m in metrics]  # event files hold float32
    assert [e.value for e in acc.Scalars("train/clipped_norm")] == [float(np.float32(m["clipped_norm"])) for m in metrics]
    evals = runs.read_jsonl(tracked / "eval.jsonl")[0]
    assert [(e.step, e.value) for e in acc.Scalars("eval/accuracy")] == [(r["update"], float(np.float32(r["accuracy"]))) for r in evals]
    assert "diagnostics/flow.decay_per_step" in acc.Tags()["scalars"]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    if "matplotlib" in sys.modules or _has("matplotlib"):
        assert acc.Tags()["images"] == ["plot"]
    on_disk = json.loads((tracked / "summary.json").read_text())
    assert on_disk["tracking"]["tensorboard"]["status"] == "ok" and on_disk["status"] == "completed"


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def test_a_run_logs_live_to_mlflow_with_params_tags_and_files(tmp_path, mlflow_uri):
    d, summary = _run(tmp_path, "run", f"tracking.mlflow.uri={mlflow_uri}", "tracking.mlflow.experiment=live", "seed=3")
    ml = summary["tracking"]["mlflow"]
    assert ml["status"] == "ok", ml
    client = _client(mlflow_uri)
    run = client.get_run(ml["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["model.hidden"] == "16" and run.data.params["truncation.mode"] == "full"
    assert run.data.tags["bptt.task"] == "delay" and run.data.tags["bptt.seed"] == "3"
    assert run.data.tags["bptt.status"] == "completed" and run.data.tags["bptt.mode"] == "full"
    metrics = runs.read_jsonl(d / "metrics.jsonl")[0]
    history = client.get_metric_history(ml["run_id"], "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(m["update"], m["loss"]) for m in metrics]  # float64, exact
    grad = client.get_metric_history(ml["run_id"], "train/grad_norm")
    assert sorted((m.step, m.value) for m in grad) == [(m["update"], m["grad_norm"]) for m in metrics]
    evals = runs.read_jsonl(d / "eval.jsonl")[0]
    assert sorted(m.value for m in client.get_metric_history(ml["run_id"], "eval/accuracy")) == sorted(r["accuracy"] for r in evals)
    files = {a.path for a in client.list_artifacts(ml["run_id"])}
    assert {"config.yaml", "summary.json"} <= files
    assert ("plot.png" in files) == _has("matplotlib")
    store = Path(mlflow_uri[len("sqlite:///") :]).parent  # the files sit beside the store, not in ./mlruns
    assert (store / "mlartifacts" / "live" / ml["run_id"] / "artifacts" / "summary.json").is_file()


def test_artifacts_go_beside_a_sqlite_store_and_a_file_store_keeps_its_own():
    assert tracking.artifact_location("sqlite:////data/ml/mlflow.db", "delay study") == "file:///data/ml/mlartifacts/delay_study"
    assert tracking.artifact_location("sqlite:///mlflow.db?timeout=5", "x") == (Path.cwd() / "mlartifacts" / "x").as_uri()
    for uri in ("file:///data/mlruns", "/data/mlruns", "http://127.0.0.1:5000", "postgresql://h/db", "sqlite://", None):
        assert tracking.artifact_location(uri, "x") is None, uri


def test_a_resumed_run_goes_on_in_the_same_mlflow_run(tmp_path, mlflow_uri):
    d = tmp_path / "run"
    d.mkdir()
    cfg = _cfg(f"tracking.mlflow.uri={mlflow_uri}", "tracking.mlflow.experiment=resume")
    calls = iter(range(100))
    first = execute(cfg, d, stop=lambda: next(calls) >= 2)  # stops after its third step
    assert first["status"] == "interrupted" and first["tracking"]["mlflow"]["status"] == "ok"
    assert _client(mlflow_uri).get_run(first["tracking"]["mlflow"]["run_id"]).info.status == "KILLED"
    second = execute(cfg, d, resume=True)
    assert second["status"] == "completed"
    run_id = second["tracking"]["mlflow"]["run_id"]
    assert run_id == first["tracking"]["mlflow"]["run_id"]
    history = _client(mlflow_uri).get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, 7))
    assert _client(mlflow_uri).get_run(run_id).info.status == "FINISHED"


def test_tensorboard_keeps_one_value_per_update_across_a_hard_stop_and_resume(tmp_path):
    read = _tensorboard()
    d = tmp_path / "run"
    d.mkdir()
    cfg = _cfg("tracking.tensorboard=true", "train.checkpoint_every=2")

    def kill_at_step_3(ev):
        if ev.kind == "step" and ev.data["step"] == 3:
            raise KeyboardInterrupt  # after step 3 was logged; the checkpoint is step 2's

    first = execute(cfg, d, on_event=kill_at_step_3)
    assert first["status"] == "interrupted" and first["steps_done"] == 3
    assert execute(cfg, d, resume=True)["status"] == "completed"
    loss = read(d / "tensorboard").Scalars("train/loss")
    metrics = runs.read_jsonl(d / "metrics.jsonl")[0]
    assert [e.step for e in loss] == [1, 2, 3, 4, 5, 6]  # step 3's first value was purged
    assert [e.value for e in loss] == [float(np.float32(m["loss"])) for m in metrics]


def test_a_variant_started_again_from_scratch_leaves_no_earlier_events(tmp_path):
    read = _tensorboard()
    from bptt_cli.compare.executors import run_variant

    d = tmp_path / "variant"
    d.mkdir()
    cfg = _cfg("tracking.tensorboard=true", "train.steps=4")
    assert execute(cfg, d)["status"] == "completed"
    (d / "checkpoint.npz").unlink()  # an attempt that never checkpointed: the compare starts it again
    summary = json.loads((d / "summary.json").read_text())
    (d / "summary.json").write_text(json.dumps({**summary, "status": "failed"}))
    (d / "tensorboard" / "events.out.tfevents.0.stale").write_bytes(b"")
    assert run_variant(cfgmod.to_dict(cfg), str(d), stop=lambda: False)["status"] == "completed"
    assert not (d / "tensorboard" / "events.out.tfevents.0.stale").exists()
    assert len(list((d / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert [e.step for e in read(d / "tensorboard").Scalars("train/loss")] == [1, 2, 3, 4]


def test_a_compare_groups_its_variants(tmp_path, mlflow_uri, monkeypatch):
    read = _tensorboard()
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    monkeypatch.chdir(tmp_path)
    args = ["compare", "--modes", "full,k_truncated:2", "--workers", "1", "--runs-root", "runs", "--quiet", "--json"]
    for s in [*SMALL, "tracking.tensorboard=tb", f"tracking.mlflow.uri={mlflow_uri}", "tracking.mlflow.experiment=cmp"]:
        args += ["--set", s]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    compare_dir = next((tmp_path / "runs" / "quickstart").glob("compare-*"))
    variants = sorted(p.name for p in compare_dir.iterdir() if p.is_dir())
    assert len(variants) == 2
    # TensorBoard: one subfolder per variant under the compare's own folder
    for v in variants:
        acc = read(tmp_path / "tb" / "quickstart" / compare_dir.name / v)
        assert len(acc.Scalars("train/loss")) == 6
    # MLflow: a parent run with the variants as its children
    parent = json.loads((compare_dir / tracking.COMPARE_FILE).read_text())["mlflow"]["run_id"]
    client = _client(mlflow_uri)
    children = client.search_runs([client.get_experiment_by_name("cmp").experiment_id], f"tags.`mlflow.parentRunId` = '{parent}'")
    assert sorted(r.data.tags["bptt.mode"] for r in children) == ["full", "k_truncated:2"]
    assert all(r.info.status == "FINISHED" for r in children)
    assert client.get_run(parent).info.status == "FINISHED"
    assert "compare.json" in {a.path for a in client.list_artifacts(parent)}


# -- failures ------------------------------------------------------------------------------
def test_a_backend_that_is_missing_or_raises_never_stops_the_run(tmp_path, monkeypatch):
    plain, _ = _run(tmp_path, "plain")
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # as if the extra were not installed
    d, summary = _run(tmp_path, "missing", "tracking.tensorboard=true")
    assert summary["status"] == "completed"
    tb = summary["tracking"]["tensorboard"]
    assert tb["status"] == "failed" and "pip install 'bptt[tensorboard]'" in tb["error"], tb
    assert _lines(plain / "metrics.jsonl") == _lines(d / "metrics.jsonl")
    assert json.loads((d / "summary.json").read_text())["tracking"]["tensorboard"]["status"] == "failed"

    class Broken(tracking.TensorBoard):
        def start(self, info):
            return {"logdir": "nowhere"}

        def log(self, x, values):
            if x >= 3:
                raise OSError("disk full")

        def finish(self, info, summary, files):
            raise AssertionError("a failed backend is not called again")

    monkeypatch.setattr(tracking, "TensorBoard", Broken)
    d, summary = _run(tmp_path, "raises", "tracking.tensorboard=true")
    assert summary["status"] == "completed"
    assert summary["tracking"]["tensorboard"]["status"] == "failed"
    assert "OSError: disk full (at update 3; the run went on)" == summary["tracking"]["tensorboard"]["error"]
    assert _lines(plain / "metrics.jsonl") == _lines(d / "metrics.jsonl")


def test_an_unusable_mlflow_store_is_recorded_and_the_run_goes_on(tmp_path):
    pytest.importorskip("mlflow")
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    args = ["train", "--quiet", "--run-dir", str(tmp_path / "run"), *[a for s in SMALL for a in ("--set", s)],
            "--set", f"tracking.mlflow.uri=sqlite:///{blocker}/sub/mlflow.db"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output  # the run's own result decides the exit code
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps_done"] == 6
    ml = summary["tracking"]["mlflow"]
    assert ml["status"] == "failed" and "at the start; the run went on" in ml["error"], ml
    assert "tracking: mlflow failed: " in result.output  # and the user is told


def test_an_unreachable_mlflow_server_never_holds_the_run_up(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setattr(tracking, "WAIT", 5.0)  # the end gives a stuck backend this long
    d, summary = _run(tmp_path, "run", "tracking.mlflow.uri=http://127.0.0.1:9")  # the discard port: nobody listens
    assert summary["status"] == "completed" and summary["steps_done"] == 6
    ml = summary["tracking"]["mlflow"]
    assert ml["status"] == "failed" and "the run" in ml["error"], ml


# -- export --------------------------------------------------------------------------------
def test_export_sends_existing_runs_and_skips_them_the_second_time(tmp_path, mlflow_uri):
    read = _tensorboard()
    d, _ = _run(tmp_path, "old")
    metrics = runs.read_jsonl(d / "metrics.jsonl")[0]
    rows = tracking.export([d], "tensorboard", uri=str(tmp_path / "tb"))
    assert [r["status"] for r in rows] == ["exported"], rows
    acc = read(Path(rows[0]["where"]))
    assert [e.value for e in acc.Scalars("train/loss")] == [float(np.float32(m["loss"])) for m in metrics]
    assert [r["status"] for r in tracking.export([d], "tensorboard", uri=str(tmp_path / "tb"))] == ["skipped"]

    rows = tracking.export([d], "mlflow", uri=mlflow_uri, experiment="export")
    assert [r["status"] for r in rows] == ["exported"], rows
    client = _client(mlflow_uri)
    history = client.get_metric_history(rows[0]["where"], "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(m["update"], m["loss"]) for m in metrics]
    assert client.get_run(rows[0]["where"]).data.tags["bptt.status"] == "completed"
    again = tracking.export([d], "mlflow", uri=mlflow_uri, experiment="export")
    assert [r["status"] for r in again] == ["skipped"] and again[0]["where"] == rows[0]["where"]


def test_bptt_export_expands_a_quoted_glob_and_reports_each_run(tmp_path):
    read = _tensorboard()
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    for name in ("a1", "a2"):
        _run(tmp_path, name)
    result = CliRunner().invoke(app, ["export", str(tmp_path / "a*"), "--to", "tensorboard", "--uri", str(tmp_path / "tb")])
    assert result.exit_code == 0, result.output
    assert result.output.count("exported: ") == 2, result.output
    for name in ("a1", "a2"):
        assert len(read(tmp_path / "tb" / tmp_path.name / name).Scalars("train/loss")) == 6
    result = CliRunner().invoke(app, ["export", str(tmp_path / "zz*"), "--to", "tensorboard"])
    assert result.exit_code == 2 and "matches no run" in result.output, result.output
    result = CliRunner().invoke(app, ["export", str(tmp_path), "--to", "tensorboard", "--uri", str(tmp_path / "tb")])
    assert result.exit_code == 0 and result.output.count("skipped: ") == 2, result.output  # a folder of runs: each one


def test_export_refuses_what_is_not_a_run(tmp_path):
    with pytest.raises(tracking.TrackingError, match="neither a run directory"):
        tracking.export([tmp_path], "tensorboard")  # an empty folder
    with pytest.raises(tracking.TrackingError, match="tensorboard, mlflow"):
        tracking.export([tmp_path], "wandb")
