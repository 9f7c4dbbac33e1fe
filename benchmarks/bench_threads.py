"""The speed a user gets: BLAS threads chosen by the package, and start-up (issue 10, items 1 and 5).

    python benchmarks/bench_threads.py              # the targets (about a minute)
    python benchmarks/bench_threads.py --quick      # fewer repeats
    python benchmarks/bench_threads.py --crossover  # also the (B, H) @ (H, H) table behind the auto rule

Rows, each a fresh process as a user would start it (``bptt`` with no thread variable set:
OPENBLAS/OMP/MKL_NUM_THREADS are stripped from the child's environment):

- quickstart, one competitor: ``bptt train --quiet`` (the built-in quickstart, a new run in a
  temporary folder) while one CPU-bound process (a Python busy loop) runs; median of 3,
  candidates in alternation. Default environment (the package's ``auto``) against
  ``OPENBLAS_NUM_THREADS=1``; target <= 1.15x. For reference, ``--threads <all cores>``:
  what the package did before it chose (OpenBLAS's default, one thread per core).
- config D, no competitor: one full-BPTT ``loss_and_gradients`` of benchmarks/_common.py's
  config D (B=128 T=200 H=256, float32) in this process under ``bptt_cli.threads.limit`` with
  the count ``auto`` picks, with 1 thread and with all cores, in alternation; target: auto
  within 1.10x of the faster of the other two.
- start-up: ``bptt --help`` cold (a fresh interpreter each time, median of 5; target <= 0.35 s),
  and the share of the quickstart's wall time spent importing (``-X importtime``, the
  top-level imports of the process summed; target <= 25%).

Start-up rows use a bytecode cache in a temporary folder (``PYTHONPYCACHEPREFIX``), warmed by
one untimed run, as an installed package has; with ``PYTHONDONTWRITEBYTECODE`` set and no
cache, every run compiles bptt's modules again, which is shown as its own row.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

from _common import CONFIGS, ROOT, blas_line, console, machine_line, problem
from rich.table import Table

from bptt_cli import threads
from bptt_cli.core.bptt import Workspace, loss_and_gradients

STRIP = (*threads.BLAS_THREAD_VARS, threads.OWN_VARS_MARK, threads.BUDGET_VAR)


def child_env(cache: Path | None, **extra: str) -> dict[str, str]:
    """The user's environment without thread settings (and with a bytecode cache if given)."""
    env = {k: v for k, v in os.environ.items() if k not in STRIP}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    if cache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(cache)
    env.update(extra)
    return env


def bptt_command() -> list[str]:
    """The console script a user runs, or ``python -m bptt_cli`` without one."""
    script = Path(sys.executable).with_name("bptt")
    script = str(script) if script.exists() else shutil.which("bptt")
    return [script] if script else [sys.executable, "-m", "bptt_cli"]


