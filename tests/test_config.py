"""The config layer: schema defaults, YAML loading, overrides, and the messages users see."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bptt_cli.config import (
    Config,
    ConfigError,
    Expectation,
    apply_overrides,
    describe_schema,
    dump_yaml,
    from_dict,
    load_config,
    parse_expectation,
    smoke,
    to_dict,
)
from bptt_cli.core import optim
from bptt_cli.core.errors import BpttError
from bptt_cli.tasks import REGISTRY

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = sorted(CONFIGS.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    return info.value


def override_error(*overrides: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(None, overrides)
    return info.value


# -- defaults and shipped configs ---------------------------------------------------------
def test_defaults_are_the_quickstart():
    cfg = load_config()
    assert cfg == Config()
    assert cfg.name == "quickstart" and cfg.seed == 0
    assert cfg.task.name == "delay"
    assert cfg.task.params == REGISTRY["delay"].check_params({})  # defaults filled in
    assert cfg.truncation.spec == "full" and cfg.truncation.update == "sequence"
    assert cfg.clip.mode == "global_norm" and cfg.clip.threshold == 5.0
    assert cfg.optimizer.hyper() == {"lr": 0.003, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
    assert cfg.compare is None


def test_config_is_frozen():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.seed = 3  # type: ignore[misc]
    with pytest.raises(Exception):
        cfg.train.steps = 3  # type: ignore[misc]


def test_every_task_has_a_shipped_config():
    assert {p.stem for p in SHIPPED} >= {"quickstart", *REGISTRY}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    again = load_config(write(tmp_path, dump_yaml(cfg)))
    assert again == cfg
    # Each one is small enough for CI: the real run is at most a few thousand steps.
    assert cfg.train.steps <= 2000 and cfg.model.hidden <= 128
    task = REGISTRY[cfg.task.name](cfg.task.params, seed=cfg.seed)
    assert task.length <= 100


def test_quickstart_file_spells_out_the_defaults_with_comments():
    path = CONFIGS / "quickstart.yaml"
    assert load_config(path) == Config()

    def keys(d, prefix=""):
        for k, v in d.items():
            yield prefix + k
            if isinstance(v, dict):
                yield from keys(v, prefix + k + ".")

    written = set(keys(yaml.safe_load(path.read_text())))
    assert written >= set(keys(to_dict(Config())))
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":"):
            assert "#" in line, f"uncommented key in quickstart.yaml: {line!r}"


def test_config_module_does_not_import_the_cli_layers():
    code = "import sys, bptt_cli.config; print(sorted(m for m in ('typer', 'rich') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- overrides ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5", 5),
        ("-3", -3),
        ("0.5", 0.5),
        ("1e-3", 1e-3),  # YAML 1.1 alone would give the string "1e-3"
        ("2E5", 2e5),
        ("none", None),
        ("null", None),
        ("~", None),
        ("", None),
        ("true", True),
        ("False", False),
        ("[1, 1e-3, null]", [1, 1e-3, None]),
        ("k_truncated:5", "k_truncated:5"),
        ("tbptt:5:20", "tbptt:5:20"),  # not YAML 1.1's base-60 integer
        ("eval.accuracy>=0.9", "eval.accuracy>=0.9"),
        ("relu", "relu"),
    ],
)
def test_override_values_are_typed(text, value):
    out = apply_overrides({}, [f"a.b={text}"])
    assert out == {"a": {"b": value}}
    assert type(out["a"]["b"]) is type(value)


def test_apply_overrides_nests_and_does_not_mutate():
    data = {"train": {"steps": 3}}
    out = apply_overrides(data, ["train.steps=5", "model.hidden=8", "seed=2"])
    assert out == {"train": {"steps": 5}, "model": {"hidden": 8}, "seed": 2}
    assert data == {"train": {"steps": 3}}


@pytest.mark.parametrize("bad", ["noequals", "=5", ".a=1", "a..b=1", "a.=1", " =x"])
def test_malformed_override(bad):
    with pytest.raises(ConfigError, match=r"--set expects KEY=VALUE with a dotted key such as truncation\.k=5"):
        apply_overrides({}, [bad])


def test_overrides_reach_every_section(tmp_path):
    path = write(tmp_path, "task:\n  name: delay\n  delay: 3\ntruncation:\n  mode: subsequence\n  k: 4\n")
    cfg = load_config(
        path,
        [
            "task.delay=8",
            "truncation.mode=k_truncated:5",  # a whole spec replaces the file's k
            "optimizer.lr=1e-3",
            "clip.threshold=none",
            "train.target=eval.accuracy>=0.9",
        ],
    )
    assert cfg.task.params["delay"] == 8
    assert cfg.truncation.spec == "k_truncated:5"
    assert cfg.optimizer.lr == 1e-3
    assert cfg.clip.mode == "none" and cfg.clip.threshold is None
    assert cfg.train.target == "eval.accuracy>=0.9"
    # A bare mode keeps the file's k.
    assert load_config(path, ["truncation.mode=k_truncated"]).truncation.spec == "k_truncated:4"
    assert load_config(path, ["truncation=tbptt:2:6"]).truncation.spec == "tbptt:2:6"


def test_override_error_names_the_override(tmp_path):
    e = error_of(tmp_path, "train:\n  steps: 5\n", ["train.steps=-1"])
    assert e.source == "--set train.steps=-1" and e.path == "train.steps"
    assert str(e).startswith("--set train.steps=-1: train.steps: must be >= 1, got -1")


# -- YAML-level errors ---------------------------------------------------------------------------
def test_yaml_syntax_error_has_file_line_column(tmp_path):
    e = error_of(tmp_path, "name: x\ntrain:\n  steps: 3\n  eval_every: [1, 2\n")
    assert e.source.endswith("config.yaml") and e.line == 5 and e.column == 1
    assert str(e).startswith(f"{e.source}:5:1: invalid YAML: ") and "expected ',' or ']'" in str(e)
    e = error_of(tmp_path, "name: x\n\tseed: 1\n")
    assert (e.line, e.column) == (2, 1) and ("'\\t'" in str(e) or "tab character" in str(e))
    e = error_of(tmp_path, "name: @x\n")
    assert (e.line, e.column) == (1, 7) and "found character '@' that cannot start any token" in str(e)


def test_python_tags_are_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "PWNED"
    text = f'name: !!python/object/apply:os.system ["touch {marker}"]\n'
    e = error_of(tmp_path, text)
    assert "unsupported YAML tag !!python/object/apply:os.system" in str(e)
    assert "only plain YAML is allowed" in str(e)
    assert (e.line, e.column) == (1, 7)
    assert not marker.exists()
    assert "unsupported YAML tag !custom" in str(error_of(tmp_path, "seed: !custom 3\n"))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the file is empty"),
        ("- 1\n- 2\n", "the top level must be a mapping of config keys"),
        ("just a string\n", "the top level must be a mapping"),
        ("train:\n  steps: 3\n  steps: 4\n", "config.yaml:3:3: train.steps: key given twice (first on line 2)"),
        ("1: x\n", "key 1 is not a string"),
    ],
)
def test_file_shape_errors(tmp_path, text, message):
    assert message in str(error_of(tmp_path, text))


def test_missing_and_directory_and_binary(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_config(tmp_path)
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8 text"):
        load_config(bad)


def test_yaml_1_2_floats_in_files(tmp_path):
    cfg = load_config(write(tmp_path, "optimizer:\n  lr: 1e-3\n  eps: 1E-7\ntrain:\n  steps: 1e3\n"))
    assert cfg.optimizer.lr == 1e-3 and cfg.optimizer.eps == 1e-7
    assert cfg.train.steps == 1000 and type(cfg.train.steps) is int


def test_empty_section_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "model:\n# hidden: 8\ntrain:\n")) == Config()


# -- unknown keys --------------------------------------------------------------------------------
def test_unknown_key_has_path_line_and_suggestion(tmp_path):
    e = error_of(tmp_path, "name: x\ntruncation:\n  mdoe: full\n")
    assert e.path == "truncation.mdoe" and (e.line, e.column) == (3, 3)
    assert str(e).startswith(f"{e.source}:3:3: truncation.mdoe: unknown key (did you mean truncation.mode?)")
    assert "allowed in truncation: mode, k, k1, k2, update_every" in str(e)


def test_unknown_top_level_key_suggests_the_right_section(tmp_path):
    e = error_of(tmp_path, "trian:\n  steps: 3\n")
    assert "trian: unknown key (did you mean train?)" in str(e)
    e = error_of(tmp_path, "lr: 0.1\n")
    assert "lr: unknown key (did you mean optimizer.lr?)" in str(e)


def test_unknown_task_parameter(tmp_path):
    e = error_of(tmp_path, "task:\n  name: delay\n  dealy: 3\n")
    assert e.path == "task.dealy" and e.line == 3
    assert "unknown key (did you mean task.delay?)" in str(e)
    assert "task 'delay' takes: name, vocab, delay, length" in str(e)


def test_unknown_task_name(tmp_path):
    e = error_of(tmp_path, "task:\n  name: dealy\n")
    assert e.path == "task.name" and "unknown task 'dealy' (did you mean 'delay'?)" in str(e)


def test_task_parameter_out_of_range_and_wrong_type():
    e = override_error("task.delay=-1")
    assert e.path == "task.delay" and "allowed: 0 <= delay" in str(e)  # with an upper bound too, where the task has one
    e = override_error("task.name=adding", "task.length=ten")
    assert e.path == "task.length" and "must be an integer" in str(e)


def test_optimizer_keys_belong_to_their_optimizer():
    e = override_error("optimizer.momentum=0.9")
    assert e.path == "optimizer.momentum"
    assert "momentum belongs to sgd; optimizer adam takes: lr, beta1, beta2, eps" in str(e)
    e = override_error("optimizer.beat1=0.9")
    assert "unknown key (did you mean optimizer.beta1?)" in str(e)
    e = override_error("optimizer.name=sgd", "optimizer.nesterov=true")
    assert "nesterov needs momentum > 0" in str(e)


@pytest.mark.parametrize(
    "name, keys",
    [
        ("sgd", {"momentum": 0.9, "nesterov": True}),
        ("adagrad", {"eps": 1e-9}),
        ("rmsprop", {"alpha": 0.9}),
        ("adam", {"beta2": 0.99}),
    ],
)
def test_optimizer_hyper_builds_the_engine_optimizer(name, keys):
    sets = [f"optimizer.name={name}", "optimizer.lr=0.01", *(f"optimizer.{k}={v}" for k, v in keys.items())]
    cfg = load_config(None, sets)
    hyper = cfg.optimizer.hyper()
    assert hyper["lr"] == 0.01 and all(hyper[k] == v for k, v in keys.items())
    opt = optim.make(cfg.optimizer.name, **hyper)
    assert opt.hyper() == hyper
    assert set(to_dict(cfg)["optimizer"]) == {"name", *hyper}


# -- types and ranges ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.steps=ten", "train.steps: expected an integer from 1 to 1000000000, got 'ten'"),
        ("train.steps=true", "train.steps: expected an integer from 1 to 1000000000, got True"),
        ("train.steps=2.5", "train.steps: expected an integer from 1 to 1000000000, got 2.5"),
        ("train.steps=0", "train.steps: must be >= 1, got 0"),
        ("train.eval_every=-1", "train.eval_every: must be >= 0, got -1"),
        ("seed='3'", "seed: expected an integer from 0 to 4294967295, got '3' (a quoted string: remove the quotes)"),
        ("model.hidden=0", "model.hidden: must be >= 1, got 0"),
        ("model.activation=tahn", "model.activation: expected one of tanh, relu, identity, got 'tahn' (did you mean tanh?)"),
        ("model.dtype=float16", "model.dtype: expected one of float32, float64, got 'float16'"),
        ("model.spectral_radius=-1", "model.spectral_radius: must be > 0, got -1"),
        ("model.spectral_radius=yes", "model.spectral_radius: expected a number > 0 and <= 1000, got 'yes'"),
        ("optimizer.lr=0", "optimizer.lr: must be > 0, got 0"),
        ("optimizer.name=adamw", "optimizer.name: expected one of sgd, adagrad, rmsprop, adam, got 'adamw' (did you mean adam?)"),
        ("clip.threshold=-2", "clip.threshold: must be > 0 or null, got -2"),
        ("clip.mode=norm", "clip.mode: expected one of none, global_norm, per_param_norm, value, got 'norm'"),
        ("diagnostics.max_lag=0", "diagnostics.max_lag: must be >= 1, got 0"),
        ("model=3", "model: expected a mapping"),
    ],
)
def test_wrong_type_or_range_names_path_and_allowed(override, expected):
    e = override_error(override)
    assert expected in str(e)
    assert "pydantic" not in str(e) and "errors.pydantic.dev" not in str(e)


def test_integral_floats_are_integers():
    cfg = load_config(None, ["train.steps=10.0", "model.hidden=1e2"])
    assert cfg.train.steps == 10 and type(cfg.train.steps) is int
    assert cfg.model.hidden == 100 and type(cfg.model.hidden) is int
    assert load_config(None, ["optimizer.lr=1"]).optimizer.lr == 1.0  # an int is a number


def test_all_errors_one_per_line_first_in_attributes(tmp_path):
    e = error_of(tmp_path, "model:\n  hidden: 0\n  activation: tahn\ntrain:\n  steps: x\n")
    lines = str(e).splitlines()
    assert len(lines) == 3 and e.path == "model.hidden" and e.line == 2
    assert [ln.split(": ")[1] for ln in lines] == ["model.hidden", "model.activation", "train.steps"]
    assert all(ln.startswith(e.source + ":") for ln in lines)


def test_config_error_is_one_family_and_pickles():
    e = override_error("train.steps=0")
    assert isinstance(e, BpttError) and isinstance(e, ValueError)
    again = pickle.loads(pickle.dumps(e))
    assert str(again) == str(e) and again.path == e.path and again.source == e.source


# -- truncation ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sets", "spec", "update"),
    [
        (["truncation.mode=full"], "full", "sequence"),
        (["truncation.mode=k_truncated", "truncation.k=0"], "k_truncated:0", "sequence"),
        (["truncation.mode=k_truncated:5"], "k_truncated:5", "sequence"),
        (["truncation.mode=subsequence:10"], "subsequence:10", "chunk"),
        (["truncation.mode=subsequence:10", "truncation.update_every=sequence"], "subsequence:10", "sequence"),
        (["truncation.mode=tbptt", "truncation.k1=5", "truncation.k2=20"], "tbptt:5:20", "chunk"),
        (["truncation.mode=tbptt:5:5", "truncation.k1=5"], "tbptt:5:5", "chunk"),  # same value twice is fine
        (["truncation.mode=tbptt:5:20", "truncation.update_every=chunk"], "tbptt:5:20", "chunk"),
    ],
)
def test_truncation_forms(sets, spec, update):
    t = load_config(None, sets).truncation
    assert t.spec == spec and t.update == update
    assert str(t.to_truncation()) == spec


_FORMS = "mode k_truncated with k >= 0; mode subsequence with k >= 1; mode tbptt with k2 >= k1 >= 1"


@pytest.mark.parametrize(
    ("sets", "path", "message"),
    [
        (["truncation.mode=k_truncated:-1"], "truncation.mode", "valid forms: full, k_truncated:K (K >= 0)"),
        (["truncation.mode=tbptt:5:2"], "truncation.mode", "tbptt needs K2 >= K1 >= 1"),
        (["truncation.mode=foo"], "truncation.mode", "unknown mode 'foo'"),
        (["truncation.mode=ful"], "truncation.mode", "unknown mode 'ful' (did you mean full?)"),
        (["truncation.mode=k_truncated"], "truncation.k", "mode k_truncated needs k"),
        (["truncation.mode=subsequence", "truncation.k=0"], "truncation.k", "subsequence needs k >= 1, got 0"),
        (["truncation.mode=tbptt", "truncation.k1=5", "truncation.k2=2"], "truncation.k2", "tbptt needs k2 >= k1"),
        (["truncation.k=5"], "truncation.k", "k = 5 is not used by mode full"),
        (["truncation.mode=k_truncated:3", "truncation.k1=2"], "truncation.k1", "k1 = 2 is not used by mode k_truncated"),
        (["truncation.mode=k_truncated:3", "truncation.k=4"], "truncation.k", "sets k = 3 but k is also given as 4"),
    ],
)
def test_bad_truncation_names_the_valid_forms(sets, path, message):
    e = override_error(*sets)
    assert e.path == path and message in str(e)
    if "given as" not in message:  # a conflict, not a bad form
        assert "valid" in str(e) and "tbptt" in str(e)


def test_bad_truncation_in_a_file_has_the_line(tmp_path):
    e = error_of(tmp_path, "truncation:\n  mode: subsequence\n  k: 0\n")
    assert (e.path, e.line) == ("truncation.k", 3) and _FORMS in str(e)


@pytest.mark.parametrize("mode", ["full", "k_truncated:3"])
def test_chunk_updates_need_chunks(mode):
    e = override_error(f"truncation.mode={mode}", "truncation.update_every=chunk")
    assert e.path == "truncation.update_every"
    assert "'chunk' needs a mode with chunks (subsequence or tbptt)" in str(e) and "'auto' or 'sequence'" in str(e)
    assert "expected one of auto, sequence, chunk" in str(override_error("truncation.update_every=chunks"))


# -- clip, name, compare ----------------------------------------------------------------------
def test_clip_null_threshold_means_none():
    assert load_config(None, ["clip.threshold=null"]).clip.model_dump() == {"mode": "none", "threshold": None}
    assert load_config(None, ["clip.mode=none"]).clip.model_dump() == {"mode": "none", "threshold": None}
    c = load_config(None, ["clip.mode=value", "clip.threshold=0.5"]).clip
    assert (c.mode, c.threshold) == ("value", 0.5)


@pytest.mark.parametrize("name", ["run-1", "delay_k5", "v1.2", "A"])
def test_good_names(name):
    assert load_config(None, [f"name={name}"]).name == name


@pytest.mark.parametrize("name", ["my run", "../escape", "a/b", ".hidden", "x" * 101, "é"])
def test_bad_names(name):
    e = override_error(f"name={name}")
    assert e.path == "name" and "must be a safe directory name" in str(e)


def test_compare_section():
    cfg = load_config(
        None,
        [
            "compare.modes=[full, ' k_truncated:5', tbptt:2:4]",
            "compare.seeds=3",
            "compare.grid={clip.threshold: [1, 5, null], task.delay: [2, 4]}",
        ],
    )
    assert cfg.compare.modes == ["full", "k_truncated:5", "tbptt:2:4"]
    assert cfg.compare.seeds == 3
    assert cfg.compare.grid == {"clip.threshold": [1, 5, None], "task.delay": [2, 4]}
    assert load_config(None, ["compare.seeds=[3, 7, 11]"]).compare.seeds == [3, 7, 11]


@pytest.mark.parametrize(
    ("override", "path", "message"),
    [
        ("compare.modes=[full, k_truncated:-1]", "compare.modes.1", "valid forms"),
        ("compare.modes=[full, full]", "compare.modes.1", "listed twice"),
        ("compare.seeds=0", "compare.seeds", "a count of seeds must be from 1 to 1000"),
        ("compare.seeds=[1, 1]", "compare.seeds", "seeds must be distinct"),
        ("compare.seeds=[true]", "compare.seeds", "expected a count"),
        ("compare.grid={clip.thresold: [1]}", "compare.grid.clip.thresold", "did you mean clip.threshold?"),
        ("compare.grid={task.dealy: [1]}", "compare.grid.task.dealy", "did you mean task.delay?"),
        ("compare.grid={model.hidden: [8, -3]}", "compare.grid.model.hidden", "value -3 gives: model.hidden: must be >= 1"),
        ("compare.grid={model.hidden: 8}", "compare.grid.model.hidden", "expected a non-empty list"),
        ("compare.grid={compare.seeds: [1]}", "compare.grid.compare.seeds", "unknown config key"),
    ],
)
def test_bad_compare_section(override, path, message):
    e = override_error(override)
    assert e.path == path and message in str(e)


# -- plain data, YAML out, smoke ---------------------------------------------------------------
def test_to_dict_puts_task_params_beside_the_name_in_schema_order():
    d = to_dict(load_config(None, ["task.name=sine", "task.noise=0.1", "truncation.mode=tbptt:3:6"]))
    assert list(d) == ["name", "seed", "task", "model", "truncation", "clip", "optimizer", "train", "diagnostics", "compare"]
    assert d["task"] == {"name": "sine", "n_waves": 2, "length": 50, "noise": 0.1, "min_freq": 0.02, "max_freq": 0.1}
    assert d["truncation"] == {"mode": "tbptt", "k1": 3, "k2": 6, "update_every": "auto"}
    assert from_dict(d) == load_config(None, ["task.name=sine", "task.noise=0.1", "truncation.mode=tbptt:3:6"])


def test_dump_round_trip_with_everything_set(tmp_path):
    cfg = load_config(
        None,
        [
            "name=full-house",
            "seed=7",
            "task.name=text",
            "task.length=64",
            "model.activation=relu",
            "model.dtype=float64",
            "truncation.mode=tbptt:4:8",
            "truncation.update_every=sequence",
            "clip.mode=value",
            "clip.threshold=0.25",
            "optimizer.name=rmsprop",
            "optimizer.eps=1e-6",
            "train.target=eval.bpc<=1.5",
            "compare.modes=[full, subsequence:4]",
            "compare.grid={optimizer.lr: [1e-3, 3e-3]}",
        ],
    )
    text = dump_yaml(cfg)
    assert "!!" not in text
    assert load_config(write(tmp_path, text)) == cfg


def test_smoke_shrinks_but_keeps_the_code_paths():
    cfg = load_config(CONFIGS / "text.yaml", ["train.eval_size=1000", "train.batch_size=64"])
    s = smoke(cfg)
    assert (s.train.steps, s.train.batch_size, s.train.eval_size) == (3, 8, 16)
    assert (s.train.eval_every, s.train.diagnostics_every, s.train.checkpoint_every) == (0, 1, 1)
    assert s.task == cfg.task and s.truncation == cfg.truncation and s.model == cfg.model
    tiny = load_config(None, ["train.steps=2", "train.batch_size=4", "train.eval_size=5"])
    assert (smoke(tiny).train.steps, smoke(tiny).train.batch_size, smoke(tiny).train.eval_size) == (2, 4, 5)


def test_smoke_caps_only_huge_lengths():
    long = load_config(None, ["task.name=adding", "task.length=500"])
    assert smoke(long).task.params["length"] == 100
    # A delay that needs the long sequence keeps it rather than making an invalid config.
    needs_it = load_config(None, ["task.delay=150", "task.length=200"])
    assert smoke(needs_it).task.params["length"] == 200


def test_describe_schema_covers_every_field_with_help():
    rows = describe_schema()
    keys = [k for k, _, _ in rows]
    assert len(keys) == len(set(keys))
    for section, fields in to_dict(Config()).items():
        if section == "compare":  # None by default; its fields are checked below
            continue
        if isinstance(fields, dict):
            assert all(f"{section}.{f}" in keys for f in fields)
        else:
            assert section in keys
    assert {"optimizer.momentum", "compare.grid", "truncation.k1"} <= set(keys)
    assert all(help_ for _, _, help_ in rows)
    defaults = {k: d for k, d, _ in rows}
    assert defaults["train.steps"] == 400 and defaults["task.delay"] == 5
    assert ("task.noise" in {k for k, _, _ in describe_schema("sine")})


# -- expectations ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "metric", "op", "bound", "canonical"),
    [
        ("eval.accuracy>=0.9", "eval.accuracy", ">=", 0.9, "eval.accuracy>=0.9"),
        (" train.loss < 0.5 ", "train.loss", "<", 0.5, "train.loss<0.5"),
        ("eval.bpc<=1e-1", "eval.bpc", "<=", 0.1, "eval.bpc<=0.1"),
        ("train.grad_norm>-2", "train.grad_norm", ">", -2.0, "train.grad_norm>-2.0"),
        ("eval.accuracy@d=8>=0.75", "eval.accuracy@d=8", ">=", 0.75, "eval.accuracy@d=8>=0.75"),
    ],
)
def test_parse_expectation(text, metric, op, bound, canonical):
    e = parse_expectation(text)
    assert e == Expectation(metric, op, bound)
    assert str(e) == canonical and parse_expectation(str(e)) == e


def test_expectation_check():
    assert parse_expectation("eval.accuracy>=0.9").check(0.9)
    assert not parse_expectation("eval.accuracy>0.9").check(0.9)
    assert parse_expectation("train.loss<=0.5").check(0.5)
    assert not parse_expectation("train.loss<0.5").check(0.5)
    assert not parse_expectation("train.loss<0.5").check(float("nan"))
    e = parse_expectation("eval.accuracy@d=8>=0.75")
    assert (e.stream, e.key) == ("eval", "accuracy@d=8")


@pytest.mark.parametrize(
    ("text", "extra"),
    [
        ("accuracy>=0.9", "must be train.<name> or eval.<name> (e.g. eval.accuracy)"),
        ("test.accuracy>=0.9", "must be train.<name> or eval.<name>"),
        ("eval.accuracy=>0.9", "(did you mean >=?)"),
        ("eval.accuracy==1", "got 'eval.accuracy==1'"),
        ("eval.accuracy>=high", ""),
        ("eval.accuracy", ""),
        ("eval.>=1", ""),
        ("", ""),
    ],
)
def test_bad_expectations_name_the_form(text, extra):
    with pytest.raises(ConfigError) as info:
        parse_expectation(text)
    assert "METRIC OP NUMBER" in str(info.value) and ">=, <=, >, <" in str(info.value)
    assert extra in str(info.value)


def test_bad_target_in_config():
    e = override_error("train.target=accuracy>0.5")
    assert e.path == "train.target" and "METRIC OP NUMBER" in str(e)
