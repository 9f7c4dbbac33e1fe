"""Planning a compare: variants (modes x grid points x seeds) and the compare directory.

Fairness: variants of the same seed share the seed, hence the same training batches, the
same evaluation set and the same initial weights; only the mode (and grid values) differ.
With ``budget="sequences"`` each variant trains on the same number of sequences (chunk-update
modes then make more updates); with ``budget="updates"`` each makes the same number of updates.
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import stat
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from bptt_cli import config as cfgmod
from bptt_cli import runs
from bptt_cli.config.schema import grid_key_parts
from bptt_cli.core.errors import BpttError
from bptt_cli.core.truncation import parse as parse_truncation

DONE = ("completed", "diverged")  # a variant with one of these statuses is not run again
# Planning is bounded before anything is built or written: 10,000 variants take seconds to
# plan and validate, and their plan.json (about 1 KB a variant) stays far below PLAN_LIMIT.
MAX_VARIANTS = 10_000
PLAN_LIMIT = 32_000_000  # bytes of plan.json read back (a plan of MAX_VARIANTS is ~10-15 MB)
SUMMARY_LIMIT = 1_000_000  # bytes of a variant's summary.json read back
SAFE_ID = re.compile(r"[A-Za-z0-9._=+-]{1,255}")  # what _variant_id produces; "." and ".." excluded apart


class CompareError(BpttError, ValueError):
    """A bad --modes, --seeds, --grid or compare directory."""


@dataclass(frozen=True)
class Variant:
    id: str  # also the variant's directory name
    mode: str
    grid: dict[str, Any]
    seed: int
    config: dict  # the resolved config of this variant

    @property
    def group(self) -> str:
        """The aggregation key: mode and grid point (seeds are aggregated)."""
        return " ".join([self.mode, *(f"{k}={_text(v)}" for k, v in self.grid.items())])


def _text(v: Any) -> str:
    return "none" if v is None else str(v)


# -- parsing the command line -------------------------------------------------------------
def parse_modes(text: str) -> list[str]:
    specs = [s.strip() for s in text.split(",") if s.strip()]
    if not specs:
        raise CompareError("--modes needs a comma-separated list such as full,k_truncated:5,subsequence:10")
    out = []
    for s in specs:
        try:
            canon = str(parse_truncation(s))
        except ValueError as e:
            raise CompareError(f"--modes: {e}") from None
        if canon not in out:
            out.append(canon)
    return out


def parse_seeds(text: str, base: int) -> list[int]:
    """``3`` -> three seeds from ``base`` on; ``3,7,11`` -> those seeds."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        nums = [int(p) for p in parts]
    except ValueError:
        raise CompareError(f"--seeds takes a count (3) or a list of seeds (3,7,11), got {text!r}") from None
    if len(nums) == 1 and "," not in text:
        if nums[0] < 1:
            raise CompareError(f"--seeds {nums[0]}: a count must be >= 1; to name a single seed, add a comma: --seeds {nums[0]},")
        _check_count(nums[0], f"--seeds {nums[0]}")
        return list(range(base, base + nums[0]))
    if not nums or any(n < 0 for n in nums) or len(set(nums)) != len(nums):
        raise CompareError(f"--seeds list must hold distinct seeds >= 0, got {text!r}")
    return nums


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``--grid`` options (repeatable) -> the grid, in the config's ``compare.grid`` form.

    ``clip.threshold=1,5,none`` -> {"clip.threshold": [1, 5, None]}: one key, crossed with
    the other grid keys. ``model.cell,model.hidden=elman:67,gru:36`` ->
    {"model.cell,model.hidden": [["elman", 67], ["gru", 36]]}: keys that vary together, one
    value of each per grid point (``:`` between a point's values, ``,`` between points).
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise CompareError(
                "--grid expects KEY=V1,V2,... with a dotted key, e.g. clip.threshold=1,5,none "
                f"(keys that vary together: KEY1,KEY2=A1:B1,A2:B2, e.g. model.cell,model.hidden=elman:67,gru:36); got {item!r}"
            )
        keys = grid_keys(key, grid)
        parsed = []
        for v in values.split(","):
            parts = v.split(":") if len(keys) > 1 else [v]
            if len(parts) != len(keys):
                raise CompareError(_length_error(key, keys, v.strip(), len(parts)))
            point = [cfgmod.apply_overrides({}, [f"x={part.strip()}"])["x"] for part in parts]
            parsed.append(point if len(keys) > 1 else point[0])
        grid[",".join(keys)] = parsed
    return grid


def grid_keys(key: str, grid: dict[str, Any] | None = None) -> list[str]:
    """The dotted keys of a grid entry (``a.b`` or ``a.b,c.d`` varied together), checked:
    each a key of its own, named once, in no other entry of ``grid``."""
    keys = grid_key_parts(key)
    if len(keys) > 1 and (not all(keys) or len(set(keys)) != len(keys)):
        raise CompareError(f"--grid {key}: keys that vary together are distinct dotted keys joined by commas, e.g. model.cell,model.hidden")
    for k in keys:
        check_grid_key(k)
        for other in grid or {}:
            if k in grid_key_parts(other):
                if grid_key_parts(other) == keys:
                    raise CompareError(f"--grid {key} is given twice; list all its values once: --grid {key}=V1,V2,...")
                raise CompareError(f"--grid {k} is varied twice (in {key} and in {other}); each key goes in one --grid")
    return keys


def _length_error(key: str, keys: list[str], point: str, n: int) -> str:
    return (
        f"--grid {key}: the point {point!r} has {n} value{'s' * (n != 1)}; each point gives one value "
        f"for each of the {len(keys)} keys, as {':'.join(keys)}"
    )


def check_grid_key(key: str) -> None:
    """Keys that variants are already made of have options of their own."""
    own = {"seed": "--seeds", "truncation": "--modes", "compare": None, "name": None}
    head = key.split(".", 1)[0]
    if head in own:
        where = f"use {own[head]} instead" if own[head] else "it is not a setting of a run"
        raise CompareError(f"--grid cannot vary {key}: {where}")


# -- planning -----------------------------------------------------------------------------
def plan(
    base: cfgmod.Config,
    *,
    modes: list[str] | None = None,
    seeds: list[int] | None = None,
    grid: dict[str, list[Any]] | None = None,
    budget: str = "sequences",
) -> list[Variant]:
    """The variants, in a stable order: mode, then grid point, then seed.

    Options given here override the config's ``compare:`` section. Every variant's config
    is validated now, so a bad grid value fails before anything runs.
    """
    section = base.compare
    if modes is None:
        modes = section.modes if section and section.modes else default_modes(base)
    if seeds is None:
        s = section.seeds if section else None
        if isinstance(s, int):
            _check_count(s, f"compare.seeds {s}")
        seeds = list(range(base.seed, base.seed + s)) if isinstance(s, int) else list(s or [base.seed])
    if grid is None:
        grid = dict(section.grid) if section and section.grid else {}
    if budget not in ("sequences", "updates"):
        raise CompareError(f"--budget must be sequences or updates, got {budget!r}")
    n = len(modes) * len(seeds) * math.prod(len(values) for values in grid.values())
    _check_count(n, f"{len(modes)} modes x {len(seeds)} seeds" + "".join(f" x {len(v)} {k} {'points' if ',' in k else 'values'}" for k, v in grid.items()))
    points: list[dict[str, Any]] = [{}]
    checked: dict[str, Any] = {}
    for key, values in grid.items():
        keys = grid_keys(key, checked)
        checked[key] = values
        if not isinstance(values, (list, tuple)) or not values:
            raise CompareError(f"--grid {key} has no values; list at least one")
        if len(keys) > 1:
            for v in values:
                if not isinstance(v, (list, tuple)) or len(v) != len(keys):
                    many = isinstance(v, (list, tuple))
                    raise CompareError(_length_error(key, keys, ":".join(map(_text, v)) if many else _text(v), len(v) if many else 1))
        tuples = [list(v) if len(keys) > 1 else [v] for v in values]
        repeated = sorted({":".join(map(_text, t)) for t in tuples if tuples.count(t) > 1})
        if repeated:
            raise CompareError(f"--grid {key} lists {', '.join(repeated)} more than once; each value makes one variant")
        points = [{**p, **dict(zip(keys, t))} for p in points for t in tuples]

    data = cfgmod.to_dict(base)
    data.pop("compare", None)
    variants = []
    for mode in modes:
        for point in points:
            for seed in seeds:
                overrides = [f"truncation.mode={mode}", "truncation.update_every=auto", f"seed={seed}"]
                overrides += [f"{k}={_yaml_value(v)}" for k, v in point.items()]
                where = " ".join(["variant", mode, *([str(point)] if point else []), f"seed {seed}"])
                try:
                    cfg = cfgmod.from_dict(data, overrides, source="compare variant")
                except cfgmod.ConfigError as e:
                    raise CompareError(f"{where}: {e}") from None
                if budget == "updates":
                    cfg = _equal_updates(cfg, cfg.train.steps)  # the variant's own steps: a grid may set them
                if seed == seeds[0]:  # the seed changes neither memory nor the number of updates
                    _check_budget(cfg, where)
                vid = _variant_id(mode, point, seed)
                variants.append(Variant(vid, mode, point, seed, _absolute_paths(cfgmod.to_dict(cfg))))
    return variants


def _absolute_paths(config: dict) -> dict:
    """A relative ``task.path`` made absolute (against this working directory): a Dask worker,
    or a later ``--resume`` from another folder, must read the same file."""
    task = config.get("task")
    if isinstance(task, dict) and isinstance(task.get("path"), str) and not os.path.isabs(task["path"]):
        task["path"] = os.path.abspath(task["path"])
    return config


def _check_count(n: int, what: str) -> None:
    if n > MAX_VARIANTS:
        raise CompareError(f"{what} would make {n:,} variants; a compare runs at most {MAX_VARIANTS:,} (use fewer modes, seeds or grid values)")


def _check_budget(cfg: cfgmod.Config, where: str) -> None:
    """Refuse a variant that cannot fit the machine before any directory exists (when the
    memory budget check is available)."""
    try:
        from bptt_cli import budget
    except ImportError:
        return
    check = getattr(budget, "check_budget", None)
    if check is None:
        return
    try:
        check(cfg)
    except cfgmod.ConfigError as e:
        raise CompareError(f"{where}: {e}") from None


def default_modes(cfg: cfgmod.Config) -> list[str]:
    """The lecture's three variants: full, k_truncated:K and subsequence:K with the config's K."""
    k = cfg.truncation.k if cfg.truncation.k is not None else cfg.truncation.k1
    if k is None:
        raise CompareError("no modes to compare: pass --modes, add compare.modes to the config, or set truncation.k")
    return ["full", f"k_truncated:{k}", f"subsequence:{max(1, k)}"]


def _yaml_value(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, (list, dict)) else str(v)


def _variant_id(mode: str, point: dict, seed: int) -> str:
    parts = [mode.replace(":", "-")]
    parts += [f"{k.split('.')[-1]}-{_text(v)}" for k, v in point.items()]
    parts.append(f"seed{seed}")
    return re.sub(r"[^A-Za-z0-9._=+-]", "-", "_".join(parts))  # a safe directory name


def _equal_updates(cfg: cfgmod.Config, updates: int) -> cfgmod.Config:
    """Give a chunk-update variant as many steps as it needs to make ``updates`` updates."""
    if cfg.truncation.update != "chunk":
        return cfg
    from bptt_cli.tasks import make_task

    task = make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=cfg.model.dtype)
    batch = task.train_batch(0, cfg.train.batch_size)
    T = batch.x.shape[0]
    C = parse_truncation(cfg.truncation.spec).chunk_length(T)
    per_step = sum(1 for a in range(0, T, C) if batch.mask[a : a + C].any())
    steps = max(1, math.ceil(updates / max(1, per_step)))
    return cfgmod.from_dict(cfgmod.to_dict(cfg), [f"train.steps={steps}"])


