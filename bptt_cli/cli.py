"""The `bptt` command line: parse, call the layers below, turn their errors into exit codes.

Exit codes: 0 success (a diverged run is a result, not a crash), 1 a failed expectation,
gradient check or --fail-on-diverge, or a compare variant that failed, 2 bad input of any
kind, 130 interrupted.
Data goes to stdout; messages and progress go to stderr.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from bptt_cli.core.errors import BpttError

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

app = typer.Typer(
    name="bptt",
    help="Train a NumPy Elman RNN with (truncated) backpropagation through time and measure what truncation does.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _print_version(value: bool) -> None:
    if value:
        from bptt_cli import __version__

        typer.echo(f"bptt {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Train a NumPy Elman RNN with (truncated) backpropagation through time and measure what truncation does."""



class _Lazy:
    """Made on first use. `bptt --help` (plain Click help: rich_markup_mode=None) then loads
    no rich; commands import the layers they run (runs, config, session: NumPy, pydantic)
    inside, so it loads none of those either."""

    def __init__(self, make) -> None:
        self._make, self._obj = make, None

    def __getattr__(self, name: str):
        if self._obj is None:
            self._obj = self._make()
        return getattr(self._obj, name)


def _console(**kwargs):
    from rich.console import Console

    # No :emoji: codes: bptt prints none, a run name must print as written, and rich's code
    # table is the largest module it loads (a tenth of the quickstart's imports).
    return Console(emoji=False, **kwargs)


render = _Lazy(lambda: importlib.import_module("bptt_cli.render"))
# A pipe or log file has no width of its own; 120 columns keeps the wide tables whole there.
# No markup: table cells hold names read from run files, and "[/x]" there must print as is.
_OUT_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 120
out = _Lazy(lambda: _console(highlight=False, markup=False, width=_OUT_WIDTH))
err = _Lazy(lambda: _console(stderr=True, highlight=False, soft_wrap=True))  # messages stay one line in logs
# render.SORT_KEYS, spelled out for --sort's help so that `bptt --help` need not import
# render (tests/test_threads.py keeps the two equal).
SORT_KEYS = (
    "train_loss", "eval_loss", "metric_value", "updates_to_target", "grad_norm_median", "grad_norm_max",
    "clipped_share", "k_mean", "k_last", "ms_per_update", "ms_per_sequence", "bias_cosine_mean", "bias_cosine_last",
    "bias_rel_error_mean", "bias_rel_error_last", "flow_decay_per_step_first", "flow_decay_per_step_last",
    "group", "updates",
)  # fmt: skip


def fail(message: str, code: int = EXIT_USAGE) -> typer.Exit:
    err.print(f"error: {message}", markup=False, highlight=False)
    return typer.Exit(code)


@contextmanager
def user_errors() -> Iterator[None]:
    """Every deliberate bptt error becomes one line on stderr and exit code 2 (or the error's
    own ``exit_code``: a run whose files could not be written mid-way failed, exit 1)."""
    try:
        yield
    except BpttError as e:
        raise fail(str(e), getattr(e, "exit_code", EXIT_USAGE)) from None


