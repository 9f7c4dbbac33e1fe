"""One training update in bptt's engine against the same model in PyTorch (issue 7).

    pip install torch==2.13.0                       # optional benchmark dependency (CPU build)
    python benchmarks/bench_vs_torch.py             # configs A-D, float32 and float64, median of 20
    python benchmarks/bench_vs_torch.py --quick     # smoke run: config A and B only, median of 5
    python benchmarks/bench_vs_torch.py --configs A D --dtypes float32 --repeats 40
    python benchmarks/bench_vs_torch.py --cells gru lstm   # the gated rows only (issue 14)

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

Gated cells (issue 14, ``--cells gru lstm``): the same update with ``core/gated.py`` against
``torch.nn.GRU`` / ``torch.nn.LSTM`` + ``nn.Linear`` + SGD, float32, one thread each side,
after the same float64 cross-check. Per cell the table prints the NumPy calls per time step
(forward and backward chain) and where an update's time goes: BLAS (the update's matmuls,
same count and sizes, replayed alone), Python and call overhead (the update's NumPy calls
times the cost of one call on a 1-element array) and elementwise work (the rest); the floor
of the engine's design (BLAS + the forward's np.exp / np.tanh calls alone + Python: every
other elementwise call free) with torch's time over it, the best ratio this design could
reach; and, on config A, gated ``k_truncated:20`` against gated ``full`` (same run).
"""

from __future__ import annotations

import argparse
import sys

import _common
import numpy as np
from rich.table import Table

from bptt_cli.core import gated
from bptt_cli.core.bptt import Workspace, loss_and_gradients

TARGETS = {"A": 1.8, "B": 3.0, "C": 1.8, "D": 1.25}  # float32; float64 must reach 1.0 everywhere
GATED_TARGETS = {"gru": {"A": 1.3, "B": 1.5, "C": 1.3}, "lstm": {"A": 1.0, "B": 1.5, "C": 1.0}}  # float32; D reported
K20_TARGET = 6.0  # gated k_truncated:20 / gated full, config A
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


class TorchGated(torch.nn.Module):
    def __init__(self, cell: str, params: dict, dtype) -> None:
        super().__init__()
        H, I = params["weight_hh"].shape[1], params["weight_ih"].shape[1]
        O = params["W_hy"].shape[0]
        self.rnn = (torch.nn.GRU if cell == "gru" else torch.nn.LSTM)(I, H, dtype=dtype)  # time-major
        self.out = torch.nn.Linear(H, O, dtype=dtype)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(self.rnn, name + "_l0").copy_(torch.from_numpy(params[name]))
            self.out.weight.copy_(torch.from_numpy(params["W_hy"]))
            self.out.bias.copy_(torch.from_numpy(params["b_y"]))

    def loss(self, x, targets):
        h, _ = self.rnn(x)
        y = self.out(h)
        return F.cross_entropy(y.reshape(-1, y.shape[-1]), targets.reshape(-1))


def gated_problem(cell: str, cfg: _common.Config, dt, seed: int = 0):
    rng = np.random.default_rng(seed)
    params = gated.init_params(cell, cfg.I, cfg.H, cfg.O, rng=rng, dtype=dt)
    x = rng.standard_normal((cfg.T, cfg.B, cfg.I)).astype(dt)
    targets = rng.integers(0, cfg.O, size=(cfg.T, cfg.B))
    return params, x, targets, np.ones((cfg.T, cfg.B), dtype=dt)


