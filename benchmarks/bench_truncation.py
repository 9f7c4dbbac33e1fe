"""Time per ``loss_and_gradients`` call for every truncation mode, next to the textbook loop.

    python benchmarks/bench_truncation.py            # config A, float32, one BLAS thread, median of 30
    python benchmarks/bench_truncation.py --quick    # smoke run: median of 5
    python benchmarks/bench_truncation.py --dtype float64

On processors where the environment sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (older
OpenBLAS builds need them there), they slow a current NumPy; to measure the default kernel,
unset both together for this one command, and check the BLAS line at the top of the table:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_truncation.py

Config A of issue 7 (B=32, T=100, H=128, I=O=10, cross-entropy at every step, tanh). Every
candidate runs in alternation (A B C ... A B C ...) after a warm-up; the table shows medians.
"forward + loss" is ``bptt.forward_and_loss``: the forward pass, the outputs and the loss with
its dL/dy, exactly what every mode runs before its backward sweep (input checks excluded). The textbook loop is the obvious k-truncated BPTT: for
each loss step t a backward chain t, t-1, .. t-K, with the weight gradients accumulated by
per-step outer products (vectorised over the batch only). Targets from issues 2 and 7.
"""

from __future__ import annotations

import argparse

import _common
import numpy as np
from rich.table import Table

from bptt_cli.core.bptt import Workspace, forward_and_loss, loss_and_gradients

MODES = ("full", "k_truncated:5", "k_truncated:20", "subsequence:5", "subsequence:20", "tbptt:5:20")


def textbook_k_truncated(params, x, targets, mask, K, ws):
    """k_truncated:K the plain way: one backward chain per loss step, per-step outer products."""
    T, B, I = x.shape
    loss, hs, dy = forward_and_loss(params, x, targets, mask, None, "tanh", "cross_entropy", ws)
    dy = dy.transpose(1, 2, 0)  # (T, B, O) view of the engine's class-major dL/dy
    W_hh, W_hy = params["W_hh"], params["W_hy"]
    grads = {k: np.zeros_like(v) for k, v in params.items()}
    for t in range(T):
        grads["W_hy"] += dy[t].T @ hs[t + 1]
        grads["b_y"] += dy[t].sum(axis=0)
        dh = dy[t] @ W_hy  # dL_t/dh_t (B, H)
        for s in range(t, max(0, t - K) - 1, -1):
            da = dh * (1 - hs[s + 1] * hs[s + 1])  # dL_t/da_s, tanh
            grads["W_hh"] += da.T @ hs[s]
            grads["W_xh"] += da.T @ x[s]
            grads["b_h"] += da.sum(axis=0)
            dh = da @ W_hh
    return loss, grads


def main() -> None:
    ap = argparse.ArgumentParser(description="Truncation modes on config A vs the textbook loop.")
    ap.add_argument("--quick", action="store_true", help="smoke run: median of 5 after 1 warm-up")
    ap.add_argument("--repeats", type=int, default=30, help="timed runs per candidate (median)")
    ap.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = ap.parse_args()
    repeats, warmup = (5, 1) if args.quick else (max(args.repeats, 20), 3)

    cfg = _common.CONFIGS["A"]
    dt = np.dtype(args.dtype)
    params, x, targets, mask = _common.problem(cfg, dt)
    ws, ws_textbook = Workspace(), Workspace()

    # The textbook loop must compute the same gradients, or the comparison means nothing.
    for K in (5, 20):
        _, g_ref = textbook_k_truncated(params, x, targets, mask, K, ws_textbook)
        _, g, _ = loss_and_gradients(params, x, targets, mask, f"k_truncated:{K}", workspace=ws)
        err = max(np.abs(g[k] - g_ref[k]).max() / np.abs(g_ref[k]).max() for k in g)
        assert err < (1e-3 if dt == np.float32 else 1e-10), f"textbook k_truncated:{K} disagrees: {err:.2e}"

    # The engine's own forward part: the same forward, outputs and loss that every mode runs.
    fns = {"forward + loss": lambda: forward_and_loss(params, x, targets, mask, None, "tanh", "cross_entropy", ws)}
    for m in MODES:
        fns[m] = lambda m=m: loss_and_gradients(params, x, targets, mask, m, workspace=ws)
    for K in (5, 20):
        fns[f"textbook k_truncated:{K}"] = lambda K=K: textbook_k_truncated(params, x, targets, mask, K, ws_textbook)
    with _common.one_thread():
        t = _common.alternate(fns, repeats, warmup)

    fwd, full = t["forward + loss"], t["full"]
    targets_of = {
        "full": ("<= 3x forward", fwd, 3.0),
        "k_truncated:20": ("<= 4x full", full, 4.0),
        "subsequence:5": ("<= 1.1x full", full, 1.1),
        "subsequence:20": ("<= 1.1x full", full, 1.1),
    }
    table = Table(
        title=f"Truncation modes, config {cfg}, {dt.name}, 1 BLAS thread, median of {repeats}",
        caption=f"{_common.machine_line()}\n{_common.blas_line()}",
    )
    for col in ("candidate", "ms / call", "x forward+loss", "x full", "target", "measured", "result"):
        table.add_column(col, justify="left" if col in ("candidate", "target") else "right")
    for name, sec in t.items():
        row = [name, _common.ms(sec), f"{sec / fwd:.2f}", f"{sec / full:.2f}", "", "", ""]
        if name in targets_of:
            what, base, limit = targets_of[name]
            ratio = sec / base
            row[4:] = [what, f"{ratio:.2f}x", _common.verdict(ratio <= limit)]
        if name.startswith("textbook"):
            mode = name.split(" ", 1)[1]
            speedup = sec / t[mode]
            row[4:] = [f"{mode} >= 5x faster" if mode.endswith(":20") else "(info)", f"{speedup:.1f}x faster",
                       _common.verdict(speedup >= 5) if mode.endswith(":20") else ""]
        table.add_row(*row)
    _common.console().print(table)


if __name__ == "__main__":
    main()
