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


# -- one flat buffer -------------------------------------------------------------------------
def reference_steps(name: str, hyper: dict, params: dict, grads_seq: list[dict]) -> dict:
    """The per-parameter form the flat optimizers replaced, written out: the same operations in
    the same order, so the flat buffers must reproduce it bit for bit."""
    h = {"lr": 0.01, "momentum": 0.0, "nesterov": False, "eps": 1e-10 if name == "adagrad" else 1e-8,
         "alpha": 0.99, "beta1": 0.9, "beta2": 0.999, **hyper}  # fmt: skip
    p = copy(params)
    state: dict = {}
    for t, grads in enumerate(grads_seq, start=1):
        for k, g in grads.items():
            f = p[k].dtype.type
            s = state.setdefault(k, {n: np.zeros_like(p[k]) for n in ("a", "b")})
            if name == "sgd" and h["momentum"] == 0:
                p[k] -= f(h["lr"]) * g
            elif name == "sgd":
                v = s["a"]
                v *= f(h["momentum"])
                v += g
                p[k] -= f(h["lr"]) * (g + f(h["momentum"]) * v if h["nesterov"] else v)
            elif name == "adagrad":
                s["a"] += g * g
                p[k] -= f(h["lr"]) * g / (np.sqrt(s["a"]) + f(h["eps"]))
            elif name == "rmsprop":
                s["a"] *= f(h["alpha"])
                s["a"] += f(1 - h["alpha"]) * g * g
                p[k] -= f(h["lr"]) * g / (np.sqrt(s["a"]) + f(h["eps"]))
            else:
                m, v = s["a"], s["b"]
                m *= f(h["beta1"])
                m += f(1 - h["beta1"]) * g
                v *= f(h["beta2"])
                v += f(1 - h["beta2"]) * g * g
                c1, c2 = 1 - h["beta1"] ** t, 1 - h["beta2"] ** t
                p[k] -= f(h["lr"] / c1) * m / (np.sqrt(v / f(c2)) + f(h["eps"]))
    return p


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_flat_updates_equal_the_per_parameter_form_bit_for_bit(name, hyper, dtype):
    rng = np.random.default_rng(11)
    start = grads_of(1.0, seed=3, dtype=dtype)
    seq = [grads_of(float(rng.uniform(0.1, 3)), seed=20 + i, dtype=dtype) for i in range(6)]
    want = reference_steps(name, hyper, start, seq)
    for params in (optim.flatten(start), copy(start)):  # the trainer's views, and any plain dict
        opt = optim.make(name, **hyper)
        for g in seq:
            opt.step(params, g)
        assert_same(params, want)


def test_flatten_makes_views_of_one_buffer_and_recognises_them():
    g = grads_of(1.0)
    flat = optim.flatten(g)
    assert_same(flat, g)
    bases = {id(v.base) for v in flat.values()}
    assert len(bases) == 1 and next(iter(flat.values())).base.size == sum(v.size for v in g.values())
    assert optim.Flat.of(flat) is not None
    assert optim.Flat.of(g) is None  # separate arrays
    assert optim.Flat.of(dict(reversed(list(flat.items())))) is None  # views, but not in buffer order
    mixed = optim.flatten({**g, "b_y": g["b_y"].astype(np.float32)})
    assert len({id(v.base) for v in mixed.values()}) == 2  # one buffer per dtype
    assert mixed["b_y"].dtype == np.float32 and optim.Flat.of(mixed) is not None


@pytest.mark.parametrize("name, hyper", OPTIMIZERS)
def test_a_step_on_flat_buffers_allocates_no_temporaries(name, hyper):
    """tracemalloc sees NumPy's data buffers: after the first step (state and scratch made),
    clipping and a step over flat buffers allocate less than one parameter's worth."""
    import tracemalloc

    rng = np.random.default_rng(5)
    shapes = {"W_xh": (64, 10), "W_hh": (64, 64), "b_h": (64,), "W_hy": (10, 64), "b_y": (10,)}
    params = optim.flatten({k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()})
    grads = optim.Flat(params)
    opt = optim.make(name, **hyper)
    for mode, c in (("global_norm", 1e-3), ("value", 1e-3), ("per_param_norm", 1e-3), ("none", None)):
        grads.assign({k: rng.normal(size=s) for k, s in shapes.items()})
        clipping.clip_in_place(grads, mode, c)
        opt.step(params, grads.arrays)  # warm-up: builds the slots and scratch
        tracemalloc.start()
        clipping.clip_in_place(grads, mode, c)
        opt.step(params, grads.arrays)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < params["W_hh"].nbytes, (mode, peak)


@pytest.mark.parametrize("mode", ["none", "global_norm", "per_param_norm", "value"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_in_place_gives_the_same_numbers_and_record_as_clip(mode, dtype):
    for scale in (0.01, 0.7, 20.0):
        g = grads_of(scale, seed=9, dtype=dtype)
        out, rec = clipping.clip(g, mode, 0.5)
        flat = optim.Flat(g)
        flat.assign(g)
        rec2 = clipping.clip_in_place(flat, mode, 0.5)
        assert rec2 == rec
        assert list(rec2.param_norms) == list(g)  # the logs keep the parameters' order
        assert rec.param_norms == clipping.param_norms(g)
        assert_same(flat.arrays, out)


def test_old_per_parameter_checkpoint_keys_load_and_continue():
    """A state written as separate arrays per key ("m/W_hh", ...) still loads and continues exactly."""
    start = grads_of(1.0, seed=4)
    seq = [grads_of(1.0, seed=30 + i) for i in range(5)]
    want = reference_steps("adam", {"lr": 0.01}, start, seq)
    a = optim.make("adam", lr=0.01)
    p = copy(start)
    for g in seq[:2]:
        a.step(p, g)
    old_format = {k: np.array(v) for k, v in a.state_dict().items()}
    assert set(old_format) == {"t"} | {f"{s}/{k}" for s in ("m", "v") for k in KEYS}
    b = optim.make("adam", lr=0.01)
    b.load_state_dict(old_format)
    assert_same(b.state_dict(), old_format)  # unchanged until the next step
    params = optim.flatten(p)
    for g in seq[2:]:
        b.step(params, g)
    assert_same(params, want)


@pytest.mark.parametrize(
    "state, match",
    [
        ({"t": np.array(1), "m/W_hh": np.zeros((3, 3))}, "m/W_hh has shape"),
        ({"t": np.array(1), "m/W_hh": np.zeros((4, 4), np.float32)}, "dtype float32"),
        ({"t": np.array(1), "m/nope": np.zeros(2)}, "does not belong"),
        ({"t": np.array(1.5)}, "integer"),
        ({"t": np.array([1, 2])}, "integer"),
    ],
)
def test_a_state_that_does_not_fit_the_parameters_is_refused(state, match):
    opt = optim.make("adam", lr=0.01)
    with pytest.raises(InvalidInputError, match=match):
        opt.load_state_dict(state)
        opt.step(grads_of(1.0), grads_of(1.0))


def test_gradients_with_other_keys_are_refused():
    opt = optim.make("sgd", lr=0.1)
    g = grads_of(1.0)
    with pytest.raises(InvalidInputError, match="keys"):
        opt.step(grads_of(1.0), {k: g[k] for k in KEYS[:-1]})
