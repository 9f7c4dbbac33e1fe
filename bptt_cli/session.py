"""One run end to end: record the config, drive the trainer, keep every logged step.

``execute`` is what ``bptt train`` and every ``bptt compare`` variant run. It writes the
resolved config before training starts, appends each event to the run's logs as it comes,
checkpoints on step boundaries, and writes ``summary.json`` in ``finally`` whatever ends the
run: completion, divergence, a stop request (Ctrl-C, SIGTERM), or an unexpected error.
It never prints; ``on_event`` lets the caller show progress.
"""

from __future__ import annotations

import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bptt_cli import runs
from bptt_cli.config import Config, Expectation, dump_yaml
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
) -> dict:
    """Train ``cfg`` in ``run_dir`` (already created, or an existing run when ``resume``).

    Returns the summary that was written. ``stop()`` is polled after every step; when it
    says so the run checkpoints and ends ``interrupted``. A KeyboardInterrupt raised
    mid-step also ends ``interrupted`` (the logs hold every update that finished).
    """
    run_dir = Path(run_dir)
    trainer = trainer or Trainer(cfg)
    writer = runs.RunWriter(run_dir)
    last_update: dict = {}
    last_eval: dict = {}
    if resume:
        previous = _read_summary(run_dir)
        if previous.get("status") == "completed":
            raise runs.RunError(
                f"{run_dir} already completed ({previous.get('steps_done')}/{previous.get('steps')} steps); nothing to resume"
            )
        runs.remove_temporaries(run_dir)
        arrays = runs.load_checkpoint(run_dir)
        state = trainer.state_from_arrays(arrays)
        runs.truncate_logs(run_dir, state.step)
        # The summary's final metrics come from the last logged lines if no new ones arrive.
        last_update = runs.last_record(run_dir / "metrics.jsonl")
        last_eval = runs.last_record(run_dir / "eval.jsonl")
        started = previous.get("started", _now())
        resumed = previous.get("resumed", 0) + 1
    else:
        writer.write_config(dump_yaml(cfg))
        state = trainer.initial_state()
        writer.checkpoint(state.to_arrays())  # so even a run killed in its first steps can resume
        started, resumed = _now(), 0

    summary: dict = {
        "status": "running",
        "name": cfg.name,
        "run_dir": str(run_dir),
        "task": cfg.task.name,
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
    }
    writer.summary({**summary, "steps_done": state.step, "updates": state.update})
    last_diag: dict = {}
    ending: dict = {}
    session_start = time.perf_counter()
    updates_at_start = state.update
    status = "failed"
    on_boundary = False
    try:
        for ev in trainer.run(state):
            if ev.kind == "update":
                last_update = dict(ev.data)
                if ev.data["update"] % cfg.train.log_every == 0:
                    writer.append("metrics", ev.data)
            elif ev.kind == "eval":
                last_eval = ev.data
                writer.append("eval", ev.data)
            elif ev.kind == "diagnostics":
                last_diag = ev.data
                writer.append("diagnostics", ev.data)
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
            (run_dir / "error.log").write_text(traceback.format_exc(), encoding="utf-8")
        raise
    finally:
        if on_boundary:
            # The state sits between two steps, so it is exactly resumable. Diverged,
            # failed and hard-interrupted runs keep their last periodic checkpoint.
            writer.checkpoint(state.to_arrays())
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
        if last_diag:
            summary["diagnostics"] = _diag_summary(last_diag)
        if expect:
            summary["expectations"] = check_expectations(expect, summary["final"])
        writer.summary(summary)
        writer.close()
    return summary


def _final(last_update: dict, last_eval: dict) -> dict:
    out = {}
    for k, v in last_update.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "chunk", "time"):
            out[f"train.{k}"] = v
    for k, v in last_eval.items():
        if isinstance(v, (int, float)) and k not in ("step", "update", "time"):
            out[f"eval.{k}"] = v
    return out


def _diag_summary(d: dict) -> dict:
    flow, bias, spec = d.get("flow", {}), d.get("bias", {}), d.get("spectrum", {})
    return {
        "step": d.get("step"),
        "decay_per_step": flow.get("decay_per_step"),
        "bias_cosine": bias.get("cosine"),
        "bias_rel_error": bias.get("rel_error"),
        "spectral_radius": spec.get("spectral_radius"),
        "saturation": spec.get("saturated_share"),
    }


def check_expectations(expect: tuple[Expectation, ...], final: dict) -> list[dict]:
    """One row per expectation: metric, bound, value (None when never logged) and ok."""
    rows = []
    for e in expect:
        value = final.get(e.metric)
        ok = value is not None and e.check(float(value))
        rows.append({"expect": str(e), "metric": e.metric, "value": value, "ok": ok})
    return rows


def _read_summary(run_dir: Path) -> dict:
    import json

    try:
        return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
