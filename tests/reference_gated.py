"""Brute-force BPTT for the gated cells (GRU, LSTM), written as plainly as possible.

The gated counterpart of ``tests/reference.py``, whose truncation formula (``start_of``),
chunk size and per-step losses it reuses. Nothing here imports ``bptt_cli``. One sample at a
time, column vectors, PyTorch's parameter layout and gate order (so the weights are those of
``torch.nn.GRU`` / ``torch.nn.LSTM``), every gate written out by name, one explicit outer
product per step and per loss. Slow on purpose; keep the shapes small.

GRU (gates r, z, n; ``weight_ih`` rows [W_ir; W_iz; W_in], ``weight_hh`` rows [W_hr; W_hz; W_hn])::

    r = sigma(W_ir x + b_ir + W_hr h + b_hr)       z = sigma(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  h' = (1 - z) * n + z * h

LSTM (gates i, f, g, o; state (h, c))::

    i = sigma(W_ii x + b_ii + W_hi h + b_hi)   f = sigma(... f ...)   o = sigma(... o ...)
    g = tanh(W_ig x + b_ig + W_hg h + b_hg)    c' = f * c + i * g     h' = o * tanh(c')

Readout y_t = W_hy h_t + b_y. The state is (h,) for the GRU and (h, c) for the LSTM; the
truncated gradient of L_t holds the WHOLE state before f(t) constant. State arrays:
``states (T+1, B, H)`` for the GRU and ``(T+1, 2, B, H)`` (h then c) for the LSTM, with
``states[t+1]`` the state after step t and ``states[0] = h0``.
"""

from __future__ import annotations

import numpy as np
from reference import chunk_size, random_inputs, rel_err, start_of, step_loss  # noqa: F401  (rel_err re-exported)

KEYS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "W_hy", "b_y")
CELLS = ("gru", "lstm")
GATES = {"gru": 3, "lstm": 4}


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


def gate_rows(params: dict, cell: str, name: str, H: int) -> tuple:
    """(W_i*, W_h*, b_i*, b_h*) of one gate, by name, from PyTorch's stacked layout."""
    order = "rzn" if cell == "gru" else "ifgo"
    k = order.index(name)
    sl = slice(k * H, (k + 1) * H)
    return params["weight_ih"][sl], params["weight_hh"][sl], params["bias_ih"][sl], params["bias_hh"][sl]


# -- one step of one sample, forward and backward -------------------------------------------
def step(params: dict, cell: str, x: np.ndarray, state: tuple) -> tuple[tuple, dict]:
    """(new state, cache) for one sample: x (I,), state (h,) or (h, c), each (H,)."""
    H = params["weight_hh"].shape[1]
    h = state[0]

    def pre(name):
        Wi, Wh, bi, bh = gate_rows(params, cell, name, H)
        return Wi @ x + bi, Wh @ h + bh

    if cell == "gru":
        xr, hr = pre("r")
        xz, hz = pre("z")
        xn, hn = pre("n")
        r = sigmoid(xr + hr)
        z = sigmoid(xz + hz)
        n = np.tanh(xn + r * hn)
        h_new = (1 - z) * n + z * h
        return (h_new,), {"x": x, "h": h, "r": r, "z": z, "n": n, "hn": hn}
    c = state[1]
    xi, hi = pre("i")
    xf, hf = pre("f")
    xg, hg = pre("g")
    xo, ho = pre("o")
    i, f, g, o = sigmoid(xi + hi), sigmoid(xf + hf), np.tanh(xg + hg), sigmoid(xo + ho)
    c_new = f * c + i * g
    h_new = o * np.tanh(c_new)
    return (h_new, c_new), {"x": x, "h": h, "c": c, "i": i, "f": f, "g": g, "o": o, "c_new": c_new}


def step_backward(params: dict, cell: str, cache: dict, d_state: tuple, grads: dict | None) -> tuple:
    """Adjoint of the state before the step from that after it; adds the step's weight gradients.

    d_state: (dh,) or (dh, dc) after the step. ``grads`` None: only the state adjoint.
    """
    H = params["weight_hh"].shape[1]
    x, h = cache["x"], cache["h"]
    dh_new = d_state[0]
    # da[name] = (adjoint of the input-side pre-activation, adjoint of the hidden-side one)
    if cell == "gru":
        r, z, n, hn = cache["r"], cache["z"], cache["n"], cache["hn"]
        dn = dh_new * (1 - z)
        dz = dh_new * (h - n)
        dh = dh_new * z
        dan = dn * (1 - n * n)  # adjoint of W_in x + b_in + r * hn
        dr = dan * hn
        dhn = dan * r
        dar = dr * r * (1 - r)
        daz = dz * z * (1 - z)
        da = {"r": (dar, dar), "z": (daz, daz), "n": (dan, dhn)}
        d_prev = [dh]
    else:
        c, i, f, g, o, c_new = (cache[k] for k in ("c", "i", "f", "g", "o", "c_new"))
        dc_new = d_state[1]
        tc = np.tanh(c_new)
        do = dh_new * tc
        dc = dc_new + dh_new * o * (1 - tc * tc)
        di, df, dg = dc * g, dc * c, dc * i
        dc_prev = dc * f
        dai, daf, dag, dao = di * i * (1 - i), df * f * (1 - f), dg * (1 - g * g), do * o * (1 - o)
        da = {"i": (dai, dai), "f": (daf, daf), "g": (dag, dag), "o": (dao, dao)}
        dh = np.zeros(H)
        d_prev = [dh, dc_prev]
    for name, (dx_side, dh_side) in da.items():
        _, Wh, _, _ = gate_rows(params, cell, name, H)
        d_prev[0] = d_prev[0] + Wh.T @ dh_side
        if grads is not None:
            order = "rzn" if cell == "gru" else "ifgo"
            k = order.index(name)
            sl = slice(k * H, (k + 1) * H)
            grads["weight_ih"][sl] += np.outer(dx_side, x)
            grads["weight_hh"][sl] += np.outer(dh_side, h)
            grads["bias_ih"][sl] += dx_side
            grads["bias_hh"][sl] += dh_side
    return tuple(d_prev)


