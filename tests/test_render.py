"""render.py from plain data, checked on a Console(file=StringIO(), width=100) like rich's own tests."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from bptt_cli import render


def text_of(*renderables, width: int = 100) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    for r in renderables:
        console.print(r)
    return console.file.getvalue()


@pytest.mark.parametrize(
    "value, shown",
    [(None, "-"), (True, "yes"), (False, ""), (12, "12"), (123456, "123,456"), (0.0041, "0.0041"),
     (0.12345, "0.1235"), (2.5, "2.5"), (1.5e-5, "1.50e-05"), (2.3e7, "2.30e+07"), (float("nan"), "nan")],
)  # fmt: skip
def test_fmt_keeps_significant_digits(value, shown):
    assert render.fmt(value) == shown


def test_sparkline_spans_the_blocks_and_skips_non_finite_values():
    line = render.sparkline([3.0, 2.0, float("nan"), 1.0, 0.0])
    assert line[0] == render.SPARK[-1] and line[-1] == render.SPARK[0] and len(line) == 4
    assert render.sparkline([]) == "" and len(render.sparkline(list(range(100)), width=10)) == 10


def test_pick_rows_always_keeps_the_last():
    assert render.pick_rows(10, 4) == [0, 4, 8, 9]
    assert render.pick_rows(9, 4) == [0, 4, 8]
    assert render.pick_rows(0, 3) == []


def _metrics(n: int, clipped_at=()) -> list[dict]:
    return [
        {"step": i, "update": i, "loss": 1.0 / i, "grad_norm": 2.0, "clipped_norm": 1.0 if i in clipped_at else 2.0,
         "clipped": i in clipped_at}
        for i in range(1, n + 1)
    ]  # fmt: skip


def test_metrics_table_marks_clipped_updates_and_shows_each_eval_on_its_step():
    evals = [{"step": 7, "update": 7, "loss": 0.5, "accuracy": 0.75, "time": 1.0}]
    out = text_of(render.metrics_table(_metrics(12, clipped_at={1}), evals, every=5))
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert set(rows) == {"1", "6", "7", "11", "12"}  # every 5th, the last, and the eval's step
    assert "yes" in rows["1"] and "yes" not in rows["6"]
    assert "0.75" in rows["7"] and "0.75" not in rows["6"]
    assert "eval acc" in out


def test_metrics_table_marks_divergence():
    out = text_of(render.metrics_table(_metrics(3), [], diverged={"step": 4, "update": 4, "what": "loss"}))
    last = [line for line in out.splitlines() if line.strip().startswith("4")][-1]
    assert "NaN/Inf" in last and "diverged: non-finite loss" in last


def test_flow_table_shows_the_decay_and_a_bar_per_shown_lag():
    norms = [0.5**j for j in range(40)]
    diag = {"flow": {"lags": list(range(40)), "norms": norms, "decay_per_step": 0.5, "halves_every": 1.0}}
    out = text_of(render.flow_table(diag, title="Gradient flow"))
    lag_rows = [line for line in out.splitlines() if line.strip()[:1].isdigit()]
    assert len(lag_rows) <= 17 and lag_rows[0].split()[0] == "0" and lag_rows[-1].split()[0] == "39"
    bars = [line.count("█") for line in lag_rows]
    assert bars == sorted(bars, reverse=True) and bars[0] > bars[-1] >= 1  # log scale: the bar shrinks with the lag
    assert "x0.5 per step, halves every 1 steps" in out


def test_summary_panel_says_how_the_run_ended():
    summary = {
        "status": "diverged", "run_dir": "runs/x", "task": "delay", "truncation": "full", "update_every": "sequence",
        "clip": {"mode": "none", "threshold": None}, "optimizer": "sgd", "seed": 0, "steps_done": 3, "steps": 10,
        "updates": 3, "sequences": 96, "diverged_at": {"step": 4, "update": 4, "what": "gradient W_hh"},
        "final": {"train.loss": 1.5, "train.lr": 0.1}, "chance": {"loss": 2.08}, "wall_time": 0.5,
        "expectations": [{"expect": "eval.accuracy>=0.9", "metric": "eval.accuracy", "value": None, "ok": False}],
    }  # fmt: skip
    out = text_of(render.summary_panel(summary), width=140)
    assert "diverged" in out and "non-finite gradient W_hh at step 4" in out
    assert "clip none" in out and "train.loss 1.5" in out and "train.lr" not in out
    assert "eval.accuracy>=0.9: - FAILED" in out


def _compare_result() -> dict:
    def row(group, eval_loss, acc, statuses):
        return {"group": group, "mode": group, "grid": {}, "seeds": 2, "eval_loss": eval_loss, "eval_loss_std": 0.01,
                "train_loss": eval_loss, "metric_value": acc, "metric": "accuracy", "chance": 0.125,
                "statuses": statuses, "loss_curve": [2.0, 1.0, eval_loss], "updates": 10.0, "sequences": 320.0,
                "time_per_update": 0.002}  # fmt: skip

    return {"name": "t", "budget": "sequences", "rows": [
        row("full", 0.01, 1.0, {"completed": 2}),
        row("k_truncated:2", 2.0, 0.2, {"completed": 1, "diverged": 1}),
    ]}  # fmt: skip


def test_compare_tables_show_mean_std_status_counts_and_chance():
    out = text_of(*render.compare_tables(_compare_result()), width=160)
    assert "(chance 0.125)" in out  # under the metric's header
    full = next(line for line in out.splitlines() if line.strip().startswith("full"))
    assert "2/2 ok" in full and "0.01 ± 0.01" in full
    trunc = next(line for line in out.splitlines() if line.strip().startswith("k_truncated:2"))
    assert "1/2 diverged" in trunc


def test_compare_tables_sort_puts_the_best_accuracy_first():
    result = _compare_result()
    result["rows"].reverse()
    out = text_of(render.compare_tables(result, sort="metric_value")[0], width=160)
    order = [line.split()[0] for line in out.splitlines() if line.strip().startswith(("full", "k_truncated"))]
    assert order == ["full", "k_truncated:2"]
    out = text_of(render.compare_tables(result, sort="eval_loss")[0], width=160)
    order = [line.split()[0] for line in out.splitlines() if line.strip().startswith(("full", "k_truncated"))]
    assert order == ["full", "k_truncated:2"]


def test_gradcheck_table_has_a_row_per_check_and_mode():
    rows = [
        {"check": c, "mode": m, "param": p, "rel_error": 1e-12, "tolerance": 1e-9, "ok": True}
        for c, m in (("finite differences", "full"), ("reference", "full"), ("reference", "k_truncated:2"))
        for p in ("W_xh", "W_hh")
    ]
    out = text_of(render.gradcheck_table(rows, title="Gradient check"))
    assert sum(1 for line in out.splitlines() if "reference" in line) == 2
    data = [line for line in out.splitlines() if "full" in line or "k_truncated" in line]
    assert len(data) == 3 and all(line.count("1.0e-12") == 2 and "1e-09" in line for line in data)


def test_metrics_table_has_a_k_column_only_when_the_records_carry_k():
    adaptive = [{**r, "k": 3 + r["step"] // 5} for r in _metrics(12)]
    adaptive[0]["beta"] = 0.8  # on a re-estimating update only: never a column
    out = text_of(render.metrics_table(adaptive, [], every=5))
    header = next(line for line in out.splitlines() if "loss" in line)
    assert header.split()[-1] == "K" and "beta" not in out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()[:1].isdigit()}
    assert rows["6"][-1] == "4" and rows["12"][-1] == "5"
    plain = text_of(render.metrics_table(_metrics(12), [], every=5))
    assert " K" not in next(line for line in plain.splitlines() if "loss" in line)


def test_summary_panel_shows_the_cell_adaptive_k_gates_and_tracking():
    summary = {
        "status": "completed", "task": "delay", "cell": "lstm", "truncation": "adaptive:0.1:2:12", "update_every": "sequence",
        "k_range": [2, 12], "k_last": 7, "final": {"train.loss": 1.5, "train.k": 7},
        "diagnostics": {"decay_per_step": 0.9, "decay_per_step_c": 0.95, "bias_cosine": 0.99, "bias_rel_error": 0.1,
                        "spectral_radius": None, "saturation": 0.0, "gate_high": 0.25, "gate_low": 0.0},
        "tracking": {"tensorboard": {"status": "ok", "logdir": "runs/x/tensorboard"},
                     "mlflow": {"status": "failed", "error": "ImportError: mlflow is not installed"}},
    }  # fmt: skip
    out = " ".join(text_of(render.summary_panel(summary), width=200).split())
    assert "task delay, cell lstm, truncation adaptive:0.1:2:12" in out
    assert "K last 7 (picked within 2..12)" in out and "train.k" not in out
    assert "c decay x0.95/step" in out and "forget gates > 0.95 0.25, < 0.05 0" in out and "spectral radius" not in out
    assert "tracking tensorboard ok (runs/x/tensorboard), mlflow failed: ImportError: mlflow is not installed" in out
    older = {k: v for k, v in summary.items() if k not in ("cell", "k_range", "k_last", "tracking", "diagnostics")}
    out = " ".join(text_of(render.summary_panel(older), width=200).split())
    assert "task delay, truncation" in out and "tracking" not in out and " K " not in out


def test_flow_table_puts_the_lstm_cell_state_beside_h():
    diag = {"flow": {"lags": [0, 1, 2], "norms": [1.0, 0.5, 0.25], "decay_per_step": 0.5, "halves_every": 1.0,
                     "norms_c": [0.0, 0.8, 0.64], "decay_per_step_c": 0.8}}  # fmt: skip
    out = text_of(render.flow_table(diag, title="Gradient flow"))
    assert "||dL_t/dc_{t-j}||" in out and "c: x0.8 per step" in out
    assert next(line for line in out.splitlines() if line.strip().startswith("2")).split()[1:3] == ["0.25", "0.64"]
