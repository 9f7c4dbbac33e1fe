"""The training loop (``bptt_cli.trainer``): the events it yields, its two counters, evaluation
cadence, early stopping on a target, divergence, and diagnostics that do not change training."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from bptt_cli.config import load_config
from bptt_cli.trainer import Trainer

from conftest import SMALL, SMALL_TEXT, strip_time  # noqa: E402  (tests/ is on sys.path under pytest)


def _events(*overrides: str):
    cfg = load_config(None, [*SMALL, *overrides])
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    return cfg, state, list(trainer.run(state))


def _of(events, kind: str) -> list[dict]:
    return [e.data for e in events if e.kind == kind]


def test_sequence_mode_makes_one_update_per_step_with_every_field():
    cfg, state, events = _events("train.steps=5")
    updates = _of(events, "update")
    assert [u["step"] for u in updates] == [1, 2, 3, 4, 5]
    assert [u["update"] for u in updates] == [1, 2, 3, 4, 5]
    assert [s["step"] for s in _of(events, "step")] == [1, 2, 3, 4, 5]
    assert state.step == 5 and state.update == 5
    params = set(state.params)
    for u in updates:
        assert {"step", "update", "chunk", "loss", "grad_norm", "clipped_norm", "clipped", "grad_norms", "lr", "time"} <= set(u)
        assert set(u["grad_norms"]) == params
        assert math.isfinite(u["loss"]) and u["grad_norm"] >= u["clipped_norm"] - 1e-6
        assert isinstance(u["clipped"], bool)
        # the global norm is the 2-norm of the per-parameter norms
        assert u["grad_norm"] == pytest.approx(math.sqrt(sum(v * v for v in u["grad_norms"].values())), rel=1e-5)
        assert u["lr"] == cfg.optimizer.lr
    times = [u["time"] for u in updates]
    assert times == sorted(times)


@pytest.mark.parametrize("spec, length, per_step", [("tbptt:4:8", 12, 3), ("subsequence:3", 12, 4), ("tbptt:5:5", 12, 3)])
def test_chunk_mode_makes_one_update_per_chunk(spec, length, per_step):
    steps = 3
    cfg, state, events = _events(f"truncation.mode={spec}", "truncation.update_every=chunk", f"task.length={length}", f"train.steps={steps}")
    updates = _of(events, "update")
    assert len(updates) == steps * per_step  # ceil(T / K1) chunks, the last one maybe short
    assert [u["update"] for u in updates] == list(range(1, steps * per_step + 1))
    assert Counter(u["step"] for u in updates) == {s: per_step for s in range(1, steps + 1)}
    assert [u["chunk"] for u in updates] == list(range(per_step)) * steps
    assert state.step == steps and state.update == steps * per_step
    # each step event carries the update count reached so far
    assert [(s["step"], s["update"]) for s in _of(events, "step")] == [(i, i * per_step) for i in range(1, steps + 1)]


def test_chunk_mode_skips_chunks_without_a_supervised_step():
    # delay 5 with chunks of 4: chunk 0 (t = 0..3) has no target, so 2 updates per step, not 3
    _, state, events = _events("truncation.mode=tbptt:4:8", "task.length=12", "task.delay=5", "train.steps=2")
    updates = _of(events, "update")
    assert [u["chunk"] for u in updates] == [1, 2, 1, 2]
    assert [u["update"] for u in updates] == [1, 2, 3, 4]


def test_auto_update_is_per_sequence_for_k_truncated():
    _, state, events = _events("truncation.mode=k_truncated:3", "train.steps=3")
    assert [u["update"] for u in _of(events, "update")] == [1, 2, 3]


@pytest.mark.parametrize("every, steps, expected", [(3, 10, [3, 6, 9, 10]), (0, 5, [5]), (2, 4, [2, 4]), (1, 3, [1, 2, 3])])
def test_eval_cadence_every_n_steps_and_always_at_the_end(every, steps, expected):
    _, state, events = _events(f"train.eval_every={every}", f"train.steps={steps}")
    evals = _of(events, "eval")
    assert [e["step"] for e in evals] == expected
    for e in evals:
        assert {"step", "update", "loss", "accuracy", "time"} <= set(e)
        assert 0.0 <= e["accuracy"] <= 1.0
    # an eval comes right before the boundary of the step it measures, so a stop or a
    # checkpoint taken at that boundary includes it
    kinds = [(e.kind, e.data.get("step")) for e in events if e.kind in ("step", "eval")]
    for s in expected:
        assert kinds[kinds.index(("eval", s)) + 1] == ("step", s)


def test_best_tracks_the_best_eval_so_far():
    _, state, events = _events("train.eval_every=1", "train.steps=6")
    evals = _of(events, "eval")
    assert state.best["loss"] == pytest.approx(min(e["loss"] for e in evals))
    assert state.best["accuracy"] == pytest.approx(max(e["accuracy"] for e in evals))


def test_an_eval_target_stops_the_run_early():
    _, state, events = _events("train.target=eval.accuracy>=0.0", "train.eval_every=2", "train.steps=8")
    assert [e.kind for e in events[-2:]] == ["target", "step"]  # the run ends on a step boundary
    assert events[-2].data["step"] == 2 and events[-2].data["target"] == "eval.accuracy>=0.0"
    assert state.step == 2
    assert [u["step"] for u in _of(events, "update")] == [1, 2]


def test_a_train_target_is_checked_after_every_step():
    _, state, events = _events("train.target=train.loss<1000", "train.eval_every=5", "train.steps=8")
    assert [e.kind for e in events][-2:] == ["target", "step"]
    assert state.step == 1
    assert _of(events, "eval") == []


def test_an_unreachable_target_runs_every_step():
    _, state, events = _events("train.target=eval.accuracy>1.5", "train.steps=4")
    assert state.step == 4
    assert _of(events, "target") == []


def test_divergence_stops_at_once_with_finite_records():
    diverging = ("clip.mode=none", "model.activation=identity", "model.spectral_radius=1.5",
                 "optimizer.name=sgd", "optimizer.lr=0.1", "train.steps=50")  # fmt: skip
    _, state, events = _events(*diverging)
    assert events[-1].kind == "diverged"
    d = events[-1].data
    assert d["what"] in ("loss",) or d["what"].startswith("gradient")
    assert d["step"] == state.step + 1  # the step that blew up did not complete
    for u in _of(events, "update"):
        assert all(math.isfinite(u[k]) for k in ("loss", "grad_norm", "clipped_norm"))
    assert all(np.isfinite(p).all() for p in state.params.values())


def test_clipping_is_reported_per_update():
    _, _, events = _events("clip.mode=global_norm", "clip.threshold=1e-4", "train.steps=3")
    for u in _of(events, "update"):
        assert u["clipped"] is True
        assert u["clipped_norm"] == pytest.approx(1e-4, rel=1e-3)
        assert u["grad_norm"] > u["clipped_norm"]


def test_diagnostics_do_not_change_the_trajectory():
    pytest.importorskip("bptt_cli.core.diagnostics", reason="bptt_cli/core/diagnostics.py is not written yet")
    _, s_off, off = _events("train.diagnostics_every=0", "train.steps=5", "truncation.mode=k_truncated:3")
    _, s_on, on = _events("train.diagnostics_every=1", "train.steps=5", "truncation.mode=k_truncated:3")
    assert strip_time(_of(on, "update")) == strip_time(_of(off, "update"))
    assert strip_time(_of(on, "eval")) == strip_time(_of(off, "eval"))
    for k in s_off.params:
        np.testing.assert_array_equal(s_on.params[k], s_off.params[k])
    diags = _of(on, "diagnostics")
    assert [d["step"] for d in diags] == [1, 2, 3, 4, 5]
    assert {"flow", "bias", "spectrum"} <= set(diags[0])
    assert _of(off, "diagnostics") == []


@pytest.mark.parametrize(
    "mode",
    [
        ("truncation.mode=full",),
        ("truncation.mode=k_truncated:3",),
        ("truncation.mode=subsequence:4", "truncation.update_every=chunk"),
        ("truncation.mode=tbptt:2:5", "truncation.update_every=sequence"),
    ],
    ids=["full", "k_truncated", "subsequence-chunk", "tbptt-sequence"],
)
def test_diagnostics_leave_every_schedule_unchanged_and_describe_the_weights_before_the_step(mode):
    """The pass reuses the step's forward pass and gradient (sequence updates) or runs before
    the step (chunk updates); either way the trajectory is the run's without diagnostics, and
    the numbers are those of the public functions on the weights the step started from."""
    from bptt_cli.core import diagnostics as diag
    from bptt_cli.core.model import forward

    over = ("model.dtype=float64", "train.steps=3", *mode)
    _, s_off, off = _events("train.diagnostics_every=0", *over)
    cfg, s_on, on = _events("train.diagnostics_every=2", *over)
    assert strip_time(_of(on, "update")) == strip_time(_of(off, "update"))
    for k in s_off.params:
        np.testing.assert_array_equal(s_on.params[k], s_off.params[k])
    kinds = [e.kind for e in on if e.kind in ("diagnostics", "update")]
    assert kinds[0] == "diagnostics" and kinds[1] == "update"  # reported before the step's updates
    first = _of(on, "diagnostics")[0]
    assert (first["step"], first["update"]) == (1, 0)

    trainer = Trainer(cfg)
    params = trainer.initial_state().params
    b = trainer.task.train_batch(0, cfg.train.batch_size)
    args = (params, b.x, b.targets, b.mask)
    kw = {"activation": cfg.model.activation, "loss": trainer.task.loss}
    flow = diag.gradient_flow(*args, **kw, max_lag=cfg.diagnostics.max_lag)
    bias = diag.bias_for_mode(*args, cfg.truncation.spec, **kw)
    spec = diag.spectrum(params, forward(params, b.x, activation=kw["activation"])[0][1:], kw["activation"])
    assert first["flow"]["lags"] == flow["lags"] and first["flow"]["counts"] == flow["counts"]
    np.testing.assert_allclose(first["flow"]["norms"], flow["norms"], rtol=1e-10)
    assert first["bias"].keys() == bias.keys() and first["bias"]["mode"] == bias["mode"]
    for k in ("norm_mode", "norm_full"):
        assert first["bias"][k] == pytest.approx(bias[k], rel=1e-10)
    assert first["spectrum"] == spec


def test_diagnostics_every_n_updates():
    pytest.importorskip("bptt_cli.core.diagnostics", reason="bptt_cli/core/diagnostics.py is not written yet")
    _, _, events = _events("train.diagnostics_every=4", "train.steps=9")
    assert [d["update"] for d in _of(events, "diagnostics")] == [0, 4, 8]


def test_checkpoint_state_round_trips_through_arrays():
    cfg = load_config(None, [*SMALL_TEXT, "train.steps=3"])
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    list(trainer.run(state))
    back = Trainer(cfg).state_from_arrays(state.to_arrays())
    assert (back.step, back.update, back.next_diagnostics) == (state.step, state.update, state.next_diagnostics)
    assert back.best == state.best
    np.testing.assert_array_equal(back.h, state.h)  # the text task's carried hidden state
    for k in state.params:
        np.testing.assert_array_equal(back.params[k], state.params[k])
    assert back.optimizer.t == state.optimizer.t


def test_a_checkpoint_of_another_model_is_refused():
    from bptt_cli.core.errors import InvalidInputError

    small = Trainer(load_config(None, [*SMALL, "model.hidden=8"]))
    big = Trainer(load_config(None, [*SMALL, "model.hidden=9"]))
    with pytest.raises(InvalidInputError, match="does not match"):
        big.state_from_arrays(small.initial_state().to_arrays())
    arrays = small.initial_state().to_arrays()
    del arrays["step"]
    with pytest.raises(InvalidInputError, match="missing 'step'"):
        small.state_from_arrays(arrays)


def test_the_step_loss_is_the_whole_batch_loss_in_both_schedules():
    """A step's loss is that of its whole batch: in chunk mode, the chunk losses weighted by
    their supervised entries (the last chunk's loss alone would misreport it), which equals
    the sequence-mode loss of the same batch before any update."""
    from bptt_cli.core.bptt import loss_and_gradients
    from bptt_cli.tasks import make_task

    cfg, state, events = _events("truncation.mode=subsequence:3", "train.steps=1", "task.length=12", "task.delay=2")
    (step,) = _of(events, "step")
    chunks = _of(events, "update")
    assert len(chunks) == 4  # T = 12 in chunks of 3, each with targets (delay 2 < 3)
    assert step["loss"] != pytest.approx(chunks[-1]["loss"])
    # The first chunk runs with the initial weights, so its loss matches the one computed
    # independently on that chunk; the step loss mixes all four with weights 1, 3, 3, 3.
    task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed)
    b = task.train_batch(0, cfg.train.batch_size)
    params = Trainer(cfg).initial_state().params
    first, _, _ = loss_and_gradients(params, b.x[:3], b.targets[:3], b.mask[:3], "full")
    assert chunks[0]["loss"] == pytest.approx(first, rel=1e-5)
    n = [b.mask[a : a + 3].sum() for a in range(0, 12, 3)]
    assert step["loss"] == pytest.approx(sum(c["loss"] * k for c, k in zip(chunks, n)) / sum(n), rel=1e-6)

    _, _, seq_events = _events("train.steps=1", "task.length=12", "task.delay=2")
    assert _of(seq_events, "step")[0]["loss"] == _of(seq_events, "update")[0]["loss"]


# -- checkpoints as untrusted input ---------------------------------------------------------------
def _trained(*overrides: str, steps: int = 3):
    base = SMALL_TEXT if "task.name=text" in overrides else SMALL
    cfg = load_config(None, [*base, "optimizer.name=adam", f"train.steps={steps + 2}", *overrides])
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    for e in trainer.run(state) if steps else ():
        if e.kind == "step" and e.data["step"] == steps:
            break
    return Trainer(cfg), state.to_arrays()


def _with(arrays: dict, **changes) -> dict:
    out = dict(arrays)
    for k, v in changes.items():
        k = k.replace("__", "/")
        if v is None:
            del out[k]
        else:
            out[k] = v
    return out


F32 = np.float32
BAD_CHECKPOINTS = {
    # name: (changes, fragments of the one message)
    "param missing": ({"param__W_hh": None}, ["missing 'param/W_hh'"]),
    "param shape": ({"param__W_hh": np.zeros((9, 9), F32)}, ["'param/W_hh'", "does not match", "(8, 8)"]),
    "param dtype": ({"param__b_h": np.zeros(8)}, ["'param/b_h'", "dtype float32"]),
    "step missing": ({"step": None}, ["missing 'step'"]),
    "step float": ({"step": np.array(2.0)}, ["'step'", "integer", "float64 2.0"]),
    "step vector": ({"step": np.array([3])}, ["'step'", "integer", "shape (1,)"]),
    "step bool": ({"step": np.array(True)}, ["'step'", "integer"]),
    "step negative": ({"step": np.array(-1)}, ["'step'", "negative"]),
    "step beyond": ({"step": np.array(10**9)}, ["'step'", "step 1,000,000,000", "beyond", "train.steps = 5"]),
    "update negative": ({"update": np.array(-2)}, ["'update'", "negative"]),
    "update text": ({"update": np.array("3")}, ["'update'", "integer"]),
    "elapsed int": ({"elapsed": np.array(3)}, ["'elapsed'", "float"]),
    "elapsed nan": ({"elapsed": np.array(np.nan)}, ["'elapsed'", "finite"]),
    "elapsed negative": ({"elapsed": np.array(-1.0)}, ["'elapsed'", ">= 0"]),
    "next_diagnostics float": ({"next_diagnostics": np.array(1.5)}, ["'next_diagnostics'", "integer"]),
    "optim t missing": ({"optim__t": None}, ["missing 'optim/t'"]),
    "optim t float": ({"optim__t": np.array(3.0)}, ["'optim/t'", "integer"]),
    "optim t not update": ({"optim__t": np.array(7)}, ["'optim/t'", "must equal 'update' = 3"]),
    "slot missing": ({"optim__m__W_hh": None}, ["missing 'optim/m/W_hh'", "adam"]),
    "slot shape": ({"optim__v__W_hh": np.zeros((8, 2), F32)}, ["'optim/v/W_hh'", "does not match", "(8, 8)"]),
    "slot dtype": ({"optim__m__b_y": np.zeros(8)}, ["'optim/m/b_y'", "dtype float32", "dtype float64"]),
    "slot of another optimizer": ({"optim__G__W_hh": np.zeros((8, 8), F32)}, ["'optim/G/W_hh'", "no checkpoint"]),
    "h on a stateless task": ({"h": np.zeros((4, 8), F32)}, ["'h'", "carries none"]),
    "unknown member": ({"weights": np.zeros(3)}, ["'weights'", "no checkpoint"]),
    "best not a float": ({"best__loss": np.array([1.0, 2.0])}, ["'best/loss'", "float"]),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_damaged_checkpoint_is_refused_naming_the_member(case):
    from bptt_cli.core.errors import InvalidInputError

    trainer, arrays = _trained()
    changes, fragments = BAD_CHECKPOINTS[case]
    with pytest.raises(InvalidInputError) as e:  # never TypeError, KeyError or ValueError
        trainer.state_from_arrays(_with(arrays, **changes))
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, (f, msg)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"h": np.zeros((4, 7), F32)}, ["'h'", "(4, 8)"]),
        ({"h": np.full((4, 8), np.nan, F32)}, ["'h'", "NaN"]),
        ({"h": None}, ["missing 'h'", "text"]),
    ],
    ids=["shape", "nan", "missing"],
)
def test_the_carried_hidden_state_is_checked(changes, fragments):
    from bptt_cli.core.errors import InvalidInputError

    trainer, arrays = _trained("task.name=text")
    assert arrays["h"].shape == (4, 8)
    with pytest.raises(InvalidInputError) as e:
        trainer.state_from_arrays(_with(arrays, **changes))
    for f in fragments:
        assert f in str(e.value), (f, str(e.value))


@pytest.mark.parametrize(
    "overrides",
    [("optimizer.name=adam",), ("optimizer.name=sgd",), ("task.name=text",)],
    ids=["adam", "sgd-no-slots", "text"],
)
def test_a_checkpoint_before_the_first_update_loads(overrides):
    """Step 0: no optimizer slots yet and no carried state; the run then continues exactly."""
    trainer, arrays = _trained(*overrides, steps=0)
    assert int(arrays["optim/t"]) == 0 and not any(k.count("/") == 2 for k in arrays) and "h" not in arrays
    state = trainer.state_from_arrays(arrays)
    assert state.step == 0 and state.optimizer.t == 0
    ref_trainer, ref = Trainer(trainer.cfg), Trainer(trainer.cfg).initial_state()
    list(ref_trainer.run(ref))
    list(trainer.run(state))
    for k in ref.params:
        np.testing.assert_array_equal(state.params[k], ref.params[k])


def test_a_restored_state_keeps_its_parameters_in_one_flat_buffer():
    from bptt_cli.core import optim

    trainer, arrays = _trained()
    state = trainer.state_from_arrays(arrays)
    assert optim.Flat.of(state.params) is not None
    for k, v in state.params.items():
        np.testing.assert_array_equal(v, arrays[f"param/{k}"])
