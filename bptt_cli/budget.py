"""Will a config fit this machine? Memory and work, estimated before a run directory exists.

A config can be valid key by key and still be hopeless: ``model.hidden: 1000000`` asks for
a 4 TB W_hh, ``train.eval_size: 1000000000`` for a held-out set of a billion sequences.
Without this check such a run creates its directory, then dies with a bare MemoryError (or
the kernel kills it). ``check_budget`` adds up what a run holds at its peak and refuses, with
one message naming the key to lower, a config that cannot fit the memory available now:

    check_budget(cfg)              # the task's shape from its parameters (cheap)
    check_budget(cfg, task)        # the exact shape of a task already built

What is counted (s bytes per element of ``model.dtype``; T time, B batch, E eval_size,
I input, O output, H hidden, W the truncation window, P the parameter count):

    weights        P = H (I + H + 1) + O (H + 1): parameters, gradients, the clipped copy and the
                   optimizer's state (adam 2P, rmsprop and adagrad P, sgd with momentum P);
                   a gated cell (G = 3 gates for gru, 4 for lstm): P = G H (I + H + 2) + O (H + 1)
    training batch x (T, B, I), targets and mask (T, B), h_t (T+1, B, H), outputs and their
                   adjoints 2 (T, B, O), softmax work (T, B, O); the lag sweep of an overlapping
                   window (k_truncated, tbptt K2 > K1) 3 (W, B, H) more; diagnostics a second pass.
                   A gated cell keeps per step its G gates, its state (h, and c for lstm) and one
                   more (B, H) (tanh c or W_hn h): (G + S + 1) (T, B, H) with S = 1 or 2; its lag
                   sweep 10 (T, B, H), its diagnostics' float64 lag profile 15 + G + S more
    held-out set   x (T, E, I), targets and mask (T, E), its forward pass (2T+1, E, H) and
                   (T, E, O), and the loss work (T, E, O); a gated cell's (G + S) (T, E, H) more
    corpus (text)  the ids (N,), at least a byte per character (memory-mapped from the corpus
                   cache, or in memory when there is no cache), and for the generated corpus its
                   bytes too; the reading itself is streamed in chunks of a MB

The estimate counts the large arrays only, so it is rough: against the peak RSS of two-step
runs it came within -35% .. +5% (eval_size 40,000: 755 MB estimated, 739 MB measured; hidden
2048: 222 MB vs 338 MB, the rest being initialisation temporaries and BLAS buffers). Where it
must guess (the vocabulary of a text file not read yet) it guesses low. It is meant to stop
configs that are off by orders of magnitude, before anything is written: a run is refused
when it needs more than ``HEADROOM`` of the memory available (``MemAvailable`` in
/proc/meminfo, lowered to a cgroup's limit, else ``os.sysconf``).

Work: counts are bounded by the schema (``train.steps <= 1e9``); here only what needs the
task's shape is checked: ``train.log_every`` larger than the run's number of updates would
write no metric line at all.

This module reads the config and builds tasks; it imports no CLI library. ``cli.py`` calls
``check_budget`` in ``validate``, ``train`` and ``gradcheck``; compare's planning calls it
for every variant.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from bptt_cli.config import Config, ConfigError
from bptt_cli.core.truncation import parse
from bptt_cli.tasks import Task, get_task_class, make_task

GATES = {"gru": 3, "lstm": 4}  # gates per unit of the gated cells (core/gated.py's GATES)
HEADROOM = 0.8  # refuse a run that needs more than this share of the available memory
FILE_BYTES_PER_CHAR = 1  # the uint8 ids of a text file (uint16 past 256 characters: errs low)
GENERATED_BYTES_PER_CHAR = 3  # the generated text's bytes, its ids and a copy while encoding
GENERATED_CHARS_PER_SENTENCE = 20  # the grammar's shortest sentences (depth 0 averages 23)
GENERATED_VOCAB = 20  # the grammar uses 24 characters
FILE_VOCAB_GUESS = 32  # a text file not read yet: a low guess, so nothing is refused on it
_OPTIMIZER_STATE = {"adam": 2, "rmsprop": 1, "adagrad": 1}  # arrays of P per parameter set
_TYPICAL = {"model.hidden": 64, "train.batch_size": 32, "train.eval_size": 256}  # for blame


@dataclass(frozen=True)
class Shape:
    """What memory depends on in a task: T, I, O, the loss, and a text corpus's characters."""

    T: int
    I: int
    O: int
    mse: bool  # targets are (T, B, O) floats instead of (T, B) class indices
    chars: int = 0  # characters of the text corpus (0 for the synthetic tasks)


@dataclass(frozen=True)
class Need:
    """One part of a run's memory: what it is, its bytes, its shapes, and the keys it grows with."""

    what: str
    bytes: int
    detail: str
    keys: tuple[str, ...]


