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

# -- aggregation --------------------------------------------------------------------------
METRIC_PREFERENCE = ("accuracy", "bpc", "error_rate")


def collect(path: Path) -> dict:
    """Read every variant's files into rows: one per variant and one per mode/grid point."""
    path = Path(path)
    variants, meta = read_plan(path)
    check_variant_dirs(path, variants)  # nothing is read through a symlink to elsewhere
    rows = [_variant_row(path, v) for v in variants]
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    agg = [_aggregate(g, rs) for g, rs in groups.items()]
    return {**meta, "path": str(path), "variants": rows, "rows": agg}


def _variant_row(path: Path, v: Variant) -> dict:
    d = path / v.id
    row: dict[str, Any] = {"id": v.id, "group": v.group, "mode": v.mode, "grid": v.grid, "seed": v.seed, "run_dir": str(d)}
    if not runs.is_run_dir(d):
        # A variant that failed before writing its config (say, a text file that is not UTF-8)
        # has only the summary its executor wrote: it failed, it did not fail to start.
        s = read_summary(d) if d.is_dir() else {}
        row["status"] = s.get("status") or "not started"
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
    bias = [dg["bias"]["cosine"] for dg in run.diagnostics if (dg.get("bias") or {}).get("cosine") is not None]
    decay = [dg["flow"]["decay_per_step"] for dg in run.diagnostics if (dg.get("flow") or {}).get("decay_per_step")]
    target = s.get("target_reached") or {}
    row.update(
        status=s.get("status", "unknown"),
        steps_done=s.get("steps_done", _steps_done(d)),
        stopped_at=_stopped_at(s),
        updates=updates,
        sequences=s.get("sequences"),
        train_loss=final.get("train.loss"),
        eval_loss=final.get("eval.loss"),
        metric=metric,
        metric_value=final.get(f"eval.{metric}") if metric else None,
        chance=(s.get("chance") or {}).get(metric) if metric else None,
        updates_to_target=target.get("update"),
        grad_norm_median=statistics.median(norms) if norms else None,
        grad_norm_max=max(norms) if norms else None,
        clipped_share=sum(clipped) / len(clipped) if clipped else None,
        bias_cosine=statistics.fmean(bias) if bias else None,
        decay_first=decay[0] if decay else None,
        decay_last=decay[-1] if decay else None,
        time_per_update=wall / updates if wall and updates else None,
        time_per_sequence=wall / s["sequences"] if wall and s.get("sequences") else None,
        loss_curve=_resample(losses, 24),
        final=final,
    )
    if s.get("error"):
        row["error"] = _first_line_of(s["error"])
    return row


def _first_line_of(error: Any) -> str:
    return (str(error).strip().splitlines() or [""])[0][:500]


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
    "bias_cosine",
    "decay_first",
    "decay_last",
    "time_per_update",
    "time_per_sequence",
    "updates",
    "sequences",
)


def _aggregate(group: str, rows: list[dict]) -> dict:
    out: dict[str, Any] = {"group": group, "mode": rows[0]["mode"], "grid": rows[0]["grid"], "seeds": len(rows)}
    for f in AGG_FIELDS:
        vals = [r[f] for r in rows if isinstance(r.get(f), (int, float)) and math.isfinite(r[f])]
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


CSV_FIELDS = ("kind", "group", "id", "mode", "seed", "status", "steps_done", "stopped_at") + AGG_FIELDS + ("metric", "chance")


def write_results(path: Path, result: dict) -> None:
    runs.atomic_write(path / "compare.json", (json.dumps(runs._jsonable(result), indent=2) + "\n").encode())
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(CSV_FIELDS) + [f + "_std" for f in AGG_FIELDS], extrasaction="ignore")
    w.writeheader()
    for r in result["variants"]:
        w.writerow({"kind": "variant", **{k: _csv(v) for k, v in r.items()}})
    for r in result["rows"]:
        w.writerow({"kind": "aggregate", "status": _status_text(r["statuses"]), **{k: _csv(v) for k, v in r.items() if k != "statuses"}})
    runs.atomic_write(path / "compare.csv", buf.getvalue().encode())


def _csv(v: Any) -> Any:
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    return "" if v is None else v


def _status_text(statuses: dict[str, int]) -> str:
    n = sum(statuses.values())
    return ", ".join(f"{c}/{n} {s}" for s, c in sorted(statuses.items()))
