"""Hostile and careless configs: every one ends in one message, never a hang or a traceback.

Two layers are tested. In-process, ``load_config`` must raise a ``ConfigError`` naming the
file (with line and column where there is one) or the key. Through the command line, a
representative subset must exit 2 with exactly one line on stderr, no "Traceback" and no
run directory, within a subprocess timeout (a hang fails the test; nothing times anything).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bptt_cli.config import ConfigError, load_config
from bptt_cli.config.yaml_io import MAX_CONFIG_BYTES, MAX_DEPTH

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 20  # seconds; only a hang gets near it


def write(tmp_path: Path, text: str | bytes, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def refused(path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    return info.value


def alias_bomb(levels: int) -> str:
    """The "billion laughs" in YAML: 9**levels strings from a file of a few hundred bytes."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]")
    lines.append(f"compare:\n  grid:\n    seed: *a{levels}")
    return "\n".join(lines) + "\n"


def bptt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "bptt_cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False
    )


def assert_one_message(proc: subprocess.CompletedProcess, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# -- YAML that could hang or explode ------------------------------------------------------
@pytest.mark.parametrize("levels", [4, 5, 6, 7, 8, 9])
def test_alias_bomb_is_refused_naming_the_file(tmp_path, levels):
    path = write(tmp_path, alias_bomb(levels))
    assert path.stat().st_size < 1024
    e = refused(path)
    assert e.source == str(path) and e.line is not None
    assert "aliases expand to too many nodes" in str(e)


def test_aliases_that_expand_a_little_are_fine(tmp_path):
    text = "defaults: &d\n  steps: 5\n  batch_size: 4\ntrain: *d\n"
    e = refused(write(tmp_path, text))  # 'defaults' is not a key: the alias itself was read
    assert e.path == "defaults" and "unknown key" in str(e)
    cfg = load_config(write(tmp_path, "train: &t {steps: 5, eval_every: 5}\ncompare:\n  grid:\n    train.steps: [5, 6]\n"))
    assert cfg.train.steps == 5


def test_alias_cycle_is_refused(tmp_path):
    e = refused(write(tmp_path, "compare:\n  grid:\n    seed: &x [1, *x]\n"))
    assert "refers to a node that contains it" in str(e) and e.line == 3


def test_merge_key_chains_are_bounded(tmp_path):
    text = "m0: &m0 {steps: 5}\n" + "".join(f"m{i}: &m{i} {{<<: *m{i - 1}}}\n" for i in range(1, 300))
    e = refused(write(tmp_path, text))
    assert f"more than {MAX_DEPTH} levels deep" in str(e)


@pytest.mark.parametrize("levels", [5_000, 20_000, 500_000])
def test_deep_flow_nesting_is_refused(tmp_path, levels):
    e = refused(write(tmp_path, "compare:\n  grid:\n    seed: " + "[" * levels + "]" * levels + "\n"))
    assert f"more than {MAX_DEPTH} levels deep" in str(e) and e.line == 3


@pytest.mark.parametrize("levels", [5_000, 20_000])
def test_deep_mapping_nesting_is_refused(tmp_path, levels):
    e = refused(write(tmp_path, "a: " + "{a: " * levels + "1" + "}" * levels + "\n"))
    assert f"more than {MAX_DEPTH} levels deep" in str(e)


def test_deep_block_nesting_is_refused(tmp_path):
    e = refused(write(tmp_path, "".join(" " * i + "a:\n" for i in range(1000))))
    assert f"more than {MAX_DEPTH} levels deep" in str(e) and e.line == MAX_DEPTH


def test_too_many_values_is_refused(tmp_path):
    e = refused(write(tmp_path, "compare:\n  grid:\n    seed: [" + "1, " * 100_000 + "1]\n"))
    assert "too many values" in str(e)


def test_deep_python_data_is_refused_without_recursion():
    from bptt_cli.config import from_dict

    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(ConfigError, match="levels deep"):
        from_dict({"compare": {"grid": {"seed": deep}}})


# -- files that are not config files ------------------------------------------------------
def test_config_over_one_megabyte_is_refused_before_reading(tmp_path):
    path = write(tmp_path, "name: x\n" + "#" * (2 * MAX_CONFIG_BYTES) + "\n")
    e = refused(path)
    assert e.source == str(path) and "a config file may be at most 1,048,576 bytes" in str(e)


def test_config_of_exactly_the_limit_is_read(tmp_path):
    text = "name: x\n"
    path = write(tmp_path, text + "#" * (MAX_CONFIG_BYTES - len(text) - 1) + "\n")
    assert load_config(path).name == "x"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_is_refused_without_waiting(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    e = refused(fifo)
    assert "is a FIFO" in str(e) and e.source == str(fifo)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_is_refused_without_reading(tmp_path):
    assert "is a device" in str(refused(Path("/dev/zero")))
    link = tmp_path / "zero.yaml"
    link.symlink_to("/dev/zero")
    assert "is a device" in str(refused(link))


def test_directory_and_non_utf8(tmp_path):
    assert "is a directory" in str(refused(tmp_path))
    e = refused(write(tmp_path, b"name: x\nseed: \xc3\x28\n"))
    assert "not UTF-8 text: byte 0xc3 at offset 14" in str(e)


# -- control characters ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("char", "name"), [("\x00", "U+0000 (NUL)"), ("\x07", "U+0007 (BEL)"), ("\x1b", "U+001B (ESC)"), ("\x7f", "U+007F (DEL)")]
)
def test_control_character_in_a_file_is_refused_with_its_place(tmp_path, char, name):
    e = refused(write(tmp_path, f"name: x\ntrain:\n  steps: 3{char}\n"))
    assert (e.line, e.column) == (3, 11)
    assert f"control character {name}" in str(e)


def test_tabs_and_crlf_are_still_fine(tmp_path):
    assert load_config(write(tmp_path, "# a\tcomment\r\nname: x\r\ntrain:\r\n  steps: 3\r\n")).train.steps == 3


def test_control_character_spelled_as_an_escape_is_refused(tmp_path):
    e = refused(write(tmp_path, 'task:\n  name: text\n  path: "corpus\\0.txt"\n'))
    assert e.path == "task.path" and "control character U+0000 (NUL)" in str(e)


@pytest.mark.parametrize("item", ["name=a\x00b", "name=a\x07b", "compare.grid={seed: [1, \x1b]}"])
def test_control_character_in_set_is_refused_and_shown_escaped(item):
    e = refused(None, [item])
    assert "--set values must be plain text" in str(e)
    assert "\n" not in str(e) and not any(c in str(e) for c in "\x00\x07\x1b")


def test_newline_in_a_file_name_stays_one_line(tmp_path):
    path = tmp_path / "two\nlines.yaml"
    e = refused(path)
    assert "\n" not in str(e) and "no such config file" in str(e)


# -- numbers past any sane range ------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.steps=1e18", "train.steps: must be <= 1000000000, got 1e+18"),
        ("train.steps=-5", "train.steps: must be >= 1, got -5"),
        ("train.batch_size=1e12", "train.batch_size: must be <= 1000000000"),
        ("train.eval_size=-1", "train.eval_size: must be >= 1, got -1"),
        ("train.eval_every=1e12", "train.eval_every: must be <= 1000000000"),
        ("train.checkpoint_every=1e12", "train.checkpoint_every: must be <= 1000000000"),
        ("train.diagnostics_every=-1", "train.diagnostics_every: must be >= 0, got -1"),
        ("train.log_every=1e10", "train.log_every: must be <= 1000000000"),
        ("model.hidden=1e12", "model.hidden: must be <= 1000000000"),
        ("seed=1e23", "seed: must be <= 4294967295, got 1e+23"),
        ("seed=-1", "seed: must be >= 0, got -1"),
        ("model.spectral_radius=1e300", "model.spectral_radius: must be <= 1000, got 1e+300"),
        ("optimizer.lr=1e300", "optimizer.lr: must be <= 1000, got 1e+300"),
        ("optimizer.eps=10", "optimizer.eps: must be <= 1 or null, got 10"),
        ("diagnostics.max_lag=1e15", "diagnostics.max_lag: must be <= 1000000000"),
        ("compare.seeds=100000000", "compare.seeds: a count of seeds must be from 1 to 1000"),
        ("compare.seeds=[1, 4294967296]", "compare.seeds: seeds must be from 0 to 4294967295"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_key(override, message):
    e = refused(None, [override])
    assert message in str(e), str(e)
    assert len(str(e).splitlines()) == 1


def test_infinite_and_nan_numbers_in_a_file_are_refused(tmp_path):
    e = refused(write(tmp_path, "model:\n  spectral_radius: .inf\nclip:\n  threshold: .nan\n"))
    assert [ln.split(": ", 2)[1:] for ln in str(e).splitlines()] == [
        ["model.spectral_radius", "expected a finite number > 0 and <= 1000, got inf"],
        ["clip.threshold", "expected a finite number > 0 or null, got nan"],
    ]


def test_seed_count_may_not_run_past_the_largest_seed():
    e = refused(None, ["seed=4294967295", "compare.seeds=2"])
    assert e.path == "compare.seeds" and "pass the largest seed, 4294967295" in str(e)
    assert load_config(None, ["seed=4294967294", "compare.seeds=2"]).compare.seeds == 2


def test_ranges_keep_every_shipped_config_valid():
    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        load_config(path)


# -- validation that knows the machine ------------------------------------------------------
GB = 10**9


@pytest.mark.parametrize(
    ("sets", "key", "part"),
    [
        (["model.hidden=1e6"], "model.hidden", "the weights"),
        (["train.batch_size=1e9"], "train.batch_size", "a training batch"),
        (["train.eval_size=1e9"], "train.eval_size", "the held-out set"),
        (["task.name=copy_memory", "task.gap=100000"], "task.gap", "the held-out set"),
        (["task.name=agreement", "task.distance=100000"], "task.distance", "the held-out set"),
        (["task.name=text", "task.n_sentences=200000", "train.batch_size=1", "train.eval_size=1"], "task.n_sentences", "the text corpus"),
    ],
)
def test_configs_that_cannot_fit_are_refused_naming_the_key(sets, key, part):
    from bptt_cli.budget import check_budget

    cfg = load_config(None, sets)  # valid key by key
    available = 5 * 10**6 if key == "task.n_sentences" else 4 * GB
    with pytest.raises(ConfigError) as info:
        check_budget(cfg, available=available)
    e = info.value
    assert e.path == key, str(e)
    assert f"of that, {part}" in str(e) and f"lower {key}" in str(e)
    assert "available now" in str(e) and len(str(e).splitlines()) == 1


def test_every_shipped_config_fits_in_a_gigabyte():
    from bptt_cli.budget import check_budget

    for path in sorted((ROOT / "configs").rglob("*.yaml")):
        check_budget(load_config(path), available=GB)


def test_the_estimate_grows_with_what_it_names():
    from bptt_cli.budget import estimate

    def total(*sets):
        return sum(n.bytes for n in estimate(load_config(None, list(sets))))

    base = total()
    assert total("model.hidden=128") > 1.5 * base  # W_hh and the states both grow
    assert total("train.eval_size=2560") > 5 * base
    assert total("model.dtype=float64") > 1.9 * base
    assert total("truncation.mode=k_truncated:5") > base  # the lag sweep's buffers
    assert total("train.diagnostics_every=10") > base


def test_text_file_is_estimated_from_its_size_without_reading_it(tmp_path):
    from bptt_cli.budget import check_budget, task_shape

    text = tmp_path / "corpus.txt"
    text.write_text("abc def\n" * 1_000_000, encoding="utf-8")  # 8 MB
    cfg = load_config(None, ["task.name=text", f"task.path={text}", "train.batch_size=1", "train.eval_size=1"])
    assert task_shape(cfg).chars == 8_000_000
    with pytest.raises(ConfigError) as info:
        check_budget(cfg, available=5 * 10**6)
    assert info.value.path == "task.path" and "of that, the text corpus" in str(info.value)
    check_budget(cfg, available=GB)


def test_exact_task_shape_is_used_when_given():
    from bptt_cli.budget import task_shape
    from bptt_cli.tasks import make_task

    cfg = load_config(None, ["task.name=text", "task.n_sentences=200"])
    task = make_task("text", cfg.task.params, seed=0)
    exact = task_shape(cfg, task)
    assert (exact.T, exact.I, exact.chars) == (task.length, task.n_in, len(task.corpus.ids))
    assert task_shape(cfg).chars <= exact.chars  # the estimate errs low


def test_unknown_available_memory_skips_only_the_memory_check(monkeypatch):
    from bptt_cli import budget

    monkeypatch.setattr(budget, "available_memory", lambda: None)
    budget.check_budget(load_config(None, ["model.hidden=1e6"]))
    with pytest.raises(ConfigError, match="train.log_every: 1000 is more than the 400 updates"):
        budget.check_budget(load_config(None, ["train.log_every=1000"]))


def test_available_memory_is_measured():
    from bptt_cli.budget import available_memory

    room = available_memory()
    assert room is None or room > 0


def test_a_containers_limit_counts_and_its_page_cache_does_not(tmp_path, monkeypatch):
    from bptt_cli import budget

    limit, usage, stat = tmp_path / "memory.max", tmp_path / "memory.current", tmp_path / "memory.stat"
    monkeypatch.setattr(budget, "_CGROUPS", ((str(limit), str(usage), str(stat), "inactive_file"),))
    limit.write_text("1000000000\n")
    usage.write_text("900000000\n")
    stat.write_text("anon 400000000\ninactive_file 500000000\n")
    assert budget._cgroup_room() == 600_000_000
    assert budget.available_memory() <= 600_000_000
    limit.write_text("max\n")
    assert budget._cgroup_room() is None


@pytest.mark.parametrize(
    ("sets", "ok"),
    [
        (["train.log_every=400"], True),
        (["train.log_every=401"], False),
        (["train.log_every=1e9"], False),
        # text.yaml: 300 steps of 4 chunks each make 1,200 updates
        (["train.log_every=1200"], True),
        (["train.log_every=1201"], False),
    ],
)
def test_log_every_must_leave_at_least_one_metrics_line(sets, ok):
    from bptt_cli.budget import check_budget

    path = ROOT / "configs" / ("text.yaml" if "1200" in sets[0] or "1201" in sets[0] else "quickstart.yaml")
    cfg = load_config(path, sets)
    if ok:
        check_budget(cfg, available=GB)
    else:
        with pytest.raises(ConfigError, match="no metrics line would be written"):
            check_budget(cfg, available=GB)


# -- through the command line: exit 2, one line, no traceback, no run directory -------------
def _hostile_file(tmp_path: Path, kind: str) -> Path:
    if kind == "alias bomb":
        return write(tmp_path, alias_bomb(9))
    if kind == "20,000 levels":
        return write(tmp_path, "name: x\ncompare:\n  grid:\n    seed: " + "[" * 20_000 + "]" * 20_000 + "\n")
    if kind == "2 MB":
        return write(tmp_path, "name: x\n" + "#" * 2_000_000 + "\n")
    if kind == "NUL":
        return write(tmp_path, "name: x\x00\n")
    if kind == "FIFO":
        os.mkfifo(tmp_path / "fifo.yaml")
        return tmp_path / "fifo.yaml"
    if kind == "not UTF-8":
        return write(tmp_path, b"name: \xff\n")
    raise AssertionError(kind)


@pytest.mark.parametrize(
    ("kind", "needle"),
    [
        ("alias bomb", "aliases expand to too many nodes"),
        ("20,000 levels", "levels deep"),
        ("2 MB", "a config file may be at most"),
        ("NUL", "control character U+0000 (NUL)"),
        pytest.param("FIFO", "is a FIFO", marks=pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs")),
        ("not UTF-8", "not UTF-8 text"),
    ],
)
def test_train_refuses_hostile_files_with_one_line(tmp_path, kind, needle):
    path = _hostile_file(tmp_path, kind)
    proc = bptt("train", str(path), "--runs-root", str(tmp_path / "runs"), cwd=tmp_path)
    line = assert_one_message(proc, needle, str(path))
    assert line.startswith("error: ")
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_validate_refuses_dev_zero(tmp_path):
    assert_one_message(bptt("validate", "/dev/zero", cwd=tmp_path), "/dev/zero: is a device")


@pytest.mark.parametrize(
    ("sets", "key"),
    [
        (["model.hidden=1e6"], "model.hidden"),
        (["train.batch_size=1e9"], "train.batch_size"),
        (["train.eval_size=1e9"], "train.eval_size"),
        (["train.steps=1e18"], "train.steps"),
        (["train.log_every=1e9"], "train.log_every"),
        (["model.spectral_radius=1e300"], "model.spectral_radius"),
        (["seed=1e23"], "seed"),
        (["train.eval_every=1e12"], "train.eval_every"),
        (["name=a\x07b"], "U+0007 (BEL)"),
    ],
)
def test_train_refuses_before_creating_a_run_directory(tmp_path, sets, key):
    args = [a for s in sets for a in ("--set", s)]
    proc = bptt("train", *args, "--runs-root", str(tmp_path / "runs"), "--quiet", cwd=tmp_path)
    assert_one_message(proc, key)
    assert "\x07" not in proc.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("command", ["validate", "gradcheck"])
def test_validate_and_gradcheck_check_the_budget(tmp_path, command):
    config = [str(ROOT / "configs" / "quickstart.yaml")]
    proc = bptt(command, *config, "--set", "train.eval_size=1e9", cwd=tmp_path)
    assert_one_message(proc, "train.eval_size", "lower train.eval_size")


# -- details --------------------------------------------------------------------------------
def test_the_pure_python_parser_keeps_the_same_limits(tmp_path, monkeypatch):
    from bptt_cli.config import yaml_io

    monkeypatch.setattr(yaml_io, "_Loader", yaml_io._PyLoader)  # PyYAML built without libyaml
    assert "aliases expand to too many nodes" in str(refused(write(tmp_path, alias_bomb(9))))
    assert "levels deep" in str(refused(write(tmp_path, "a: " + "{a: " * 5000 + "1" + "}" * 5000 + "\n")))
    assert "levels deep" in str(refused(write(tmp_path, "- " * 5000 + "1\n")))
    assert "a node that contains it" in str(refused(write(tmp_path, "a: &x [*x]\n")))
    assert load_config(ROOT / "configs" / "quickstart.yaml") == load_config(None, ["name=quickstart"])


def test_a_huge_value_makes_a_short_message(tmp_path):
    e = refused(write(tmp_path, "name: " + "x" * 500_000 + "\nseed: '" + "7" * 100_000 + "'\n"))
    lines = str(e).splitlines()
    assert len(lines) == 2 and all(len(line) < 400 for line in lines), [len(line) for line in lines]
    assert "(500,002 characters)" in lines[0] and "seed: expected an integer" in lines[1]
