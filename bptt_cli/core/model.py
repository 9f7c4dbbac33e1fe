"""The Elman RNN: parameters, initialisation and the (never truncated) forward pass.

    a_t = W_xh x_t + W_hh h_{t-1} + b_h        h_{-1} = h0 (zeros unless given)
    h_t = phi(a_t)
    y_t = W_hy h_t + b_y

Arrays are time-major and batched as rows: ``x (T, B, I)``, ``h (B, H)``, so in code
``a_t = x_t @ W_xh.T + h_{t-1} @ W_hh.T + b_h``. Parameters live in a plain dict with keys
``W_xh (H, I)``, ``W_hh (H, H)``, ``b_h (H,)``, ``W_hy (O, H)``, ``b_y (O,)``; gradients
are dicts with the same keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bptt_cli.core.errors import InvalidInputError

PARAM_NAMES = ("W_xh", "W_hh", "b_h", "W_hy", "b_y")


def param_names(cell: str = "elman") -> tuple[str, ...]:
    """The parameter keys of a cell: PARAM_NAMES for elman, PyTorch's names for gru and lstm."""
    if cell == "elman":
        return PARAM_NAMES
    from bptt_cli.core import gated

    return gated.param_names(cell)
INITS = ("orthogonal", "gaussian", "identity")


def _tanh(a: np.ndarray) -> None:
    np.tanh(a, out=a)


def _relu(a: np.ndarray) -> None:
    np.maximum(a, 0, out=a)


def _identity(a: np.ndarray) -> None:
    pass


def _dtanh(h: np.ndarray) -> np.ndarray:
    return 1 - h * h  # phi'(a) from h = tanh(a)


def _drelu(h: np.ndarray) -> np.ndarray:
    return (h > 0).astype(h.dtype)  # phi'(0) = 0


# Each activation: (in-place forward on a, phi'(a) computed from h = phi(a) or None for 1).
ACTIVATIONS = {
    "tanh": (_tanh, _dtanh),
    "relu": (_relu, _drelu),
    "identity": (_identity, None),
}


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise InvalidInputError(f"activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")


def check_dtype(dtype) -> np.dtype:
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise InvalidInputError(f"dtype must be float32 or float64, got {dt}")
    return dt