class StopFlag:
    """SIGINT/SIGTERM: the first asks the run to stop after the current step; a second
    Ctrl-C interrupts at once (the logs still hold every finished update)."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, object] = {}

    def __call__(self) -> bool:
        return self.requested

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        err.print("stopping after the current step (Ctrl-C again to stop at once)...")

    def __enter__(self) -> "StopFlag":
        for s in (signal.SIGINT, signal.SIGTERM):
            self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, h in self._old.items():
            signal.signal(s, h)


SET_HELP = "Override a config value, dotted and typed like the schema: --set truncation.k=5 (repeatable)."
THREADS_HELP = "BLAS threads: auto (picked from the model size and free cores) or a count; wins over train.threads and OPENBLAS_NUM_THREADS."


@app.command()
def train(
    config: Optional[Path] = typer.Argument(None, help="YAML config; omitted: the built-in quickstart."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Write the run here (new or empty folder)."),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Parent of new run directories."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory from its checkpoint; with --set train.steps=N, extend a finished run to N steps."),
    smoke: bool = typer.Option(False, "--smoke", help="Shrink the config to a few updates (CI smoke run)."),
    expect: list[str] = typer.Option([], "--expect", help="Check a final metric, e.g. 'eval.accuracy>=0.9' (repeatable); exit 1 if not met."),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Show every N-th logged update in the table."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables; only the summary."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
    fail_on_diverge: bool = typer.Option(False, "--fail-on-diverge", help="Exit 1 when the run diverges."),
    threads_: Optional[str] = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Train one model from a YAML config and log every update."""
    from bptt_cli import config as cfgmod
    from bptt_cli import runs, threads
    from bptt_cli.budget import check_budget
    from bptt_cli.session import execute
    from bptt_cli.trainer import Trainer

    with user_errors():
        expectations = tuple(cfgmod.parse_expectation(e) for e in expect)
        if resume is not None:
            if config is not None or run_dir is not None or smoke:
                raise fail(
                    "--resume takes the config from the run directory; drop CONFIG, --run-dir and --smoke "
                    "(--set may give more train.steps, other train.threads or tracking)"
                )
            previous = runs.load_run(resume)
            if previous.status == "diverged":
                d = previous.summary.get("diverged_at") or {}
                raise fail(
                    f"{resume} diverged at step {d.get('step')}; resuming would replay the same steps and diverge "
                    "again (runs are deterministic). Start a new run with other settings, e.g. --set clip.mode=global_norm"
                )
            if previous.status == "completed" and not set_:
                err.print(f"{resume} already completed; nothing to resume (extend it with --set train.steps=N)", markup=False)
                _report(resume, previous.summary, every=every, quiet=quiet, as_json=as_json)
                return
            from bptt_cli.session import resume_config

            cfg = resume_config(resume, set_)  # only more train.steps, train.threads or tracking may change
        else:
            cfg = cfgmod.load_config(config, set_)
            if smoke:
                cfg = cfgmod.smoke(cfg)
        cfg = threads.with_threads(cfg, None if threads_ is None else threads.parse_setting(threads_))
        check_budget(cfg)  # before the task is built: memory and log interval against this machine and run
        try:
            trainer = Trainer(cfg, cache_dir=runs.cache_dir(runs_root), resume=resume is not None)
        except MemoryError:
            raise fail(
                f"not enough memory to build the task and model of this config (task {cfg.task.name}, "
                f"model.hidden {cfg.model.hidden}, train.eval_size {cfg.train.eval_size}); make them smaller"
            ) from None
        check_budget(cfg, trainer.task)  # again with the exact shapes (a text file's vocabulary)
        if resume is not None:
            path = resume
        elif run_dir is not None:
            path = runs.claim_run_dir(run_dir)
        else:
            path = runs.new_run_dir(runs_root, cfg.name)
    err.print(f"run: {path}", markup=False)
    with StopFlag() as stop, render_progress(cfg, quiet) as on_event:
        try:
            with user_errors():
                summary = execute(cfg, path, resume=resume is not None, expect=expectations, stop=stop, on_event=on_event, trainer=trainer)
        except typer.Exit:
            raise
        except Exception as e:  # an internal error: keep the traceback in the run, no wall of text here
            log = path / "error.log"
            if not (log.is_file() and not log.is_symlink()):
                log = runs.write_error_log(path, traceback.format_exc())
            where = f" (traceback in {log})" if log else ""
            raise fail(f"the run failed with {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{where}", EXIT_FAILED) from None
    with user_errors():
        _report(path, summary, every=every, quiet=quiet, as_json=as_json)
    raise typer.Exit(_train_exit_code(path, summary, fail_on_diverge))


