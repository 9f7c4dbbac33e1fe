"""Gradient clipping and optimizers: norms, directions, one hand-computed step each, state."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bptt_cli.core import clipping, optim
from bptt_cli.core.errors import InvalidInputError

KEYS = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


def grads_of(scale: float, seed: int = 0, dtype=np.float64) -> dict:
    rng = np.random.default_rng(seed)
    shapes = {"W_xh": (4, 3), "W_hh": (4, 4), "b_h": (4,), "W_hy": (2, 4), "b_y": (2,)}
    return {k: (scale * rng.normal(size=s)).astype(dtype) for k, s in shapes.items()}


def copy(d: dict) -> dict:
    return {k: v.copy() for k, v in d.items()}


def norm(d: dict) -> float:
    return float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in d.values())))


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


# -- clipping --------------------------------------------------------------------------------
def test_global_norm_value():
    g = {"W_xh": np.array([[3.0]]), "W_hh": np.array([[0.0, 4.0]]), "b_h": np.zeros(2),
         "W_hy": np.array([[12.0]]), "b_y": np.zeros(1)}
    assert clipping.global_norm(g) == pytest.approx(13.0, rel=1e-12)


@pytest.mark.parametrize("c", [0.1, 1.0, 3.0])
def test_global_norm_clipping(c):
    g = grads_of(2.0)
    before = copy(g)
    n = norm(g)
    assert n > c
    out, rec = clipping.clip(g, "global_norm", c)
    assert_same(g, before)  # inputs untouched
    assert rec.clipped
    assert rec.norm_before == pytest.approx(n, rel=1e-9)
    assert rec.norm_after == pytest.approx(min(n, c), rel=1e-6)
    assert norm(out) == pytest.approx(min(n, c), rel=1e-6)
    # Direction kept: out is a positive multiple of g, cosine 1.
    a = np.concatenate([out[k].ravel() for k in KEYS])
    b = np.concatenate([g[k].ravel() for k in KEYS])
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-12)
    for k in KEYS:
        np.testing.assert_allclose(out[k], g[k] * (c / n), rtol=1e-12, err_msg=k)


def test_per_param_norm_clipping():
    c = 1.0
    g = grads_of(1.0)
    g["b_y"] = np.array([0.3, -0.4])  # norm 0.5: under the cap, must be left alone
    before = copy(g)
    out, rec = clipping.clip(g, "per_param_norm", c)
    assert_same(g, before)
    assert rec.clipped
    for k in KEYS:
        nk = float(np.linalg.norm(g[k]))
        if nk > c:
            assert np.linalg.norm(out[k]) == pytest.approx(c, rel=1e-6), k
            np.testing.assert_allclose(out[k], g[k] * (c / nk), rtol=1e-12, err_msg=k)
        else:
            np.testing.assert_array_equal(out[k], g[k], err_msg=k)
    assert rec.norm_before == pytest.approx(norm(g), rel=1e-9)
    assert rec.norm_after == pytest.approx(norm(out), rel=1e-9)


def test_value_clipping():
    c = 0.5
    g = grads_of(1.0)
    before = copy(g)
    out, rec = clipping.clip(g, "value", c)
    assert_same(g, before)
    assert rec.clipped
    for k in KEYS:
        assert np.all(np.abs(out[k]) <= c), k
        np.testing.assert_array_equal(out[k], np.clip(g[k], -c, c), err_msg=k)
    assert rec.norm_before == pytest.approx(norm(g), rel=1e-9)
    assert rec.norm_after == pytest.approx(norm(out), rel=1e-9)


@pytest.mark.parametrize("mode", ["none", "global_norm", "per_param_norm", "value"])
def test_no_clipping_below_threshold(mode):
    g = grads_of(0.01)
    before = copy(g)
    out, rec = clipping.clip(g, mode, 10.0)
    assert_same(g, before)
    assert_same(out, before)
    assert not rec.clipped
    assert rec.norm_before == pytest.approx(norm(g), rel=1e-9)
    assert rec.norm_after == pytest.approx(norm(g), rel=1e-9)


def test_none_never_clips():
    g = grads_of(100.0)
    out, rec = clipping.clip(g, "none", 1.0)
    assert_same(out, g)
    assert not rec.clipped
    assert rec.norm_after == pytest.approx(rec.norm_before, rel=1e-12)


@pytest.mark.parametrize("mode", ["global_norm", "per_param_norm", "value"])
def test_clipping_keeps_float32(mode):
    g = grads_of(5.0, dtype=np.float32)
    out, _ = clipping.clip(g, mode, 1.0)
    for k in KEYS:
        assert out[k].dtype == np.float32, (mode, k)


@pytest.mark.parametrize("mode, c", [("global", 1.0), ("clip", 1.0), ("global_norm", 0.0),
                                     ("global_norm", -1.0), ("value", 0.0), ("per_param_norm", -2.0)])
def test_clipping_bad_arguments(mode, c):
    with pytest.raises(InvalidInputError):
        clipping.clip(grads_of(1.0), mode, c)


# -- optimizers ------------------------------------------------------------------------------
# One tiny problem for every hand computation: each parameter has the same two entries, so the
# expected numbers below are written once per optimizer.
P0 = np.array([1.0, -2.0])
G1 = np.array([0.5, -1.0])
G2 = np.array([-0.25, 2.0])


def tiny(arr: np.ndarray, dtype=np.float64) -> dict:
    return {k: np.array(arr, dtype=dtype) for k in KEYS}


def run(opt, grads_seq, dtype=np.float64) -> dict:
    p = tiny(P0, dtype)
    for g in grads_seq:
        opt.step(p, tiny(g, dtype))
    return p


def assert_params(p: dict, expected, rtol=1e-12) -> None:
    for k in KEYS:
        np.testing.assert_allclose(p[k], expected, rtol=rtol, atol=0, err_msg=k)


def test_sgd_plain_hand_step():
    p = run(optim.make("sgd", lr=0.1), [G1])
    # p - lr * g = [1 - 0.05, -2 + 0.1]
    assert_params(p, [0.95, -1.9])


def test_sgd_momentum_hand_steps():
    p = run(optim.make("sgd", lr=0.1, momentum=0.9), [G1, G2])
    # step 1: v = g1 = [0.5, -1]; p = [0.95, -1.9]
    # step 2: v = 0.9*[0.5, -1] + [-0.25, 2] = [0.2, 1.1]; p = [0.95 - 0.02, -1.9 - 0.11]
    assert_params(p, [0.93, -2.01])


def test_sgd_nesterov_hand_steps():
    p = run(optim.make("sgd", lr=0.1, momentum=0.9, nesterov=True), [G1, G2])
    # step 1: v = [0.5, -1]; p -= 0.1*(g + 0.9 v) = 0.1*[0.95, -1.9] -> [0.905, -1.81]
    # step 2: v = [0.2, 1.1]; g + 0.9 v = [-0.07, 2.99] -> p = [0.905 + 0.007, -1.81 - 0.299]
    assert_params(p, [0.912, -2.109])


def test_adagrad_hand_steps():
    eps = 1e-10
    p = run(optim.make("adagrad", lr=0.1), [G1, G2])
    # step 1: G = [0.25, 1]; p -= 0.1*g/(sqrt(G)+eps) = 0.1*[0.5/0.5, -1/1]
    s1 = [1.0 - 0.1 * 0.5 / (0.5 + eps), -2.0 + 0.1 * 1.0 / (1.0 + eps)]
    # step 2: G = [0.25 + 0.0625, 1 + 4] = [0.3125, 5]
    s2 = [s1[0] + 0.1 * 0.25 / (np.sqrt(0.3125) + eps), s1[1] - 0.1 * 2.0 / (np.sqrt(5.0) + eps)]
    assert_params(p, s2)
    assert s2[0] == pytest.approx(0.9447213595, abs=1e-9)  # 0.9 + 0.025/0.5590169944


def test_rmsprop_hand_steps():
    eps = 1e-8
    p = run(optim.make("rmsprop", lr=0.01), [G1, G2])
    # step 1: s = 0.01*g^2 = [0.0025, 0.01]; sqrt = [0.05, 0.1]; p -= 0.01*[10, -10]
    s1 = [1.0 - 0.01 * 0.5 / (0.05 + eps), -2.0 + 0.01 * 1.0 / (0.1 + eps)]
    assert s1[0] == pytest.approx(0.9, abs=1e-6)
    # step 2: s = 0.99*[0.0025, 0.01] + 0.01*[0.0625, 4] = [0.003100, 0.0499]
    s2 = [s1[0] + 0.01 * 0.25 / (np.sqrt(0.0031) + eps), s1[1] - 0.01 * 2.0 / (np.sqrt(0.0499) + eps)]
    assert_params(p, s2)


def test_adam_hand_steps():
    lr, eps = 0.01, 1e-8
    p = run(optim.make("adam", lr=lr), [G1, G2])
    # step 1: m = 0.1 g, v = 0.001 g^2; mhat = g, vhat = g^2 -> p -= lr * g / (|g| + eps)
    s1 = [1.0 - lr * 0.5 / (0.5 + eps), -2.0 + lr * 1.0 / (1.0 + eps)]
    # step 2: m = 0.9*0.1*g1 + 0.1*g2 = [0.045 - 0.025, -0.09 + 0.2] = [0.02, 0.11]
    #         v = 0.999*0.001*g1^2 + 0.001*g2^2 = [0.00024975 + 0.0000625, 0.000999 + 0.004]
    m = np.array([0.02, 0.11])
    v = np.array([0.00031225, 0.004999])
    mhat = m / (1 - 0.9**2)
    vhat = v / (1 - 0.999**2)
    s2 = np.array(s1) - lr * mhat / (np.sqrt(vhat) + eps)
    assert_params(p, s2, rtol=1e-10)


def test_adam_custom_hyper_first_step():
    # With bias correction the first step is lr * g / (|g| + eps) whatever beta1, beta2.
    p = run(optim.make("adam", lr=0.5, beta1=0.5, beta2=0.75, eps=0.5), [G1])
    assert_params(p, [1.0 - 0.5 * 0.5 / (0.5 + 0.5), -2.0 + 0.5 * 1.0 / (1.0 + 0.5)])


OPTIMIZERS = [
    ("sgd", {"lr": 0.1}),
    ("sgd", {"lr": 0.1, "momentum": 0.9}),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "nesterov": True}),
    ("adagrad", {"lr": 0.1}),
    ("rmsprop", {"lr": 0.01, "alpha": 0.9}),
    ("adam", {"lr": 0.01, "beta1": 0.8}),
]


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_optimizer_keeps_dtype_and_updates_in_place(name, hyper):
    opt = optim.make(name, **hyper)
    p = tiny(P0, np.float32)
    ids = {k: id(v) for k, v in p.items()}
    opt.step(p, tiny(G1, np.float32))
    for k in KEYS:
        assert id(p[k]) == ids[k], f"{name}: {k} was replaced, not updated in place"
        assert p[k].dtype == np.float32, (name, k)
        assert not np.array_equal(p[k], P0.astype(np.float32)), (name, k)


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_state_round_trip(name, hyper):
    rng = np.random.default_rng(7)
    seq = [{k: rng.normal(size=(3, 2)) for k in KEYS} for _ in range(7)]
    p_a = {k: rng.normal(size=(3, 2)) for k in KEYS}

    a = optim.make(name, **hyper)
    for g in seq[:3]:
        a.step(p_a, g)
    state = a.state_dict()
    assert all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in state.items())
    # Through an .npz as a checkpoint would go.
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as z:
        loaded = {k: z[k] for k in z.files}

    b = optim.make(name, **hyper)
    b.load_state_dict(loaded)
    p_b = copy(p_a)
    for g in seq[3:]:
        a.step(p_a, g)
        b.step(p_b, g)
    for k in KEYS:
        np.testing.assert_array_equal(p_b[k], p_a[k], err_msg=f"{name} {k}")


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_state_dict_is_a_snapshot(name, hyper):
    """A state taken earlier must not change when the optimizer steps on."""
    opt = optim.make(name, **hyper)
    p = tiny(P0)
    opt.step(p, tiny(G1))
    state = opt.state_dict()
    frozen = {k: v.copy() for k, v in state.items()}
    opt.step(p, tiny(G2))
    for k in frozen:
        np.testing.assert_array_equal(state[k], frozen[k], err_msg=f"{name} {k}")


@pytest.mark.parametrize(
    "name, hyper",
    [
        ("sgdd", {"lr": 0.1}),
        ("Adam!", {"lr": 0.1}),
        ("sgd", {"lr": 0.1, "beta1": 0.9}),
        ("adam", {"lr": 0.1, "momentum": 0.9}),
        ("adagrad", {"lr": 0.1, "alpha": 0.9}),
        ("rmsprop", {"lr": 0.1, "nesterov": True}),
    ],
)
def test_unknown_optimizer_or_hyperparameter(name, hyper):
    with pytest.raises(InvalidInputError):
        optim.make(name, **hyper)
