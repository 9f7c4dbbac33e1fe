"""Tracking: a run's records sent to TensorBoard and MLflow as they come; finished runs exported.

    session.execute --record--> Tracker --queue--> thread --> TensorBoard event files
                                        \\-queue--> thread --> MLflow (batched log_batch calls)

What is sent, the same live (``tracking:`` in the config) and from a run's files (``export``):
  params   the config flattened to dotted keys (TensorBoard: hparams and a text panel; MLflow: params)
  metrics  every numeric field of each record written to metrics.jsonl, eval.jsonl and
           diagnostics.jsonl, as ``train/<key>`` (``train/grad_norm.W_hh`` per parameter),
           ``eval/<key>`` and ``diagnostics/<path>``, at x = the record's optimizer update
  tags     name, task, mode, update_every, seed, status (MLflow tags; TensorBoard text)
  files    config.yaml, summary.json and plot.png (when matplotlib is installed)

A compare's variants are runs grouped under the compare: TensorBoard subfolders (one per
variant, so ``tensorboard --logdir`` on the compare overlays them) and MLflow child runs of a
parent run made for the compare (``start_compare``; its id is kept in the compare directory's
``tracking.json`` for the variants, which may run in other processes).

Each backend runs in a thread of its own behind a queue, so a slow or unreachable server never
holds the training loop up. A backend that raises (not installed, a bad URI, an error
mid-run) is dropped at that point with its error kept and the run goes on; summary.json's
``tracking`` says what each backend did. Nothing here changes a number the run computes.
"""

from __future__ import annotations

import copy
import json
import math
import os
import queue
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

from bptt_cli import runs
from bptt_cli.core.errors import BpttError

WAIT = 60.0  # seconds the end of a run waits for a backend to send what is still queued
MAX_QUEUED = 100_000  # records waiting for one backend before it is given up on (memory stays bounded)
PLOT = "plot.png"
COMPARE_FILE = "tracking.json"  # in a compare directory: the MLflow parent run of its variants
_STATUS = {"completed": "FINISHED", "diverged": "FINISHED", "interrupted": "KILLED"}  # else FAILED


class TrackingError(BpttError, ValueError):
    """An export that cannot be done as asked (a path that is no run, an unknown backend)."""


# -- what is sent ---------------------------------------------------------------------------
def _number(v: Any) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and math.isfinite(float(v)):
        return float(v)
    return None  # None (a non-finite value as JSON keeps it), strings, lists


_SKIP = {"metrics": ("step", "update", "chunk", "time"), "eval": ("step", "update", "time"), "diagnostics": ("step", "update")}
_PREFIX = {"metrics": "train", "eval": "eval", "diagnostics": "diagnostics"}


def metric_values(log: str, record: dict) -> tuple[int, dict[str, float]]:
    """(x, {tag: value}) of one log record: x is its optimizer update (its step if it has none);
    lists (the lag profile's norms) and values that are not finite numbers are left out."""
    x = record.get("update", record.get("step", 0))
    rest = {k: v for k, v in record.items() if k not in _SKIP[log]}
    values = {}
    for k, v in runs.flatten(rest).items():
        n = _number(v)
        if n is not None:
            values[f"{_PREFIX[log]}/{k}"] = n
    return int(x), values


def params_of(config: dict) -> dict[str, str | float | bool]:
    """The flattened config with values a tracker takes (numbers, booleans, strings)."""
    out: dict[str, str | float | bool] = {}
    for k, v in runs.flatten(config).items():
        out[k] = v if isinstance(v, (str, bool, int, float)) else json.dumps(v)
    return out


def _spec(config: dict) -> str:
    """The truncation spec (k_truncated:5) of a config's plain data."""
    from bptt_cli.config import from_dict

    try:
        return from_dict(config).truncation.spec
    except Exception:  # a config some other version wrote: its mode, as written
        trunc = config.get("truncation") or {}
        return str(trunc.get("mode", "")) if isinstance(trunc, dict) else str(trunc)


