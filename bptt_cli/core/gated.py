r"""Gated cells (GRU, LSTM): forward and exact BPTT in every truncation mode.

Notation as in ``bptt.py`` (0-indexed, rows: x_t (B, I), h_t (B, H)), with sigma the logistic
function and * elementwise. Parameters are PyTorch's, layout and gate order, so weights move
between ``torch.nn.GRU`` / ``torch.nn.LSTM`` and this module unchanged: ``weight_ih (G H, I)``,
``weight_hh (G H, H)``, ``bias_ih (G H)``, ``bias_hh (G H)``, readout ``W_hy (O, H)``, ``b_y (O)``.

    GRU (G = 3, gates r, z, n)                    LSTM (G = 4, gates i, f, g, o; state (h, c))
    r = sigma(W_ir x + b_ir + W_hr h + b_hr)       i, f, o = sigma(W_i* x + b_i* + W_h* h + b_h*)
    z = sigma(W_iz x + b_iz + W_hz h + b_hz)       g = tanh(W_ig x + b_ig + W_hg h + b_hg)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))  c' = f * c + i * g
    h' = (1 - z) * n + z * h                       h' = o * tanh(c')

and y_t = W_hy h_t + b_y, L = sum_t sum_b m_tb L_tb / sum(m), as for the Elman cell.

What is computed
----------------
The lecture's rule with the whole state s_t = h_t (GRU) or (h_t, c_t) (LSTM) in place of h_t:
the gradient of L_t runs through steps f(t) .. t and s_{f(t)-1} is a constant (``detach()``
on h AND c), while the local weight gradients of step f(t) still count. Going back one step
(dh, dc: adjoints of h_t, c_t; the a's are the gate pre-activations):

    GRU   da_n = dh (1-z)(1-n^2)          da_z = dh (h_{t-1} - n) z(1-z)
          da_r = da_n hn r(1-r)           da_hn = da_n r          (hn = W_hn h_{t-1} + b_hn)
          dh_{t-1} = [da_z, da_r, da_hn] W_h[z,r,n] + dh z
    LSTM  dc  += dh o (1 - tanh(c_t)^2)                           (dc arrives from step t+1)
          da_o = dh tanh(c_t) o(1-o)      da_i = dc g i(1-i)
          da_f = dc c_{t-1} f(1-f)        da_g = dc i (1-g^2)
          dh_{t-1} = [da_i, da_f, da_g, da_o] W_hh                dc_{t-1} = dc f

Summed over the losses whose windows cover step s, these adjoints A_s give every weight
gradient as a matmul over all steps: dweight_ih = A_ih^T x, dweight_hh = A_hh^T [h_{-1}..h_{T-2}],
dbias = sum of rows, where A_ih = [da_r, da_z, da_n] and A_hh = [da_r, da_z, da_hn] for the GRU
(the only place the two sides differ) and both are [da_i, da_f, da_g, da_o] for the LSTM.

How it is vectorised
--------------------
The loops are those of the Elman engine (see ``bptt.py``): W == C modes (full, subsequence,
tbptt:K:K) run ONE backward chain t = T-1 .. 0 cut at chunk starts (both carries, dh and dc,
zeroed there); W > C modes (k_truncated, tbptt:K1:K2 with K2 > K1) run the lag sweep: chain c
starts at its chunk's last step (c+1)C - 1, at lag j all live chains sit C steps apart, and
a strided view of the per-step arrays feeds ONE batched matmul per lag for all of them.

What differs is the gate work, elementwise and many times the Elman cell's. It runs in as few
NumPy calls per step, each over as few and as contiguous elements, as the algebra allows:

- Feature-major arrays: a step's state, gates and adjoints are (features, B) blocks (h^T),
  so a gate slice or a broadcast over gates is one contiguous run of memory; with rows
  (B, features) the same calls are strided and 2-3x slower per element at these sizes.
  Matmuls are the transposed ones (gates^T = W_hh h^T), the same FLOPs.
- Internal gate orders, permuted once per call from PyTorch's: LSTM (o, i, f, g), GRU (n, z, r)
  on the input side and (z, r, n) on the hidden side, so that the slices each call needs are
  contiguous blocks (below).
- One np.exp for all of a step's sigmoid gates, and for the LSTM's g too: the weights' rows are
  pre-scaled by -1 (sigmoid gates) or -2 (g, exact in binary floating point), then
  sigma(a) = 1 / (1 + exp(-a)) and tanh(a) = 2 sigma(2a) - 1. NumPy's float32 exp costs about
  half its tanh, and np.divide(1, .) a third of np.reciprocal (the first is vectorised).
  On small blocks (LSTM, B H <= 256, where a call's fixed cost outweighs its elements) the
  forward instead takes ONE np.tanh for all four gates, sigma(a) = tanh(a/2)/2 + 1/2 with
  the sigmoid rows pre-scaled by 1/2: 10 calls per step instead of 12.
- Everything a backward step needs that does not depend on the adjoints is computed for a
  block of steps at once: V = [Q, V_o, V_i, V_f, V_g] (LSTM) or [z, V_n, V_z, V_r, r] (GRU), see
  ``_factors``. A step's adjoint block is [five H-blocks | dy_{t-1}], laid out so that the
  gate adjoints come from two broadcast products and dL/dh_{t-1}, its direct term included,
  from ONE matmul with the stacked [weight_hh; W_hy]^T. Backward step: LSTM 5 calls
  (dh [Q, V_o]; dc += dh Q; dc [V_i, V_f, V_g]; dc f; matmul), GRU 4 (dh [z, V_n, V_z];
  da_n [V_r, r]; matmul; + dh z).
- Input projections W_ih x^T for all steps are one (batched) matmul, the biases folded in
  (b_ih + b_hh except the GRU's b_hn, which sits inside r * (.)); a forward step is a matmul
  plus 11 elementwise calls on preallocated buffers (both cells; 9 for a small LSTM block).
- Weight gradients: each (step, sample) column's right operand is a row [h_{s-1} | x_s | 1],
  so dweight_hh, dweight_ih and the bias gradient are ONE matmul per block for the LSTM
  (two for the GRU, whose ih and hh sides take different gate rows).

Memory: the forward keeps the activated gates (T, G, H, B), the states, and tanh(c_t) (LSTM)
or hn (GRU); the chain adds block-sized buffers, the lag sweep T-sized ones (factors,
adjoints), so O(T B G H) in every mode.

``chunked_pass`` runs the forward chunk by chunk with the weights of the moment, and each
chunk's windows as one backward chain over its window's steps, each step's Jacobian with the
weight_hh that step ran with (a ring of the last W // C + 2 chunks' matrices)::

    tbptt:2:5   steps     0 1|2 3|4 5|6 7     chunk 3's window: steps 3 .. 7, with the
                                  3|4 5|6 7   weight_hh of chunks 1, 2 and 3
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from bptt_cli.core.bptt import Workspace, check_inputs
from bptt_cli.core.errors import DivergedError, InvalidInputError
from bptt_cli.core.losses import LOSSES
from bptt_cli.core.truncation import Truncation, parse

CELLS = ("gru", "lstm")
GATES = {"gru": 3, "lstm": 4}
PARAM_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "W_hy", "b_y")
INITS = ("pytorch", "orthogonal")
SATURATED = (0.05, 0.95)  # a gate below / above these is saturated shut / open

# Internal gate orders as indices into PyTorch's blocks (GRU r,z,n = 0,1,2; LSTM i,f,g,o = 0,1,2,3).
_ORDER_IH = {"gru": (2, 1, 0), "lstm": (3, 0, 1, 2)}  # GRU (n, z, r); LSTM (o, i, f, g)
_ORDER_HH = {"gru": (1, 0, 2), "lstm": (3, 0, 1, 2)}  # GRU (z, r, n)
_SIGMOID = {"gru": (1, 2), "lstm": (0, 1, 2)}  # internal input-side blocks that are sigmoid gates
_STEP_CALLS = {"gru": {"forward": 12, "backward": 4}, "lstm": {"forward": 12, "backward": 5}}
_TANH_FORM = 256  # largest B H whose LSTM forward uses the tanh form (10 calls per step, not 12): 4% faster
# at B H = 100, level at 512, 2-4% slower at 1024-2048 (update time, T = 50, 1 thread)


def check_cell(cell: str) -> None:
    if cell not in CELLS:
        raise InvalidInputError(f"cell must be one of elman, {', '.join(CELLS)}, got {cell!r}")


def param_names(cell: str) -> tuple[str, ...]:
    """The parameter keys of a gated cell (PyTorch's names, plus the readout)."""
    check_cell(cell)
    return PARAM_NAMES


def step_calls(cell: str, B: int = 0, H: int = 0) -> dict:
    """NumPy calls per time step of the forward and of the backward chain (for the benchmarks),
    at batch B and hidden size H (0: the large-block count)."""
    check_cell(cell)
    calls = dict(_STEP_CALLS[cell])
    if cell == "lstm" and 0 < B * H <= _TANH_FORM:
        calls["forward"] = 10
    return calls


# -- parameters -------------------------------------------------------------------------------
def init_params(cell: str, n_in: int, n_hidden: int, n_out: int, *, init: str = "pytorch",
                forget_bias: float = 1.0, rng: np.random.Generator | int | None = None, dtype=np.float32) -> dict:
    """Fresh parameters in PyTorch's layout.

    ``pytorch``: every entry of weight_ih, weight_hh, bias_ih, bias_hh ~ U(-1/sqrt(H), 1/sqrt(H))
    (``torch.nn.GRU``/``LSTM``'s default); ``orthogonal``: the same input weights, each H x H
    gate block of weight_hh orthogonal (Haar), biases zero. Then, for the LSTM, the forget
    gate's bias_ih slice is ``forget_bias`` and its bias_hh slice 0. W_hy ~ N(0, 1/H), b_y = 0.
    ``rng``: a Generator or an integer seed (0 if None).
    """
    check_cell(cell)
    for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    if init not in INITS:
        raise InvalidInputError(f"init for a {cell} cell must be one of {', '.join(INITS)}, got {init!r}")
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)) or not math.isfinite(forget_bias):
        raise InvalidInputError(f"forget_bias must be a finite number, got {forget_bias!r}")
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InvalidInputError(f"dtype must be float32 or float64, got {dt}")
    rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(0 if rng is None else rng)
    G, H = GATES[cell], n_hidden
    k = 1 / math.sqrt(H)
    p = {
        "weight_ih": rng.uniform(-k, k, (G * H, n_in)),
        "weight_hh": rng.uniform(-k, k, (G * H, H)),
        "bias_ih": rng.uniform(-k, k, G * H),
        "bias_hh": rng.uniform(-k, k, G * H),
    }
    if init == "orthogonal":
        for g in range(G):
            q, r = np.linalg.qr(rng.standard_normal((H, H)))
            p["weight_hh"][g * H : (g + 1) * H] = q * np.sign(np.diag(r))  # Haar-distributed
        p["bias_ih"][:] = 0
        p["bias_hh"][:] = 0
    if cell == "lstm":
        p["bias_ih"][H : 2 * H] = forget_bias
        p["bias_hh"][H : 2 * H] = 0
    p["W_hy"] = rng.standard_normal((n_out, H)) / math.sqrt(H)
    p["b_y"] = np.zeros(n_out)
    return {name: p[name].astype(dt) for name in PARAM_NAMES}