# -- the compare directory ----------------------------------------------------------------
def new_compare_dir(root: Path, name: str) -> Path:
    parent = Path(root) / name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    while True:
        path = parent / f"compare-{stamp}-{secrets.token_hex(3)}"
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue


def encode_plan(variants: list[Variant], meta: dict) -> bytes:
    """plan.json's bytes; refused here, before any directory exists, if too big to read back."""
    data = (json.dumps(runs._jsonable({**meta, "variants": [asdict(v) for v in variants]}), indent=2) + "\n").encode()
    if len(data) > PLAN_LIMIT:
        raise CompareError(f"the plan of {len(variants):,} variants is {len(data):,} bytes, more than the {PLAN_LIMIT:,} allowed")
    return data


def write_plan(path: Path, variants: list[Variant], meta: dict, data: bytes | None = None) -> None:
    runs.atomic_write(Path(path) / "plan.json", data if data is not None else encode_plan(variants, meta))


def read_plan(path: Path) -> tuple[list[Variant], dict]:
    """The variants and metadata of a compare directory, checked as untrusted input.

    plan.json may have been edited: it is read only if it is a regular file of at most
    PLAN_LIMIT bytes, every variant must have the fields and types ``write_plan`` writes,
    an id that is a plain directory name (what ``_variant_id`` makes) and a config that
    validates. Anything else is one CompareError naming plan.json, before anything is run,
    created or deleted.
    """
    p = Path(path) / "plan.json"
    if not p.exists() and not p.is_symlink():
        raise CompareError(f"{path} is not a compare directory (no plan.json)")
    try:
        data = json.loads(_read_limited(p, PLAN_LIMIT).decode("utf-8"))
    except CompareError:
        raise
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise CompareError(f"{p} is not valid JSON ({_first_line(e)}); it is not the plan bptt compare wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise CompareError(f"{p}: expected an object with a list of 'variants'; it is not the plan bptt compare wrote")
    items = data.pop("variants")
    if not items or len(items) > MAX_VARIANTS:
        raise CompareError(f"{p}: {len(items):,} variants; a plan holds 1 to {MAX_VARIANTS:,}")
    for key, kind in (("name", str), ("budget", str), ("base_config", dict)):
        if key in data and not isinstance(data[key], kind):
            raise CompareError(f"{p}: '{key}' must be a {kind.__name__}, got {type(data[key]).__name__}")
    variants = [_check_variant(p, i, v) for i, v in enumerate(items)]
    seen: set[str] = set()
    for v in variants:
        if v.id in seen:
            raise CompareError(f"{p}: variant id {v.id!r} appears twice")
        seen.add(v.id)
    return variants, data


def _check_variant(p: Path, i: int, item: Any) -> Variant:
    where = f"{p}: variants[{i}]"
    fields = {"id": str, "mode": str, "grid": dict, "seed": int, "config": dict}
    if not isinstance(item, dict) or set(item) != set(fields):
        raise CompareError(f"{where} must be an object with exactly the fields {', '.join(fields)}")
    for key, kind in fields.items():
        if not isinstance(item[key], kind) or isinstance(item[key], bool):
            raise CompareError(f"{where}.{key} must be a {kind.__name__}, got {type(item[key]).__name__}")
    vid = item["id"]
    if not is_safe_id(vid):
        raise CompareError(f"{where}.id {vid[:80]!r} is not a plain directory name ({SAFE_ID.pattern}); refusing to use it")
    if not all(isinstance(k, str) for k in item["grid"]):
        raise CompareError(f"{where}.grid keys must be strings")
    try:
        cfgmod.from_dict(item["config"], source=f"{p} variant {vid}")
    except cfgmod.ConfigError as e:
        raise CompareError(f"{where}.config is not a valid config: {e}") from None
    except (TypeError, ValueError, RecursionError) as e:
        raise CompareError(f"{where}.config is not a valid config: {_first_line(e)}") from None
    return Variant(**item)


def is_safe_id(vid: str) -> bool:
    return bool(SAFE_ID.fullmatch(vid)) and vid not in (".", "..")


def variant_dir(path: Path, vid: str) -> Path:
    """The absolute directory of variant ``vid``: a real folder (or nothing yet) directly inside
    the compare directory. Raises CompareError for anything that would lead elsewhere."""
    root = Path(path).resolve()
    if not is_safe_id(vid):
        raise CompareError(f"variant id {vid[:80]!r} is not a plain directory name; refusing to use it")
    d = root / vid
    if d.is_symlink():
        raise CompareError(f"{d} is a symbolic link; a variant directory must be a real folder inside {root}")
    if d.exists() and not d.is_dir():
        raise CompareError(f"{d} is not a folder; a variant directory must be a real folder inside {root}")
    if d.resolve().parent != root:  # pragma: no cover - a safe name and no symlink already ensure it
        raise CompareError(f"{d} leads outside {root}")
    return d


def check_variant_dirs(path: Path, variants: list[Variant]) -> dict[str, Path]:
    """{id: absolute directory} for every variant, all checked before any is touched."""
    return {v.id: variant_dir(path, v.id) for v in variants}


def is_compare_dir(path: Path) -> bool:
    return (Path(path) / "plan.json").is_file()


def variant_state(path: Path, v: Variant) -> str:
    """completed/diverged (done), interrupted/failed/running (resume or restart), missing."""
    d = Path(path) / v.id
    if not runs.is_run_dir(d):
        return "missing"
    return read_summary(d).get("status", "missing")


def read_summary(d: Path) -> dict:
    """A variant's summary.json as a dict, or {} when missing or damaged (size limit, type
    checked); a status that is not a string counts as missing."""
    try:
        data = json.loads(_read_limited(Path(d) / "summary.json", SUMMARY_LIMIT).decode("utf-8"))
    except (CompareError, ValueError, RecursionError):
        return {}
    if not isinstance(data, dict) or not isinstance(data.get("status", ""), str):
        return {}
    return data


def _read_limited(p: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit``; a FIFO, device or folder is refused without
    blocking (O_NONBLOCK on open, type checked on the descriptor)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(p, flags)
    except OSError as e:
        raise CompareError(f"{p} cannot be read ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CompareError(f"{p} is not a regular file")
        if st.st_size > limit:
            raise CompareError(f"{p} is {st.st_size:,} bytes, more than the {limit:,} allowed")
        os.set_blocking(fd, True)
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CompareError(f"{p} is more than the {limit:,} bytes allowed")
    return data


def _first_line(e: BaseException) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0]


def _steps_done(d: Path) -> int:
    """The last step in the variant's metrics.jsonl (cheap: reads the file's tail)."""
    p = d / "metrics.jsonl"
    try:
        with open(p, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 4096))
            lines = f.read().split(b"\n")
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            return int(json.loads(line)["step"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0
