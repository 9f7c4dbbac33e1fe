r"""``bptt estimators``: bias, variance and cost of every gradient estimator on the same batches.

A truncation mode is an estimator g of the full-BPTT gradient g_full of a batch. On a fixed
set of batches (the config's first ``batches`` training batches) and fixed weights (the
config's initial ones or a run's checkpoint), every mode draws ``samples`` estimates per
batch (one for a deterministic mode: its estimate never changes) and is scored against
g_full of the same batch. Gradients of all batches are concatenated into one vector, so a
batch with a large gradient counts for more; every number is in float64.

    relative variance    v = sum_i ||g_i - mean||^2 / (N - 1) / ||g_full||^2
    raw bias             r = ||mean_i g_i - g_full|| / ||g_full||, whose square has expectation
                         bias^2 + v / N: noise alone gives an unbiased estimator r ~ sqrt(v / N)
    relative bias        ||E[g] - g_full|| / ||g_full|| estimated as sqrt(max(0, r^2 - v / N))
    95% interval         bootstrap of s = r^2 - v / N (an unbiased estimate of bias^2) over
                         the N samples, B = 200 resamples: its 2.5% and 97.5% quantiles moved
                         by the resamples' own bias (their mean minus s), square roots clipped
                         at 0; a lower end of 0: the samples cannot tell the mode from an
                         unbiased one
    noise floor          sqrt(v / N), the raw bias an unbiased estimator shows on average
    cosine               mean over samples of cos(g_i, g_full): what one update sees
    ms / estimate        median wall time of one gradient (forward + backward) per batch
    matvecs / sequence   W_hh products per sequence: T in the forward pass plus the backward
                         pass's adjoint steps, counted from the windows (below)

Backward products: a window f .. e on a chain needs e - f products W_hh^T delta (the last
adjoint, dL/dh_{f-1}, is dropped). Chunks with W == C share one chain (T - chunks products),
overlapping windows (k_truncated, tbptt K2 > K1) each walk their own, so k_truncated:K needs
sum_t min(t, K) ~ K T. A random mode is counted from each estimate's own draw
(``Truncation.draw`` on a generator in the engine's state): random_k the drawn window L_t of
each supervised loss, artbp T - (cuts) on its one chain; the adaptive mode as the
k_truncated:K it runs with (its lag-profile pass every few updates is not included).

Randomness: sample i of batch b draws from ``default_rng([seed, b, i, 0xE57])``, so a table
is reproducible from the seed; the bootstrap uses ``default_rng([seed, 0xB007])``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bptt_cli.core.bptt import Workspace, loss_and_gradients
from bptt_cli.core.errors import BpttError, DivergedError, InvalidInputError
from bptt_cli.core.truncation import Truncation, parse

BOOTSTRAP = 200  # resamples for the bias interval
TIMING_REPEATS = 3  # a deterministic mode is timed this many times (one estimate is kept)
MAX_SAMPLES = 10_000
MAX_BATCHES = 1_000
CSV_COLUMNS = (
    "mode", "kind", "estimates", "rel_bias", "rel_bias_raw", "rel_bias_low", "rel_bias_high", "noise_floor", "rel_variance",
    "cosine", "ms_per_estimate", "matvecs_per_sequence", "k", "note",
)  # fmt: skip


class EstimatorsError(InvalidInputError):
    """A bad option of ``bptt estimators`` (exit code 2)."""


@dataclass(frozen=True)
class Problem:
    """The fixed batches and weights every mode is measured on."""

    params: dict[str, np.ndarray]
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (x, targets, mask) each, float64
    h0: np.ndarray | None
    activation: str
    loss: str
    source: str  # "initial weights" or "checkpoint of RUN at step N"
    project: Any = None  # the task's gradient projection (influence: theta only), as in training
    cell: str = "elman"  # elman, gru or lstm: the engine's cell=


def kind_of(tr: Truncation) -> str:
    """``random`` (random_k, artbp), ``adaptive`` or ``deterministic``."""
    if getattr(tr, "random", False):
        return "random"
    if getattr(tr, "adaptive", None) is not None:
        return "adaptive"
    return "deterministic"


def check_options(samples: int, batches: int) -> None:
    if not isinstance(samples, int) or not 1 <= samples <= MAX_SAMPLES:
        raise EstimatorsError(f"--samples must be from 1 to {MAX_SAMPLES:,}, got {samples!r}")
    if not isinstance(batches, int) or not 1 <= batches <= MAX_BATCHES:
        raise EstimatorsError(f"--batches must be from 1 to {MAX_BATCHES:,}, got {batches!r}")


def problem_from_trainer(trainer, state, *, batches: int, source: str) -> Problem:
    """The first ``batches`` training batches of the trainer's task and ``state``'s weights, in float64.

    A stateful task (text) starts every batch from the checkpoint's carried state (zeros
    for initial weights): the batches are scored as independent problems.
    """
    B = trainer.cfg.train.batch_size
    out = []
    for step in range(batches):
        b = trainer.task.train_batch(step, B)
        x = np.asarray(b.x, dtype=np.float64)
        targets = b.targets if b.targets.dtype.kind in "iu" else np.asarray(b.targets, dtype=np.float64)
        out.append((x, targets, np.asarray(b.mask, dtype=np.float64)))
    params = {k: np.asarray(v, dtype=np.float64).copy() for k, v in state.params.items()}
    h0 = None if state.h is None else np.asarray(state.h, dtype=np.float64)
    project = getattr(trainer.task, "project_gradient", None)
    return Problem(params, out, h0, trainer.cfg.model.activation, trainer.task.loss, source, project, trainer.cell)


def _flat(grads: dict, keys) -> np.ndarray:
    return np.concatenate([np.ravel(grads[k]) for k in keys]).astype(np.float64, copy=False)


def backward_matvecs(tr: Truncation, T: int, starts: np.ndarray | None = None) -> int:
    """W_hh^T products of one sequence's backward pass under ``tr`` (see the module docstring).

    ``starts``: drawn per-loss window starts f(t) (T,) of a random mode, each loss on its own chain.
    """
    if starts is not None:
        t = np.arange(T)
        return int(np.maximum(t - np.asarray(starts), 0).sum())
    C, W = tr.chunk_and_window(T)
    firsts = np.arange(0, T, C)
    lasts = np.minimum(firsts + C, T) - 1
    f = tr.starts(T)[firsts]
    return int(np.maximum(lasts - f, 0).sum())


def _random_matvecs(tr: Truncation, T: int, rng: np.random.Generator, supervised: np.ndarray) -> int:
    """Backward products of one draw (the engine draws first thing from a generator in this state).

    random_k keeps lags 0 .. L_t of each supervised loss on a chain of its own: sum L_t;
    artbp runs one chain cut at the drawn points: T - (number of cuts).
    """
    d = tr.draw(T, rng)
    if tr.mode == "random_k":
        return int(d[supervised].sum())
    return int(T - d.sum())


def _gradient(problem: Problem, tr: Truncation, batch: int, ws: Workspace, rng=None) -> np.ndarray:
    x, targets, mask = problem.batches[batch]
    kw: dict[str, Any] = {"activation": problem.activation, "loss": problem.loss, "h0": problem.h0, "workspace": ws,
                          "cell": problem.cell}
    if rng is not None:
        kw["rng"] = rng
    _, grads, _ = loss_and_gradients(problem.params, x, targets, mask, tr, **kw)
    if problem.project is not None:
        grads = problem.project(grads)
    return _flat(grads, problem.params)


def _adapted(problem: Problem, tr: Truncation, batch: int) -> tuple[Truncation, int, float | None]:
    """The k_truncated:K an adaptive mode runs with on this batch and weights: (tr, K, beta)."""
    from bptt_cli.core import adaptive

    delta, kmin, kmax = tr.adaptive
    x, targets, mask = problem.batches[batch]
    K, beta = adaptive.adapt(
        problem.params, x, targets, mask, activation=problem.activation, loss=problem.loss,
        delta=delta, kmin=kmin, kmax=kmax, h0=problem.h0,
    )  # fmt: skip
    return tr.with_k(int(K)), int(K), (None if beta is None else float(beta))


def measure_mode(problem: Problem, spec: str | Truncation, g_full: list[np.ndarray], *, samples: int, seed: int) -> dict:
    """One row of the table for ``spec``; ``g_full``: the full gradient of each batch."""
    tr = parse(spec)
    kind = kind_of(tr)
    T = problem.batches[0][0].shape[0]
    ws = Workspace()
    times: list[float] = []
    matvecs: list[int] = []
    ks: list[int] = []
    betas: list[float] = []
    n = samples if kind == "random" else 1
    est = np.empty((len(problem.batches), n, g_full[0].size))  # (batches, N, P)
    for b in range(len(problem.batches)):
        run_tr = tr
        if kind == "adaptive":
            run_tr, K, beta = _adapted(problem, tr, b)
            ks.append(K)
            if beta is not None:
                betas.append(beta)
        for i in range(n):
            rng = np.random.default_rng([seed, b, i, 0xE57]) if kind == "random" else None
            for _ in range(1 if kind == "random" else TIMING_REPEATS):
                t0 = time.perf_counter()
                est[b, i] = _gradient(problem, run_tr, b, ws, rng)
                times.append(time.perf_counter() - t0)
            if kind == "random":
                supervised = problem.batches[b][2].any(axis=1)  # (T,)
                m = _random_matvecs(tr, T, np.random.default_rng([seed, b, i, 0xE57]), supervised)
            else:
                m = backward_matvecs(run_tr, T)
            if m is not None:
                matvecs.append(T + m)
    G = np.stack(g_full)  # (batches, P)
    norm_full = float(np.sqrt((G * G).sum()))
    mean = est.mean(axis=1)  # (batches, P)
    raw = _rel(mean - G, norm_full)
    if n > 1 and norm_full > 0:
        sq, rel_var = _bias_sq(est, G, norm_full)
        bias = math.sqrt(max(0.0, sq))
        low, high = _bootstrap(est, G, norm_full, sq, np.random.default_rng([seed, 0xB007]))
        floor = math.sqrt(rel_var / n)
    else:
        bias, rel_var, low, high, floor = raw, (0.0 if n == 1 else None), raw, raw, (0.0 if n == 1 else None)
    flat_full = G.ravel()
    cosines = [_cos(est[:, i].ravel(), flat_full) for i in range(n)]
    cosines = [c for c in cosines if c is not None]
    note = {
        "deterministic": "deterministic",
        "random": f"random, {n} draws",
        "adaptive": "deterministic given K",
    }[kind]
    k = None
    if ks:
        k = ks[0] if len(set(ks)) == 1 else f"{min(ks)}-{max(ks)}"
        note = f"K = {k}" + (f", beta {np.mean(betas):.3g}" if betas else "") + " (det. given K)"
    return {
        "mode": str(tr),
        "kind": kind,
        "estimates": n,
        "rel_bias": bias,
        "rel_bias_raw": raw,
        "rel_bias_low": low,
        "rel_bias_high": high,
        "noise_floor": floor,
        "rel_variance": rel_var,
        "cosine": float(np.mean(cosines)) if cosines else None,
        "ms_per_estimate": 1000.0 * float(np.median(times)),
        "matvecs_per_sequence": float(np.mean(matvecs)) if matvecs else None,
        "k": k,
        "note": note,
    }


def _rel(d: np.ndarray, norm_full: float) -> float | None:
    return float(np.sqrt((d * d).sum())) / norm_full if norm_full > 0 else None


def _cos(a: np.ndarray, b: np.ndarray) -> float | None:
    na, nb = float(np.sqrt(a @ a)), float(np.sqrt(b @ b))
    if na == 0 or nb == 0:
        return None
    return float(np.clip((a @ b) / (na * nb), -1.0, 1.0))


def _bias_sq(est: np.ndarray, G: np.ndarray, norm_full: float) -> tuple[float, float]:
    """(r^2 - v / N, v) of samples ``est`` (batches, N, P) against ``G`` (batches, P)."""
    n = est.shape[1]
    mean = est.mean(axis=1)
    d = mean - G
    dev = est - mean[:, None, :]
    v = float((dev * dev).sum() / (n - 1)) / norm_full**2
    return float((d * d).sum()) / norm_full**2 - v / n, v


def _bootstrap(est: np.ndarray, G: np.ndarray, norm_full: float, sq: float, rng: np.random.Generator) -> tuple:
    """The percentile-bootstrap 95% interval of the relative bias (see the module docstring)."""
    n = est.shape[1]
    vals = np.empty(BOOTSTRAP)
    for r in range(BOOTSTRAP):
        idx = rng.integers(0, n, size=n)
        vals[r] = _bias_sq(est[:, idx], G, norm_full)[0] if len(set(idx.tolist())) > 1 else sq
    shift = float(vals.mean()) - sq  # the resampling's own bias (about v / N): recentre on the estimate
    lo, hi = np.percentile(vals, 2.5) - shift, np.percentile(vals, 97.5) - shift
    return math.sqrt(max(0.0, float(lo))), math.sqrt(max(0.0, float(hi)))


def measure(problem: Problem, modes: list[str], *, samples: int, seed: int) -> dict:
    """Every mode of ``modes`` on ``problem``: ``{"rows": [...], "meta": {...}}``.

    Raises EstimatorsError when the full gradient is not finite at these weights (a
    checkpoint of a run that was about to diverge).
    """
    full = parse("full")
    ws = Workspace()
    try:
        g_full = [_gradient(problem, full, b, ws) for b in range(len(problem.batches))]
        rows = [measure_mode(problem, m, g_full, samples=samples, seed=seed) for m in modes]
    except DivergedError as e:
        raise EstimatorsError(f"the gradient is not finite at these weights ({e}); pick another checkpoint or config") from None
    x = problem.batches[0][0]
    meta = {
        "weights": problem.source,
        "batches": len(problem.batches),
        "samples": samples,
        "seed": seed,
        "T": int(x.shape[0]),
        "B": int(x.shape[1]),
        "H": int(problem.params["W_hh" if "W_hh" in problem.params else "weight_hh"].shape[1]),
        "activation": problem.activation,
        "loss": problem.loss,
        "norm_full": float(np.sqrt(sum(float(g @ g) for g in g_full))),
        "dtype": "float64",
    }
    return {"meta": meta, "rows": rows}


def to_csv(result: dict) -> str:
    """The rows as CSV text, one line per mode (columns ``CSV_COLUMNS``)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()
    for r in result["rows"]:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_COLUMNS})
    return buf.getvalue()