def _train_exit_code(path: Path, summary: dict, fail_on_diverge: bool) -> int:
    """Say how the run ended on stderr and choose the exit code."""
    from bptt_cli import tracking

    for line in tracking.problems(summary):  # the run went on; say so, the exit code does not change
        err.print(line, markup=False)
    status = summary["status"]
    if status == "interrupted":
        err.print(f"interrupted; continue with: bptt train --resume {path}", markup=False)
        return EXIT_INTERRUPTED
    code = 0
    if status == "diverged":
        d = summary.get("diverged_at") or {}
        err.print(f"diverged: non-finite {d.get('what')} at step {d.get('step')}; logs kept up to the last finite update")
        code = EXIT_FAILED if fail_on_diverge else 0
    for line in render.expectations_lines(summary.get("expectations", [])):
        err.print(line, markup=False)
        code = EXIT_FAILED
    return code


@contextmanager
def render_progress(cfg, quiet: bool):
    """Progress on stderr: a live bar with loss and gradient norm on a terminal; elsewhere
    (CI logs) one plain line per held-out evaluation; nothing with --quiet."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        pending: list[dict] = []  # an evaluation waits for its step's event, which has the step loss

        def log(ev) -> None:
            if ev.kind == "eval":
                pending.append(ev.data)
            elif ev.kind == "step" and pending:
                e = pending.pop()
                metrics = ", ".join(f"{k} {render.fmt(v)}" for k, v in e.items() if k not in ("step", "update", "time"))
                err.print(f"step {e['step']}/{cfg.train.steps}: train loss {render.fmt(ev.data['loss'])}; eval {metrics}", markup=False)

        yield log
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}  |g| {task.fields[gnorm]}"),
        TimeRemainingColumn(),
        console=err,
        transient=True,
    )
    task_id = progress.add_task(cfg.name, total=cfg.train.steps, loss="-", gnorm="-")
    last = {}

    def on_event(ev) -> None:
        if ev.kind == "update":
            last.update(ev.data)
        elif ev.kind == "step":
            progress.update(
                task_id,
                completed=ev.data["step"],
                loss=render.fmt(last.get("loss")),
                gnorm=render.fmt(last.get("grad_norm")),
            )

    with progress:
        yield on_event


def _report(path: Path, summary: dict, *, every: int | None, quiet: bool, as_json: bool) -> None:
    from bptt_cli import runs

    if as_json:
        out.print_json(json.dumps(runs._jsonable(summary)))
        return
    if quiet:
        out.print(render.summary_panel(summary))
        return
    run = runs.load_run(path)
    out.print(render.run_report(run, every=every))


@app.command()
def show(
    paths: list[Path] = typer.Argument(..., help="Run or compare directories (or quoted globs); several are shown side by side."),
    every: Optional[int] = typer.Option(None, "--every", min=1, help="Show every N-th logged update."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Order the rows by a column or a config key that differs (several runs, or a compare)."),
    format_: str = typer.Option("table", "--format", help="table, markdown, latex, csv or json: the side-by-side rows, for a paper or a script."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary (one run), the results (one compare) or the rows as JSON on stdout."),
) -> None:
    """Render a run's logs and summary, a compare directory's tables, or several runs side by side,
    grouped by the config keys that differ between them (seeds as mean ± std)."""
    from bptt_cli import compare as cmp
    from bptt_cli import runs, views

    if format_ not in views.FORMATS:
        raise fail(f"--format must be one of {', '.join(views.FORMATS)}, got {format_!r}")
    with user_errors():
        targets = views.expand(paths)
    one = targets[0] if len(targets) == 1 else None
    if one is not None and cmp.is_compare_dir(one) and format_ == "table":
        if sort is not None and sort not in render.SORT_KEYS and sort not in render.SORT_ALIASES:
            raise fail(f"--sort must be one of {', '.join(render.SORT_KEYS)}, got {sort!r}")
        with user_errors():
            result = cmp.collect(one)
        if as_json:
            out.print_json(json.dumps(runs._jsonable(result)))
        else:
            _print_compare(result, sort)
        return
    if one is not None and not cmp.is_compare_dir(one) and format_ == "table" and sort is None:
        with user_errors():
            run = runs.load_run(one)
        if as_json:
            out.print_json(json.dumps(run.summary))
            return
        out.print(render.run_report(run, every=every))
        return
    with user_errors():
        view = views.side_by_side(views.gather(targets, on_skip=lambda p, e: err.print(f"skipping {p}: {e}", markup=False)))
        if sort is not None:
            view = views.sort_view(view, sort)
        if as_json or format_ != "table":
            sys.stdout.write(views.export(view, "json" if as_json else format_, render.fmt))
            return
    out.print(render.side_by_side_table(view))


@app.command("runs")
def list_runs(
    root: Path = typer.Argument(Path("runs"), help="Folder to search for runs."),
    task: Optional[str] = typer.Option(None, "--task", help="Only runs of this task."),
    status: Optional[str] = typer.Option(None, "--status", help="Only runs with this status: completed, diverged, interrupted, failed, running or crashed."),
    since: Optional[str] = typer.Option(None, "--since", help="Only runs started since then: a duration (2d, 12h, 30m) or a date/time (2026-12-01)."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout."),
) -> None:
    """List runs with name, status, task, truncation, steps, final loss and eval metrics (from their summaries)."""
    from bptt_cli import runs, views

    with user_errors():
        rows = views.list_runs(root, task=task, status=status, since=since, on_skip=lambda p, e: err.print(f"skipping {p}: {e}", markup=False))
    if as_json:
        out.print_json(json.dumps(runs._jsonable(rows)))
        return
    if not rows:
        filtered = task is not None or status is not None or since is not None
        err.print(f"no runs under {root}{' match the filters' if filtered else ''}", markup=False)
        return
    for table in render.runs_tables(rows):
        out.print(table)


@app.command()
def tasks() -> None:
    """List the sequence tasks with their parameters."""
    from bptt_cli.tasks import REGISTRY

    rows = []
    for name, cls in REGISTRY.items():
        rows.append(
            {
                "name": name,
                "description": cls.description,
                "loss": cls.loss,
                "params": [{"name": p.name, "default": p.default, "allowed": p.allowed(), "help": p.help} for p in cls.params],
            }
        )
    out.print(render.tasks_table(rows))


@app.command()
def validate(
    config: Path = typer.Argument(..., help="YAML config to check."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
) -> None:
    """Check a config and print it fully resolved (defaults and overrides filled in)."""
    from bptt_cli import config as cfgmod

    from bptt_cli.budget import check_budget
    from bptt_cli.tasks import make_task

    with user_errors():
        cfg = cfgmod.load_config(config, set_)
        check_budget(cfg)  # before a corpus is built, then with the task's exact shapes
        check_budget(cfg, make_task(cfg.task.name, cfg.task.params, seed=cfg.seed, dtype=cfg.model.dtype))  # e.g. a text file that is missing
    sys.stdout.write(cfgmod.dump_yaml(cfg))


@app.command()
def compare(
    config: Optional[Path] = typer.Argument(None, help="YAML config shared by every variant (omitted: the quickstart, with --modes)."),
    modes: Optional[str] = typer.Option(None, "--modes", help="Comma-separated truncation specs, e.g. full,k_truncated:5,subsequence:10,tbptt:5:20."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="A count of seeds from the config's seed on (3), or seeds (3,7,11)."),
    grid: list[str] = typer.Option([], "--grid", help="KEY=V1,V2,... varied across variants, e.g. clip.threshold=1,5,none (repeatable, crossed); keys varied together: model.cell,model.hidden=elman:67,gru:36. Replaces the config's grid."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Parallel worker processes (default: number of CPUs; 1 runs in this process)."),
    scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run on a Dask cluster at this address, e.g. tcp://host:8786 (needs the dask extra)."),
    budget: str = typer.Option("sequences", "--budget", help="sequences: same training sequences for every variant; updates: same optimizer updates."),
    runs_root: Path = typer.Option(Path("runs"), "--runs-root", help="Parent of new compare directories."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Finish the variants of this compare directory that did not complete."),
    smoke: bool = typer.Option(False, "--smoke", help="Shrink every variant to a few updates (CI smoke run)."),
    sort: Optional[str] = typer.Option(None, "--sort", help="Order rows by a column: " + ", ".join(SORT_KEYS) + "."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No live progress display."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    expect: list[str] = typer.Option([], "--expect", help="Check every variant's final metric, e.g. 'eval.accuracy>=0.9' (repeatable); exit 1 if a variant misses it."),
    fail_on_diverge: bool = typer.Option(False, "--fail-on-diverge", help="Exit 1 when a variant diverges."),
    threads_: Optional[str] = typer.Option(None, "--threads", help=THREADS_HELP + " Auto shares the cores among the workers."),
) -> None:
    """Run truncation modes (x grid points x seeds) side by side and show one table.

    Exit codes: 0 every variant completed (a diverged variant is a result, as in train);
    1 a variant failed, missed an --expect, or diverged with --fail-on-diverge;
    2 bad input (options, config, a damaged compare directory); 130 interrupted.
    """
    from bptt_cli import compare as cmp
    from bptt_cli import config as cfgmod
    from bptt_cli import runs, threads

    if sort is not None and sort not in render.SORT_KEYS and sort not in render.SORT_ALIASES:
        raise fail(f"--sort must be one of {', '.join(render.SORT_KEYS)}, got {sort!r}")
    with user_errors():
        expectations = tuple(cfgmod.parse_expectation(e) for e in expect)
        if threads_ is not None:
            if resume is not None:
                raise fail("--resume takes everything from the compare directory; drop --threads")
            set_ = [*set_, f"train.threads={threads.parse_setting(threads_)}"]
        if resume is not None:
            if config is not None or modes or seeds or grid or set_ or smoke:
                raise fail("--resume takes everything from the compare directory; drop CONFIG, --modes, --seeds, --grid, --set and --smoke")
            variants, _ = cmp.read_plan(resume)
            cmp.check_variant_dirs(resume, variants)
            path = resume
        else:
            variants, path = _plan_compare(config, set_, smoke, modes, seeds, grid, budget, runs_root)
    err.print(f"compare: {path} ({len(variants)} variants)", markup=False)
    from bptt_cli import tracking

    parent = tracking.start_compare(path, variants[0].config) if variants else {}  # MLflow's parent run, when on
    if parent.get("error"):
        err.print(f"tracking: mlflow: {parent['error']}", markup=False)
    with user_errors(), StopFlag() as stop, _executor(workers or os.cpu_count() or 1, scheduler, stop) as (executor, in_process, remote):
        with _live(quiet) as show:
            progress = cmp.execute_all(path, variants, executor, in_process=in_process, remote_stop=remote, stop=stop, on_progress=show)
    with user_errors():
        result = cmp.collect(path)
        if expectations:
            result["expectations"] = cmp.check_expectations(result, expectations)
        cmp.write_results(path, result)
    if parent:
        tracking.finish_compare(path, variants[0].config, status="interrupted" if stop.requested else "completed")
    if as_json:
        out.print_json(json.dumps(runs._jsonable(result)))
    else:
        _print_compare(result, sort)
    raise typer.Exit(_compare_exit_code(path, result, progress, stop.requested, fail_on_diverge))


def _compare_exit_code(path: Path, result: dict, progress, stopped: bool, fail_on_diverge: bool) -> int:
    """Say how the compare ended on stderr and choose the exit code (see ``compare``'s help)."""
    statuses = {r["id"]: r.get("status") for r in result["variants"]}
    if stopped and any(s in ("interrupted", "not started") for s in [*statuses.values(), *progress.status.values()]):
        err.print(f"interrupted; finish the missing variants with: bptt compare --resume {path}", markup=False)
        return EXIT_INTERRUPTED
    code = 0
    bad = [vid for vid, s in statuses.items() if s not in ("completed", "diverged")]
    if bad:
        err.print(f"{len(bad)} of {len(statuses)} variants did not complete ({', '.join(bad[:5])}{', ...' if len(bad) > 5 else ''}); their errors are in the table and in each variant's summary.json", markup=False)
        code = EXIT_FAILED
    diverged = [vid for vid, s in statuses.items() if s == "diverged"]
    if diverged and fail_on_diverge:
        err.print(f"{len(diverged)} of {len(statuses)} variants diverged (--fail-on-diverge)", markup=False)
        code = EXIT_FAILED
    for row in result.get("expectations", []):
        if not row["ok"]:
            err.print(f"expectation failed: {row['id']}: {row['metric']} = {render.fmt(row['value'])}, wanted {row['expect']}", markup=False)
            code = EXIT_FAILED
    return code


def _plan_compare(config, set_, smoke, modes, seeds, grid, budget, runs_root):
    """Resolve the base config and the variants; write the plan into a new compare directory."""
    from bptt_cli import compare as cmp
    from bptt_cli import config as cfgmod

    # --grid replaces the config's whole grid, so that grid is left out before validation: a
    # --set one of its points refuses (forget_bias=3 with an elman point) must not stop a compare.
    base = cfgmod.load_config(config, [*set_, "compare.grid=null"] if grid else set_)
    if smoke:
        base = cfgmod.smoke(base)
    variants = cmp.plan(
        base,
        modes=cmp.parse_modes(modes) if modes else None,
        seeds=cmp.parse_seeds(seeds, base.seed) if seeds else None,
        grid=cmp.parse_grid(grid) if grid else None,
        budget=budget,
    )
    meta = {"name": base.name, "budget": budget, "base_config": cfgmod.to_dict(base)}
    data = cmp.encode_plan(variants, meta)  # refused if too big, before any directory exists
    path = cmp.new_compare_dir(runs_root, base.name)
    cmp.write_plan(path, variants, meta, data)
    return variants, path


@contextmanager
def _executor(workers: int, scheduler: str | None, stop):
    """(executor, runs in this process?, Dask stop flag or None) for --workers / --scheduler,
    shut down (and a Dask client closed) on the way out, dropping what never started."""
    from concurrent.futures import ThreadPoolExecutor

    from bptt_cli import compare as cmp

    client = None
    if scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise fail('--scheduler needs Dask: pip install -e ".[dask]"') from None
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError, ValueError) as e:
            raise fail(f"--scheduler {scheduler}: cannot connect ({e})") from None
        executor, in_process = client.get_executor(), False
    elif workers == 1:
        executor, in_process = ThreadPoolExecutor(max_workers=1), True
    else:
        executor, in_process = cmp.ProcessPerTaskExecutor(workers, stop=stop), False
    try:
        yield executor, in_process, cmp.DaskStop() if client is not None else None
    finally:
        try:
            executor.shutdown(wait=True, cancel_futures=True)
        except TypeError:  # Dask's ClientExecutor has no cancel_futures; every future is done by now
            executor.shutdown(wait=True)
        if client is not None:
            client.close()


