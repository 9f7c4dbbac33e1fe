"""What the trainer, logging and run files cost on top of the bare engine loop.

    python benchmarks/bench_train.py            # 200 updates, 7 alternating repeats
    python benchmarks/bench_train.py --quick    # 50 updates, 3 repeats

Config A's sizes (B=32, T=100, H=128, I=O=10: the delay task with 10 symbols, T=100),
full BPTT, global-norm clipping, Adam, float32, one BLAS thread. Rows, timed in alternation:

- bare engine loop: task batch -> loss_and_gradients -> clip -> optimizer step over the flat
  buffers, as the trainer runs them, nothing else;
- bptt train: ``session.execute`` as ``bptt train`` runs it: the trainer's events, a
  metrics.jsonl line per update flushed, checkpoints, summary, with evaluation only at the
  end (eval_every 0); the logging row subtracts that one evaluation (timed on its own in
  the same alternation), since evaluating is work by design, not overhead;
- + evaluation every 50 steps (the default), shown separately;
- + diagnostics every 50 updates (gradient flow, bias, spectrum: extra work by design,
  off the hot path unless asked for);
- clip + optimizer + logging: what the trainer does per update once the engine has the
  gradient (``Trainer.apply_update``: copy into the flat gradient buffer, clip, Adam step,
  the record) plus the metrics line ``bptt train`` appends, timed alone on one fixed gradient
  and set against the bare loop's time per update;
- cross-check, printed under the table: one diagnostics pass against one engine update,
  alternated in short calls (less exposed to a busy machine than whole runs), and where a
  pass goes: the lag profile against the time its matmuls alone need at this core's float32
  matmul peak (a 2048^3 product, same run), the spectrum against its eigvals alone.

Targets: trainer + logging overhead at most 10% over the bare loop (issue 7); diagnostics
every 50 updates at most 1.15x the same run without them, and clip + optimizer + logging at
most 5% of a config A update (issue 10).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import alternate, blas_line, console, machine_line, one_thread, verdict
from rich.table import Table

from bptt_cli import config as cfgmod
from bptt_cli import runs
from bptt_cli.core import clipping, diagnostics, optim
from bptt_cli.core.bptt import Workspace, loss_and_gradients
from bptt_cli.core.model import RNN
from bptt_cli.session import execute
from bptt_cli.tasks import make_task
from bptt_cli.trainer import Trainer


def make_config(steps: int, *extra: str) -> cfgmod.Config:
    return cfgmod.load_config(
        None,
        [
            "name=bench",
            "task.name=delay",
            "task.vocab=10",
            "task.delay=5",
            "task.length=100",
            "model.hidden=128",
            "truncation.mode=full",
            "clip.mode=global_norm",
            "clip.threshold=5",
            "optimizer.name=adam",
            f"train.steps={steps}",
            "train.batch_size=32",
            "train.eval_every=0",
            "train.checkpoint_every=100",
            *extra,
        ],
    )


def bare_loop(cfg: cfgmod.Config) -> None:
    task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed)
    params = optim.flatten(RNN.init(task.n_in, cfg.model.hidden, task.n_out, seed=cfg.seed).params)
    opt = optim.make(cfg.optimizer.name, **cfg.optimizer.hyper())
    ws = Workspace()
    flat = optim.Flat(params)
    for step in range(cfg.train.steps):
        b = task.train_batch(step, cfg.train.batch_size)
        _, grads, _ = loss_and_gradients(params, b.x, b.targets, b.mask, "full", workspace=ws)
        flat.assign(grads)
        clipping.clip_in_place(flat, cfg.clip.mode, cfg.clip.threshold)
        opt.step(params, flat.arrays)


def update_overhead(cfg: cfgmod.Config, root: Path):
    """A function running ``train.steps`` updates of everything but the engine, on one gradient."""
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    b = trainer.task.train_batch(0, cfg.train.batch_size)
    loss, grads, _ = loss_and_gradients(state.params, b.x, b.targets, b.mask, "full")
    run_dir = Path(tempfile.mkdtemp(dir=root))

    def run() -> None:
        writer = runs.RunWriter(run_dir)
        for step in range(1, cfg.train.steps + 1):
            record = trainer.apply_update(state, grads, loss=loss, step=step, chunk=0, clock=lambda: 0.0)
            writer.append("metrics", record)
        writer.close()

    return run


def pass_and_update(cfg: cfgmod.Config, calls: int = 10):
    """Two functions, ``calls`` engine updates and ``calls`` diagnostic passes as the trainer
    runs them (from the step's own forward pass and gradient), on one batch and weights."""
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    b = trainer.task.train_batch(0, cfg.train.batch_size)

    def update():
        for _ in range(calls):
            loss_and_gradients(state.params, b.x, b.targets, b.mask, "full", workspace=trainer.workspace)

    def diagnose():
        for _ in range(calls):
            _, grads, _ = loss_and_gradients(state.params, b.x, b.targets, b.mask, "full", workspace=trainer.workspace)
            trainer._diagnostics(state, b, None, 1, grads=grads)

    return update, diagnose


def pass_parts(cfg: cfgmod.Config):
    """The parts of one diagnostics pass as the trainer runs them (after the step's update),
    the lag profile's matmul FLOPs, and a 2048^3 float32 matmul for this core's peak."""
    trainer = Trainer(cfg)
    state = trainer.initial_state()
    b = trainer.task.train_batch(0, cfg.train.batch_size)
    kw = {"activation": cfg.model.activation, "loss": trainer.task.loss}
    ws = trainer.workspace
    _, grads, _ = loss_and_gradients(state.params, b.x, b.targets, b.mask, "full", workspace=ws, **kw)
    hs = ws.states()
    W = state.params["W_hh"].astype(np.float64)
    # Lag j -> j+1 advances the chains t >= j+1 (from the first to the last supervised step t0..t1).
    steps = np.flatnonzero(b.mask.any(axis=1))
    t0, t1 = int(steps[0]), int(steps[-1])
    J = min(b.x.shape[0] - 1, cfg.diagnostics.max_lag, t1)
    H, B = W.shape[0], b.x.shape[1]
    flops = sum(2 * (t1 - max(t0, j + 1) + 1) * B * H * H for j in range(J))
    a = np.ones((2048, 2048), dtype=np.float32)
    fns = {
        "flow": lambda: diagnostics.gradient_flow(
            state.params, b.x, b.targets, b.mask, **kw, max_lag=cfg.diagnostics.max_lag, hs=hs, workspace=ws
        ),
        "spectrum": lambda: diagnostics.spectrum(state.params, hs=hs[1:], activation=kw["activation"]),
        "eigvals": lambda: np.linalg.eigvals(W),
        "bias": lambda: diagnostics.bias_for_mode(state.params, b.x, b.targets, b.mask, "full", **kw, grads=grads),
        "peak": lambda: a @ a,
    }
    return fns, flops


def trainer_run(cfg: cfgmod.Config, root: Path) -> None:
    d = Path(tempfile.mkdtemp(dir=root))
    execute(cfg, d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer updates and repeats")
    args = ap.parse_args()
    steps, repeats = (50, 3) if args.quick else (200, 7)
    base = make_config(steps)
    with_eval = make_config(steps, "train.eval_every=50")
    with_diag = make_config(steps, "train.diagnostics_every=50")
    trainer = Trainer(base)
    params = trainer.initial_state().params
    with tempfile.TemporaryDirectory() as tmp, one_thread():
        root = Path(tmp)
        overhead = update_overhead(base, root)
        t = alternate(
            {
                "bare": lambda: bare_loop(base),
                "train": lambda: trainer_run(base, root),
                "one_eval": lambda: trainer.evaluate(params),
                "eval": lambda: trainer_run(with_eval, root),
                "diag": lambda: trainer_run(with_diag, root),
                "overhead": overhead,
            },
            repeats=repeats,
            warmup=1,
        )
        update, diagnose = pass_and_update(with_diag)
        short = alternate({"update": update, "pass": diagnose}, repeats=15 if not args.quick else 5)
        parts, flops = pass_parts(with_diag)
        part = alternate(parts, repeats=15 if not args.quick else 5)
    # Every run ends with one held-out evaluation (eval_size sequences): extra work by
    # design, like diagnostics, so the logging row takes it out and shows it on its own.
    t["logging"] = t["train"] - t["one_eval"]
    out = console()
    out.print(f"[bold]bench_train[/bold]: {steps} updates, config A sizes, float32, one BLAS thread; median of {repeats}")
    out.print(machine_line())
    out.print(blas_line())
    table = Table()
    for col in ("run", "total (s)", "ms/update", "vs bare loop", "target", "measured", "result"):
        table.add_column(col, justify="right" if col != "run" else "left")
    bare = t["bare"]
    # (label, key, target text, measured value, bound)
    rows = [
        ("bare engine loop", "bare", "", None, None),
        ("bptt train: trainer + logging + files", "logging", "<= 1.10x bare loop", t["logging"] / bare, 1.10),
        ("  + the final held-out evaluation", "train", "", None, None),
        ("  + evaluation every 50 steps (default)", "eval", "", None, None),
        ("  + diagnostics every 50 updates", "diag", "<= 1.15x the run without", t["diag"] / t["train"], 1.15),
        ("clip + optimizer + logging alone", "overhead", "<= 5% of an update", t["overhead"] / bare, 0.05),
    ]
    for label, key, target, value, bound in rows:
        measured = "" if value is None else (f"{value:.1%}" if bound < 1 else f"{value:.3f}x")
        table.add_row(
            label,
            f"{t[key]:.3f}",
            f"{t[key] / steps * 1e3:.3f}",
            f"{t[key] / bare:.3f}x",
            target,
            measured,
            "" if value is None else verdict(value <= bound),
        )
    out.print(table)
    per_pass = (short["pass"] - short["update"]) / short["update"]
    out.print(
        f"cross-check in short alternation: one diagnostics pass costs {per_pass:.2f} updates of the engine, "
        f"so every 50 updates about {1 + per_pass / 50:.3f}x the bare loop"
    )
    peak = 2 * 2048**3 / part["peak"]
    out.print(
        f"one pass: lag profile {part['flow'] * 1e3:.1f} ms ({flops / 1e9:.2f} GFLOP of matmuls, "
        f"{flops / part['flow'] / 1e9:.0f} GFLOP/s; at this core's float32 matmul peak of {peak / 1e9:.0f} "
        f"GFLOP/s they alone take {flops / peak * 1e3:.1f} ms), spectrum {part['spectrum'] * 1e3:.1f} ms "
        f"(eigvals alone {part['eigvals'] * 1e3:.1f} ms), bias {part['bias'] * 1e3:.2f} ms"
    )


if __name__ == "__main__":
    main()
