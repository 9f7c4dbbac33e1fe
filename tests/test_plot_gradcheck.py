"""`bptt gradcheck` and `bptt plot` at the command line."""

from __future__ import annotations

import builtins
import struct
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL

from bptt_cli.core import bptt

CONFIGS = sorted(str(p) for p in (Path(__file__).resolve().parents[1] / "configs").glob("**/*.yaml"))


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: Path(p).stem)
def test_gradcheck_passes_on_every_shipped_config(invoke, config):
    result = invoke("gradcheck", config, "--steps", "6")
    assert result.exit_code == 0, result.output
    assert "finite differences" in result.stdout and "reference" in result.stdout
    assert "checks passed" in result.output


def test_gradcheck_json_rows_cover_every_mode_and_parameter(invoke):
    import json

    result = invoke("gradcheck", "--modes", "full,k_truncated:2,subsequence:3,tbptt:2:5", "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    ref_modes = {r["mode"] for r in rows if r["check"] == "reference"}
    assert ref_modes == {"full", "k_truncated:2", "subsequence:3", "tbptt:2:5"}
    assert {r["param"] for r in rows} == {"W_xh", "W_hh", "b_h", "W_hy", "b_y"}
    assert all(r["ok"] and r["rel_error"] <= r["tolerance"] for r in rows)


def test_gradcheck_fails_with_exit_1_on_a_broken_gradient(invoke, monkeypatch):
    real = bptt.loss_and_gradients

    def broken(*args, **kwargs):
        loss, grads, h = real(*args, **kwargs)
        grads = dict(grads, W_hh=grads["W_hh"] * 1.01)  # a 1% error in one gradient
        return loss, grads, h

    monkeypatch.setattr(bptt, "loss_and_gradients", broken)
    result = invoke("gradcheck", "--modes", "full,k_truncated:2")
    assert result.exit_code == 1, result.output
    assert "gradient check failed" in result.output and "W_hh" in result.output
    assert "W_xh" not in " ".join(l for l in result.output.splitlines() if "failed" in l)


def test_gradcheck_bad_config_is_a_user_error(invoke):
    result = invoke("gradcheck", "--set", "model.hidden=0")
    assert result.exit_code == 2
    assert "model.hidden" in result.output and "Traceback" not in result.output


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_plot_of_a_run_with_diagnostics_writes_the_png(invoke, tmp_path):
    pytest.importorskip("matplotlib")
    run = tmp_path / "run"
    sets = [a for s in (*SMALL, "train.diagnostics_every=2") for a in ("--set", s)]
    assert invoke("train", "--run-dir", run, *sets, "-q").exit_code == 0
    result = invoke("plot", run, "--size", "12x8", "--dpi", "100")
    assert result.exit_code == 0, result.output
    png = run / "plot.png"
    assert png.stat().st_size > 10_000
    assert _png_size(png) == (1200, 800)  # 12 x 8 inches at 100 dpi


def test_plot_of_a_compare_directory_to_a_chosen_file(invoke, tmp_path):
    pytest.importorskip("matplotlib")
    sets = [a for s in SMALL for a in ("--set", s)]
    result = invoke("compare", "--modes", "full,k_truncated:1", "--workers", "1", "--runs-root", tmp_path, *sets, "-q")
    assert result.exit_code == 0, result.output
    (cmp_dir,) = (tmp_path / "quickstart").glob("compare-*")
    out = tmp_path / "figs" / "cmp.png"
    result = invoke("plot", cmp_dir, "--out", out, "--size", "12x8", "--dpi", "100")
    assert result.exit_code == 0, result.output
    assert out.stat().st_size > 10_000 and _png_size(out) == (1200, 800)


def test_plot_without_matplotlib_says_how_to_install_it(invoke, tmp_path, monkeypatch):
    run = tmp_path / "run"
    sets = [a for s in SMALL for a in ("--set", s)]
    assert invoke("train", "--run-dir", run, *sets, "-q").exit_code == 0
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    result = invoke("plot", run)
    assert result.exit_code == 2
    assert 'pip install -e ".[plot]"' in result.output
    assert not (run / "plot.png").exists()


def test_plot_of_a_folder_that_is_not_a_run(invoke, tmp_path):
    result = invoke("plot", tmp_path)
    assert result.exit_code == 2 and "not a run directory" in result.output


def test_gradcheck_slice_is_float64_and_keeps_a_scored_step():
    from bptt_cli.config import load_config
    from bptt_cli.trainer import gradcheck_slice

    params, x, targets, mask, act, loss = gradcheck_slice(load_config(None, ["task.name=adding", "task.length=30"]), max_steps=8)
    assert x.dtype == np.float64 and all(p.dtype == np.float64 for p in params.values())
    assert x.shape[0] == 8 and mask[-1].all()  # the adding task scores only its last step
