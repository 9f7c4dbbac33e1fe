"""Runs side by side (bptt show A B, --sort, --format), bptt runs (--json, filters, a
summary-only read) and tables in narrow terminals, rendered on Console(width=60/80/120)."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console

from bptt_cli import render, runs, views

from conftest import SMALL, sets, stderr_of  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
DELAY = ROOT / "configs" / "delay.yaml"
TINY = (*SMALL, "train.steps=6", "train.eval_every=3")


def text_of(*renderables, width: int) -> str:
    console = Console(file=io.StringIO(), width=width, color_system=None)
    for r in renderables:
        console.print(r)
    return console.file.getvalue()


def widest(text: str) -> int:
    return max(len(line.rstrip()) for line in text.splitlines())


# -- narrow terminals -----------------------------------------------------------------------
def _compare_result() -> dict:
    def row(group, eval_loss, acc, curve):
        return {"group": group, "mode": group, "grid": {}, "seeds": 3, "eval_loss": eval_loss, "eval_loss_std": 0.0123,
                "train_loss": eval_loss, "train_loss_std": 0.01, "metric_value": acc, "metric_value_std": 0.0051,
                "metric": "accuracy", "chance": 0.125, "statuses": {"completed": 3}, "loss_curve": curve,
                "updates": 600.0, "sequences": 19200.0, "grad_norm_median": 0.1678, "grad_norm_max": 0.6742,
                "clipped_share": 0.0, "ms_per_update": 2.012, "ms_per_sequence": 0.0629,
                "bias_cosine_mean": 0.36, "bias_cosine_last": 0.31, "bias_rel_error_mean": 0.9, "bias_rel_error_last": 0.95}  # fmt: skip

    return {"name": "delay", "budget": "sequences", "rows": [
        row("full", 0.006448, 0.9344, [2.08, 1.0, 0.07]),
        row("k_truncated:4", 2.009, 0.2119, [2.08, 1.95, 1.90]),
    ]}  # fmt: skip


@pytest.mark.parametrize("width", [60, 80, 120])
def test_compare_tables_keep_outcomes_and_drop_the_sparkline_then_cost(width):
    tables = render.compare_tables(_compare_result())
    outcome, cost = text_of(tables[0], width=width), text_of(tables[1], width=width)
    assert widest(outcome) <= width and widest(cost) <= width
    for text in ("0.9344", "0.2119", "0.006448", "2.009", "3/3 ok", "k_truncated:4", "(chance 0.125)"):
        assert text in outcome, (width, text)  # never a digit cut, never the accuracy or losses dropped
    assert "…" not in outcome + cost
    if width == 120:
        assert "loss curve" in outcome and "left out" not in outcome
    else:
        assert "loss curve" not in outcome.split("left out")[0] and "left out to fit: loss curve" in outcome
    if "|g| median" in cost and "ms/update" not in cost.split("left out")[0]:
        assert "left out to fit: ms/seq, ms/update" in cost  # cost goes before the gradient columns


def test_sparklines_of_one_table_share_one_scale():
    scale = render.spark_scale([[2.08, 1.0, 0.07], [2.08, 1.95, 1.90]])
    falls, flat = render.sparkline([2.08, 1.0, 0.07], scale=scale), render.sparkline([2.08, 1.95, 1.90], scale=scale)
    assert falls[-1] == "▁" and flat[-1] not in "▁▂▃"  # 1.90 stays high on the shared scale
    assert render.sparkline([2.08, 1.95, 1.90])[-1] == "▁"  # on its own scale it would look like a fall
    assert render.spark_scale([[100.0, 1.0], [0.5]])[2] is True  # two decades and more: log scale


def test_the_metrics_table_never_cuts_a_number_at_60_columns():
    metrics = [{"step": s, "update": s, "loss": 0.9344, "grad_norm": 1.2345, "clipped_norm": 1.2345, "clipped": s == 2} for s in (1, 2)]
    evals = [{"step": 2, "update": 2, "loss": 0.5, "accuracy": 0.9344, "error_rate": 0.0656}]
    for width in (60, 80):
        text = text_of(render.metrics_table(metrics, evals), width=width)
        assert widest(text) <= width and "…" not in text
        assert "0.9344" in text and "0.0656" in text and "1.234" in text
        assert not re.search(r"\s0\s*$", text.splitlines()[4])  # 0.9344 never shows as 0


@pytest.mark.parametrize("width", [60, 80])
def test_run_ids_are_never_cut(width):
    rows = [{"path": f"runs/quickstart/20240101T00000{i}Z-abcdef", "name": "quickstart", "status": "completed", "task": "delay",
             "truncation": "tbptt:5:20", "steps_done": 400, "steps": 400, "final_loss": 0.1234,
             "final": {"eval.loss": 0.2, "eval.accuracy": 0.9344}} for i in range(3)]  # fmt: skip
    text = text_of(*render.runs_tables(rows), width=width)
    for i in range(3):
        assert f"20240101T00000{i}Z-abcdef" in text
    assert "…" not in text and widest(text) <= width


# -- bptt show A B ..., --sort, --format -------------------------------------------------------
@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict:
    """A compare (full and k_truncated:1, 2 seeds) and a lone run with another hidden size."""
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    root = tmp_path_factory.mktemp("views")
    runner = CliRunner()
    r = runner.invoke(app, ["compare", str(DELAY), "--runs-root", str(root), *sets(*TINY), "--modes", "full,k_truncated:1",
                            "--seeds", "2", "--workers", "1", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (cmp_dir,) = (root / "delay").glob("compare-*")
    lone = root / "lone"
    r = runner.invoke(app, ["train", str(DELAY), "--run-dir", str(lone), *sets(*TINY, "model.hidden=6", "truncation.mode=full"), "-q"])
    assert r.exit_code == 0, r.output
    return {"root": root, "compare": cmp_dir, "lone": lone}


def test_show_several_runs_groups_them_by_the_keys_that_differ(invoke, made):
    view = views.side_by_side(views.gather([made["compare"], made["lone"]]))
    assert view["keys"] == ["model.hidden", "truncation.mode"]
    by = {(r["model.hidden"], r["truncation.mode"]): r for r in view["rows"]}
    assert set(by) == {(8, "full"), (8, "k_truncated:1"), (6, "full")}
    assert by[(8, "full")]["runs"] == 2 and by[(8, "full")]["seeds"] == [0, 1] and by[(6, "full")]["runs"] == 1
    finals = [json.loads((made["compare"] / f"full_seed{s}" / "summary.json").read_text())["final"]["eval.loss"] for s in (0, 1)]
    assert by[(8, "full")]["eval_loss"] == pytest.approx(sum(finals) / 2)
    assert "task delay" in view["title"]

    result = invoke("show", made["compare"], made["lone"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert "k_truncated:1" in result.stdout and "eval accuracy" in result.stdout and "2/2 ok" in result.stdout


def test_show_takes_a_quoted_glob_and_sorts(invoke, made):
    result = invoke("show", str(made["compare"] / "*_seed*"), "--sort", "eval_loss", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    losses = [float(r["eval_loss_mean"]) for r in rows]
    assert len(rows) == 2 and losses == sorted(losses)
    assert [r["runs"] for r in rows] == ["2", "2"] and rows[0]["truncation.mode"] in ("full", "k_truncated:1")


@pytest.mark.parametrize("fmt, marker", [("markdown", "| --- |"), ("latex", "\\begin{tabular}"), ("json", '"rows"')])
def test_show_exports_the_rows_for_a_paper(invoke, made, fmt, marker):
    result = invoke("show", made["compare"], made["lone"], "--format", fmt)
    assert result.exit_code == 0, result.output
    assert marker in result.stdout
    assert ("k\\_truncated:1" if fmt == "latex" else "k_truncated:1") in result.stdout
    if fmt == "json":
        assert len(json.loads(result.stdout)["rows"]) == 3


def test_show_refuses_a_bad_sort_key_format_or_path(invoke, made):
    result = invoke("show", made["compare"], made["lone"], "--sort", "nope")
    assert result.exit_code == 2 and "--sort 'nope': sort by one of train_loss, eval_loss" in stderr_of(result)
    result = invoke("show", made["lone"], "--format", "html")
    assert result.exit_code == 2 and "--format must be one of table, markdown, latex, csv, json" in stderr_of(result)
    result = invoke("show", made["lone"], str(made["root"] / "nothing-*"))
    assert result.exit_code == 2 and "matches no file or folder" in stderr_of(result)


def test_show_of_one_run_and_one_compare_is_as_before(invoke, made):
    result = invoke("show", made["lone"])
    assert result.exit_code == 0 and "Training log" in result.stdout and "Summary" in result.stdout
    result = invoke("show", made["compare"], "--sort", "bias_cosine")  # an old sort name still works
    assert result.exit_code == 0 and "Compare delay: outcome" in result.stdout


# -- bptt runs --------------------------------------------------------------------------------
def test_runs_json_and_filters(invoke, made):
    result = invoke("runs", made["root"], "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == 5 and all(r["status"] == "completed" and r["task"] == "delay" for r in rows)
    assert {r["final"]["eval.accuracy"] is not None for r in rows} == {True}
    assert json.loads(invoke("runs", made["root"], "--json", "--status", "diverged").stdout) == []
    assert len(json.loads(invoke("runs", made["root"], "--json", "--task", "delay", "--since", "1d").stdout)) == 5
    assert json.loads(invoke("runs", made["root"], "--json", "--since", "2999-01-01").stdout) == []
    result = invoke("runs", made["root"], "--since", "yesterday")
    assert result.exit_code == 2 and "--since takes a duration (2d, 12h, 30m) or a date/time" in stderr_of(result)
    result = invoke("runs", made["root"], "--status", "done")
    assert result.exit_code == 2 and "--status must be one of running, completed" in stderr_of(result)


def test_runs_reads_summaries_only(invoke, made, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("bptt runs parsed a log")

    monkeypatch.setattr(runs, "read_jsonl", refuse)
    result = invoke("runs", made["root"])
    assert result.exit_code == 0, result.output
    assert "lone" in result.stdout and "full_seed1" in result.stdout


def test_a_listed_crash_takes_its_last_step_from_the_end_of_the_log(tmp_path):
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("name: r\n", encoding="utf-8")
    (run / "summary.json").write_text(json.dumps({"status": "running", "name": "r", "task": "delay"}), encoding="utf-8")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "update": s, "loss": 1.0}) + "\n" for s in (1, 2, 3)) + '{"step": 4', encoding="utf-8")
    (row,) = views.list_runs(tmp_path)
    assert row["status"] == "crashed" and row["steps_done"] == 3


# -- plots ------------------------------------------------------------------------------------
def _titles(fig) -> list[str]:
    return [a.get_title() for a in fig.axes if a.get_visible()]


def test_a_plot_without_diagnostics_has_no_empty_panel_and_draws_chance(made):
    pytest.importorskip("matplotlib")
    from bptt_cli import plot

    fig = plot.figure(views.gather([made["compare"]], logs=True))
    titles = _titles(fig)
    assert titles == ["Loss (line: training, markers: held-out)", "Held-out accuracy", "Gradient norm before clipping (clip 5: above)"]
    acc = next(a for a in fig.axes if a.get_title() == "Held-out accuracy")
    assert any(t.get_text() == "chance 0.125" for t in acc.texts)
    assert any(list(line.get_ydata()) == [0.125, 0.125] for line in acc.get_lines())  # the chance line
    assert fig.get_suptitle().startswith("delay, task delay") and "/" not in fig.get_suptitle()  # from the config, not a path
    # Two seeds: one mean line and a shaded band per group, not a line per seed.
    loss = fig.axes[0]
    labelled = [line.get_label() for line in loss.get_lines() if not line.get_label().startswith("_")]
    assert labelled == ["full (2 seeds)", "k_truncated:1 (2 seeds)"]
    assert len(loss.collections) == 4  # a band each under the training line and the held-out markers of both groups
    legend = fig.legends[0]
    fig.canvas.draw()
    box = legend.get_window_extent()
    assert all(not box.overlaps(a.get_window_extent()) for a in fig.axes)  # the legend sits outside the data


def test_a_plot_with_diagnostics_adds_flow_and_bias_and_styles_each_grid_value(tmp_path):
    pytest.importorskip("matplotlib")
    from typer.testing import CliRunner

    from bptt_cli import plot
    from bptt_cli.cli import app

    r = CliRunner().invoke(app, ["compare", str(DELAY), "--runs-root", str(tmp_path), *sets(*TINY, "train.diagnostics_every=2"),
                                 "--modes", "full,k_truncated:1", "--grid", "clip.threshold=0.5,none", "--workers", "1", "-q"])  # fmt: skip
    assert r.exit_code == 0, r.output
    (cmp_dir,) = (tmp_path / "delay").glob("compare-*")
    fig = plot.figure(views.gather([cmp_dir], logs=True))
    titles = _titles(fig)
    assert "Gradient flow at the initial weights" in titles and titles[-1].startswith("Truncation bias")
    flow = next(a for a in fig.axes if a.get_title() == "Gradient flow at the initial weights")
    assert flow.get_yscale() == "log"
    styles = {line.get_label(): (line.get_color(), line.get_linestyle()) for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")}
    assert set(styles) == {"full, 0.5", "full, none", "k_truncated:1, 0.5", "k_truncated:1, none"}
    assert styles["full, 0.5"][0] == styles["full, none"][0] and styles["full, 0.5"][1] != styles["full, none"][1]  # threshold: line style
    assert styles["full, 0.5"][0] != styles["k_truncated:1, 0.5"][0]  # mode: colour
    assert fig.legends[0].get_title().get_text() == "truncation, threshold"


def test_plot_writes_svg_and_pdf_and_refuses_a_mismatch(invoke, made, tmp_path):
    pytest.importorskip("matplotlib")
    svg = tmp_path / "f.svg"
    result = invoke("plot", made["compare"], made["lone"], "--out", svg)
    assert result.exit_code == 0, result.output
    assert svg.read_text(encoding="utf-8").lstrip().startswith("<?xml") and "<svg" in svg.read_text(encoding="utf-8")
    result = invoke("plot", made["lone"], "--format", "pdf")
    assert result.exit_code == 0 and (made["lone"] / "plot.pdf").read_bytes()[:5] == b"%PDF-"
    result = invoke("plot", made["lone"], "--out", tmp_path / "f.png", "--format", "svg")
    assert result.exit_code == 2 and "ends in .png but --format is svg" in stderr_of(result)
    result = invoke("plot", made["lone"], "--size", "big")
    assert result.exit_code == 2 and "--size takes WIDTHxHEIGHT in inches" in stderr_of(result)


def test_a_loss_axis_spanning_decades_is_logarithmic(tmp_path):
    pytest.importorskip("matplotlib")
    from bptt_cli import plot

    def run(name: str, losses: list[float]) -> runs.Run:
        metrics = [{"step": i + 1, "update": i + 1, "loss": v, "grad_norm": 1.0} for i, v in enumerate(losses)]
        config = {"name": "x", "seed": 0, "model": {"hidden": 8 if name == "a" else 9}}
        return runs.Run(tmp_path / name, config, {"status": "completed", "truncation": "full"}, metrics=metrics)

    fig = plot.figure([run("a", [2.0, 1.0, 0.5]), run("b", [2.0, 30.0, 900.0])])
    assert fig.axes[0].get_yscale() == "log" and fig.axes[1].get_yscale() == "linear"
    fig = plot.figure([run("a", [2.0, 1.0, 0.5]), run("b", [2.0, 1.5, 1.2])])
    assert fig.axes[0].get_yscale() == "linear"


def test_the_flow_table_shortens_its_bars_before_leaving_them_out():
    diag = {"flow": {"lags": list(range(8)), "norms": [0.9 * 0.5**j for j in range(8)], "decay_per_step": 0.5, "halves_every": 1.0}}
    wide, narrow = (text_of(render.flow_table(diag, title="flow"), width=w) for w in (120, 60))
    assert "█" * 30 in wide and "█" * 15 in narrow and "█" * 16 not in narrow
    assert "0.007031" in narrow and widest(narrow) <= 60


def test_any_diagnostic_key_reaches_the_compare_as_mean_and_last():
    from bptt_cli.compare.aggregate import diagnostic_columns

    passes = [
        {"step": 1, "update": 0, "flow": {"lags": [0, 1], "norms": [1.0, 0.5], "decay_per_step": 0.5},
         "bias": {"cosine": 0.9, "rel_error": 0.4, "per_param": {"W_hh": {"cosine": 0.1}}}, "spectrum": {"gate": "forget", "gate_high": 0.2}},
        {"step": 9, "update": 8, "flow": {"lags": [0, 1], "norms": [1.0, 0.7], "decay_per_step": 0.7},
         "bias": {"cosine": 0.5, "rel_error": 0.8}, "spectrum": {"gate": "forget", "gate_high": 0.4}, "newer": {"thing": 3.0}},
    ]  # fmt: skip
    cols = diagnostic_columns(passes)
    assert cols["bias_cosine_mean"] == pytest.approx(0.7) and cols["bias_cosine_last"] == 0.5
    assert cols["bias_rel_error_last"] == 0.8 and cols["flow_decay_per_step_first"] == 0.5
    assert cols["spectrum_gate_high_mean"] == pytest.approx(0.3) and cols["newer_thing_last"] == 3.0
    assert cols["newer_thing_mean"] == 3.0 and not any("per_param" in k or "gate_mean" in k for k in cols)
    row = {"group": "full", "statuses": {"completed": 1}, **cols}
    text = text_of(render.compare_tables({"name": "x", "rows": [row]})[-1], width=400)
    assert "gates > 0.95" in text and "newer thing" in text and "rel error" in text


def test_adaptive_k_reaches_the_compare_as_mean_and_last_beside_the_gradients():
    from bptt_cli.compare.aggregate import csv_columns, window_columns

    metrics = [{"step": i, "update": i, "loss": 1.0, "k": k} for i, k in enumerate((4, 4, 6, 8), start=1)]
    assert window_columns(metrics) == {"k_mean": 5.5, "k_last": 8}
    assert window_columns([{"step": 1, "loss": 1.0}]) == {}  # a fixed window is in the mode's spec
    row = {"group": "adaptive:0.1", "mode": "adaptive:0.1", "statuses": {"completed": 1}, "grad_norm_median": 0.5,
           "k_mean": 5.5, "k_last": 8, "bias_cosine_mean": 0.9, "bias_cosine_last": 0.8}  # fmt: skip
    tables = [text_of(t, width=400) for t in render.compare_tables({"name": "x", "rows": [row]})]
    assert "K mean" in tables[1] and "5.5" in tables[1] and "K last" in tables[1]
    assert "K" not in tables[2].replace("bias", "") and "bias cos" in tables[2]  # not a diagnostic
    columns = csv_columns({"variants": [{"id": "a", "grid": {}, **row}]})
    assert columns.index("k_mean") < columns.index("bias_cosine_mean") and "k_mean" not in csv_columns({"variants": []})


def test_a_plot_of_an_lstm_puts_the_cell_states_flow_beside_h(tmp_path):
    pytest.importorskip("matplotlib")
    from bptt_cli import plot

    def run(name: str, hidden: int) -> runs.Run:
        metrics = [{"step": i, "update": i, "loss": 2.0 / i, "grad_norm": 1.0} for i in range(1, 5)]
        flow = {"lags": [0, 1, 2], "norms": [1.0, 0.5, 0.25], "norms_c": [0.0, 0.8, 0.64]}
        diags = [{"step": s, "update": s - 1, "flow": flow, "spectrum": None} for s in (1, 4)]
        config = {"name": "x", "seed": 0, "model": {"cell": "lstm", "hidden": hidden}}
        return runs.Run(tmp_path / name, config, {"status": "completed", "truncation": "full"}, metrics=metrics, diagnostics=diags)

    fig = plot.figure([run("a", 8), run("b", 9)])
    titles = _titles(fig)
    assert titles[-4:] == ["h: gradient flow at the initial weights", "c: gradient flow at the initial weights",
                           "h: gradient flow at update 3", "c: gradient flow at update 3"]  # fmt: skip
    h, c = (next(a for a in fig.axes if a.get_title() == t) for t in titles[-2:])
    assert h.get_position().y0 == pytest.approx(c.get_position().y0) and h.get_position().x0 < c.get_position().x0  # one row
    assert [list(line.get_ydata()) for line in c.get_lines()] == [[0.8, 0.64], [0.8, 0.64]]  # lag 0's zero left out of a log axis


def test_new_summary_and_log_keys_of_the_wrong_shape_are_named_and_left_out(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    summary = {"status": "completed", "task": "delay", "cell": "lstm", "k_range": 5, "k_last": 4, "tracking": "x"}
    (d / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    (d / "config.yaml").write_text("name: x\n", encoding="utf-8")
    (d / "metrics.jsonl").write_text('{"step": 1, "update": 1, "loss": 1.0, "k": 3, "beta": 0.5}\n'
                                     '{"step": 2, "update": 2, "loss": 1.0, "k": "seven"}\n', encoding="utf-8")  # fmt: skip
    (d / "diagnostics.jsonl").write_text(json.dumps({"step": 1, "flow": {"lags": [0], "norms": [1.0], "norms_c": ["x"]}}) + "\n",
                                         encoding="utf-8")  # fmt: skip
    run = runs.load_run(d)
    assert "k_range" not in run.summary and "tracking" not in run.summary and run.summary["k_last"] == 4
    assert [m["step"] for m in run.metrics] == [1] and run.diagnostics == []
    text = " ".join(run.problems)
    assert "k_range: expected a list" in text and "metrics.jsonl:2" in text and "norms_c[0]" in text
    out = " ".join(text_of(render.run_report(run), width=120).split())
    assert "cell lstm" in out and "│ K last 4 │" in out


# -- gated cells side by side ---------------------------------------------------------------
def _dumped(cell: str, hidden: int) -> dict:
    """A flattened config as config.yaml holds it: elman leaves its cell out, only an LSTM has
    forget_bias, and every cell's dump still carries the Elman activation."""
    flat = {"name": "gating", "task.name": "agreement", "model.hidden": hidden, "model.activation": "tanh", "seed": 0}
    if cell != "elman":
        flat["model.cell"] = cell
    if cell == "lstm":
        flat["model.forget_bias"] = 1.0
    return flat


