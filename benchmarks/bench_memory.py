"""Peak memory of ``loss_and_gradients``: linear in T for ``full``, and the overlapping-window
modes within 1.25x of ``full`` at a long sequence (issues 7 and 10).

    python benchmarks/bench_memory.py              # full at T = 1,000 and 10,000; modes at T = 100,000
    python benchmarks/bench_memory.py --quick      # full at T = 100 and 1,000; modes at T = 10,000
    python benchmarks/bench_memory.py --T 1000 10000 30000 --T-modes 50000 --dtype float64

B=32, H=128, I=O=10, float32 unless told. Each measurement runs in a fresh subprocess, so one
run's buffers cannot hide in another's peak. The child builds the inputs, records its resident
set size (the baseline: interpreter, NumPy, inputs), makes one call and reads its peak RSS
(``ru_maxrss``). The first table reports the growth over the baseline in bytes per T*B*H:
constant in T means memory is O(T*B*H), the activations the backward pass has to keep (h_t
and the class-major outputs and their gradient). The second compares the growth of
k_truncated:20 and tbptt:5:20 (overlapping windows, the lag sweep) with that of full at one
long T: the lag sweep works in spans of steps, so beyond the states it adds O(W*B*H), not
three more (T, B, H) arrays. At T = 100,000 the states alone are 1.6 GB; the three calls take
about two minutes on one idle core (one BLAS thread, as every benchmark here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import _common  # sets up the import path (the child gets it from ROOT)
from rich.table import Table

CHILD = r"""
import json, resource, sys
sys.path.insert(0, {root!r})
import numpy as np
import psutil
from threadpoolctl import threadpool_limits
from bptt_cli.core.bptt import loss_and_gradients
from bptt_cli.core.model import RNN
T, B, H, I, O, dtype = {T}, {B}, {H}, {I}, {O}, np.dtype({dtype!r})
rng = np.random.default_rng(0)
params = RNN.init(I, H, O, dtype=dtype).params
x = rng.standard_normal((T, B, I)).astype(dtype)
targets = rng.integers(0, O, size=(T, B))
mask = np.ones((T, B), dtype=dtype)
base = psutil.Process().memory_info().rss
with threadpool_limits(limits=1, user_api="blas"):
    loss, grads, h = loss_and_gradients(params, x, targets, mask, {spec!r})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
print(json.dumps({{"base": base, "peak": peak}}))
"""


def measure(T: int, B: int, H: int, I: int, O: int, dtype: str, spec: str = "full") -> dict:
    code = CHILD.format(root=str(_common.ROOT), T=T, B=B, H=H, I=I, O=O, dtype=dtype, spec=spec)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


MODES = ("k_truncated:20", "tbptt:5:20")
LIMIT = 1.25  # issue 10: peak growth of the lag-sweep modes against full, same T


def main() -> None:
    ap = argparse.ArgumentParser(description="Peak RSS of BPTT calls against T and against full.")
    ap.add_argument("--quick", action="store_true", help="smoke run: full at T = 100 and 1,000; modes at 10,000")
    ap.add_argument("--T", type=int, nargs="+", default=[1_000, 10_000], help="T values of the full-growth table")
    ap.add_argument("--T-modes", type=int, default=100_000, help="T of the mode comparison")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args()
    Ts = [100, 1_000] if args.quick else args.T
    T_modes = 10_000 if args.quick else args.T_modes
    cfg = _common.CONFIGS["A"]
    B, H, I, O = cfg.B, cfg.H, cfg.I, cfg.O
    out = _common.console()

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
    out.print(table)

    modes = Table(
        title=f"Peak RSS growth over the baseline at T = {T_modes:,}, B={B} H={H} I=O={I}, {args.dtype}, "
        "fresh process per mode",
        caption="growth = peak RSS - RSS after building the inputs; target: <= 1.25x full (issue 10)",
    )
    for col in ("mode", "baseline MiB", "peak MiB", "growth MiB", "bytes per T*B*H", "x full", "target", "result"):
        modes.add_column(col, justify="left" if col in ("mode", "target") else "right")
    n = T_modes * B * H
    full = None
    for spec in ("full", *MODES):
        r = measure(T_modes, B, H, I, O, args.dtype, spec)
        growth = r["peak"] - r["base"]
        full = growth if full is None else full
        row = [spec, f"{r['base'] / 2**20:.1f}", f"{r['peak'] / 2**20:.1f}", f"{growth / 2**20:.1f}",
               f"{growth / n:.2f}", f"{growth / full:.2f}", "", ""]
        if spec != "full":
            row[6:] = [f"<= {LIMIT}x full", _common.verdict(growth / full <= LIMIT)]
        modes.add_row(*row)
    out.print(modes)


if __name__ == "__main__":
    main()
