"""The task library: layout, determinism, targets against inputs, chance levels, errors, grammar."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bptt_cli.tasks import REGISTRY, Batch, Task, TaskError, get_task_class, make_task
from bptt_cli.tasks.base import CORPUS_STREAM
from bptt_cli.tasks.grammar import corpus, corpus_bytes, sentences

NAMES = list(REGISTRY)
ONE_HOT = [n for n in NAMES if n not in ("adding", "sine", "influence")]
DTYPES = [np.float32, np.float64]
FAST = settings(max_examples=30, deadline=None)


def tokens(batch: Batch) -> np.ndarray:
    """The symbol index ``(T, B)`` of a one-hot input."""
    return batch.x.argmax(axis=-1)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Text files are cached under the test's own directory, never the user's ~/.cache."""
    monkeypatch.setenv("BPTT_CACHE_DIR", str(tmp_path / "cache"))


def write(tmp_path, text: str, name: str = "corpus.txt"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def random_text(n: int, seed: int = 0) -> str:
    letters = np.array(list("abcdefgh \n"))
    return "".join(letters[np.random.default_rng(seed).integers(len(letters), size=n)])


# -- registry --------------------------------------------------------------------------------


def test_registry_order_and_declarations():
    assert NAMES == ["delay", "adding", "copy_memory", "agreement", "temporal_order", "sine", "influence", "text"]
    for name, cls in REGISTRY.items():
        assert cls.name == name and issubclass(cls, Task)
        assert cls.description and "\n" not in cls.description
        assert cls.loss in ("cross_entropy", "mse")
        assert cls.stateful == (name == "text")
        for p in cls.params:
            assert p.help, f"{name}.{p.name} has no help"
        assert get_task_class(name) is cls


def test_unknown_task_suggests_the_nearest():
    with pytest.raises(TaskError, match=r"unknown task 'dealy' \(did you mean 'delay'\?\); tasks are: delay,") as e:
        make_task("dealy")
    assert e.value.param is None


def test_unknown_parameter_names_it():
    with pytest.raises(ValueError, match=r"'delya'.*did you mean 'delay'") as e:
        make_task("delay", {"delya": 3})
    assert isinstance(e.value, TaskError) and e.value.param == "delya"


@pytest.mark.parametrize("name", NAMES)
def test_describe_and_chance_are_plain_data(name):
    task = make_task(name)
    d = task.describe()
    assert d["name"] == name and d["length"] == task.length
    assert set(d["params"]) == {p.name for p in type(task).params}
    ch = task.chance()
    assert "loss" in ch and all(type(v) is float and math.isfinite(v) for v in ch.values())
    assert ("accuracy" in ch) == (task.loss == "cross_entropy")


def test_defaults_are_small_problems():
    for name in NAMES:
        task = make_task(name)
        assert 10 <= task.length <= 60, (name, task.length)


# -- layout and determinism ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_shapes_dtypes_and_masks(name, dtype):
    task = make_task(name, dtype=dtype)
    T, B = task.length, 3
    for batch in (task.train_batch(0, B), task.eval_batch(B + 2)):
        B_ = batch.x.shape[1]
        assert batch.x.shape == (T, B_, task.n_in) and batch.x.dtype == dtype
        assert batch.mask.shape == (T, B_) and batch.mask.dtype == dtype
        assert set(np.unique(batch.mask)) <= {0.0, 1.0} and batch.mask.sum() > 0
        if task.loss == "cross_entropy":
            assert batch.targets.shape == (T, B_) and batch.targets.dtype == np.int64
            assert batch.targets.min() >= 0 and batch.targets.max() < task.n_out
        else:
            assert batch.targets.shape == (T, B_, task.n_out) and batch.targets.dtype == dtype
        if name in ONE_HOT:
            np.testing.assert_array_equal(batch.x.sum(axis=-1), 1)
    assert task.eval_batch(5).x.shape[1] == 5


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_bytes_and_streams_differ(name):
    a, b = make_task(name, seed=7), make_task(name, seed=7)
    first = a.train_batch(3, 4)
    a.train_batch(1, 4)  # what ran before must not matter
    for x, y in ((first, b.train_batch(3, 4)), (a.eval_batch(6), b.eval_batch(6))):
        for field in ("x", "targets", "mask"):
            assert getattr(x, field).tobytes() == getattr(y, field).tobytes()
    assert not np.array_equal(first.x, a.train_batch(4, 4).x), "steps 3 and 4 gave the same batch"
    assert not np.array_equal(a.eval_batch(4).x, a.train_batch(0, 4).x), "eval equals train"
    assert not np.array_equal(a.eval_batch(4).x, a.train_batch(3, 4).x), "eval equals train"
    assert not np.array_equal(first.x, make_task(name, seed=8).train_batch(3, 4).x), "seed ignored"


@pytest.mark.parametrize("name", NAMES)
def test_dtype_changes_precision_not_data(name):
    b32 = make_task(name, seed=1, dtype=np.float32).train_batch(2, 5)
    b64 = make_task(name, seed=1, dtype=np.float64).train_batch(2, 5)
    np.testing.assert_array_equal(b64.x.astype(np.float32), b32.x)
    np.testing.assert_array_equal(b64.mask, b32.mask)


@FAST
@given(
    name=st.sampled_from([n for n in NAMES if n != "text"]),
    seed=st.integers(0, 2**63 - 1),
    step=st.integers(0, 10**9),
    size=st.integers(1, 6),
)
def test_batches_are_a_pure_function_of_seed_and_step(name, seed, step, size):
    one, two = make_task(name, seed=seed), make_task(name, seed=seed)
    x, y = one.train_batch(step, size), two.train_batch(step, size)
    assert x.x.tobytes() == y.x.tobytes() and x.targets.tobytes() == y.targets.tobytes()
    assert x.mask.tobytes() == y.mask.tobytes()


def test_bad_dtype_and_batch_size():
    with pytest.raises(TaskError, match="dtype") as e:
        make_task("delay", dtype=np.float16)
    assert e.value.param == "dtype"
    for name in NAMES:
        with pytest.raises(TaskError, match="batch size") as e:
            make_task(name).train_batch(0, 0)
        assert e.value.param == "batch_size"


# -- targets against inputs ------------------------------------------------------------------


@FAST
@given(vocab=st.integers(2, 12), length=st.integers(1, 40), data=st.data(), seed=st.integers(0, 1000))
def test_delay_target_is_the_shifted_input(vocab, length, data, seed):
    delay = data.draw(st.integers(0, length - 1))
    task = make_task("delay", {"vocab": vocab, "delay": delay, "length": length}, seed=seed)
    batch = task.train_batch(0, 4)
    s = tokens(batch)
    assert (batch.mask[:delay] == 0).all() and (batch.mask[delay:] == 1).all()
    np.testing.assert_array_equal(batch.targets[delay:], s[: length - delay])
    assert task.n_in == task.n_out == vocab and s.max() < vocab


@pytest.mark.parametrize("dtype", DTYPES)
def test_adding_target_is_the_sum_of_the_marked_values(dtype):
    task = make_task("adding", {"length": 21}, dtype=dtype)
    batch = task.train_batch(5, 400)
    u, marks = batch.x[..., 0], batch.x[..., 1]
    assert ((u >= 0) & (u < 1)).all()
    assert (marks.sum(axis=0) == 2).all()
    assert (marks[: 21 // 2].sum(axis=0) == 1).all() and (marks[21 // 2 :].sum(axis=0) == 1).all()
    np.testing.assert_array_equal(batch.targets[-1, :, 0], (u * marks).sum(axis=0))
    assert (batch.targets[:-1] == 0).all()
    assert (batch.mask[-1] == 1).all() and batch.mask[:-1].sum() == 0


@FAST
@given(n_symbols=st.integers(1, 12), gap=st.integers(0, 30), seed=st.integers(0, 1000))
def test_copy_memory_reproduces_the_first_symbols(n_symbols, gap, seed):
    task = make_task("copy_memory", {"n_symbols": n_symbols, "gap": gap}, seed=seed)
    T, N = task.length, n_symbols
    assert T == gap + 2 * N + 1 and (task.n_in, task.n_out) == (10, 9)
    batch = task.train_batch(0, 5)
    s = tokens(batch)
    assert ((s[:N] >= 1) & (s[:N] <= 8)).all()
    assert (s[N : T - N - 1] == 0).all() and (s[T - N - 1] == 9).all() and (s[T - N :] == 0).all()
    np.testing.assert_array_equal(batch.targets[T - N :], s[:N])
    assert (batch.targets[: T - N] == 0).all() and (batch.mask == 1).all()


@FAST
@given(
    n_classes=st.integers(2, 5),
    n_fillers=st.integers(1, 6),
    distance=st.integers(1, 25),
    data=st.data(),
    seed=st.integers(0, 1000),
)
def test_agreement_target_is_the_first_tokens_class(n_classes, n_fillers, distance, data, seed):
    min_distance = data.draw(st.none() | st.integers(1, distance))
    params = {"n_classes": n_classes, "n_fillers": n_fillers, "distance": distance, "min_distance": min_distance}
    task = make_task("agreement", params, seed=seed)
    T, C, F = task.length, n_classes, n_fillers
    assert T == distance + 2 and (task.n_in, task.n_out) == (C + F + 2, C)
    batch = task.train_batch(1, 64)
    s = tokens(batch)
    is_class = s < C
    assert (is_class.sum(axis=0) == 1).all()
    first = is_class.argmax(axis=0)
    np.testing.assert_array_equal(batch.targets[-1], s[first, np.arange(64)])
    assert (s[-1] == C + F).all(), "the query is the last step"
    pads = (s == C + F + 1).sum(axis=0)
    np.testing.assert_array_equal(pads, first)  # left padding only
    d = T - 2 - pads
    lo = distance if min_distance is None else min_distance
    assert ((d >= lo) & (d <= distance)).all()
    np.testing.assert_array_equal(task.distances(batch), d)
    assert (batch.mask[-1] == 1).all() and batch.mask[:-1].sum() == 0


def test_agreement_reports_accuracy_per_distance():
    task = make_task("agreement", {"distance": 6, "min_distance": 2})
    batch = task.eval_batch(300)
    y = np.eye(2)[batch.targets]  # (T, B, 2) perfect at the query
    d = task.distances(batch)
    y[-1, d == 4] = y[-1, d == 4, ::-1]  # wrong at distance 4 only
    m = task.metrics(y, batch)
    assert {k for k in m if k.startswith("accuracy@")} == {f"accuracy@d={k}" for k in range(2, 7)}
    assert m["accuracy@d=4"] == 0.0 and m["accuracy@d=2"] == 1.0
    assert m["accuracy"] == pytest.approx(1 - (d == 4).mean())
    fixed = make_task("agreement", {"distance": 6})
    fb = fixed.eval_batch(50)
    assert set(fixed.metrics(np.eye(2)[fb.targets], fb)) == {"accuracy"}


@pytest.mark.parametrize("length", [10, 11, 37, 50, 123])
def test_temporal_order_class_matches_the_relevant_symbols(length):
    task = make_task("temporal_order", {"length": length}, seed=3)
    batch = task.train_batch(0, 500)
    s = tokens(batch)
    relevant = s < 2
    assert (relevant.sum(axis=0) == 2).all()
    _, times = np.nonzero(relevant.T)  # sequence-major, so each sequence's pair is in time order
    t1, t2 = times[0::2], times[1::2]
    assert ((t1 >= length // 10) & (t1 < length // 5)).all()
    assert ((t2 >= length // 2) & (t2 < 6 * length // 10)).all()
    cols = np.arange(500)
    np.testing.assert_array_equal(batch.targets[-1], 2 * s[t1, cols] + s[t2, cols])
    assert set(np.unique(batch.targets[-1])) == {0, 1, 2, 3}
    assert (batch.mask[-1] == 1).all() and batch.mask[:-1].sum() == 0
    m = task.metrics(np.eye(4)[batch.targets], batch)
    assert m == {"accuracy": 1.0, "error_rate": 0.0}


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_sine_target_is_the_next_input(noise):
    task = make_task("sine", {"noise": noise, "n_waves": 3, "length": 40}, dtype=np.float64)
    batch = task.train_batch(2, 16)
    np.testing.assert_array_equal(batch.targets[:-1], batch.x[1:])
    assert (batch.mask == 1).all()
    if noise == 0:
        assert np.abs(batch.x).max() <= 1
        # A noise-free sum of 3 sines obeys a linear recurrence of order 6: the last target
        # is predictable from the inputs, so it is the continuation, not fresh noise.
        v = np.concatenate([batch.x[:, :, 0], batch.targets[-1:, :, 0]]).astype(np.float64)  # (T+1, B)
        for col in v.T:
            rows = np.lib.stride_tricks.sliding_window_view(col[:-1], 6)  # (T-5, 6)
            coef = np.linalg.lstsq(rows[:-1], col[6:-1], rcond=None)[0]
            assert abs(rows[-1] @ coef - col[-1]) < 1e-6


def test_text_windows_follow_the_streams(tmp_path):
    text = random_text(3000)
    task = make_task("text", {"path": str(write(tmp_path, text)), "length": 20})
    assert task.vocab == "".join(sorted(set(text))) and task.n_in == task.n_out == len(task.vocab)
    n_train = 3000 - 300
    B, T = 3, 20
    L = n_train // B
    W = (L - 1) // T
    assert task.windows_per_epoch(B) == W
    vocab = np.array(list(task.vocab))
    for step in (0, 1, W - 1, W, 5 * W + 2):
        batch = task.train_batch(step, B)
        i = step % W
        for b in range(B):
            start = b * L + i * T
            assert "".join(vocab[tokens(batch)[:, b]]) == text[start : start + T]
            assert "".join(vocab[batch.targets[:, b]]) == text[start + 1 : start + T + 1]
    # The state carries over: window i ends where window i + 1 begins.
    for step in range(W - 1):
        last, following = task.train_batch(step, B), task.train_batch(step + 1, B)
        np.testing.assert_array_equal(last.targets[-1], tokens(following)[0])
    held_out = text[n_train:]
    ev = task.eval_batch(50)
    for b in range(50):
        window = "".join(vocab[tokens(ev)[:, b]]) + vocab[ev.targets[-1, b]]
        assert window in held_out
        assert "".join(vocab[ev.targets[:, b]]) == window[1:]


def test_text_reads_utf8(tmp_path):
    text = "héllo wörld ✓ naïve café\n" * 40
    task = make_task("text", {"path": str(write(tmp_path, text)), "length": 10})
    assert task.vocab == "".join(sorted(set(text)))
    batch = task.train_batch(0, 2)
    vocab = np.array(list(task.vocab))
    assert "".join(vocab[tokens(batch)[:, 0]]) == text[:10]


def test_text_bpc_metric():
    task = make_task("text", {"length": 20})
    batch = task.eval_batch(8)
    uniform = np.zeros(batch.x.shape[:2] + (task.n_out,))
    assert task.metrics(uniform, batch)["bpc"] == pytest.approx(math.log2(task.n_out))
    perfect = 50.0 * np.eye(task.n_out)[batch.targets]
    m = task.metrics(perfect, batch)
    assert m["accuracy"] == 1.0 and m["bpc"] < 1e-12


# -- chance levels ---------------------------------------------------------------------------


def empirical_ce_chance(batch: Batch, n_out: int) -> tuple[float, float]:
    """Loss and accuracy of the best input-blind predictor fitted to the sample: the class
    frequencies at each step, over supervised entries."""
    T = batch.targets.shape[0]
    sel = batch.mask > 0
    t = np.broadcast_to(np.arange(T)[:, None], sel.shape)[sel]
    c = batch.targets[sel]
    counts = np.bincount(t * n_out + c, minlength=T * n_out).reshape(T, n_out)
    p = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    return float(-np.log(p[t, c]).mean()), float(counts.max(axis=1).sum() / sel.sum())


def empirical_mse_chance(batch: Batch) -> float:
    """0.5 * squared error of the per-step mean of the targets, over supervised entries."""
    sel = batch.mask > 0
    y = batch.targets.astype(np.float64)
    mean = (y * sel[..., None]).sum(axis=1) / np.maximum(sel.sum(axis=1), 1)[:, None]  # (T, O)
    return float(0.5 * ((y - mean[:, None]) ** 2).sum(axis=-1)[sel].mean())


CHANCE_CASES = [
    ("delay", {}),
    ("delay", {"vocab": 3, "delay": 2, "length": 10}),
    ("adding", {}),
    ("copy_memory", {}),
    ("copy_memory", {"n_symbols": 4, "gap": 0}),
    ("agreement", {}),
    ("agreement", {"n_classes": 5, "distance": 10, "min_distance": 3}),
    ("temporal_order", {}),
    ("sine", {}),
    ("sine", {"n_waves": 3, "noise": 0.3}),
]


@pytest.mark.parametrize(("name", "params"), CHANCE_CASES)
def test_chance_matches_a_large_sample(name, params):
    task = make_task(name, params, seed=11, dtype=np.float64)
    batch = task.train_batch(0, 20_000)
    ch = task.chance()
    if task.loss == "cross_entropy":
        loss, acc = empirical_ce_chance(batch, task.n_out)
        assert loss == pytest.approx(ch["loss"], rel=0.01, abs=1e-3)
        assert acc == pytest.approx(ch["accuracy"], abs=0.01)
    else:
        assert empirical_mse_chance(batch) == pytest.approx(ch["loss"], rel=0.03)


def test_stated_chance_values():
    assert make_task("adding").chance()["loss"] == pytest.approx(1 / 12)
    assert make_task("copy_memory").chance()["loss"] == pytest.approx(10 * math.log(8) / 31)
    assert make_task("sine").chance()["loss"] == pytest.approx(0.125)
    assert make_task("temporal_order").chance()["error_rate"] == 0.75


def test_text_chance_is_the_unigram_entropy(tmp_path):
    task = make_task("text", {"path": str(write(tmp_path, "aab" * 1000)), "length": 10})
    h = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))  # the training 90% is "aab" * 900
    ch = task.chance()
    assert ch["loss"] == pytest.approx(h) and ch["bpc"] == pytest.approx(h / math.log(2))
    assert ch["accuracy"] == pytest.approx(2 / 3)


def test_text_chance_matches_the_training_targets():
    task = make_task("text", {"length": 50})
    targets = np.concatenate([task.train_batch(i, 1).targets[:, 0] for i in range(task.windows_per_epoch(1))])
    p = np.bincount(targets) / len(targets)
    p = p[p > 0]
    ch = task.chance()
    assert -(p * np.log(p)).sum() == pytest.approx(ch["loss"], rel=1e-3)
    assert p.max() == pytest.approx(ch["accuracy"], abs=1e-3)


# -- bad parameters --------------------------------------------------------------------------

BAD = [
    ("delay", {"delay": -1}, "delay"),
    ("delay", {"delay": 30, "length": 30}, "delay"),
    ("delay", {"vocab": 1}, "vocab"),
    ("delay", {"vocab": 2.5}, "vocab"),
    ("delay", {"vocab": "8"}, "vocab"),
    ("delay", {"vocab": None}, "vocab"),
    ("adding", {"length": 3}, "length"),
    ("copy_memory", {"gap": -1}, "gap"),
    ("copy_memory", {"n_symbols": 0}, "n_symbols"),
    ("agreement", {"n_classes": 1}, "n_classes"),
    ("agreement", {"distance": 0}, "distance"),
    ("agreement", {"distance": 5, "min_distance": 6}, "min_distance"),
    ("temporal_order", {"length": 9}, "length"),
    ("sine", {"noise": -0.1}, "noise"),
    ("sine", {"max_freq": 0.6}, "max_freq"),
    ("sine", {"min_freq": 0.3, "max_freq": 0.1}, "min_freq"),
    ("sine", {"noise": float("nan")}, "noise"),
    ("text", {"length": 0}, "length"),
    ("text", {"eval_fraction": 0.9}, "eval_fraction"),
    ("text", {"depth": -1}, "depth"),
    ("text", {"n_sentences": 1}, "n_sentences"),  # too short for one window
    ("text", {"path": 3}, "path"),
    # sizes that would exhaust memory or time before the first step (issue 13)
    ("delay", {"length": 10**7}, "length"),
    ("delay", {"delay": 10**7}, "delay"),  # must be < length
    ("delay", {"vocab": 10**6}, "vocab"),
    ("adding", {"length": 1e7}, "length"),
    ("copy_memory", {"gap": 10**7}, "gap"),
    ("copy_memory", {"n_symbols": 10**5}, "n_symbols"),
    ("agreement", {"distance": 10**7}, "distance"),
    ("agreement", {"n_fillers": 10**6}, "n_fillers"),
    ("temporal_order", {"length": 10**7}, "length"),
    ("sine", {"n_waves": 10**6}, "n_waves"),
    ("sine", {"noise": 1e300}, "noise"),
    ("text", {"n_sentences": 10**9}, "n_sentences"),
    ("text", {"length": 10**7}, "length"),
]


def test_every_numeric_parameter_has_an_upper_bound_and_says_it():
    for name, cls in REGISTRY.items():
        for p in cls.params:
            if p.kind in (int, float):
                assert p.high is not None, f"{name}.{p.name} has no upper bound"
    with pytest.raises(TaskError) as e:
        make_task("text", {"n_sentences": 10**9})
    assert str(e.value) == "task 'text' parameter 'n_sentences' is 1000000000; allowed: 1 <= n_sentences <= 200000"


@pytest.mark.parametrize(("name", "params", "param"), BAD)
def test_bad_parameters_name_the_parameter(name, params, param):
    with pytest.raises(ValueError) as e:
        make_task(name, params)
    assert isinstance(e.value, TaskError) and e.value.param == param
    assert repr(param) in str(e.value)


def text_error(path, **params) -> TaskError:
    with pytest.raises(TaskError) as e:
        make_task("text", {"path": str(path), **params})
    assert e.value.param == "path" and "'path'" in str(e.value) and str(path) in str(e.value)
    return e.value


def test_text_file_errors_name_the_file(tmp_path):
    assert "does not exist" in str(text_error(tmp_path / "missing.txt"))
    assert "is a directory" in str(text_error(tmp_path))
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    assert "is empty" in str(text_error(empty))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\u00e9 ".encode("latin-1") * 100)
    assert "not UTF-8" in str(text_error(latin1))
    short = write(tmp_path, "x" * 80, "short.txt")
    assert "length + 1 = 51" in str(text_error(short))


def test_text_too_short_for_the_batch_size(tmp_path):
    path = write(tmp_path, random_text(1000))
    task = make_task("text", {"path": str(path), "length": 50})
    task.train_batch(0, 17)  # 900 // 17 = 52 characters per stream: one window fits
    with pytest.raises(TaskError, match="18 streams") as e:
        task.train_batch(0, 18)
    assert e.value.param == "path" and str(path) in str(e.value)


# -- the generated corpus --------------------------------------------------------------------

SG_NOUNS = {"dog", "cat", "bird", "fox", "horse", "teacher", "child", "mouse"}
PL_NOUNS = {"dogs", "cats", "birds", "foxes", "horses", "teachers", "children", "mice"}
SG_TRANSITIVE = {"chases", "sees", "likes", "follows", "feeds", "watches"}
PL_TRANSITIVE = {"chase", "see", "like", "follow", "feed", "watch"}
SG_INTRANSITIVE = {"runs", "sleeps", "waits", "sings", "falls"}
PL_INTRANSITIVE = {"run", "sleep", "wait", "sing", "fall"}


class Parser:
    """Recursive descent over S -> NP VP "." with relative clauses; asserts every agreement."""

    def __init__(self, line: str) -> None:
        self.line, self.words, self.i, self.depth = line, line.split(" "), 0, 0

    def take(self) -> str:
        assert self.i < len(self.words), f"sentence ends early: {self.line!r}"
        self.i += 1
        return self.words[self.i - 1]

    def peek(self) -> str | None:
        return self.words[self.i] if self.i < len(self.words) else None

    def number(self, word: str, sg: set[str], pl: set[str]) -> str:
        assert word in sg | pl, f"unexpected {word!r} in {self.line!r}"
        return "sg" if word in sg else "pl"

    def verb_agrees(self, verb: str, subject: str, sg: set[str], pl: set[str]) -> None:
        assert self.number(verb, sg, pl) == subject, f"{verb!r} needs a {subject} subject: {self.line!r}"

    def noun_phrase(self, level: int) -> str:
        assert self.take() == "the", self.line
        n = self.number(self.take(), SG_NOUNS, PL_NOUNS)
        if self.peek() == "that":
            self.take()
            self.depth = max(self.depth, level + 1)
            if self.peek() in SG_TRANSITIVE | PL_TRANSITIVE:  # that chases NP
                self.verb_agrees(self.take(), n, SG_TRANSITIVE, PL_TRANSITIVE)
                self.noun_phrase(level + 1)
            else:  # that NP chase
                inner = self.noun_phrase(level + 1)
                self.verb_agrees(self.take(), inner, SG_TRANSITIVE, PL_TRANSITIVE)
        return n

    def sentence(self) -> int:
        n = self.noun_phrase(0)
        verb = self.take()
        if verb in SG_INTRANSITIVE | PL_INTRANSITIVE:
            self.verb_agrees(verb, n, SG_INTRANSITIVE, PL_INTRANSITIVE)
        else:
            self.verb_agrees(verb, n, SG_TRANSITIVE, PL_TRANSITIVE)
            assert self.take() == "the", self.line
            self.number(self.take(), SG_NOUNS, PL_NOUNS)
        assert self.take() == "." and self.peek() is None, self.line
        return self.depth


@pytest.mark.parametrize("depth", [0, 1, 3])
def test_grammar_agreement_holds_in_every_sentence(depth):
    lines = sentences(np.random.default_rng(5), 2000, depth)
    depths = [Parser(line).sentence() for line in lines]
    assert max(depths) == depth
    if depth:
        # Both kinds of relative clause occur, so agreement was checked across embedded subjects.
        assert any(" that the " in line for line in lines)
        assert any(" that " in line and " that the " not in line for line in lines)


def test_grammar_same_seed_same_text():
    a = corpus(np.random.default_rng([4, 2]), 300, 2)
    assert a == corpus(np.random.default_rng([4, 2]), 300, 2)
    assert a != corpus(np.random.default_rng([5, 2]), 300, 2)
    assert a.endswith(" .\n") and len(a.splitlines()) == 300


def test_text_task_uses_the_grammar_corpus():
    task = make_task("text", seed=4)
    text = task.decode()
    assert text == corpus(np.random.default_rng([4, CORPUS_STREAM]), 2000, 2)
    assert text == make_task("text", seed=4).decode()
    assert text != make_task("text", seed=5).decode()
    deeper = make_task("text", {"depth": 3, "n_sentences": 500})
    assert deeper.decode() != make_task("text", {"n_sentences": 500}).decode()
    assert Counter(text)["\n"] == 2000
    for line in text.splitlines():
        Parser(line).sentence()
    assert task.vocab == "".join(sorted(set(text)))


@pytest.mark.parametrize(("n", "batch"), [(1, 1), (25, 10), (30, 10), (31, 7)])
def test_grammar_corpus_bytes_are_the_corpus_drawn_in_batches(n, batch):
    rng = lambda: np.random.default_rng([9, 2])  # noqa: E731
    assert corpus_bytes(rng(), n, 3, batch=batch) == corpus(rng(), n, 3).encode("utf-8")