@dataclass
class RNN:
    """A set of parameters and the activation they run with (``cell``: elman, gru or lstm;
    gated cells keep PyTorch's parameter names, see ``core/gated.py``)."""

    params: dict[str, np.ndarray]
    activation: str = "tanh"
    cell: str = "elman"

    @classmethod
    def init(
        cls,
        n_in: int,
        n_hidden: int,
        n_out: int,
        *,
        activation: str = "tanh",
        init: str = "orthogonal",
        spectral_radius: float = 1.0,
        seed: int = 0,
        dtype=np.float32,
        init_params: dict | None = None,
        cell: str = "elman",
        forget_bias: float = 1.0,
    ) -> RNN:
        """Fresh parameters (see :func:`init_elman`; for ``cell`` gru or lstm, ``gated.init_params``
        with ``init`` pytorch or orthogonal, drawn from ``default_rng(seed)``)."""
        if cell != "elman":
            from bptt_cli.core import gated

            params = gated.init_params(cell, n_in, n_hidden, n_out, init=init, forget_bias=forget_bias,
                                       rng=np.random.default_rng(seed), dtype=dtype)
            return cls(params, activation, cell)
        check_activation(activation)
        params = init_elman(
            n_in, n_hidden, n_out, init=init, spectral_radius=spectral_radius, seed=seed, dtype=dtype, init_params=init_params
        )
        return cls(params, activation)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(I, H, O)."""
        if self.cell != "elman":
            return self.params["weight_ih"].shape[1], self.params["weight_hh"].shape[1], self.params["W_hy"].shape[0]
        H, I = self.params["W_xh"].shape
        return I, H, self.params["W_hy"].shape[0]


# Per-matrix distributions of ``init_params`` and the keys each one takes.
MATRIX_DISTS = {"default": (), "gaussian": ("std",), "uniform": ("scale",), "orthogonal": ("gain",), "identity": ("gain",)}


def init_elman(
    n_in: int,
    n_hidden: int,
    n_out: int,
    *,
    init: str = "orthogonal",
    spectral_radius: float = 1.0,
    seed: int = 0,
    dtype=np.float32,
    init_params: dict | None = None,
) -> dict[str, np.ndarray]:
    """Fresh Elman parameters, all drawn from ``default_rng(seed)`` in the order W_hh, W_xh, W_hy.

    By default ``W_hh`` is ``orthogonal`` (rho * Q, Q orthogonal, so every eigenvalue has
    modulus rho), ``gaussian`` (std rho / sqrt(H), spectral radius close to rho for large H) or
    ``identity`` (rho * I, the IRNN of Le et al. 2015); rho = ``spectral_radius``.
    ``W_xh`` and ``W_hy`` are Gaussian with std 1/sqrt(fan-in); biases are zero.

    ``init_params`` overrides that per parameter: ``{"W_xh": {"dist": "gaussian", "std": 0.01},
    "b_h": 0.5, ...}``. A matrix takes ``dist`` default (the above), gaussian (``std``: std *
    N(0, 1)), uniform (``scale``: U(-scale, scale)), orthogonal (``gain`` times a matrix with
    orthonormal rows or columns, the Haar-distributed Q of a QR) or identity (``gain`` times
    the rectangular identity); a bias takes a constant. Leaving every entry at its default
    draws exactly what the shorthand draws, so the numbers are bit for bit the same.
    """
    for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
            raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
    if init not in INITS:
        raise InvalidInputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    if not np.isfinite(spectral_radius) or spectral_radius <= 0:
        raise InvalidInputError(f"spectral_radius must be a positive number, got {spectral_radius!r}")
    dt = check_dtype(dtype)
    spec = dict(init_params or {})
    unknown = [k for k in spec if k not in PARAM_NAMES]
    if unknown:
        raise InvalidInputError(f"init_params has no parameter {unknown[0]!r}; parameters are {', '.join(PARAM_NAMES)}")
    rng = np.random.default_rng(seed)
    H = n_hidden

    def default_W_hh(rng: np.random.Generator) -> np.ndarray:
        if init == "orthogonal":
            return spectral_radius * _orthogonal(rng, H, H)
        if init == "gaussian":
            return rng.standard_normal((H, H)) * (spectral_radius / np.sqrt(H))
        return spectral_radius * np.eye(H)

    defaults = {
        "W_hh": default_W_hh,
        "W_xh": lambda rng: rng.standard_normal((H, n_in)) / np.sqrt(n_in),
        "W_hy": lambda rng: rng.standard_normal((n_out, H)) / np.sqrt(H),
    }
    shapes = {"W_hh": (H, H), "W_xh": (H, n_in), "W_hy": (n_out, H)}
    params = {k: _matrix(k, spec.get(k), shapes[k], defaults[k], rng) for k in ("W_hh", "W_xh", "W_hy")}
    for k, n in (("b_h", H), ("b_y", n_out)):
        c = spec.get(k, 0.0)
        if isinstance(c, bool) or not isinstance(c, (int, float, np.integer, np.floating)) or not np.isfinite(c):
            raise InvalidInputError(f"init_params {k} must be a finite number (the bias's constant), got {c!r}")
        params[k] = np.full(n, float(c))
    return {k: params[k].astype(dt) for k in PARAM_NAMES}


def _orthogonal(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal columns (rows >= cols) or rows, Haar distributed."""
    q, r = np.linalg.qr(rng.standard_normal((max(rows, cols), min(rows, cols))))
    q *= np.sign(np.diag(r))  # makes Q uniformly (Haar) distributed
    return q if rows >= cols else q.T


def _matrix(name: str, spec, shape: tuple[int, int], default, rng: np.random.Generator) -> np.ndarray:
    """One weight matrix drawn as ``spec`` says (None or dist default: ``default(rng)``)."""
    if spec is None:
        return default(rng)
    if not isinstance(spec, dict) or spec.get("dist", "default") not in MATRIX_DISTS:
        raise InvalidInputError(
            f"init_params {name} must be a mapping with dist one of {', '.join(MATRIX_DISTS)}, got {spec!r}"
        )
    dist = spec.get("dist", "default")
    keys = MATRIX_DISTS[dist]
    extra = [k for k in spec if k not in ("dist", *keys)]
    if extra:
        takes = ", ".join(keys) or "no other key"
        raise InvalidInputError(f"init_params {name}: dist {dist} takes {takes}, not {extra[0]!r}")
    for k in keys:
        v = spec.get(k, 1.0 if k == "gain" else None)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) or v <= 0:
            raise InvalidInputError(f"init_params {name}: dist {dist} needs {k} > 0, got {v!r}")
    if dist == "default":
        return default(rng)
    if dist == "gaussian":
        return rng.standard_normal(shape) * float(spec["std"])
    if dist == "uniform":
        s = float(spec["scale"])
        return rng.uniform(-s, s, shape)
    gain = float(spec.get("gain", 1.0))
    if dist == "orthogonal":
        return gain * _orthogonal(rng, *shape)
    return gain * np.eye(*shape)


