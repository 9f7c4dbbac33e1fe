"""Aggregating a compare: one row per variant, one per mode/grid point, and the files."""

from __future__ import annotations

import csv
import io
import json
import math
import statistics
from pathlib import Path
from typing import Any

from bptt_cli import runs
from bptt_cli.compare.plan import Variant, _first_line, _steps_done, check_variant_dirs, read_plan, read_summary
from bptt_cli.core.errors import BpttError
from bptt_cli.runs import REPORTED_STATUSES as STATUSES

# -- aggregation --------------------------------------------------------------------------
METRIC_PREFERENCE = ("accuracy", "bpc", "error_rate")


def collect(path: Path) -> dict:
    """Read every variant's files into rows: one per variant and one per mode/grid point
    (the shape of compare.json, ``schemas.CompareJson``)."""
    path = Path(path)
    variants, meta = read_plan(path)
    check_variant_dirs(path, variants)  # nothing is read through a symlink to elsewhere
    rows = [_variant_row(path, v) for v in variants]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    fields = numeric_fields(rows)
    agg = [_aggregate(g, rs, fields) for g, rs in groups.items()]
    grid_keys = list(dict.fromkeys(k for v in variants for k in v.grid))
    return {"schema_version": runs.SCHEMA_VERSION, **meta, "path": str(path), "grid_keys": grid_keys, "variants": rows, "rows": agg}


def _variant_row(path: Path, v: Variant) -> dict:
    d = path / v.id
    row: dict[str, Any] = {"id": v.id, "group": v.group, "mode": v.mode, "grid": v.grid, "seed": v.seed, "run_dir": str(d)}
    if not runs.is_run_dir(d):
        # A variant that failed before writing its config (say, a text file that is not UTF-8)
        # has only the summary its executor wrote: it failed, it did not fail to start.
        s = read_summary(d) if d.is_dir() else {}
        row["status"] = _status(s.get("status"), "not started")
        if s.get("error"):
            row.update(error=_first_line_of(s["error"]), steps_done=0, stopped_at=0)
        return row
    try:
        run = runs.load_run(d)
    except BpttError as e:
        row.update(status="damaged", error=_first_line(e))
        return row
    s = run.summary
    final = s.get("final") or {}
    metric = next((k for k in METRIC_PREFERENCE if f"eval.{k}" in final), None)
    _, losses = runs.step_losses(run.metrics)
    norms = [m["grad_norm"] for m in run.metrics if m.get("grad_norm") is not None]
    clipped = [bool(m.get("clipped")) for m in run.metrics]
    updates = s.get("updates") or (run.metrics[-1]["update"] if run.metrics else 0)
    wall = s.get("wall_time")
    target = s.get("target_reached") or {}
    damaged_summary = any(p.startswith("summary.json") for p in run.problems)
    row.update(
        status=_status(s.get("status"), "damaged" if damaged_summary else "not started"),
        steps_done=s.get("steps_done", _steps_done(d)),
        stopped_at=_stopped_at(s),
        updates=updates,
        sequences=s.get("sequences"),
        train_loss=final.get("train.loss"),
        eval_loss=final.get("eval.loss"),
        **{f"eval_{k[5:]}": final[k] for k in final if k.startswith("eval.") and k != "eval.loss"},
        metric=metric,
        metric_value=final.get(f"eval.{metric}") if metric else None,
        chance=(s.get("chance") or {}).get(metric) if metric else None,
        updates_to_target=target.get("update"),
        grad_norm_median=statistics.median(norms) if norms else None,
        grad_norm_max=max(norms) if norms else None,
        clipped_share=sum(clipped) / len(clipped) if clipped else None,
        **window_columns(run.metrics),
        **diagnostic_columns(run.diagnostics),
        wall_time_s=wall,
        ms_per_update=1000.0 * wall / updates if wall and updates else None,
        ms_per_sequence=1000.0 * wall / s["sequences"] if wall and s.get("sequences") else None,
        loss_curve=_resample(losses, 24),
        final=final,
    )
    if s.get("error"):
        row["error"] = _first_line_of(s["error"])
    return row


def _first_line_of(error: Any) -> str:
    return (str(error).strip().splitlines() or [""])[0][:500]


def _status(status: Any, missing: str) -> str:
    """One vocabulary (``schemas.STATUSES``): a status bptt did not write reads as damaged."""
    if not status:
        return missing
    return status if status in STATUSES else "damaged"


