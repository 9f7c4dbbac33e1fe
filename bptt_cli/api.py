"""The Python API, for notebooks and scripts: run a config or a compare, read runs back.

    from bptt_cli import api

    run = api.run("configs/delay.yaml", overrides=["train.steps=200"], runs_root="runs")
    run.status, run.final["eval.accuracy"]
    run.metrics                     # one row per logged update: step, update, loss, grad_norm, ...
    run.metrics.plot(x="update", y="loss")
    longer = api.extend(run.path, steps=400)   # the same run, on to 400 steps, exactly

    cmp = api.compare("configs/delay.yaml", modes=["full", "k_truncated:5"], seeds=2)
    cmp.variants                    # one row per variant: id, mode, grid keys, seed, status, metrics
    cmp.run(cmp.variants["id"][0])  # that variant as a Run (a DataFrame column, or row["id"])

    api.load_run("runs/delay/20261202T101500Z-1a2b3c")
    api.load_compare("runs/delay/compare-20261202T101700Z-4d5e6f")

Tables (``metrics``, ``eval``, ``diagnostics``, ``variants``, ``groups``) are pandas DataFrames
when pandas is installed (``pip install 'bptt[pandas]'``) and plain lists of dicts otherwise,
with the same columns either way: nested fields flattened to dotted names
(``grad_norms.W_hh``, ``flow.decay_per_step``). ``config`` and ``summary`` are the plain dicts
of config.yaml and summary.json. These are the same calls the command line makes: a run
started here is an ordinary run directory that ``bptt show``, ``plot`` and ``export`` read.
Errors are the package's ``BpttError``s (a bad config raises ``ConfigError`` naming the key).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from bptt_cli import config as cfgmod
from bptt_cli import runs, tracking

__all__ = ["Compare", "Run", "compare", "extend", "load_compare", "load_run", "resume", "run"]


def table(records: list[dict]) -> Any:
    """Records as a DataFrame (pandas installed) or a list of flat dicts: nested dicts become
    dotted columns either way."""
    rows = [runs.flatten(r) for r in records]
    try:
        import pandas as pd
    except ImportError:
        return rows
    return pd.DataFrame.from_records(rows)


@dataclass
class Run:
    """A run directory read back. ``metrics``, ``eval`` and ``diagnostics``: see ``table``."""

    path: Path
    config: dict
    summary: dict
    metrics: Any
    eval: Any
    diagnostics: Any
    problems: list[str] = field(default_factory=list)  # damaged lines or files, named (empty when clean)

    @property
    def status(self) -> str:
        """completed, diverged, interrupted, failed, running or crashed."""
        return self.summary.get("status", "unknown")

    @property
    def final(self) -> dict:
        """The last logged metrics: ``train.loss``, ``eval.accuracy``, ..."""
        return dict(self.summary.get("final") or {})

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r}, status={self.status!r}, steps_done={self.summary.get('steps_done')})"


@dataclass
class Compare:
    """A compare directory read back: ``variants`` has one row per variant, ``groups`` one per
    mode/grid point (means over seeds); ``result`` is compare.json's content."""

    path: Path
    result: dict
    variants: Any
    groups: Any

    def run(self, variant: str) -> Run:
        """One variant's run, by id."""
        return load_run(self.path / variant)

    def runs(self) -> dict[str, Run]:
        """Every variant that wrote a run directory, by id."""
        return {r["id"]: load_run(self.path / r["id"]) for r in self.result["variants"] if runs.is_run_dir(self.path / r["id"])}

    def __repr__(self) -> str:
        return f"Compare({str(self.path)!r}, variants={len(self.result['variants'])})"


def load_run(path: str | Path) -> Run:
    """Read a run directory (also one still going or killed)."""
    r = runs.load_run(Path(path))
    return Run(r.path, r.config, r.summary, table(r.metrics), table(r.eval), table(r.diagnostics), list(r.problems))


def load_compare(path: str | Path) -> Compare:
    """Read a compare directory (its variants' files, as ``bptt show`` does)."""
    from bptt_cli import compare as cmp

    path = Path(path)
    if not cmp.is_compare_dir(path):
        raise cmp.CompareError(f"{path} is not a compare directory (it has no plan.json)")
    result = cmp.collect(path)
    return Compare(path, result, table(result["variants"]), table(result.get("rows", [])))


def _config(config: str | Path | Mapping | cfgmod.Config | None, overrides: Sequence[str]) -> cfgmod.Config:
    if isinstance(overrides, str):
        overrides = [overrides]
    if isinstance(config, cfgmod.Config):
        return cfgmod.from_dict(cfgmod.to_dict(config), list(overrides)) if overrides else config
    if isinstance(config, Mapping):
        return cfgmod.from_dict(config, list(overrides))
    return cfgmod.load_config(config, list(overrides))


