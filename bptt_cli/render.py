"""Rich renderables built from plain data (run files, summaries, registries). Nothing else.

Output goes to a stdout Console (data) or a stderr Console (talk and progress), both made
by the CLI; rich honours NO_COLOR and drops ANSI codes when the stream is not a terminal.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

SPARK = "▁▂▃▄▅▆▇█"
STATUS_STYLE = {
    "completed": "green",
    "running": "cyan",
    "diverged": "bold red",
    "interrupted": "yellow",
    "failed": "bold red",
    "crashed": "bold red",  # summary said running, but its writer is gone (killed)
}


def fmt(v: Any, digits: int = 4) -> str:
    """A number for a table cell: 4 significant digits, '-' for missing, 'nan' kept visible."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else ""
    if isinstance(v, int):
        return f"{v:,}" if abs(v) >= 10_000 else str(v)
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return str(v)
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 2}e}"
        return f"{v:.{digits}g}"  # significant digits, also below 1: 0.0041 stays 0.0041
    return str(v)


def sparkline(values: Sequence[float], width: int = 24) -> str:
    """A unicode sparkline of ``values`` resampled to ``width`` points (finite values only)."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [sum(vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) / max(1, int((i + 1) * step) - int(i * step)) for i in range(width)]
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * (len(SPARK) - 1) + 0.5))] for v in vals)


def pick_rows(n: int, every: int) -> list[int]:
    """Indices 0, every, 2*every, ... and always the last one."""
    if n == 0:
        return []
    idx = list(range(0, n, max(1, every)))
    if idx[-1] != n - 1:
        idx.append(n - 1)
    return idx


def default_every(n: int, rows: int = 20) -> int:
    """Show about ``rows`` rows of a log of ``n`` lines."""
    return max(1, math.ceil(n / rows))


def metrics_table(
    metrics: list[dict],
    evals: list[dict],
    *,
    every: int | None = None,
    diverged: dict | None = None,
    title: str = "Training log",
) -> Table:
    """The per-update log: step, update, loss, gradient norms, clipping, and held-out metrics
    at the steps where they were measured. Clipped updates and divergence are marked."""
    eval_keys = [k for k in (evals[0] if evals else {}) if k not in ("step", "update", "time")]
    by_step = {e["step"]: e for e in evals}
    every = every or default_every(len(metrics))
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1))
    # Short headers and unwrapped numbers keep the table whole in an 80-column terminal.
    for col in ("step", "update", "loss", "|g|", "|g| after", "clip"):
        table.add_column(col, justify="right", no_wrap=True, min_width=4)
    for k in eval_keys:
        table.add_column(f"eval {_short(k)}", justify="right", style="cyan", no_wrap=True)
    shown_evals: set[int] = set()
    rows = set(pick_rows(len(metrics), every))
    last_of_step = {r["step"]: i for i, r in enumerate(metrics)}
    rows.update(last_of_step[s] for s in by_step if s in last_of_step)  # every eval gets its row
    for i in sorted(rows):
        r = metrics[i]
        ev = by_step.get(r["step"])
        cells = [
            fmt(r.get("step")),
            fmt(r.get("update")),
            fmt(r.get("loss")),
            fmt(r.get("grad_norm")),
            fmt(r.get("clipped_norm")),
            Text("yes", style="yellow") if r.get("clipped") else Text(""),
        ]
        if ev is not None and r["step"] not in shown_evals:
            shown_evals.add(r["step"])
            cells += [fmt(ev.get(k)) for k in eval_keys]
        else:
            cells += [""] * len(eval_keys)
        table.add_row(*cells)
    if diverged:
        table.add_row(
            fmt(diverged.get("step")),
            fmt(diverged.get("update")),
            Text("NaN/Inf", style="bold red"),
            Text(f"diverged: non-finite {diverged.get('what', '')}", style="bold red"),
            *[""] * (2 + len(eval_keys)),
        )
    return table


def _short(key: str) -> str:
    return {"accuracy": "acc", "error_rate": "err"}.get(key, key)


def flow_table(diag: dict, *, title: str, width: int = 30, max_rows: int = 16) -> Table:
    """Gradient norm ||dL_t/dh_{t-j}|| by lag j, with a log-scale bar."""
    flow = diag.get("flow", {})
    lags, norms = flow.get("lags", []), flow.get("norms", [])
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", caption=_decay_caption(flow))
    table.add_column("lag j", justify="right")
    table.add_column("mean ||dL_t/dh_{t-j}||", justify="right")
    table.add_column("log scale", justify="left")
    finite = [math.log10(n) for n in norms if n and n > 0 and math.isfinite(n)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    shown = set(pick_rows(len(lags), max(1, math.ceil(len(lags) / max_rows))))
    for i, (j, n) in enumerate(zip(lags, norms)):
        if i not in shown:
            continue
        bar = ""
        if n and n > 0 and math.isfinite(n):
            bar = "█" * max(1, int(round((math.log10(n) - lo) / span * (width - 1))) + 1)
        table.add_row(str(j), fmt(n), bar)
    return table


def _decay_caption(flow: dict) -> str:
    d = flow.get("decay_per_step")
    if d is None:
        return ""
    text = f"x{d:.3g} per step"
    if flow.get("halves_every"):
        text += f", halves every {flow['halves_every']:.3g} steps"
    elif flow.get("doubles_every"):
        text += f", doubles every {flow['doubles_every']:.3g} steps"
    return text


def summary_panel(summary: dict) -> Panel:
    """The end-of-run panel: status, counters, final and best metrics, speed."""
    status = summary.get("status", "unknown")
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("status", Text(status, style=STATUS_STYLE.get(status, "")))
    grid.add_row("run", str(summary.get("run_dir", "")))
    grid.add_row(
        "setup",
        f"task {summary.get('task')}, truncation {summary.get('truncation')} "
        f"(update every {summary.get('update_every')}), clip {_clip_text(summary.get('clip'))}, "
        f"{summary.get('optimizer')}, seed {summary.get('seed')}",
    )
    grid.add_row(
        "progress",
        f"{fmt(summary.get('steps_done'))}/{fmt(summary.get('steps'))} steps, "
        f"{fmt(summary.get('updates'))} updates, {fmt(summary.get('sequences'))} sequences",
    )
    d = summary.get("diverged_at")
    if d:
        grid.add_row(
            "diverged",
            Text(f"non-finite {d.get('what')} at step {d.get('step')} (update {d.get('update')}); "
                 "logs kept up to the last finite update", style="bold red"),
        )  # fmt: skip
    t = summary.get("target_reached")
    if t:
        grid.add_row("target", Text(f"{t.get('target')} reached at step {t.get('step')}", style="green"))
    final = summary.get("final") or {}
    if final:
        grid.add_row("final", _metric_text(final))
    chance = summary.get("chance") or {}
    if chance:
        grid.add_row("chance", ", ".join(f"{k} {fmt(v)}" for k, v in chance.items()))
    best = summary.get("best") or {}
    if best:
        grid.add_row("best", _metric_text(best))
    diag = summary.get("diagnostics")
    if diag:
        grid.add_row(
            "diagnostics",
            f"decay x{fmt(diag.get('decay_per_step'))}/step, bias cosine {fmt(diag.get('bias_cosine'))}, "
            f"rel. error {fmt(diag.get('bias_rel_error'))}, spectral radius {fmt(diag.get('spectral_radius'))}"
            + (f", saturated {fmt(diag.get('saturation'))}" if diag.get("saturation") is not None else ""),
        )
    speed = summary.get("updates_per_second")
    grid.add_row("time", f"{fmt(summary.get('wall_time'))} s" + (f", {fmt(speed)} updates/s" if speed else ""))
    th = summary.get("threads")
    if isinstance(th, dict) and th.get("count") is not None:
        grid.add_row("threads", Text(f"{fmt(th.get('count'))} BLAS ({th.get('source')}: {th.get('reason')})"))
    for e in summary.get("expectations") or []:
        grid.add_row(
            "expect",
            Text(f"{e['expect']}: {fmt(e['value'])} {'ok' if e['ok'] else 'FAILED'}", style="green" if e["ok"] else "bold red"),
        )
    if summary.get("error"):
        grid.add_row("error", Text(summary["error"], style="red"))
    # A Text title: a str one goes through rich's markup, which loads its emoji table.
    return Panel(grid, title=Text("Summary"), title_align="left", border_style=STATUS_STYLE.get(status, ""))


def _clip_text(clip: dict | None) -> str:
    if not clip or clip.get("mode") == "none":
        return "none"
    return f"{clip.get('mode')} {fmt(clip.get('threshold'))}"


SUMMARY_SKIP = ("train.update", "train.lr", "train.clipped_norm", "train.clipped")


def _metric_text(d: dict) -> str:
    keys = [k for k in d if k not in SUMMARY_SKIP]
    return ", ".join(f"{k} {fmt(d[k])}" for k in keys)


def runs_tables(rows: Iterable[dict]) -> list[Table]:
    """One table per folder of runs (titled with the folder), one row per run directory,
    so the rows stay short enough for an 80-column terminal and the names stay whole."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        parent, _, leaf = str(r.get("path", "")).rpartition("/")
        groups.setdefault(parent or ".", []).append({**r, "leaf": leaf})
    tables = []
    for parent, members in groups.items():
        table = Table(title=parent, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1), pad_edge=False, collapse_padding=True, show_edge=False)
        # The config name is the folder's name for runs made under runs/; say it when it is not.
        named = any(str(r.get("name")) != parent.rpartition("/")[2] for r in members)
        for col in ("run", "name", "status", "task", "truncation") if named else ("run", "status", "task", "truncation"):
            table.add_column(col, no_wrap=True)
        for col in ("steps", "loss", "eval"):
            table.add_column(col, justify="right", no_wrap=True)
        for r in members:
            status = r.get("status", "?")
            table.add_row(
                r["leaf"],
                *([str(r.get("name", ""))] if named else []),
                Text(status, style=STATUS_STYLE.get(status, "")),
                str(r.get("task", "")),
                str(r.get("truncation", "")),
                f"{fmt(r.get('steps_done'))}/{fmt(r.get('steps'))}",
                fmt(r.get("final_loss")),
                r.get("eval", ""),
            )
        tables.append(table)
    return tables


