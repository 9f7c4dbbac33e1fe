"""Bad inputs are refused with a message naming the argument; divergence is never silent."""

from __future__ import annotations

import re

import numpy as np
import pytest

import reference as ref
from bptt_cli.core import bptt, model
from bptt_cli.core.errors import BpttError, DivergedError, InvalidInputError

T, B, I, H, O = 4, 2, 3, 5, 3


def problem(loss_kind="cross_entropy", dtype=np.float64):
    rng = np.random.default_rng(0)
    p, x, tg, m, _ = ref.random_problem(rng, T, B, I, H, O, loss_kind, density=1.0, dtype=dtype)
    return {"params": p, "x": x, "targets": tg, "mask": m, "h0": np.zeros((B, H), dtype),
            "truncation": "k_truncated:2", "activation": "tanh", "loss": loss_kind}


def call(a: dict):
    return bptt.loss_and_gradients(a["params"], a["x"], a["targets"], a["mask"], a["truncation"],
                                   activation=a["activation"], loss=a["loss"], h0=a["h0"])


def test_valid_problem_runs():
    for lk in ref.LOSSES:
        for dtype in (np.float32, np.float64):
            L, g, h = call(problem(lk, dtype))
            assert np.isfinite(L) and h.shape == (B, H)


def _set(key, value):
    def mutate(a):
        a[key] = value(a) if callable(value) else value
    return mutate


def _param(key, value):
    def mutate(a):
        a["params"] = dict(a["params"])
        if value is None:
            del a["params"][key]
        else:
            a["params"][key] = value(a["params"][key])
    return mutate


def _poke(key, index, value):
    def mutate(a):
        arr = a[key].copy()
        arr[index] = value
        a[key] = arr
    return mutate


# (id, loss kind, mutation, word the message must contain)
BAD = [
    ("x 2-D", "cross_entropy", _set("x", lambda a: a["x"][0]), "x"),
    ("x wrong I", "cross_entropy", _set("x", lambda a: np.zeros((T, B, I + 1))), "x"),
    ("x float32 vs float64 params", "cross_entropy", _set("x", lambda a: a["x"].astype(np.float32)), "x"),
    ("x int", "cross_entropy", _set("x", lambda a: np.zeros((T, B, I), np.int64)), "x"),
    ("x NaN", "cross_entropy", _poke("x", (1, 0, 2), np.nan), "x"),
    ("x Inf", "mse", _poke("x", (0, 1, 0), np.inf), "x"),
    ("targets wrong T", "cross_entropy", _set("targets", lambda a: a["targets"][:-1]), "targets"),
    ("targets wrong B", "cross_entropy", _set("targets", lambda a: a["targets"][:, :1]), "targets"),
    ("targets too large", "cross_entropy", _poke("targets", (2, 1), O), "targets"),
    ("targets negative", "cross_entropy", _poke("targets", (0, 0), -1), "targets"),
    ("targets non-integer", "cross_entropy",
     _set("targets", lambda a: a["targets"].astype(np.float64) + 0.5), "targets"),
    ("targets 3-D for cross_entropy", "cross_entropy",
     _set("targets", lambda a: np.zeros((T, B, O))), "targets"),
    ("mse targets 2-D", "mse", _set("targets", lambda a: a["targets"][..., 0]), "targets"),
    ("mse targets wrong O", "mse", _set("targets", lambda a: np.zeros((T, B, O + 1))), "targets"),
    ("mse targets NaN", "mse", _poke("targets", (3, 1, 2), np.nan), "targets"),
    ("mask wrong shape", "cross_entropy", _set("mask", lambda a: np.ones((T, B + 1))), "mask"),
    ("mask 0.5", "cross_entropy", _poke("mask", (1, 1), 0.5), "mask"),
    ("mask 2", "mse", _poke("mask", (1, 1), 2.0), "mask"),
    ("mask negative", "mse", _poke("mask", (0, 0), -1.0), "mask"),
    ("mask all zero", "cross_entropy", _set("mask", lambda a: np.zeros((T, B))), "mask"),
    ("mask NaN", "cross_entropy", _poke("mask", (0, 1), np.nan), "mask"),
    ("h0 wrong shape", "cross_entropy", _set("h0", lambda a: np.zeros((B, H + 1))), "h0"),
    ("h0 NaN", "mse", _poke("h0", (1, 3), np.nan), "h0"),
    ("W_hh missing", "cross_entropy", _param("W_hh", None), "W_hh"),
    ("W_hh not square", "cross_entropy", _param("W_hh", lambda w: np.zeros((H, H + 1))), "W_hh"),
    ("b_h wrong length", "cross_entropy", _param("b_h", lambda b: np.zeros(H + 1)), "b_h"),
    ("W_hy wrong H", "mse", _param("W_hy", lambda w: np.zeros((O, H + 1))), "W_hy"),
    ("b_y wrong O", "mse", _param("b_y", lambda b: np.zeros(O + 2)), "b_y"),
    ("params mixed dtypes", "mse", _param("W_hy", lambda w: w.astype(np.float32)), "W_hy"),
    ("bad truncation", "cross_entropy", _set("truncation", "tbptt:5:2"), "tbptt:K1:K2"),
    ("unknown activation", "cross_entropy", _set("activation", "sigmoid"), "activation"),
    ("unknown loss", "cross_entropy", _set("loss", "hinge"), "loss"),
]


