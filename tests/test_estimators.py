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


RANDOM_ALL = ["random_k:3", "artbp:3"]
RANDOM = [m for m in RANDOM_ALL if _engine_has(m)]
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


def test_influence_refuses_a_model_that_does_not_fit(invoke, tmp_path):
    res = invoke("train", *sets("task.name=influence", "model.hidden=8", "model.activation=identity"), "--run-dir", tmp_path / "r")
    assert_user_error(res, "model.hidden = units = 10")
    assert not (tmp_path / "r").exists()


def test_random_modes_scatter_and_are_not_told_from_unbiased():
    cfg = load_config(None, list(SMALL))
    problem = est.load_problem(cfg, from_run=None, batches=1)
    rows = {r["mode"]: r for r in est.measure(problem, ["k_truncated:1", *RANDOM_ALL], samples=40, seed=0)["rows"]}
    for mode in RANDOM_ALL:
        r = rows[mode]
        assert r["kind"] == "random" and r["estimates"] == 40
        assert r["rel_variance"] > 0 and r["noise_floor"] == pytest.approx((r["rel_variance"] / 40) ** 0.5)
        assert r["rel_bias_low"] == 0.0  # cannot be told from an unbiased estimator ...
        assert r["rel_bias_high"] < rows["k_truncated:1"]["rel_bias"]  # ... while k_truncated:1's bias is far out
        assert r["rel_bias_raw"] >= r["rel_bias"]
        assert r["matvecs_per_sequence"] > 12  # the forward pass's T plus the drawn backward products
    again = {r["mode"]: r for r in est.measure(problem, RANDOM_ALL, samples=40, seed=0)["rows"]}
    assert all(again[m]["rel_bias_raw"] == rows[m]["rel_bias_raw"] for m in RANDOM_ALL)  # seeded draws


def test_random_matvecs_follow_the_engines_draw():
    tr = parse("random_k:2")
    L = tr.draw(10, np.random.default_rng(5))
    supervised = np.ones(10, dtype=bool)
    assert est._random_matvecs(tr, 10, np.random.default_rng(5), supervised) == int(L.sum())
    art = parse("artbp:3")
    cuts = art.draw(10, np.random.default_rng(5))
    assert est._random_matvecs(art, 10, np.random.default_rng(5), supervised) == 10 - int(cuts.sum())


# -- the trainer with the new modes -------------------------------------------------------------
def _run(cfg, state=None, stop_after: int | None = None):
    """(update records without time, eval records, trainer, state); stops after step ``stop_after``."""
    tr = Trainer(cfg)
    state = state if state is not None else tr.initial_state()
    updates, evals = [], []
    for ev in tr.run(state):
        if ev.kind == "update":
            updates.append({k: v for k, v in ev.data.items() if k != "time"})
        elif ev.kind == "eval":
            evals.append({k: v for k, v in ev.data.items() if k != "time"})
        elif ev.kind == "step" and ev.data["step"] == stop_after:
            break
    return updates, evals, tr, state


def _cfg(mode: str, *extra: str):
    return load_config(None, [*SMALL, f"truncation.mode={mode}", "train.steps=6", "train.eval_every=3", *extra])


MODES_AND_UPDATES = [(m, u) for m in RANDOM_ALL for u in ("sequence", "chunk") if not (m.startswith("random_k") and u == "chunk")]


@pytest.mark.parametrize("mode, update", MODES_AND_UPDATES)
def test_trainer_runs_each_random_mode_and_resumes_exactly(mode, update):
    cfg = _cfg(mode, f"truncation.update_every={update}", "train.diagnostics_every=2")
    whole, whole_evals, _, end = _run(cfg)
    assert len(whole) >= 6 and all(np.isfinite(r["loss"]) for r in whole)
    if update == "chunk":  # artbp's chunks are drawn: their number varies from step to step
        assert len({sum(1 for r in whole if r["step"] == s) for s in range(1, 7)}) > 1
    first, _, tr, state = _run(cfg, stop_after=3)
    arrays = state.to_arrays()
    rest, rest_evals, _, resumed = _run(cfg, state=Trainer(cfg).state_from_arrays(arrays))
    assert first + rest == whole and rest_evals == whole_evals[-len(rest_evals):]
    for k in end.params:
        np.testing.assert_array_equal(resumed.params[k], end.params[k])


def test_random_runs_differ_by_seed_only():
    a, _, _, _ = _run(_cfg("random_k:3"))
    b, _, _, _ = _run(_cfg("random_k:3"))
    c, _, _, _ = _run(_cfg("random_k:3", "seed=1"))
    assert a == b and a != c


def test_diagnostics_of_a_random_mode_carry_rel_error_next_to_cosine():
    tr = Trainer(_cfg("random_k:3", "train.diagnostics_every=1"))
    diags = [ev.data for ev in tr.run(tr.initial_state()) if ev.kind == "diagnostics"]
    assert diags and all(0 < d["bias"]["rel_error"] and d["bias"]["cosine"] is not None for d in diags)
    assert diags[0]["bias"]["mode"] == "random_k:3"


