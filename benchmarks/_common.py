"""Shared helpers for the benchmark scripts: import path, BLAS report, alternating timer, configs.

Not a module of the package: the scripts run from a checkout as ``python benchmarks/NAME.py``.
"""

from __future__ import annotations

import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

import numpy as np  # noqa: E402

try:
    from threadpoolctl import threadpool_info, threadpool_limits
except ImportError:  # pragma: no cover - the scripts need it
    sys.exit("threadpoolctl is missing: pip install threadpoolctl psutil  (or pip install -e '.[bench]')")

from bptt_cli.core.model import RNN  # noqa: E402


@dataclass(frozen=True)
class Config:
    """One benchmark shape (issue 7): batch B, steps T, hidden H, input I, output O."""

    name: str
    B: int
    T: int
    H: int
    I: int
    O: int

    def __str__(self) -> str:
        return f"{self.name}: B={self.B} T={self.T} H={self.H} I=O={self.I}" if self.I == self.O else (
            f"{self.name}: B={self.B} T={self.T} H={self.H} I={self.I} O={self.O}"
        )


CONFIGS = {
    "A": Config("A", B=32, T=100, H=128, I=10, O=10),
    "B": Config("B", B=1, T=25, H=100, I=65, O=65),
    "C": Config("C", B=64, T=500, H=64, I=8, O=8),
    "D": Config("D", B=128, T=200, H=256, I=32, O=32),
}


def problem(cfg: Config, dtype, seed: int = 0, activation: str = "tanh"):
    """(params, x, targets, mask) for a cross-entropy problem of the config's shape."""
    rng = np.random.default_rng(seed)
    params = RNN.init(cfg.I, cfg.H, cfg.O, activation=activation, seed=seed, dtype=dtype).params
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dtype)
    targets = rng.integers(0, cfg.O, size=(cfg.T, cfg.B))
    mask = np.ones((cfg.T, cfg.B), dtype=dtype)
    return params, x, targets, mask


def blas_line() -> str:
    """Which BLAS kernel NumPy runs, as threadpoolctl reports it, plus the OPENBLAS_* variables.

    Call it outside ``one_thread()``: it reports the default thread count, which the timed
    rows override with threadpoolctl.
    """
    parts = []
    for info in threadpool_info():
        if info.get("user_api") != "blas":
            continue
        parts.append(
            f"{info.get('internal_api')} {info.get('version')} kernel={info.get('architecture')} "
            f"default threads={info.get('num_threads')}"
        )
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE") if k in os.environ}
    env_txt = ", ".join(f"{k}={v}" for k, v in env.items()) or "OPENBLAS_CORETYPE/L2_SIZE unset"
    return f"numpy {np.__version__}, BLAS: {'; '.join(parts) or 'none found'} ({env_txt})"


def machine_line() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')}"


def alternate(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 3) -> dict[str, float]:
    """Median seconds per call of each function, timed in alternation (A B C A B C ...).

    Alternating spreads the machine's noise (other tenants, frequency changes) over every
    candidate instead of letting it land on whichever ran last.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: median(v) for k, v in times.items()}


def one_thread():
    """Context manager pinning NumPy's BLAS to one thread."""
    return threadpool_limits(limits=1, user_api="blas")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def verdict(ok: bool) -> str:
    return "[green]pass[/green]" if ok else "[red]FAIL[/red]"


def console():
    """A stdout Console wide enough for the tables when stdout is a file or a pipe."""
    from rich.console import Console

    c = Console()
    return c if c.is_terminal else Console(width=150)