def wall(cmd: list[str], env: dict[str, str], cwd: Path, cpu: list[float] | None = None) -> float:
    """Wall seconds of one run of ``cmd``; its CPU seconds (user + sys) appended to ``cpu``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    if cpu is not None:
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return elapsed


def alternate_runs(cands: dict[str, tuple[list[str], dict]], repeats: int, cwd: Path) -> dict[str, float]:
    """Median wall seconds of each command, one fresh process per run, in alternation."""
    times: dict[str, list[float]] = {k: [] for k in cands}
    for _ in range(repeats):
        for k, (cmd, env) in cands.items():
            times[k].append(wall(cmd, env, cwd))
    return {k: median(v) for k, v in times.items()}


class Competitor:
    """One CPU-bound process (a Python busy loop) for the duration of a ``with`` block."""

    def __enter__(self) -> "Competitor":
        self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        time.sleep(0.5)  # let it get onto a core
        return self

    def __exit__(self, *exc) -> None:
        self.proc.kill()
        self.proc.wait()


def import_share(cmd: list[str], env: dict[str, str], cwd: Path, repeats: int) -> tuple[float, float, float]:
    """(median seconds of top-level imports, median wall seconds) of ``cmd`` run under
    ``python -X importtime``, each top-level import's cumulative time counted once; and the
    same share in CPU time, which a loaded machine inflates less: a process importing just
    those modules against ``cmd`` itself."""
    imports, walls = [], []
    names: list[str] = []
    for _ in range(repeats):
        full = [sys.executable, "-X", "importtime", *(cmd[1:] if cmd[0] == sys.executable else ["-m", "bptt_cli", *cmd[1:]])]
        t0 = time.perf_counter()
        proc = subprocess.run(full, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        walls.append(time.perf_counter() - t0)
        total = 0
        for line in proc.stderr.splitlines():
            m = re.match(r"import time:\s+\d+ \|\s+(\d+) \| (\s*)(\S+)", line)
            if m and m.group(2) == "":  # a top-level import: its cumulative time includes its children
                total += int(m.group(1))
                if m.group(3) not in names:
                    names.append(m.group(3))
        imports.append(total / 1e6)
    only_imports = [sys.executable, "-c", f"import importlib\nfor m in {names!r}: importlib.import_module(m)"]
    cpu_imports: list[float] = []
    cpu_run: list[float] = []
    for _ in range(repeats):
        wall(only_imports, env, cwd, cpu_imports)
        wall(cmd, env, cwd, cpu_run)
    return median(imports), median(walls), median(cpu_imports) / median(cpu_run)


def config_d_rows(repeats: int) -> tuple[dict[str, float], threads.ThreadChoice, int]:
    """Seconds per config D gradient with auto's count, 1 thread and all cores, alternating."""
    import numpy as np

    from _common import alternate

    cfg = CONFIGS["D"]
    params, x, targets, mask = problem(cfg, np.float32)
    ws = Workspace()
    cores = threads.available_cores()
    auto = threads.choose("auto", batch=cfg.B, hidden=cfg.H, dtype="float32", environ={})

    def run(choice: threads.ThreadChoice):
        def f():
            with threads.limit(choice):
                loss_and_gradients(params, x, targets, mask, "full", workspace=ws)

        return f

    one = threads.ThreadChoice(1, "explicit", "1")
    every = threads.ThreadChoice(cores, "explicit", str(cores))
    return alternate({"auto": run(auto), "1": run(one), "all": run(every)}, repeats=repeats, warmup=1), auto, cores


