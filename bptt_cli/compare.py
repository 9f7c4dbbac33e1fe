"""``bptt compare``: variants (modes x grid points x seeds), executors, aggregation.

Every variant is an ordinary run in its own directory under the compare directory:

    runs/<name>/compare-<UTC timestamp>-<id>/
        plan.json                   the variants and their resolved configs (written first)
        <variant id>/               an ordinary run directory (bptt show works on it)
        compare.json, compare.csv   one row per variant and one aggregated row per mode/grid point

Fairness: variants of the same seed share the seed, hence the same training batches, the
same evaluation set and the same initial weights; only the mode (and grid values) differ.
With ``budget="sequences"`` each variant trains on the same number of sequences (chunk-update
modes then make more updates); with ``budget="updates"`` each makes the same number of updates.

Variants run through the standard ``concurrent.futures.Executor`` interface: in this
process (one worker), in a process each (``ProcessPerTaskExecutor``), or on a Dask cluster
(``distributed.Client(...).get_executor()``); all three call the same ``run_variant``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import multiprocessing
import os
import re
import secrets
import signal
import statistics
import threading
import time
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from bptt_cli import config as cfgmod
from bptt_cli import runs
from bptt_cli.core.errors import BpttError
from bptt_cli.core.truncation import parse as parse_truncation

DONE = ("completed", "diverged")  # a variant with one of these statuses is not run again


class CompareError(BpttError, ValueError):
    """A bad --modes, --seeds, --grid or compare directory."""


@dataclass(frozen=True)
class Variant:
    id: str  # also the variant's directory name
    mode: str
    grid: dict[str, Any]
    seed: int
    config: dict  # the resolved config of this variant

    @property
    def group(self) -> str:
        """The aggregation key: mode and grid point (seeds are aggregated)."""
        return " ".join([self.mode, *(f"{k}={_text(v)}" for k, v in self.grid.items())])


def _text(v: Any) -> str:
    return "none" if v is None else str(v)


# -- parsing the command line -------------------------------------------------------------
def parse_modes(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise CompareError("--modes needs a comma-separated list such as full,k_truncated:5,subsequence:10")
    out = []
    for s in specs:
        try:
            canon = str(parse_truncation(s))
        except ValueError as e:
            raise CompareError(f"--modes: {e}") from None
        if canon not in out:
            out.append(canon)
    return out


def parse_seeds(text: str, base: int) -> list[int]:
    """``3`` -> three seeds from ``base`` on; ``3,7,11`` -> those seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise CompareError(f"--seeds takes a count (3) or a list of seeds (3,7,11), got {text!r}") from None
    if len(nums) == 1 and "," not in text:
        if nums[0] < 1:
            raise CompareError(f"--seeds {nums[0]}: a count must be >= 1; to name a single seed, add a comma: --seeds {nums[0]},")
        return list(range(base, base + nums[0]))
    if not nums or any(n < 0 for n in nums) or len(set(nums)) != len(nums):
        raise CompareError(f"--seeds list must hold distinct seeds >= 0, got {text!r}")
    return nums


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``clip.threshold=1,5,none`` (repeatable) -> {"clip.threshold": [1, 5, None]}."""
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise CompareError(f"--grid expects KEY=V1,V2,... with a dotted key, e.g. clip.threshold=1,5,none; got {item!r}")
        if key in grid:
            raise CompareError(f"--grid {key} is given twice; list all its values once: --grid {key}=V1,V2,...")
        check_grid_key(key)
        parsed = []
        for v in values.split(","):
            data = cfgmod.apply_overrides({}, [f"x={v.strip()}"])
            parsed.append(data["x"])
        grid[key] = parsed
    return grid


def check_grid_key(key: str) -> None:
    """Keys that variants are already made of have options of their own."""
    own = {"seed": "--seeds", "truncation": "--modes", "compare": None, "name": None}
    head = key.split(".", 1)[0]
    if head in own:
        where = f"use {own[head]} instead" if own[head] else "it is not a setting of a run"
        raise CompareError(f"--grid cannot vary {key}: {where}")


# -- planning -----------------------------------------------------------------------------
def plan(
    base: cfgmod.Config,
    *,
    modes: list[str] | None = None,
    seeds: list[int] | None = None,
    grid: dict[str, list[Any]] | None = None,
    budget: str = "sequences",
) -> list[Variant]:
    """The variants, in a stable order: mode, then grid point, then seed.

    Options given here override the config's ``compare:`` section. Every variant's config
    is validated now, so a bad grid value fails before anything runs.
    """
    section = base.compare
    if modes is None:
        modes = section.modes if section and section.modes else default_modes(base)
    if seeds is None:
        s = section.seeds if section else None
        seeds = list(range(base.seed, base.seed + s)) if isinstance(s, int) else list(s or [base.seed])
    if grid is None:
        grid = dict(section.grid) if section and section.grid else {}
    if budget not in ("sequences", "updates"):
        raise CompareError(f"--budget must be sequences or updates, got {budget!r}")
    points: list[dict[str, Any]] = [{}]
    for key, values in grid.items():
        check_grid_key(key)
        repeated = sorted({_text(v) for v in values if values.count(v) > 1})
        if repeated:
            raise CompareError(f"--grid {key} lists {', '.join(repeated)} more than once; each value makes one variant")
        points = [{**p, key: v} for p in points for v in values]

    data = cfgmod.to_dict(base)
    data.pop("compare", None)
    variants = []
    for mode in modes:
        for point in points:
            for seed in seeds:
                overrides = [f"truncation.mode={mode}", "truncation.update_every=auto", f"seed={seed}"]
                overrides += [f"{k}={_yaml_value(v)}" for k, v in point.items()]
                try:
                    cfg = cfgmod.from_dict(data, overrides, source="compare variant")
                except cfgmod.ConfigError as e:
                    raise CompareError(f"variant {mode} {point or ''} seed {seed}: {e}") from None
                if budget == "updates":
                    cfg = _equal_updates(cfg, cfg.train.steps)  # the variant's own steps: a grid may set them
                vid = _variant_id(mode, point, seed)
                variants.append(Variant(vid, mode, point, seed, cfgmod.to_dict(cfg)))
    return variants


def default_modes(cfg: cfgmod.Config) -> list[str]:
    """The lecture's three variants: full, k_truncated:K and subsequence:K with the config's K."""
    k = cfg.truncation.k if cfg.truncation.k is not None else cfg.truncation.k1
    if k is None:
        raise CompareError("no modes to compare: pass --modes, add compare.modes to the config, or set truncation.k")
    return ["full", f"k_truncated:{k}", f"subsequence:{max(1, k)}"]


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _variant_id(mode: str, point: dict, seed: int) -> str:
    parts = [mode.replace(":", "-")]
    parts += [f"{k.split('.')[-1]}-{_text(v)}" for k, v in point.items()]
    parts.append(f"seed{seed}")
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))  # a safe directory name


def _equal_updates(cfg: cfgmod.Config, updates: int) -> cfgmod.Config:
    """Give a chunk-update variant as many steps as it needs to make ``updates`` updates."""
    if cfg.truncation.update != "chunk":
        return cfg
    from bptt_cli.tasks import make_task

    task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=cfg.model.dtype)
    batch = task.train_batch(0, cfg.train.batch_size)
    T = batch.x.shape[0]
    C = parse_truncation(cfg.truncation.spec).chunk_length(T)
    per_step = sum(1 for a in range(0, T, C) if batch.mask[a : a + C].any())
    steps = max(1, math.ceil(updates / max(1, per_step)))
    return cfgmod.from_dict(cfgmod.to_dict(cfg), [f"train.steps={steps}"])


# -- running ------------------------------------------------------------------------------
def run_variant(config: dict, run_dir: str, resume: bool, stop: Callable[[], bool] | None = None) -> dict:
    """Run one variant to its end and return its summary. Runs in a worker process, a Dask
    worker, or a thread of this process (then ``stop`` is the caller's stop flag). In a
    process of its own, Ctrl-C/SIGTERM stop it after the current step (status interrupted,
    checkpoint kept)."""
    from bptt_cli.session import execute

    cfg = cfgmod.from_dict(config)
    path = Path(run_dir)
    own = None
    if stop is None and threading.current_thread() is threading.main_thread():
        own = _SignalStop()
        own.install()
    try:
        if not resume:
            path.mkdir(parents=True, exist_ok=True)
        return execute(cfg, path, resume=resume, stop=stop or own or (lambda: False))
    finally:
        if own:
            own.restore()


class _SignalStop:
    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class ProcessPerTaskExecutor(Executor):
    """Each submitted call runs in a fresh process, at most ``max_workers`` at a time.

    Unlike ProcessPoolExecutor, a worker that is killed fails only its own future (with
    ``WorkerDied``), so one variant's crash never takes the others down.
    """

    def __init__(self, max_workers: int, *, stop: Callable[[], bool] = lambda: False) -> None:
        self._max = max(1, max_workers)
        self._stop = stop  # once it says so, nothing queued is started
        ctx_name = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
        self._ctx = multiprocessing.get_context(ctx_name)
        # N workers each running a multi-threaded BLAS oversubscribe the cores; with the
        # small per-step matmuls of an RNN, OpenBLAS's spinning threads then made a 2-worker
        # compare 12x slower here. Like joblib/loky, give each worker its share of the
        # cores, unless the user chose a thread count. Child processes read it at start.
        self._env = {v: str(max(1, (os.cpu_count() or 1) // self._max)) for v in BLAS_THREAD_VARS if v not in os.environ}
        if ctx_name == "forkserver":
            self._ctx.set_forkserver_preload(["bptt_cli.session", "bptt_cli.compare"])
            with _environ(self._env):
                from multiprocessing import forkserver

                forkserver.ensure_running()  # started now, so it inherits the thread limits
        self._queue: list[tuple[Future, Callable, tuple]] = []
        self._running: list[tuple[Future, Any, Any]] = []
        self._lock = threading.Condition()
        self._shutdown = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        fut: Future = Future()
        with self._lock:
            if self._shutdown:
                raise RuntimeError("executor is shut down")
            self._queue.append((fut, fn, args))
            self._lock.notify()
        return fut

    def _loop(self) -> None:
        while True:
            with self._lock:
                while len(self._running) < self._max and self._queue and not self._stop():
                    fut, fn, args = self._queue.pop(0)
                    if not fut.set_running_or_notify_cancel():
                        continue
                    recv, send = self._ctx.Pipe(duplex=False)
                    proc = self._ctx.Process(target=_child, args=(send, fn, args), daemon=False)
                    with _environ(self._env):
                        proc.start()
                    send.close()
                    self._running.append((fut, proc, recv))
                if self._shutdown and not self._queue and not self._running:
                    return
            for fut, proc, recv in list(self._running):
                if recv.poll(0.05) or not proc.is_alive():
                    try:
                        kind, value = recv.recv() if recv.poll() else ("died", None)
                    except (EOFError, OSError):
                        kind, value = "died", None
                    proc.join()
                    recv.close()
                    if kind == "ok":
                        fut.set_result(value)
                    elif kind == "error":
                        fut.set_exception(value)
                    else:
                        fut.set_exception(WorkerDied(proc.exitcode))
                    with self._lock:
                        self._running.remove((fut, proc, recv))
            if not self._running:
                with self._lock:
                    if not self._queue and not self._shutdown:
                        self._lock.wait(0.2)

    def signal_all(self, signum: int) -> None:
        with self._lock:
            for _, proc, _ in self._running:
                if proc.pid:
                    try:
                        os.kill(proc.pid, signum)
                    except ProcessLookupError:
                        pass

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            if cancel_futures:
                for fut, _, _ in self._queue:
                    fut.cancel()
                self._queue.clear()
            self._lock.notify()
        if wait:
            self._thread.join()


BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


@contextmanager
def _environ(values: dict[str, str]):
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class WorkerDied(RuntimeError):
    def __init__(self, exitcode: int | None) -> None:
        self.exitcode = exitcode
        how = f"killed by signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        super().__init__(f"worker process died ({how})")


def _child(send, fn, args) -> None:
    try:
        result = fn(*args)
        send.send(("ok", result))
    except KeyboardInterrupt:
        send.send(("error", RuntimeError("interrupted")))
    except BaseException as e:  # report, don't die: the parent decides
        try:
            send.send(("error", e))
        except Exception:
            send.send(("error", RuntimeError(f"{type(e).__name__}: {e}")))
    finally:
        send.close()


@dataclass
class Progress:
    """What the caller can show while variants run: status and steps done of each."""

    status: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)


def new_compare_dir(root: Path, name: str) -> Path:
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    while True:
        path = parent / f"compare-{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def write_plan(path: Path, variants: list[Variant], meta: dict) -> None:
    data = {**meta, "variants": [asdict(v) for v in variants]}
    runs.atomic_write(path / "plan.json", (json.dumps(runs._jsonable(data), indent=2) + "\n").encode())


def read_plan(path: Path) -> tuple[list[Variant], dict]:
    p = Path(path) / "plan.json"
    if not p.exists():
        raise CompareError(f"{path} is not a compare directory (no plan.json)")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
        variants = [Variant(**v) for v in data.pop("variants")]
    except (ValueError, TypeError, KeyError) as e:
        raise CompareError(f"{p} is unreadable: {e}") from None
    return variants, data


def is_compare_dir(path: Path) -> bool:
    return (Path(path) / "plan.json").is_file()


def variant_state(path: Path, v: Variant) -> str:
    """completed/diverged (done), interrupted/failed/running (resume or restart), missing."""
    d = path / v.id
    if not runs.is_run_dir(d):
        return "missing"
    try:
        return json.loads((d / "summary.json").read_text(encoding="utf-8")).get("status", "missing")
    except (OSError, ValueError):
        return "missing"


def execute_all(
    path: Path,
    variants: list[Variant],
    executor: Executor,
    *,
    in_process: bool = False,
    stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[Progress], None] | None = None,
    poll: float = 0.25,
) -> Progress:
    """Run every variant not done yet; one failing variant never stops the others.

    On ``stop()`` no new variant starts, the running ones are asked to stop after their
    current step, and the call returns when they have. ``in_process``: the executor runs
    calls in threads of this process, so the variants can share ``stop`` directly; worker
    processes get the signal instead (Ctrl-C reaches them too; SIGTERM is forwarded).
    """
    prog = Progress()
    futures: dict[Future, Variant] = {}
    for v in variants:
        state = variant_state(path, v)
        prog.total[v.id] = v.config["train"]["steps"]
        if state in DONE:
            prog.status[v.id] = state
            continue
        resume = state in ("interrupted", "running", "failed") and (path / v.id / "checkpoint.npz").exists()
        if not resume and (path / v.id).exists():
            _clear(path / v.id)  # it never checkpointed: start it again from scratch
        prog.status[v.id] = "queued"
        args = (v.config, str(path / v.id), resume) + ((stop,) if in_process else ())
        futures[executor.submit(run_variant, *args)] = v
    stopping = False
    pending = set(futures)
    while pending:
        if stop() and not stopping:
            stopping = True
            for f in pending:
                f.cancel()
            if isinstance(executor, ProcessPerTaskExecutor):
                executor.signal_all(signal.SIGTERM)
        for f in [f for f in pending if f.done()]:
            pending.discard(f)
            v = futures[f]
            if f.cancelled():
                prog.status[v.id] = "not started"
                continue
            exc = f.exception()
            if exc is None:
                prog.status[v.id] = f.result()["status"]
            else:
                prog.status[v.id] = "interrupted" if stopping else "failed"
                _mark_failed(path / v.id, exc, stopping)
            prog.steps[v.id] = _steps_done(path / v.id)
        for f in pending:
            v = futures[f]
            if f.running() or (path / v.id / "config.yaml").exists():
                prog.status[v.id] = "running"
                prog.steps[v.id] = _steps_done(path / v.id)
        if on_progress:
            on_progress(prog)
        if pending:
            time.sleep(poll)
    for v in variants:
        prog.steps[v.id] = _steps_done(path / v.id)
    if on_progress:
        on_progress(prog)
    return prog


def _clear(d: Path) -> None:
    for p in sorted(d.rglob("*"), reverse=True):
        p.unlink() if p.is_file() else p.rmdir()


def _mark_failed(d: Path, exc: BaseException, interrupted: bool) -> None:
    """A variant whose process died keeps its logs; its summary says how it ended."""
    if not d.exists():
        return
    try:
        summary = json.loads((d / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summary = {}
    if summary.get("status") in DONE or summary.get("status") == "interrupted":
        return
    summary.update(status="interrupted" if interrupted else "failed", error=f"{type(exc).__name__}: {exc}")
    summary["steps_done"] = _steps_done(d)
    runs.RunWriter(d).summary(summary)


def _steps_done(d: Path) -> int:
    """The last step in the variant's metrics.jsonl (cheap: reads the file's tail)."""
    p = d / "metrics.jsonl"
    try:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().split(b"\n")
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


# -- aggregation --------------------------------------------------------------------------
METRIC_PREFERENCE = ("accuracy", "bpc", "error_rate")


def collect(path: Path) -> dict:
    """Read every variant's files into rows: one per variant and one per mode/grid point."""
    path = Path(path)
    variants, meta = read_plan(path)
    rows = [_variant_row(path, v) for v in variants]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    agg = [_aggregate(g, rs) for g, rs in groups.items()]
    return {**meta, "path": str(path), "variants": rows, "rows": agg}