def _fmt(shape) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


def check_params(params, cell: str) -> tuple[int, int, int]:
    """(I, H, O) of a valid gated parameter dict; InvalidInputError naming what is wrong."""
    check_cell(cell)
    if not isinstance(params, dict) or set(params) != set(PARAM_NAMES):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise InvalidInputError(f"params of a {cell} cell must be a dict with keys {', '.join(PARAM_NAMES)}, got {got}")
    for k in PARAM_NAMES:
        if not isinstance(params[k], np.ndarray):
            raise InvalidInputError(f"params[{k!r}] must be a NumPy array, got {type(params[k]).__name__}")
    G = GATES[cell]
    wih, why = params["weight_ih"], params["W_hy"]
    if wih.ndim != 2 or wih.shape[0] % G or wih.shape[0] == 0 or why.ndim != 2:
        raise InvalidInputError(
            f"params['weight_ih'] of a {cell} cell must have shape ({G}*H, I) and W_hy (O, H), "
            f"got {_fmt(wih.shape)} and {_fmt(why.shape)}")
    H, I, O = wih.shape[0] // G, wih.shape[1], why.shape[0]
    dt = wih.dtype
    if dt not in (np.float32, np.float64):
        raise InvalidInputError(f"params must be float32 or float64, got weight_ih of dtype {dt}")
    expected = {"weight_ih": (G * H, I), "weight_hh": (G * H, H), "bias_ih": (G * H,), "bias_hh": (G * H,),
                "W_hy": (O, H), "b_y": (O,)}
    for k in PARAM_NAMES:
        p = params[k]
        if p.shape != expected[k]:
            raise InvalidInputError(f"params[{k!r}] of a {cell} cell must have shape {_fmt(expected[k])} "
                                    f"for G={G}, H={H}, I={I}, O={O}, got {_fmt(p.shape)}")
        if p.dtype != dt:
            raise InvalidInputError(f"params[{k!r}] has dtype {p.dtype} but weight_ih has {dt}; use one dtype")
    return I, H, O


def _check_all(params, x, targets, mask, h0, cell: str, loss: str):
    """Validated (targets, mask, h0 as the state array or None), with bptt.check_inputs' messages."""
    I, H, _ = check_params(params, cell)
    dt = params["weight_ih"].dtype
    # check_inputs checks x, targets and mask against an Elman-shaped stand-in (no memory).
    z = np.zeros((), dt)
    shim = {"W_xh": np.broadcast_to(z, (H, I)), "W_hh": np.broadcast_to(z, (H, H)), "b_h": np.broadcast_to(z, (H,)),
            "W_hy": params["W_hy"], "b_y": params["b_y"]}
    targets, mask, _ = check_inputs(shim, x, targets, mask, None, loss)
    return targets, mask, _check_h0(h0, cell, x.shape[1], H, dt)


def _check_h0(h0, cell: str, B: int, H: int, dt):
    if h0 is None:
        return None
    want = (B, H) if cell == "gru" else (2, B, H)
    if cell == "lstm" and isinstance(h0, (tuple, list)):
        if len(h0) != 2:
            raise InvalidInputError(f"an lstm h0 given as a tuple must be (h, c), got {len(h0)} arrays")
        h0 = np.stack([np.asarray(h0[0]), np.asarray(h0[1])])
    h0 = np.asarray(h0)
    if h0.shape != want:
        how = "(B, H)" if cell == "gru" else "(2, B, H) = stacked (h, c), or a (h, c) tuple of (B, H)"
        raise InvalidInputError(f"h0 of a {cell} cell must have shape {how} = {_fmt(want)}, got {_fmt(h0.shape)}")
    if not np.issubdtype(h0.dtype, np.number) or not np.isfinite(h0).all():
        raise InvalidInputError("h0 must be numeric and contain no NaN or Inf")
    return h0.astype(dt, copy=False)