@pytest.mark.parametrize("loss_kind, mutate, word", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_is_refused_by_name(loss_kind, mutate, word):
    a = problem(loss_kind)
    mutate(a)
    with pytest.raises(InvalidInputError) as info:
        call(a)
    assert isinstance(info.value, ValueError) and isinstance(info.value, BpttError)
    msg = str(info.value)
    assert re.search(rf"(?<![A-Za-z0-9_]){re.escape(word)}(?![A-Za-z0-9_])", msg), (
        f"message does not name {word!r}: {msg}"
    )
    assert len(msg) < 1000, "messages must not dump arrays"


def test_bad_inputs_to_chunked_pass():
    a = problem()
    with pytest.raises(InvalidInputError):
        bptt.chunked_pass(a["params"], a["x"], a["targets"], np.full((T, B), 0.5), "subsequence:2",
                          lambda *_: None)
    with pytest.raises(InvalidInputError):
        bptt.chunked_pass(a["params"], a["x"][..., :1], a["targets"], a["mask"], "subsequence:2",
                          lambda *_: None)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"activation": "sigmoid"},
        {"init": "xavier"},
        {"dtype": np.int32},
        {"dtype": np.float16},
    ],
)
def test_bad_init_arguments(kwargs):
    with pytest.raises(InvalidInputError):
        model.RNN.init(3, 4, 2, **kwargs)


@pytest.mark.parametrize("sizes", [(0, 4, 2), (3, 0, 2), (3, 4, 0)])
def test_bad_init_sizes(sizes):
    with pytest.raises(InvalidInputError):
        model.RNN.init(*sizes)


# -- divergence ------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lk", ["cross_entropy", "mse"])
def test_exploding_weights_raise_diverged(dtype, lk):
    net = model.RNN.init(2, 8, 3, activation="identity", init="orthogonal", spectral_radius=1e3,
                         seed=0, dtype=dtype)
    rng = np.random.default_rng(1)
    Tl = 200
    x = rng.normal(size=(Tl, 4, 2)).astype(dtype)
    tg = rng.integers(0, 3, (Tl, 4)) if lk == "cross_entropy" else rng.normal(size=(Tl, 4, 3)).astype(dtype)
    m = np.ones((Tl, 4), dtype)
    with np.errstate(all="ignore"):
        with pytest.raises(DivergedError) as info:
            bptt.loss_and_gradients(net.params, x, tg, m, "full", activation="identity", loss=lk)
    assert isinstance(info.value, FloatingPointError) and isinstance(info.value, BpttError)
    assert isinstance(info.value.what, str) and info.value.what
    with np.errstate(all="ignore"):
        with pytest.raises(DivergedError):
            bptt.chunked_pass(net.params, x, tg, m, "subsequence:50", lambda *_: None,
                              activation="identity", loss=lk)


def test_finite_loss_but_overflowing_gradient_raises_diverged():
    """The loss can be finite while a gradient overflows; the gradients must be checked too.

    One step, one hidden unit, float32: a = 1e-10 * 1e30 = 1e20, y = (1e30, -1e30), target 1
    gives L = 2e30 (finite), but dL/dW_xh = (W_hy^T dy) x = 2e10 * 1e30 = 2e40 > float32 max.
    """
    dtype = np.float32
    p = model.RNN.init(1, 1, 2, dtype=dtype).params
    p = {k: np.zeros_like(v) for k, v in p.items()}
    p["W_xh"][:] = 1e-10
    p["W_hy"][:] = np.array([[1e10], [-1e10]], dtype)
    x = np.full((1, 1, 1), 1e30, dtype)
    tg = np.ones((1, 1), np.int64)
    m = np.ones((1, 1), dtype)
    _, y = model.forward(p, x, activation="identity")
    assert np.all(np.isfinite(y)), "setup: the forward pass must stay finite"
    with np.errstate(all="ignore"):
        with pytest.raises(DivergedError) as info:
            L, g, _ = bptt.loss_and_gradients(p, x, tg, m, "full", activation="identity")
            pytest.fail(f"no DivergedError; loss={L}, finite grads: "
                        f"{ {k: bool(np.all(np.isfinite(v))) for k, v in g.items()} }")
    assert "W_xh" in info.value.what or "grad" in info.value.what, info.value.what