@contextmanager
def _live(quiet: bool):
    """Progress of the variants: a live table on a terminal; elsewhere (CI logs) one plain
    line on stderr each time a variant finishes; nothing with --quiet."""
    if quiet:
        yield None
        return
    if not err.is_terminal:
        done: set[str] = set()

        def log(prog) -> None:
            for vid, status in prog.status.items():
                if vid not in done and status not in ("queued", "running"):
                    done.add(vid)
                    why = f": {prog.errors[vid]}" if vid in prog.errors else ""
                    err.print(f"variant {vid}: {status} at step {prog.steps.get(vid, 0)}{why} ({len(done)}/{len(prog.status)})", markup=False)

        yield log
        return
    from rich.live import Live

    with Live(console=err, refresh_per_second=4, transient=True) as live:

        def show(prog) -> None:
            live.update(render.compare_progress_table(prog.status, prog.steps, prog.total))

        yield show


def _print_compare(result: dict, sort: str | None) -> None:
    # The table is wide; a log file or pipe has no width to respect, so give it room.
    con = out if out.is_terminal or "COLUMNS" in os.environ else _console(width=160, highlight=False)
    for table in render.compare_tables(result, sort=sort):
        con.print(table)
    if any(r.get("status") != "completed" for r in result["variants"]) or len(result["variants"]) <= 12:
        con.print(render.variants_table(result))
    con.print(f"results: {result['path']}/compare.json, compare.csv, compare_summary.csv", markup=False, highlight=False)