def _check_truncation(tr: Truncation) -> None:
    if getattr(tr, "random", False):
        raise InvalidInputError(f"{tr.mode} is implemented for the elman cell only; gated cells (gru, lstm) take "
                                "full, k_truncated:K, subsequence:K or tbptt:K1:K2")


# -- internal weights ---------------------------------------------------------------------------
class _Weights:
    """The parameters in the internal gate orders, made once per call (or per chunk).

    f_ih (G H, I) and f_hh (G H, H): sigmoid rows scaled by -1 (the LSTM's g rows by -2), for
    the feature-major forward; f_b (G H, 1) the folded biases; b_hn (H, 1) the GRU's hidden-side
    n bias; bT (H, G H): weight_hh^T unscaled, internal order, for dh_{t-1} = bT A_hh in the
    backward.
    """

    def __init__(self, params: dict, cell: str, B: int = 0) -> None:
        G = GATES[cell]
        H = params["weight_hh"].shape[1]
        # Small blocks (the LSTM at B H <= _TANH_FORM): one np.tanh for every gate, the sigmoid
        # rows scaled by 1/2 (sigma(a) = tanh(a/2)/2 + 1/2), two calls fewer per step than the
        # exp form, whose lower cost per element only pays on larger blocks.
        self.tanh_form = cell == "lstm" and 0 < B * H <= _TANH_FORM
        dt = params["weight_hh"].dtype
        oi, oh = _ORDER_IH[cell], _ORDER_HH[cell]
        Wih = params["weight_ih"].reshape(G, H, -1)
        Whh = params["weight_hh"].reshape(G, H, H)
        bih, bhh = params["bias_ih"].reshape(G, H), params["bias_hh"].reshape(G, H)
        # Pre-activations come out as -a (sigmoid gates) or -2a (the LSTM's g), so that one
        # np.exp covers every gate: sigma(a) = 1 / (1 + exp(-a)), tanh(a) = 2 sigma(2a) - 1.
        scale = np.full((G, 1), -1.0 if cell == "gru" else -2.0, dt)
        scale[list(_SIGMOID[cell])] = -1.0
        if self.tanh_form:
            scale[:] = 0.5
            scale[3] = 1.0  # g: its tanh as it is
        if cell == "gru":
            scale[0] = 1.0  # n: a plain tanh after r is known
        self.f_ih = (Wih[list(oi)] * scale[:, :, None]).reshape(G * H, -1)
        perm = Whh[list(oh)]  # (G, H, H), internal order, a copy
        # stacked = [weight_hh blocks; W_hy]^T (H, G H + O), the backward chain's matrix; bT its first G H columns
        self.stacked = np.empty((H, G * H + params["W_hy"].shape[0]), dt)
        self.stacked[:, : G * H] = perm.reshape(G * H, H).T
        self.stacked[:, G * H :] = params["W_hy"].T
        self.bT = self.stacked[:, : G * H]
        if cell == "lstm":
            self.f_b = ((bih + bhh)[list(oi)] * scale).reshape(-1, 1)
            self.f_hh = (perm * scale[:, :, None]).reshape(G * H, H)
            self.b_hn = None
        else:
            b = bih.copy()
            b[:2] += bhh[:2]  # r and z take both biases; n's hidden bias stays inside r * (.)
            self.f_b = (b[list(oi)] * scale).reshape(-1, 1)
            hs = np.array([-1.0, -1.0, 1.0], dt)[:, None, None]  # hidden side (z, r, n): z, r scaled
            self.f_hh = (perm * hs).reshape(3 * H, H)
            self.b_hn = bhh[2].reshape(H, 1).copy()


def _to_public(cell: str, H: int, d_ih, d_hh, db_ih, db_hh) -> tuple:
    """Internal-order gradients (G H, .) back to PyTorch's gate order."""
    G = GATES[cell]
    out = []
    for d, order in ((d_ih, _ORDER_IH[cell]), (d_hh, _ORDER_HH[cell]), (db_ih, _ORDER_IH[cell]),
                     (db_hh, _ORDER_HH[cell])):
        blocks = d.reshape(G, H, *d.shape[1:])
        pub = np.empty_like(blocks)
        pub[list(order)] = blocks
        out.append(pub.reshape(d.shape))
    return tuple(out)


# -- forward ----------------------------------------------------------------------------------
# Layout: feature-major per step, (features, B), so every per-step elementwise call runs over
# one contiguous block (a (B, features) row layout makes gate slices and broadcasts strided,
# 2-3x slower per element at these sizes).
class _Record:
    """What the forward pass keeps, feature-major: hs (T+1, H, B), hs[t+1] = h_t^T; gates
    (T, G, H, B) activated, internal order; LSTM: cs (T+1, H, B), tc (T, H, B) = tanh(c_t);
    GRU: hn (T, H, B) = W_hn h_{t-1} + b_hn."""

    def __init__(self, cell: str, T: int, B: int, H: int, dt, ws: Workspace) -> None:
        G = GATES[cell]
        self.cell = cell
        self.hs = ws.get("g_hs", (T + 1, H, B), dt)
        self.gates = ws.get("g_gates", (T, G, H, B), dt)
        self.cs = ws.get("g_cs", (T + 1, H, B), dt) if cell == "lstm" else None
        self.tc = ws.get("g_tc", (T, H, B), dt) if cell == "lstm" else None
        self.hn = ws.get("g_hn", (T, H, B), dt) if cell == "gru" else None
        self.tmp = ws.get("g_ftmp", (G * H, B), dt)

    def set_h0(self, h0) -> None:
        if self.cell == "gru":
            self.hs[0] = 0 if h0 is None else h0.T
        else:
            self.hs[0] = 0 if h0 is None else h0[0].T
            self.cs[0] = 0 if h0 is None else h0[1].T

    def state(self, t: int) -> np.ndarray:
        """The state after step t-1 (t = 0: h0), a fresh array: (B, H) or (2, B, H)."""
        return self.hs[t].T.copy() if self.cell == "gru" else np.stack([self.hs[t].T, self.cs[t].T])


def _forward_steps(rec: _Record, w: _Weights, x: np.ndarray, t0: int, t1: int) -> None:
    """Steps t0 .. t1-1 into the record; rec.hs[t0] (and cs[t0]) must hold the state before t0."""
    n = t1 - t0
    if n <= 0:
        return
    H, B = rec.hs.shape[1:]
    G = GATES[rec.cell]
    gates = rec.gates[t0:t1].reshape(n, G * H, B)
    np.matmul(w.f_ih, x[t0:t1].transpose(0, 2, 1), out=gates)  # input projections, one call for all steps
    # Biases as full (features, B) blocks: a (features, 1) broadcast runs B-long inner loops, 4x slower.
    gates += np.broadcast_to(w.f_b, (G * H, B)).copy()
    b_hn = None if w.b_hn is None else np.broadcast_to(w.b_hn, (H, B)).copy()
    with np.errstate(over="ignore"):  # exp(-a) = inf for a << 0 gives sigma = 1 / inf = 0, exactly
        _steps(rec, w.f_hh, b_hn, gates, t0, t1, H, w.tanh_form)


