"""Running a compare's variants: one function per variant, three executors, the loop.

Variants run through the standard ``concurrent.futures.Executor`` interface: in this
process (one worker), in a process each (``ProcessPerTaskExecutor``), or on a Dask cluster
(``distributed.Client(...).get_executor()``); all three call the same ``run_variant``.
``execute_all`` submits what is not done yet and follows it to the end.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bptt_cli import config as cfgmod
from bptt_cli import runs
from bptt_cli.compare.plan import DONE, Variant, _steps_done, variant_state

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
