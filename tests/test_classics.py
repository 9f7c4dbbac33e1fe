"""The classics (issue 15): min-char-rnn step for step, and each key that makes it expressible.

The reference is min-char-rnn written here from its published algorithm (Karpathy's gist):
column vectors, a Python loop over the window, the loss summed, gradients clipped elementwise,
Adagrad with sqrt(mem + 1e-8), the hidden state carried and zeroed when the pointer wraps.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from bptt_cli.cli import app
from bptt_cli.config import ConfigError, load_config
from bptt_cli.core import optim
from bptt_cli.core.errors import InvalidInputError
from bptt_cli.core.model import RNN
from bptt_cli.tasks import make_task
from bptt_cli.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CLASSICS = ROOT / "configs" / "classics"
MIN_CHAR = CLASSICS / "min_char_rnn.yaml"
TEXT = CLASSICS / "data" / "coriolanus.txt"


def min_char_rnn(data: str, params: dict, *, seq_length: int = 25, lr: float = 0.1, dy_scale: float | None = None):
    """min-char-rnn's training loop, one update per ``next()``: yields (state before the
    update, its loss, whether it clipped, the weights after it). The state is a dict of the
    weights, Adagrad's memories and hprev (bptt's names and layout). ``dy_scale`` computes dy
    as ``(p * s - onehot * s) / s``: the same numbers up to one rounding, for measuring how the
    training trajectory amplifies rounding."""
    chars = sorted(set(data))  # the gist's list(set(data)), in bptt's (sorted) order
    ix = {ch: i for i, ch in enumerate(chars)}
    V = len(chars)
    Wxh, Whh, Why = params["W_xh"].copy(), params["W_hh"].copy(), params["W_hy"].copy()
    bh, by = params["b_h"][:, None].copy(), params["b_y"][:, None].copy()
    H = Whh.shape[0]

    def loss_fun(inputs, targets, hprev):
        xs, hs, ps = {}, {}, {}
        hs[-1] = np.copy(hprev)
        loss = 0
        for t in range(len(inputs)):
            xs[t] = np.zeros((V, 1))
            xs[t][inputs[t]] = 1
            hs[t] = np.tanh(np.dot(Wxh, xs[t]) + np.dot(Whh, hs[t - 1]) + bh)
            ys = np.dot(Why, hs[t]) + by
            ps[t] = np.exp(ys) / np.sum(np.exp(ys))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(Wxh), np.zeros_like(Whh), np.zeros_like(Why)
        dbh, dby = np.zeros_like(bh), np.zeros_like(by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            if dy_scale is not None:
                dy = np.copy(ps[t]) * dy_scale
                dy[targets[t]] -= dy_scale
                dy /= dy_scale
            dWhy += np.dot(dy, hs[t].T)
            dby += dy
            dh = np.dot(Why.T, dy) + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += np.dot(dhraw, xs[t].T)
            dWhh += np.dot(dhraw, hs[t - 1].T)
            dhnext = np.dot(Whh.T, dhraw)
        clipped = any(np.abs(d).max() > 5 for d in (dWxh, dWhh, dWhy, dbh, dby))
        for dparam in [dWxh, dWhh, dWhy, dbh, dby]:
            np.clip(dparam, -5, 5, out=dparam)
        return loss, dWxh, dWhh, dWhy, dbh, dby, hs[len(inputs) - 1], clipped

    def weights():
        return {"W_xh": Wxh.copy(), "W_hh": Whh.copy(), "b_h": bh[:, 0].copy(), "W_hy": Why.copy(), "b_y": by[:, 0].copy()}

    n, p = 0, 0
    mems = [np.zeros_like(m) for m in (Wxh, Whh, Why, bh, by)]
    while True:
        if p + seq_length + 1 >= len(data) or n == 0:
            hprev = np.zeros((H, 1))
            p = 0
        before = {"params": weights(), "G": dict(zip(("W_xh", "W_hh", "W_hy", "b_h", "b_y"), (m.reshape(m.shape[0], -1).copy() for m in mems))), "h": hprev[:, 0].copy()}
        before["G"]["b_h"], before["G"]["b_y"] = before["G"]["b_h"][:, 0], before["G"]["b_y"][:, 0]
        inputs = [ix[ch] for ch in data[p : p + seq_length]]
        targets = [ix[ch] for ch in data[p + 1 : p + seq_length + 1]]
        loss, dWxh, dWhh, dWhy, dbh, dby, hprev, clipped = loss_fun(inputs, targets, hprev)
        for param, dparam, mem in zip([Wxh, Whh, Why, bh, by], [dWxh, dWhh, dWhy, dbh, dby], mems):
            mem += dparam * dparam
            param += -lr * dparam / np.sqrt(mem + 1e-8)
        yield before, loss, clipped, weights()
        p += seq_length
        n += 1


def _run_gist(data, weights, n_updates, **kw):
    """Losses, clip flags and per-update records of the first ``n_updates`` updates."""
    gen = min_char_rnn(data, weights, **kw)
    return [next(gen) for _ in range(n_updates)]


def _weights(V: int, H: int = 100, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "W_xh": rng.standard_normal((H, V)) * 0.01,
        "W_hh": rng.standard_normal((H, H)) * 0.01,
        "b_h": np.zeros(H),
        "W_hy": rng.standard_normal((V, H)) * 0.01,
        "b_y": np.zeros(V),
    }


def _update_records(cfg, cache_dir=None) -> list[dict]:
    tr = Trainer(cfg, cache_dir=cache_dir)
    return [e.data for e in tr.run(tr.initial_state()) if e.kind == "update"]


def _min_char_setup(tmp_path, n_chars: int = 3000):
    # 3,000 characters: the text wraps after 119 windows, so the reset is exercised within 200
    # updates; (N - 1) is not a multiple of 25, where the gist reads one window fewer.
    data = TEXT.read_text()[:n_chars]
    text = tmp_path / "input.txt"
    text.write_text(data)
    weights = _weights(len(set(data)))
    np.savez(tmp_path / "w.npz", **weights)
    sets = [f"task.path={text}", f"model.init_from={tmp_path / 'w.npz'}", "train.steps=200", "train.checkpoint_every=200"]
    return data, weights, load_config(MIN_CHAR, sets)


def test_min_char_rnn_config_matches_the_gist_update_for_update(tmp_path):
    """Each of the first 200 updates, from the gist's own state before it (weights, Adagrad
    memories, hprev, position in the text): bptt's loss, clipping and new weights equal the
    gist's to 1e-10 relative. The state is handed over at every update because the
    trajectory itself is chaotic (next test): one rounding apart, two runs part ways."""
    data, weights, cfg = _min_char_setup(tmp_path)
    tr = Trainer(cfg, cache_dir=tmp_path)
    gist = _run_gist(data, weights, 200)
    worst_loss = worst_param = 0.0
    clips = []
    for step, (before, loss, clipped, after) in enumerate(gist):
        arrays = {f"param/{k}": v for k, v in before["params"].items()}
        arrays.update({f"optim/G/{k}": v for k, v in before["G"].items()})
        arrays.update(step=np.int64(step), update=np.int64(step), elapsed=np.float64(0), next_diagnostics=np.int64(0))
        arrays["optim/t"] = np.int64(step)
        if step:
            arrays["h"] = before["h"][None, :]  # (B, H) with B = 1
        state = tr.state_from_arrays(arrays)
        rec = next(e.data for e in tr.run(state) if e.kind == "update")
        worst_loss = max(worst_loss, abs(rec["loss"] - loss) / loss)
        for k, v in after.items():
            worst_param = max(worst_param, float(np.abs(state.params[k] - v).max() / np.abs(v).max()))
        assert rec["clipped"] == clipped, step
        clips.append(clipped)
    assert worst_loss < 1e-10 and worst_param < 1e-10, (worst_loss, worst_param)
    assert 5 <= sum(clips) < 200  # clipping is exercised, and not on every update
    assert abs(gist[0][1] - 25 * np.log(len(set(data)))) < 0.5  # the summed loss: ~25 ln V at the start


def test_min_char_rnn_free_run_matches_until_rounding_chaos_takes_over(tmp_path):
    """Run freely at the gist's lr 0.1, bptt follows the gist to 1e-10 for the first updates;
    after that the trajectory amplifies rounding about tenfold per update, as the gist does
    against itself when dy is computed with one rounding more."""
    data, weights, cfg = _min_char_setup(tmp_path)
    ours = np.array([r["loss"] for r in _update_records(cfg, tmp_path)])
    ref = np.array([g[1] for g in _run_gist(data, weights, 200)])
    itself = np.array([g[1] for g in _run_gist(data, weights, 200, dy_scale=0.04)])
    rel = np.abs(ours - ref) / ref
    assert rel[:5].max() < 1e-10, rel[:5]
    drift = np.abs(itself - ref) / ref  # the gist against itself, one rounding apart
    assert drift[:3].max() < 1e-13 and drift.max() > 1e-6  # chaotic: no implementation can do better
    assert rel.max() < 100 * drift.max()  # bptt parts from the gist no further than that


def test_min_char_rnn_free_run_matches_the_gist_for_200_updates_where_it_is_well_conditioned(tmp_path):
    """The issue's check, run freely: from the same initial weights bptt's per-update losses
    equal the gist's to 1e-10 relative over 200 updates, with clipping and the wrap's reset.

    At the gist's lr 0.1 no window or seed of the shipped text allows it (test above): in 30
    of 30 scanned (10 windows of 3,000 characters, seeds 0-2) the gist parts from itself by
    more than 1e-12 within 24 updates and by 1.8e-5 to 0.9 within 200 (docs/classics.md).
    The setup here changes only lr, to 0.02, where all 6 scanned stayed within 2.4e-13, on
    characters 12,000-15,000 with seed 0's weights.
    Its conditioning is asserted first, so the choice is justified here and not elsewhere:
    the gist against itself with every initial weight one ulp up, or with dy rounded once
    more, stays within 1e-12 for all 200 updates."""
    lr = 0.02
    data = TEXT.read_text()[12_000:15_000]
    text = tmp_path / "input.txt"
    text.write_text(data)
    weights = _weights(len(set(data)), seed=0)
    np.savez(tmp_path / "w.npz", **weights)
    gist = _run_gist(data, weights, 200, lr=lr)
    ref = np.array([g[1] for g in gist])
    ulp_up = {k: np.nextafter(v, np.inf) for k, v in weights.items()}
    for name, other in [
        ("weights one ulp up", _run_gist(data, ulp_up, 200, lr=lr)),
        ("dy rounded once more", _run_gist(data, weights, 200, lr=lr, dy_scale=0.04)),
    ]:
        drift = np.abs(np.array([g[1] for g in other]) - ref) / ref
        assert drift.max() < 1e-12, (name, drift.max())
    clips = [g[2] for g in gist]
    assert 1 <= sum(clips) < 200, sum(clips)  # clipping is exercised (2 updates)
    assert len(data) - 1 < 200 * 25  # the text wraps (after 119 windows): the reset is exercised

    sets = [f"task.path={text}", f"model.init_from={tmp_path / 'w.npz'}", f"optimizer.lr={lr}",
            "train.steps=200", "train.checkpoint_every=200"]  # fmt: skip
    records = _update_records(load_config(MIN_CHAR, sets), tmp_path)
    ours = np.array([r["loss"] for r in records])
    assert len(ours) == 200
    rel = np.abs(ours - ref) / ref
    assert rel.max() < 1e-10, (rel.argmax(), rel.max())
    assert [r["clipped"] for r in records] == clips


def test_loss_reduction_sum_is_n_times_the_mean_update():
    base = ["task.length=20", "train.steps=1", "train.batch_size=4", "clip.mode=none", "optimizer.name=sgd", "model.dtype=float64"]
    mean = load_config(None, [*base, "optimizer.lr=0.5"])
    summed = load_config(None, [*base, "optimizer.lr=0.5", "train.loss_reduction=sum"])
    n = float(Trainer(mean).task.train_batch(0, 4).mask.sum())
    tr_m, tr_s = Trainer(mean), Trainer(summed)
    sm, ss = tr_m.initial_state(), tr_s.initial_state()
    start = {k: v.copy() for k, v in sm.params.items()}
    rm = [e.data for e in tr_m.run(sm) if e.kind == "update"][0]
    rs = [e.data for e in tr_s.run(ss) if e.kind == "update"][0]
    assert rs["loss"] == pytest.approx(n * rm["loss"], rel=1e-12)
    assert rs["grad_norm"] == pytest.approx(n * rm["grad_norm"], rel=1e-12)
    for k in start:  # SGD: the summed step is n times the mean's
        np.testing.assert_allclose(ss.params[k] - start[k], n * (sm.params[k] - start[k]), rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("name", ["adagrad", "rmsprop", "adam"])
def test_eps_inside_sqrt_divides_by_sqrt_of_acc_plus_eps(name):
    rng = np.random.default_rng(1)
    p0 = {"w": rng.standard_normal(7)}
    g = {"w": rng.standard_normal(7) * 1e-5}  # tiny: where the two forms differ
    eps = 1e-8
    out = {}
    for inside in (False, True):
        opt = optim.make(name, lr=0.1, eps=eps, eps_inside_sqrt=inside)
        p = {"w": p0["w"].copy()}
        opt.step(p, g)
        out[inside] = p0["w"] - p["w"]
    acc = {"adagrad": g["w"] ** 2, "rmsprop": 0.01 * g["w"] ** 2, "adam": g["w"] ** 2}[name]
    num = 0.1 * g["w"]
    np.testing.assert_allclose(out[True], num / np.sqrt(acc + eps), rtol=1e-12)
    np.testing.assert_allclose(out[False], num / (np.sqrt(acc) + eps), rtol=1e-12)
    # The state has the same slots, so a checkpoint of one form loads into the other.
    a = optim.make(name, lr=0.1, eps_inside_sqrt=True)
    a.step({"w": p0["w"].copy()}, g)
    b = optim.make(name, lr=0.1)
    b.load_state_dict(a.state_dict())
    b.step({"w": p0["w"].copy()}, g)


def test_eps_inside_sqrt_step_allocates_nothing_new():
    import tracemalloc

    params = optim.flatten({"a": np.ones((64, 64)), "b": np.ones(64)})
    grads = optim.flatten({"a": np.full((64, 64), 0.1), "b": np.full(64, 0.1)})
    opt = optim.make("adagrad", lr=0.1, eps_inside_sqrt=True)
    opt.step(params, grads)  # builds the state and scratch
    tracemalloc.start()
    for _ in range(3):
        opt.step(params, grads)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 4096, peak  # a per-step temporary would be 32 KB


def test_eps_inside_sqrt_refused_for_sgd_and_non_bool():
    with pytest.raises(ConfigError, match="eps_inside_sqrt belongs to adagrad and rmsprop and adam"):
        load_config(None, ["optimizer.name=sgd", "optimizer.eps_inside_sqrt=true"])
    with pytest.raises(ConfigError, match="expected true or false"):
        load_config(None, ["optimizer.name=adam", "optimizer.eps_inside_sqrt=3"])
    with pytest.raises(InvalidInputError, match="true or false"):
        optim.make("adam", eps_inside_sqrt="yes")


# -- initialisation --------------------------------------------------------------------------
def test_init_params_draw_the_named_distributions():
    spec = {
        "W_xh": {"dist": "gaussian", "std": 0.01},
        "W_hh": {"dist": "identity", "gain": 0.5},
        "W_hy": {"dist": "uniform", "scale": 0.2},
        "b_h": 0.25,
        "b_y": -1.0,
    }
    p = RNN.init(300, 40, 200, init_params=spec, dtype=np.float64, seed=3).params
    assert p["W_xh"].std() == pytest.approx(0.01, rel=0.05)
    np.testing.assert_array_equal(p["W_hh"], 0.5 * np.eye(40))
    assert abs(p["W_hy"]).max() <= 0.2 and abs(p["W_hy"]).max() > 0.19
    assert (p["b_h"] == 0.25).all() and (p["b_y"] == -1.0).all()
    q = RNN.init(3, 8, 5, init_params={"W_xh": {"dist": "orthogonal", "gain": 2.0}, "W_hy": {"dist": "orthogonal"}}).params
    np.testing.assert_allclose(q["W_xh"].T @ q["W_xh"], 4 * np.eye(3), atol=1e-5)  # (8, 3): orthonormal columns
    np.testing.assert_allclose(q["W_hy"] @ q["W_hy"].T, np.eye(5), atol=1e-5)  # (5, 8): orthonormal rows


def test_init_params_defaults_are_the_shorthand_bit_for_bit():
    for init in ("orthogonal", "gaussian", "identity"):
        a = RNN.init(4, 9, 3, init=init, spectral_radius=1.2, seed=7).params
        b = RNN.init(4, 9, 3, init=init, spectral_radius=1.2, seed=7, init_params={k: {"dist": "default"} for k in ("W_xh", "W_hh", "W_hy")}).params
        assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    cfg = load_config(None, ["model.init_params.W_hy.dist=default"])
    assert cfg == load_config(None)


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.init_params.W_xh.dist=gaussian", "dist gaussian needs std"),
        ("model.init_params.W_xh.scale=0.1", "scale is not used by dist default"),
        ("model.init_params.W_hh.dist=gauss", "did you mean gaussian"),
        ("model.init_params.W_q.dist=gaussian", "unknown key"),
        ("model.init_params.b_h=nan", "model.init_params.b_h"),
    ],
)
def test_init_params_bad_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_pascanu_init_draws_w_xh_and_w_hy_from_n_0_0_1():
    cfg = load_config(CLASSICS / "pascanu_temporal_order.yaml")
    p = Trainer(cfg).initial_state().params
    for k in ("W_xh", "W_hh", "W_hy"):
        assert p[k].std() == pytest.approx(0.1, rel=0.2), k


# -- init_from -------------------------------------------------------------------------------
def _tiny(tmp_path, *sets):
    return load_config(None, ["task.delay=3", "task.length=10", "model.hidden=6", "train.steps=2", "model.dtype=float64", *sets])


def test_init_from_npz_starts_from_those_weights_and_records_the_hash(tmp_path):
    like = Trainer(_tiny(tmp_path)).initial_state().params
    given = {k: np.full(v.shape, 0.03) for k, v in like.items()}
    np.savez(tmp_path / "w.npz", **given)
    cfg = _tiny(tmp_path, f"model.init_from={tmp_path / 'w.npz'}")
    import hashlib

    assert cfg.model.init_from_sha256 == "sha256:" + hashlib.sha256((tmp_path / "w.npz").read_bytes()).hexdigest()
    state = Trainer(cfg).initial_state()
    assert all((state.params[k] == 0.03).all() for k in given)


def test_init_from_a_run_directory_takes_its_checkpoint(tmp_path):
    runner = CliRunner()
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("task: {name: delay, delay: 3, length: 10}\nmodel: {hidden: 6}\ntrain: {steps: 3, eval_every: 0}\n")
    r = runner.invoke(app, ["train", str(cfg_file), "--quiet", "--run-dir", str(tmp_path / "run"), "--runs-root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    trained = np.load(tmp_path / "run" / "checkpoint.npz")
    r = runner.invoke(
        app,
        ["train", str(cfg_file), "--quiet", "--set", f"model.init_from={tmp_path / 'run'}", "--set", "train.steps=1",
         "--run-dir", str(tmp_path / "run2"), "--runs-root", str(tmp_path)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    recorded = (tmp_path / "run2" / "config.yaml").read_text()
    assert "init_from_sha256: sha256:" in recorded and str(tmp_path / "run" / "") in recorded + "/"
    cfg = load_config(tmp_path / "run2" / "config.yaml")
    start = Trainer(cfg).initial_state().params
    for k, v in start.items():
        np.testing.assert_array_equal(v, trained[f"param/{k}"])


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda w: w.pop("b_y"), "missing b_y"),
        (lambda w: w.update(extra=np.zeros(2)), "unexpected extra"),
        (lambda w: w.update(W_hh=np.zeros((5, 5))), r"W_hh is float64 \(5, 5\), the model's float64 \(6, 6\)"),
        (lambda w: w.update(W_xh=w["W_xh"].astype(np.float32)), "W_xh is float32"),
        (lambda w: w.update(b_h=np.full(6, np.nan)), "b_h has NaN"),
    ],
)
def test_init_from_mismatch_is_one_message_and_exit_2(tmp_path, mutate, message):
    like = Trainer(_tiny(tmp_path)).initial_state().params
    w = {k: v.copy() for k, v in like.items()}
    mutate(w)
    np.savez(tmp_path / "w.npz", **w)
    cfg = _tiny(tmp_path, f"model.init_from={tmp_path / 'w.npz'}")
    with pytest.raises(InvalidInputError, match=message):
        Trainer(cfg)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"task: {{name: delay, delay: 3, length: 10}}\nmodel: {{hidden: 6, dtype: float64, init_from: {tmp_path / 'w.npz'}}}\n"
        "train: {steps: 2}\n"
    )
    r = CliRunner().invoke(app, ["train", str(cfg_file), "--quiet", "--runs-root", str(tmp_path / "runs")])
    assert r.exit_code == 2, r.output
    assert "does not fit this model" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # refused before a run dir


def test_init_from_missing_changed_or_not_an_npz(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        _tiny(tmp_path, f"model.init_from={tmp_path / 'nope.npz'}")
    with pytest.raises(ConfigError, match="without checkpoint.npz"):
        _tiny(tmp_path, f"model.init_from={tmp_path}")
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(InvalidInputError, match="not a checkpoint"):
        Trainer(_tiny(tmp_path, f"model.init_from={tmp_path / 'bad.npz'}"))
    like = Trainer(_tiny(tmp_path)).initial_state().params
    np.savez(tmp_path / "w.npz", **like)
    cfg = _tiny(tmp_path, f"model.init_from={tmp_path / 'w.npz'}")
    np.savez(tmp_path / "w.npz", **{k: v + 1 for k, v in like.items()})
    with pytest.raises(InvalidInputError, match="changed since the config recorded it"):
        Trainer(cfg)
    with pytest.raises(ConfigError, match="only recorded with init_from"):
        _tiny(tmp_path, "model.init_from_sha256=sha256:00")


def test_resume_takes_the_checkpoint_and_needs_no_init_from_file(invoke, tmp_path):
    """A resumed run's weights come from its checkpoint: init_from's file may be changed or
    deleted since, and the run goes on exactly as if it had not stopped."""
    like = Trainer(_tiny(tmp_path)).initial_state().params
    w = tmp_path / "w.npz"
    np.savez(w, **{k: np.full(v.shape, 0.03) for k, v in like.items()})
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"task: {{name: delay, delay: 3, length: 10}}\nmodel: {{hidden: 6, dtype: float64, init_from: {w}}}\n"
        "train: {steps: 4, eval_every: 0, checkpoint_every: 1}\n"
    )
    whole, part = tmp_path / "whole", tmp_path / "part"
    for run, steps in [(whole, 4), (part, 2)]:
        r = invoke("train", cfg_file, "--quiet", "--run-dir", run, "--set", f"train.steps={steps}", "--threads", "1")
        assert r.exit_code == 0, r.output
    recorded = (part / "config.yaml").read_text()
    np.savez(w, **{k: np.full(v.shape, 0.5) for k, v in like.items()})  # changed since
    r = invoke("train", "--resume", part, "--quiet", "--set", "train.steps=3")
    assert r.exit_code == 0, r.output
    w.unlink()  # and then gone
    r = invoke("train", "--resume", part, "--quiet", "--set", "train.steps=4")
    assert r.exit_code == 0, r.output
    a, b = np.load(whole / "checkpoint.npz"), np.load(part / "checkpoint.npz")
    for k in like:
        np.testing.assert_array_equal(a[f"param/{k}"], b[f"param/{k}"])
    sha = next(line for line in recorded.splitlines() if "init_from_sha256" in line)
    assert sha in (part / "config.yaml").read_text()  # the recorded hash stays
    # A new run from the same config still checks the file: it is gone.
    r = invoke("train", cfg_file, "--quiet", "--run-dir", tmp_path / "new")
    assert r.exit_code == 2 and "no such file" in r.output, r.output



def test_api_resume_needs_no_init_from_file(tmp_path):
    """The notebook API and compare resume through session.execute: the checkpoint wins there too."""
    from bptt_cli import api

    like = Trainer(_tiny(tmp_path)).initial_state().params
    w = tmp_path / "w.npz"
    np.savez(w, **{k: np.full(v.shape, 0.03) for k, v in like.items()})
    data = {
        "task": {"name": "delay", "delay": 3, "length": 10},
        "model": {"hidden": 6, "dtype": "float64", "init_from": str(w)},
        "train": {"steps": 2, "eval_every": 0, "checkpoint_every": 1, "threads": 1},
    }
    run = api.run(data, runs_root=tmp_path / "runs")
    w.unlink()
    extended = api.extend(run.path, 4)
    assert extended.status == "completed" and extended.summary["steps_done"] == 4


# -- text: reset at the wrap, no held-out part --------------------------------------------
def test_text_reset_state_at_end_zeroes_the_state_exactly_at_the_wrap(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text()[:400])
    task = make_task("text", {"path": str(text), "length": 25, "reset_state_at_end": True, "eval_fraction": 0}, cache_dir=tmp_path)
    W = task.windows_per_epoch(1)
    assert W == (400 - 1) // 25
    assert [s for s in range(3 * W + 1) if task.resets_state(s, 1)] == [W, 2 * W, 3 * W]
    keep = make_task("text", {"path": str(text), "length": 25}, cache_dir=tmp_path)
    assert not any(keep.resets_state(s, 1) for s in range(3 * W))


def test_text_eval_fraction_zero_trains_on_everything_and_skips_evaluation(tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT.read_text()[:2000])
    cfg = load_config(None, ["task.name=text", f"task.path={text}", "task.length=25", "task.eval_fraction=0",
                             "train.steps=3", "train.eval_every=1", "train.batch_size=2", "model.hidden=8"])  # fmt: skip
    tr = Trainer(cfg, cache_dir=tmp_path)
    assert tr.task.windows_per_epoch(1) == (2000 - 1) // 25  # the whole text
    kinds = [e.kind for e in tr.run(tr.initial_state())]
    assert "eval" not in kinds and kinds.count("step") == 3
    with pytest.raises(InvalidInputError, match="needs a held-out set"):
        Trainer(load_config(None, ["task.name=text", f"task.path={text}", "task.eval_fraction=0", "train.target=eval.bpc<1"]),
                cache_dir=tmp_path)  # fmt: skip
    with pytest.raises(ConfigError, match="eval_fraction"):
        load_config(None, ["task.name=text", "task.eval_fraction=-0.1"])


# -- temporal order, Hochreiter & Schmidhuber's task 6a ----------------------------------
def test_temporal_order_hochreiter_layout():
    task = make_task("temporal_order", {"length": 100, "variant": "hochreiter"}, seed=2)
    assert (task.n_in, task.n_out, task.length) == (8, 4, 110)
    b = task.train_batch(0, 500)
    T, B = b.mask.shape
    ends = b.mask.argmax(0)  # (B,) each sequence's last step n - 1
    assert (b.mask.sum(0) == 1).all() and 99 <= ends.min() and ends.max() <= 109 and len(set(ends)) == 11
    s = b.x.argmax(-1)  # (T, B)
    cols = np.arange(B)
    assert (s[0] == 6).all() and (s[ends, cols] == 7).all()  # E first, the trigger B last
    after = np.arange(T)[:, None] > ends
    assert (b.x.sum(-1)[after] == 0).all() and (b.x.sum(-1)[~after] == 1).all()
    rel = (s <= 1) & ~after  # X and Y: exactly two, at t1 in 10..20 and t2 in 50..60
    assert (rel.sum(0) == 2).all()
    pos = np.sort(np.nonzero(rel.T)[1].reshape(B, 2), axis=1)
    assert pos[:, 0].min() == 10 and pos[:, 0].max() == 20 and pos[:, 1].min() == 50 and pos[:, 1].max() == 60
    first, second = s[pos[:, 0], cols], s[pos[:, 1], cols]
    np.testing.assert_array_equal(b.targets[ends, cols], 2 * first + second)


def test_temporal_order_default_variant_is_unchanged():
    a = make_task("temporal_order", {"length": 50}, seed=1).train_batch(3, 8)
    b = make_task("temporal_order", {"length": 50, "variant": "basic"}, seed=1).train_batch(3, 8)
    assert a.x.shape == (50, 8, 6) and a.x.tobytes() == b.x.tobytes() and a.targets.tobytes() == b.targets.tobytes()
    with pytest.raises(ConfigError, match="allowed: basic, hochreiter"):
        load_config(None, ["task.name=temporal_order", "task.variant=pascanu"])


# -- defaults ----------------------------------------------------------------------------------
SHIPPED = sorted((ROOT / "configs").glob("*.yaml")) + sorted((ROOT / "configs" / "experiments").glob("*.yaml"))


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_new_keys_stay_out_of_every_earlier_config(path):
    """At their defaults the classics keys are left out of the dumped config, so every config
    written before them dumps (config.yaml) and digests (resume's check) as it did.
    (Their metrics are unchanged too: measured by running every shipped config before and
    after, docs/classics.md.)"""
    import yaml

    from bptt_cli.config import dump_yaml

    text = dump_yaml(load_config(path))
    for key in ("loss_reduction", "eps_inside_sqrt", "init_params", "init_from", "variant", "reset_state_at_end"):
        assert key not in text, key
    assert yaml.safe_load(text)  # still a config


# -- the shipped classics, at smoke size ------------------------------------------------------
CLASSIC_CONFIGS = sorted(CLASSICS.glob("*.yaml"))


@pytest.mark.parametrize("config", CLASSIC_CONFIGS, ids=lambda p: p.stem)
def test_classic_config_trains_and_compares_at_smoke_size(invoke, tmp_path, monkeypatch, config):
    monkeypatch.chdir(ROOT)  # task.path is relative to the checkout, as the headers say
    result = invoke("train", config, "--smoke", "--runs-root", tmp_path / "train", "--json")
    assert result.exit_code == 0, result.output
    import json

    assert json.loads(result.stdout)["status"] == "completed"
    if load_config(config).compare is not None:
        result = invoke("compare", config, "--smoke", "--workers", "1", "--runs-root", tmp_path / "compare", "-q")
        assert result.exit_code == 0, result.output


def test_the_three_classics_are_shipped_with_a_header():
    assert [p.stem for p in CLASSIC_CONFIGS] == ["aicher_copy", "min_char_rnn", "pascanu_temporal_order"]
    for p in CLASSIC_CONFIGS:
        head = p.read_text().split("\nname:")[0]
        assert "What the original reports" in head and "What bptt gets" in head, p.name


def test_a_run_without_held_out_text_says_so_in_its_summary(invoke, tmp_path):
    """eval_fraction 0: no eval log lines, and the summary (file and panel) says why."""
    res = invoke("train", ROOT / "configs" / "classics" / "min_char_rnn.yaml", "--smoke", "--runs-root", tmp_path, "--threads", "1")
    assert res.exit_code == 0, res.output
    run = next(p for p in tmp_path.rglob("summary.json")).parent
    summary = json.loads((run / "summary.json").read_text())
    assert "eval_fraction is 0" in summary["evaluation"]
    assert "eval_fraction is 0" in res.output
    assert not (run / "eval.jsonl").exists() or not (run / "eval.jsonl").read_text().strip()