def window_columns(records: list[dict]) -> dict[str, float | None]:
    """``k_mean`` and ``k_last``: the window K in force over the logged updates and at the last
    one, for a mode that picks K as it trains (adaptive); nothing for the others, whose K is
    in their spec."""
    ks = [r.get("k") for r in records]
    present = [k for k in ks if _number(k) is not None]
    if not present:
        return {}
    return {"k_mean": statistics.fmean(present), "k_last": ks[-1] if _number(ks[-1]) is not None else None}


def diagnostic_columns(records: list[dict]) -> dict[str, float | None]:
    """``<section>_<key>_mean`` and ``_last`` for every scalar of the diagnostic passes
    (bias.cosine -> bias_cosine_mean, bias_cosine_last; any key a pass logs, so a new
    diagnostic reaches the compare files without code here), and the gradient flow's decay
    at the first pass (at the initial weights when the first pass is at update 0)."""
    series: dict[str, list[float | None]] = {}
    for i, rec in enumerate(records):
        for name, v in _scalars(rec):
            series.setdefault(name, [None] * i).append(v)
        for vals in series.values():
            if len(vals) < i + 1:
                vals.append(None)  # this pass did not log the key: its last value is missing
    out: dict[str, float | None] = {}
    first = series.get("flow_decay_per_step")
    if first and first[0] is not None:
        out["flow_decay_per_step_first"] = first[0]
    for name, vals in series.items():
        present = [v for v in vals if v is not None]
        out[f"{name}_mean"] = statistics.fmean(present) if present else None
        out[f"{name}_last"] = vals[-1]
    return out


def _scalars(rec: dict):
    """(name, finite value or None) of the numbers of one diagnostics record, one level of
    sections deep (flow.decay_per_step -> flow_decay_per_step); lists and per-parameter maps
    are left to the run's own files."""
    for section, val in rec.items():
        if section in ("step", "update") or val is None:  # a section a pass did not produce (null)
            continue
        items = val.items() if isinstance(val, dict) else [(None, val)]
        for key, v in items:
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                name = section if key is None else f"{section}_{key}"
                yield name, (float(v) if v is not None and math.isfinite(v) else None)


def check_expectations(result: dict, expect) -> list[dict]:
    """``--expect`` checked against every variant's final metrics: one row per variant and
    expectation (a variant that never logged the metric does not meet it)."""
    rows = []
    for r in result["variants"]:
        final = r.get("final") or {}
        for e in expect:
            value = final.get(e.metric)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and e.check(float(value))
            rows.append({"id": r["id"], "expect": str(e), "metric": e.metric, "value": value, "ok": ok})
    return rows


def _stopped_at(s: dict) -> int | None:
    """The step where a variant that did not complete stopped."""
    if s.get("status") == "diverged":
        return (s.get("diverged_at") or {}).get("step")
    if s.get("status") in ("interrupted", "failed", "running", "crashed"):
        return s.get("steps_done")
    return None


def _resample(values: list[float], n: int) -> list[float]:
    if len(values) <= n:
        return values
    step = len(values) / n
    return [statistics.fmean(values[int(i * step) : max(int((i + 1) * step), int(i * step) + 1)]) for i in range(n)]


AGG_FIELDS = (
    "train_loss",
    "eval_loss",
    "metric_value",
    "updates_to_target",
    "grad_norm_median",
    "grad_norm_max",
    "clipped_share",
    "flow_decay_per_step_first",
    "wall_time_s",
    "ms_per_update",
    "ms_per_sequence",
    "updates",
    "sequences",
    "steps_done",
)
DIAG_SUFFIXES = ("_mean", "_last")
WINDOW_FIELDS = ("k_mean", "k_last")  # window_columns: with the gradients, not the diagnostics


def numeric_fields(rows: list[dict]) -> list[str]:
    """AGG_FIELDS, then the eval and diagnostics columns the variants have, in first-seen order."""
    extra = [
        k for r in rows for k in r
        if k not in AGG_FIELDS and (k.startswith("eval_") or k.endswith(DIAG_SUFFIXES)) and _number(r[k]) is not None
    ]  # fmt: skip
    return [*AGG_FIELDS, *dict.fromkeys(extra)]


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return v