def task_shape(cfg: Config, task: Task | None = None) -> Shape:
    """The shape of ``cfg``'s task: from ``task`` when given, else from its parameters.

    Every task but text is cheap to build (its data are drawn batch by batch), so it is built
    here; the text task would read or generate its corpus, so its shape is estimated from the
    file's size or the number of sentences, with a low guess for the vocabulary.
    """
    name, p = cfg.task.name, cfg.task.params
    mse = get_task_class(name).loss == "mse"
    if task is None and name != "text":
        task = make_task(name, p, seed=cfg.seed, dtype=cfg.model.dtype)
    if task is not None:
        chars = 0
        if name == "text":
            corpus = getattr(task, "corpus", None)
            chars = len(corpus.ids) if corpus is not None else len(getattr(task, "text", ""))
        return Shape(int(task.length), int(task.n_in), int(task.n_out), mse, chars)
    if p.get("path") is None:
        chars = int(p.get("n_sentences", 0)) * GENERATED_CHARS_PER_SENTENCE
        vocab = GENERATED_VOCAB
    else:
        try:
            st = os.stat(Path(p["path"]))
            chars = st.st_size if Path(p["path"]).is_file() else 0  # a FIFO or device: the task refuses it
        except (OSError, ValueError):
            chars = 0  # missing or unreadable: the task says so when it is built
        vocab = min(max(chars, 1), FILE_VOCAB_GUESS)
    return Shape(int(p["length"]), vocab, vocab, mse, chars)


def updates_per_step(cfg: Config, T: int) -> int:
    """Optimizer updates per training step: 1, or the number of chunks under ``update_every: chunk``."""
    if cfg.truncation.update != "chunk":
        return 1
    return math.ceil(T / parse(cfg.truncation.spec).chunk_length(T))


def estimate(cfg: Config, task: Task | None = None, shape: Shape | None = None) -> list[Need]:
    """The parts of a run's peak memory, largest first (see the module docstring)."""
    sh = shape or task_shape(cfg, task)
    T, I, O = sh.T, sh.I, sh.O
    H, B, E = cfg.model.hidden, cfg.train.batch_size, cfg.train.eval_size
    s = 8 if cfg.model.dtype == "float64" else 4
    length_keys = tuple(f"task.{k}" for k, v in cfg.task.params.items() if isinstance(v, int) and not isinstance(v, bool))

    cell = cfg.model.cell
    G = GATES.get(cell, 1)  # elman: 1
    S = 2 if cell == "lstm" else 1  # the state: h, or (h, c)
    P = H * (I + H + 1) + O * (H + 1) if cell == "elman" else G * H * (I + H + 2) + O * (H + 1)
    opt = cfg.optimizer
    state = _OPTIMIZER_STATE.get(opt.name, 1 if (opt.momentum or 0) > 0 else 0)
    needs = [
        Need(
            "the weights",
            (3 + state) * P * s,
            f"{P:,} parameters with their gradients, the clipped copy and {opt.name}'s state; "
            f"W_hh (H, H) = ({H}, {H}) is {fmt_bytes(H * H * s)}"
            if cell == "elman"
            else f"weight_hh (G·H, H) = ({G * H}, {H}) is {fmt_bytes(G * H * H * s)}",
            ("model.hidden", *length_keys),
        )
    ]

    targets = T * B * (O * s if sh.mse else 8)
    batch = (T * B * I + T * B + (T + 1) * B * H + 3 * T * B * O) * s + targets
    tr = parse(cfg.truncation.spec)
    if tr.random or tr.adaptive is not None:  # windows drawn or adapted while training: the widest
        C, W = (T, T) if tr.mode == "artbp" else (1, T)  # artbp: one cut chain; random_k, adaptive: a lag sweep
    else:
        C, W = tr.chunk_and_window(T)
    if cell != "elman":  # the gates, the state's c and tanh(c) or W_hn h, per step
        batch += (G + S) * T * B * H * s
        if W > C:  # the gated lag sweep's buffers span the sequence
            batch += 10 * T * B * H * s
        if cfg.train.diagnostics_every:
            batch += (15 + G + S) * T * B * H * 8  # the lag profile runs in float64
    elif W > C:  # overlapping windows: the lag sweep's chain buffers
        batch += 3 * min(W, T) * B * H * s + 3 * (4 << 20)
    if cfg.train.diagnostics_every and cell == "elman":
        batch *= 2
    needs.append(
        Need(
            "a training batch",
            batch,
            f"x (T, B, I) = ({T}, {B}, {I}), h_t (T+1, B, H) = ({T + 1}, {B}, {H}), outputs (T, B, O) = ({T}, {B}, {O})"
            + ("" if cell == "elman" else f", {cell} gates (T, B, G·H) = ({T}, {B}, {G * H})"),
            ("train.batch_size", "model.hidden", *length_keys),
        )
    )

    held = (T * E * I + T * E + (2 * T + 1) * E * H + 2 * T * E * O) * s + T * E * (O * s if sh.mse else 8)
    if cell != "elman":  # its forward pass keeps the gates and the whole state too
        held += (G + S) * T * E * H * s
    needs.append(
        Need(
            "the held-out set",
            held,
            f"x (T, E, I) = ({T}, {E}, {I}) and its forward pass h_t (T+1, E, H) = ({T + 1}, {E}, {H})",
            ("train.eval_size", "model.hidden", *length_keys),
        )
    )

    if sh.chars:
        generated = cfg.task.params.get("path") is None
        key = "task.n_sentences" if generated else "task.path"
        per_char = GENERATED_BYTES_PER_CHAR if generated else FILE_BYTES_PER_CHAR
        needs.append(Need("the text corpus", per_char * sh.chars, f"{sh.chars:,} characters", (key,)))
    return sorted(needs, key=lambda n: -n.bytes)


