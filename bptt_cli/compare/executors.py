"""Running a compare's variants: one function per variant, three executors, the loop.

Variants run through the standard ``concurrent.futures.Executor`` interface: in this
process (one worker), in a process each (``ProcessPerTaskExecutor``), or on a Dask cluster
(``distributed.Client(...).get_executor()``); all three call the same ``run_variant``.
``execute_all`` submits what is not done yet and follows it to the end.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import pickle
import secrets
import shutil
import signal
import sys
import threading
import time
from concurrent.futures import Executor, Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bptt_cli import config as cfgmod
from bptt_cli import runs, threads
from bptt_cli.compare.plan import DONE, CompareError, Variant, _first_line, _steps_done, check_variant_dirs, read_summary, variant_state

# -- running ------------------------------------------------------------------------------
RUN_FILES = ("config.yaml", "summary.json", "checkpoint.npz", "error.log", *(f"{log}.jsonl" for log in runs.LOGS))


class VariantFailed(RuntimeError):
    """A variant raised; the message is its first line, ``Type: message`` (picklable, unlike
    some exceptions, so it crosses process and Dask boundaries intact)."""


def run_variant(config: dict, run_dir: str, stop: Callable[[], bool] | None = None, *, thread_budget: int | None = None) -> dict:
    """Run one variant to its end and return its summary. Runs in a worker process, a Dask
    worker, or a thread of this process (then ``stop`` is the caller's stop flag; on Dask a
    ``DaskStop``). In a process of its own, Ctrl-C/SIGTERM stop it after the current step
    (status interrupted, checkpoint kept), and so does the death of the process that started it.

    What to do is decided from the directory itself, so the same call made twice (a Dask retry
    after its worker died, a race, a resume) never appends a second copy of the logs: a
    finished variant is returned as it is, one with a checkpoint resumes from it (its logs cut
    back to the checkpoint's step), anything else starts from scratch. A stop requested before
    the variant starts leaves the directory untouched: ``{"status": "not started"}``.

    ``thread_budget``: the cores this variant may use for BLAS threads; by default the share
    a ``ProcessPerTaskExecutor`` gave its process, or on Dask the worker's cores divided by
    the tasks it runs at once (in this process, all cores: one variant runs at a time).
    """
    from bptt_cli.session import execute

    path = Path(run_dir)
    if not path.is_absolute():
        raise VariantFailed(f"ValueError: run_dir must be absolute (workers may run elsewhere), got {run_dir!r}")
    own = None
    if stop is None and threading.current_thread() is threading.main_thread():
        own = _SignalStop()
        own.install()
    stop = stop or own or (lambda: False)
    try:
        if stop():
            return {"status": "not started"}
        cfg = cfgmod.from_dict(config)
        state = _directory_state(path)
        if state in DONE:
            return {**read_summary(path), "status": state}
        if state != "resume":
            _clear(path)  # it never checkpointed: start it again from scratch
            path.mkdir(parents=True, exist_ok=True)
        budget = thread_budget or threads.inherited_budget() or _dask_worker_budget()
        # variant dir -> compare dir -> name -> runs root: the text cache sits next to the runs.
        return execute(cfg, path, resume=state == "resume", stop=stop, thread_budget=budget, cache_dir=runs.cache_dir(path.parents[2]))
    except VariantFailed:
        raise
    except Exception as e:
        raise VariantFailed(f"{type(e).__name__}: {e}") from None
    finally:
        if own:
            own.restore()


def _dask_worker_budget() -> int | None:
    """On a Dask worker that runs n tasks at once: its cores // n; elsewhere None."""
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return None
    nthreads = getattr(getattr(worker, "state", worker), "nthreads", 1) or 1
    return max(1, threads.available_cores() // nthreads)


def _directory_state(path: Path) -> str:
    """completed / diverged (done), resume (a checkpoint to go on from) or fresh."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        raise CompareError(f"{path} is not a real folder; refusing to write a variant there")
    status = read_summary(path).get("status") if runs.is_run_dir(path) else None
    if status in DONE:
        return status
    if runs.is_run_dir(path) and (path / "checkpoint.npz").is_file():
        return "resume"  # the run's lock (taken by execute) refuses a writer that is still alive
    holder = getattr(runs, "lock_holder", lambda p: None)(path)
    if holder is not None:  # alive, and about to write its first checkpoint: clear nothing of it
        who = f" (pid {holder.get('pid')} on {holder.get('host')})" if holder else ""
        raise CompareError(f"{path} is being written by another process{who}; refusing to start it again")
    return "fresh"


def _clear(d: Path) -> None:
    """Remove the files a run writes (and leftovers of atomic writes) from ``d``; never follows
    a symlink (a link is removed, not its target) and never touches anything else."""
    if not d.is_dir() or d.is_symlink():
        return
    for name in RUN_FILES:
        p = d / name
        if p.is_symlink() or p.is_file():
            p.unlink()
    for p in d.glob(".*.tmp"):
        if p.is_symlink() or p.is_file():
            p.unlink()
    tb = d / "tensorboard"  # the earlier attempt's live events (tracking.tensorboard: true)
    if tb.is_symlink() or tb.is_file():
        tb.unlink()
    elif tb.is_dir():
        shutil.rmtree(tb, ignore_errors=True)  # removes links inside, never what they point to


class _SignalStop:
    """The stop flag of a variant in a process of its own: Ctrl-C or SIGTERM, or the process
    that started it gone (killed with -9, say: then nobody would ever collect the result, and a
    later --resume would race an orphan)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict = {}
        self._parent = multiprocessing.parent_process()  # its sentinel closes when the parent dies

    def __call__(self) -> bool:
        if not self.requested and self._parent is not None and not self._parent.is_alive():
            self.requested = True
        return self.requested

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def install(self) -> None:
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)

    def restore(self) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


class DaskStop:
    """The stop flag of a compare's variants on a Dask cluster: a ``distributed.Event`` named
    for this compare. The client sets it on Ctrl-C; ``run_variant`` polls it (at most every
    ``interval`` seconds, a round trip to the scheduler) and stops after the current step, and
    a variant that had not started yet returns at once without touching its directory.
    (Cancelling a Dask future cannot stop a task that is already running.)"""

    def __init__(self, name: str | None = None, interval: float = 0.5) -> None:
        self.name = name or f"bptt-compare-stop-{secrets.token_hex(8)}"
        self.interval = interval
        self._event = None
        self._checked = -float("inf")
        self._set = False

    def __getstate__(self) -> dict:
        return {"name": self.name, "interval": self.interval}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["name"], state["interval"])

    def _get(self):
        if self._event is None:
            from distributed import Event

            self._event = Event(self.name)
        return self._event

    def set(self) -> None:
        self._get().set()

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._set and now - self._checked >= self.interval:
            self._checked = now
            self._set = _task_abandoned() or bool(self._get().is_set())
        return self._set