class _FakeAdaptive:
    """Stands in for core/adaptive.py: K from the weights, so it moves as training does."""

    calls = 0

    @classmethod
    def adapt(cls, params, x, targets, mask, *, activation, loss, delta, kmin, kmax, h0=None):
        cls.calls += 1
        K = 1 + int(abs(float(params["W_hh"].sum())) * 1e4) % 4
        return K, 0.5


def test_adaptive_logs_k_every_update_reestimates_every_adapt_every_and_resumes(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "bptt_cli.core.adaptive", _FakeAdaptive)
    import bptt_cli.core as core_pkg

    monkeypatch.setattr(core_pkg, "adaptive", _FakeAdaptive, raising=False)
    cfg = _cfg("adaptive:0.1", "truncation.adapt_every=2")
    _FakeAdaptive.calls = 0
    whole, _, _, end = _run(cfg)
    assert _FakeAdaptive.calls == 3  # updates 0, 2, 4 of 6
    assert all(isinstance(r["k"], int) and 1 <= r["k"] <= 4 for r in whole)
    assert [("beta" in r) for r in whole] == [True, False, True, False, True, False]
    first, _, _, state = _run(cfg, stop_after=3)  # mid-interval: K and the next re-estimate come from the checkpoint
    arrays = state.to_arrays()
    assert int(arrays["adapt/k"]) == first[-1]["k"] and int(arrays["adapt/next"]) == 4
    rest, _, _, resumed = _run(cfg, state=Trainer(cfg).state_from_arrays(arrays))
    assert first + rest == whole
    for k in end.params:
        np.testing.assert_array_equal(resumed.params[k], end.params[k])


def test_adaptive_checkpoint_without_its_k_is_refused(monkeypatch):
    cfg = _cfg("adaptive:0.1")
    arrays = Trainer(_cfg("full")).initial_state().to_arrays()
    arrays["step"] = np.array(2, dtype=np.int64)
    with pytest.raises(Exception, match="adapt/k"):
        Trainer(cfg).state_from_arrays(arrays)


@needs_adaptive
def test_adaptive_with_the_engine_trains_and_logs_k():
    whole, _, _, _ = _run(_cfg("adaptive:0.1"))
    assert all(isinstance(r["k"], int) and r["k"] >= 1 for r in whole)


def test_config_takes_the_new_modes_and_adapt_every():
    cfg = load_config(None, ["truncation.mode=random_k:5.0"])
    assert cfg.truncation.spec == "random_k:5" and cfg.truncation.update == "sequence"
    assert load_config(None, ["truncation.mode=artbp:4"]).truncation.update == "chunk"
    cfg = load_config(None, ["truncation.mode=adaptive:0.1:2:30", "truncation.adapt_every=5"])
    assert cfg.truncation.spec == "adaptive:0.1:2:30" and cfg.truncation.adapt_every == 5
    from bptt_cli.config import dump_yaml

    assert "adapt_every" not in dump_yaml(load_config(None, []))  # configs without adaptive read as before
    for bad, fragment in (
        (["truncation.mode=random_k"], "random_k:MEAN"),
        (["truncation.mode=random_k:3", "truncation.update_every=chunk"], "'chunk' needs a mode with chunks"),
        (["truncation.mode=artbp:1"], "MEAN > 1"),
        (["truncation.mode=adaptive:0.1", "truncation.adapt_every=0"], "adapt_every"),
    ):
        with pytest.raises(Exception, match=fragment):
            load_config(None, bad)


def test_artbp_chunk_updates_weigh_each_segment_by_its_length(monkeypatch):
    """A segment's mean-loss gradient times (its supervised entries / those of a segment of mean
    length): the scales of a step add up to T / MEAN, whatever the draw."""
    scales: list[tuple[int, float]] = []
    original = Trainer.apply_update

    def spy(self, state, grads, **kw):
        scales.append((kw["step"], kw.get("scale")))
        return original(self, state, grads, **kw)

    monkeypatch.setattr(Trainer, "apply_update", spy)
    cfg = _cfg("artbp:3", "truncation.update_every=chunk")
    _run(cfg)
    for step in range(1, 7):
        mine = [s for st, s in scales if st == step]
        assert len(mine) > 1 and sum(mine) == pytest.approx(12 / 3)
    assert len({s for _, s in scales}) > 1


@pytest.mark.parametrize("mode", ["random_k:3", "artbp:3", "adaptive:0.1"])
def test_new_modes_refuse_a_gated_cell_before_a_run_exists(invoke, tmp_path, mode):
    res = invoke("train", *sets(*SMALL, "model.cell=gru", "model.init=pytorch", f"truncation.mode={mode}"), "--runs-root", tmp_path)
    assert_user_error(res, "elman cell only")
    assert not list(tmp_path.rglob("config.yaml"))


@pytest.mark.parametrize("mode", ["random_k:3", "adaptive:0.1"])
def test_a_compare_refuses_a_gated_cell_with_a_new_mode_when_it_is_planned(invoke, tmp_path, mode):
    """Refused with the plan (exit 2, nothing written), not variant by variant as each runs."""
    res = invoke("compare", *sets(*SMALL, "model.cell=lstm"), "--modes", f"full,{mode}", "--smoke", "--runs-root", tmp_path)
    assert_user_error(res, "elman cell only")
    assert not any(tmp_path.iterdir())