def available_memory() -> int | None:
    """Bytes this process could allocate now: MemAvailable, lowered to the room left under a
    cgroup's limit (a container's); ``os.sysconf`` where neither is readable; None if unknown."""
    found: list[int] = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
                    break
    except (OSError, ValueError, IndexError):
        pass
    room = _cgroup_room()
    if room is not None:
        found.append(room)
    if not found:
        try:
            found.append(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (OSError, ValueError, AttributeError):
            return None
    return min(found)


_CGROUPS = (  # (limit, usage, memory.stat key of reclaimable page cache): v2, then v1
    ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current", "/sys/fs/cgroup/memory.stat", "inactive_file"),
    (
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
        "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        "/sys/fs/cgroup/memory/memory.stat",
        "total_inactive_file",
    ),
)


def _cgroup_room() -> int | None:
    """limit - (usage - inactive page cache) of this cgroup, or None without a limit. The cache
    counts as usage but the kernel drops it under pressure, as MemAvailable assumes too."""
    for limit_file, usage_file, stat_file, cache_key in _CGROUPS:
        try:
            text = Path(limit_file).read_text(encoding="ascii").strip()
            if text == "max" or int(text) >= 1 << 60:  # no limit (v1 writes a huge number)
                return None
            usage = int(Path(usage_file).read_text(encoding="ascii").strip())
        except (OSError, ValueError):
            continue
        cache = 0
        try:
            for line in Path(stat_file).read_text(encoding="ascii").splitlines():
                key, _, value = line.partition(" ")
                if key == cache_key:
                    cache = int(value)
                    break
        except (OSError, ValueError):
            pass
        return max(0, int(text) - max(0, usage - cache))
    return None


def fmt_bytes(n: float) -> str:
    """1536 -> '1.5 KB'; decimal units, two significant digits or more."""
    for unit in ("bytes", "KB", "MB", "GB", "TB", "PB", "EB"):
        if n < 1000 or unit == "EB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.3g} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _blame(cfg: Config, need: Need) -> str:
    """The key of ``need`` furthest above its usual value (hidden 64, batch 32, a task's default)."""
    params, task_cls = cfg.task.params, get_task_class(cfg.task.name)
    defaults = {f"task.{p.name}": p.default for p in task_cls.params}

    def ratio(key: str) -> float:
        if key.startswith("task."):
            value, usual = params.get(key[5:]), defaults.get(key)
        else:
            section, field = key.split(".")
            value, usual = getattr(getattr(cfg, section), field), _TYPICAL.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return 0.0
        if not isinstance(usual, (int, float)) or isinstance(usual, bool) or usual <= 0:
            usual = 1
        return value / usual

    return max(need.keys, key=ratio)


def _value(cfg: Config, key: str):
    if key.startswith("task."):
        return cfg.task.params.get(key[5:])
    section, field = key.split(".")
    return getattr(getattr(cfg, section), field)


def check_budget(cfg: Config, task: Task | None = None, *, available: int | None = None) -> None:
    """Refuse, with a ConfigError naming the key to lower, a config this machine cannot run.

    ``task`` is the config's task when the caller has built it (exact shapes); without it the
    shapes come from the task's parameters (see ``task_shape``). ``available`` overrides the
    memory measured now (tests). Checks, in order: ``train.log_every`` against the run's
    updates, then the estimated peak memory against ``HEADROOM`` of what is available.
    Call it before creating a run directory: nothing is written when it refuses.
    """
    sh = task_shape(cfg, task)
    updates = cfg.train.steps * updates_per_step(cfg, sh.T)
    if cfg.train.log_every > updates:
        raise ConfigError(
            f"{cfg.train.log_every} is more than the {updates:,} updates of this run, so no metrics line "
            f"would be written; use at most {updates:,} (1 logs every update)",
            "train.log_every",
        )
    needs = estimate(cfg, shape=sh)
    total = sum(n.bytes for n in needs)
    room = available_memory() if available is None else available
    if room is None or total <= HEADROOM * room:
        return
    top = needs[0]
    key = _blame(cfg, top)
    raise ConfigError(
        f"{_value(cfg, key)} makes the run need about {fmt_bytes(total)} of memory, more than this machine "
        f"can spare ({HEADROOM:.0%} of the {fmt_bytes(room)} available now); of that, {top.what}: "
        f"{fmt_bytes(top.bytes)} ({top.detail}); lower {key}",
        key,
    )