def run(
    config: str | Path | Mapping | cfgmod.Config | None = None,
    overrides: Sequence[str] = (),
    *,
    runs_root: str | Path = "runs",
    run_dir: str | Path | None = None,
    smoke: bool = False,
    expect: Sequence[str] = (),
    on_event: Callable | None = None,
) -> Run:
    """Train one config and return the run read back.

    ``config``: a YAML path, plain data (as in YAML), a ``Config``, or None for the quickstart;
    ``overrides``: ``--set`` strings such as ``"truncation.mode=k_truncated:5"``. The run goes
    to ``runs_root/<name>/<time>-<id>`` or to ``run_dir`` (new or empty). ``expect``:
    ``"eval.accuracy>=0.9"`` checks recorded in the summary's ``expectations``. ``on_event``
    gets every ``trainer.Event`` as it comes (progress in a notebook).
    """
    from bptt_cli.budget import check_budget
    from bptt_cli.session import execute
    from bptt_cli.trainer import Trainer

    cfg = _config(config, overrides)
    if smoke:
        cfg = cfgmod.smoke(cfg)
    expectations = tuple(cfgmod.parse_expectation(e) for e in expect)
    check_budget(cfg)
    trainer = Trainer(cfg, cache_dir=runs.cache_dir(Path(runs_root)))
    check_budget(cfg, trainer.task)
    path = runs.claim_run_dir(Path(run_dir)) if run_dir is not None else runs.new_run_dir(Path(runs_root), cfg.name)
    execute(cfg, path, expect=expectations, on_event=on_event, trainer=trainer)
    return load_run(path)


def resume(path: str | Path, overrides: Sequence[str] = (), *, on_event: Callable | None = None) -> Run:
    """Continue a run from its checkpoint (``bptt train --resume``). ``overrides`` may give more
    ``train.steps`` (extending a completed run exactly), other ``train.threads`` or ``tracking``."""
    from bptt_cli.session import execute, resume_config

    path = Path(path)
    runs.load_run(path)  # a clear error for what is not a run
    cfg = resume_config(path, [overrides] if isinstance(overrides, str) else list(overrides))
    execute(cfg, path, resume=True, on_event=on_event)
    return load_run(path)


def extend(path: str | Path, steps: int, *, on_event: Callable | None = None) -> Run:
    """Train a run on to ``steps`` steps: the same metrics as a run configured with ``steps``
    from the start."""
    return resume(path, [f"train.steps={int(steps)}"], on_event=on_event)


def compare(
    config: str | Path | Mapping | cfgmod.Config | None = None,
    overrides: Sequence[str] = (),
    *,
    modes: Sequence[str] | str | None = None,
    seeds: int | Sequence[int] | None = None,
    grid: Mapping[str, Sequence[Any]] | None = None,
    budget: str = "sequences",
    workers: int = 1,
    runs_root: str | Path = "runs",
    smoke: bool = False,
) -> Compare:
    """Run a compare (``bptt compare``) and return it read back.

    ``modes``: truncation specs (``["full", "k_truncated:5"]`` or ``"full,k_truncated:5"``);
    ``seeds``: a count from the config's seed on, or a list of seeds; ``grid``:
    ``{"clip.threshold": [1, 5, None]}``. Each overrides the config's ``compare:`` section.
    ``workers=1`` runs the variants one after another in this process; more run them in
    processes of their own.
    """
    from concurrent.futures import ThreadPoolExecutor

    from bptt_cli import compare as cmp

    if isinstance(overrides, str):
        overrides = [overrides]
    # ``grid`` replaces the config's whole grid (as --grid does), so that grid is left out before
    # validation: an override one of its points refuses must not stop this compare.
    base = _config(config, [*overrides, "compare.grid=null"] if grid is not None else overrides)
    if smoke:
        base = cfgmod.smoke(base)
    if isinstance(modes, str):
        modes = cmp.parse_modes(modes)
    elif modes is not None:
        modes = cmp.parse_modes(",".join(modes))
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = cmp.parse_seeds(str(seeds), base.seed)
    elif seeds is not None:
        seeds = cmp.parse_seeds(",".join(str(s) for s in seeds) + ",", base.seed)
    if grid is not None:
        for key in grid:
            cmp.check_grid_key(key)
        grid = {k: list(v) for k, v in grid.items()}
    variants = cmp.plan(base, modes=modes, seeds=seeds, grid=grid, budget=budget)
    meta = {"name": base.name, "budget": budget, "base_config": cfgmod.to_dict(base)}
    data = cmp.encode_plan(variants, meta)
    path = cmp.new_compare_dir(Path(runs_root), base.name)
    cmp.write_plan(path, variants, meta, data)
    tracking.start_compare(path, variants[0].config)
    if workers == 1:
        executor, in_process = ThreadPoolExecutor(max_workers=1), True
    else:
        executor, in_process = cmp.ProcessPerTaskExecutor(workers), False
    try:
        cmp.execute_all(path, variants, executor, in_process=in_process)
    finally:
        executor.shutdown(wait=True, cancel_futures=True)
    result = cmp.collect(path)
    cmp.write_results(path, result)
    tracking.finish_compare(path, variants[0].config)
    return load_compare(path)