def _variant_row(path: Path, v: Variant) -> dict:
    d = path / v.id
    row: dict[str, Any] = {"id": v.id, "group": v.group, "mode": v.mode, "grid": v.grid, "seed": v.seed, "run_dir": str(d)}
    if not runs.is_run_dir(d):
        row["status"] = "not started"
        return row
    run = runs.load_run(d)
    s = run.summary
    final = s.get("final") or {}
    metric = next((k for k in METRIC_PREFERENCE if f"eval.{k}" in final), None)
    _, losses = runs.step_losses(run.metrics)
    norms = [m["grad_norm"] for m in run.metrics if m.get("grad_norm") is not None]
    clipped = [bool(m.get("clipped")) for m in run.metrics]
    updates = s.get("updates") or (run.metrics[-1]["update"] if run.metrics else 0)
    wall = s.get("wall_time")
    bias = [dg["bias"]["cosine"] for dg in run.diagnostics if (dg.get("bias") or {}).get("cosine") is not None]
    decay = [dg["flow"]["decay_per_step"] for dg in run.diagnostics if (dg.get("flow") or {}).get("decay_per_step")]
    target = s.get("target_reached") or {}
    row.update(
        status=s.get("status", "unknown"),
        steps_done=s.get("steps_done", _steps_done(d)),
        stopped_at=_stopped_at(s),
        updates=updates,
        sequences=s.get("sequences"),
        train_loss=final.get("train.loss"),
        eval_loss=final.get("eval.loss"),
        metric=metric,
        metric_value=final.get(f"eval.{metric}") if metric else None,
        chance=(s.get("chance") or {}).get(metric) if metric else None,
        updates_to_target=target.get("update"),
        grad_norm_median=statistics.median(norms) if norms else None,
        grad_norm_max=max(norms) if norms else None,
        clipped_share=sum(clipped) / len(clipped) if clipped else None,
        bias_cosine=statistics.fmean(bias) if bias else None,
        decay_first=decay[0] if decay else None,
        decay_last=decay[-1] if decay else None,
        time_per_update=wall / updates if wall and updates else None,
        time_per_sequence=wall / s["sequences"] if wall and s.get("sequences") else None,
        loss_curve=_resample(losses, 24),
    )
    return row