def write_csv(result: dict, path: Path) -> None:
    try:
        Path(path).write_text(to_csv(result), encoding="utf-8")
    except OSError as e:
        raise EstimatorsError(f"--csv {path}: cannot write it ({e.strerror or e})") from None


def default_modes(cfg) -> list[str]:
    """The config's compare modes (or compare's default set) plus full, full first."""
    from bptt_cli.compare.plan import default_modes as compare_defaults

    if cfg.compare is not None and cfg.compare.modes:
        modes = list(cfg.compare.modes)
    else:
        try:
            modes = compare_defaults(cfg)
        except BpttError:  # no K in the config (full): just the config's own mode
            modes = [cfg.truncation.spec]
    return list(dict.fromkeys(["full", *modes]))


def load_problem(cfg, *, from_run: Path | None, batches: int) -> Problem:
    """The problem of ``cfg`` at its initial weights, or at the checkpoint of ``from_run``
    (whose own config ``cfg`` then is)."""
    from bptt_cli.trainer import Trainer

    trainer = Trainer(cfg)
    if from_run is None:
        return problem_from_trainer(trainer, trainer.initial_state(), batches=batches, source="initial weights")
    from bptt_cli import runs

    state = trainer.state_from_arrays(runs.load_checkpoint(from_run))
    return problem_from_trainer(trainer, state, batches=batches, source=f"checkpoint of {from_run} at step {state.step}")