@app.command()
def gradcheck(
    config: Optional[Path] = typer.Argument(None, help="YAML config (omitted: the quickstart)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    modes: Optional[str] = typer.Option(None, "--modes", help="Truncation specs to check (default: the config's mode and full, k_truncated, subsequence, tbptt)."),
    steps: int = typer.Option(12, "--steps", min=1, help="Time steps of the slice checked."),
    as_json: bool = typer.Option(False, "--json", help="Print the rows as JSON on stdout."),
    threads_: Optional[str] = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Check the engine's gradients on your config: finite differences and the brute-force reference, in float64."""
    from bptt_cli import compare as cmp
    from bptt_cli import runs, threads
    from bptt_cli import config as cfgmod
    from bptt_cli.budget import check_budget
    from bptt_cli.core.gradcheck import fixed_window, run_gradcheck
    from bptt_cli.trainer import gradcheck_slice

    with user_errors():
        cfg = cfgmod.load_config(config, set_)
        check_budget(cfg)
        params, x, targets, mask, act, loss = gradcheck_slice(cfg, max_steps=steps)
        T = x.shape[0]
        if modes:
            specs = cmp.parse_modes(modes)
        else:
            k = max(1, min(3, T - 1))
            specs = list(dict.fromkeys([cfg.truncation.spec, "full", f"k_truncated:{k}", f"subsequence:{k}", f"tbptt:{k}:{2 * k}"]))
            specs = [s for s in specs if fixed_window(s)]  # an adaptive or random mode has no one window to check
        setting = cfg.train.threads if threads_ is None else threads.parse_setting(threads_)
        with threads.limit(threads.choose(setting, batch=x.shape[1], hidden=cfg.model.hidden, dtype="float64")):
            rows = run_gradcheck(params, x, targets, mask, specs, activation=act, loss=loss, cell=cfg.model.cell)
    if as_json:
        out.print_json(json.dumps(runs._jsonable(rows)))
    else:
        out.print(render.gradcheck_table(rows, title=f"Gradient check: {cfg.task.name}, {act if cfg.model.cell == 'elman' else cfg.model.cell}, H={cfg.model.hidden}, T={T}, B={x.shape[1]}, float64"))
    bad = [r for r in rows if not r["ok"]]
    if bad:
        for r in bad:
            err.print(f"gradient check failed: {r['check']} {r['mode']} {r['param']}: relative error {r['rel_error']:.3g} > {r['tolerance']:.0e}", markup=False)
        raise typer.Exit(EXIT_FAILED)
    err.print(f"all {len(rows)} checks passed")


@app.command()
def estimators(
    config: Optional[Path] = typer.Argument(None, help="YAML config (omitted: the quickstart, or the run's config with --from)."),
    set_: list[str] = typer.Option([], "--set", help=SET_HELP),
    modes: Optional[str] = typer.Option(None, "--modes", help="Comma-separated truncation specs (default: the config's compare modes plus full)."),
    samples: int = typer.Option(20, "--samples", help="Estimates drawn per batch for a random mode (a deterministic mode takes one)."),
    batches: int = typer.Option(1, "--batches", help="Training batches the estimates are averaged over (the config's first N)."),
    from_run: Optional[Path] = typer.Option(None, "--from", help="Measure at this run's checkpoint instead of the initial weights."),
    seed: Optional[int] = typer.Option(None, "--seed", min=0, help="Seed of the random modes' draws (default: the config's seed)."),
    smoke: bool = typer.Option(False, "--smoke", help="Shrink the config first (as train --smoke: batch of at most 8)."),
    as_json: bool = typer.Option(False, "--json", help="Print the table as JSON on stdout."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the table as CSV to this file."),
    threads_: Optional[str] = typer.Option(None, "--threads", help=THREADS_HELP),
) -> None:
    """Bias, variance and cost of each truncation mode as an estimator of the full gradient, on fixed batches."""
    from bptt_cli import compare as cmp
    from bptt_cli import config as cfgmod
    from bptt_cli import estimators as est
    from bptt_cli import runs, threads

    with user_errors():
        est.check_options(samples, batches)
        if from_run is not None:
            if config is not None or set_ or smoke:
                raise fail("--from measures at a run's checkpoint with the run's own config; drop CONFIG, --set and --smoke")
            runs.load_run(from_run)  # a clear error for a folder that is not a run
            cfg = cfgmod.load_config(from_run / "config.yaml")
        else:
            cfg = cfgmod.load_config(config, set_)
            if smoke:
                cfg = cfgmod.smoke(cfg)
        specs = cmp.parse_modes(modes) if modes else est.default_modes(cfg)
        setting = cfg.train.threads if threads_ is None else threads.parse_setting(threads_)
        with threads.limit(threads.choose(setting, batch=cfg.train.batch_size, hidden=cfg.model.hidden, dtype="float64")):
            problem = est.load_problem(cfg, from_run=from_run, batches=batches)
            result = est.measure(problem, specs, samples=samples, seed=cfg.seed if seed is None else seed)
        result["meta"].update(config=cfg.name, task=cfg.task.name)
        if csv_path is not None:
            est.write_csv(result, csv_path)
    if as_json:
        out.print_json(json.dumps(runs._jsonable(result)))
    else:
        out.print(render.estimators_table(result))
    if csv_path is not None:
        err.print(f"wrote {csv_path}", markup=False)


@app.command()
def plot(
    paths: list[Path] = typer.Argument(..., help="Run or compare directories (or quoted globs), overlaid and grouped by the config keys that differ."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Image to write (default: PATH/plot.FORMAT for one path, plot.FORMAT here for several)."),
    size: Optional[str] = typer.Option(None, "--size", help="Figure size in inches, WIDTHxHEIGHT (default: 11 wide, 3.4 per row of panels)."),
    dpi: int = typer.Option(150, "--dpi", help="Resolution of a PNG (20 to 1200)."),
    format_: Optional[str] = typer.Option(None, "--format", help="png, svg or pdf (default: --out's suffix, else png)."),
) -> None:
    """Plot loss, held-out metric with its chance level, gradient norm, and gradient flow and truncation bias
    when diagnostics were logged; seeds as mean and band (needs the plot extra)."""
    from bptt_cli import plot as plotmod

    with user_errors():
        fmt = plotmod.output_format(out_file, format_)
        figsize = plotmod.parse_size(size) if size is not None else None
        default = (paths[0] if len(paths) == 1 and paths[0].is_dir() else Path(".")) / f"plot.{fmt}"
        written = plotmod.plot(
            paths, out_file or default, size=figsize, dpi=dpi, fmt=fmt, on_skip=lambda p, e: err.print(f"skipping {p}: {e}", markup=False)
        )
    err.print(f"wrote {written}", markup=False)


@app.command()
def export(
    paths: list[Path] = typer.Argument(..., help="Run directories and/or compare directories."),
    to: str = typer.Option(..., "--to", help="tensorboard or mlflow."),
    uri: Optional[str] = typer.Option(None, "--uri", help="tensorboard: the folder for event files (default ./tensorboard); mlflow: the tracking URI (default: MLflow's)."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="mlflow: the experiment (default: each run's name)."),
) -> None:
    """Send existing runs and compares to TensorBoard or MLflow from their files (needs the tensorboard or mlflow extra)."""
    from bptt_cli import tracking

    failed = 0

    def show(row: dict) -> None:
        nonlocal failed
        failed += row["status"] == "failed"
        why = row.get("where") if row["status"] == "exported" else row.get("why") or row.get("error")
        err.print(f"{row['status']}: {row['path']}" + (f" -> {why}" if why else ""), markup=False)

    with user_errors():
        tracking.export(paths, to, uri=uri, experiment=experiment, on_done=show)
    raise typer.Exit(EXIT_FAILED if failed else 0)


@app.command()
def version() -> None:
    """Print the version of bptt (also: bptt --version)."""
    _print_version(True)


def main() -> None:
    """Console-script entry point."""
    # pydantic looks through every installed distribution for plugins the first time a model
    # is built (28 ms of a 1 s quickstart); bptt uses none. A user's own setting is kept.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    app()


if __name__ == "__main__":
    main()