def tags_of(config: dict, summary: dict | None = None) -> dict[str, str]:
    mode = (summary or {}).get("truncation") or _spec(config)
    tags = {
        "bptt.name": str(config.get("name", "")),
        "bptt.task": str((config.get("task") or {}).get("name", "")),
        "bptt.mode": str(mode),
        "bptt.seed": str(config.get("seed", "")),
    }
    if summary:
        tags["bptt.status"] = str(summary.get("status", ""))
        if summary.get("update_every"):
            tags["bptt.update_every"] = str(summary["update_every"])
    return tags


@dataclass
class RunInfo:
    """One run as the backends see it."""

    run_dir: Path
    config: dict  # plain data (config.to_dict)
    label: str  # its place under a shared root: name/run id, or name/compare id/variant id
    compare_dir: Path | None = None  # the compare it is a variant of
    resume_update: int | None = None  # resuming: updates already done (TensorBoard drops later events)
    previous: dict = field(default_factory=dict)  # the previous session's summary["tracking"]


def run_info(run_dir: Path, config: dict, *, resume_update: int | None = None, previous: dict | None = None) -> RunInfo:
    run_dir = Path(run_dir).resolve()
    compare_dir = run_dir.parent if (run_dir.parent / "plan.json").is_file() else None
    label = "/".join(run_dir.parts[-3:] if compare_dir else run_dir.parts[-2:])
    return RunInfo(run_dir, config, label, compare_dir, resume_update, previous or {})


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


# -- backends ---------------------------------------------------------------------------------
class TensorBoard:
    """Event files written with tensorboardX (which needs no deep-learning framework)."""

    name = "tensorboard"

    def __init__(self, logdir: Path) -> None:
        self.logdir = Path(logdir)
        self.writer = None

    def start(self, info: RunInfo) -> dict:
        SummaryWriter, _ = _tensorboardx()
        self.logdir.mkdir(parents=True, exist_ok=True)
        # purge_step: a resumed run's earlier session may have logged past its checkpoint;
        # TensorBoard drops those events in favour of the new ones.
        purge = None if info.resume_update is None else info.resume_update + 1
        if purge is None and any(self.logdir.glob("events.out.tfevents.*")):
            purge = 0  # a variant started again from scratch: its earlier attempt's events go
        self.writer = SummaryWriter(logdir=str(self.logdir), purge_step=purge, flush_secs=10)
        lines = "\n".join(f"    {k}: {v}" for k, v in params_of(info.config).items())
        self.writer.add_text("config", lines, 0)
        return {"logdir": str(self.logdir)}

    def log(self, x: int, values: dict[str, float]) -> None:
        for tag, v in values.items():
            self.writer.add_scalar(tag, v, x)

    def finish(self, info: RunInfo, summary: dict, files: dict[str, Path]) -> None:
        _, hparams = _tensorboardx()
        w = self.writer
        final = {"/".join(k.split(".", 1)): v for k, v in (summary.get("final") or {}).items() if _number(v) is not None}
        for s in hparams(hparam_dict=params_of(info.config), metric_dict=final):
            w.file_writer.add_summary(s)
        tags = tags_of(info.config, summary)
        w.add_text("tags", "\n".join(f"    {k}: {v}" for k, v in tags.items()), summary.get("updates") or 0)
        w.add_text("summary", "\n".join("    " + line for line in json.dumps(summary, indent=2).splitlines()), summary.get("updates") or 0)
        if PLOT in files:
            import matplotlib.image

            img = matplotlib.image.imread(str(files[PLOT]))[..., :3]  # (H, W, 3) floats in [0, 1]
            w.add_image("plot", (img * 255).astype("uint8"), summary.get("updates") or 0, dataformats="HWC")
        self.close()

    def close(self) -> None:
        if self.writer is not None:
            w, self.writer = self.writer, None
            w.close()


def _tensorboardx():
    """(SummaryWriter, hparams). tensorboardX imports torch when it is installed (for torch
    tensors we never pass): 1.5 s of every run's start here, so it is hidden during the import."""
    hidden = "torch" not in sys.modules
    if hidden:
        sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail fast
    try:
        from tensorboardX import SummaryWriter
        from tensorboardX.summary import hparams
    except ImportError as e:
        raise ImportError(f"tensorboardX is not installed ({e}); pip install 'bptt[tensorboard]'") from None
    finally:
        if hidden and sys.modules.get("torch", 0) is None:
            del sys.modules["torch"]
    return SummaryWriter, hparams


