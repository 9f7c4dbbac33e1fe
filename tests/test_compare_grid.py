"""Grids whose keys vary together (``--grid model.cell,model.hidden=elman:67,gru:36`` and
``compare.grid: {"model.cell,model.hidden": [[elman, 67], [gru, 36]]}``): one grid point per
tuple, crossed with the other grid keys; every variant names each key; compare.csv keeps one
typed column per key; every mistake is one message and exit 2. And the gating experiments,
which need them: one command each plans exactly the runs docs/cells.md reports."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from bptt_cli import compare as cmp
from bptt_cli.config import ConfigError, load_config

from conftest import SMALL, one_line, sets, stderr_of  # noqa: E402  (tests/ is on sys.path under pytest)

ROOT = Path(__file__).resolve().parents[1]
DELAY = ROOT / "configs" / "delay.yaml"
TINY = (*SMALL, "train.steps=2", "train.eval_every=2")
CELLS = "model.cell,model.hidden=elman:8,gru:5,lstm:4"


def base(*extra: str):
    return load_config(DELAY, [*TINY, *extra])


# -- the grammar --------------------------------------------------------------------------
def test_parse_grid_reads_a_tuple_per_point_typed_as_in_set():
    grid = cmp.parse_grid([CELLS, "clip.threshold=1,none"])
    assert grid == {"model.cell,model.hidden": [["elman", 8], ["gru", 5], ["lstm", 4]], "clip.threshold": [1, None]}
    assert cmp.parse_grid([" model.cell , model.hidden = elman : 8 "]) == {"model.cell,model.hidden": [["elman", 8]]}


def test_a_plain_key_keeps_colons_in_its_values():
    assert cmp.parse_grid(["task.name=a:b"]) == {"task.name": ["a:b"]}


def test_paired_keys_vary_together_and_cross_the_other_keys():
    variants = cmp.plan(base(), modes=["full"], seeds=[0, 1], grid=cmp.parse_grid([CELLS, "task.delay=1,2"]))
    assert len(variants) == 3 * 2 * 2  # 3 cells (not 3 x 3 cell/hidden pairs) x 2 delays x 2 seeds
    points = [(v.grid["model.cell"], v.grid["model.hidden"], v.grid["task.delay"], v.seed) for v in variants]
    assert points == [(c, h, d, s) for c, h in (("elman", 8), ("gru", 5), ("lstm", 4)) for d in (1, 2) for s in (0, 1)]
    for v in variants:
        assert list(v.grid) == ["model.cell", "model.hidden", "task.delay"]  # one entry per key, typed
        assert v.config["model"].get("cell", "elman") == v.grid["model.cell"] and v.config["model"]["hidden"] == v.grid["model.hidden"]
        assert v.config["task"]["delay"] == v.grid["task.delay"]
    first = variants[0]
    assert first.group == "full model.cell=elman model.hidden=8 task.delay=1"
    assert first.id == "full_cell-elman_hidden-8_delay-1_seed0"
    assert len({v.id for v in variants}) == len(variants)


def test_the_config_form_plans_the_same_variants_as_the_command_line(tmp_path):
    path = tmp_path / "cells.yaml"
    path.write_text(
        f"compare:\n  modes: [full]\n  grid:\n"
        f"    model.cell,model.hidden: [[elman, 8], [gru, 5], [lstm, 4]]\n    task.delay: [1, 2]\n",
        encoding="utf-8",
    )
    from_file = cmp.plan(load_config(path, [*TINY, "task.length=12"]))
    from_cli = cmp.plan(load_config(path, [*TINY, "task.length=12"]), grid=cmp.parse_grid([CELLS, "task.delay=1,2"]))
    assert [(v.id, v.grid, v.config) for v in from_file] == [(v.id, v.grid, v.config) for v in from_cli]
    assert len(from_file) == 6


def test_the_variant_limit_counts_tuples_not_values():
    values = ",".join(f"lstm:{h}" for h in range(1, 101))  # 100 points, 200 values
    assert len(cmp.plan(base(), modes=["full"], seeds=[0], grid=cmp.parse_grid([f"model.cell,model.hidden={values}"]))) == 100
    with pytest.raises(cmp.CompareError, match=r"1 modes x 101 seeds x 100 model.cell,model.hidden points would make 10,100 variants"):
        cmp.plan(base(), modes=["full"], seeds=list(range(101)), grid=cmp.parse_grid([f"model.cell,model.hidden={values}"]))


def test_compare_csv_has_one_typed_column_per_paired_key(invoke, tmp_path):
    result = invoke("compare", DELAY, "--runs-root", tmp_path, *sets(*TINY), "--workers", 1, "-q",
                    "--modes", "full", "--grid", CELLS, "--grid", "task.delay=1,2")  # fmt: skip
    assert result.exit_code == 0, result.output
    (path,) = (tmp_path / "delay").glob("compare-*")
    with open(path / "compare.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    assert header[header.index("mode") + 1 : header.index("mode") + 4] == ["model.cell", "model.hidden", "task.delay"]
    assert [(r["model.cell"], r["model.hidden"], r["task.delay"]) for r in rows] == [
        (c, h, d) for c, h in (("elman", "8"), ("gru", "5"), ("lstm", "4")) for d in ("1", "2")
    ]
    assert {r["status"] for r in rows} == {"completed"}
    with open(path / "compare_summary.csv", newline="", encoding="utf-8") as f:
        groups = [r["group"] for r in csv.DictReader(f)]
    assert groups[0] == "full model.cell=elman model.hidden=8 task.delay=1" and len(groups) == 6
    # typed: the CSV reads back as ints for model.hidden (pandas would give an int column)
    assert all(r["model.hidden"].isdigit() for r in rows)


# -- mistakes: one message, exit 2, nothing written ------------------------------------------
BAD_GRIDS = [
    (["model.cell,model.hidden=elman:8,gru"], "--grid model.cell,model.hidden: the point 'gru' has 1 value; each point gives one value for each of the 2 keys, as model.cell:model.hidden"),
    (["model.cell,model.hidden=elman:8:3"], "the point 'elman:8:3' has 3 values; each point gives one value for each of the 2 keys"),
    (["model.cell,model.hidden=elman:8,"], "the point '' has 1 value"),
    (["model.cell,model.hidden="], "--grid expects KEY=V1,V2,... with a dotted key"),
    (["model.cell,model.cell=elman:gru"], "--grid model.cell,model.cell: keys that vary together are distinct dotted keys joined by commas"),
    (["model.cell,=elman:8"], "keys that vary together are distinct dotted keys joined by commas"),
    (["model.cell=elman,gru", CELLS], "--grid model.cell is varied twice (in model.cell,model.hidden and in model.cell); each key goes in one --grid"),
    ([CELLS, "model.hidden=4,5"], "--grid model.hidden is varied twice (in model.hidden and in model.cell,model.hidden)"),
    ([CELLS, CELLS], "--grid model.cell,model.hidden is given twice; list all its values once"),
    (["model.cell,model.hidden=elman:8,elman:8"], "--grid model.cell,model.hidden lists elman:8 more than once; each value makes one variant"),
    (["model.cell,model.hidden=gru:abc"], "variant full {'model.cell': 'gru', 'model.hidden': 'abc'} seed 0: --set model.hidden=abc: model.hidden: expected an integer"),
    (["model.cell,model.hidden=rnn:8"], "model.cell: expected one of elman, gru, lstm, got 'rnn'"),
    (["model.cell,model.hiden=elman:8"], "model.hiden: unknown key (did you mean model.hidden?)"),
    (["seed,model.hidden=1:8"], "--grid cannot vary seed: use --seeds instead"),
]


@pytest.mark.parametrize("grids, fragment", BAD_GRIDS, ids=[" ".join(g) for g, _ in BAD_GRIDS])
def test_bad_paired_grids_exit_2_with_one_message(invoke, tmp_path, grids, fragment):
    args = [a for g in grids for a in ("--grid", g)]
    result = invoke("compare", DELAY, "--runs-root", tmp_path / "runs", *sets(*TINY), "--workers", 1, "--modes", "full", *args)
    err = one_line(stderr_of(result))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert err.startswith("error: ") and err.count("error: ") == 1, err
    assert fragment in err, f"{fragment!r} not in {err!r}"
    assert not (tmp_path / "runs").exists()


BAD_CONFIG_GRIDS = [
    ("model.cell,model.hidden: [[elman, 8], [gru]]", "compare.grid.model.cell,model.hidden", "expected a list of [model.cell, model.hidden] lists of 2 values each"),
    ("model.cell,model.hidden: [elman, gru]", "compare.grid.model.cell,model.hidden", "got 'elman'"),
    ("model.cell,model.hidden: []", "compare.grid.model.cell,model.hidden", "expected a non-empty list of values"),
    ("model.cell,model.cell: [[elman, gru]]", "compare.grid.model.cell,model.cell", "distinct dotted keys joined by commas"),
    ("model.cell,model.hidden: [[elman, 8]]\n    model.hidden: [4]", "compare.grid.model.hidden", "model.hidden is also varied by the grid entry 'model.cell,model.hidden'"),
    ("model.cell,model.hiden: [[elman, 8]]", "compare.grid.model.cell,model.hiden", "did you mean model.hidden?"),
    ("model.cell,model.hidden: [[gru, -3]]", "compare.grid.model.cell,model.hidden", "value ['gru', -3] gives: model.hidden: must be >= 1"),
]


@pytest.mark.parametrize("grid, where, fragment", BAD_CONFIG_GRIDS, ids=[g for g, _, _ in BAD_CONFIG_GRIDS])
def test_bad_paired_grids_in_a_config_name_the_key(invoke, tmp_path, grid, where, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(f"compare:\n  modes: [full]\n  grid:\n    {grid}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert where in str(e.value) and fragment in str(e.value), str(e.value)
    result = invoke("compare", path, "--runs-root", tmp_path / "runs", "--workers", 1)
    err = one_line(stderr_of(result))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and err.count("error: ") == 1, err
    assert fragment in err, err
    assert not (tmp_path / "runs").exists()


def test_a_grid_on_the_command_line_replaces_the_config_grid_before_validation(invoke, tmp_path):
    """gating.yaml's follow-up: --set model.forget_bias=3 would be refused by the config grid's
    elman point, but --grid replaces that grid, so only the LSTM of the model section runs."""
    path = tmp_path / "cells.yaml"
    path.write_text(
        "model:\n  cell: lstm\n  hidden: 4\n  init: orthogonal\ncompare:\n  modes: [full]\n  grid:\n"
        "    model.cell,model.hidden: [[elman, 8], [lstm, 4]]\n",
        encoding="utf-8",
    )
    args = ["compare", path, "--runs-root", tmp_path / "runs", *sets(*TINY), "--workers", 1, "-q", "--set", "model.forget_bias=3"]
    refused = invoke(*args)
    assert refused.exit_code == 2 and "cell elman has no forget gate" in one_line(stderr_of(refused)), refused.output
    result = invoke(*args, "--grid", "task.delay=1,2", "--json")
    assert result.exit_code == 0, result.output
    import json

    variants = json.loads(result.stdout)["variants"]
    assert [v["grid"] for v in variants] == [{"task.delay": 1}, {"task.delay": 2}]
    (plan,) = (tmp_path / "runs").glob("*/compare-*/plan.json")
    for v in json.loads(plan.read_text(encoding="utf-8"))["variants"]:
        assert v["config"]["model"]["cell"] == "lstm" and v["config"]["model"]["forget_bias"] == 3


def test_a_programmatic_grid_with_a_short_tuple_is_refused():
    with pytest.raises(cmp.CompareError, match=r"the point 'gru' has 1 value"):
        cmp.plan(base(), modes=["full"], seeds=[0], grid={"model.cell,model.hidden": [["elman", 8], ["gru"]]})


# -- the gating experiments: one command, the runs docs/cells.md reports ------------------------
# (config, distance key, {cell: H}) as docs/cells.md's table of matched parameter counts states.
GATING = [
    ("gating.yaml", "task.distance", {"elman": 67, "gru": 36, "lstm": 30}),
    ("gating_delay.yaml", "task.delay", {"elman": 64, "gru": 36, "lstm": 31}),
]


@pytest.mark.parametrize("name, key, sizes", GATING, ids=[g[0] for g in GATING])
def test_one_command_plans_the_whole_gating_experiment_as_the_per_cell_commands_did(name, key, sizes):
    """The one-command plan is exactly the three per-cell compares the published numbers came
    from (``--set model.cell=C --set model.hidden=H`` on the LSTM base, the distance grid),
    variant for variant: same mode, seed, grid values and config (the name aside)."""
    config = ROOT / "configs" / "experiments" / name
    cfg = load_config(config)
    one = cmp.plan(cfg)
    assert len(one) == 3 * 4 * 3
    by_point = {(v.grid["model.cell"], v.grid["model.hidden"], v.grid[key], v.seed): v for v in one}
    per_cell = {}
    distances = cfg.compare.grid[key]
    for cell, hidden in sizes.items():
        old = load_config(config, [f"model.cell={cell}", f"model.hidden={hidden}"])
        for v in cmp.plan(old, grid={key: distances}):
            per_cell[(cell, hidden, v.grid[key], v.seed)] = v
    assert set(by_point) == set(per_cell)
    assert sorted({v.seed for v in one}) == [0, 1, 2] and sorted(distances) == [10, 20, 50, 100]
    for point, v in by_point.items():
        old = per_cell[point]
        assert v.mode == old.mode == "full"
        assert {**v.config, "name": None} == {**old.config, "name": None}, point