def _steps(rec: _Record, f_hh, b_hn, gates, t0: int, t1: int, H: int, tanh_form: bool = False) -> None:
    """The recurrence of ``_forward_steps``: gates (n, G H, B) hold the input projections."""
    hw = rec.tmp
    if rec.cell == "lstm":
        # Every per-step operand a prebuilt view that zip hands out (no slicing inside the loop).
        g4 = rec.gates[t0:t1]  # (n, 4, H, B): o, i, f, g
        sg3 = gates[:, : 3 * H]  # the sigmoid gates as one block per step
        ig = hw[:H]
        views = zip(rec.hs[t0:t1], rec.hs[t0 + 1 : t1 + 1], rec.cs[t0:t1], rec.cs[t0 + 1 : t1 + 1], rec.tc[t0:t1],
                    gates, sg3, g4[:, 0], g4[:, 1], g4[:, 2], g4[:, 3])
    if tanh_form:  # LSTM, small blocks: 10 calls
        for h_prev, h, c_prev, c, tc, gt, sg, o, i, f, gg in views:
            np.matmul(f_hh, h_prev, out=hw)
            gt += hw  # a/2 (o, i, f), a (g)
            np.tanh(gt, out=gt)
            sg *= 0.5
            sg += 0.5  # sigma(a) = tanh(a/2)/2 + 1/2
            np.multiply(f, c_prev, out=c)  # f c
            np.multiply(i, gg, out=ig)  # i g
            c += ig
            np.tanh(c, out=tc)
            np.multiply(o, tc, out=h)  # o tanh(c)
    elif rec.cell == "lstm":
        for h_prev, h, c_prev, c, tc, gt, _, o, i, f, gg in views:
            np.matmul(f_hh, h_prev, out=hw)
            gt += hw  # -a (o, i, f), -2a (g)
            np.exp(gt, out=gt)
            gt += 1
            np.divide(1, gt, out=gt)  # sigma(a); sigma(2a) for g (divide: SIMD, reciprocal is not)
            gg *= 2
            gg -= 1  # tanh(a) = 2 sigma(2a) - 1
            np.multiply(f, c_prev, out=c)  # f c
            np.multiply(i, gg, out=ig)  # i g
            c += ig
            np.tanh(c, out=tc)
            np.multiply(o, tc, out=h)  # o tanh(c)
    else:
        H2 = 2 * H
        for h_prev, h, hn, gt in zip(rec.hs[t0:t1], rec.hs[t0 + 1 : t1 + 1], rec.hn[t0:t1], gates):
            np.matmul(f_hh, h_prev, out=hw)  # (z, r, n) hidden side
            zr = gt[H:]
            zr += hw[:H2]  # -a of z and r
            np.exp(zr, out=zr)
            zr += 1
            np.divide(1, zr, out=zr)
            np.add(hw[H2:], b_hn, out=hn)
            nn = gt[:H]
            np.multiply(gt[H2:], hn, out=hw[:H])  # r hn
            nn += hw[:H]
            np.tanh(nn, out=nn)
            np.subtract(h_prev, nn, out=h)
            h *= gt[H:H2]  # z (h - n)
            h += nn


def _run_forward(params, x, cell: str, h0, ws: Workspace) -> _Record:
    T, B, _ = x.shape
    H = params["weight_hh"].shape[1]
    rec = _Record(cell, T, B, H, x.dtype, ws)
    rec.set_h0(h0)
    _forward_steps(rec, _Weights(params, cell, B), x, 0, T)
    ws._states = rec.hs.transpose(0, 2, 1)
    return rec