# -- whole sequences --------------------------------------------------------------------------
def _state_of(states: np.ndarray, cell: str, t: int, b: int) -> tuple:
    """The state of sample b held in states[t], as a tuple of (H,) copies."""
    return (states[t, b].copy(),) if cell == "gru" else (states[t, 0, b].copy(), states[t, 1, b].copy())


def _set_state(states: np.ndarray, cell: str, t: int, b: int, new: tuple) -> None:
    """Store ``new`` (h,) or (h, c) of sample b into states[t]; the inverse of ``_state_of``."""
    if cell == "gru":
        states[t, b] = new[0]
    else:
        states[t, 0, b], states[t, 1, b] = new


def initial_states(h0, cell: str, B: int, H: int, dtype) -> np.ndarray:
    shape = (B, H) if cell == "gru" else (2, B, H)
    s = np.zeros(shape, dtype=dtype)
    if h0 is not None:
        s[...] = h0
    return s


def forward(params: dict, x: np.ndarray, cell: str, h0=None):
    """(states, y): states (T+1, B, H) or (T+1, 2, B, H); y (T, B, O)."""
    T, B, _ = x.shape
    H = params["weight_hh"].shape[1]
    O = params["W_hy"].shape[0]
    s0 = initial_states(h0, cell, B, H, x.dtype)
    states = np.zeros((T + 1, *s0.shape), dtype=x.dtype)
    states[0] = s0
    y = np.zeros((T, B, O), dtype=x.dtype)
    for t in range(T):
        for b in range(B):
            new, _ = step(params, cell, x[t, b], _state_of(states, cell, t, b))
            _set_state(states, cell, t + 1, b, new)
            y[t, b] = params["W_hy"] @ new[0] + params["b_y"]
    return states, y


def loss(params, x, targets, mask, cell, loss_kind, h0=None) -> float:
    """L = sum(m * L_tb) / sum(m)."""
    _, y = forward(params, x, cell, h0)
    T, B, _ = x.shape
    total = 0.0
    for t in range(T):
        for b in range(B):
            if mask[t, b]:
                total += float(mask[t, b]) * step_loss(y[t, b], targets[t, b], loss_kind)[0]
    return total / float(np.sum(mask))


def zeros_like_params(params: dict) -> dict:
    return {k: np.zeros_like(params[k]) for k in KEYS}


def _backprop_loss(params_at, cell, grads, dy, x_b, start_state, f, t, W_hy):
    """Add the gradient of one loss (dL/dy_t = dy) of one sample through steps f..t.

    Re-runs f..t from a constant copy of the state before f (``params_at[s]``: the params
    step s ran with), then walks back from t to f; the adjoint of the state before f is dropped.
    """
    caches = {}
    state = start_state
    for s in range(f, t + 1):
        state, caches[s] = step(params_at[s], cell, x_b[s], state)
    grads["W_hy"] += np.outer(dy, state[0])
    grads["b_y"] += dy
    d_state = (W_hy.T @ dy,) if cell == "gru" else (W_hy.T @ dy, np.zeros_like(state[1]))
    for s in range(t, f - 1, -1):
        d_state = step_backward(params_at[s], cell, caches[s], d_state, grads)


def gradients(params, x, targets, mask, spec, cell, loss_kind, h0=None):
    """Loss and truncated gradients of one whole-sequence pass: for every supervised (t, b),
    hold the whole state before f(t) constant, re-run f(t)..t, backpropagate L_tb alone, add."""
    T, B, _ = x.shape
    states, y = forward(params, x, cell, h0)
    grads = zeros_like_params(params)
    total = 0.0
    at = {s: params for s in range(T)}
    for t in range(T):
        f = start_of(spec, t)
        for b in range(B):
            if not mask[t, b]:
                continue
            L, dy = step_loss(y[t, b], targets[t, b], loss_kind)
            total += float(mask[t, b]) * L
            _backprop_loss(at, cell, grads, float(mask[t, b]) * dy, x[:, b], _state_of(states, cell, f, b),
                           f, t, params["W_hy"])
    n = float(np.sum(mask))
    return total / n, {k: g / n for k, g in grads.items()}


