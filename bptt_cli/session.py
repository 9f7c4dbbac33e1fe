"""One run end to end: record the config, drive the trainer, keep every logged step.

``execute`` is what ``bptt train`` and every ``bptt compare`` variant run. It writes the
resolved config before training starts, appends each event to the run's logs as it comes,
checkpoints on step boundaries, and writes ``summary.json`` in ``finally`` whatever ends the
run: completion, divergence, a stop request (Ctrl-C, SIGTERM), or an unexpected error.
It never prints; ``on_event`` lets the caller show progress.

One process writes a run at a time (``runs.RunLock``, taken before anything is written). A
resume checks what it continues: the checkpoint's counters lie within the run's steps, the
config is the one the run started with (only ``train.steps`` may grow; ``train.threads`` and
``tracking`` may change: how fast and where to, not what) and the task's data are the same (a
content fingerprint recorded at the start). A completed run resumed with more steps is
extended: it goes on exactly as a run configured with those steps from the start would
(``resume_config`` checks the overrides, ``_extend`` undoes what ending early left behind).

Tracking (``bptt_cli.tracking``) is one more consumer of what the loop reports: each record
written to the logs is also handed to it, and summary.json's ``tracking`` says what it did.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bptt_cli import runs, threads, tracking
from bptt_cli.config import Config, Expectation, dump_yaml, from_dict, load_config, to_dict
from bptt_cli.core.errors import BpttError
from bptt_cli.trainer import Event, Trainer


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def execute(
    cfg: Config,
    run_dir: Path,
    *,
    resume: bool = False,
    expect: tuple[Expectation, ...] = (),
    stop: Callable[[], bool] = lambda: False,
    on_event: Callable[[Event], None] | None = None,
    trainer: Trainer | None = None,
    thread_budget: int | None = None,
    cache_dir: Path | None = None,
) -> dict:
    """Train ``cfg`` in ``run_dir`` (already created, or an existing run when ``resume``).

    Returns the summary that was written. ``stop()`` is polled after every step; when it
    says so the run checkpoints and ends ``interrupted``. A KeyboardInterrupt raised
    mid-step also ends ``interrupted`` (the logs hold every update that finished).
    BLAS threads are limited while the trainer runs, to ``cfg.train.threads`` or what
    ``bptt_cli.threads`` picks; ``thread_budget`` caps that pick (a compare worker's share).
    ``runs.RunBusy`` when another process is writing ``run_dir``. ``cache_dir``: the text
    task's cache of encoded corpora, when the trainer is built here.
    """
    with runs.RunLock(run_dir):
        # A resumed run takes its weights from its checkpoint, so model.init_from's file need not exist any more.
        trainer = trainer or Trainer(cfg, cache_dir=cache_dir, resume=resume)
        return _execute(cfg, Path(run_dir), resume=resume, expect=expect, stop=stop, on_event=on_event, trainer=trainer, thread_budget=thread_budget)


def _execute(cfg, run_dir, *, resume, expect, stop, on_event, trainer, thread_budget) -> dict:
    trainer = trainer or Trainer(cfg, resume=resume)
    data_fingerprint = _data_fingerprint(trainer.task)
    choice = threads.choose_for(cfg, budget=thread_budget)
    writer = runs.RunWriter(run_dir)
    last_update: dict = {}
    last_eval: dict = {}
    previous: dict = {}
    if resume:
        previous, _ = runs.read_summary(run_dir)
        extending = previous.get("status") == "completed"
        if extending:
            _check_extension(cfg, run_dir, previous)
        _check_same_experiment(cfg, run_dir, previous, data_fingerprint)
        runs.remove_temporaries(run_dir)
        arrays = runs.load_checkpoint(run_dir, cap=_checkpoint_cap(trainer))
        state = trainer.state_from_arrays(arrays)
        runs.truncate_logs(run_dir, state.step)
        if extending:
            _extend(cfg, run_dir, state, trainer)
        text = dump_yaml(_with_absolute_path(cfg))
        try:
            same = (run_dir / "config.yaml").read_text(encoding="utf-8") == text
        except (OSError, UnicodeDecodeError):
            same = False
        if not same:  # more steps, other threads or tracking: later sessions read these
            writer.write_config(text)
        # The summary's final metrics come from the last logged lines if no new ones arrive.
        last_update = runs.last_record(run_dir / "metrics.jsonl")
        last_eval = runs.last_record(run_dir / "eval.jsonl")
        started = previous.get("started", _now())
        resumed = previous.get("resumed", 0) + 1
    else:
        # Checked under the lock: two new runs claiming one empty folder at once, or a retry
        # of a run that already wrote, must not write into each other's logs.
        taken = sorted(p.name for p in run_dir.iterdir() if p.name != runs.LOCK) if run_dir.is_dir() else []
        if taken:
            raise runs.RunError(
                f"{run_dir} already holds a run ({', '.join(taken[:3])}); pick a new folder, or use --resume {run_dir} to continue it"
            )
        writer.write_config(dump_yaml(_with_absolute_path(cfg)))
        state = trainer.initial_state()
        writer.checkpoint(state.to_arrays())  # so even a run killed in its first steps can resume
        started, resumed = _now(), 0

    summary: dict = {
        "status": "running",
        "name": cfg.name,
        "run_dir": str(run_dir),
        "task": cfg.task.name,
        "cell": cfg.model.cell,
        "truncation": cfg.truncation.spec,
        "update_every": cfg.truncation.update,
        "clip": {"mode": cfg.clip.mode, "threshold": cfg.clip.threshold},
        "optimizer": cfg.optimizer.name,
        "seed": cfg.seed,
        "steps": cfg.train.steps,
        "batch_size": cfg.train.batch_size,
        "chance": trainer.task.chance(),
        "started": started,
        "resumed": resumed,
        "env": runs.environment(),
        "threads": choice.to_dict(),
        "data": data_fingerprint,
        "config_digest": _config_digest(cfg),
    }
    if not trainer.held_out:  # said once in the summary, so an empty eval log is not taken for a failure
        summary["evaluation"] = "none: task.eval_fraction is 0, nothing is held out"
    adaptive = trainer.truncation.adaptive
    if adaptive is not None:  # the K it may pick: [KMIN, KMAX], KMAX null = up to T-1
        summary["k_range"] = [adaptive[1], adaptive[2]]
    writer.summary({**summary, "steps_done": state.step, "updates": state.update})
    tracker, why = _start_tracking(cfg, run_dir, state.update if resume else None, previous.get("tracking"))
    if why:
        summary["tracking"] = {"error": why}
    last_diag: dict = {}
    ending: dict = {}
    session_start = time.perf_counter()
    updates_at_start = state.update
    status = "failed"
    on_boundary = False
    try:
        for ev in threads.limited(trainer.run(state), choice):
            if ev.kind == "update":
                last_update = dict(ev.data)
                if ev.data["update"] % cfg.train.log_every == 0:
                    writer.append("metrics", ev.data)
                    if tracker is not None:
                        tracker.record("metrics", ev.data)
            elif ev.kind == "eval":
                last_eval = ev.data
                writer.append("eval", ev.data)
                if tracker is not None:
                    tracker.record("eval", ev.data)
            elif ev.kind == "diagnostics":
                last_diag = ev.data
                writer.append("diagnostics", ev.data)
                if tracker is not None:
                    tracker.record("diagnostics", ev.data)
            elif ev.kind in ("diverged", "target"):
                ending[ev.kind] = ev.data
            if on_event is not None:
                on_event(ev)
            if ev.kind == "step":
                last_update["loss"] = ev.data["loss"]  # train.loss: the whole step's, not its last chunk's
                if state.step % cfg.train.checkpoint_every == 0:
                    writer.checkpoint(state.to_arrays())
                if stop():
                    status, on_boundary = "interrupted", True
                    break
        else:
            status = "diverged" if "diverged" in ending else "completed"
            on_boundary = status == "completed"
    except KeyboardInterrupt:
        status = "interrupted"
    except BaseException as e:
        status = "failed"
        summary["error"] = f"{type(e).__name__}: {e}"
        if not isinstance(e, BpttError):
            runs.write_error_log(run_dir, traceback.format_exc())
        raise
    finally:
        failing = status == "failed"  # an error is on its way up: the writes below are best effort
        late_error: runs.RunWriteError | None = None
        if on_boundary:
            # The state sits between two steps, so it is exactly resumable. Diverged,
            # failed and hard-interrupted runs keep their last periodic checkpoint.
            try:
                writer.checkpoint(state.to_arrays())
            except runs.RunWriteError as e:  # the run ends failed, and its summary says why
                status, summary["error"], late_error = "failed", str(e), e
        session = time.perf_counter() - session_start
        summary.update(
            status=status,
            steps_done=state.step,
            updates=state.update,
            sequences=state.step * cfg.train.batch_size,
            final=_final(last_update, last_eval),
            best={f"eval.{k}": v for k, v in state.best.items()},
            diverged_at=ending.get("diverged"),
            target_reached=ending.get("target"),
            wall_time=state.elapsed,
            updates_per_second=(state.update - updates_at_start) / session if session > 0 else None,
            finished=_now(),
        )
        if last_update.get("k") is not None:  # adaptive: the K in force at the end
            summary["k_last"] = last_update["k"]
        if last_diag:
            summary["diagnostics"] = _diag_summary(last_diag)
        if expect:
            summary["expectations"] = check_expectations(expect, summary["final"])
        written = False
        try:
            writer.summary(summary)
            written = True
        except runs.RunWriteError:
            if not (failing or late_error):
                raise
        finally:
            writer.close()
            if tracker is not None:
                # After the summary is on disk (the plot sent along reads the final files); a
                # backend still sending holds the end up for at most tracking.WAIT seconds.
                summary["tracking"] = tracker.finish(summary)
                if written:
                    try:
                        writer.summary(summary)
                    except runs.RunWriteError:
                        pass
    if late_error is not None:
        raise late_error
    return summary


def _data_fingerprint(task) -> str | None:
    """A content hash of the task's data (the text task's file), so a resume can tell that the
    data changed; None for generated tasks, which are a function of the config."""
    fp = getattr(task, "fingerprint", None)
    value = fp() if callable(fp) else None
    return None if value is None else str(value)


def _config_digest(cfg: Config) -> str:
    """What must not change between a run's sessions: the config but train.steps (which may
    grow) and task.path (where the data live; their content is checked by fingerprint)."""
    data = to_dict(cfg)
    data["train"].pop("steps", None)
    data["train"].pop("threads", None)  # how fast it runs, not what it computes
    data.pop("tracking", None)  # where its records are also sent, not what it computes
    data["task"].pop("path", None)
    return "sha256:" + hashlib.sha256(json.dumps(runs._jsonable(data), sort_keys=True).encode()).hexdigest()


RESUME_MAY_CHANGE = ("train.steps", "train.threads", "tracking")  # tracking: any key under it


def resume_config(run_dir: Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """The config to resume ``run_dir`` with: its config.yaml with ``overrides`` applied, which
    may only give more train.steps (extending the run), other train.threads or tracking.
    RunError listing what changed and what may, otherwise."""
    path = Path(run_dir) / "config.yaml"
    recorded = load_config(path)
    if not overrides:
        return recorded
    cfg = load_config(path, list(overrides))
    before, after = runs.flatten(to_dict(recorded)), runs.flatten(to_dict(cfg))
    changed = [k for k in dict.fromkeys([*before, *after]) if before.get(k, _MISSING) != after.get(k, _MISSING)]
    refused = [k for k in changed if k not in RESUME_MAY_CHANGE and not k.startswith("tracking.")]
    if refused:
        what = ", ".join(f"{k} ({before.get(k)!r} -> {after.get(k)!r})" for k in refused[:5])
        raise runs.RunError(
            f"--resume may change only train.steps (to more steps), train.threads and tracking.*; --set changed {what}. "
            "Start a new run for other settings"
        )
    if cfg.train.steps < recorded.train.steps:
        raise runs.RunError(
            f"train.steps can only grow on --resume: the run has {recorded.train.steps:,}, --set gives {cfg.train.steps:,}"
        )
    return cfg


_MISSING = object()


def _check_extension(cfg: Config, run_dir: Path, previous: dict) -> None:
    """A completed run goes on only with more steps, and only when it ran all of its steps."""
    steps = previous.get("steps")
    if not isinstance(steps, int) or cfg.train.steps <= steps:
        raise runs.RunError(
            f"{run_dir} already completed ({previous.get('steps_done')}/{steps} steps); nothing to resume. "
            f"To extend it: bptt train --resume {run_dir} --set train.steps=N with N > {steps}"
        )
    if previous.get("target_reached"):
        raise runs.RunError(
            f"{run_dir} stopped early at its target ({(previous['target_reached'] or {}).get('target')}) at step "
            f"{previous.get('steps_done')}; with more steps it stops at the same point. Start a new run without train.target"
        )


def _extend(cfg: Config, run_dir: Path, state, trainer: Trainer) -> None:
    """Make a completed run's state that of a run configured with ``cfg.train.steps`` from the
    start at the same step. The two differ in one thing only: a run evaluates at its last step
    also off the eval_every schedule; that evaluation (a line of eval.jsonl, and the best
    values it may have set) did not happen in the longer run, so it goes."""
    every = cfg.train.eval_every
    if every and state.step % every == 0:
        return
    path = run_dir / "eval.jsonl"
    records, _ = runs.read_jsonl(path)
    kept = [r for r in records if r["step"] != state.step]
    try:
        runs.atomic_write(path, "".join(runs.dumps(r) + "\n" for r in kept).encode())
    except OSError as e:
        raise runs.RunError(f"cannot rewrite {path} ({e.strerror or e})") from None
    state.best = {}
    for r in kept:  # the best values as the longer run tracked them, in the same order
        metrics = {k: v for k, v in r.items() if k not in ("step", "update", "time") and isinstance(v, (int, float))}
        trainer._track_best(state, metrics)


def _start_tracking(cfg: Config, run_dir: Path, resume_update: int | None, previous: dict | None):
    """(the run's Tracker or None, why not when it could not even be set up: the run goes on)."""
    if not cfg.tracking.enabled:
        return None, None
    try:
        return tracking.start(to_dict(cfg), run_dir, resume_update=resume_update, previous=previous or {}), None
    except Exception as e:
        return None, f"{type(e).__name__}: {e}"


def _with_absolute_path(cfg: Config) -> Config:
    """The config as recorded in the run: a relative task.path made absolute, so a resume from
    another folder reads the same file."""
    path = cfg.task.params.get("path")
    if not isinstance(path, str) or Path(path).is_absolute():
        return cfg
    data = to_dict(cfg)
    data["task"]["path"] = str(Path(path).resolve())
    return from_dict(data)


def _check_same_experiment(cfg: Config, run_dir: Path, previous: dict, fingerprint: str | None) -> None:
    recorded = previous.get("config_digest")
    if recorded and recorded != _config_digest(cfg):
        raise runs.RunError(
            f"{run_dir / 'config.yaml'} was changed since the run started; only train.steps may change "
            "on resume. Start a new run for other settings"
        )
    data = previous.get("data")
    if data and data != fingerprint:
        where = cfg.task.params.get("path")
        raise runs.RunError(
            f"the task's data changed since the run started ({where or 'the task data'} has other content now); "
            "resuming would continue a different experiment. Restore the file or start a new run"
        )


def _checkpoint_cap(trainer: Trainer) -> int:
    """Bytes a checkpoint of this config can need: parameters, up to four optimizer slots per
    parameter, the carried hidden state, plus room for counters. Anything above is refused
    before it is unpacked."""
    cfg = trainer.cfg
    item = trainer.dtype.itemsize
    n_in, n_out, h = trainer.task.n_in, trainer.task.n_out, cfg.model.hidden
    cell = getattr(cfg.model, "cell", "elman")
    gates = {"gru": 3, "lstm": 4}.get(cell, 1)  # a gated cell's input/recurrent blocks: one per gate (core.gated.GATES)
    params = (gates * h * (n_in + h + 2) + h * n_out + n_out) * max(item, 8)  # Elman: W_xh, W_hh, b_h (+1 h of slack)
    carried = (2 if cell == "lstm" else 1) * cfg.train.batch_size * h * max(item, 8)  # the LSTM carries (h, c)
    return 5 * params + carried + (1 << 16)


def _final(last_update: dict, last_eval: dict) -> dict:
    out = {}
    for k, v in last_update.items():
        # beta is in an update's record only when K was re-estimated there: not a last value
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "chunk", "time", "beta"):
            out[f"train.{k}"] = v
    for k, v in last_eval.items():
        if isinstance(v, (int, float)) and k not in ("step", "update", "time"):
            out[f"eval.{k}"] = v
    return out