def _stopped_at(s: dict) -> int | None:
    """The step where a variant that did not complete stopped."""
    if s.get("status") == "diverged":
        return (s.get("diverged_at") or {}).get("step")
    if s.get("status") in ("interrupted", "failed", "running"):
        return s.get("steps_done")
    return None


def _resample(values: list[float], n: int) -> list[float]:
    if len(values) <= n:
        return values
    step = len(values) / n
    return [statistics.fmean(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(n)]


AGG_FIELDS = (
    "train_loss",
    "eval_loss",
    "metric_value",
    "updates_to_target",
    "grad_norm_median",
    "grad_norm_max",
    "clipped_share",
    "bias_cosine",
    "decay_first",
    "decay_last",
    "time_per_update",
    "time_per_sequence",
    "updates",
    "sequences",
)


def _aggregate(group: str, rows: list[dict]) -> dict:
    out: dict[str, Any] = {"group": group, "mode": rows[0]["mode"], "grid": rows[0]["grid"], "seeds": len(rows)}
    for f in AGG_FIELDS:
        vals = [r[f] for r in rows if isinstance(r.get(f), (int, float)) and math.isfinite(r[f])]
        out[f] = statistics.fmean(vals) if vals else None
        out[f + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
    out["metric"] = next((r.get("metric") for r in rows if r.get("metric")), None)
    out["chance"] = next((r.get("chance") for r in rows if r.get("chance") is not None), None)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out["statuses"] = statuses
    curves = [r["loss_curve"] for r in rows if r.get("loss_curve")]
    if curves:
        n = min(len(c) for c in curves)
        out["loss_curve"] = [statistics.fmean(c[i] for c in curves) for i in range(n)]
    else:
        out["loss_curve"] = []
    return out


CSV_FIELDS = ("kind", "group", "id", "mode", "seed", "status", "steps_done", "stopped_at") + AGG_FIELDS + ("metric", "chance")


def write_results(path: Path, result: dict) -> None:
    runs.atomic_write(path / "compare.json", (json.dumps(runs._jsonable(result), indent=2) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS) + [f + "_std" for f in AGG_FIELDS], extrasaction="ignore")
    w.writeheader()
    for r in result["variants"]:
        w.writerow({"kind": "variant", **{k: _csv(v) for k, v in r.items()}})
    for r in result["rows"]:
        w.writerow({"kind": "aggregate", "status": _status_text(r["statuses"]), **{k: _csv(v) for k, v in r.items() if k != "statuses"}})
    runs.atomic_write(path / "compare.csv", buf.getvalue().encode())


def _csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else v


def _status_text(statuses: dict[str, int]) -> str:
    n = sum(statuses.values())
    return ", ".join(f"{c}/{n} {s}" for s, c in sorted(statuses.items()))