def crossover_table(con) -> None:
    """(B, H) @ (H, H) with 2 threads against 1: the measurement behind threads.WORK_PER_THREAD."""
    import numpy as np
    from threadpoolctl import ThreadpoolController

    ctl = ThreadpoolController()
    rng = np.random.default_rng(0)
    Bs = [1, 4, 16, 32, 64, 128, 256]
    table = Table(title="(B, H) @ (H, H), float32: time with 2 threads / time with 1 (min of 9 alternating samples; < 1: threads pay)")
    table.add_column("H", justify="right")
    for b in Bs:
        table.add_column(f"B={b}", justify="right")
    for H in (32, 64, 128, 256, 512, 1024):
        W = rng.standard_normal((H, H)).astype(np.float32)
        cells = []
        for B in Bs:
            x = rng.standard_normal((B, H)).astype(np.float32)
            out = np.empty((B, H), np.float32)
            n = int(min(20000, max(5, 2e-3 * 4e10 / (2 * B * H * H))))
            best = {1: float("inf"), 2: float("inf")}
            for _ in range(9):
                for th in (1, 2):
                    with ctl.limit(limits=th, user_api="blas"):
                        t0 = time.perf_counter()
                        for _ in range(n):
                            np.matmul(x, W, out=out)
                        best[th] = min(best[th], (time.perf_counter() - t0) / n)
            ratio = best[2] / best[1]
            mark = "bold" if B * H * H >= threads.WORK_PER_THREAD * 2 else ""
            cells.append(f"[{mark}]{ratio:.2f}[/{mark}]" if mark else f"{ratio:.2f}")
        table.add_row(str(H), *cells)
    table.caption = f"bold: B*H*H >= 2 x {threads.WORK_PER_THREAD:,}, where auto takes 2 threads"
    con.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats (a smoke run)")
    ap.add_argument("--crossover", action="store_true", help="also print the matmul crossover table")
    args = ap.parse_args()
    con = console()
    reps_qs, reps_help, reps_d = (1, 3, 3) if args.quick else (3, 5, 7)
    cores = threads.available_cores()
    bptt = bptt_command()
    load_before = os.getloadavg()[0]
    rows: list[tuple[str, str, str, str, str]] = []

    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        tmp = Path(tmp)
        cache = tmp / "pycache"
        train = [*bptt, "train", "--quiet", "--runs-root", str(tmp / "runs")]
        wall([*bptt, "--help"], child_env(cache), tmp)  # warm the bytecode cache, untimed
        wall(train, child_env(cache), tmp)

        # -- quickstart with one competing process -----------------------------------
        with Competitor():
            q = alternate_runs(
                {
                    "default": (train, child_env(cache)),
                    "one": (train, child_env(cache, OPENBLAS_NUM_THREADS="1")),
                    "all": ([*train, "--threads", str(cores)], child_env(cache)),
                },
                reps_qs,
                tmp,
            )
        ratio = q["default"] / q["one"]
        rows.append(("quickstart, 1 competitor: default env (auto)", f"{q['default']:.2f} s", f"{ratio:.2f}x OPENBLAS_NUM_THREADS=1 ({q['one']:.2f} s)", "<= 1.15x", "met" if ratio <= 1.15 else "not met"))
        rows.append((f"  before: --threads {cores} (OpenBLAS default)", f"{q['all']:.2f} s", f"{q['all'] / q['one']:.2f}x", "(reference)", ""))

        # -- config D, no competitor --------------------------------------------------
        d, auto, _ = config_d_rows(3 if args.quick else reps_d)
        best = min(d["1"], d["all"])
        rd = d["auto"] / best
        rows.append((f"config D gradient, no competitor: auto = {auto.count} thread{'s' if auto.count > 1 else ''}", f"{d['auto'] * 1e3:.0f} ms", f"{rd:.2f}x best of 1 ({d['1'] * 1e3:.0f} ms) / {cores} ({d['all'] * 1e3:.0f} ms)", "<= 1.10x", "met" if rd <= 1.10 else "not met"))

        # -- start-up -------------------------------------------------------------------
        help_cpu: list[float] = []
        floor_cpu: list[float] = []
        help_times, floor_times = [], []
        for _ in range(reps_help):  # alternating with the bare interpreter, the floor under any CLI
            help_times.append(wall([*bptt, "--help"], child_env(cache), tmp, help_cpu))
            floor_times.append(wall([sys.executable, "-c", "pass"], child_env(cache), tmp, floor_cpu))
        h = median(help_times)
        rows.append(("bptt --help, cold (bytecode cached)", f"{h:.3f} s", f"min {min(help_times):.3f} s, CPU {median(help_cpu):.3f} s", "<= 0.35 s", "met" if h <= 0.35 else "not met"))
        rows.append(("  python -c pass, same run (the interpreter alone)", f"{median(floor_times):.3f} s", f"min {min(floor_times):.3f} s, CPU {median(floor_cpu):.3f} s", "(reference)", ""))
        if os.environ.get("PYTHONDONTWRITEBYTECODE"):
            nocache = median(wall([*bptt, "--help"], child_env(None), tmp) for _ in range(reps_help))
            rows.append(("  with this shell's PYTHONDONTWRITEBYTECODE, no cache", f"{nocache:.3f} s", "", "(reference)", ""))
        imp, qs_wall, cpu_share = import_share(train, child_env(cache), tmp, reps_qs)
        share = imp / qs_wall
        rows.append(("quickstart, no competitor: imports / wall time", f"{imp:.2f} / {qs_wall:.2f} s", f"{share:.0%} (CPU time: {cpu_share:.0%})", "<= 25%", "met" if share <= 0.25 else "not met"))

    load_after = os.getloadavg()[0]
    table = Table(title="BLAS threads and start-up: what `bptt` costs a user (issue 10)")
    for col, just in (("row", "left"), ("time", "right"), ("measured", "right"), ("target", "right"), ("result", "left")):
        table.add_column(col, justify=just)
    for r in rows:
        style = {"met": "green", "not met": "bold red"}.get(r[4], "")
        table.add_row(*r[:4], f"[{style}]{r[4]}[/{style}]" if style else r[4])
    table.caption = (
        f"{machine_line()}\n{blas_line()}\n"
        f"command: {' '.join(Path(c).name if i == 0 else c for i, c in enumerate(bptt))}; "
        f"load average {load_before:.1f} before, {load_after:.1f} after (other tenants count too)"
    )
    con.print(table)
    if args.crossover:
        crossover_table(con)


if __name__ == "__main__":
    main()
