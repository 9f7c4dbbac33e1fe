"""Rich renderables built from plain data (run files, summaries, registries). Nothing else.

Output goes to a stdout Console (data) or a stderr Console (talk and progress), both made
by the CLI; rich honours NO_COLOR and drops ANSI codes when the stream is not a terminal.

Tables fit the width they are drawn in (``FitTable``): below it they drop their least useful
columns first (a sparkline, then cost columns), never crop a number's digits or an id; what
was left out is named under the table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from rich import box
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.measure import Measurement
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


def sparkline(values: Sequence[float], width: int = 24, *, scale: tuple[float, float, bool] | None = None) -> str:
    """A unicode sparkline of ``values`` resampled to ``width`` points (finite values only).

    ``scale`` = (lo, hi, log) from ``spark_scale`` draws every line of a table on one scale,
    so a row that moves from 2.08 to 1.90 does not look like one that falls to 0.07; without
    it the line spans its own minimum to maximum."""
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not vals:
        return ""
    if len(vals) > width:
        step = len(vals) / width
        vals = [sum(vals[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) / max(1, int((i + 1) * step) - int(i * step)) for i in range(width)]
    if scale is None:
        lo, hi, log = min(vals), max(vals), False
    else:
        lo, hi, log = scale
    if log:
        vals = [math.log10(max(v, lo)) for v in vals]
        lo, hi = math.log10(lo), math.log10(hi)
    span = hi - lo or 1.0
    top = len(SPARK) - 1
    return "".join(SPARK[max(0, min(top, int((v - lo) / span * top + 0.5)))] for v in vals)


def spark_scale(curves: Iterable[Sequence[float]]) -> tuple[float, float, bool] | None:
    """One (lo, hi, log) for several sparklines: log when every value is positive and they
    span two decades or more (one diverging curve must not flatten the rest)."""
    vals = [float(v) for c in curves for v in c if v is not None and math.isfinite(float(v))]
    if not vals:
        return None
    lo, hi = min(vals), max(vals)
    return lo, hi, lo > 0 and hi / lo >= 100


def _scale_text(scale: tuple[float, float, bool] | None) -> str:
    if scale is None:
        return ""
    lo, hi, log = scale
    return f"loss curves on one {'log ' if log else ''}scale, {fmt(lo)} (▁) to {fmt(hi)} (█)"


# -- tables that fit their width ------------------------------------------------------------
@dataclass
class Column:
    """One column of a ``FitTable``: header, a cell per row, and how it behaves when narrow.

    ``drop`` orders what goes first when the table is too wide (higher first; 0 never goes).
    Numbers and ids never wrap or get cut; ``wrap`` is for free text (an error message)."""

    header: str
    cells: list[Any] = field(default_factory=list)
    justify: str = "right"
    drop: int = 0
    style: str = ""
    wrap: bool = False
    min_width: int | None = None
    compact: list[Any] | None = None  # shorter cells (a mean without its ± std) for a last try before folding
    note: str = ""  # said under the table while the column is shown (a sparkline's scale)


def _cell(cells: list[Any], i: int) -> Any:
    return cells[i] if i < len(cells) else ""


class FitTable:
    """A rich table that fits the width it is drawn in by leaving out whole columns.

    First every column, in the given layout or a more compact one (``layouts``: the same
    rows as other columns, e.g. shorter bars); then columns go in ``drop`` order until the
    table's natural width fits, and the ones left out are named in the caption. If the columns that never go are still too wide (a very
    narrow terminal), cells fold onto more lines rather than lose characters."""

    def __init__(
        self, columns: Sequence[Column], *, title: str = "", caption: str = "", layouts: Sequence[Sequence[Column]] = (), **table_kwargs: Any
    ) -> None:
        # layouts: other column sets (the same rows put more compactly) tried in turn before folding
        self.columns = list(columns)
        self.layouts = [self.columns, *(list(cols) for cols in layouts)]
        self.title, self.caption, self.kwargs = title, caption, table_kwargs

    def build(self, columns: Sequence[Column], *, fold: bool = False, compact: bool = False, hidden: Sequence[str] = ()) -> Table:
        hidden = [h.replace("\n", " ") for h in hidden] + (["± std"] if compact and any(c.compact for c in columns) else [])
        notes = [self.caption, *(c.note for c in columns), ("left out to fit: " + ", ".join(hidden)) if hidden else ""]
        caption = "; ".join(x for x in notes if x)
        table = Table(title=self.title or None, caption=caption or None, caption_justify="left", **self.kwargs)
        for c in columns:
            # Folding, text columns (labels, ids) wrap onto more lines; numbers never do.
            wraps = c.wrap or (fold and c.justify == "left")
            table.add_column(
                c.header, justify=c.justify, style=c.style, no_wrap=not wraps, min_width=c.min_width,
                overflow="fold" if wraps else "ellipsis", max_width=40 if c.wrap else None,
            )  # fmt: skip
        n = max((len(c.cells) for c in columns), default=0)
        for i in range(n):
            table.add_row(*[_cell(c.compact if compact and c.compact else c.cells, i) for c in columns])
        return table

    def fit(self, console: Console, options: ConsoleOptions) -> Table:
        width = options.max_width
        wide = options.update_width(1_000_000)
        for columns in self.layouts:  # every column, in a more compact layout if need be
            table = self.build(columns)
            if Measurement.get(console, wide, table).maximum <= width:
                return table
        for columns in self.layouts:  # then leave columns out
            kept = list(columns)
            hidden: list[str] = []
            for c in sorted((c for c in columns if c.drop), key=lambda c: -c.drop):
                kept.remove(c)
                hidden.append(c.header)
                table = self.build(kept, hidden=hidden)
                if Measurement.get(console, wide, table).maximum <= width:
                    return table
            table = self.build(kept, compact=True, hidden=hidden)
            if Measurement.get(console, wide, table).maximum <= width:
                return table
        return self.build(kept, fold=True, compact=True, hidden=hidden)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.fit(console, options)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.fit(console, options))


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
) -> FitTable:
    """The per-update log: step, update, loss, gradient norms, clipping, the window K in force
    when the records have one (adaptive truncation), and held-out metrics at the steps where
    they were measured. Clipped updates and divergence are marked.
    Narrow: the norm after clipping goes first, then the clip mark, then the update count."""
    eval_keys = [k for k in (evals[0] if evals else {}) if k not in ("step", "update", "time")]
    by_step = {e["step"]: e for e in evals}
    every = every or default_every(len(metrics))
    cols = {
        "step": Column("step", min_width=4),
        "update": Column("update", min_width=4, drop=1),
        "loss": Column("loss", min_width=4),
        "|g|": Column("|g|", min_width=4),
        "|g| after": Column("|g| after", min_width=4, drop=3),
        "clip": Column("clip", min_width=4, drop=2),
    }
    if any(r.get("k") is not None for r in metrics):  # adaptive: K changes as it trains
        cols["K"] = Column("K", min_width=2)
    ecols = [Column(f"eval {_short(k)}", style="cyan") for k in eval_keys]
    shown_evals: set[int] = set()
    rows = set(pick_rows(len(metrics), every))
    last_of_step = {r["step"]: i for i, r in enumerate(metrics)}
    rows.update(last_of_step[s] for s in by_step if s in last_of_step)  # every eval gets its row
    for i in sorted(rows):
        r = metrics[i]
        ev = by_step.get(r["step"])
        for key, v in (("step", r.get("step")), ("update", r.get("update")), ("loss", r.get("loss")),
                       ("|g|", r.get("grad_norm")), ("|g| after", r.get("clipped_norm"))):  # fmt: skip
            cols[key].cells.append(fmt(v))
        cols["clip"].cells.append(Text("yes", style="yellow") if r.get("clipped") else Text(""))
        if "K" in cols:
            cols["K"].cells.append(fmt(r.get("k")))
        fresh = ev is not None and r["step"] not in shown_evals
        if fresh:
            shown_evals.add(r["step"])
        for k, c in zip(eval_keys, ecols):
            c.cells.append(fmt(ev.get(k)) if fresh else "")
    if diverged:
        cols["step"].cells.append(fmt(diverged.get("step")))
        cols["update"].cells.append(fmt(diverged.get("update")))
        cols["loss"].cells.append(Text("NaN/Inf", style="bold red"))
        cols["|g|"].cells.append(Text(f"diverged: non-finite {diverged.get('what', '')}", style="bold red"))
        for c in (cols["|g| after"], cols["clip"], *([cols["K"]] if "K" in cols else []), *ecols):
            c.cells.append("")
    return FitTable([*cols.values(), *ecols], title=title, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1))


def _short(key: str) -> str:
    return {"accuracy": "acc", "error_rate": "err"}.get(key, key)


def flow_table(diag: dict, *, title: str, width: int = 30, max_rows: int = 16) -> FitTable:
    """Gradient norm ||dL_t/dh_{t-j}|| by lag j, with a log-scale bar (left out when narrow);
    the LSTM's ||dL_t/dc_{t-j}|| beside it when logged (``norms_c``)."""
    flow = diag.get("flow") or {}
    lags, norms = flow.get("lags", []), flow.get("norms", [])
    norms_c = flow.get("norms_c") or []
    finite = [math.log10(n) for n in norms if n and n > 0 and math.isfinite(n)]
    lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    span = hi - lo or 1.0
    shown = set(pick_rows(len(lags), max(1, math.ceil(len(lags) / max_rows))))
    cols = [Column("lag j"), Column("mean ||dL_t/dh_{t-j}||")]
    if norms_c:
        cols.append(Column("mean ||dL_t/dc_{t-j}||", drop=2))
    bar = Column("log scale (h)" if norms_c else "log scale", justify="left", drop=1)
    short = Column(bar.header, justify="left", drop=1)  # a narrower terminal: bars half as long
    for i, (j, n) in enumerate(zip(lags, norms)):
        if i not in shown:
            continue
        bars = ["", ""]
        if n and n > 0 and math.isfinite(n):
            bars = ["█" * max(1, int(round((math.log10(n) - lo) / span * (w - 1))) + 1) for w in (width, width // 2)]
        values = [str(j), fmt(n), *([fmt(norms_c[i] if i < len(norms_c) else None)] if norms_c else [])]
        for c, cell in zip([*cols, bar, short], (*values, *bars)):
            c.cells.append(cell)
    caption = _decay_caption(flow)
    if norms_c and flow.get("decay_per_step_c") is not None:
        caption += f"; c: x{flow['decay_per_step_c']:.3g} per step"
    return FitTable([*cols, bar], layouts=[[*cols, short]], title=title, caption=caption, box=box.SIMPLE_HEAD, title_justify="left")


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
    cell = f"cell {summary['cell']}, " if summary.get("cell") else ""  # absent from runs made before gated cells
    grid.add_row(
        "setup",
        f"task {summary.get('task')}, {cell}truncation {summary.get('truncation')} "
        f"(update every {summary.get('update_every')}), clip {_clip_text(summary.get('clip'))}, "
        f"{summary.get('optimizer')}, seed {summary.get('seed')}",
    )
    grid.add_row(
        "progress",
        f"{fmt(summary.get('steps_done'))}/{fmt(summary.get('steps'))} steps, "
        f"{fmt(summary.get('updates'))} updates, {fmt(summary.get('sequences'))} sequences",
    )
    if summary.get("k_last") is not None or summary.get("k_range"):
        grid.add_row("K", _k_text(summary))
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
    if isinstance(summary.get("evaluation"), str):
        grid.add_row("eval", summary["evaluation"])
    best = summary.get("best") or {}
    if best:
        grid.add_row("best", _metric_text(best))
    diag = summary.get("diagnostics")
    if diag:
        gate = {"lstm": "forget", "gru": "update"}.get(summary.get("cell") or "", "")
        parts = [
            f"decay x{fmt(diag.get('decay_per_step'))}/step",
            *([f"c decay x{fmt(diag['decay_per_step_c'])}/step"] if diag.get("decay_per_step_c") is not None else []),
            f"bias cosine {fmt(diag.get('bias_cosine'))}",
            f"rel. error {fmt(diag.get('bias_rel_error'))}",
            # gated cells have no single W_hh: no radius, but their gates' saturation
            *([f"spectral radius {fmt(diag['spectral_radius'])}"] if diag.get("spectral_radius") is not None else []),
            *([f"saturated {fmt(diag['saturation'])}"] if diag.get("saturation") is not None else []),
            *([f"{gate} gates > 0.95 {fmt(diag['gate_high'])}, < 0.05 {fmt(diag.get('gate_low'))}".lstrip()]
              if diag.get("gate_high") is not None else []),
        ]  # fmt: skip
        grid.add_row("diagnostics", ", ".join(parts))
    speed = summary.get("updates_per_second")
    grid.add_row("time", f"{fmt(summary.get('wall_time'))} s" + (f", {fmt(speed)} updates/s" if speed else ""))
    th = summary.get("threads")
    if isinstance(th, dict) and th.get("count") is not None:
        grid.add_row("threads", Text(f"{fmt(th.get('count'))} BLAS ({th.get('source')}: {th.get('reason')})"))
    if summary.get("tracking"):
        grid.add_row("tracking", _tracking_text(summary["tracking"]))
    for e in summary.get("expectations") or []:
        grid.add_row(
            "expect",
            Text(f"{e['expect']}: {fmt(e['value'])} {'ok' if e['ok'] else 'FAILED'}", style="green" if e["ok"] else "bold red"),
        )
    if summary.get("error"):
        grid.add_row("error", Text(summary["error"], style="red"))
    # A Text title: a str one goes through rich's markup, which loads its emoji table.
    return Panel(grid, title=Text("Summary"), title_align="left", border_style=STATUS_STYLE.get(status, ""))


def _k_text(summary: dict) -> str:
    """"last 7 (picked within 1..T-1)": adaptive truncation's window at the end and its range."""
    lo, hi = (list(summary.get("k_range") or []) + [None, None])[:2]
    within = f"picked within {fmt(lo)}..{'T-1' if hi is None else fmt(hi)}" if lo is not None else ""
    if summary.get("k_last") is None:
        return within
    return f"last {fmt(summary['k_last'])}" + (f" ({within})" if within else "")


def _tracking_text(t: Any) -> Text:
    """What each tracking backend did, from summary.json's ``tracking``; failures in red."""
    if not isinstance(t, dict):
        return Text(str(t))
    out = Text()
    for name, r in t.items():
        if not isinstance(r, dict):
            continue
        where = r.get("logdir") or (f"experiment {r['experiment']}" if r.get("experiment") else "") or r.get("uri") or ""
        if out:
            out.append(", ")
        if r.get("status") == "failed":
            out.append(f"{name} failed: {r.get('error')}", style="red")
        else:
            out.append(f"{name} {r.get('status', '?')}" + (f" ({where})" if where else ""))
    if isinstance(t.get("error"), str):
        out.append(("; " if out else "") + f"failed: {t['error']}", style="red")
    return out


def _clip_text(clip: dict | None) -> str:
    if not clip or clip.get("mode") == "none":
        return "none"
    return f"{clip.get('mode')} {fmt(clip.get('threshold'))}"


SUMMARY_SKIP = ("train.update", "train.lr", "train.clipped_norm", "train.clipped", "train.k")  # train.k: the K line


def _metric_text(d: dict) -> str:
    keys = [k for k in d if k not in SUMMARY_SKIP]
    return ", ".join(f"{k} {fmt(d[k])}" for k in keys)


def runs_tables(rows: Iterable[dict]) -> list[FitTable]:
    """One table per folder of runs (titled with the folder), one row per run directory,
    so the rows stay short enough for an 80-column terminal and the names stay whole
    (narrower, the run's task, steps and name go before its truncation, loss and eval)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        parent, _, leaf = str(r.get("path", "")).rpartition("/")
        groups.setdefault(parent or ".", []).append({**r, "leaf": leaf})
    tables = []
    for parent, members in groups.items():
        # The config name is the folder's name for runs made under runs/; say it when it is not.
        named = any(str(r.get("name")) != parent.rpartition("/")[2] for r in members)
        cols = [
            Column("run", [r["leaf"] for r in members], justify="left"),
            *([Column("name", [str(r.get("name", "")) for r in members], justify="left", drop=4)] if named else []),
            Column("status", [Text(r.get("status", "?"), style=STATUS_STYLE.get(r.get("status", "?"), "")) for r in members], justify="left"),
            Column("task", [str(r.get("task", "")) for r in members], justify="left", drop=6),
            Column("truncation", [str(r.get("truncation", "")) for r in members], justify="left", drop=3),
            Column("steps", [f"{fmt(r.get('steps_done'))}/{fmt(r.get('steps'))}" for r in members], drop=5),
            Column("loss", [fmt(r.get("final_loss")) for r in members], drop=2),
            Column("eval", [r.get("eval") or _evals_text(r.get("final") or {}) for r in members], drop=1),
        ]
        tables.append(FitTable(cols, title=parent, box=box.SIMPLE_HEAD, title_justify="left", padding=(0, 1), pad_edge=False,
                               collapse_padding=True, show_edge=False))  # fmt: skip
    return tables


def _evals_text(final: dict) -> str:
    return ", ".join(f"{_short(k[5:])} {fmt(v)}" for k, v in final.items() if k.startswith("eval.") and k != "eval.loss")


def side_by_side_table(view: dict) -> FitTable:
    """``bptt show A B ...``: one row per group of runs (``views.side_by_side``), a column per
    config key that differs between them, mean ± std over seeds, the best value in bold green.
    Narrow: timing goes first, then the update count, run count and training loss."""
    from bptt_cli import views

    rows, keys = view["rows"], view["keys"]
    labels = [Column(k, [_text_of(r.get(k)) for r in rows], justify="left") for k in keys]
    if not keys:
        labels = [Column("run", [r["label"] for r in rows], justify="left")]
    # Narrower: the keys that differ as key=value lines of one column.
    stacked = [Column("config", ["\n".join(f"{k}={_text_of(r.get(k))}" for k in keys) or r["label"] for r in rows], justify="left")]
    cols: list[Column] = []
    cols.append(Column("runs", [str(r["runs"]) for r in rows], drop=3))
    cols.append(Column("status", [_status_cell(r["statuses"]) for r in rows], justify="left"))
    drops = {"ms_per_update": 6, "updates": 5, "train_loss": 2}
    chance = view.get("chance") or {}
    for col in view["columns"]:
        vals = [r[col] for r in rows if r.get(col) is not None]
        lower = col in views.LOWER_IS_BETTER
        best = (min(vals) if lower else max(vals)) if len(vals) > 1 and col != "updates" else None
        header = views.header_of(col)
        if col.startswith("eval_") and chance.get(col[5:]) is not None and col != "eval_loss":
            header += f"\n(chance {fmt(chance[col[5:]])})"
        cells, compact = [], []
        for r in rows:
            v, sd = r.get(col), r.get(col + "_std")
            style = "bold green" if best is not None and v == best else ""
            main = fmt(_round(v)) if col == "updates" else fmt(v)
            compact.append(Text(main, style=style))
            cells.append(Text(main + (f" ± {fmt(sd, 2)}" if sd is not None and col != "updates" else ""), style=style))
        cols.append(Column(header, cells, drop=drops.get(col, 0), compact=compact))
    return FitTable([*labels, *cols], layouts=[stacked + cols] if len(keys) > 1 else (), title=view.get("title") or "Runs side by side",
                    box=box.SIMPLE_HEAD, title_justify="left", caption="mean ± std over seeds" if any(r["runs"] > 1 for r in rows) else "",
                    show_lines=False)  # fmt: skip


def _text_of(v: Any) -> str:
    return "none" if v is None else str(v)


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
# (column key, header, best is "min" / "max" / None, drop order when narrow: higher first,
# 0 never), in tables that each fit a terminal: outcome, gradients and cost, diagnostics.
OUTCOME_COLUMNS = (
    ("train_loss", "train loss", "min", 3),
    ("eval_loss", "eval loss", "min", 0),
    ("metric_value", "{metric}", "max", 0),
    ("updates_to_target", "updates to target", "min", 4),
)
GRADIENT_COLUMNS = (
    ("grad_norm_median", "|g| median", None, 2),
    ("grad_norm_max", "|g| max", None, 3),
    ("clipped_share", "clipped", None, 4),
    ("k_mean", "K mean", None, 1),  # adaptive truncation: the window it picked, over the updates
    ("k_last", "K last", None, 5),
    ("ms_per_update", "ms/update", "min", 6),  # cost goes before gradients
    ("ms_per_sequence", "ms/seq", "min", 7),
)
COMPARE_COLUMNS = OUTCOME_COLUMNS + GRADIENT_COLUMNS
# Diagnostics: every scalar a pass logs reaches the compare as <name>_mean and <name>_last;
# these are shown first, with short headers; the rest follow unless listed in DIAG_HIDDEN
# (restatements of a shown one; they stay in compare.json and compare.csv).
DIAG_HEADERS = {
    "bias_cosine": ("bias cos", "max"),
    "bias_rel_error": ("rel error", "min"),
    "flow_decay_per_step": ("decay/step", None),
    "spectrum_spectral_radius": ("spectral radius", None),
    "spectrum_saturated_share": ("saturated", None),
    "flow_decay_per_step_c": ("decay/step c", None),  # the LSTM's cell state
    "spectrum_gate_high": ("gates > 0.95", None),  # forget (LSTM) / update (GRU) gates that keep the state
    "spectrum_gate_low": ("gates < 0.05", None),
}
DIAG_HIDDEN = ("flow_slope", "flow_slope_c", "flow_halves_every", "flow_doubles_every", "bias_norm_mode", "bias_norm_full",
               "spectrum_max_singular_value")  # fmt: skip
LOWER_IS_BETTER = ("bpc", "error_rate", "loss")
SORT_KEYS = tuple(c[0] for c in COMPARE_COLUMNS) + (
    "bias_cosine_mean", "bias_cosine_last", "bias_rel_error_mean", "bias_rel_error_last",
    "flow_decay_per_step_first", "flow_decay_per_step_last", "group", "updates",
)  # fmt: skip
# Names --sort took before the files had units and every diagnostic a mean and a last value.
SORT_ALIASES = {"time_per_update": "ms_per_update", "time_per_sequence": "ms_per_sequence", "bias_cosine": "bias_cosine_mean",
                "decay_first": "flow_decay_per_step_first", "decay_last": "flow_decay_per_step_last"}  # fmt: skip
DESCENDING = ("bias_cosine_mean", "bias_cosine_last")


def sort_rows(rows: list[dict], sort: str, metric: str | None = None) -> list[dict]:
    """Rows ordered best first by ``sort`` (a column key or an alias); rows without it last."""
    sort = SORT_ALIASES.get(sort, sort)
    descending = sort in DESCENDING or (sort == "metric_value" and metric not in LOWER_IS_BETTER)
    present = [r for r in rows if r.get(sort) is not None]
    try:
        present.sort(key=lambda r: r[sort], reverse=descending)
    except TypeError:  # mixed types (a grid key with numbers and none): order as text
        present.sort(key=lambda r: str(r[sort]), reverse=descending)
    return present + [r for r in rows if r.get(sort) is None]


def compare_tables(result: dict, *, sort: str | None = None) -> list[FitTable]:
    """One row per mode/grid point, mean +- std over seeds, the best value of each column in
    bold green: outcomes (with loss sparklines on one shared scale), gradients and cost, and
    the diagnostics (mean over the passes and the last pass) when they were logged."""
    rows = list(result["rows"])
    metric = next((r["metric"] for r in rows if r.get("metric")), None)
    chance = next((r["chance"] for r in rows if r.get("chance") is not None), None)
    if sort:
        rows = sort_rows(rows, sort, metric)
    name = result.get("name", "")
    outcome = _compare_table(
        rows, OUTCOME_COLUMNS, metric, title=f"Compare {name}: outcome ({result.get('budget', 'sequences')} budget)",
        chance=chance, curves=True,
    )  # fmt: skip
    tables = [outcome, _compare_table(rows, GRADIENT_COLUMNS, metric, title=f"Compare {name}: gradients and cost", counts=False)]
    diag = diagnostic_columns(rows)
    if diag:
        tables.append(_compare_table(rows, diag, metric, title=f"Compare {name}: diagnostics (mean over passes, last pass)", counts=False))
    return tables


def diagnostic_columns(rows: list[dict]) -> tuple:
    """The diagnostics columns of the rows, in the shape of OUTCOME_COLUMNS: the known ones
    first, then any other key a pass logged; the later a column, the sooner it goes."""
    names = list(dict.fromkeys(k[: -len("_mean")] for r in rows for k in r if k.endswith("_mean") and not k.endswith("_std")))
    names = [n for n in names if n != "k"]  # k_mean: adaptive K, a column of the gradients table
    names = [n for n in DIAG_HEADERS if n in names] + [n for n in names if n not in DIAG_HEADERS and n not in DIAG_HIDDEN]
    cols = []
    for n in names:
        header, best = DIAG_HEADERS.get(n, (n.replace("_", " "), None))
        if n == "flow_decay_per_step" and any(r.get("flow_decay_per_step_first") is not None for r in rows):
            cols.append(("flow_decay_per_step_first", f"{header}\nfirst", best))  # at the initial weights
        cols += [(f"{n}_mean", f"{header}\nmean", best), (f"{n}_last", f"{header}\nlast", best)]
    return tuple((key, header, best, i + 1) for i, (key, header, best) in enumerate(cols))


def _compare_table(
    rows, columns, metric, *, title: str, chance: float | None = None, counts: bool = True, curves: bool = False
) -> FitTable:
    cols = [c for c in columns if any(r.get(c[0]) is not None for r in rows)]
    out = [Column("mode / grid point", [r["group"] for r in rows], justify="left")]
    if counts:
        out.append(Column("status", [_status_cell(r["statuses"]) for r in rows], justify="left"))
        out.append(Column("updates", [fmt(_round(r.get("updates"))) for r in rows], drop=2))
        out.append(Column("seqs", [fmt(_round(r.get("sequences"))) for r in rows], drop=5))
    for key, header, how, drop in cols:
        if key == "metric_value" and metric in LOWER_IS_BETTER:
            how = "min"
        vals = [r[key] for r in rows if r.get(key) is not None]
        best = (min(vals) if how == "min" else max(vals)) if how is not None and len(vals) > 1 else None
        header = header.format(metric=metric or "metric")
        if key == "metric_value" and chance is not None:
            header += f"\n(chance {fmt(chance)})"  # how far above chance, at a glance
        cells, compact = [], []
        for r in rows:
            v, sd = r.get(key), r.get(key + "_std")
            style = "bold green" if best is not None and v == best else ""
            compact.append(Text(fmt(v), style=style))
            cells.append(Text(fmt(v) + (f" ± {fmt(sd, 2)}" if sd is not None else ""), style=style))
        out.append(Column(header, cells, drop=drop, compact=compact))
    if curves:
        scale = spark_scale(r.get("loss_curve") or [] for r in rows)
        out.append(Column("loss curve", [sparkline(r.get("loss_curve") or [], width=16, scale=scale) for r in rows],
                          justify="left", drop=6, note=_scale_text(scale)))  # fmt: skip
    return FitTable(out, title=title, box=box.SIMPLE_HEAD, title_justify="left")


def _round(v: Any) -> Any:
    return int(round(v)) if isinstance(v, float) else v


def _status_cell(statuses: dict[str, int]) -> Text:
    n = sum(statuses.values())
    if statuses.get("completed") == n:
        return Text(f"{n}/{n} ok", style="green")
    parts = [f"{c}/{n} {s}" for s, c in sorted(statuses.items()) if s != "completed"]
    return Text(", ".join(parts), style="red" if "diverged" in statuses or "failed" in statuses else "yellow")


def variants_table(result: dict) -> FitTable:
    """One row per variant: status and where it stopped (for runs that did not complete);
    the directory (the id to copy) is never left out or cut."""
    vs = result["variants"]
    cols = [
        Column("variant", [r["group"] for r in vs], justify="left", drop=5),
        Column("seed", [str(r["seed"]) for r in vs]),
        Column("status", [Text(r.get("status", "?"), style=STATUS_STYLE.get(r.get("status", "?"), "")) for r in vs], justify="left"),
        Column("stopped at step", [fmt(r.get("stopped_at")) for r in vs], drop=3),
        Column("updates", [fmt(r.get("updates")) for r in vs], drop=4),
        Column("eval loss", [fmt(r.get("eval_loss")) for r in vs], drop=2),
        Column("directory", [r.get("id", "") for r in vs], justify="left"),
    ]
    if any(r.get("error") for r in vs):  # the first line of what went wrong; the whole of it is in the variant's files
        cols.append(Column("error", [Text(r.get("error") or "", style="red") for r in vs], justify="left", wrap=True))
    return FitTable(cols, title=f"Variants (run directories under {result.get('path', '.')})", box=box.SIMPLE_HEAD, title_justify="left")


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
        "bias = ||E[g] - g_full|| / ||g_full||, net of sampling noise [95% bootstrap interval]; floor = sqrt(var / N), "
        "the ||mean - g_full|| / ||g_full|| noise alone gives from N draws; var = E||g - E g||^2 / ||g_full||^2; "
        "matvecs: W_hh products per sequence"
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