_MLFLOW_KEY = re.compile(r"[^\w\-. /]")  # MLflow's names take letters, digits, _ - . / and spaces


def mlflow_key(tag: str) -> str:
    """A metric or param name MLflow accepts: eval/accuracy@d=8 -> eval/accuracy_d_8."""
    return _MLFLOW_KEY.sub("_", tag)


class MLflow:
    """One MLflow run per bptt run, through ``MlflowClient`` (no global active run, so runs in
    threads of one process never mix). Metrics go in batches of up to 900 every few seconds."""

    name = "mlflow"
    BATCH, EVERY = 900, 5.0

    def __init__(self, uri: str | None, experiment: str | None, *, parent: str | None = None) -> None:
        self.uri, self.experiment, self.parent = uri, experiment, parent
        self.client = None
        self.run_id: str | None = None
        self._buffer: list = []
        self._flushed = time.monotonic()

    def _connect(self):
        try:
            import mlflow  # noqa: F401
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise ImportError(f"mlflow is not installed ({e}); pip install 'bptt[mlflow]'") from None
        import logging

        for name in ("mlflow.store.db.utils", "alembic.runtime.migration"):  # a new store's table set-up, not news
            logging.getLogger(name).setLevel(logging.WARNING)
        self.client = MlflowClient(tracking_uri=self.uri)
        return self.client

    def experiment_id(self, name: str) -> str:
        client = self.client
        exp = client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        try:
            return client.create_experiment(name, artifact_location=artifact_location(client.tracking_uri, name))
        except Exception:  # another variant created it a moment ago
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
            return exp.experiment_id

    def find_run(self, exp_id: str, tag: str, value: str) -> str | None:
        """The id of the run in ``exp_id`` whose tag ``tag`` is ``value``, or None."""
        if "'" in value:
            return None  # MLflow's filter strings cannot quote it
        found = self.client.search_runs([exp_id], filter_string=f"tags.`{tag}` = '{value}'", max_results=1)
        return found[0].info.run_id if found else None

    def start(self, info: RunInfo) -> dict:
        from mlflow.entities import Param

        client = self._connect()
        exp_name = self.experiment or str(info.config.get("name") or "bptt")
        exp_id = self.experiment_id(exp_name)
        parent = self.parent
        if parent is None and info.compare_dir is not None:
            parent = (_read_compare_file(info.compare_dir).get("mlflow") or {}).get("run_id")
        before = info.previous.get("mlflow") or {}
        same_store = before.get("uri") in (None, client.tracking_uri) and before.get("experiment_id") in (None, exp_id)
        old = before.get("run_id") if info.resume_update is not None and same_store else None
        if old is None and info.resume_update is not None:
            old = self.find_run(exp_id, "bptt.run_dir", str(info.run_dir))
        if old is not None:
            self.run_id = old
            client.update_run(old, status="RUNNING")
        else:
            tags = {**tags_of(info.config), "bptt.run_dir": str(info.run_dir)}
            if parent:
                tags["mlflow.parentRunId"] = parent
            if info.compare_dir is not None:
                tags["bptt.compare_dir"] = str(info.compare_dir)
            name = info.run_dir.name if info.compare_dir else info.label.replace("/", "-")
            self.run_id = client.create_run(exp_id, tags=tags, run_name=name).info.run_id
            items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params_of(info.config).items()]
            for i in range(0, len(items), 100):
                client.log_batch(self.run_id, params=items[i : i + 100])
        out = {"uri": client.tracking_uri, "experiment": exp_name, "experiment_id": exp_id, "run_id": self.run_id}
        if parent:
            out["parent_run_id"] = parent
        return out

    def log(self, x: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(mlflow_key(k), v, now, x) for k, v in values.items())
        if len(self._buffer) >= self.BATCH or time.monotonic() - self._flushed > self.EVERY:
            self.flush()

    def flush(self) -> None:
        while self._buffer:
            batch, self._buffer = self._buffer[: self.BATCH], self._buffer[self.BATCH :]
            self.client.log_batch(self.run_id, metrics=batch)
        self._flushed = time.monotonic()

    def finish(self, info: RunInfo, summary: dict, files: dict[str, Path]) -> None:
        from mlflow.entities import RunTag

        self.flush()
        tags = tags_of(info.config, summary)
        self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in tags.items()])
        for path in files.values():
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status=_STATUS.get(summary.get("status"), "FAILED"))

    def close(self) -> None:
        self._buffer.clear()


