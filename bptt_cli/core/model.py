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
    """A set of parameters and the activation they run with."""

    params: dict[str, np.ndarray]
    activation: str = "tanh"

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
    ) -> RNN:
        """Fresh parameters.

        ``W_hh`` is ``orthogonal`` (rho * Q, Q orthogonal, so every eigenvalue has modulus
        rho), ``gaussian`` (std rho / sqrt(H), spectral radius close to rho for large H) or
        ``identity`` (rho * I, the IRNN of Le et al. 2015); rho = ``spectral_radius``.
        ``W_xh`` and ``W_hy`` are Gaussian with std 1/sqrt(fan-in); biases are zero.
        """
        for name, v in (("n_in", n_in), ("n_hidden", n_hidden), ("n_out", n_out)):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InvalidInputError(f"{name} must be a positive integer, got {v!r}")
        check_activation(activation)
        if init not in INITS:
            raise InvalidInputError(f"init must be one of {', '.join(INITS)}, got {init!r}")
        if not np.isfinite(spectral_radius) or spectral_radius <= 0:
            raise InvalidInputError(f"spectral_radius must be a positive number, got {spectral_radius!r}")
        dt = check_dtype(dtype)
        rng = np.random.default_rng(seed)
        H = n_hidden
        if init == "orthogonal":
            q, r = np.linalg.qr(rng.standard_normal((H, H)))
            q *= np.sign(np.diag(r))  # makes Q uniformly (Haar) distributed
            W_hh = spectral_radius * q
        elif init == "gaussian":
            W_hh = rng.standard_normal((H, H)) * (spectral_radius / np.sqrt(H))
        else:
            W_hh = spectral_radius * np.eye(H)
        params = {
            "W_xh": rng.standard_normal((H, n_in)) / np.sqrt(n_in),
            "W_hh": W_hh,
            "b_h": np.zeros(H),
            "W_hy": rng.standard_normal((n_out, H)) / np.sqrt(H),
            "b_y": np.zeros(n_out),
        }
        return cls({k: v.astype(dt) for k, v in params.items()}, activation)

    @property
    def sizes(self) -> tuple[int, int, int]:
        """(I, H, O)."""
        H, I = self.params["W_xh"].shape
        return I, H, self.params["W_hy"].shape[0]


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


def forward(params: dict, x: np.ndarray, *, activation: str = "tanh", h0: np.ndarray | None = None):
    """(hs, y): hidden states hs (T+1, B, H) with hs[0] = h0, and outputs y (T, B, O)."""
    check_activation(activation)
    T, B, _ = x.shape
    H = params["W_hh"].shape[0]
    dt = params["W_hh"].dtype
    hs = np.empty((T + 1, B, H), dtype=dt)
    hs[0] = 0 if h0 is None else h0
    xw = np.empty((T, B, H), dtype=dt)
    forward_into(params, x, hs, xw, activation)
    return hs, outputs(params, hs)
