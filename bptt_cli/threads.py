"""How many BLAS threads a run uses, and why: chosen here, applied with threadpoolctl.

An RNN step is one (B, H) @ (H, H) matmul, thousands of times per update. OpenBLAS wakes its
worker threads for each call; below a certain size the hand-off costs more than the split
saves, and when another process holds a core a spinning worker waits for it (the quickstart
took 2.8-4.7x as long with OpenBLAS's default of one thread per core on a shared 2-core VM).
So the package picks the count itself, in this order:

    1. explicit   ``--threads N`` / ``train.threads: N``        used as given
    2. env        OPENBLAS_NUM_THREADS, OMP_NUM_THREADS or       the user's own setting
                  MKL_NUM_THREADS set by the user
    3. auto       one thread per WORK_PER_THREAD multiply-adds  at most the cores of the
                  of the per-step matmul, at least one          process (and the compare
                                                                budget)

Auto depends on the problem and the machine's cores only, never on the load of the moment:
OpenBLAS splits a matmul differently for another thread count, which changes the last bits
of the results, so a count that followed the load would make two runs of one config differ
and a resume inexact. The price is paid above the threshold only: there a run that shares
its cores with another CPU-bound job waits for its slowest thread (a config D gradient,
B=128 H=256, took 8.6 s with 2 threads against 0.86 s with 1 beside one busy process on a
2-core VM); pass ``--threads 1`` on a busy machine. Below the threshold (every shipped
config) auto is 1 thread, which is both the fast and the reproducible choice.

A compare running ``w`` workers gives each variant a budget of cores // w, so workers x
threads never exceeds the cores. Its worker processes also get the BLAS variables (for
libraries threadpoolctl cannot reach) and ``BPTT_OWN_THREAD_VARS`` naming the ones bptt set,
so a worker does not mistake them for the user's.

Not in ``core``: the engine stays pure NumPy; whoever runs it decides the threads.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterable, Iterator, Literal, Mapping, TypeVar, Union

from bptt_cli.core.errors import BpttError

BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
OWN_VARS_MARK = "BPTT_OWN_THREAD_VARS"  # which of BLAS_THREAD_VARS a parent bptt set, comma-separated
BUDGET_VAR = "BPTT_THREAD_BUDGET"  # the cores a parent bptt gave this process
MAX_THREADS = 1024

# One more thread per 2**22 float32 multiply-adds of the per-step (B, H) @ (H, H) matmul, so
# one thread below that. Measured on the project machine (2-core AMD EPYC VM, OpenBLAS 0.3.31
# Haswell kernel, 2026-12-02, under load from other sessions): the matmul alone with 2 threads
# against 1 is 0.9-1.6x slower up to B*H*H ~ 2M (H=128 at B=32..128), and 0.55-0.7x from
# ~4M up (H=256 at B=64+, H=512 at B=16+); a whole full-BPTT gradient was 1.16x slower
# with 2 threads for the quickstart (B*H*H = 131k), 1.28x for B=32 H=128 (524k), 1.0-1.2x
# at 2.1-4.2M, and 0.81x for B=128 H=256 (8.4M). The wrong side costs much more (a
# contended spinning thread) than the right side gains (<= 2x on 2 cores), so the line
# sits at the top of the crossover. float64 does half the multiply-adds per second, so its
# work counts double. Script: benchmarks/bench_threads.py --crossover.
WORK_PER_THREAD = 1 << 22

Setting = Union[Literal["auto"], int]
T = TypeVar("T")


class ThreadsError(BpttError):
    """A thread count that is not auto or a whole number from 1 to MAX_THREADS."""


@dataclass(frozen=True)
class ThreadChoice:
    """The BLAS thread count of a run and where it came from: explicit, env or auto."""

    count: int
    source: Literal["explicit", "env", "auto"]
    reason: str

    def to_dict(self) -> dict:
        return {"count": self.count, "source": self.source, "reason": self.reason}

    def __str__(self) -> str:
        return f"{self.count} ({self.source}: {self.reason})"


def parse_setting(text: str | int) -> Setting:
    """``--threads`` text -> "auto" or a count; anything else is a ThreadsError."""
    if isinstance(text, int) and not isinstance(text, bool):
        value: object = text
    else:
        s = str(text).strip().lower()
        value = "auto" if s == "auto" else int(s) if s.isdigit() else None
    if value == "auto" or (isinstance(value, int) and 1 <= value <= MAX_THREADS):
        return value  # type: ignore[return-value]
    raise ThreadsError(f"--threads must be auto or a whole number from 1 to {MAX_THREADS}, got {text!r}")


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, lowered by a cgroup CPU quota
    (a container limited to 2 CPUs on a 64-core host gets 2)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            quota, period = f.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(quota) // int(period)))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def user_env_threads(environ: Mapping[str, str] | None = None) -> tuple[str, int] | None:
    """The first of BLAS_THREAD_VARS the user set to a positive whole number, as (name, value);
    those a parent bptt set for its workers (named in OWN_VARS_MARK) do not count."""
    env = os.environ if environ is None else environ
    ours = set(filter(None, env.get(OWN_VARS_MARK, "").split(",")))
    for name in BLAS_THREAD_VARS:
        raw = env.get(name, "").strip()
        if name not in ours and raw.isdigit() and int(raw) >= 1:
            return name, int(raw)
    return None


def inherited_budget(environ: Mapping[str, str] | None = None) -> int | None:
    """The cores a parent bptt (compare's process executor) gave this process, if any."""
    raw = (os.environ if environ is None else environ).get(BUDGET_VAR, "").strip()
    return int(raw) if raw.isdigit() and int(raw) >= 1 else None


def choose(
    setting: Setting,
    *,
    batch: int,
    hidden: int,
    dtype: str = "float32",
    cores: int | None = None,
    budget: int | None = None,
    environ: Mapping[str, str] | None = None,
) -> ThreadChoice:
    """The thread count for a run whose per-step matmul is (batch, hidden) @ (hidden, hidden).

    ``cores`` defaults to :func:`available_cores`; ``budget``
    (a compare worker's share) caps it further; ``environ`` defaults to ``os.environ``. Pure
    given all of them.
    """
    if setting != "auto":
        return ThreadChoice(int(setting), "explicit", f"--threads / train.threads {int(setting)}")
    user = user_env_threads(environ)
    if user is not None:
        return ThreadChoice(user[1], "env", f"{user[0]}={user[1]}")
    cores = available_cores() if cores is None else max(1, cores)
    limit = cores if budget is None else max(1, min(cores, budget))
    work = batch * hidden * hidden * (2 if dtype == "float64" else 1)  # float32-equivalent multiply-adds
    count = max(1, min(limit, work // WORK_PER_THREAD))
    per = f"{WORK_PER_THREAD // (2 if dtype == 'float64' else 1):,}"
    of = f"{cores} core{'s' if cores != 1 else ''}"
    if budget is not None and budget < cores:
        of += f", a share of {budget}"
    return ThreadChoice(count, "auto", f"B*H*H={batch * hidden * hidden:,}, one thread per {per}; {of}")


def choose_for(cfg, *, budget: int | None = None, environ: Mapping[str, str] | None = None) -> ThreadChoice:
    """:func:`choose` for a Config: its train.threads, batch size, hidden size and dtype."""
    return choose(
        cfg.train.threads,
        batch=cfg.train.batch_size,
        hidden=cfg.model.hidden,
        dtype=cfg.model.dtype,
        budget=budget,
        environ=environ,
    )


def with_threads(cfg, setting: Setting | None):
    """``cfg`` with train.threads set (``--threads``); unchanged when ``setting`` is None."""
    if setting is None:
        return cfg
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"threads": setting})})


@contextmanager
def limit(choice: ThreadChoice) -> Iterator[ThreadChoice]:
    """Run the block with ``choice.count`` BLAS threads (threadpoolctl), restored on exit.

    Process-wide while it lasts: BLAS has one pool per process. Also applied when the source
    is env, since a variable read by a library at load time may not be what it runs with now.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=choice.count, user_api="blas"):
        yield choice


def child_environ(budget: int, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Variables for a compare worker process with ``budget`` cores: each BLAS variable the
    user left unset (read by libraries at load time, also those threadpoolctl cannot reach),
    the budget, and the mark that says which variables were ours."""
    env = os.environ if environ is None else environ
    set_here = [v for v in BLAS_THREAD_VARS if v not in env]
    out = {v: str(budget) for v in set_here}
    out[BUDGET_VAR] = str(budget)
    out[OWN_VARS_MARK] = ",".join(set_here)
    return out


def limited(events: Iterable[T], choice: ThreadChoice) -> Iterator[T]:
    """Iterate ``events`` (a trainer's run) with :func:`limit` held from the first event until
    the iteration ends; a consumer that stops early closes the generator, which restores the
    previous limits then (CPython closes it as soon as the loop lets go of it)."""
    with limit(choice):
        yield from events
