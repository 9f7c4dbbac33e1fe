"""Loading the text task at any size (issue 10): time and peak memory, old loader against new.

    python benchmarks/bench_text.py             # 50 MB files: old loader, new (cold cache), new (warm cache)
    python benchmarks/bench_text.py --big       # also `bptt train` for 20 steps on a 2 GB file
    python benchmarks/bench_text.py --quick     # 5 MB files, a smoke run

Every measurement runs in a fresh subprocess. The child imports NumPy and the task library,
records its resident set size (the baseline), builds the text task, computes its chance level
and cuts one training and one evaluation batch (what `bptt train` does before its first
step), then reads its peak RSS (``ru_maxrss``). "old" is the whole-file loader the cache
replaced: ``bytes.decode`` of the whole file, ``np.unique(..., return_inverse=True)`` over its
code points, int64 ids. "new, cold" starts from an empty cache directory (three passes over
the file, the encoded ids written to the cache); "new, warm" finds them there (one hashing
pass, then a memory map).

The texts are generated: a block of the grammar corpus repeated to the size, ASCII, and the
same block with accented nouns and verbs (every chunk needs the UTF-8 decoder). They live in
a temp directory under /tmp, deleted at the end, with the cache.

Targets: a 50 MB file loads in <= 1 s with <= 150 MB peak RSS above the baseline; `bptt train`
on a 2 GB file (20 steps, hidden 32, batch 32) peaks below 500 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
from rich.table import Table

CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import numpy as np
import psutil
from bptt_cli.tasks import make_task
path, method, cache = {path!r}, {method!r}, {cache!r}
base = psutil.Process().memory_info().rss
t0 = time.perf_counter()
if method == "old":
    text = open(path, "rb").read().decode("utf-8-sig")
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    uniq, ids = np.unique(codes, return_inverse=True)
    n_eval = int(round(len(ids) * 0.1))
    train, held = ids[: len(ids) - n_eval].astype(np.int64), ids[len(ids) - n_eval :].astype(np.int64)
    p = np.bincount(train, minlength=len(uniq)) / len(train)
    V = len(uniq)
else:
    task = make_task("text", {{"path": path}}, cache_dir=cache)
    task.chance()
    task.train_batch(0, 32)
    task.eval_batch(256)
    V = task.n_in
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
print(json.dumps({{"base": base, "peak": peak, "seconds": seconds, "V": V}}))
"""

LOAD_SECONDS, LOAD_MB, TRAIN_MB = 1.0, 150, 500  # issue 10 targets


def measure_load(path: Path, method: str, cache: Path) -> dict:
    code = CHILD.format(root=str(_common.ROOT), path=str(path), method=method, cache=str(cache))
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# The wrapper's only child is `bptt train`, so RUSAGE_CHILDREN's ru_maxrss is that run's peak.
WRAPPER = r"""
import json, resource, subprocess, sys, time
t0 = time.perf_counter()
r = subprocess.run(sys.argv[1:], capture_output=True, text=True)
seconds = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
print(json.dumps({"code": r.returncode, "seconds": seconds, "peak": peak, "stderr": r.stderr[-2000:]}))
"""


def measure_train(config: Path, runs: Path, cache: Path) -> dict:
    bptt = [sys.executable, "-m", "bptt_cli", "train", str(config), "--runs-root", str(runs), "-q"]
    env = {**os.environ, "BPTT_CACHE_DIR": str(cache), "PYTHONPATH": str(_common.ROOT)}
    out = subprocess.run([sys.executable, "-c", WRAPPER, *bptt], check=True, capture_output=True, text=True, env=env)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    if r["code"] != 0:
        sys.exit(f"bptt train failed (exit {r['code']}):\n{r['stderr']}")
    return r


def block(accented: bool) -> bytes:
    """About 1 MB of the grammar corpus (fixed seed), optionally with non-ASCII letters."""
    import numpy as np

    from bptt_cli.tasks import grammar

    text = grammar.corpus(np.random.default_rng(0), 21_000, 2)
    if accented:
        for a, b in (("dog", "d\u00f6g"), ("cat", "c\u00e4t"), ("mouse", "m\u00f8use"), ("sees", "s\u00e9es")):
            text = text.replace(a, b)
    return text.encode("utf-8")