def _task_abandoned() -> bool:
    """On a Dask worker: the task running in this thread was cancelled or released, as when the
    client that submitted it is gone (killed with -9, say), so nobody will read its result and a
    later --resume would race it. Dask cannot stop a running task; the task stops itself."""
    try:
        from distributed import get_worker

        worker = get_worker()
        ts = worker.state.tasks.get(worker.get_current_task())
    except Exception:  # not on a worker, or another version's internals: rely on the event
        return False
    return ts is None or ts.state in ("cancelled", "released", "forgotten")


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
        # cores: the budget caps each variant's thread choice (bptt_cli.threads), and the
        # BLAS variables the user left unset, read by libraries at load, reach those that
        # threadpoolctl cannot. They are marked as ours, so a worker does not take them for
        # a user's setting (which would win over its own choice).
        self._budget = max(1, threads.available_cores() // self._max)
        self._env = threads.child_environ(self._budget)
        if ctx_name == "forkserver":
            self._ctx.set_forkserver_preload(["bptt_cli.session", "bptt_cli.compare"])
            with _environ(self._env), _sigint_ignored():
                from multiprocessing import forkserver

                forkserver.ensure_running()  # started now, so it inherits the thread limits
        self._queue: list[tuple[Future, Callable, tuple]] = []
        self._running: list[tuple[Future, Any, Any]] = []
        self._lock = threading.Condition()
        self._shutdown = False
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def submit(self, fn, /, *args, **kwargs) -> Future:
        if fn is run_variant:
            # The share of the cores goes with the call: the environment reaches a worker only
            # through the fork server, which an earlier executor may have started with another.
            kwargs.setdefault("thread_budget", self._budget)
        if kwargs:
            fn = functools.partial(fn, **kwargs)
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
                    try:
                        with _environ(self._env):
                            proc.start()
                    except Exception as e:  # e.g. the fork server is gone: fail this call, never the loop (a hang)
                        send.close()
                        recv.close()
                        fut.set_exception(VariantFailed(f"{type(e).__name__}: cannot start a worker process ({e})"))
                        continue
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
                    except Exception as e:  # a result that does not unpickle: report it, keep the loop alive
                        kind, value = "error", VariantFailed(f"{type(e).__name__}: the worker's result is unreadable ({e})")
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


BLAS_THREAD_VARS = threads.BLAS_THREAD_VARS


@contextmanager
def _sigint_ignored():
    """Start the fork server with SIGINT ignored: it is the disposition every worker it forks
    then starts with, until ``run_variant`` installs its own handler. Otherwise a Ctrl-C that
    reaches a worker still unpickling its arguments raised KeyboardInterrupt there, outside
    any handler (a traceback on stderr, the variant neither run nor reported)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


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
    _die_with_parent()
    try:
        result = fn(*args)
        _send(send, ("ok", result))
    except KeyboardInterrupt:
        _send(send, ("error", VariantFailed("interrupted")))
    except BaseException as e:  # report, don't die: the parent decides
        if not _send(send, ("error", e)):
            _send(send, ("error", VariantFailed(f"{type(e).__name__}: {_first_line(e)}")))
    finally:
        send.close()


def _send(conn, message) -> bool:
    """Send, or give up quietly: the parent may be gone (killed), and a pickling error is the
    caller's to handle."""
    try:
        conn.send(message)
        return True
    except (OSError, ValueError, TypeError, AttributeError, pickle.PicklingError):
        return False


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGTERM when the parent process exits (the fork server, which
    exits when the compare process does), so the variant stops after its current step instead of
    training on as an orphan. Elsewhere, ``_SignalStop`` polls the parent's liveness."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@dataclass
class Progress:
    """What the caller can show while variants run: status and steps done of each, and the
    first line of the error of each variant that failed."""

    status: dict[str, str] = field(default_factory=dict)
    steps: dict[str, int] = field(default_factory=dict)
    total: dict[str, int] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def execute_all(
    path: Path,
    variants: list[Variant],
    executor: Executor,
    *,
    in_process: bool = False,
    remote_stop: DaskStop | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[Progress], None] | None = None,
    poll: float = 0.25,
) -> Progress:
    """Run every variant not done yet; one failing variant never stops the others.

    Every variant's directory is checked first (a plain name, a real folder directly inside
    ``path``; CompareError otherwise, before anything is touched) and handed to the executor
    as an absolute path, since a Dask worker has a working directory of its own.

    On ``stop()`` no new variant starts, the running ones are asked to stop after their
    current step, and the call returns when they have. ``in_process``: the executor runs
    calls in threads of this process, so the variants share ``stop`` directly; worker
    processes get the signal instead (Ctrl-C reaches them too; SIGTERM is forwarded);
    ``remote_stop`` (Dask) is passed to every variant and set on stop, and nothing is
    cancelled, so each future reports what its variant really did.
    """
    dirs = check_variant_dirs(path, variants)
    prog = Progress()
    futures: dict[Future, Variant] = {}
    for v in variants:
        state = variant_state(path, v)
        prog.total[v.id] = v.config["train"]["steps"]
        if state in DONE:
            prog.status[v.id] = state
            continue
        prog.status[v.id] = "queued"
        extra = (stop,) if in_process else (remote_stop,) if remote_stop is not None else ()
        futures[executor.submit(run_variant, v.config, str(dirs[v.id]), *extra)] = v
    stopping = False
    pending = set(futures)
    while pending:
        if stop() and not stopping:
            stopping = True
            try:
                if remote_stop is not None:
                    remote_stop.set()
            except Exception:  # the scheduler is gone: cancel what can be cancelled, as below
                remote_stop = None
            if remote_stop is None:
                for f in pending:
                    f.cancel()
            if isinstance(executor, ProcessPerTaskExecutor):
                executor.signal_all(signal.SIGTERM)
        for f in [f for f in pending if f.done()]:
            pending.discard(f)
            v = futures[f]
            d = dirs[v.id]
            if f.cancelled():
                prog.status[v.id] = "not started"
                continue
            exc = f.exception()
            if exc is None:
                prog.status[v.id] = f.result()["status"]
            else:
                prog.status[v.id] = "interrupted" if stopping else "failed"
                error = _mark_failed(d, exc, stopping)
                if prog.status[v.id] == "failed":
                    prog.errors[v.id] = error
            prog.steps[v.id] = _steps_done(d)
        for f in pending:
            v = futures[f]
            if f.running() or (dirs[v.id] / "config.yaml").exists():
                prog.status[v.id] = "running"
                prog.steps[v.id] = _steps_done(dirs[v.id])
        if on_progress:
            on_progress(prog)
        if pending:
            time.sleep(poll)
    for v in variants:
        prog.steps[v.id] = _steps_done(dirs[v.id])
    if on_progress:
        on_progress(prog)
    return prog


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, (VariantFailed, WorkerDied)):
        return _first_line(exc)
    return f"{type(exc).__name__}: {_first_line(exc)}"


def _mark_failed(d: Path, exc: BaseException, interrupted: bool) -> str:
    """A variant that raised or whose process died keeps its logs; its summary says how it
    ended, also when it failed before writing anything (a text file that cannot be read).
    Returns the error's first line."""
    error = _error_text(exc)
    if d.is_symlink() or not d.is_dir():
        return error
    summary = read_summary(d)
    if summary.get("status") in DONE or summary.get("status") == "interrupted":
        return error
    summary.update(status="interrupted" if interrupted else "failed", error=summary.get("error") or error)
    summary["steps_done"] = _steps_done(d)
    runs.RunWriter(d).summary(summary)
    return _first_line(summary["error"]) if isinstance(summary["error"], str) else error
