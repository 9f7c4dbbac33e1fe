"""The training loop: drives the core and a task and reports through events.

It never prints and never writes files (STYLE habit 5): ``Trainer.run`` yields one
``Event`` per optimizer update, held-out evaluation, diagnostic pass and finished step, and
the caller (``cli.py`` with ``runs.py`` and ``render.py``) decides what to keep and show.

Counters: ``step`` counts training batches (``train.steps`` of them); ``update`` counts
optimizer updates. With ``update_every: sequence`` they move together; with ``chunk`` a
batch of T steps makes one update per chunk. A run can stop only between steps, so a
checkpoint always sits on a step boundary and resuming from it is exact: training data are
a pure function of (seed, step) and nothing else carries randomness.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

from bptt_cli.config import Config, Expectation, parse_expectation
from bptt_cli.core import clipping, optim
from bptt_cli.core.bptt import Workspace, chunked_pass, loss_and_gradients
from bptt_cli.core.errors import DivergedError, InvalidInputError
from bptt_cli.core.losses import LOSSES
from bptt_cli.core.model import RNN, check_params_like, forward
from bptt_cli.core.truncation import Truncation, parse
from bptt_cli.tasks import Batch, Task, make_task


@dataclass
class Event:
    """What the loop reports: ``kind`` is update, eval, diagnostics, step, diverged or target."""

    kind: str
    data: dict[str, Any]


@dataclass
class TrainState:
    """Everything needed to continue a run exactly; saved in checkpoints."""

    params: dict[str, np.ndarray]
    optimizer: optim.Optimizer
    step: int = 0  # training batches completed
    update: int = 0  # optimizer updates completed
    h: np.ndarray | None = None  # hidden state carried across batches (stateful tasks)
    elapsed: float = 0.0  # training seconds in earlier sessions of this run
    next_diagnostics: int = 0  # the update count at which the next diagnostic pass is due
    best: dict[str, float] = field(default_factory=dict)  # best eval metric values so far
    k: int | None = None  # adaptive truncation: the K in force (None for every other mode)
    next_adapt: int = 0  # adaptive truncation: the update count at which K is re-estimated

    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"param/{k}": v for k, v in self.params.items()}
        out.update({f"optim/{k}": v for k, v in self.optimizer.state_dict().items()})
        out["step"] = np.array(self.step, dtype=np.int64)
        out["update"] = np.array(self.update, dtype=np.int64)
        out["elapsed"] = np.array(self.elapsed, dtype=np.float64)
        out["next_diagnostics"] = np.array(self.next_diagnostics, dtype=np.int64)
        for k, v in self.best.items():
            out[f"best/{k}"] = np.array(v, dtype=np.float64)
        if self.h is not None:
            out["h"] = self.h
        if self.k is not None:
            out["adapt/k"] = np.array(self.k, dtype=np.int64)
            out["adapt/next"] = np.array(self.next_adapt, dtype=np.int64)
        return out


class Trainer:
    """Builds the task, model and optimizer of a config and runs its training loop."""

    def __init__(self, cfg: Config, *, task: Task | None = None, cache_dir: Path | None = None, resume: bool = False) -> None:
        """``cache_dir``: where the text task keeps encoded corpora (None: its default).
        ``resume``: the state will come from a checkpoint (``state_from_arrays``), so
        ``model.init_from``'s file is not read or checked: the checkpoint's weights win, and
        the file may have been moved or changed since (config.yaml keeps its recorded hash)."""
        self.cfg = cfg
        self.dtype = np.dtype(cfg.model.dtype)
        self.task = task or make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=self.dtype, cache_dir=cache_dir)
        self.truncation = parse(cfg.truncation.spec)
        self.chunked = cfg.truncation.update == "chunk"
        self.target: Expectation | None = parse_expectation(cfg.train.target) if cfg.train.target else None
        # A task may hold nothing out (text with eval_fraction 0): then no evaluation runs at all.
        self.held_out: bool = getattr(self.task, "held_out", True)
        if not self.held_out and self.target is not None and self.target.stream == "eval":
            raise InvalidInputError(
                f"train.target {self.target} needs a held-out set, but task.eval_fraction is 0; use a train.* metric"
            )
        self.workspace = Workspace()
        self.cell = cfg.model.cell  # elman, gru or lstm: the engine's and the model's cell=
        if cfg.model.cell != "elman" and hasattr(self.task, "initial_params"):
            raise InvalidInputError(f"the {cfg.task.name} task fixes an Elman model's weights; use model.cell: elman")
        self._eval_batch: Batch | None = None
        self._flat_grads: optim.Flat | None = None  # the update's gradient, clipped in place
        self._beta: float | None = None  # adaptive: the decay rate of the last re-estimate, for its record
        self._init_from: dict[str, np.ndarray] | None = None  # model.init_from's weights, checked
        if cfg.model.init_from is not None and not resume:  # refused here, before a run directory is written
            self.initial_state()
        if hasattr(self.task, "initial_params"):  # the model must fit the task's fixed system
            self.task.initial_params(cfg.model.hidden, cfg.model.activation, self.dtype)
        # A gated cell with a random or adaptive mode is refused by the config itself (schema.py).

    # -- state ------------------------------------------------------------------------
    def initial_state(self, *, from_file: bool = True) -> TrainState:
        """The state before the first update: drawn weights, or ``model.init_from``'s
        (checked when the trainer is built; ``from_file=False`` keeps the drawn ones, a
        template of the shapes for reading a checkpoint)."""
        m = self.cfg.model
        params = _fresh_params(m, self.task, self.cfg.seed, self.dtype)
        task_init = getattr(self.task, "initial_params", None)
        if task_init is not None:  # a task whose model is fixed (influence): its own weights
            params = task_init(m.hidden, m.activation, self.dtype)
        if m.init_from is not None and from_file:
            if self._init_from is None:
                self._init_from = load_init_from(m.init_from, m.init_from_sha256, params)
            params = {k: v.copy() for k, v in self._init_from.items()}
        return TrainState(optim.flatten(params), self._optimizer())

    def state_from_arrays(self, arrays: dict[str, np.ndarray]) -> TrainState:
        """Rebuild a TrainState from ``TrainState.to_arrays`` output (a checkpoint).

        A checkpoint is untrusted input: every member is checked against this trainer's config
        before it is used (names, shapes, dtypes, the kind and range of each counter, the
        optimizer's slots), and anything else raises InvalidInputError naming the member.
        """
        return _StateReader(self, arrays).state()

    def _optimizer(self) -> optim.Optimizer:
        return optim.make(self.cfg.optimizer.name, **self.cfg.optimizer.hyper())

    # -- evaluation -------------------------------------------------------------------
    @property
    def eval_batch(self) -> Batch:
        if self._eval_batch is None:
            self._eval_batch = self.task.eval_batch(self.cfg.train.eval_size)
        return self._eval_batch

    def evaluate(self, params: dict) -> dict[str, float]:
        """Held-out loss and the task's metrics, from a zero initial state."""
        b = self.eval_batch
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            _, y = forward(params, b.x, activation=self.cfg.model.activation, cell=self.cell)
            loss, _ = LOSSES[self.task.loss](y, b.targets, b.mask)
        return {"loss": loss, **self.task.metrics(y, b)}

    # -- the loop ---------------------------------------------------------------------
    def run(self, state: TrainState) -> Iterator[Event]:
        """Train from ``state`` (mutated in place) to ``train.steps``, yielding events.

        Stops early with a ``diverged`` event (NaN/Inf loss or gradient; the parameters
        are those of the last finite update) or a ``target`` event (``train.target`` met).
        """
        cfg = self.cfg.train
        act, loss_kind = self.cfg.model.activation, self.task.loss
        summed = cfg.loss_reduction == "sum"
        started = time.perf_counter() - state.elapsed

        def clock() -> float:
            return time.perf_counter() - started

        for step in range(state.step, cfg.steps):
            batch = self.task.train_batch(step, cfg.batch_size)
            h0 = state.h if self.task.stateful and not self._resets(step) else None
            diagnose = bool(cfg.diagnostics_every) and state.update >= state.next_diagnostics
            diag: dict | None = None
            if diagnose:
                state.next_diagnostics = (state.update // cfg.diagnostics_every + 1) * cfg.diagnostics_every
                if self.chunked:  # the step's chunks move the weights: diagnose the ones it starts from
                    diag = self._diagnostics(state, batch, h0, step + 1)
                    if diag is not None:
                        yield Event("diagnostics", diag)
            records: list[dict] = []
            scored: list[tuple[float, float]] = []  # (loss, supervised entries) of each update
            # random_k / artbp draw from the run's seed and the step alone, so a resume is exact
            extra = {"rng": self._rng(step)} if self.truncation.random else {}
            C = self.truncation.chunk_length(batch.x.shape[0]) if self.chunked else batch.x.shape[0]
            artbp_weight = None  # artbp chunks: the supervised entries of a segment of mean length
            if self.chunked and self.truncation.mode == "artbp":
                T = batch.x.shape[0]
                artbp_weight = float(batch.mask.sum()) * min(self.truncation.mean, T) / T

            def apply(chunk: int, loss: float, grads: dict) -> None:
                if self.truncation.mode == "artbp" and self.chunked:  # its chunks are drawn per pass
                    firsts, lasts = self.workspace.chunks()
                    n = float(batch.mask[firsts[chunk] : lasts[chunk]].sum())
                else:
                    n = float(batch.mask[chunk * C : (chunk + 1) * C].sum())
                scale = n if summed else None  # loss_reduction sum: the mean's loss and gradient times n
                if artbp_weight is not None and not summed:
                    # artbp's segments are drawn: a segment's mean loss would weigh each of its losses by
                    # 1/length, which depends on the cuts and biases the estimate towards short segments;
                    # length / (mean length) weighs every loss alike, as the paper's summed losses do
                    scale = n / artbp_weight
                scored.append((loss * n if summed else loss, n))
                records.append(
                    self.apply_update(state, grads, loss=scored[-1][0], step=step + 1, chunk=chunk, clock=clock, scale=scale)
                )
                if state.k is not None:  # adaptive: the K this update's gradient was taken with
                    records[-1]["k"] = state.k
                    if self._beta is not None:
                        records[-1]["beta"], self._beta = self._beta, None

            try:
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    # The engine reports non-finite values as DivergedError; numpy's warnings would only be noise.
                    tr = self._adapt(state, batch, h0) if self.truncation.adaptive is not None else self.truncation
                    if self.chunked:
                        h_last = chunked_pass(
                            state.params, batch.x, batch.targets, batch.mask, tr, apply,
                            activation=act, loss=loss_kind, h0=h0, workspace=self.workspace, cell=self.cell, **extra,
                        )  # fmt: skip
                    else:
                        loss, grads, h_last = loss_and_gradients(
                            state.params, batch.x, batch.targets, batch.mask, tr,
                            activation=act, loss=loss_kind, h0=h0, workspace=self.workspace, cell=self.cell, **extra,
                        )  # fmt: skip
                        if diagnose:  # from this step's forward pass and gradient, before its update
                            diag = self._diagnostics(state, batch, h0, step + 1, grads=grads)
                        apply(0, loss, grads)
            except DivergedError as e:
                for r in records:
                    yield Event("update", r)
                yield Event("diverged", {"step": step + 1, "update": state.update + 1, "what": e.what, "time": clock()})
                state.elapsed = clock()
                return
            if diag is not None and not self.chunked:
                yield Event("diagnostics", diag)
            for r in records:
                yield Event("update", r)
            state.step = step + 1
            if self.task.stateful:
                state.h = h_last
            # The step's loss is that of the whole batch: its updates' losses weighted by their
            # supervised entries (several chunk updates per step under update_every: chunk),
            # or their sum under loss_reduction: sum.
            step_loss = sum(l for l, _ in scored) if summed else sum(l * n for l, n in scored) / sum(n for _, n in scored)
            train_now = {**records[-1], "loss": step_loss}
            last = state.step == cfg.steps
            met = False
            if self.held_out and ((cfg.eval_every and state.step % cfg.eval_every == 0) or last):
                metrics = self.evaluate(state.params)
                self._track_best(state, metrics)
                yield Event("eval", {"step": state.step, "update": state.update, **metrics, "time": clock()})
                met = self._target_met(metrics, train_now)
            elif self.target is not None and self.target.metric.startswith("train."):
                met = self._target_met({}, train_now)
            if met:
                yield Event("target", {"step": state.step, "update": state.update, "target": str(self.target)})
            state.elapsed = clock()
            # The step's boundary comes last: a stop or checkpoint taken here includes its evaluation.
            yield Event("step", {"step": state.step, "update": state.update, "loss": step_loss})
            if met:
                return

    def apply_update(
        self, state: TrainState, grads: dict, *, loss: float, step: int, chunk: int, clock, scale: float | None = None
    ) -> dict:
        """Clip ``grads``, update ``state``'s parameters with them and count the update; its record.

        The gradient is copied into one flat buffer kept by the trainer, and clipped and applied
        there in place (``optim.py``): the hot path allocates no per-parameter temporaries.
        ``scale`` multiplies the gradient first (``train.loss_reduction: sum``: the number of
        supervised entries, turning the engine's mean into the sum before clipping).
        """
        flat = self._flat_grads
        if flat is None:  # the layout is the config's, the same for every state of this trainer
            flat = self._flat_grads = optim.Flat(state.params)
        project = getattr(self.task, "project_gradient", None)
        if project is not None:  # a task that trains some directions only (influence: theta)
            grads = project(grads)
        flat.assign(grads)
        if scale is not None:
            for buf, _ in flat.groups:
                buf *= buf.dtype.type(scale)
        rec = clipping.clip_in_place(flat, self.cfg.clip.mode, self.cfg.clip.threshold)
        state.optimizer.step(state.params, flat.arrays)
        state.update += 1
        return {
            "step": step,
            "update": state.update,
            "chunk": chunk,
            "loss": loss,
            "grad_norm": rec.norm_before,
            "clipped_norm": rec.norm_after,
            "clipped": rec.clipped,
            "grad_norms": rec.param_norms,
            "lr": state.optimizer.lr,
            "time": clock(),
        }

    def _resets(self, step: int) -> bool:
        """Whether the task zeroes the carried state before step ``step`` (text's reset_state_at_end)."""
        resets = getattr(self.task, "resets_state", None)
        return resets is not None and resets(step, self.cfg.train.batch_size)

    def _track_best(self, state: TrainState, metrics: dict[str, float]) -> None:
        for k, v in metrics.items():
            lower_better = k in ("loss", "bpc", "error_rate")
            old = state.best.get(k)
            if old is None or (v < old if lower_better else v > old):
                state.best[k] = float(v)

    def _target_met(self, eval_metrics: dict, train_metrics: dict) -> bool:
        t = self.target
        if t is None:
            return False
        scope, _, key = t.metric.partition(".")
        source = eval_metrics if scope == "eval" else train_metrics
        value = source.get(key)
        return isinstance(value, (int, float)) and t.check(float(value))

    def _rng(self, step: int) -> np.random.Generator:
        """The random modes' generator for training batch ``step`` (0-based): seed and step only."""
        return np.random.default_rng([self.cfg.seed, step, 0x7B77])

    def _adapt(self, state: TrainState, batch: Batch, h0) -> Truncation:
        """``adaptive``: the k_truncated:K in force, K re-estimated from this batch's lag profile
        at these weights every ``truncation.adapt_every`` updates (and at the first)."""
        if state.k is None or state.update >= state.next_adapt:
            from bptt_cli.core import adaptive

            delta, kmin, kmax = self.truncation.adaptive
            K, beta = adaptive.adapt(
                state.params, batch.x, batch.targets, batch.mask, activation=self.cfg.model.activation,
                loss=self.task.loss, delta=delta, kmin=kmin, kmax=kmax, h0=h0,
            )  # fmt: skip
            every = self.cfg.truncation.adapt_every
            state.k, state.next_adapt = int(K), (state.update // every + 1) * every
            self._beta = None if beta is None else float(beta)
        return self.truncation.with_k(state.k)

    def _diagnostics(self, state: TrainState, batch: Batch, h0, step: int, grads: dict | None = None) -> dict | None:
        """Gradient flow by lag, truncation bias and spectrum on this batch and these weights.

        ``grads``: the training step's gradient, whose forward pass is the workspace's
        (``update_every: sequence``); without it, the mode's gradient is computed here first.
        The flow and the spectrum read that forward pass's hidden states (the flow keeps its
        work buffers in the same workspace), the bias reuses the gradient and adds a full-BPTT
        one unless the mode already is full. Reads the
        parameters and batch only (no RNG), so a run with diagnostics on follows exactly the
        trajectory of the same run with them off. None when a gradient is not finite: the
        same weights blow up in the training step, which reports it.
        """
        from bptt_cli.core import diagnostics as diag

        act, loss_kind = self.cfg.model.activation, self.task.loss
        cell = self.cfg.model.cell
        args = (state.params, batch.x, batch.targets, batch.mask)
        kw = {"activation": act, "loss": loss_kind, "h0": h0}
        try:
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                tr = self.truncation if state.k is None else self.truncation.with_k(state.k)
                if grads is None:  # a random mode draws from a generator of its own: the run's is untouched
                    extra = {"rng": self._rng(step - 1)} if tr.random else {}
                    _, grads, _ = loss_and_gradients(*args, tr, **kw, workspace=self.workspace, cell=cell, **extra)
                hs = self.workspace.states()  # (T+1, B, H); the LSTM's (T+1, 2, B, H)
                flow = diag.gradient_flow(
                    *args, **kw, max_lag=self.cfg.diagnostics.max_lag, hs=hs, workspace=self.workspace, cell=cell
                )
                spec = diag.spectrum(state.params, hs=hs[1:], activation=act, cell=cell)
                gates = diag.gates(state.params, batch.x, cell=cell, h0=h0)
                if gates is not None:  # next to the tanh saturation: the forget (update) gates'
                    spec.update(gate=gates["gate"], gate_high=gates["high"], gate_low=gates["low"])
                # Last: the full gradient it may compute overwrites the workspace's states.
                if tr.random:  # no fixed window to reduce to full: always against a full gradient
                    _, g_full, _ = loss_and_gradients(*args, "full", **kw, workspace=self.workspace, cell=cell)
                    bias = diag.truncation_bias({k: grads[k] for k in g_full}, g_full)
                    bias["mode"] = str(tr)
                else:
                    bias = diag.bias_for_mode(*args, tr, **kw, grads=grads, workspace=self.workspace, cell=cell)
        except DivergedError:
            return None
        return {"step": step, "update": state.update, "flow": flow, "bias": bias, "spectrum": spec}


CHECKPOINT = "checkpoint.npz"  # the file runs.py keeps the arrays in, named in messages


class _StateReader:
    """``Trainer.state_from_arrays``: each member read once, checked, or refused by name."""

    def __init__(self, trainer: Trainer, arrays: dict) -> None:
        self.trainer, self.arrays = trainer, arrays
        self.read: set[str] = set()

    def member(self, name: str, what: str) -> np.ndarray:
        if name not in self.arrays:
            raise InvalidInputError(f"{CHECKPOINT} is missing {name!r} ({what})")
        self.read.add(name)
        return np.asarray(self.arrays[name])

    def refuse(self, name: str, expected: str, a: np.ndarray) -> InvalidInputError:
        got = f"{a.dtype} {a.item()!r}" if a.shape == () and a.dtype.kind in "biuf" else f"shape {a.shape}, dtype {a.dtype}"
        return InvalidInputError(f"{CHECKPOINT} member {name!r} must be {expected}, got {got}")

    def array(self, name: str, like: np.ndarray, what: str) -> np.ndarray:
        a = self.member(name, what)
        if a.shape != like.shape or a.dtype != like.dtype:
            raise InvalidInputError(
                f"{CHECKPOINT} member {name!r} does not match the run's config: expected shape {like.shape} "
                f"and dtype {like.dtype} ({what}), got shape {a.shape}, dtype {a.dtype}"
            )
        return a

    def counter(self, name: str, what: str) -> int:
        a = self.member(name, what)
        if a.shape != () or not np.issubdtype(a.dtype, np.integer):
            raise self.refuse(name, f"an integer ({what})", a)
        if int(a) < 0:
            raise InvalidInputError(f"{CHECKPOINT} member {name!r} is {int(a)}; counters cannot be negative ({what})")
        return int(a)

    def number(self, name: str, what: str) -> float:
        a = self.member(name, what)
        if a.shape != () or not np.issubdtype(a.dtype, np.floating):
            raise self.refuse(name, f"a float ({what})", a)
        return float(a)

    def state(self) -> TrainState:
        tr, arrays = self.trainer, self.arrays
        steps = tr.cfg.train.steps
        fresh = tr.initial_state(from_file=False)  # shapes and a blank optimizer; a resume reads no init_from
        params = {k: self.array(f"param/{k}", v, f"parameter {k}") for k, v in fresh.params.items()}
        step = self.counter("step", "training batches completed")
        if step > steps:
            raise InvalidInputError(
                f"{CHECKPOINT} member 'step': the checkpoint is at step {step:,}, beyond the run's "
                f"train.steps = {steps:,} (it must lie in [0, {steps:,}]; train.steps cannot be lowered below it)"
            )
        update = self.counter("update", "optimizer updates completed")
        elapsed = self.number("elapsed", "training seconds so far")
        if not 0 <= elapsed < float("inf"):
            raise InvalidInputError(f"{CHECKPOINT} member 'elapsed' must be a finite number of seconds >= 0, got {elapsed!r}")
        next_diagnostics = self.counter("next_diagnostics", "the update of the next diagnostic pass")

        opt = fresh.optimizer
        t = self.counter("optim/t", "the optimizer's update count")
        if t != update:
            raise InvalidInputError(
                f"{CHECKPOINT} member 'optim/t' must equal 'update' = {update:,} (one optimizer step per update), got {t:,}"
            )
        slots = {f"optim/{s}/{k}": v for s in opt.active_slots() for k, v in fresh.params.items()}
        present = [n for n in slots if n in arrays]
        if present or (slots and t > 0):  # before the first update the optimizer has no state yet
            for n, v in slots.items():
                self.array(n, v, f"the {opt.name} optimizer's state after {t:,} updates")
        opt.load_state_dict({"t": np.int64(t), **{n[len("optim/") :]: arrays[n] for n in present}})

        h = None
        if "h" in arrays:
            B, H = tr.cfg.train.batch_size, tr.cfg.model.hidden
            if not tr.task.stateful:
                raise InvalidInputError(f"{CHECKPOINT} has a hidden state 'h' but the {tr.cfg.task.name} task carries none")
            shape = (2, B, H) if tr.cell == "lstm" else (B, H)  # the LSTM carries (h, c)
            what = "(B, H)" if len(shape) == 2 else "(2, B, H): the LSTM's (h, c)"
            h = self.array("h", np.empty(shape, tr.dtype), f"the hidden state carried across batches {what}")
            if not np.isfinite(h).all():
                raise InvalidInputError(f"{CHECKPOINT} member 'h' (the carried hidden state) contains NaN or Inf")
            h = h.copy()
        elif tr.task.stateful and step > 0:
            raise InvalidInputError(
                f"{CHECKPOINT} is missing 'h' (the hidden state the {tr.cfg.task.name} task carries across batches)"
            )

        k, next_adapt = None, 0
        if tr.truncation.adaptive is not None and ("adapt/k" in arrays or step > 0):
            k = self.counter("adapt/k", "the adaptive K in force")
            next_adapt = self.counter("adapt/next", "the update of the next re-estimate of K")
        best = {}
        for name in arrays:
            if name.startswith("best/") and len(name) > len("best/"):
                best[name[len("best/") :]] = self.number(name, "the best value of an eval metric")
        unknown = [n for n in arrays if n not in self.read and n[len("best/") :] not in best]
        if unknown:
            raise InvalidInputError(f"{CHECKPOINT} has a member {unknown[0]!r} that no checkpoint of this run has")
        return TrainState(
            params=optim.flatten(params),
            optimizer=opt,
            step=step,
            update=update,
            h=h,
            elapsed=elapsed,
            next_diagnostics=next_diagnostics,
            best=best,
            k=k,
            next_adapt=next_adapt,
        )


def load_init_from(path: str, sha256: str | None, like: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``model.init_from``'s weights: an .npz of the parameter names, or a run directory's
    checkpoint (its ``param/*`` members), read without pickles and checked against ``like``
    (names, shapes, dtype) and against the sha256 recorded in the config."""
    from bptt_cli import safeio
    from bptt_cli.config.schema import _file_sha256, init_file

    file = init_file(Path(path))
    where = f"model.init_from: {file}"
    got = _file_sha256(file)
    if sha256 is not None and got != sha256:
        raise InvalidInputError(f"{where} changed since the config recorded it ({sha256}, now {got}); restore it or drop init_from_sha256")
    try:
        arrays = safeio.load_npz(file, cap=64 * sum(v.nbytes for v in like.values()) + (1 << 20))
    except safeio.UnsafeFile as e:
        raise InvalidInputError(f"{where}: {str(e).removeprefix(str(file)).lstrip(': ')}") from None
    if any(k.startswith("param/") for k in arrays):  # a run's checkpoint: its parameters only
        arrays = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
    return check_params_like(arrays, like, where)


def gradcheck_slice(cfg: Config, *, max_steps: int = 12, max_batch: int = 4):
    """A small float64 problem from the configured task and model, for ``bptt gradcheck``.

    The last ``max_steps`` steps of the first training batch (the end keeps the loss of
    tasks that score only their final step), at most ``max_batch`` sequences, and freshly
    initialised weights of the configured cell, shape, activation and init.
    Returns (params, x, targets, mask, activation, loss); the cell is ``cfg.model.cell``.
    """
    task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=np.float64)
    b = task.train_batch(0, min(cfg.train.batch_size, max_batch))
    T = b.x.shape[0]
    start = max(0, T - max_steps)
    x, targets, mask = b.x[start:], b.targets[start:], b.mask[start:]
    if not mask.any():
        mask = np.ones_like(mask)  # a slice with no scored step still has gradients worth checking
    m = cfg.model
    return _fresh_params(m, task, cfg.seed, np.float64), x, targets, mask, m.activation, task.loss


def _fresh_params(m, task: Task, seed: int, dtype) -> dict[str, np.ndarray]:
    """Initial weights of the configured cell (``RNN.init``: the Elman init, or PyTorch's layout
    and initialisation for gru and lstm) for ``task``'s input and output sizes."""
    return RNN.init(
        task.n_in, m.hidden, task.n_out,
        activation=m.activation, init=m.init, spectral_radius=m.spectral_radius, seed=seed, dtype=dtype,
        init_params=m.init_params.to_core(), cell=m.cell, forget_bias=m.forget_bias,
    ).params  # fmt: skip
