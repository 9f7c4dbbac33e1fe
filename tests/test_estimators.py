"""Issue 11 outside the engine: ``bptt estimators``, the influence-balancing task, and the
trainer with the random and adaptive modes (exact resumes, the K in force logged)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from bptt_cli import estimators as est
from bptt_cli.config import load_config
from bptt_cli.core.bptt import loss_and_gradients
from bptt_cli.core.truncation import parse
from bptt_cli.render import estimators_table
from bptt_cli.tasks import REGISTRY, make_task
from bptt_cli.trainer import Trainer

from conftest import SMALL, one_line, sets, stderr_of  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = sorted((ROOT / "configs").rglob("*.yaml"))
INFLUENCE = ("task.name=influence", "model.hidden=10", "model.activation=identity", "model.dtype=float64")


def _engine_has(mode: str) -> bool:
    try:
        parse(mode)
    except ValueError:
        return False
    return True


RANDOM = [m for m in ("random_k:3", "artbp:3") if _engine_has(m)]
ADAPTIVE = [m for m in ("adaptive:0.1",) if _engine_has(m)]
needs_random = pytest.mark.skipif(not RANDOM, reason="the engine has no random modes yet")
needs_adaptive = pytest.mark.skipif(not ADAPTIVE, reason="the engine has no adaptive mode yet")


def assert_user_error(result, *fragments: str) -> None:
    err = one_line(stderr_of(result))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert err.startswith("error: "), err
    for f in fragments:
        assert f in err, f"{f!r} not in {err!r}"


# -- bptt estimators --------------------------------------------------------------------------
def test_deterministic_modes_have_one_estimate_and_zero_variance():
    cfg = load_config(None, list(SMALL))
    problem = est.load_problem(cfg, from_run=None, batches=2)
    result = est.measure(problem, ["full", "k_truncated:1", "subsequence:3", "tbptt:2:4"], samples=7, seed=0)
    rows = {r["mode"]: r for r in result["rows"]}
    for r in rows.values():
        assert r["kind"] == "deterministic" and r["estimates"] == 1
        assert r["rel_variance"] == 0.0 and r["noise_floor"] == 0.0
        assert r["rel_bias_low"] == r["rel_bias"] == r["rel_bias_high"]
    assert rows["full"]["rel_bias"] == 0.0 and rows["full"]["cosine"] == pytest.approx(1.0)
    assert rows["k_truncated:1"]["rel_bias"] > 0.05  # delay 2 > K = 1: the window misses the dependency
    assert result["meta"]["batches"] == 2 and result["meta"]["T"] == 12


def test_bias_matches_the_diagnostics_relative_error_of_one_batch():
    from bptt_cli.core import diagnostics

    cfg = load_config(None, list(SMALL))
    problem = est.load_problem(cfg, from_run=None, batches=1)
    row = est.measure(problem, ["k_truncated:1"], samples=1, seed=0)["rows"][0]
    x, targets, mask = problem.batches[0]
    ref = diagnostics.bias_for_mode(problem.params, x, targets, mask, "k_truncated:1", activation="tanh", loss="cross_entropy")
    assert row["rel_bias"] == pytest.approx(ref["rel_error"], rel=1e-12)
    assert row["cosine"] == pytest.approx(ref["cosine"], rel=1e-12)


@pytest.mark.parametrize(
    "spec, T, expected",
    [
        ("full", 10, 9),  # one chain
        ("subsequence:4", 10, 10 - 3),  # one chain cut at 3 chunk starts
        ("k_truncated:2", 10, 0 + 1 + 2 * 8),  # sum_t min(t, K)
        ("k_truncated:20", 10, 9),  # reduces to full
        ("tbptt:2:4", 8, 1 + 3 + 3 + 3),  # chunk [0,1] from 0; then windows of 4 ending at 3, 5, 7
    ],
)
def test_backward_matvecs_count_the_windows(spec, T, expected):
    assert est.backward_matvecs(parse(spec), T) == expected


def test_cli_table_json_and_csv(invoke, tmp_path):
    path = tmp_path / "est.csv"
    res = invoke("estimators", *sets(*SMALL), "--modes", "full,k_truncated:1", "--samples", "3", "--csv", path)
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "Gradient estimators" in out and "k_truncated:1" in out and "deterministic" in out and "0 (det.)" in out
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    assert [r["mode"] for r in rows] == ["full", "k_truncated:1"]
    assert tuple(rows[0]) == est.CSV_COLUMNS
    assert float(rows[0]["rel_bias"]) == 0.0
    res = invoke("estimators", *sets(*SMALL), "--modes", "k_truncated:1", "--json")
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["meta"]["weights"] == "initial weights" and data["meta"]["task"] == "delay"
    assert data["rows"][0]["rel_bias"] == pytest.approx(float(rows[1]["rel_bias"]))


def test_cli_default_modes_are_compare_modes_plus_full(invoke):
    res = invoke("estimators", *sets(*SMALL, "truncation.mode=k_truncated:3"), "--json")
    assert res.exit_code == 0, res.output
    assert [r["mode"] for r in json.loads(res.stdout)["rows"]] == ["full", "k_truncated:3", "subsequence:3"]


def test_cli_from_a_run_checkpoint(invoke, tmp_path):
    res = invoke("train", *sets(*SMALL), "--run-dir", tmp_path / "run", "-q")
    assert res.exit_code == 0, res.output
    res = invoke("estimators", "--from", tmp_path / "run", "--modes", "k_truncated:1", "--json")
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout)["meta"]
    assert meta["weights"].startswith("checkpoint of") and "step 8" in meta["weights"]


@pytest.mark.parametrize(
    "args, fragment",
    [
        (("--samples", "0"), "--samples must be from 1"),
        (("--batches", "0"), "--batches must be from 1"),
        (("--modes", "k_truncated:x"), "is not an integer"),
        (("--modes", "nope"), "unknown mode"),
        (("--from", "/no/such/run"), "not a run directory"),
        (("--csv", "/no/such/dir/x.csv"), "--csv"),
    ],
)
def test_cli_errors_exit_2(invoke, args, fragment):
    res = invoke("estimators", *sets(*SMALL), *args) if args[0] != "--from" else invoke("estimators", *args)
    assert_user_error(res, fragment)


def test_cli_from_refuses_a_config_too(invoke, tmp_path):
    res = invoke("train", *sets(*SMALL), "--run-dir", tmp_path / "run", "-q")
    res = invoke("estimators", ROOT / "configs" / "delay.yaml", "--from", tmp_path / "run")
    assert_user_error(res, "--from")


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_shipped_config(invoke, path):
    tiny = ("model.hidden=8", "train.batch_size=2")
    if "text" in path.name:  # a short generated corpus, as the other text tests use
        tiny += ("task.length=10", "task.n_sentences=80")
    if "influence" in path.name:
        tiny = ("train.batch_size=2",)
    res = invoke("estimators", path, "--smoke", *sets(*tiny), "--samples", "2", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.stdout)["rows"]
    assert rows[0]["mode"] == "full" and rows[0]["rel_bias"] == 0.0


def test_table_renders_at_100_columns():
    result = {
        "meta": {"task": "delay", "T": 12, "B": 4, "H": 8, "batches": 1, "weights": "initial weights"},
        "rows": [
            {"mode": "full", "kind": "deterministic", "estimates": 1, "rel_bias": 0.0, "rel_variance": 0.0, "cosine": 1.0,
             "ms_per_estimate": 0.5, "matvecs_per_sequence": 23.0, "note": "deterministic"},
            {"mode": "random_k:3", "kind": "random", "estimates": 5, "rel_bias": 0.1, "rel_bias_low": 0.05,
             "rel_bias_high": 0.2, "noise_floor": 0.09, "rel_variance": 0.04, "cosine": 0.9,
             "ms_per_estimate": 0.6, "matvecs_per_sequence": 30.0, "note": "random, 5 draws"},
        ],
    }  # fmt: skip
    con = Console(file=io.StringIO(), width=100, color_system=None)
    con.print(estimators_table(result))
    text = con.file.getvalue()
    assert "0.1 [0.05, 0.2]" in text and "0 (det.)" in text and "E[g]" in text


# -- the influence-balancing task -------------------------------------------------------------
def test_influence_task_data_and_knobs():
    cls = REGISTRY["influence"]
    assert {p.name for p in cls.params} >= {"units", "positive", "decay", "coupling", "theta", "length"}
    task = make_task("influence", {"length": 7}, seed=3, dtype=np.float64)
    b = task.train_batch(0, 2)
    assert b.x.shape == (7, 2, 1) and b.targets.shape == (7, 2, 1) and b.mask.shape == (7, 2)
    assert abs(b.x.mean() - 1) < 0.2 and b.x.std() > 0 and (b.targets == 1).all() and (b.mask == 1).all()
    quiet = make_task("influence", {"noise": 0.0}).train_batch(0, 2)
    assert (quiet.x == 1).all()
    p = task.initial_params(10, "identity", np.float64)
    assert np.array_equal(p["W_hh"], 0.5 * np.eye(10) + 0.5 * np.eye(10, k=1))
    assert np.array_equal(p["W_xh"][:, 0], np.zeros(10))
    assert task.steady_gain() == pytest.approx(2 * (2 * 4 - 10))  # every unit weighs 1/(1-lambda) = 2
    with pytest.raises(Exception, match="model.hidden = units = 10"):
        task.initial_params(8, "identity", np.float64)
    with pytest.raises(Exception, match="identity"):
        task.initial_params(10, "tanh", np.float64)


def test_influence_truncation_gets_the_sign_wrong_at_init_where_full_does_not():
    task = make_task("influence", {}, seed=0, dtype=np.float64)
    p = task.initial_params(10, "identity", np.float64)
    b = task.train_batch(0, 1)
    signs = {}
    for mode in ("full", "k_truncated:2", "k_truncated:5", "k_truncated:10", "k_truncated:40"):
        _, g, _ = loss_and_gradients(p, b.x, b.targets, b.mask, mode, activation="identity", loss="mse")
        signs[mode] = np.sign(task.theta_gradient(g))
    # steady gain -4 < 0, target 1 above y = 0: the loss falls as theta falls, dL/dtheta > 0
    assert signs["full"] == 1 and signs["k_truncated:40"] == 1
    assert signs["k_truncated:2"] == signs["k_truncated:5"] == signs["k_truncated:10"] == -1


def test_influence_training_moves_theta_only_and_full_converges_where_truncation_diverges():
    def final(mode: str):
        cfg = load_config(None, [*INFLUENCE, f"truncation.mode={mode}", "optimizer.name=sgd", "optimizer.lr=0.01",
                                 "clip.mode=none", "train.steps=60", "train.batch_size=1", "train.eval_size=1"])  # fmt: skip
        tr = Trainer(cfg)
        state = tr.initial_state()
        W_hh = state.params["W_hh"].copy()
        list(tr.run(state))
        assert np.array_equal(state.params["W_hh"], W_hh) and not state.params["b_y"].any()
        return tr.task.theta(state.params), tr.evaluate(state.params)["loss"]

    theta_full, loss_full = final("full")
    theta_trunc, loss_trunc = final("k_truncated:5")
    assert theta_full < 0 < theta_trunc
    assert loss_full < 0.47 < 0.5 < 10 < loss_trunc  # 0.5: the loss at theta = 0


def test_influence_refuses_a_model_that_does_not_fit(invoke):
    res = invoke("train", *sets("task.name=influence", "model.hidden=8", "model.activation=identity"), "--run-dir", "/tmp/never-made-x")
    assert_user_error(res, "model.hidden = units = 10")
    assert not Path("/tmp/never-made-x").exists()