def tasks_table(tasks: list[dict]) -> Table:
    """``tasks``: name, description, loss, and params (name, default, allowed, help)."""
    table = Table(title="Tasks", box=box.SIMPLE_HEAD, title_justify="left", show_lines=True)
    table.add_column("task", style="bold")
    table.add_column("what it is")
    table.add_column("parameters (default; allowed)")
    for t in tasks:
        params = "\n".join(f"{p['name']} = {p['default']!r}  ({p['allowed']}) {p['help']}" for p in t["params"])
        table.add_row(t["name"], f"{t['description']}\nloss: {t['loss']}", params)
    return table


def expectations_lines(rows: list[dict]) -> list[str]:
    return [f"expectation failed: {r['metric']} = {fmt(r['value'])}, wanted {r['expect']}" for r in rows if not r["ok"]]


def run_report(run, *, every: int | None = None) -> Group:
    """Everything ``bptt show`` prints for one run: logs, gradient flow, summary."""
    parts: list[Any] = [metrics_table(run.metrics, run.eval, every=every, diverged=run.summary.get("diverged_at"))]
    if run.diagnostics:
        parts.append(flow_table(run.diagnostics[0], title=f"Gradient flow at step {run.diagnostics[0].get('step')} (first)"))
        if len(run.diagnostics) > 1:
            parts.append(flow_table(run.diagnostics[-1], title=f"Gradient flow at step {run.diagnostics[-1].get('step')} (last)"))
    if run.summary:
        parts.append(summary_panel(run.summary))
    for p in run.problems:
        parts.append(Text(f"note: {p}", style="yellow"))
    return Group(*parts)