ARTIFACTS = "mlartifacts"  # beside a sqlite store: <db folder>/mlartifacts/<experiment>/<run id>/artifacts


def artifact_location(uri: str | None, experiment: str) -> str | None:
    """Where a new experiment in the store ``uri`` keeps its runs' files, so a run writes only
    to its run directory and the store it was given: beside a sqlite store's file
    (``<db folder>/mlartifacts/<experiment>``), where MLflow's own default is ./mlruns in
    the current directory. None (the store decides) for a file store, which keeps them in
    its own folder, and for servers and other databases."""
    if not uri or not uri.startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///") :].split("?", 1)[0]  # sqlite:////abs/x.db -> /abs/x.db; sqlite:///x.db: relative
    if not db or db == ":memory:":
        return None
    folder = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment).strip("._") or "experiment"
    return (Path(db).expanduser().resolve().parent / ARTIFACTS / folder).as_uri()


def _read_compare_file(compare_dir: Path) -> dict:
    p = Path(compare_dir) / COMPARE_FILE
    if not p.is_file() or p.is_symlink():
        return {}
    try:
        from bptt_cli import safeio

        data = safeio.read_json(p)
    except Exception:
        return {}
    return data if isinstance(data, dict) else {}


def backends_for(tracking: dict | None, info: RunInfo) -> list:
    """The backends a config's ``tracking`` section (plain data) asks for."""
    tracking = tracking or {}
    out: list = []
    tb = tracking.get("tensorboard")
    if tb:
        out.append(TensorBoard(info.run_dir / "tensorboard" if tb is True else Path(tb).expanduser().resolve() / info.label))
    ml = tracking.get("mlflow")
    if ml is not None:
        out.append(MLflow(ml.get("uri"), ml.get("experiment")))
    return out


# -- live: one thread per backend -----------------------------------------------------------
class _Worker:
    """Runs one backend's calls in order in a daemon thread. The first call that raises marks
    the backend failed (with where and why), closes it, and every later call is dropped."""

    def __init__(self, backend) -> None:
        self.backend = backend
        self.result: dict = {"status": "running"}
        self._queue: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"bptt-{backend.name}", daemon=True)
        self._thread.start()

    def put(self, *call) -> None:
        if self.result["status"] == "failed":
            return
        if self._queue.qsize() >= MAX_QUEUED:  # a backend stuck (a server that never answers): stop feeding it
            self.result.update(status="failed", error=f"fell behind ({MAX_QUEUED:,} records waiting); dropped (the run went on)")
            return
        self._queue.put(call)

    def _loop(self) -> None:
        while True:
            call = self._queue.get()
            if call is None:
                return
            if self.result["status"] == "failed":
                continue
            what, args = call[0], call[1:]
            try:
                out = getattr(self.backend, what)(*args)
                if self.result["status"] == "failed":  # given up on from outside meanwhile
                    continue
                if what == "start":
                    self.result.update(out or {}, status="ok")
                elif what == "finish":
                    self.result["status"] = "ok"
            except Exception as e:
                where = {"start": "at the start", "log": f"at update {args[0]}", "finish": "at the end"}[what]
                self.result.update(status="failed", error=f"{_first_line(e)} ({where}; the run went on)")
                try:
                    self.backend.close()
                except Exception:
                    pass

    def end(self, deadline: float) -> dict:
        self._queue.put(None)
        try:
            self._thread.join(max(0.0, deadline - time.monotonic()))
        except KeyboardInterrupt:  # a second Ctrl-C: stop waiting for the tracker
            pass
        if self._thread.is_alive():
            self.result.update(status="failed", error=f"still sending after {WAIT:.0f} s at the end of the run; gave up (the run itself is complete)")
        return dict(self.result)


