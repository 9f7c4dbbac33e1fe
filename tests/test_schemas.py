"""The files a real train and compare write validate against the documented schema
(bptt_cli/schemas.py), docs/runs.md lists the fields the models declare, compare.csv is tidy
and typed, and files follow the umask."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pydantic
import pytest

from bptt_cli import runs, schemas

from conftest import SMALL, sets  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
DELAY = ROOT / "configs" / "delay.yaml"
DIAG = (*SMALL, "train.steps=6", "train.eval_every=3", "train.diagnostics_every=2")


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory) -> Path:
    """A compare with a grid, two seeds and diagnostics, written under umask 002."""
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    from bptt_cli import safeio

    root = tmp_path_factory.mktemp("schemas")
    old = os.umask(0o002)
    safeio._UMASK = None  # bptt reads the umask once per process
    try:
        result = CliRunner().invoke(app, [
            "compare", str(DELAY), "--runs-root", str(root), *sets(*DIAG), "--modes", "full,k_truncated:1",
            "--seeds", "2", "--grid", "clip.threshold=1,none", "--workers", "1", "-q",
        ], env={"COLUMNS": "200"})  # fmt: skip
    finally:
        os.umask(old)
        safeio._UMASK = None
    assert result.exit_code == 0, result.output
    (path,) = (root / "delay").glob("compare-*")
    return path


def test_a_trained_run_validates_and_records_the_schema_version(compare_dir):
    run = compare_dir / "full_threshold-1_seed0"
    schemas.validate_run(run)  # summary.json and every line of the three logs
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["schema_version"] == schemas.SCHEMA_VERSION
    assert (run / "diagnostics.jsonl").stat().st_size > 0  # the diagnostics model was exercised


def test_a_record_of_the_wrong_type_is_refused():
    good = {"step": 3, "update": 3, "loss": 1.5, "clipped": False}
    schemas.MetricsRecord.model_validate_json(json.dumps(good))
    with pytest.raises(pydantic.ValidationError, match="step"):
        schemas.MetricsRecord.model_validate_json(json.dumps({**good, "step": 3.0}))
    with pytest.raises(pydantic.ValidationError, match="status"):
        schemas.Summary.model_validate_json(json.dumps({"status": "3/3 completed"}))


def test_a_compare_validates_and_its_csv_is_one_typed_row_per_variant(compare_dir):
    schemas.validate_compare(compare_dir)
    data = json.loads((compare_dir / "compare.json").read_text(encoding="utf-8"))
    assert data["schema_version"] == schemas.SCHEMA_VERSION and data["grid_keys"] == ["clip.threshold"]
    with open(compare_dir / "compare.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(data["variants"]) == 8  # 2 modes x 2 thresholds x 2 seeds, no aggregate rows
    header = list(rows[0])
    assert header.index("mode") < header.index("clip.threshold") < header.index("seed")
    assert sorted({r["clip.threshold"] for r in rows}) == ["", "1"]  # its own column; none is empty
    assert {r["status"] for r in rows} == {"completed"}
    assert all(r["seed"] in ("0", "1") and r["updates"].isdigit() for r in rows)  # ints, never "6.0"
    for unit in ("ms_per_update", "ms_per_sequence", "wall_time_s"):
        assert all(float(r[unit]) > 0 for r in rows), unit
    v = data["variants"][0]
    assert float(rows[0]["ms_per_update"]) == pytest.approx(1000 * v["wall_time_s"] / v["updates"])
    # Every scalar diagnostic reaches the files as a mean over the passes and the last pass.
    for key in ("bias_cosine", "bias_rel_error", "flow_decay_per_step", "spectrum_spectral_radius"):
        assert f"{key}_mean" in header and f"{key}_last" in header, key
    diag = [json.loads(line) for line in (Path(v["run_dir"]) / "diagnostics.jsonl").read_text().splitlines()]
    assert float(rows[0]["bias_rel_error_last"]) == diag[-1]["bias"]["rel_error"]
    with open(compare_dir / "compare_summary.csv", newline="", encoding="utf-8") as f:
        summary = list(csv.DictReader(f))
    assert len(summary) == 4 and all(r["seeds"] == "2" and r["n_completed"] == "2" for r in summary)
    assert "bias_cosine_last_mean" in summary[0] and "eval_loss_std" in summary[0]


def test_files_follow_the_umask(compare_dir):
    paths = [compare_dir / n for n in ("plan.json", "compare.json", "compare.csv", "compare_summary.csv")]
    run = compare_dir / "full_threshold-1_seed0"
    paths += [run / n for n in ("summary.json", "metrics.jsonl", "config.yaml", "checkpoint.npz")]
    for p in paths:
        assert p.stat().st_mode & 0o777 == 0o664, p  # written under umask 002: group-writable, world-readable


def test_a_csv_cell_of_the_wrong_type_is_named(tmp_path):
    p = tmp_path / "compare.csv"
    p.write_text("id,group,mode,seed,status\nv,full,full,3.0,completed\n", encoding="utf-8")
    with pytest.raises(ValueError, match="compare.csv:2: column seed: '3.0' is not an integer"):
        schemas.read_csv(p, schemas.CompareCsvRow)


def test_a_summary_from_before_the_schema_version_still_reads(tmp_path):
    old = {"status": "completed", "steps": 4, "final": {"train.loss": 1.0}}
    (tmp_path / "summary.json").write_text(json.dumps(old), encoding="utf-8")
    summary, problems = runs.read_summary(tmp_path)
    assert summary == old and problems == []
    assert schemas.Summary.model_validate(old).schema_version is None


def test_docs_list_every_field_of_every_file():
    """docs/runs.md holds the tables generated from the models: regenerate with
    `python -m bptt_cli.schemas docs/runs.md` when a model changes."""
    doc = (ROOT / "docs" / "runs.md").read_text(encoding="utf-8")
    block = doc.split(schemas.BEGIN, 1)[1].split(schemas.END, 1)[0]
    assert block.strip() == schemas.markdown().strip()
    for name, model in schemas.FILES.items():
        assert f"`{name}`" in block
        for field in model.model_fields:
            assert f"| `{field}` |" in block, f"{name}.{field}"


def test_an_adaptive_run_an_lstm_run_and_their_compare_validate_with_their_own_fields(tmp_path):
    """The keys added for adaptive truncation (k, beta, k_range, k_last, k_mean) and the gated
    cells (cell, the LSTM's c flow, gate saturation, a spectrum without W_hh) fit the models."""
    from typer.testing import CliRunner

    from bptt_cli.cli import app

    for root, args in (("adaptive", ("--modes", "adaptive:0.5:1:4")), ("lstm", ("--modes", "full", "--grid", "model.cell=lstm"))):
        result = CliRunner().invoke(app, ["compare", str(DELAY), "--runs-root", str(tmp_path / root), *sets(*DIAG, "truncation.adapt_every=1"),
                                          *args, "--workers", "1", "-q"], env={"COLUMNS": "200"})  # fmt: skip
        assert result.exit_code == 0, result.output
    (adaptive,), (lstm,) = ((tmp_path / root / "delay").glob("compare-*") for root in ("adaptive", "lstm"))
    for cmp in (adaptive, lstm):
        schemas.validate_compare(cmp)
        (run,) = [p for p in cmp.iterdir() if p.is_dir()]
        schemas.validate_run(run)
    (run,) = [p for p in adaptive.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["cell"] == "elman" and summary["k_range"] == [1, 4] and 1 <= summary["k_last"] <= 4
    assert summary["final"]["train.k"] == summary["k_last"] and "train.beta" not in summary["final"]  # the last update re-estimated: beta is not a final value
    records = runs.read_jsonl(run / "metrics.jsonl")[0]
    assert all(isinstance(r["k"], int) for r in records) and isinstance(records[0]["beta"], float)
    (row,) = schemas.read_csv(adaptive / "compare.csv", schemas.CompareCsvRow)
    assert isinstance(row.k_mean, float) and row.k_last == summary["k_last"]
    (run,) = [p for p in lstm.iterdir() if p.is_dir()]
    summary = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    assert summary["cell"] == "lstm" and "k_range" not in summary
    assert {"decay_per_step_c", "gate_high", "gate_low"} <= set(summary["diagnostics"])
    diag = schemas.DiagnosticsRecord.model_validate_json((run / "diagnostics.jsonl").read_text(encoding="utf-8").splitlines()[-1])
    assert diag.flow.norms_c and diag.spectrum.spectral_radius is None and diag.spectrum.gate == "forget"