# -- bptt compare -------------------------------------------------------------------------
# (column key, header, best is "min" / "max" / None), in two tables so each fits a terminal
OUTCOME_COLUMNS = (
    ("train_loss", "train loss", "min"),
    ("eval_loss", "eval loss", "min"),
    ("metric_value", "{metric}", "max"),
    ("updates_to_target", "updates to target", "min"),
)
GRADIENT_COLUMNS = (
    ("grad_norm_median", "|g| median", None),
    ("grad_norm_max", "|g| max", None),
    ("clipped_share", "clipped", None),
    ("bias_cosine", "bias cos", "max"),
    ("decay_first", "decay/step first", None),
    ("decay_last", "decay/step last", None),
    ("time_per_update", "ms/update", "min"),
    ("time_per_sequence", "ms/seq", "min"),
)
COMPARE_COLUMNS = OUTCOME_COLUMNS + GRADIENT_COLUMNS
LOWER_IS_BETTER = ("bpc", "error_rate", "loss")
SORT_KEYS = tuple(c[0] for c in COMPARE_COLUMNS) + ("group", "updates")


def compare_tables(result: dict, *, sort: str | None = None) -> list[Table]:
    """Two tables, one row per mode/grid point, mean +- std over seeds, the best value of
    each column in bold green: outcomes (with a loss sparkline), then gradients and cost."""
    rows = list(result["rows"])
    metric = next((r["metric"] for r in rows if r.get("metric")), None)
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), None)
    if sort:
        descending = sort == "bias_cosine" or (sort == "metric_value" and metric not in LOWER_IS_BETTER)
        present = sorted((r for r in rows if r.get(sort) is not None), key=lambda r: r[sort], reverse=descending)
        rows = present + [r for r in rows if r.get(sort) is None]
    name = result.get("name", "")
    outcome = _compare_table(
        rows, OUTCOME_COLUMNS, metric, title=f"Compare {name}: outcome ({result.get('budget', 'sequences')} budget)",
        chance=chance, curves=True,
    )  # fmt: skip
    gradients = _compare_table(rows, GRADIENT_COLUMNS, metric, title=f"Compare {name}: gradients and cost", counts=False)
    return [outcome, gradients]


