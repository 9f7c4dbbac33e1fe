r"""Adaptive truncation (Aicher, Foti & Fox 2019): pick K from how fast the gradient decays.

Notation as in ``bptt.py`` and ``diagnostics.py``: phi_j is the mean over supervised (t, b)
with t >= j of ||dL_tb/dh_{t-j}||, the lag profile of the current batch through the full,
untruncated graph (``diagnostics.gradient_flow``).

The paper's assumption is that past a burn-in tau the profile decays geometrically,
phi_{j+1} <= beta phi_j for j >= tau, with beta < 1. Then what ``k_truncated:K`` drops, the
terms of lags j > K, is bounded by a geometric tail, and the relative bias of the truncated
gradient by

    delta(K) <= beta^K / (1 - beta)

(the issue's form of the bound: beta^K / (1 - beta) = sum_{j >= K} beta^j, the profile's
tail from lag K on in units of phi_0; it counts lag K too, which k_truncated:K keeps, so it
errs on the safe side). Adaptive truncation turns "choose K" into "choose a tolerable
relative bias DELTA" and runs with the smallest K whose bound is within it:

    beta  = exp(slope of log phi_j against j, least squares over j = tau .. J)
    K     = min { K >= 0 : beta^K / (1 - beta) <= DELTA },  clamped to [KMIN, KMAX] and to T-1

The estimator of beta is the one the paper's code uses by default (``ols`` in
``tbptt/adaptive_truncation.py`` of aicherc/adaptive_tbptt): a least-squares fit of the log of
the batch-mean gradient norm against the lag, lags whose norm is zero left out. Differences
(stated in docs/truncation.md): that code fits every lag of the window and averages the norms
of one loss per sequence (the last step's); here only lags past the burn-in are fitted (as the
paper describes tau), and the norms are averaged over every supervised step, as the lag
profile of the diagnostics is. The paper also scales the bound by phi_tau and a lower bound on
||g||; the issue's bound above leaves both out.
"""

from __future__ import annotations

import math

import numpy as np

from bptt_cli.core.diagnostics import _fit_decay, gradient_flow
from bptt_cli.core.errors import InvalidInputError

BURN_IN = 5  # lags left out of the fit: the first steps back are not yet geometric
MAX_LAG = 100  # lags of the profile fitted at most (the sweep costs one matmul per lag)


def estimate_decay(lag_norms, *, burn_in: int = BURN_IN) -> float:
    """beta: exp of the least-squares slope of log(norm) against lag over lags >= burn_in.

    lag_norms[j] = mean ||dL_t/dh_{t-j}|| (``gradient_flow(...)["norms"]``). If fewer than two
    lags lie past the burn-in, the burn-in shrinks to keep two (a short profile is fitted
    whole). Lags with a zero (or None) norm are left out of the fit; when fewer than two non-zero ones
    remain (nothing flows that far back), beta = 0. A non-finite norm (an overflowing
    gradient) gives beta = inf, so K goes to its largest value.
    """
    norms = [0.0 if v is None else float(v) for v in lag_norms]  # None (no data at that lag): left out
    if isinstance(burn_in, bool) or not isinstance(burn_in, (int, np.integer)) or burn_in < 0:
        raise InvalidInputError(f"burn_in must be an integer >= 0, got {burn_in!r}")
    if any(v < 0 or math.isnan(v) for v in norms):
        raise InvalidInputError("lag norms must be >= 0 (means of gradient norms)")
    start = min(int(burn_in), max(0, len(norms) - 2))
    tail = norms[start:]
    if any(math.isinf(v) for v in tail):
        return math.inf
    slope = _fit_decay(list(range(start, len(norms))), tail)
    return 0.0 if slope is None else math.exp(slope)


def choose_k(beta: float, delta: float, kmin: int, kmax: int | None, T: int) -> int:
    """The smallest K >= 0 with beta^K / (1 - beta) <= delta, clamped to [kmin, kmax], then to T-1.

    beta >= 1 (no decay, or growth) has no such K: the largest allowed K. kmax None: no bound
    but T-1.
    """
    if not 0 < delta < 1:
        raise InvalidInputError(f"delta must lie in (0, 1), got {delta!r}")
    if T < 1:
        raise InvalidInputError(f"sequence length T must be >= 1, got {T}")
    if math.isnan(beta) or beta < 0:
        raise InvalidInputError(f"beta must be >= 0, got {beta!r}")
    hi = T - 1 if kmax is None else min(kmax, T - 1)
    if beta >= 1:
        return hi
    if beta == 0:
        k = 1  # 0^K = 0 for K >= 1, and 1/(1 - 0) = 1 > delta at K = 0
    else:
        # beta^K <= delta (1 - beta)  <=>  K >= log(delta (1 - beta)) / log(beta); the float
        # quotient is nudged to the exact smallest integer by checking the bound itself.
        target = delta * (1 - beta)
        k = max(0, math.ceil(math.log(target) / math.log(beta)))
        while k > 0 and beta ** (k - 1) <= target:
            k -= 1
        while beta**k > target:
            k += 1
    return max(0, min(max(k, kmin), hi))


def adapt(
    params: dict,
    x: np.ndarray,
    targets: np.ndarray,
    mask: np.ndarray,
    *,
    activation: str,
    loss: str,
    delta: float,
    kmin: int = 1,
    kmax: int | None = None,
    h0: np.ndarray | None = None,
    burn_in: int = BURN_IN,
    max_lag: int = MAX_LAG,
    hs: np.ndarray | None = None,
    workspace=None,
    cell: str = "elman",
) -> tuple[int, float]:
    """(K, beta) for this batch and these weights: the lag profile up to max_lag (capped at
    T-1), beta from ``estimate_decay``, K from ``choose_k``. Shapes as in
    ``diagnostics.gradient_flow``, which computes the profile (``hs`` and ``workspace`` are
    passed on to it: a training step's states spare the forward pass). Nothing is modified.
    ``cell`` gru or lstm: the profile of dL_t/dh_{t-j} of the gated engine (for the LSTM, of
    h; the cell state's own profile is not used).
    """
    T = np.shape(x)[0]
    flow = gradient_flow(params, x, targets, mask, activation=activation, loss=loss, h0=h0,
                         max_lag=max(0, min(int(max_lag), T - 1)), hs=hs, workspace=workspace, cell=cell)
    beta = estimate_decay(flow["norms"], burn_in=burn_in)
    return choose_k(beta, delta, kmin, kmax, T), beta