def chunked_replay(params, x, targets, mask, spec, cell, loss_kind, h0=None, lr=0.0):
    """The ``update_every: chunk`` schedule replayed by brute force (as ``reference.chunked_replay``).

    Each chunk of C steps runs forward with the weights of the moment, keeps a copy of them
    for each of its steps, then takes each of its losses back through f(t)..t with the
    stored states and the weights each step ran with, normalised by the chunk's own sum(m);
    ``lr``: p <- p - lr g after each chunk. Returns (final params, [(index, loss, grads)], last state).
    """
    params = {k: v.copy() for k, v in params.items()}
    T, B, _ = x.shape
    H = params["weight_hh"].shape[1]
    C = chunk_size(spec, T)
    s0 = initial_states(h0, cell, B, H, x.dtype)
    states = np.zeros((T + 1, *s0.shape), dtype=x.dtype)
    states[0] = s0
    ran_with: dict[int, dict] = {}
    records = []
    for index, c0 in enumerate(range(0, T, C)):
        steps = range(c0, min(c0 + C, T))
        for s in steps:
            ran_with[s] = {k: v.copy() for k, v in params.items()}
            for b in range(B):
                new, _ = step(params, cell, x[s, b], _state_of(states, cell, s, b))
                _set_state(states, cell, s + 1, b, new)
        n = float(sum(mask[s, b] for s in steps for b in range(B)))
        if n == 0:
            continue
        grads = zeros_like_params(params)
        total = 0.0
        for t in steps:
            f = start_of(spec, t)
            for b in range(B):
                if not mask[t, b]:
                    continue
                h_t = states[t + 1, b] if cell == "gru" else states[t + 1, 0, b]
                L, dy = step_loss(params["W_hy"] @ h_t + params["b_y"], targets[t, b], loss_kind)
                total += float(mask[t, b]) * L
                _backprop_loss(ran_with, cell, grads, float(mask[t, b]) * dy, x[:, b],
                               _state_of(states, cell, f, b), f, t, params["W_hy"])
        grads = {k: g / n for k, g in grads.items()}
        records.append((index, total / n, grads))
        if lr:
            for k in KEYS:
                params[k] = params[k] - lr * grads[k]
    return params, records, states[-1].copy()


def jacobian(params, x, t, j, cell, h0=None) -> np.ndarray:
    """d state_t / d state_{t-j} per sample, (B, S, S), S = H (GRU) or 2H (LSTM, h then c).

    Row k is the adjoint of the state before step t-j+1 .. t for the unit vector e_k after it,
    pushed back through ``step_backward`` one step at a time (J = dstate_t/dstate_{t-j})."""
    B = x.shape[1]
    H = params["weight_hh"].shape[1]
    S = H if cell == "gru" else 2 * H
    states, _ = forward(params, x, cell, h0)
    out = np.zeros((B, S, S), dtype=x.dtype)
    for b in range(B):
        caches = {}
        for s in range(t - j + 1, t + 1):
            _, caches[s] = step(params, cell, x[s, b], _state_of(states, cell, s, b))
        for k in range(S):
            e = np.zeros(S)
            e[k] = 1.0
            d = (e,) if cell == "gru" else (e[:H], e[H:])
            for s in range(t, t - j, -1):
                d = step_backward(params, cell, caches[s], d, None)
            out[b, k] = np.concatenate(d)
    return out


# -- random problems --------------------------------------------------------------------------
def random_params(rng: np.random.Generator, cell: str, I: int, H: int, O: int, dtype=np.float64) -> dict:
    """Dense random parameters, every bias non-zero so every term of the gradient is exercised."""
    G = GATES[cell]
    p = {
        "weight_ih": rng.normal(0, 1 / np.sqrt(I), (G * H, I)),
        "weight_hh": rng.normal(0, 1 / np.sqrt(H), (G * H, H)),
        "bias_ih": rng.normal(0, 0.3, G * H),
        "bias_hh": rng.normal(0, 0.3, G * H),
        "W_hy": rng.normal(0, 1 / np.sqrt(H), (O, H)),
        "b_y": rng.normal(0, 0.3, O),
    }
    return {k: v.astype(dtype) for k, v in p.items()}


def random_problem(rng: np.random.Generator, cell, T, B, I, H, O, loss_kind, *, density=0.6,
                   with_h0=False, dtype=np.float64):
    """``(params, x, targets, mask, h0)``; the mask has at least one 1; h0 (B, H) or (2, B, H)."""
    params = random_params(rng, cell, I, H, O, dtype)
    x, targets, mask = random_inputs(rng, T, B, I, O, loss_kind, density=density, dtype=dtype)
    h0 = None
    if with_h0:
        h0 = rng.normal(0, 0.5, (B, H) if cell == "gru" else (2, B, H)).astype(dtype)
    return params, x, targets, mask, h0
