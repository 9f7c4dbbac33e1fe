"""One training update in bptt's engine against the same model in PyTorch (issue 7).

    pip install torch==2.13.0                       # optional benchmark dependency (CPU build)
    python benchmarks/bench_vs_torch.py             # configs A-D, float32 and float64, median of 20
    python benchmarks/bench_vs_torch.py --quick     # smoke run: config A and B only, median of 5
    python benchmarks/bench_vs_torch.py --configs A D --dtypes float32 --repeats 40

On processors where the environment sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, unset both
together for the one benchmark command (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python
...``) and check the BLAS line printed under the table; never change them in the package.

One update = forward over the whole sequence, cross-entropy at every step (mean over all
T*B entries), full BPTT backward, plain SGD step. bptt: ``loss_and_gradients(..., "full")``
with a reused Workspace, then ``p -= lr * g``. PyTorch: ``nn.RNN(tanh)`` + ``nn.Linear``,
``F.cross_entropy``, autograd, ``torch.optim.SGD``. Before timing, both sides start from the
same weights and their losses and gradients are compared in float64. Target rows pin one
thread on both sides (threadpoolctl for NumPy's BLAS, ``torch.set_num_threads(1)``); the
two-thread rows are information only (timings of small matmuls on two threads are noisy on
2-core VMs). Runs alternate bptt / torch / bptt / ...; the ratio is torch / bptt medians.
"""

from __future__ import annotations

import argparse
import sys

import _common
import numpy as np
from rich.table import Table

from bptt_cli.core.bptt import Workspace, loss_and_gradients

TARGETS = {"A": 1.8, "B": 3.0, "C": 1.8, "D": 1.25}  # float32; float64 must reach 1.0 everywhere
LR = 1e-3

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    sys.exit(
        "PyTorch is not installed. It is an optional benchmark dependency, not one of the package's:\n"
        "    pip install torch==2.13.0\n"
        "(on this project's machines that installs the CPU build kept on disk)."
    )


class TorchRNN(torch.nn.Module):
    def __init__(self, params: dict, dtype) -> None:
        super().__init__()
        H, I = params["W_xh"].shape
        O = params["W_hy"].shape[0]
        self.rnn = torch.nn.RNN(I, H, nonlinearity="tanh", dtype=dtype)  # time-major (T, B, I)
        self.out = torch.nn.Linear(H, O, dtype=dtype)
        with torch.no_grad():
            self.rnn.weight_ih_l0.copy_(torch.from_numpy(params["W_xh"]))
            self.rnn.weight_hh_l0.copy_(torch.from_numpy(params["W_hh"]))
            self.rnn.bias_ih_l0.copy_(torch.from_numpy(params["b_h"]))
            self.rnn.bias_hh_l0.zero_()
            self.out.weight.copy_(torch.from_numpy(params["W_hy"]))
            self.out.bias.copy_(torch.from_numpy(params["b_y"]))

    def loss(self, x, targets):
        h, _ = self.rnn(x)  # (T, B, H)
        y = self.out(h)  # (T, B, O)
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), targets.reshape(-1))


def check_same_math(cfg: _common.Config) -> float:
    """Max relative difference of loss and gradients between the two sides, float64."""
    params, x, targets, mask = _common.problem(cfg, np.float64, seed=1)
    loss, g, _ = loss_and_gradients(params, x, targets, mask, "full")
    model = TorchRNN(params, torch.float64)
    tl = model.loss(torch.from_numpy(x), torch.from_numpy(targets))
    tl.backward()
    tg = {
        "W_xh": model.rnn.weight_ih_l0.grad, "W_hh": model.rnn.weight_hh_l0.grad,
        "b_h": model.rnn.bias_ih_l0.grad, "W_hy": model.out.weight.grad, "b_y": model.out.bias.grad,
    }
    errs = [abs(loss - tl.item()) / abs(tl.item())]
    errs += [np.abs(g[k] - tg[k].numpy()).max() / np.abs(tg[k].numpy()).max() for k in g]
    return max(errs)


def make_updates(cfg: _common.Config, dt):
    params, x, targets, mask = _common.problem(cfg, dt)
    ws = Workspace()

    def bptt_update():
        _, grads, _ = loss_and_gradients(params, x, targets, mask, "full", workspace=ws)
        for k, g in grads.items():
            params[k] -= LR * g

    tdt = torch.float32 if dt == np.float32 else torch.float64
    model = TorchRNN(params, tdt)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tx, tt = torch.from_numpy(x.copy()), torch.from_numpy(targets.copy())

    def torch_update():
        opt.zero_grad(set_to_none=True)
        model.loss(tx, tt).backward()
        opt.step()

    return bptt_update, torch_update


def main() -> None:
    ap = argparse.ArgumentParser(description="One training update: bptt vs PyTorch.")
    ap.add_argument("--quick", action="store_true", help="smoke run: configs A and B, median of 5")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per side (median, >= 20)")
    ap.add_argument("--configs", nargs="+", default=list(_common.CONFIGS), choices=list(_common.CONFIGS))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--no-two-threads", action="store_true", help="skip the information-only 2-thread rows")
    args = ap.parse_args()
    configs = ["A", "B"] if args.quick else args.configs
    repeats, warmup = (5, 1) if args.quick else (max(args.repeats, 20), 3)

    for name in configs:
        err = check_same_math(_common.CONFIGS[name])
        if err > 1e-8:
            sys.exit(f"config {name}: bptt and PyTorch disagree (relative difference {err:.1e}); not timing")

    table = Table(
        title=f"One training update (forward, CE every step, full BPTT, SGD), median of {repeats}, alternating",
        caption=f"{_common.machine_line()}\n{_common.blas_line()}; torch {torch.__version__}\n"
        "target rows: 1 thread each side; 2-thread rows are information only",
    )
    for col in ("config", "dtype", "threads", "bptt ms", "torch ms", "torch / bptt", "target", "result"):
        table.add_column(col, justify="left" if col in ("config", "dtype") else "right")
    thread_counts = (1,) if args.no_two_threads else (1, 2)
    for threads in thread_counts:
        for dtype in args.dtypes:
            dt = np.dtype(dtype)
            for name in configs:
                cfg = _common.CONFIGS[name]
                bptt_update, torch_update = make_updates(cfg, dt)
                torch.set_num_threads(threads)
                with _common.threadpool_limits(limits=threads, user_api="blas"):
                    t = _common.alternate({"bptt": bptt_update, "torch": torch_update}, repeats, warmup)
                ratio = t["torch"] / t["bptt"]
                if threads == 1:
                    goal = TARGETS[name] if dt == np.float32 else 1.0
                    target, result = f">= {goal:g}", _common.verdict(ratio >= goal)
                else:
                    target, result = "(info)", ""
                table.add_row(str(cfg), dtype, str(threads), _common.ms(t["bptt"]), _common.ms(t["torch"]),
                              f"{ratio:.2f}", target, result)
    _common.console().print(table)


if __name__ == "__main__":
    main()
