"""Time per ``loss_and_gradients`` call for every truncation mode, next to the textbook loop;
chunk updates against whole-sequence calls; the identity activation's O(T) path.

    python benchmarks/bench_truncation.py            # config A, float32, one BLAS thread, median of 30
    python benchmarks/bench_truncation.py --quick    # smoke run: median of 5 (identity table: of 3)
    python benchmarks/bench_truncation.py --dtype float64

On processors where the environment sets OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (older
OpenBLAS builds need them there), they slow a current NumPy; to measure the default kernel,
unset both together for this one command, and check the BLAS line at the top of the table:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_truncation.py

Config A of issue 7 (B=32, T=100, H=128, I=O=10, cross-entropy at every step, tanh). Every
candidate runs in alternation (A B C ... A B C ...) after a warm-up; the tables show medians.

1. Modes. "forward + loss" is ``bptt.forward_and_loss``: the forward pass, the outputs and the
   loss with its dL/dy, exactly what every mode runs before its backward sweep (input checks
   excluded). The textbook loop is the obvious k-truncated BPTT: for each loss step t a
   backward chain t, t-1, .. t-K, with the weight gradients accumulated by per-step outer
   products (vectorised over the batch only). Its FLOP ceiling is the ratio of the two
   FLOP counts (every matmul, 2mnk; ``flops_textbook`` / ``flops_engine``): the speed-up the
   engine would show if both ran their matmuls at the same rate. Target (issue 10, amending
   issue 7's 5x, which is above the ceiling): k_truncated:20 reaches >= 70% of it.
2. Chunk updates. ``chunked_pass`` (``update_every: chunk``) with a callback that does
   nothing, against ``loss_and_gradients`` for the same mode and data: the same gradients
   (summed over chunks), cut into one per chunk. Target (issue 10): <= 1.10x. With
   overlapping windows (tbptt:K1:K2, K2 > K1) each chunk's weight gradients cover its whole
   window, so the FLOPs alone put the ratio above 1 (the "FLOP ratio" column: 1.53x for
   tbptt:5:20 on config A).
3. Identity. ``loss_and_gradients`` with phi = identity, k_truncated:100 at T = 1,000 (B, H,
   I, O of config A): the O(T) path from powers of W_hh against the lag sweep forced on the
   same call. Target (issue 10): >= 5x faster.
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import _common
import numpy as np
from rich.table import Table

from bptt_cli.core import bptt
from bptt_cli.core.bptt import (
    Workspace,
    chunked_pass,
    forward_and_loss,
    loss_and_gradients,
)

MODES = ("full", "k_truncated:5", "k_truncated:20", "subsequence:5", "subsequence:20", "tbptt:5:20")


def textbook_k_truncated(params, x, targets, mask, K, ws):
    """k_truncated:K the plain way: one backward chain per loss step, per-step outer products."""
    T = x.shape[0]
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


def flops_textbook(cfg, K: int) -> int:
    """Matmul FLOPs (2mnk) of ``textbook_k_truncated`` on cfg: the forward, then per loss step
    the output layer and a chain of min(t, K) + 1 steps, each with two outer products and a
    matvec (dW_hh, dW_xh, dL/dh_{s-1})."""
    T, B, H, I, O = cfg.T, cfg.B, cfg.H, cfg.I, cfg.O
    pairs = sum(min(t, K) + 1 for t in range(T))
    forward = T * B * (I * H + H * H + H * O)
    return 2 * (forward + T * 2 * B * O * H + pairs * B * (2 * H * H + H * I))


def flops_engine(cfg, K: int) -> int:
    """Matmul FLOPs of the lag sweep for k_truncated:K on cfg: the forward, the direct terms,
    one matvec per chain step but the last (each chain makes min(t, K) + 1 steps), and the
    weight gradients once over all steps (dW_hh, dW_xh, db_h, dW_hy)."""
    T, B, H, I, O = cfg.T, cfg.B, cfg.H, cfg.I, cfg.O
    pairs = sum(min(t, K) + 1 for t in range(T))
    forward = T * B * (I * H + H * H + H * O)
    return 2 * (forward + T * B * O * H + (pairs - T) * B * H * H + T * B * (H * H + H * I + H + O * H))


def alternate_wall_and_cpu(fns: dict, repeats: int, warmup: int) -> tuple[dict, dict]:
    """Medians of wall time and of this process's CPU time per call, candidates in alternation.
    On a loaded machine wall time counts the waits for a core too; CPU time leaves them out."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict = {k: [] for k in fns}
    cpu: dict = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            cpu[k].append(time.process_time() - c0)
            wall[k].append(time.perf_counter() - w0)
    return {k: median(v) for k, v in wall.items()}, {k: median(v) for k, v in cpu.items()}