def forward(params: dict, x: np.ndarray, cell: str, h0=None) -> tuple[np.ndarray, np.ndarray]:
    """(states, y): states (T+1, B, H) for the GRU or (T+1, 2, B, H) (h, c) for the LSTM, with
    states[0] = h0; y (T, B, O). Fresh arrays."""
    I, H, _ = check_params(params, cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != I or x.shape[0] < 1 or x.shape[1] < 1:
        raise InvalidInputError(f"x must have shape (T, B, I={I}) with T, B >= 1, got {_fmt(getattr(x, 'shape', ()))}")
    x = x.astype(params["weight_ih"].dtype, copy=False)
    B = x.shape[1]
    h0 = _check_h0(h0, cell, B, H, x.dtype)
    rec = _run_forward(params, x, cell, h0, Workspace())
    y = np.matmul(params["W_hy"], rec.hs[1:])  # (T, O, B)
    y += params["b_y"][:, None]
    hs = rec.hs.transpose(0, 2, 1)
    states = hs.copy() if cell == "gru" else np.stack([hs, rec.cs.transpose(0, 2, 1)], axis=1)
    return states, np.ascontiguousarray(y.transpose(0, 2, 1))


def _loss(params, rec: _Record, targets, mask, loss: str, t0: int, t1: int, y: np.ndarray):
    """(value, dy (n, O, B)) of steps t0 .. t1-1; y an (n, O, B) buffer for the outputs."""
    np.matmul(params["W_hy"], rec.hs[t0 + 1 : t1 + 1], out=y)
    y += params["b_y"][:, None]
    tg = targets[t0:t1] if loss == "cross_entropy" else np.moveaxis(targets[t0:t1], -1, 1)
    value, dy = LOSSES[loss](y, tg, mask[t0:t1], axis=1)
    if not math.isfinite(value):
        raise DivergedError("loss")
    return value, dy


def _output_grads(dy: np.ndarray, hs_after: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(dW_hy (O, H), db_y (O,)) from dy (n, O, B) and h_t^T (n, H, B) of the same steps."""
    n, O, B = dy.shape
    dyc = dy.transpose(1, 0, 2).reshape(O, n * B)  # a view when dy is the loss's class-major buffer
    h_rows = hs_after.transpose(0, 2, 1).reshape(n * B, -1)
    return dyc @ h_rows, dyc.sum(axis=1)


# -- backward pieces ----------------------------------------------------------------------------
# A backward step's block (5 H + O, B) per step: five H-blocks and dL/dy of the step before.
#   LSTM  [dh Q, da_o, da_i, da_f, da_g | dy_{t-1}]   the matmul input: blocks 1..4 and dy
#   GRU   [dh z, da_n, da_z, da_r, da_hn | dy_{t-1}]  the matmul input: blocks 2..4 and dy
# so dL/dh_{t-1} = [weight_hh blocks; W_hy]^T @ [gate adjoints; dy_{t-1}] is ONE matmul that
# also adds the direct term of step t-1. The factors V (5, H, B) line up with the first blocks:
#   LSTM  [Q, V_o, V_i, V_f, V_g] = [o(1-tanh(c)^2), tanh(c) o(1-o), g i(1-i), c_prev f(1-f), i(1-g^2)]
#   GRU   [z, V_n, V_z, V_r, r]   = [z, (1-z)(1-n^2), (h_prev-n) z(1-z), hn r(1-r), r]
_MATMUL_FROM = {"lstm": 1, "gru": 2}  # first block of the backward matmul's input


def _factors(rec: _Record, s0: int, s1: int, V: np.ndarray, tmp: np.ndarray) -> None:
    """The adjoint-free parts of the backward step for steps s0 .. s1-1, into V[:s1-s0] (n, 5, H, B).

    Computed for a block of steps at once (a few calls over the block), so the step itself only
    multiplies adjoints by them. tmp: (n, 3, H, B) scratch. V may be a strided view.
    """
    n = s1 - s0
    if n <= 0:
        return
    g = rec.gates[s0:s1]
    t = tmp[:n]
    V = V[:n]
    if rec.cell == "lstm":
        sig = g[:, 0:3]
        np.multiply(sig, sig, out=t)
        np.subtract(sig, t, out=t)  # sigma (1 - sigma) of o, i, f
        tc = rec.tc[s0:s1]
        np.multiply(tc, t[:, 0], out=V[:, 1])
        np.multiply(g[:, 3], t[:, 1], out=V[:, 2])
        np.multiply(rec.cs[s0:s1], t[:, 2], out=V[:, 3])
        gg = t[:, 0]
        np.multiply(g[:, 3], g[:, 3], out=gg)
        np.subtract(1, gg, out=gg)
        np.multiply(g[:, 1], gg, out=V[:, 4])
        np.multiply(tc, tc, out=gg)
        np.subtract(1, gg, out=gg)
        np.multiply(g[:, 0], gg, out=V[:, 0])
    else:
        nn, z, r = g[:, 0], g[:, 1], g[:, 2]
        a, b = t[:, 0], t[:, 1]
        V[:, 0] = z
        np.multiply(nn, nn, out=a)
        np.subtract(1, a, out=a)  # 1 - n^2
        np.subtract(1, z, out=b)
        np.multiply(a, b, out=V[:, 1])
        np.multiply(z, b, out=b)  # z (1 - z)
        np.subtract(rec.hs[s0:s1], nn, out=a)
        np.multiply(a, b, out=V[:, 2])
        np.multiply(r, r, out=a)
        np.subtract(r, a, out=a)  # r (1 - r)
        np.multiply(rec.hn[s0:s1], a, out=V[:, 3])
        V[:, 4] = r


def _view(a: np.ndarray, shape: tuple) -> np.ndarray:
    """a.reshape(shape), refusing a copy: the caller writes through the result."""
    v = a.reshape(shape)
    if not np.shares_memory(v, a):
        raise AssertionError("internal error: a work buffer's reshape is not a view")
    return v


def _stacked_T(bT: np.ndarray, W_hy: np.ndarray) -> np.ndarray:
    """[backward weight_hh blocks; W_hy]^T (H, G H + O): one matmul for the gates' and the output's share."""
    return np.concatenate([bT, W_hy.T], axis=1)


def _chain(cell: str, V, F, A, gh, gc, Ws: list, W_hyT, cuts: list) -> None:
    """One backward chain over the n steps of V, F, A, last first.

    A (n, 5 H + O, B): the tail of step i must hold dL/dy of the step before (zero if none);
    the blocks receive the step's adjoints. gh (H, B) must hold dL/dh at the last step (direct
    term included), gc (H, B) dL/dc there from later steps; both are left as the carries out
    of the first step (gh with the direct term of the step before it). F: the LSTM's forget
    gates (n, H, B). Ws[i]: the stacked [weight_hh blocks; W_hy]^T the backward matmul of step
    i uses; cuts[i]: the state before step i is a constant. W_hyT: W_hy^T (H, O).
    """
    n = A.shape[0]
    H, B = gh.shape
    A5 = _view(A[:, : 5 * H], (n, 5, H, B))
    k = _MATMUL_FROM[cell] * H
    tail = A[:, 5 * H :]
    if cell == "lstm":  # every per-step operand a prebuilt view that zip hands out
        V, A5 = V[n - 1 :: -1], A5[::-1]
        for v01, v234, a01, a0, a234, am, f, W, cut, dy in zip(V[:, 0:2], V[:, 2:5], A5[:, 0:2], A5[:, 0],
                                                               A5[:, 2:5], A[::-1, k:], F[::-1], Ws[::-1],
                                                               cuts[::-1], tail[::-1]):
            np.multiply(gh, v01, out=a01)  # dh Q, da_o
            gc += a0  # dL/dc_t: from step t+1 and through h_t
            np.multiply(gc, v234, out=a234)  # da_i, da_f, da_g
            if cut:
                gc.fill(0)
                np.matmul(W_hyT, dy, out=gh)  # only the direct term of the step before
            else:
                gc *= f
                np.matmul(W, am, out=gh)
    else:
        for v, a5, a, W, cut, dy in zip(V[n - 1 :: -1], A5[::-1], A[::-1], Ws[::-1], cuts[::-1], tail[::-1]):
            np.multiply(gh, v[0:3], out=a5[0:3])  # dh z, da_n, da_z
            np.multiply(a5[1], v[3:5], out=a5[3:5])  # da_r, da_hn
            if cut:
                np.matmul(W_hyT, dy, out=gh)
            else:
                np.matmul(W, a[k:], out=gh)
                gh += a5[0]


class _Grads:
    """Weight-gradient accumulators in internal order; matmuls over many steps at once.

    Each (step, sample) column's right operand is a row of Z = [h_{s-1} | x_s | 1] (``_z_rows``),
    so the LSTM's three parameter gradients (dweight_hh, dweight_ih, dbias) are ONE matmul
    A4 @ Z, and the GRU's two (A4 @ [x | 1] for dweight_ih and both biases, A4[H:] @ h for
    dweight_hh), instead of three matmuls and a row sum.
    """

    def __init__(self, cell: str, I: int, H: int, dt) -> None:
        self.cell, self.H, self.I = cell, H, I
        self.z = np.zeros((4 * H, H + I + 1), dt)  # [dweight_hh | dweight_ih | dbias], internal order
        self.hh = None if cell == "lstm" else np.zeros((3 * H, H), dt)

    def add(self, A4: np.ndarray, Z: np.ndarray) -> None:
        """A4 (4 H, N): the gate adjoints of N (step, sample) columns, [da_o, da_i, da_f, da_g]
        or [da_n, da_z, da_r, da_hn]; Z (N, H + I + 1): the rows [h_{s-1} | x_s | 1] of the same columns."""
        H = self.H
        if self.cell == "lstm":
            self.z += A4 @ Z
        else:
            self.z[:, H:] += A4 @ Z[:, H:]
            self.hh += A4[H:] @ Z[:, :H]

    def result(self, params: dict, d_why, d_by) -> dict:
        H, I = self.H, self.I
        if self.cell == "lstm":  # one permutation of z, one finiteness check (per key only on failure)
            pub = np.empty_like(self.z)
            pub.reshape(4, H, -1)[list(_ORDER_IH["lstm"])] = self.z.reshape(4, H, -1)
            b = pub[:, H + I]
            grads = {"weight_ih": np.ascontiguousarray(pub[:, H : H + I]), "weight_hh": np.ascontiguousarray(pub[:, :H]),
                     "bias_ih": b.copy(), "bias_hh": b.copy(), "W_hy": d_why, "b_y": d_by}
            if np.isfinite(pub).all() and np.isfinite(d_why).all() and np.isfinite(d_by).all():
                return grads
        else:
            grads = self._gru_result(d_why, d_by)
        for k, g in grads.items():
            if not np.isfinite(g).all():
                raise DivergedError(f"gradient {k}")
        return grads

    def _gru_result(self, d_why, d_by) -> dict:
        H, I = self.H, self.I
        b = self.z[:, H + I]
        ih, hh, b_ih, b_hh = self.z[: 3 * H, H : H + I], self.hh, b[: 3 * H], b[H:]
        gih, ghh, gbi, gbh = _to_public(self.cell, H, ih, hh, b_ih, b_hh)
        return {"weight_ih": gih, "weight_hh": ghh, "bias_ih": gbi, "bias_hh": gbh, "W_hy": d_why, "b_y": d_by}


def _z_rows(rec: _Record, x: np.ndarray, t0: int, t1: int, ws: Workspace) -> np.ndarray:
    """Z = [h_{s-1} | x_s | 1] ((t1-t0) B, H + I + 1) for steps t0 .. t1-1, one row per (step, sample)."""
    n = t1 - t0
    H, B = rec.hs.shape[1:]
    I = x.shape[2]
    Z = ws.get("g_Z", (n * B, H + I + 1), x.dtype)
    Z3 = _view(Z, (n, B, H + I + 1))
    Z3[:, :, :H] = rec.hs[t0:t1].transpose(0, 2, 1)
    Z3[:, :, H : H + I] = x[t0:t1]
    Z[:, H + I] = 1
    return Z


def _gate_columns(A: np.ndarray, H: int) -> np.ndarray:
    """The gate adjoints (blocks 1..4) of steps' blocks A (n, 5 H + O, B) as (4 H, n B), a copy."""
    n, _, B = A.shape
    return A[:, H : 5 * H].transpose(1, 0, 2).reshape(4 * H, n * B)