def _compare_table(
    rows, columns, metric, *, title: str, chance: float | None = None, counts: bool = True, curves: bool = False
) -> Table:
    cols = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    table.add_column("mode / grid point", no_wrap=True)
    if counts:
        table.add_column("status", no_wrap=True)
        table.add_column("updates", justify="right")
        table.add_column("seqs", justify="right")
    best: dict[str, float] = {}
    for key, _, how in cols:
        if how is None:
            continue
        if key == "metric_value" and metric in LOWER_IS_BETTER:
            how = "min"
        vals = [r[key] for r in rows if r.get(key) is not None]
        if len(vals) > 1:
            best[key] = min(vals) if how == "min" else max(vals)
    for key, header, _ in cols:
        header = header.format(metric=metric or "metric")
        if key == "metric_value" and chance is not None:
            header += f"\n(chance {fmt(chance)})"  # how far above chance, at a glance
        table.add_column(header, justify="right")
    if curves:
        table.add_column("loss curve", no_wrap=True, min_width=16)
    for r in rows:
        cells: list[Any] = [r["group"]]
        if counts:
            cells += [_status_cell(r["statuses"]), fmt(_round(r.get("updates"))), fmt(_round(r.get("sequences")))]
        for key, _, _ in cols:
            v, sd = r.get(key), r.get(key + "_std")
            scale = 1000.0 if key.startswith("time_per") else 1.0
            text = fmt(v * scale if v is not None else None)
            if sd is not None:
                text += f" ± {fmt(sd * scale, 2)}"
            style = "bold green" if key in best and v is not None and v == best[key] else ""
            cells.append(Text(text, style=style, no_wrap=True))
        if curves:
            cells.append(sparkline(r.get("loss_curve") or [], width=16))
        table.add_row(*cells)
    return table


def _round(v: Any) -> Any:
    return int(round(v)) if isinstance(v, float) else v


def _status_cell(statuses: dict[str, int]) -> Text:
    n = sum(statuses.values())
    if statuses.get("completed") == n:
        return Text(f"{n}/{n} ok", style="green")
    parts = [f"{c}/{n} {s}" for s, c in sorted(statuses.items()) if s != "completed"]
    return Text(", ".join(parts), style="red" if "diverged" in statuses or "failed" in statuses else "yellow")