def _aggregate(group: str, rows: list[dict], fields: list[str]) -> dict:
    out: dict[str, Any] = {"group": group, "mode": rows[0]["mode"], "grid": rows[0]["grid"], "seeds": len(rows)}
    for f in fields:
        vals = [v for v in (_number(r.get(f)) for r in rows) if v is not None]
        out[f] = statistics.fmean(vals) if vals else None
        out[f + "_std"] = statistics.stdev(vals) if len(vals) > 1 else None
    out["metric"] = next((r.get("metric") for r in rows if r.get("metric")), None)
    out["chance"] = next((r.get("chance") for r in rows if r.get("chance") is not None), None)
    statuses: dict[str, int] = {}
    for r in rows:
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    out["statuses"] = statuses
    curves = [r["loss_curve"] for r in rows if r.get("loss_curve")]
    if curves:
        n = min(len(c) for c in curves)
        out["loss_curve"] = [statistics.fmean(c[i] for c in curves) for i in range(n)]
    else:
        out["loss_curve"] = []
    return out


# -- the files ------------------------------------------------------------------------------
# compare.csv: one row per variant, every grid key a column of its own (named by its dotted
# key), ints written as ints; compare_summary.csv: one row per mode/grid point, <column>_mean
# and <column>_std. Columns are documented in schemas.CompareCsvRow / CompareSummaryCsvRow.
CSV_FIELDS = (
    "compare", "id", "group", "mode", "seed", "status", "steps_done", "stopped_at", "updates", "sequences",
    "train_loss", "eval_loss", "metric", "metric_value", "chance", "updates_to_target",
    "grad_norm_median", "grad_norm_max", "clipped_share", "flow_decay_per_step_first",
    "wall_time_s", "ms_per_update", "ms_per_sequence",
)  # fmt: skip


def csv_columns(result: dict) -> list[str]:
    """compare.csv's header: the fixed columns with the grid keys after ``mode``, the eval,
    adaptive K and diagnostics columns the variants have before the times, and ``error`` when
    one failed."""
    grid = list(result.get("grid_keys") or dict.fromkeys(k for r in result["variants"] for k in r.get("grid", {})))
    fields = numeric_fields(result["variants"])
    evals = [f for f in fields if f.startswith("eval_") and f != "eval_loss"]
    windows = [f for f in fields if f in WINDOW_FIELDS]
    diags = [f for f in fields if f.endswith(DIAG_SUFFIXES) and f not in WINDOW_FIELDS]
    head = list(CSV_FIELDS[: CSV_FIELDS.index("seed")])
    body = list(CSV_FIELDS[CSV_FIELDS.index("seed") : CSV_FIELDS.index("metric")])
    tail = list(CSV_FIELDS[CSV_FIELDS.index("metric") : CSV_FIELDS.index("wall_time_s")])
    times = list(CSV_FIELDS[CSV_FIELDS.index("wall_time_s") :])
    errors = ["error"] if any(r.get("error") for r in result["variants"]) else []
    return head + grid + body + evals + tail + windows + diags + times + errors


def summary_columns(result: dict) -> list[str]:
    grid = list(result.get("grid_keys") or [])
    statuses = [f"n_{s}".replace(" ", "_") for s in STATUSES if any(s in r["statuses"] for r in result["rows"])]
    means = [c for f in numeric_fields(result["variants"]) for c in (f + "_mean", f + "_std")]
    return ["compare", "group", "mode", *grid, "seeds", *statuses, "metric", "chance", *means]


def write_results(path: Path, result: dict) -> None:
    """compare.json, compare.csv and compare_summary.csv, each replaced atomically."""
    runs.atomic_write(path / "compare.json", (json.dumps(runs._jsonable(result), indent=2) + "\n").encode())
    name = result.get("name")
    rows = []
    for r in result["variants"]:
        grid = {k: _grid_cell(v) for k, v in (r.get("grid") or {}).items()}
        rows.append({"compare": name, **r, **grid})
    runs.atomic_write(path / "compare.csv", _csv_bytes(csv_columns(result), rows))
    rows = []
    for r in result["rows"]:
        grid = {k: _grid_cell(v) for k, v in (r.get("grid") or {}).items()}
        counts = {f"n_{s}".replace(" ", "_"): c for s, c in r["statuses"].items()}
        means = {f + "_mean": r.get(f) for f in numeric_fields(result["variants"])}
        rows.append({"compare": name, **r, **means, **counts, **grid})
    runs.atomic_write(path / "compare_summary.csv", _csv_bytes(summary_columns(result), rows))


def _csv_bytes(columns: list[str], rows: list[dict]) -> bytes:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _csv(r.get(k)) for k in columns})
    return buf.getvalue().encode()


def _grid_cell(v: Any) -> Any:
    """A grid value as its own typed cell: numbers as numbers, none as an empty cell."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v


def _csv(v: Any) -> Any:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else v
