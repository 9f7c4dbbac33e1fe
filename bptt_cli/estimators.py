r"""``bptt estimators``: bias, variance and cost of every gradient estimator on the same batches.

A truncation mode is an estimator g of the full-BPTT gradient g_full of a batch. On a fixed
set of batches (the config's first ``batches`` training batches) and fixed weights (the
config's initial ones or a run's checkpoint), every mode draws ``samples`` estimates per
batch (one for a deterministic mode: its estimate never changes) and is scored against
g_full of the same batch. Gradients of all batches are concatenated into one vector, so a
batch with a large gradient counts for more; every number is in float64.

    relative bias        ||mean_i g_i - g_full|| / ||g_full||
    95% interval         percentile bootstrap of the bias over the N samples (B = 200 resamples)
    noise floor          sqrt(rel. variance / N): what an unbiased estimator's measured bias
                         is on average (||mean - g_full||^2 has expectation bias^2 + var / N)
    relative variance    sum_i ||g_i - mean||^2 / (N - 1) / ||g_full||^2
    cosine               mean over samples of cos(g_i, g_full): what one update sees
    ms / estimate        median wall time of one gradient (forward + backward) per batch
    matvecs / sequence   W_hh products per sequence: T in the forward pass plus the backward
                         pass's adjoint steps, counted from the windows (below)

Backward products: a window f .. e on a chain needs e - f products W_hh^T delta (the last
adjoint, dL/dh_{f-1}, is dropped). Chunks with W == C share one chain (T - chunks products),
overlapping windows (k_truncated, tbptt K2 > K1) each walk their own, so k_truncated:K needs
sum_t min(t, K) ~ K T. A random mode is counted from its drawn windows when the engine
exposes them (``Truncation.draw_starts``), else from its mean; the adaptive mode as the
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
    "mode", "kind", "estimates", "rel_bias", "rel_bias_low", "rel_bias_high", "noise_floor", "rel_variance",
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
    return Problem(params, out, h0, trainer.cfg.model.activation, trainer.task.loss, source, project)


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


def _random_matvecs(tr: Truncation, T: int, rng: np.random.Generator) -> int | None:
    draw = getattr(tr, "draw_starts", None)
    if callable(draw):
        return backward_matvecs(tr, T, draw(T, rng))
    mean = getattr(tr, "k", None)
    if mean is None:
        return None
    if tr.mode == "artbp":  # one chain cut at the drawn truncation points: at most T - 1
        return T - 1
    t = np.arange(T)
    return int(np.minimum(t, mean).sum())  # random_k: about a window of its mean per loss


def _gradient(problem: Problem, tr: Truncation, batch: int, ws: Workspace, rng=None) -> np.ndarray:
    x, targets, mask = problem.batches[batch]
    kw: dict[str, Any] = {"activation": problem.activation, "loss": problem.loss, "h0": problem.h0, "workspace": ws}
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
                m = _random_matvecs(tr, T, np.random.default_rng([seed, b, i, 0xE57]))
            else:
                m = backward_matvecs(run_tr, T)
            if m is not None:
                matvecs.append(T + m)
    G = np.stack(g_full)  # (batches, P)
    norm_full = float(np.sqrt((G * G).sum()))
    mean = est.mean(axis=1)  # (batches, P)
    bias = _rel(mean - G, norm_full)
    if n > 1:
        dev = est - mean[:, None, :]
        rel_var = float((dev * dev).sum() / (n - 1)) / norm_full**2 if norm_full > 0 else None
        low, high = _bootstrap(est, G, norm_full, np.random.default_rng([seed, 0xB007]))
        floor = math.sqrt(rel_var / n) if rel_var is not None else None
    else:
        rel_var, low, high, floor = 0.0, bias, bias, 0.0
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
        note += f"; K = {k}" + (f", beta = {np.mean(betas):.3g}" if betas else "")
    return {
        "mode": str(tr),
        "kind": kind,
        "estimates": n,
        "rel_bias": bias,
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


def _bootstrap(est: np.ndarray, G: np.ndarray, norm_full: float, rng: np.random.Generator) -> tuple:
    """2.5% and 97.5% percentiles of the relative bias over resampled sample sets."""
    if norm_full == 0:
        return None, None
    n = est.shape[1]
    vals = np.empty(BOOTSTRAP)
    for r in range(BOOTSTRAP):
        idx = rng.integers(0, n, size=n)
        d = est[:, idx].mean(axis=1) - G
        vals[r] = np.sqrt((d * d).sum()) / norm_full
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


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
        "H": int(problem.params["W_hh"].shape[0]),
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
