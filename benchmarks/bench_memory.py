"""Peak memory of a ``full`` loss_and_gradients call grows linearly with T (issue 7).

    python benchmarks/bench_memory.py              # T = 1,000 and 10,000 (B=32, H=128, I=O=10, float32)
    python benchmarks/bench_memory.py --quick      # T = 100 and 1,000
    python benchmarks/bench_memory.py --T 1000 10000 30000 --dtype float64

Each T runs in a fresh subprocess, so one run's buffers cannot hide in another's peak. The
child builds the inputs, records its resident set size (the baseline: interpreter, NumPy,
inputs), makes one ``full`` call and reads its peak RSS (``ru_maxrss``). The table reports the
growth over the baseline in bytes per T*B*H: constant in T means memory is O(T*B*H), the
activations the backward pass has to keep (here h_t and one work buffer of the same size,
plus the class-major outputs and their gradient).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import _common  # noqa: F401  (sets up the import path for the child too)
from rich.table import Table

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
import numpy as np
import psutil
from bptt_cli.core.bptt import loss_and_gradients
from bptt_cli.core.model import RNN
T, B, H, I, O, dtype = {T}, {B}, {H}, {I}, {O}, np.dtype({dtype!r})
rng = np.random.default_rng(0)
params = RNN.init(I, H, O, dtype=dtype).params
x = rng.standard_normal((T, B, I)).astype(dtype)
targets = rng.integers(0, O, size=(T, B))
mask = np.ones((T, B), dtype=dtype)
base = psutil.Process().memory_info().rss
loss, grads, h = loss_and_gradients(params, x, targets, mask, "full")
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
print(json.dumps({{"base": base, "peak": peak}}))
"""


def measure(T: int, B: int, H: int, I: int, O: int, dtype: str) -> dict:
    code = CHILD.format(root=str(_common.ROOT), T=T, B=B, H=H, I=I, O=O, dtype=dtype)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description="Peak RSS of a full BPTT call against T.")
    ap.add_argument("--quick", action="store_true", help="smoke run: T = 100 and 1,000")
    ap.add_argument("--T", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args()
    Ts = [100, 1_000] if args.quick else args.T
    cfg = _common.CONFIGS["A"]
    B, H, I, O = cfg.B, cfg.H, cfg.I, cfg.O

    table = Table(
        title=f"Peak RSS of one full loss_and_gradients call, B={B} H={H} I=O={I}, {args.dtype}, fresh process per T",
        caption=f"{_common.machine_line()}\n{_common.blas_line()}",
    )
    for col in ("T", "T*B*H", "baseline MiB", "peak MiB", "growth MiB", "bytes per T*B*H", "growth / previous"):
        table.add_column(col, justify="right")
    prev = None
    for T in Ts:
        r = measure(T, B, H, I, O, args.dtype)
        growth = r["peak"] - r["base"]
        n = T * B * H
        ratio = f"{growth / prev[1]:.2f}x for {T / prev[0]:.0f}x T" if prev else ""
        table.add_row(f"{T:,}", f"{n:,}", f"{r['base'] / 2**20:.1f}", f"{r['peak'] / 2**20:.1f}",
                      f"{growth / 2**20:.1f}", f"{growth / n:.1f}", ratio)
        prev = (T, growth)
    _common.console().print(table)


if __name__ == "__main__":
    main()