_BLOCK_BYTES = 1 << 20  # per-block factor buffer of the chain: a block's steps stay in L2 (best of 2^18..2^22 on A and C with the one-matmul gradients)


def _block_steps(T: int, B: int, H: int, dt) -> int:
    return min(T, max(1, _BLOCK_BYTES // (B * 5 * H * np.dtype(dt).itemsize)))


def _chain_gradients(params, x, rec: _Record, w: _Weights, dy, C: int, ws: Workspace) -> _Grads:
    """W == C: one chain t = T-1 .. 0 cut at every chunk start, in blocks of steps, last first.

    dy (T, O, B). Per block: dy of the steps before into the blocks' tails (one copy), the
    factors (a few calls over the block), the steps, then the block's share of every weight
    gradient (one matmul each) while its steps are in cache.
    """
    T, B, I = x.shape
    H = rec.hs.shape[1]
    O = dy.shape[1]
    dt = rec.hs.dtype
    Tb = _block_steps(T, B, H, dt)
    V = ws.get("g_V", (Tb, 5, H, B), dt)
    tmp = ws.get("g_btmp", (Tb, 3, H, B), dt)
    A = ws.get("g_A", (Tb, 5 * H + O, B), dt)
    W_hyT = np.ascontiguousarray(params["W_hy"].T)
    gh = ws.get("g_gh", (H, B), dt)
    gc = ws.get("g_gc", (H, B), dt, zero=True)
    np.matmul(W_hyT, dy[T - 1], out=gh)  # dL/dh_{T-1}: its direct term alone
    acc = _Grads(rec.cell, I, H, dt)
    Ws = [w.stacked] * Tb
    F = rec.gates[:, 2] if rec.cell == "lstm" else None
    Z = _z_rows(rec, x, 0, T, ws)
    for t0 in range((T - 1) // Tb * Tb, -1, -Tb):
        t1 = min(t0 + Tb, T)
        n = t1 - t0
        lo = max(t0, 1)
        A[lo - t0 : n, 5 * H :] = dy[lo - 1 : t1 - 1]  # step t's tail: dy_{t-1}
        if t0 == 0:
            A[0, 5 * H :] = 0
        _factors(rec, t0, t1, V, tmp)
        cuts = [t % C == 0 for t in range(t0, t1)]
        _chain(rec.cell, V[:n], F[t0:t1] if F is not None else None, A[:n], gh, gc, Ws[:n], W_hyT, cuts)
        acc.add(_gate_columns(A[:n], H), Z[t0 * B : t1 * B])
    return acc


def _lag_gradients(params, x, rec: _Record, w: _Weights, dy, C: int, W: int, ws: Workspace) -> _Grads:
    """W > C: every chunk's chain, all chains per lag (see the module docstring and bptt.py).

    The time axis is padded to nC C steps with zero losses and zero factors (a padded step
    passes nothing back). Chain c sits at step (c+1)C - 1 - j at lag j; the live chains
    c >= j // C are C steps apart, so strided views of the per-step arrays serve them all and
    ONE matmul per lag advances every chain. The arrays are laid out (features, time, B) here
    (the factors written through a transposed view), so that the chains' columns of a lag are
    one (features, chains B) operand; A (4, H, Tp, B) sums each step's gate adjoints.
    """
    T, B, I = x.shape
    H = rec.hs.shape[1]
    O = dy.shape[1]
    dt = rec.hs.dtype
    lstm = rec.cell == "lstm"
    nC = -(-T // C)
    Tp = nC * C
    V = ws.get("g_lagV", (5, H, Tp, B), dt)
    Dh = ws.get("g_lagDh", (H, Tp, B), dt)
    A = ws.get("g_lagA", (4, H, Tp, B), dt)
    Fp = ws.get("g_lagF", (H, Tp, B), dt) if lstm else None  # forget gates, zero past T
    if lstm:
        Fp[:, :T] = rec.gates[:, 2].transpose(1, 0, 2)
        Fp[:, T:] = 0
    dyc = np.ascontiguousarray(dy.transpose(1, 0, 2)).reshape(O, T * B)
    np.matmul(params["W_hy"].T, dyc, out=_view(Dh[:, :T], (H, T * B)))  # direct terms
    _factors(rec, 0, T, V.transpose(2, 0, 1, 3), ws.get("g_lagtmp", (T, 3, H, B), dt))
    Dh[:, T:] = 0
    V[:, :, T:] = 0
    A.fill(0)
    Gh = ws.get("g_lagGh", (H, nC, B), dt)
    Gc = ws.get("g_lagGc", (H, nC, B), dt, zero=True)
    Ach = ws.get("g_lagAch", (5, H, nC, B), dt)
    WbT = w.bT
    k0 = _MATMUL_FROM[rec.cell]
    Gh[...] = Dh[:, C - 1 :: C]  # lag 0: each chain at its chunk's last step
    for j in range(W):
        lo = j // C
        if lo >= nC:
            break
        p0 = (lo + 1) * C - 1 - j
        at = slice(p0, p0 + (nC - lo) * C, C)  # the steps the live chains sit at
        g, ach, v = Gh[:, lo:], Ach[:, :, lo:], V[:, :, at]
        if lstm:
            np.multiply(g, v[0:2], out=ach[0:2])  # dh Q, da_o
            gc = Gc[:, lo:]
            gc += ach[0]
            np.multiply(gc, v[2:5], out=ach[2:5])
        else:
            np.multiply(g, v[0:3], out=ach[0:3])  # dh z, da_n, da_z
            np.multiply(ach[1], v[3:5], out=ach[3:5])  # da_r, da_hn
        A[:, :, at] += ach[1:5]
        lo2 = (j + 1) // C
        if j + 1 == W or lo2 >= nC:
            break
        k = lo2 - lo  # chains that reached step 0 drop out
        n2 = nC - lo2
        if lstm:
            Gc[:, lo2:] *= Fp[:, p0 + k * C : p0 + (nC - lo) * C : C]
        np.matmul(WbT, Ach[k0:5, :, lo2:].reshape((5 - k0) * H, n2 * B), out=_view(Gh[:, lo2:], (H, n2 * B)))
        if not lstm:
            Gh[:, lo2:] += Ach[0, :, lo2:]
        if j + 1 < C:  # still inside the chunk: the losses of the step before
            Gh[:, lo2:] += Dh[:, p0 - 1 + k * C : p0 - 1 + (nC - lo) * C : C]
    acc = _Grads(rec.cell, I, H, dt)
    acc.add(A[:, :, :T].reshape(4 * H, T * B), _z_rows(rec, x, 0, T, ws))
    return acc


def loss_and_gradients(params: dict, x: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                       truncation: str | Truncation, *, cell: str, loss: str = "cross_entropy", h0=None,
                       workspace: Workspace | None = None, rng=None) -> tuple[float, dict, np.ndarray]:
    """Loss and the truncated gradient of one whole sequence batch (``bptt.loss_and_gradients``'s
    contract for a gated cell). h0: (B, H) GRU, (2, B, H) or a (h, c) tuple LSTM, or None for
    zeros. Returns (loss, grads with the params' keys, the last state (B, H) or (2, B, H)).
    ``rng`` is accepted for the common signature and unused (no random mode for gated cells).
    """
    tr = parse(truncation)
    _check_truncation(tr)
    targets, mask, h0 = _check_all(params, x, targets, mask, h0, cell, loss)
    ws = workspace if workspace is not None else Workspace()
    T, B, _ = x.shape
    O = params["W_hy"].shape[0]
    H = params["weight_hh"].shape[1]
    w = _Weights(params, cell, B)
    rec = _Record(cell, T, B, H, x.dtype, ws)
    rec.set_h0(h0)
    _forward_steps(rec, w, x, 0, T)
    ws._states = rec.hs.transpose(0, 2, 1)
    value, dy = _loss(params, rec, targets, mask, loss, 0, T, ws.get("g_y", (T, O, B), x.dtype))
    C, W = tr.chunk_and_window(T)
    if W == C:
        acc = _chain_gradients(params, x, rec, w, dy, C, ws)
    else:
        acc = _lag_gradients(params, x, rec, w, dy, C, W, ws)
    grads = acc.result(params, *_output_grads(dy, rec.hs[1:]))
    return value, grads, rec.state(T)


def chunked_pass(params: dict, x: np.ndarray, targets: np.ndarray, mask: np.ndarray,
                 truncation: str | Truncation, on_chunk: Callable[[int, float, dict], None], *, cell: str,
                 loss: str = "cross_entropy", h0=None, workspace: Workspace | None = None, rng=None) -> np.ndarray:
    """``bptt.chunked_pass``'s contract for a gated cell: an update after every chunk.

    Each chunk runs forward with the parameters of the moment (the state carries on), its
    loss sum(m L)/sum(m) over its own steps goes back through each step's window f .. t as
    one chain from the chunk's last step to the window start (both carries dropped there),
    every step's Jacobian with the weight_hh it ran with, and ``on_chunk(index, loss, grads)``
    may update ``params`` in place. Chunks without a supervised step are skipped. Returns the
    last state. The per-chunk work is the whole-sequence engine's pieces on the window's steps.
    """
    tr = parse(truncation)
    _check_truncation(tr)
    targets, mask, h0 = _check_all(params, x, targets, mask, h0, cell, loss)
    ws = workspace if workspace is not None else Workspace()
    T, B, I = x.shape
    O = params["W_hy"].shape[0]
    H = params["weight_hh"].shape[1]
    dt = x.dtype
    C = tr.chunk_length(T)
    firsts = np.arange(0, T, C)
    f_of = tr.starts(T)[firsts]
    lasts = np.minimum(firsts + C, T)
    Wmax = int((lasts - f_of).max())
    supervised = (np.add.reduceat(mask.sum(axis=1), firsts) > 0).tolist()
    rec = _Record(cell, T, B, H, dt, ws)
    rec.set_h0(h0)
    ws._states = rec.hs.transpose(0, 2, 1)
    R = Wmax // C + 2
    ring: list = [None] * R  # ring[c % R]: chunk c's backward weight_hh^T
    V = ws.get("g_cV", (Wmax, 5, H, B), dt)
    tmp = ws.get("g_ctmp", (Wmax, 3, H, B), dt)
    A = ws.get("g_cA", (Wmax, 5 * H + O, B), dt)
    y = ws.get("g_cy", (C * O * B,), dt)
    for c, (a, b, f) in enumerate(zip(firsts.tolist(), lasts.tolist(), f_of.tolist())):
        w = _Weights(params, cell, B)
        ring[c % R] = w.bT
        _forward_steps(rec, w, x, a, b)
        if not supervised[c]:
            continue
        n, L = b - a, b - f
        value, dy = _loss(params, rec, targets, mask, loss, a, b, y[: n * O * B].reshape(n, O, B))
        W_hy = params["W_hy"]
        W_hyT = np.ascontiguousarray(W_hy.T)
        # Step s of the window is A[s - f]; its tail dL/dy_{s-1}, non-zero on the chunk's own steps.
        A[: a - f + 1, 5 * H :] = 0
        A[a - f + 1 : L, 5 * H :] = dy[: n - 1]
        gh = W_hyT @ dy[n - 1]  # dL/dh at the chunk's last step
        gc = np.zeros((H, B), dt)
        _factors(rec, f, b, V, tmp)
        stacked: dict = {}  # ring slot -> [that chunk's backward weight_hh; W_hy]^T
        for s in range(f, b):
            if (s // C) % R not in stacked:
                stacked[(s // C) % R] = _stacked_T(ring[(s // C) % R], W_hy)
        Ws = [stacked[(s // C) % R] for s in range(f, b)]
        F = rec.gates[f:b, 2] if cell == "lstm" else None
        _chain(cell, V[:L], F, A[:L], gh, gc, Ws, W_hyT, [s == f for s in range(f, b)])
        acc = _Grads(cell, I, H, dt)
        acc.add(_gate_columns(A[:L], H), _z_rows(rec, x, f, b, ws))
        grads = acc.result(params, *_output_grads(dy, rec.hs[a + 1 : b + 1]))
        on_chunk(c, value, grads)
    return rec.state(T)


# -- diagnostics ------------------------------------------------------------------------------
def _step_jacobians(rec: _Record, w: _Weights, s: int) -> np.ndarray:
    """d state_s / d state_{s-1} (B, S, S) for step s, S = H (GRU) or 2H (LSTM, h then c)."""
    H, B = rec.hs.shape[1:]
    dt = rec.hs.dtype
    V = np.empty((1, 5, H, B), dt)
    _factors(rec, s, s + 1, V, np.empty((1, 3, H, B), dt))
    vb = V[0].transpose(2, 0, 1)  # (B, 5, H)
    v = vb[:, :, :, None]  # row scalings
    Wb = w.bT.T.reshape(-1, H, H)  # internal order blocks, rows = gate units
    eye = np.arange(H)
    if rec.cell == "gru":
        # dh/dh_prev = diag(z) + diag(V_n) [diag(r) W_hn + diag(V_r) W_hr] + diag(V_z) W_hz
        J = v[:, 1] * (v[:, 4] * Wb[2] + v[:, 3] * Wb[1]) + v[:, 2] * Wb[0]
        J[:, eye, eye] += vb[:, 0]
        return J
    f = rec.gates[s, 2].T  # (B, H)
    dc_dh = v[:, 2] * Wb[1] + v[:, 3] * Wb[2] + v[:, 4] * Wb[3]
    J = np.zeros((B, 2 * H, 2 * H), dt)
    J[:, H:, :H] = dc_dh
    J[:, H + eye, H + eye] = f
    J[:, :H, :H] = v[:, 1] * Wb[0] + v[:, 0] * dc_dh  # dh/dh_prev: through o, and through c (Q)
    J[:, eye, H + eye] = vb[:, 0] * f
    return J


def state_jacobian(params: dict, x: np.ndarray, t: int, j: int, *, cell: str, h0=None) -> np.ndarray:
    """d state_t / d state_{t-j} (B, S, S), S = H (GRU) or 2H (LSTM, h then c): the product of
    the j step Jacobians of steps t-j+1 .. t (column convention, as ``bptt.state_jacobian``)."""
    I, H, _ = check_params(params, cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != I:
        raise InvalidInputError(f"x must have shape (T, B, I={I}), got {_fmt(getattr(x, 'shape', ()))}")
    T, B, _ = x.shape
    if not (0 <= j <= t < T):
        raise InvalidInputError(f"need 0 <= j <= t < T = {T}, got t={t}, j={j}")
    x = x.astype(params["weight_ih"].dtype, copy=False)
    h0 = _check_h0(h0, cell, B, H, x.dtype)
    rec = _run_forward(params, x, cell, h0, Workspace())
    w = _Weights(params, cell)
    S = H if cell == "gru" else 2 * H
    J = np.broadcast_to(np.eye(S, dtype=x.dtype), (B, S, S)).copy()
    for s in range(t, t - j, -1):
        J = J @ _step_jacobians(rec, w, s)
    return J


def lag_profile(params: dict, x: np.ndarray, targets: np.ndarray, mask: np.ndarray, *, cell: str,
                loss: str = "cross_entropy", max_lag: int = 50, h0=None) -> dict:
    """Mean ||dL_tb / d state_{t-j}|| by lag j through the full graph, h and c separately.

    As the Elman ``diagnostics.gradient_flow``: L_tb is the per-step loss itself (not divided
    by sum(m)) and the mean at lag j is over the supervised (t, b) with t >= j. Returns
    {"lags": [0..J], "h": [...], "c": [...] (LSTM only), "counts": [...]}. One chain per step
    t, all advanced by one matmul per lag (chains kept in the order of t, so the live ones
    and the factor rows they need are contiguous slices).
    """
    if isinstance(max_lag, bool) or not isinstance(max_lag, (int, np.integer)) or max_lag < 0:
        raise InvalidInputError(f"max_lag must be an integer >= 0, got {max_lag!r}")
    targets, mask, h0 = _check_all(params, x, targets, mask, h0, cell, loss)
    T, B, _ = x.shape
    H = params["weight_hh"].shape[1]
    dt = x.dtype
    ws = Workspace()
    rec = _run_forward(params, x, cell, h0, ws)
    w = _Weights(params, cell)
    lstm = cell == "lstm"
    # dL_tb/dy_t unnormalised, zero where m = 0: the loss with the mask scaled by sum(m).
    O = params["W_hy"].shape[0]
    _, dy = _loss(params, rec, targets, mask, loss, 0, T, np.empty((T, O, B), dt))
    dy = dy * np.float64(mask.sum())
    Dh = (dy.transpose(0, 2, 1) @ params["W_hy"]).astype(np.float64)  # (T, B, H)
    # float64 throughout: the profile is small, and its far lags are tiny numbers.
    rec64 = _Record(cell, T, B, H, np.float64, Workspace())
    for k in ("hs", "gates", "cs", "tc", "hn"):
        if getattr(rec, k) is not None:
            getattr(rec64, k)[...] = getattr(rec, k)
    V = np.empty((T, 5, H, B))
    _factors(rec64, 0, T, V, np.empty((T, 3, H, B)))
    V = V.transpose(0, 3, 1, 2)  # (T, B, 5, H): rows per (step, sample), as the chains
    F = rec64.gates[:, 2].transpose(0, 2, 1)
    Wb = w.bT.T.astype(np.float64)
    J = int(min(T - 1, max_lag))
    per_step = mask.sum(axis=1).astype(np.int64)
    from_j = np.cumsum(per_step[::-1])[::-1]
    gh = Dh.copy()  # chain t: dL_t/dh at step t - j
    gc = np.zeros_like(gh)
    ach = np.empty((T, B, 5, H))
    hn, cn = [], []
    for j in range(J + 1):
        live = slice(j, T)  # chains t >= j, at steps 0 .. T-1-j
        g, c = gh[live], gc[live]
        hn.append(float(np.sqrt((g * g).sum(axis=2)).sum()) / max(int(from_j[j]), 1))
        if lstm:
            cn.append(float(np.sqrt((c * c).sum(axis=2)).sum()) / max(int(from_j[j]), 1))
        if j == J:
            break
        steps = slice(0, T - j)  # step of chain t at lag j is t - j
        a, v = ach[: T - j], V[steps]
        if lstm:
            np.multiply(g[:, :, None, :], v[:, :, 0:2], out=a[:, :, 0:2])
            c += a[:, :, 0]  # dL_t/dc_{t-j} through c_{t-j+1} and through h_{t-j}
            np.multiply(c[:, :, None, :], v[:, :, 2:5], out=a[:, :, 2:5])
            nxt_c = c * F[steps]
            nxt_h = a[:, :, 1:5].reshape(-1, 4 * H) @ Wb
        else:
            np.multiply(g[:, :, None, :], v[:, :, 0:3], out=a[:, :, 0:3])
            np.multiply(a[:, :, 1:2], v[:, :, 3:5], out=a[:, :, 3:5])
            nxt_h = a[:, :, 2:5].reshape(-1, 3 * H) @ Wb + a[:, :, 0].reshape(-1, H)
            nxt_c = None
        # chain t moves to step t-j-1; chain j (at step 0) drops out
        gh[j + 1 :] = nxt_h.reshape(T - j, B, H)[1:]
        if lstm:
            gc[j + 1 :] = nxt_c[1:]
    out = {"lags": list(range(J + 1)), "h": hn, "counts": [int(from_j[j]) for j in range(J + 1)]}
    if lstm:
        out["c"] = cn
    return out


def gate_saturation(params: dict, x: np.ndarray, *, cell: str, h0=None) -> dict:
    """Share of the forget (LSTM) or update (GRU, z) gate values above 0.95 and below 0.05
    over every step, sample and unit of a forward pass: {"gate", "high", "low"}. A forget or
    update gate near 1 carries the state (and its gradient) unchanged; near 0 it erases it."""
    I, H, _ = check_params(params, cell)
    if not isinstance(x, np.ndarray) or x.ndim != 3 or x.shape[2] != I:
        raise InvalidInputError(f"x must have shape (T, B, I={I}), got {_fmt(getattr(x, 'shape', ()))}")
    x = x.astype(params["weight_ih"].dtype, copy=False)
    h0 = _check_h0(h0, cell, x.shape[1], H, x.dtype)
    rec = _run_forward(params, x, cell, h0, Workspace())
    g = rec.gates[:, 2 if cell == "lstm" else 1]
    lo, hi = SATURATED
    return {"gate": "forget" if cell == "lstm" else "update", "high": float((g > hi).mean()),
            "low": float((g < lo).mean())}