def write_file(path: Path, size: int, accented: bool) -> Path:
    """``size`` bytes (rounded up to whole blocks) of a repeated block: seconds for 2 GB."""
    b = block(accented)
    with open(path, "wb") as f:
        for _ in range(-(-size // len(b))):
            f.write(b)
    return path


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description="Time and peak RSS of loading the text task, old loader against new.")
    ap.add_argument("--quick", action="store_true", help="smoke run: 5 MB files")
    ap.add_argument("--big", action="store_true", help="also `bptt train` 20 steps on a 2 GB file (needs ~4 GB in /tmp)")
    ap.add_argument("--mb", type=int, default=50, help="size of the load files in MB (default 50)")
    args = ap.parse_args()
    size = (5 if args.quick else args.mb) * 10**6
    out = _common.console()

    with tempfile.TemporaryDirectory(prefix="bptt-bench-text-", dir="/tmp") as tmp:
        tmp = Path(tmp)
        table = Table(
            title=f"Text task load: build + chance + one batch each, {size / 1e6:.0f} MB files, fresh process per row",
            caption=f"peak growth = ru_maxrss - RSS after imports; targets (issue 10): <= {LOAD_SECONDS:g} s and "
            f"<= {LOAD_MB} MB above the baseline\n{_common.machine_line()}",
        )
        for col in ("file", "loader", "V", "seconds", "x new cold", "baseline MiB", "peak MiB", "growth MiB",
                    "target", "result"):
            table.add_column(col, justify="left" if col in ("file", "loader", "target") else "right")
        for accented in (False, True):
            name = "UTF-8 (accented)" if accented else "ASCII"
            path = write_file(tmp / f"text-{int(accented)}.txt", size, accented)
            cache = tmp / f"cache-{int(accented)}"
            rows = {
                "new, cold cache": measure_load(path, "new", cache),
                "new, warm cache": measure_load(path, "new", cache),
                "old (whole file)": measure_load(path, "old", cache),
            }
            cold = rows["new, cold cache"]["seconds"]
            for loader, r in rows.items():
                growth = r["peak"] - r["base"]
                target, result = "", ""
                if loader.startswith("new"):
                    target = f"<= {LOAD_SECONDS:g} s, <= {LOAD_MB} MB"
                    result = _common.verdict(r["seconds"] <= LOAD_SECONDS and growth <= LOAD_MB * 10**6)
                table.add_row(
                    f"{name} {path.stat().st_size / 1e6:.0f} MB", loader, str(r["V"]), f"{r['seconds']:.3f}",
                    f"{r['seconds'] / cold:.2f}", mib(r["base"]), mib(r["peak"]), mib(growth), target, result,
                )
            path.unlink()
        out.print(table)

        if args.big:
            big_size = 2 * 10**9
            t0 = time.perf_counter()
            path = write_file(tmp / "big.txt", big_size, accented=False)
            made = time.perf_counter() - t0
            config = tmp / "big.yaml"
            config.write_text(
                "name: bench_text_big\n"
                f"task: {{name: text, path: {json.dumps(str(path))}, length: 50}}\n"
                "model: {hidden: 32}\n"
                "train: {steps: 20, batch_size: 32, eval_every: 10, eval_size: 64}\n",
                encoding="utf-8",
            )
            cache, runs = tmp / "cache-big", tmp / "runs"
            big = Table(
                title=f"`bptt train` 20 steps on a {path.stat().st_size / 1e9:.2f} GB text file (written in {made:.1f} s), "
                "hidden 32, batch 32, T = 50",
                caption=f"peak = ru_maxrss of the bptt process; target (issue 10): < {TRAIN_MB} MB. The old loader "
                "was not run: it needs ~15x the file size (bytes, str, UTF-32 copy, unique's sort, int64 ids).",
            )
            for col in ("cache", "wall s", "peak MiB", "target", "result"):
                big.add_column(col, justify="left" if col in ("cache", "target") else "right")
            for label in ("cold (encodes 2 GB into the cache)", "warm (hash + memory map)"):
                r = measure_train(config, runs, cache)
                big.add_row(label, f"{r['seconds']:.1f}", mib(r["peak"]), f"< {TRAIN_MB} MB",
                            _common.verdict(r["peak"] < TRAIN_MB * 10**6))
            out.print(big)


if __name__ == "__main__":
    main()