def test_cells_are_told_apart_by_the_cell_not_by_keys_of_one_cell_only():
    configs = [views.with_cell(_dumped(c, h)) for c, h in (("elman", 67), ("gru", 36), ("lstm", 30))]
    keys = views.differing_keys(configs)
    assert keys == ["model.cell", "model.hidden"]  # not forget_bias (LSTM only), cell first
    assert "tanh" not in views.title_of(configs, keys)  # the Elman activation is not what they share


def test_an_lstm_setting_that_differs_is_still_a_difference():
    configs = [views.with_cell({**_dumped("lstm", 30), "model.forget_bias": b}) for b in (1.0, 3.0)]
    assert views.differing_keys(configs) == ["model.forget_bias"]
    elman = [views.with_cell({**_dumped("elman", 67), "model.activation": a}) for a in ("tanh", "relu")]
    assert views.differing_keys(elman) == ["model.activation"]


def test_a_plot_names_its_lines_by_cell_rather_than_by_the_matched_size():
    from bptt_cli import plot

    rows = [{"model.cell": c, "model.hidden": h} for c, h in (("elman", 67), ("gru", 36), ("lstm", 30))]
    assert plot.style_keys(rows, ["model.cell", "model.hidden"]) == ["model.cell"]
    clip = [{"clip.mode": m, "clip.threshold": t} for m, t in (("none", None), ("global_norm", 5))]
    assert plot.style_keys(clip, ["clip.mode", "clip.threshold"]) == ["clip.threshold"]  # numbers still win elsewhere