def variants_table(result: dict) -> Table:
    """One row per variant: status and where it stopped (for runs that did not complete)."""
    table = Table(title=f"Variants (run directories under {result.get('path', '.')})", box=box.SIMPLE_HEAD, title_justify="left")
    errors = any(r.get("error") for r in result["variants"])
    cols = ("variant", "seed", "status", "stopped at step", "updates", "eval loss", "directory") + (("error",) if errors else ())
    for col in cols:
        table.add_column(col, justify="right" if col in ("seed", "updates", "eval loss", "stopped at step") else "left")
    for r in result["variants"]:
        status = r.get("status", "?")
        cells = [
            r["group"],
            str(r["seed"]),
            Text(status, style=STATUS_STYLE.get(status, "")),
            fmt(r.get("stopped_at")),
            fmt(r.get("updates")),
            fmt(r.get("eval_loss")),
            r.get("id", ""),
        ]
        if errors:  # the first line of what went wrong; the whole of it is in the variant's files
            cells.append(Text(r.get("error") or "", style="red"))
        table.add_row(*cells)
    return table


def compare_progress_table(status: dict[str, str], steps: dict[str, int], total: dict[str, int]) -> Table:
    """The live view of `bptt compare`: each variant's status and steps done."""
    table = Table(box=box.SIMPLE, show_header=True)
    table.add_column("variant")
    table.add_column("status")
    table.add_column("steps", justify="right")
    for vid, st in status.items():
        table.add_row(vid, Text(st, style=STATUS_STYLE.get(st, "")), f"{steps.get(vid, 0)}/{total.get(vid, '?')}")
    return table


def gradcheck_table(rows: list[dict], *, title: str) -> Table:
    """Relative error per check, mode and parameter; failures in red."""
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    params = list(dict.fromkeys(r["param"] for r in rows))
    table.add_column("check", no_wrap=True)
    table.add_column("mode", no_wrap=True)
    for p in params:
        table.add_column(p, justify="right", no_wrap=True)
    table.add_column("tolerance", justify="right", no_wrap=True)
    groups: dict[tuple[str, str], dict[str, dict]] = {}
    for r in rows:
        groups.setdefault((r["check"], r["mode"]), {})[r["param"]] = r
    for (check, mode), by_param in groups.items():
        cells = []
        for p in params:
            r = by_param.get(p)
            if r is None:
                cells.append("")
            else:
                cells.append(Text(f"{r['rel_error']:.1e}", style="" if r["ok"] else "bold red"))
        tol = next(iter(by_param.values()))["tolerance"]
        table.add_row(check, mode, *cells, f"{tol:.0e}")
    return table


# -- bptt estimators ----------------------------------------------------------------------
def estimators_table(result: dict) -> Table:
    """One row per truncation mode: relative bias with its 95% interval and noise floor,
    relative variance, cosine to full, cost; deterministic modes say so instead of a spread."""
    meta = result.get("meta", {})
    title = (
        f"Gradient estimators: {meta.get('task', '')}, T={meta.get('T')}, B={meta.get('B')}, H={meta.get('H')}, "
        f"{meta.get('batches')} batch(es), {meta.get('weights', '')}"
    )
    caption = Text(
        "bias = ||E[g] - g_full|| / ||g_full|| [95% bootstrap interval]; floor = sqrt(var / N), the bias an "
        "unbiased estimator shows from N draws; var = E||g - E g||^2 / ||g_full||^2; matvecs: W_hh products per sequence"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left", caption=caption, caption_justify="left")
    table.add_column("mode", no_wrap=True)
    for col in ("N", "rel. bias", "floor", "var", "cosine", "ms", "matvecs"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("note")
    rows = result.get("rows", [])
    biases = [r["rel_bias"] for r in rows if r.get("rel_bias") is not None]
    best = min(biases) if len(biases) > 1 else None
    for r in rows:
        det = r.get("kind") != "random"
        bias = fmt(r.get("rel_bias"), 3)
        if not det:
            bias += f" [{fmt(r.get('rel_bias_low'), 2)}, {fmt(r.get('rel_bias_high'), 2)}]"
        style = "bold green" if best is not None and r.get("rel_bias") == best else ""
        table.add_row(
            str(r.get("mode")),
            fmt(r.get("estimates")),
            Text(bias, style=style),
            "-" if det else fmt(r.get("noise_floor"), 2),
            Text("0 (det.)", style="dim") if det else Text(fmt(r.get("rel_variance"), 3)),
            fmt(r.get("cosine"), 3),
            fmt(r.get("ms_per_estimate"), 3),
            fmt(_round(r.get("matvecs_per_sequence"))),
            str(r.get("note", "")),
        )
    return table