def check_gated_math(cell: str, cfg: _common.Config) -> float:
    """Max relative difference of loss and gradients between the gated engine and torch, float64."""
    params, x, targets, mask = gated_problem(cell, cfg, np.float64, seed=1)
    loss, g, _ = gated.loss_and_gradients(params, x, targets, mask, "full", cell=cell)
    model = TorchGated(cell, params, torch.float64)
    tl = model.loss(torch.from_numpy(x), torch.from_numpy(targets))
    tl.backward()
    tg = {k: getattr(model.rnn, k + "_l0").grad for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    tg["W_hy"], tg["b_y"] = model.out.weight.grad, model.out.bias.grad
    errs = [abs(loss - tl.item()) / abs(tl.item())]
    errs += [np.abs(g[k] - tg[k].numpy()).max() / np.abs(tg[k].numpy()).max() for k in g]
    return max(errs)


def make_gated_updates(cell: str, cfg: _common.Config, dt, modes=("full",)):
    params, x, targets, mask = gated_problem(cell, cfg, dt)
    ws = Workspace()

    def update_for(mode: str):
        def bptt_update():
            _, grads, _ = gated.loss_and_gradients(params, x, targets, mask, mode, cell=cell, workspace=ws)
            for k, g in grads.items():
                params[k] -= LR * g

        return bptt_update

    tdt = torch.float32 if dt == np.float32 else torch.float64
    model = TorchGated(cell, params, tdt)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    tx, tt = torch.from_numpy(x.copy()), torch.from_numpy(targets.copy())

    def torch_update():
        opt.zero_grad(set_to_none=True)
        model.loss(tx, tt).backward()
        opt.step()

    return {mode: update_for(mode) for mode in modes}, torch_update


def gated_matmuls(cell: str, cfg: _common.Config, dt):
    """The matmuls of one gated full-BPTT update (the same count and sizes, in row-major form), as a function."""
    G = gated.GATES[cell]
    T, B, H, I, O = cfg.T, cfg.B, cfg.H, cfg.I, cfg.O
    rng = np.random.default_rng(0)

    def r(*shape):
        return rng.standard_normal(shape).astype(dt)

    x, W_ih, W_hh, h = r(T * B, I), r(I, G * H), r(H, G * H), r(B, H)
    xw, hw, W_hy, hs, y = r(T * B, G * H), r(B, G * H), r(O, H), r(T * B, H), r(O, T * B)
    k = 4 if cell == "lstm" else 3  # gate adjoints entering the backward matmul
    a, Wext, gh = r(B, k * H + O), r(k * H + O, H), r(B, H)
    Tb = gated._block_steps(T, B, H, dt)
    blocks = [min(Tb, T - t0) * B for t0 in range(0, T, Tb)]
    A = r(4 * H, Tb * B)  # a block's gate adjoints, (step, sample) columns
    Z = r(Tb * B, H + I + 1)  # its rows [h_{s-1} | x_s | 1]

    def run():
        np.matmul(x, W_ih, out=xw)
        for _ in range(T):
            np.matmul(h, W_hh, out=hw)
        np.matmul(W_hy, hs.T, out=y)
        for _ in range(T):
            np.matmul(a, Wext, out=gh)
        for n in blocks:  # weight gradients: LSTM one matmul, GRU two (ih + biases, hh)
            if cell == "lstm":
                A[:, :n] @ Z[:n]
            else:
                A[:, :n] @ Z[:n, H:]
                A[H:, :n] @ Z[:n, :H]
        y @ hs  # dW_hy

    return run, len(blocks)


def gated_transcendentals(cell: str, cfg: _common.Config, dt):
    """The np.exp / np.tanh calls of one gated update's forward (same count, sizes, forms), as a function.
    With the matmuls and the calls' fixed cost, the floor of the engine's design: every other
    elementwise call free."""
    T, B, H = cfg.T, cfg.B, cfg.H
    rng = np.random.default_rng(0)
    gates = rng.standard_normal((4 * H, B)).astype(dt)
    out = np.empty_like(gates)
    if cell == "gru":
        sizes = ((np.exp, 2 * H), (np.tanh, H))  # z and r in one exp, n
    elif B * H <= gated._TANH_FORM:
        sizes = ((np.tanh, 4 * H), (np.tanh, H))  # all four gates in one tanh, tanh(c)
    else:
        sizes = ((np.exp, 4 * H), (np.tanh, H))  # all four gates in one exp, tanh(c)
    ops = [(f, gates[:n], out[:n]) for f, n in sizes]

    def run():
        for _ in range(T):
            for f, a, o in ops:
                f(a, out=o)

    return run, len(ops) * T


def call_cost() -> float:
    """Seconds per NumPy call on a 1-element array (the per-call overhead): the fastest of 20
    runs of 1000 calls, since under load the median would count other processes' time. Three
    distinct arrays: with the output aliasing an input a 1-element call takes a slower path
    (1.2 us against 0.5 here; at 100 elements both cost the same), which is not a call's cost."""
    import time

    a, b, c = np.ones(1, np.float32), np.ones(1, np.float32), np.empty(1, np.float32)
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        for _ in range(1000):
            np.multiply(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return best / 1000


def gated_table(args, configs, repeats, warmup) -> Table:
    cells = [c for c in args.cells if c != "elman"]
    for cell in cells:
        for name in configs:
            err = check_gated_math(cell, _common.CONFIGS[name])
            if err > 1e-8:
                sys.exit(f"{cell} config {name}: gated bptt and PyTorch disagree ({err:.1e}); not timing")
    table = Table(
        title=f"Gated cells: one training update (forward, CE every step, full BPTT, SGD), float32, 1 thread each side, "
        f"median of {repeats} ({5 * repeats} on B), alternating",
        caption=f"{_common.machine_line()}\n{_common.blas_line()}; torch {torch.__version__}\n"
        "calls/step: NumPy calls per time step, forward + backward chain; BLAS: the update's matmuls replayed "
        "alone; Python: calls x the cost of a 1-element call; elementwise: the rest. floor: BLAS + the forward's "
        "exp/tanh calls alone + Python (every other elementwise call free), and torch over it. k20/full: gated "
        "k_truncated:20 over gated full, same run",
    )
    for col in ("cell", "config", "bptt ms", "torch ms", "torch / bptt", "target", "result", "calls/step",
                "BLAS", "elementwise", "Python", "floor (torch / floor)", "k20 / full"):
        table.add_column(col, justify="left" if col in ("cell", "config") else "right")
    dt = np.dtype(np.float32)
    torch.set_num_threads(1)
    with _common.threadpool_limits(limits=1, user_api="blas"):
        per_call = call_cost()
        for cell in cells:
            for name in configs:
                cfg = _common.CONFIGS[name]
                calls = gated.step_calls(cell, cfg.B, cfg.H)
                modes = ("full", "k_truncated:20") if name == "A" else ("full",)
                ours, theirs = make_gated_updates(cell, cfg, dt, modes)
                blas, nblocks = gated_matmuls(cell, cfg, dt)
                transc, n_transc = gated_transcendentals(cell, cfg, dt)
                fns = {"bptt": ours["full"], "torch": theirs, "blas": blas, "transc": transc}
                if name == "A":
                    fns["k20"] = ours["k_truncated:20"]
                # B takes milliseconds and its noise is the machine's: five times the runs for the same cost
                t = _common.alternate(fns, repeats * 5 if name == "B" else repeats, warmup)
                ratio = t["torch"] / t["bptt"]
                goal = GATED_TARGETS[cell].get(name)
                target, result = (f">= {goal:g}", _common.verdict(ratio >= goal)) if goal else ("(report)", "")
                n_calls = (calls["forward"] + calls["backward"]) * cfg.T + 12 * nblocks + 40  # + per block, per call
                py = n_calls * per_call
                ew = max(t["bptt"] - t["blas"] - py, 0.0)
                floor = t["blas"] + t["transc"] + py - n_transc * per_call  # the exp/tanh calls' fixed cost once
                total = t["bptt"]

                def share(v: float, total: float = total) -> str:
                    return f"{_common.ms(v)} ({100 * v / total:.0f}%)"

                k20 = ""
                if "k20" in t:
                    r20 = t["k20"] / t["bptt"]
                    k20 = f"{r20:.2f} (<= {K20_TARGET:g}: {_common.verdict(r20 <= K20_TARGET)})"
                table.add_row(cell, str(cfg), _common.ms(t["bptt"]), _common.ms(t["torch"]), f"{ratio:.2f}", target,
                              result, f"{calls['forward']} + {calls['backward']}", share(t["blas"]), share(ew),
                              share(py), f"{_common.ms(floor)} ({t['torch'] / floor:.2f})", k20)
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description="One training update: bptt vs PyTorch.")
    ap.add_argument("--quick", action="store_true", help="smoke run: configs A and B, median of 5")
    ap.add_argument("--repeats", type=int, default=20, help="timed runs per side (median, >= 20)")
    ap.add_argument("--configs", nargs="+", default=list(_common.CONFIGS), choices=list(_common.CONFIGS))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    ap.add_argument("--no-two-threads", action="store_true", help="skip the information-only 2-thread rows")
    ap.add_argument("--cells", nargs="+", default=["elman", "gru", "lstm"], choices=["elman", "gru", "lstm"],
                    help="elman: the issue 7 table; gru, lstm: the gated table (float32, 1 thread)")
    args = ap.parse_args()
    configs = ["A", "B"] if args.quick else args.configs
    repeats, warmup = (5, 1) if args.quick else (max(args.repeats, 20), 3)

    if any(c != "elman" for c in args.cells):
        _common.console().print(gated_table(args, configs, repeats, warmup))
    if "elman" not in args.cells:
        return
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