def _diag_summary(d: dict) -> dict:
    """The last diagnostic pass in brief; the gated cells' keys only when the pass logged them
    (an Elman run's summary keeps its earlier keys and no more)."""
    flow, bias, spec = d.get("flow") or {}, d.get("bias") or {}, d.get("spectrum") or {}
    out = {
        "step": d.get("step"),
        "decay_per_step": flow.get("decay_per_step"),
        "bias_cosine": bias.get("cosine"),
        "bias_rel_error": bias.get("rel_error"),
        "spectral_radius": spec.get("spectral_radius"),
        "saturation": spec.get("saturated_share"),
    }
    if "decay_per_step_c" in flow:  # the LSTM's cell state c
        out["decay_per_step_c"] = flow["decay_per_step_c"]
    for key in ("gate_high", "gate_low"):  # forget (LSTM) / update (GRU) gates above 0.95, below 0.05
        if key in spec:
            out[key] = spec[key]
    return out


def check_expectations(expect: tuple[Expectation, ...], final: dict) -> list[dict]:
    """One row per expectation: metric, bound, value (None when never logged) and ok."""
    rows = []
    for e in expect:
        value = final.get(e.metric)
        ok = value is not None and e.check(float(value))
        rows.append({"expect": str(e), "metric": e.metric, "value": value, "ok": ok})
    return rows
