"""Runs side by side: several runs and compare directories in one table, and run listings.

    bptt show RUN_OR_COMPARE... [--sort KEY] [--format table|markdown|latex|csv|json]
    bptt runs [ROOT] [--task T] [--status S] [--since WHEN] [--json]

``gather`` expands paths (a compare directory stands for its variants; a quoted glob is
expanded here, so it also works where no shell did it), ``side_by_side`` groups the runs by
the config keys whose values differ between them (seeds aggregated as mean and std, as a
compare does) and ``export`` writes the rows as a table for a paper. ``list_runs`` reads
summaries and configs only: a listing never parses a log (see docs/runs.md for the numbers).

Plain data in, plain data out; render.py draws the table, cli.py only parses options.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import math
import re
import statistics
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

from bptt_cli import runs
from bptt_cli.core.errors import BpttError

FORMATS = ("table", "markdown", "latex", "csv", "json")
# Keys that never make two runs different experiments: the seed (aggregated), how fast they
# ran, where they logged, and the compare: section (a plan for variants, not a run's setting).
IGNORED_KEYS = ("seed", "train.threads", "tracking", "compare")
# Keys that mean something for some cells only: a run of another cell has no value for them,
# which is not a difference (an Elman run and an LSTM run differ by their cell, not by forget_bias).
CELL_KEYS = {"model.forget_bias": ("lstm",), "model.activation": ("elman",), "model.spectral_radius": ("elman",)}
# Summary columns of a side-by-side row, in order; eval.<metric> columns follow eval_loss.
VALUE_COLUMNS = ("train_loss", "eval_loss")
TAIL_COLUMNS = ("updates", "ms_per_update")


class ViewError(BpttError, ValueError):
    """A path, sort key, filter or format that cannot be shown."""


# -- which runs -----------------------------------------------------------------------------
def expand(paths: Iterable[Path]) -> list[Path]:
    """Paths with quoted globs expanded (sorted); a pattern that matches nothing is an error."""
    out: list[Path] = []
    for p in paths:
        text = str(p)
        if not Path(text).exists() and glob.has_magic(text):
            found = sorted(glob.glob(text))
            if not found:
                raise ViewError(f"{text} matches no file or folder")
            out.extend(Path(f) for f in found)
        else:
            out.append(Path(text))
    return list(dict.fromkeys(out))


def run_dirs(paths: Iterable[Path]) -> list[Path]:
    """The run directories ``paths`` stand for: a run itself, a compare directory's variants
    (those that left a run directory); anything else is refused by name."""
    from bptt_cli import compare

    out: list[Path] = []
    for p in expand(paths):
        if compare.is_compare_dir(p):
            variants, _ = compare.read_plan(p)
            dirs = compare.check_variant_dirs(p, variants)
            out.extend(d for d in dirs.values() if runs.is_run_dir(d))
        elif runs.is_run_dir(p):
            out.append(p)
        elif not p.exists():
            raise ViewError(f"{p}: no such run or compare directory")
        else:
            raise ViewError(f"{p} is not a run directory (no config.yaml) or a compare directory (no plan.json)")
    return list(dict.fromkeys(out))


def gather(paths: Iterable[Path], *, logs: bool = False, on_skip: Callable[[Path, Exception], None] | None = None) -> list[runs.Run]:
    """The runs of ``paths``, read back (summaries and configs; ``logs`` also reads the JSONL
    logs). A damaged run is left out and reported to ``on_skip``; none left is an error."""
    loaded = []
    dirs = run_dirs(paths)
    for d in dirs:
        try:
            loaded.append(runs.load_run(d, logs=logs))
        except BpttError as e:
            if on_skip is None:
                raise
            on_skip(d, e)
    if not loaded:
        raise ViewError("no run to show" + (f" ({len(dirs)} damaged)" if dirs else ""))
    return loaded


# -- grouping by what differs ---------------------------------------------------------------
def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """The dotted keys whose values are not the same in every config (seed and how runs were
    executed excluded), in config order."""
    keys = list(dict.fromkeys(k for c in configs for k in c))
    out = []
    for k in keys:
        if k in IGNORED_KEYS or k.split(".", 1)[0] in IGNORED_KEYS:
            continue
        applies = [c for c in configs if c.get("model.cell", "elman") in CELL_KEYS.get(k, (c.get("model.cell", "elman"),))]
        if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in applies}) > 1:
            out.append(k)
    if "model.cell" in out:  # the cell first: it sets the colour of a plot's lines
        out.remove("model.cell")
        out.insert(0, "model.cell")
    return out


def with_cell(flat: dict[str, Any]) -> dict[str, Any]:
    """A flattened config with its cell named (an Elman config leaves its default cell out) and
    without the keys that are no setting of that cell (a gated cell's dump still holds activation)."""
    flat = dict(flat)
    flat.setdefault("model.cell", "elman")
    for k, cells in CELL_KEYS.items():
        if flat["model.cell"] not in cells:
            flat.pop(k, None)
    return flat


def _config_of(run: runs.Run) -> dict[str, Any]:
    flat = with_cell(runs.flatten(run.config))
    if "truncation.mode" in flat and run.summary.get("truncation"):
        flat["truncation.mode"] = run.summary["truncation"]  # the canonical spec (k_truncated:5)
    return flat


def title_of(configs: list[dict[str, Any]], keys: list[str]) -> str:
    """What the runs share, in a line: config name, task and the settings common to all."""
    first = configs[0]
    shared = lambda k: k not in keys and first.get(k) is not None  # noqa: E731
    parts = []
    for k, label in (("name", ""), ("task.name", "task "), ("truncation.mode", ""), ("model.cell", ""), ("model.hidden", "H="),
                     ("model.activation", ""), ("optimizer.name", ""), ("clip.mode", "clip ")):  # fmt: skip
        if k in CELL_KEYS and any(c.get("model.cell") not in CELL_KEYS[k] for c in configs):
            continue  # e.g. the activation, when not every run is an Elman cell
        if shared(k) and not (k == "model.cell" and first.get(k) == "elman"):
            parts.append(f"{label}{first[k]}")
    return ", ".join(parts)


def side_by_side(loaded: list[runs.Run]) -> dict:
    """One row per group of runs that share every differing config key but the seed:
    {"keys": differing keys, "title": what they share, "columns": value columns, "rows": [...]}.
    A row holds its key values, ``runs`` (count), ``seeds``, ``statuses`` and for every value
    column its mean and ``<column>_std`` (None below two values)."""
    configs = [_config_of(r) for r in loaded]
    keys = differing_keys(configs)
    if "truncation.mode" in keys:  # the canonical spec (k_truncated:5) already names its windows
        keys = [k for k in keys if k not in ("truncation.k", "truncation.k1", "truncation.k2")]
    groups: dict[str, list[tuple[runs.Run, dict]]] = {}
    for run, cfg in zip(loaded, configs):
        gid = json.dumps([cfg.get(k) for k in keys], default=str)
        groups.setdefault(gid, []).append((run, cfg))
    values = [_values(run) for run in loaded]
    evals = list(dict.fromkeys(k for v in values for k in v if k.startswith("eval_") and k != "eval_loss"))
    columns = [*VALUE_COLUMNS, *evals, *TAIL_COLUMNS]
    rows = []
    for members in groups.values():
        cfg = members[0][1]
        vals = [_values(run) for run, _ in members]
        row: dict[str, Any] = {k: cfg.get(k) for k in keys}
        row["label"] = " ".join(f"{k}={_text(cfg.get(k))}" for k in keys) or str(cfg.get("name", ""))
        row["runs"] = len(members)
        row["seeds"] = sorted({c.get("seed") for _, c in members if c.get("seed") is not None})
        row["statuses"] = _count(run.status for run, _ in members)
        row["paths"] = [str(run.path) for run, _ in members]
        for col in columns:
            nums = [v[col] for v in vals if _finite(v.get(col))]
            row[col] = statistics.fmean(nums) if nums else None
            row[col + "_std"] = statistics.stdev(nums) if len(nums) > 1 else None
        rows.append(row)
    chance = next(((r.summary.get("chance") or {}) for r in loaded if r.summary.get("chance")), {})
    return {"keys": keys, "title": title_of(configs, keys), "columns": columns, "rows": rows, "chance": chance}


def _values(run: runs.Run) -> dict[str, float | None]:
    s = run.summary
    final = s.get("final") or {}
    out: dict[str, Any] = {"train_loss": final.get("train.loss"), "eval_loss": final.get("eval.loss")}
    out.update({f"eval_{k[5:]}": v for k, v in final.items() if k.startswith("eval.") and k != "eval.loss"})
    updates, wall = s.get("updates"), s.get("wall_time")
    out["updates"] = updates
    out["ms_per_update"] = 1000.0 * wall / updates if wall and updates else None
    return out


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in items:
        out[s] = out.get(s, 0) + 1
    return out


def _text(v: Any) -> str:
    return "none" if v is None else str(v)


LOWER_IS_BETTER = ("train_loss", "eval_loss", "eval_bpc", "eval_error_rate", "ms_per_update")


def sort_view(view: dict, key: str) -> dict:
    """The rows ordered by a value column (best first) or a config key (ascending)."""
    allowed = [*view["columns"], *view["keys"], "runs", "label"]
    if key not in allowed:
        raise ViewError(f"--sort {key!r}: sort by one of {', '.join(allowed)}")
    descending = key in view["columns"] and key not in LOWER_IS_BETTER
    rows = view["rows"]
    present = [r for r in rows if r.get(key) is not None]
    try:
        present.sort(key=lambda r: r[key], reverse=descending)
    except TypeError:
        present.sort(key=lambda r: str(r[key]), reverse=descending)
    return {**view, "rows": present + [r for r in rows if r.get(key) is None]}


# -- exporting ------------------------------------------------------------------------------
def header_of(col: str) -> str:
    return {"train_loss": "train loss", "eval_loss": "eval loss", "ms_per_update": "ms/update"}.get(col, col.replace("_", " "))


def _cell_text(row: dict, col: str, fmt: Callable[..., str]) -> str:
    v, sd = row.get(col), row.get(col + "_std")
    if v is None:
        return "-"
    if col == "updates":
        return fmt(int(round(v)))
    return fmt(v) + (f" ± {fmt(sd, 2)}" if sd is not None else "")


def status_text(statuses: dict[str, int]) -> str:
    n = sum(statuses.values())
    return ", ".join(f"{c}/{n} {s}" for s, c in sorted(statuses.items()))


def export(view: dict, fmt_name: str, number: Callable[..., str]) -> str:
    """The view as markdown, LaTeX (booktabs), CSV (tidy: a column per key, mean and std
    apart, typed) or JSON; ``number`` formats a value for the human formats."""
    if fmt_name not in FORMATS or fmt_name == "table":
        raise ViewError(f"--format must be one of {', '.join(FORMATS)}, got {fmt_name!r}")
    keys, cols, rows = view["keys"], view["columns"], view["rows"]
    if fmt_name == "json":
        return json.dumps(runs._jsonable(view), indent=2) + "\n"
    if fmt_name == "csv":
        buf = io.StringIO()
        header = [*keys, "runs", "status"] + [c for col in cols for c in (col + "_mean", col + "_std")]
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        for r in rows:
            cells = [_csv(r.get(k)) for k in keys] + [r["runs"], status_text(r["statuses"])]
            cells += [_csv(r.get(x)) for col in cols for x in (col, col + "_std")]
            w.writerow(cells)
        return buf.getvalue()
    head = [*(keys or ["run"]), "runs", "status", *(header_of(c) for c in cols)]
    body = []
    for r in rows:
        label = [_text(r.get(k)) for k in keys] if keys else [r["label"]]
        body.append([*label, str(r["runs"]), status_text(r["statuses"]), *(_cell_text(r, c, number) for c in cols)])
    if fmt_name == "markdown":
        esc = lambda t: t.replace("|", "\\|")  # noqa: E731
        lines = ["| " + " | ".join(esc(h) for h in head) + " |", "|" + "|".join(" --- " if i < len(head) - len(cols) else " ---: " for i in range(len(head))) + "|"]
        lines += ["| " + " | ".join(esc(c) for c in row) + " |" for row in body]
        return (f"**{view['title']}**\n\n" if view.get("title") else "") + "\n".join(lines) + "\n"
    align = "l" * (len(head) - len(cols)) + "r" * len(cols)
    lines = [f"% {view['title']}" if view.get("title") else "% bptt show", f"\\begin{{tabular}}{{{align}}}", "\\toprule"]
    lines.append(" & ".join(_latex(h) for h in head) + " \\\\")
    lines.append("\\midrule")
    lines += [" & ".join(_latex(c) for c in row) + " \\\\" for row in body]
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex(text: str) -> str:
    text = text.replace("\\", "\\textbackslash{}")
    text = re.sub(r"([&%$#_{}])", r"\\\1", text)
    return text.replace("±", "$\\pm$").replace("~", "\\textasciitilde{}").replace("^", "\\textasciicircum{}")


def _csv(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    return v


# -- bptt runs ------------------------------------------------------------------------------
def parse_since(text: str, now: datetime | None = None) -> datetime:
    """``2d``, ``12h``, ``30m`` (that long ago) or an ISO date/time (UTC unless it says)."""
    now = now or datetime.now(timezone.utc)
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([dhm])\s*", text)
    if m:
        n, unit = float(m.group(1)), m.group(2)
        unit_name = {"d": "days", "h": "hours", "m": "minutes"}[unit]
        return now - timedelta(**{unit_name: n})
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ViewError(f"--since takes a duration (2d, 12h, 30m) or a date/time (2026-12-01, 2026-12-01T09:00), got {text!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _started(run: runs.Run) -> datetime | None:
    text = run.summary.get("started")
    if isinstance(text, str):
        try:
            when = datetime.fromisoformat(text)
            return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    m = re.match(r"(?:compare-)?(\d{8}T\d{6}Z)", run.path.name)  # the run directory's own stamp
    if m:
        return datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=timezone.utc)
    return None


def list_runs(
    root: Path,
    *,
    task: str | None = None,
    status: str | None = None,
    since: str | None = None,
    on_skip: Callable[[Path, Exception], None] | None = None,
) -> list[dict]:
    """One row per run under ``root`` that passes the filters, from its summary and config
    (no log is read): path, name, status, task, truncation, steps, seed, final loss and eval
    metrics, started."""
    if status is not None and status not in runs.REPORTED_STATUSES:
        raise ViewError(f"--status must be one of {', '.join(runs.REPORTED_STATUSES)}, got {status!r}")
    after = parse_since(since) if since is not None else None
    rows = []
    for p in runs.find_runs(root):
        try:
            run = runs.load_run(p, logs=False)  # the config is still validated: a damaged run is flagged
        except (BpttError, OSError) as e:  # one damaged run never hides the others
            if on_skip is not None:
                on_skip(p, e)
            continue
        s, final = run.summary, run.summary.get("final") or {}
        row = {
            "path": str(p),
            "name": s.get("name", run.config.get("name")),
            "status": run.status,
            "task": s.get("task", (run.config.get("task") or {}).get("name")),
            "truncation": s.get("truncation", ((run.config.get("truncation") or {}).get("mode") or "")),
            "steps_done": s.get("steps_done"),
            "steps": s.get("steps"),
            "seed": s.get("seed"),
            "final_loss": final.get("train.loss"),
            "final": {k: v for k, v in final.items() if k.startswith("eval.")},
            "started": s.get("started"),
        }
        if task is not None and row["task"] != task:
            continue
        if status is not None and row["status"] != status:
            continue
        if after is not None:
            when = _started(run)
            if when is None or when < after:
                continue
        rows.append(row)
    return rows