def check_params_like(arrays: dict, like: dict, where: str) -> dict[str, np.ndarray]:
    """Copies of ``arrays`` in ``like``'s key order, or one InvalidInputError listing every
    name, shape, dtype or non-finite value that differs from ``like`` (the model's parameters)."""
    problems = [f"missing {k}" for k in like if k not in arrays]
    problems += [f"unexpected {k}" for k in arrays if k not in like]
    for k, v in like.items():
        a = arrays.get(k)
        if a is None:
            continue
        if a.shape != v.shape or a.dtype != v.dtype:
            problems.append(f"{k} is {a.dtype} {tuple(a.shape)}, the model's {v.dtype} {tuple(v.shape)}")
        elif not np.isfinite(a).all():
            problems.append(f"{k} has NaN or Inf entries")
    if problems:
        want = ", ".join(f"{k} {tuple(v.shape)}" for k, v in like.items())
        raise InvalidInputError(
            f"{where} does not fit this model: {'; '.join(problems)} (expected {want}, all {next(iter(like.values())).dtype})"
        )
    return {k: np.array(arrays[k], copy=True) for k in like}


def forward_into(
    params: dict, x: np.ndarray, hs: np.ndarray, xw: np.ndarray, activation: str, W_hhT: np.ndarray | None = None
) -> None:
    """Run the recurrence, writing h_t into ``hs[t+1]``; ``hs[0]`` must hold h0.

    x (T, B, I); hs (T+1, B, H); xw (T, B, H) scratch for the input projections, computed
    for all steps in one matmul so the loop makes three NumPy calls per step. ``W_hhT``, a
    contiguous copy of W_hh^T, may be passed in by a caller that runs a sequence in blocks.
    """
    T, B, I = x.shape
    H = params["W_hh"].shape[0]
    # Contiguous copies of the transposed weights: OpenBLAS runs these small matmuls up to
    # twice as fast from them as from transposed views (32x128 @ 128x128: 7 us against 15 us).
    np.matmul(x.reshape(T * B, I), np.ascontiguousarray(params["W_xh"].T), out=xw.reshape(T * B, H))
    xw += params["b_h"]
    if W_hhT is None:
        W_hhT = np.ascontiguousarray(params["W_hh"].T)
    phi = ACTIVATIONS[activation][0]
    # zip over the arrays hands out the per-step (B, H) views without Python-level indexing,
    # which matters when B is 1 and each NumPy call is mostly overhead.
    for h_prev, h, xw_t in zip(hs[:-1], hs[1:], xw[:T]):
        np.matmul(h_prev, W_hhT, out=h)
        h += xw_t
        phi(h)


def outputs(params: dict, hs: np.ndarray) -> np.ndarray:
    """y (T, B, O) from hidden states hs (T+1, B, H), one matmul over all steps."""
    Tp1, B, H = hs.shape
    T = Tp1 - 1
    y = hs[1:].reshape(T * B, H) @ params["W_hy"].T
    y += params["b_y"]
    return y.reshape(T, B, -1)


def forward(params: dict, x: np.ndarray, *, activation: str = "tanh", h0: np.ndarray | None = None, cell: str = "elman"):
    """(hs, y): hidden states hs (T+1, B, H) with hs[0] = h0, and outputs y (T, B, O).
    Gated cells: ``gated.forward``, states (T+1, B, H) (gru) or (T+1, 2, B, H) (lstm, h and c)."""
    if cell != "elman":
        from bptt_cli.core import gated

        return gated.forward(params, x, cell, h0=h0)
    check_activation(activation)
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    dt = params["W_hh"].dtype
    hs = np.empty((T + 1, B, H), dtype=dt)
    hs[0] = 0 if h0 is None else h0
    xw = np.empty((T, B, H), dtype=dt)
    forward_into(params, x, hs, xw, activation)
    return hs, outputs(params, hs)
