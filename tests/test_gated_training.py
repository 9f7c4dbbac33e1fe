"""The gated cells (GRU, LSTM) through the whole tool: config, training, compare, gradcheck,
checkpoints and resume, diagnostics and the memory budget, through the CLI and the library.
The engine's own exactness is tests/test_core_gated.py's; here every other layer knows the cell."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bptt_cli import runs
from bptt_cli.budget import estimate
from bptt_cli.config import ConfigError, Config, dump_yaml, load_config, to_dict
from bptt_cli.core import bptt, diagnostics, gated
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.gradcheck import reference_gradients, run_gradcheck
from bptt_cli.session import execute
from bptt_cli.trainer import Trainer, gradcheck_slice

from conftest import SMALL, SMALL_TEXT, one_line, read_logs, sets, stderr_of  # noqa: E402
from test_resume import assert_same_run, reference_run, stop_after  # noqa: E402

GATED = ("gru", "lstm")
CELLS = ("elman", *GATED)
NAMES = {"elman": {"W_xh", "W_hh", "b_h", "W_hy", "b_y"}, **{c: set(gated.PARAM_NAMES) for c in GATED}}


def cfg_of(*overrides: str):
    return load_config(None, [*SMALL, *overrides])


# -- config ---------------------------------------------------------------------------------------
def test_an_elman_config_reads_and_dumps_as_before_the_cell_existed():
    # The new keys stay out of an Elman config's data, so its dump and resume digest are unchanged.
    assert "cell" not in to_dict(Config())["model"] and "forget_bias" not in to_dict(Config())["model"]
    assert load_config(None, ["model.cell=elman"]) == Config()
    assert "cell:" not in dump_yaml(Config())


@pytest.mark.parametrize("cell", GATED)
def test_a_gated_cell_defaults_to_pytorch_init_and_dumps_its_keys(cell):
    cfg = load_config(None, [f"model.cell={cell}"])
    assert cfg.model.init == "pytorch"
    model = to_dict(cfg)["model"]
    assert model["cell"] == cell and ("forget_bias" in model) == (cell == "lstm")
    assert load_config(None, [f"model.cell={cell}", "model.init=orthogonal"]).model.init == "orthogonal"


@pytest.mark.parametrize(
    ("overrides", "key", "says"),
    [
        (["model.cell=rnn"], "model.cell", "expected one of elman, gru, lstm"),
        (["model.forget_bias=2"], "model.forget_bias", "cell elman has no forget gate"),
        (["model.cell=gru", "model.forget_bias=0.5"], "model.forget_bias", "cell gru has no forget gate"),
        (["model.cell=gru", "model.activation=relu"], "model.activation", "cell gru has its own"),
        (["model.cell=lstm", "model.init=gaussian"], "model.init", "cell lstm takes pytorch"),
        (["model.cell=lstm", "model.spectral_radius=0.5"], "model.spectral_radius", "cell lstm takes none"),
        (["model.init=pytorch"], "model.init", "elman takes init orthogonal, gaussian or identity"),
        (["model.cell=lstm", "model.forget_bias=1000"], "model.forget_bias", "<= 100"),
    ],
)
def test_a_key_of_another_cell_is_refused_with_one_message(invoke, overrides, key, says):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    assert e.value.path == key and says in str(e.value)
    result = invoke("validate", "configs/quickstart.yaml", *sets(*overrides))
    assert result.exit_code == 2, result.output
    message = one_line(stderr_of(result))
    assert key in message and says in message and "Traceback" not in result.output
    assert len(stderr_of(result).strip().splitlines()) == 1


def test_validate_prints_the_resolved_cell(invoke):
    result = invoke("validate", "configs/quickstart.yaml", *sets("model.cell=lstm", "model.forget_bias=2"))
    assert result.exit_code == 0, result.output
    assert "cell: lstm" in result.stdout and "forget_bias: 2.0" in result.stdout
    assert "init: orthogonal" in result.stdout  # the quickstart writes its init; without it a gated cell's is pytorch


# -- training through the CLI --------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS)
def test_train_runs_every_cell_and_checkpoints_its_parameters(invoke, tmp_path, cell):
    result = invoke("train", "configs/quickstart.yaml", *sets(*SMALL, f"model.cell={cell}", "train.diagnostics_every=4"),
                    "--runs-root", tmp_path, "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["status"] == "completed"
    (run,) = runs.find_runs(tmp_path)
    ckpt = runs.load_checkpoint(run)
    assert {k[len("param/") :] for k in ckpt if k.startswith("param/")} == NAMES[cell]
    H = 8
    if cell != "elman":
        G = gated.GATES[cell]
        assert ckpt["param/weight_hh"].shape == (G * H, H) and ckpt["param/weight_ih"].shape == (G * H, 8)
    logs = read_logs(run)
    assert logs["eval"] and all(np.isfinite(e["loss"]) for e in logs["eval"])
    flow, spec = logs["diagnostics"][-1]["flow"], logs["diagnostics"][-1]["spectrum"]
    assert ("norms_c" in flow) == (cell == "lstm")
    assert (spec["spectral_radius"] is None) == (cell != "elman")
    assert ("gate_high" in spec) == (cell != "elman")


def test_compare_grids_over_the_cell(invoke, tmp_path):
    result = invoke("compare", "configs/quickstart.yaml", "--modes", "full,k_truncated:2", "--grid", "model.cell=elman,gru,lstm",
                    *sets(*SMALL), "--workers", "1", "--runs-root", tmp_path, "-q", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    variants = json.loads(result.stdout)["variants"]
    assert len(variants) == 6 and {v["status"] for v in variants} == {"completed"}
    cells = {v["grid"]["model.cell"] for v in variants}
    assert cells == set(CELLS)
    for v in variants:  # each variant trained the cell its grid point names
        ckpt = runs.load_checkpoint(v["run_dir"])
        assert {k[len("param/") :] for k in ckpt if k.startswith("param/")} == NAMES[v["grid"]["model.cell"]]


@pytest.mark.parametrize("cell", GATED)
def test_gradcheck_passes_for_every_mode_of_a_gated_cell(invoke, cell):
    result = invoke("gradcheck", "configs/quickstart.yaml", *sets("model.hidden=3", f"model.cell={cell}"), "--steps", "7", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["param"] for r in rows} == set(gated.PARAM_NAMES)
    assert {r["mode"] for r in rows} >= {"full", "k_truncated:3", "subsequence:3", "tbptt:3:6"}
    assert all(r["ok"] for r in rows)


# -- resume ------------------------------------------------------------------------------------------
RESUMES = {
    "gru-full": (*SMALL, "train.eval_every=3", "model.cell=gru"),
    "lstm-k_truncated": (*SMALL, "train.eval_every=3", "model.cell=lstm", "truncation.mode=k_truncated:2",
                         "train.diagnostics_every=3"),
    "lstm-tbptt-chunk": (*SMALL, "train.eval_every=3", "model.cell=lstm", "truncation.mode=tbptt:4:8"),
    "lstm-text": (*SMALL_TEXT, "train.eval_every=3", "model.cell=lstm"),  # the carried state is (h, c)
    "gru-text-chunk": (*SMALL_TEXT, "train.eval_every=3", "model.cell=gru", "truncation.mode=subsequence:4"),
}


@pytest.mark.parametrize("variant", list(RESUMES))
def test_a_stopped_gated_run_resumes_exactly(tmp_path, variant):
    overrides = RESUMES[variant]
    cfg = load_config(None, list(overrides))
    ref = reference_run(tmp_path, overrides)
    run = tmp_path / "stopped"
    run.mkdir()
    assert execute(cfg, run, stop=stop_after(2))["status"] == "interrupted"
    assert execute(cfg, run, resume=True, stop=stop_after(3))["steps_done"] == 5
    assert execute(cfg, run, resume=True)["status"] == "completed"
    assert_same_run(run, ref)


def test_the_lstm_carries_h_and_c_across_batches_of_a_stateful_task(tmp_path):
    cfg = load_config(None, [*SMALL_TEXT, "model.cell=lstm"])
    run = tmp_path / "r"
    run.mkdir()
    execute(cfg, run, stop=stop_after(3))
    h = runs.load_checkpoint(run)["h"]
    assert h.shape == (2, cfg.train.batch_size, cfg.model.hidden)
    assert np.abs(h[0]).sum() > 0 and np.abs(h[1]).sum() > 0 and not np.array_equal(h[0], h[1])


def test_a_checkpoint_of_another_cell_or_state_shape_is_refused():
    lstm = Trainer(load_config(None, [*SMALL_TEXT, "model.cell=lstm"]))
    arrays = lstm.initial_state().to_arrays()
    gru = Trainer(load_config(None, [*SMALL_TEXT, "model.cell=gru"]))
    with pytest.raises(InvalidInputError, match="weight_ih"):
        gru.state_from_arrays(arrays)  # (4H, I) where the GRU has (3H, I)
    arrays["h"] = np.zeros((4, 8), np.float32)  # an Elman-shaped state for the LSTM
    with pytest.raises(InvalidInputError, match=r"'h'.*\(2, B, H\)"):
        lstm.state_from_arrays(arrays)


# -- the library ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", GATED)
def test_initial_weights_follow_init_and_forget_bias(cell):
    H = 8
    p = Trainer(cfg_of(f"model.cell={cell}", "model.init=orthogonal", *(["model.forget_bias=2"] if cell == "lstm" else []))).initial_state().params
    for g in range(gated.GATES[cell]):
        block = p["weight_hh"][g * H : (g + 1) * H].astype(np.float64)
        np.testing.assert_allclose(block @ block.T, np.eye(H), atol=1e-5)
    if cell == "lstm":
        assert np.all(p["bias_ih"][H : 2 * H] == 2) and np.all(p["bias_hh"][H : 2 * H] == 0)
    q = Trainer(cfg_of(f"model.cell={cell}")).initial_state().params  # pytorch: U(-1/sqrt(H), 1/sqrt(H))
    assert np.abs(q["weight_hh"]).max() <= 1 / np.sqrt(H)


def test_gate_saturation_and_lstm_flow_are_reported_by_name():
    cfg = cfg_of("model.cell=lstm")
    tr = Trainer(cfg)
    st = tr.initial_state()
    b = tr.task.train_batch(0, 4)
    flow = diagnostics.gradient_flow(st.params, b.x, b.targets, b.mask, activation="tanh", loss="cross_entropy",
                                     max_lag=6, cell="lstm")  # fmt: skip
    prof = gated.lag_profile(st.params, b.x, b.targets, b.mask, cell="lstm", loss="cross_entropy", max_lag=6)
    assert flow["norms"] == prof["h"] and flow["norms_c"] == prof["c"] and flow["lags"] == prof["lags"]
    assert flow["counts"] == prof["counts"]
    assert flow["decay_per_step_c"] is not None and 0 < flow["decay_per_step_c"]
    g = diagnostics.gates(st.params, b.x, cell="lstm")
    assert g["gate"] == "forget" and 0 <= g["low"] <= 1 and 0 <= g["high"] <= 1
    # A forget bias of 10 opens every forget gate: all of them are saturated high.
    wide = {**st.params, "bias_ih": st.params["bias_ih"].copy()}
    wide["bias_ih"][8:16] = 10
    assert diagnostics.gates(wide, b.x, cell="lstm")["high"] == 1.0
    assert diagnostics.gates(st.params, b.x, cell="elman") is None


@pytest.mark.parametrize("cell", CELLS)
def test_bias_for_mode_has_rel_error_next_to_cosine(cell):
    tr = Trainer(cfg_of(f"model.cell={cell}", "model.dtype=float64"))
    p = tr.initial_state().params
    b = tr.task.train_batch(0, 4)
    out = diagnostics.bias_for_mode(p, b.x, b.targets, b.mask, "k_truncated:1", activation="tanh", loss="cross_entropy", cell=cell)
    _, g_mode, _ = bptt.loss_and_gradients(p, b.x, b.targets, b.mask, "k_truncated:1", activation="tanh", loss="cross_entropy", cell=cell)
    _, g_full, _ = bptt.loss_and_gradients(p, b.x, b.targets, b.mask, "full", activation="tanh", loss="cross_entropy", cell=cell)
    a = np.concatenate([g_mode[k].ravel() for k in g_full])
    f = np.concatenate([g_full[k].ravel() for k in g_full])
    assert out["rel_error"] == pytest.approx(np.linalg.norm(a - f) / np.linalg.norm(f), rel=1e-12)
    assert out["cosine"] == pytest.approx(a @ f / np.linalg.norm(a) / np.linalg.norm(f), rel=1e-12)
    assert set(out["per_param"]) == NAMES[cell] and 0 < out["rel_error"]


@pytest.mark.parametrize("cell", GATED)
def test_gradcheck_catches_a_wrong_gated_engine(cell):
    params, x, targets, mask, act, loss = gradcheck_slice(cfg_of(f"model.cell={cell}", "model.hidden=3"), max_steps=6)

    def wrong(*a, **kw):  # full BPTT where k_truncated:1 was asked
        return bptt.loss_and_gradients(*a[:4], "full", **kw)

    rows = run_gradcheck(params, x, targets, mask, ["k_truncated:1"], activation=act, loss=loss, cell=cell, engine=wrong)
    assert all(r["ok"] for r in rows if r["check"] == "finite differences")
    assert not all(r["ok"] for r in rows if r["check"] == "reference")
    with pytest.raises(InvalidInputError, match="keys"):
        run_gradcheck(params, x, targets, mask, ["full"], activation=act, loss=loss, cell="elman")


def test_the_gradcheck_reference_holds_the_whole_lstm_state():
    # k_truncated:0 keeps only each step's local terms: neither h nor c carries anything back.
    rng = np.random.default_rng(3)
    params = gated.init_params("lstm", 2, 3, 2, rng=rng, dtype=np.float64)
    x = rng.standard_normal((4, 2, 2))
    mask = np.ones((4, 2))
    targets = rng.integers(0, 2, (4, 2))
    ref = reference_gradients(params, x, targets, mask, "k_truncated:0", "tanh", "cross_entropy", cell="lstm")
    _, eng, _ = gated.loss_and_gradients(params, x, targets, mask, "k_truncated:0", cell="lstm")
    for k in ref:
        np.testing.assert_allclose(ref[k], eng[k], rtol=1e-10, atol=1e-14)


def test_the_budget_counts_the_gates():
    def total(cell, key=None):
        needs = estimate(load_config(None, [f"model.cell={cell}", "train.diagnostics_every=10"]))
        return {n.what: n.bytes for n in needs}

    e, g, l = total("elman"), total("gru"), total("lstm")
    assert e["the weights"] < g["the weights"] < l["the weights"]
    assert g["the held-out set"] < l["the held-out set"] and e["the held-out set"] < g["the held-out set"]


def test_a_gated_model_too_large_for_memory_is_refused_naming_hidden(invoke):
    result = invoke("validate", "configs/quickstart.yaml", *sets("model.cell=lstm", "model.hidden=30000"))
    assert result.exit_code == 2, result.output
    assert "lower model.hidden" in one_line(stderr_of(result)) and "weight_hh" in one_line(stderr_of(result))


def test_a_large_lstm_resumes(tmp_path):
    cfg = load_config(None, [*SMALL, "model.cell=lstm", "model.hidden=128", "train.steps=3"])
    run = tmp_path / "r"
    run.mkdir()
    execute(cfg, run, stop=stop_after(1))
    assert execute(cfg, run, resume=True)["status"] == "completed"


def test_a_task_with_fixed_elman_weights_refuses_a_gated_cell(invoke, tmp_path):
    result = invoke("train", *sets("task.name=influence", "model.cell=gru"), "--runs-root", tmp_path)
    assert result.exit_code == 2, result.output
    assert "fixes an Elman model's weights; use model.cell: elman" in one_line(stderr_of(result))
    assert runs.find_runs(tmp_path) == []  # refused before a run directory exists


@pytest.mark.parametrize("spec", ["random_k:3", "adaptive:0.1"])
def test_gradcheck_refuses_a_mode_without_a_fixed_window(invoke, spec):
    result = invoke("gradcheck", "configs/quickstart.yaml", "--modes", spec, "--steps", "4")
    assert result.exit_code == 2, result.output
    assert f"{spec} " in one_line(stderr_of(result)) and "fixed window" in one_line(stderr_of(result))