class Tracker:
    """The live consumer of a run's records (``session.execute`` feeds it the lines it writes)."""

    def __init__(self, info: RunInfo, backends: list) -> None:
        self.info = info
        self.workers = {b.name: _Worker(b) for b in backends}
        for w in self.workers.values():
            w.put("start", info)

    def record(self, log: str, record: dict) -> None:
        try:
            x, values = metric_values(log, record)  # fresh floats: the record may change after this
        except Exception:
            return
        if values:
            for w in self.workers.values():
                w.put("log", x, values)

    def finish(self, summary: dict) -> dict:
        """Send the final summary and files, wait (at most ``WAIT`` s) and return what each
        backend did, for summary.json's ``tracking``. Never raises."""
        tmp = Path(tempfile.mkdtemp(prefix="bptt-tracking-"))
        out: dict = {}
        try:
            files, notes = run_files(self.info.run_dir, summary, tmp)
            sent = copy.deepcopy(summary)  # the caller adds to its summary while a backend may still read this one
            for w in self.workers.values():
                w.put("finish", self.info, sent, files)
            deadline = time.monotonic() + WAIT
            out = {name: w.end(deadline) for name, w in self.workers.items()}
            if notes:
                out["notes"] = notes
        except (Exception, KeyboardInterrupt) as e:  # never let tracking end a run badly (a 2nd Ctrl-C: stop waiting)
            out["error"] = _first_line(e)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return out


def problems(summary: dict) -> list[str]:
    """One line per tracking backend of a run's summary that did not do its job (for stderr)."""
    t = summary.get("tracking")
    if not isinstance(t, dict):
        return []
    out = [f"tracking: {name} failed: {r.get('error')}" for name, r in t.items() if isinstance(r, dict) and r.get("status") == "failed"]
    if isinstance(t.get("error"), str):
        out.append(f"tracking failed: {t['error']}")
    return out


def start(config: dict, run_dir: Path, *, resume_update: int | None = None, previous: dict | None = None) -> Tracker | None:
    """A Tracker for the run in ``run_dir`` when its config (plain data) asks for one, else None."""
    tracking = config.get("tracking")
    if not tracking:
        return None
    info = run_info(run_dir, config, resume_update=resume_update, previous=previous)
    backends = backends_for(tracking, info)
    return Tracker(info, backends) if backends else None


def run_files(run_dir: Path, summary: dict, tmp: Path) -> tuple[dict[str, Path], list[str]]:
    """The files sent with a run: config.yaml, summary.json (``summary`` as given) and the
    plot, drawn into ``tmp`` when matplotlib is installed. (files, notes on what was left out)."""
    files: dict[str, Path] = {}
    notes: list[str] = []
    if (Path(run_dir) / "config.yaml").is_file():
        files["config.yaml"] = Path(run_dir) / "config.yaml"
    (tmp / "summary.json").write_text(json.dumps(runs._jsonable(summary), indent=2) + "\n")
    files["summary.json"] = tmp / "summary.json"
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        notes.append("no plot: matplotlib is not installed (pip install 'bptt[plot]')")
        return files, notes
    try:
        from bptt_cli import plot as plotmod

        out = Path(plotmod.plot(Path(run_dir), tmp / PLOT))
        if out.is_file():
            files[PLOT] = out
    except Exception as e:
        notes.append(f"no plot: {_first_line(e)}")
    return files, notes


# -- compares -------------------------------------------------------------------------------
def start_compare(compare_dir: Path, config: dict) -> dict:
    """Before a compare's variants run: the MLflow parent run they are grouped under (made once;
    a ``--resume`` finds it in ``tracking.json``). Returns what was done, {} when MLflow is off;
    a failure is returned, not raised (the variants then log without a parent)."""
    ml = (config.get("tracking") or {}).get("mlflow")
    if ml is None:
        return {}
    compare_dir = Path(compare_dir).resolve()
    known = _read_compare_file(compare_dir).get("mlflow") or {}
    if known.get("run_id"):
        return known
    backend = MLflow(ml.get("uri"), ml.get("experiment"))
    try:
        result = _parent_run(backend, compare_dir, config)
    except Exception as e:
        result = {"status": "failed", "error": f"{_first_line(e)} (the variants log without a parent run)"}
    runs.atomic_write(compare_dir / COMPARE_FILE, (json.dumps({"mlflow": result}, indent=2) + "\n").encode())
    return result