def chunk_flop_ratio(cfg, spec: str) -> float:
    """FLOPs of chunked_pass over those of loss_and_gradients for one chunk away from the start.

    Both run the forward, the direct terms and a chain of W - 1 matvecs per chunk; the
    weight gradients take the chunk's C rows in one call per sequence (A is summed over the
    windows first) but the window's W rows per chunk in chunk updates, where every chunk
    needs a gradient of its own. So the ratio is 1 for W == C and above 1 for W > C (not a
    strict floor: the two paths run their matmuls at different rates).
    """
    H, I, O = cfg.H, cfg.I, cfg.O
    C, W = bptt.parse(spec).chunk_and_window(cfg.T)
    if bptt.parse(spec).mode == "full":
        return 1.0
    common = C * (I * H + H * H + 2 * H * O) + (W - 1) * H * H + C * O * H
    return (common + W * (H * H + H * I + H)) / (common + C * (H * H + H * I + H))


def chunk_table(cfg, dt, repeats: int, warmup: int) -> Table:
    params, x, targets, mask = _common.problem(cfg, dt)
    ws, ws_chunk = Workspace(), Workspace()
    fns = {}
    for m in CHUNK_MODES:
        fns[m] = lambda m=m: loss_and_gradients(params, x, targets, mask, m, workspace=ws)
        fns[f"chunk {m}"] = lambda m=m: chunked_pass(params, x, targets, mask, m, lambda i, L, g: None,
                                                     workspace=ws_chunk)
    with _common.one_thread():
        t, cpu = alternate_wall_and_cpu(fns, repeats, warmup)
    table = Table(title=f"update_every: chunk against one call per sequence, config {cfg}, {dt.name}, "
                  f"1 BLAS thread, median of {repeats}",
                  caption="ratio: wall time (judged); ratio CPU: this process's CPU time, which a loaded "
                  "machine inflates less; FLOP ratio: the ratio from the FLOPs alone (chunk_flop_ratio)")
    for col in ("mode", "chunks", "loss_and_gradients ms", "chunked_pass ms", "ratio", "ratio CPU", "FLOP ratio",
                "target", "result"):
        table.add_column(col, justify="left" if col in ("mode", "target") else "right")
    for m in CHUNK_MODES:
        C = bptt.parse(m).chunk_length(cfg.T)
        ratio = t[f"chunk {m}"] / t[m]
        table.add_row(m, str(-(-cfg.T // C)), _common.ms(t[m]), _common.ms(t[f"chunk {m}"]), f"{ratio:.2f}x",
                      f"{cpu[f'chunk {m}'] / cpu[m]:.2f}x", f"{chunk_flop_ratio(cfg, m):.2f}x", "<= 1.10x",
                      _common.verdict(ratio <= 1.10))
    return table


def identity_table(dt, repeats: int, warmup: int) -> Table:
    base = _common.CONFIGS["A"]
    cfg = _common.Config("A, T=1000", B=base.B, T=1000, H=base.H, I=base.I, O=base.O)
    params, x, targets, mask = _common.problem(cfg, dt, activation="identity")
    spec = "k_truncated:100"
    ws, ws_sweep = Workspace(), Workspace()
    powers_bytes = bptt._POWERS_BYTES

    def sweep():
        bptt._POWERS_BYTES = 0  # refuses the powers path: the lag sweep runs
        try:
            return loss_and_gradients(params, x, targets, mask, spec, activation="identity", workspace=ws_sweep)
        finally:
            bptt._POWERS_BYTES = powers_bytes

    def powers():
        return loss_and_gradients(params, x, targets, mask, spec, activation="identity", workspace=ws)

    with _common.one_thread():
        g_p, g_s = powers()[1], sweep()[1]
        err = max(float(np.abs(g_p[k] - g_s[k]).max() / np.abs(g_s[k]).max()) for k in g_p)
        assert err < (1e-4 if dt == np.float32 else 1e-10), f"identity paths disagree: {err:.2e}"
        t = _common.alternate({"powers": powers, "sweep": sweep}, repeats, warmup)
    speedup = t["sweep"] / t["powers"]
    table = Table(title=f"Identity activation, {spec}, config {cfg}, {dt.name}, 1 BLAS thread, median of {repeats}")
    for col in ("candidate", "ms / call", "target", "measured", "result"):
        table.add_column(col, justify="left" if col in ("candidate", "target") else "right")
    table.add_row("lag sweep (forced)", _common.ms(t["sweep"]), "", "", "")
    table.add_row("powers of W_hh (automatic)", _common.ms(t["powers"]), ">= 5x faster than the sweep",
                  f"{speedup:.1f}x faster", _common.verdict(speedup >= 5))
    return table


CHUNK_MODES = ("subsequence:5", "subsequence:25", "tbptt:5:20", "tbptt:10:20")


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
            K = int(mode.split(":")[1])
            speedup = sec / t[mode]
            ceiling = flops_textbook(cfg, K) / flops_engine(cfg, K)
            if K == 20:
                row[4:] = [f"{mode} >= 70% of the FLOP ceiling {ceiling:.2f}x",
                           f"{speedup:.2f}x faster = {speedup / ceiling:.0%}", _common.verdict(speedup >= 0.7 * ceiling)]
            else:
                row[4:] = [f"(info; FLOP ceiling {ceiling:.2f}x)", f"{speedup:.2f}x faster", ""]
        table.add_row(*row)
    out = _common.console()
    out.print(table)
    out.print(chunk_table(cfg, dt, repeats, warmup))
    out.print(identity_table(dt, *((3, 1) if args.quick else (5, 1))))


if __name__ == "__main__":
    main()