def _parent_run(backend: MLflow, compare_dir: Path, config: dict) -> dict:
    from mlflow.entities import Param

    client = backend._connect()
    exp_name = backend.experiment or str(config.get("name") or "bptt")
    exp_id = backend.experiment_id(exp_name)
    tags = {**tags_of(config), "bptt.compare_dir": str(compare_dir), "bptt.kind": "compare"}
    tags.pop("bptt.mode")
    tags.pop("bptt.seed")
    run_id = client.create_run(exp_id, tags=tags, run_name=f"{compare_dir.parent.name}-{compare_dir.name}").info.run_id
    items = [Param(mlflow_key(k), str(v)[:6000]) for k, v in params_of({k: v for k, v in config.items() if k != "compare"}).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    return {"status": "ok", "uri": client.tracking_uri, "experiment": exp_name, "experiment_id": exp_id, "run_id": run_id}


def finish_compare(compare_dir: Path, config: dict, *, status: str = "completed") -> dict:
    """After a compare: its tables (compare.json, compare.csv and the rest) as artifacts of the
    parent run, which ends FINISHED (KILLED when interrupted). What was done; never raises."""
    parent = _read_compare_file(compare_dir).get("mlflow") or {}
    ml = (config.get("tracking") or {}).get("mlflow")
    if ml is None or not parent.get("run_id"):
        return parent
    try:
        backend = MLflow(parent.get("uri") or ml.get("uri"), ml.get("experiment"))
        client = backend._connect()
        for p in sorted(Path(compare_dir).glob("compare*")):
            if p.is_file() and not p.is_symlink():
                client.log_artifact(parent["run_id"], str(p))
        client.set_terminated(parent["run_id"], status=_STATUS.get(status, "FAILED"))
        return {**parent, "status": "ok"}
    except Exception as e:
        return {**parent, "status": "failed", "error": _first_line(e)}


# -- export: the same for runs that exist ---------------------------------------------------
TARGETS = ("tensorboard", "mlflow")


def export(paths: Iterable[Path], to: str, *, uri: str | None = None, experiment: str | None = None,
           on_done: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """Send runs and compares that exist, from their files, to TensorBoard (event files under
    ``uri``, default ./tensorboard, by run name) or MLflow (tracking URI ``uri``, MLflow's
    default when None; experiment ``experiment``, default each run's name). One row per run:
    path, status (exported, skipped, failed) and where it went or why not. A run already
    exported there is skipped. Errors of one run never stop the others."""
    if to not in TARGETS:
        raise TrackingError(f"--to must be one of {', '.join(TARGETS)}, got {to!r}")
    rows: list[dict] = []

    def done(row: dict) -> None:
        rows.append(row)
        if on_done is not None:
            on_done(row)

    for path in _expand(paths):
        if (path / "plan.json").is_file():
            _export_compare(path, to, uri, experiment, done)
        elif runs.is_run_dir(path):
            done(_export_run(path, to, uri, experiment))
        else:
            raise TrackingError(f"{path} is neither a run directory (config.yaml) nor a compare directory (plan.json)")
    return rows


def _expand(paths: Iterable[Path]) -> list[Path]:
    """The runs and compares to export: each path as given; a pattern with * ? [ that names no
    file expanded (a glob the shell did not see, being quoted); a folder that is neither a run
    nor a compare (``runs/``, ``runs/delay``) replaced by the compares and the runs outside
    compares under it. TrackingError for a pattern or folder with none."""
    import glob

    out: list[Path] = []
    for p in paths:
        text = str(p)
        if not os.path.lexists(text) and any(c in text for c in "*?["):
            found = [Path(f) for f in sorted(glob.glob(text))]
            found = [f for f in found if f.is_dir() and ((f / "plan.json").is_file() or runs.is_run_dir(f))]
            if not found:
                raise TrackingError(f"{text} matches no run or compare directory")
            out.extend(found)
        elif Path(p).is_dir() and not runs.is_run_dir(Path(p)) and not (Path(p) / "plan.json").is_file():
            compares = sorted(q.parent for q in Path(p).rglob("plan.json") if q.is_file())
            inside = [r for r in runs.find_runs(Path(p)) if r.parent not in compares]
            if not compares and not inside:
                raise TrackingError(f"{p} is neither a run directory (config.yaml) nor a compare directory (plan.json), and holds none")
            out.extend(sorted([*compares, *inside]))
        else:
            out.append(Path(p))
    return out


def _target(to: str, uri: str | None, experiment: str | None, info: RunInfo, parent: str | None = None):
    if to == "tensorboard":
        return TensorBoard(Path(uri or "tensorboard").expanduser().resolve() / info.label)
    return MLflow(uri, experiment, parent=parent)


def _export_run(path: Path, to: str, uri: str | None, experiment: str | None, parent: str | None = None) -> dict:
    row: dict = {"path": str(path), "to": to}
    try:
        run = runs.load_run(path)
    except BpttError as e:
        return {**row, "status": "failed", "error": str(e)}
    info = run_info(path, run.config)
    backend = _target(to, uri, experiment, info, parent)
    tmp = Path(tempfile.mkdtemp(prefix="bptt-export-"))
    try:
        if isinstance(backend, TensorBoard) and backend.logdir.is_dir() and any(backend.logdir.glob("events.out.tfevents.*")):
            return {**row, "status": "skipped", "where": str(backend.logdir), "why": "already exported there (remove the folder to export again)"}
        if isinstance(backend, MLflow):
            backend._connect()
            exp_id = backend.experiment_id(experiment or str(run.config.get("name") or "bptt"))
            found = backend.find_run(exp_id, "bptt.run_dir", str(info.run_dir))
            if found:
                return {**row, "status": "skipped", "where": found, "why": f"already in MLflow as run {found}"}
        where = backend.start(info)
        for log in runs.LOGS:
            for rec in getattr(run, log):
                x, values = metric_values(log, rec)
                if values:
                    backend.log(x, values)
        files, _ = run_files(path, run.summary, tmp)
        backend.finish(info, run.summary, files)
        return {**row, "status": "exported", "where": where.get("logdir") or where.get("run_id")}
    except Exception as e:
        try:
            backend.close()
        except Exception:
            pass
        return {**row, "status": "failed", "error": _first_line(e)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _export_compare(path: Path, to: str, uri: str | None, experiment: str | None, done: Callable[[dict], None]) -> None:
    from bptt_cli import compare as cmp

    try:
        variants, meta = cmp.read_plan(path)
        cmp.check_variant_dirs(path, variants)
    except BpttError as e:
        done({"path": str(path), "to": to, "status": "failed", "error": str(e)})
        return
    parent = None
    if to == "mlflow":
        base = dict(meta.get("base_config") or {})
        backend = MLflow(uri, experiment)
        try:
            backend._connect()
            exp_id = backend.experiment_id(experiment or str(base.get("name") or "bptt"))
            parent = backend.find_run(exp_id, "bptt.compare_dir", str(Path(path).resolve()))
            if parent is None:
                parent = _parent_run(backend, Path(path).resolve(), base)["run_id"]
                for p in sorted(Path(path).glob("compare*")):
                    if p.is_file() and not p.is_symlink():
                        backend.client.log_artifact(parent, str(p))
                backend.client.set_terminated(parent, status="FINISHED")
        except Exception as e:
            done({"path": str(path), "to": to, "status": "failed", "error": _first_line(e)})
            return
    for v in variants:
        d = Path(path) / v.id
        if runs.is_run_dir(d):
            done(_export_run(d, to, uri, experiment, parent))
        else:
            done({"path": str(d), "to": to, "status": "skipped", "why": "the variant never started"})
