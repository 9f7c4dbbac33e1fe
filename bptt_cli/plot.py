"""``bptt plot``: figures of runs and compare directories for a talk (the ``plot`` extra).

The runs given (run directories, compare directories, quoted globs) are grouped by the config
keys that differ between them (``views.side_by_side``); each group is one line: the mean over
its seeds, with a shaded band from the lowest to the highest seed. Panels are chosen from what
was logged, each drawn from the run files alone:

    loss        training loss per step (line) and held-out loss (markers)        always
    metric      the held-out accuracy / bpc / error rate, with the chance line   when evaluated
    grad norm   ||g|| before clipping per step, the clip threshold dashed        always
    flow        mean ||dL_t/dh_{t-j}|| against lag j, first and last pass      when diagnostics ran
    flow of c   the same for the LSTM's cell state c, beside each flow panel     when an lstm logged it
    bias        cosine to the full-BPTT gradient over training                   when diagnostics ran
                                                                                 on a truncated mode

A y axis is logarithmic where its values span two decades or more (one diverging run must
not flatten the rest), the loss axis already when the loss falls five-fold. The first differing key sets the colour, the second the line style
(third: the marker), so thresholds of one mode never share a style; the legend sits outside
the panels, and the title says what the runs share, from their configs.
"""

from __future__ import annotations

import io
import math
import statistics
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bptt_cli import runs
from bptt_cli.core.errors import BpttError

INSTALL_HINT = 'bptt plot needs matplotlib: pip install -e ".[plot]"'
FORMATS = ("png", "svg", "pdf")
METRICS = ("accuracy", "bpc", "error_rate")  # the headline held-out metric, first found
STYLES = ("-", "--", ":", "-.")
MARKERS = ("o", "s", "^", "D", "v", "P")
DECADES = 100.0  # max/min at which an axis turns logarithmic
LOSS_FOLD = 5.0  # a loss that falls five-fold is read on a log axis (its late differences are what matter)


class PlotUnavailable(BpttError):
    """matplotlib is not installed."""


class PlotError(BpttError, ValueError):
    """The figure cannot be written where or as asked."""


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    return plt


def parse_size(text: str) -> tuple[float, float]:
    """``12x8`` (inches, width x height)."""
    try:
        w, h = (float(x) for x in text.lower().split("x"))
    except ValueError:
        raise PlotError(f"--size takes WIDTHxHEIGHT in inches, e.g. 12x8; got {text!r}") from None
    if not (1 <= w <= 100 and 1 <= h <= 100):
        raise PlotError(f"--size {text}: width and height must be between 1 and 100 inches")
    return w, h


def output_format(out: Path | None, fmt: str | None) -> str:
    """The format from --format or --out's suffix (png when neither says); a mismatch is refused."""
    suffix = out.suffix.lstrip(".").lower() if out is not None and out.suffix else None
    if fmt is not None and fmt not in FORMATS:
        raise PlotError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if suffix is not None and suffix not in FORMATS:
        raise PlotError(f"--out {out}: cannot write .{suffix}; use one of: {', '.join('.' + f for f in FORMATS)}")
    if fmt is not None and suffix is not None and fmt != suffix:
        raise PlotError(f"--out {out} ends in .{suffix} but --format is {fmt}; make them agree")
    return fmt or suffix or "png"


def load_variants(path: Path, on_skip: Callable[[Path, Exception], None] | None = None) -> list[tuple[str, runs.Run]]:
    """(label, run) for a run directory or each variant of a compare directory (kept for
    callers of the one-path form; ``plot`` groups by ``views``)."""
    from bptt_cli import views

    loaded = views.gather([Path(path)], logs=True, on_skip=on_skip)
    view = views.side_by_side(loaded)
    label = {p: r["label"] for r in view["rows"] for p in r["paths"]}
    return [(label[str(run.path)], run) for run in loaded]


# -- series -----------------------------------------------------------------------------------
def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _per_step(records: Iterable[dict], key: str) -> dict[int, float]:
    """{step: mean of the records' ``key`` at that step} (several updates per step in chunk mode)."""
    acc: dict[int, list[float]] = {}
    for r in records:
        v = r.get(key)
        if _finite(v):
            acc.setdefault(r["step"], []).append(float(v))
    return {s: sum(v) / len(v) for s, v in acc.items()}


def _band(series: Sequence[dict[Any, float]]) -> tuple[list, list[float], list[float], list[float]]:
    """(x, mean, low, high) over the seeds' series at every x that any of them has."""
    xs = sorted({x for s in series for x in s})
    mean, lo, hi = [], [], []
    for x in xs:
        vals = [s[x] for s in series if x in s]
        mean.append(statistics.fmean(vals))
        lo.append(min(vals))
        hi.append(max(vals))
    return xs, mean, lo, hi


def _spans_decades(values: Iterable[float], ratio: float = DECADES) -> bool:
    vals = [v for v in values if _finite(v)]
    return bool(vals) and min(vals) > 0 and max(vals) / min(vals) >= ratio


def _minor_label(v: float, _pos: Any = None) -> str:
    """Minor ticks of a log axis labelled at 2, 3 and 5 times a power of ten only."""
    if v <= 0:
        return ""
    mantissa = v / 10 ** math.floor(math.log10(v) + 1e-9)
    return f"{v:g}" if any(abs(mantissa - m) < 1e-6 for m in (2, 3, 5)) else ""


def _diag(run: runs.Run, section: str, key: str) -> dict[int, float]:
    return {d["step"]: d[section][key] for d in run.diagnostics if _finite((d.get(section) or {}).get(key))}


def _flow(run: runs.Run, which: int, key: str = "norms") -> dict[int, float]:
    """{lag: mean norm} of the run's first (``which`` 0) or last (-1) gradient-flow pass;
    ``key`` norms_c: the LSTM's cell state ({} for a run that did not log it)."""
    passes = [d for d in run.diagnostics if (d.get("flow") or {}).get("norms")]
    if not passes:
        return {}
    flow = passes[which]["flow"]
    return {j: n for j, n in zip(flow.get("lags", []), flow.get(key) or []) if _finite(n) and n > 0}


def _flow_passes(run: runs.Run) -> list[int]:
    return [d.get("update", d["step"]) for d in run.diagnostics if (d.get("flow") or {}).get("norms")]


# -- the figure -------------------------------------------------------------------------------
def _styles(rows: list[dict], keys: list[str], palette: list[str]) -> list[dict]:
    """Colour from the first differing key, line style from the second, marker from the third;
    with one key (or none) each group gets its own colour and line style."""
    def index(k: str) -> dict[str, int]:
        return {v: i for i, v in enumerate(dict.fromkeys(str(r.get(k)) for r in rows))}

    out = []
    if len(keys) >= 2:
        c, s = index(keys[0]), index(keys[1])
        m = index(keys[2]) if len(keys) > 2 else {}
        for r in rows:
            out.append({"color": palette[c[str(r.get(keys[0]))] % len(palette)], "ls": STYLES[s[str(r.get(keys[1]))] % len(STYLES)],
                        "marker": MARKERS[m[str(r.get(keys[2]))] % len(MARKERS)] if m else None})  # fmt: skip
    else:
        for i, _ in enumerate(rows):
            out.append({"color": palette[i % len(palette)], "ls": STYLES[(i // len(palette) + i) % len(STYLES)], "marker": None})
    return out


def style_keys(rows: list[dict], keys: list[str]) -> list[str]:
    """The differing keys that tell the groups apart, less any that restates another one value
    for value (clip.mode none exactly where clip.threshold is none): of such a pair the one
    with numbers stays, so a grid's own key names the lines."""
    def values(k: str) -> list[str]:
        return [str(r.get(k)) for r in rows]

    def numeric(k: str) -> bool:
        return any(isinstance(r.get(k), (int, float)) and not isinstance(r.get(k), bool) for r in rows)

    def drop(a: str, b: str) -> str:
        if "model.cell" in (a, b):  # the cell names a line better than the size matched to it
            return b if a == "model.cell" else a
        return b if numeric(a) or not numeric(b) else a

    kept = list(keys)
    for a in keys:
        for b in keys:
            if a != b and a in kept and b in kept and len(set(zip(values(a), values(b)))) == len(set(values(a))) == len(set(values(b))):
                kept.remove(drop(a, b))
    return kept


def _short_key(k: str, keys: list[str]) -> str:
    """The key's last part (threshold), or all of it when that is ambiguous (mode)."""
    last = k.rsplit(".", 1)[-1]
    return k if last == "mode" or sum(x.rsplit(".", 1)[-1] == last for x in keys) > 1 else last


def _label(row: dict, keys: list[str]) -> str:
    """The group's values of the keys, in the order the legend's title names them."""
    text = ", ".join("none" if row.get(k) is None else str(row.get(k)) for k in keys) or row["label"]
    return f"{text} ({row['runs']} seeds)" if row["runs"] > 1 else text


def plot(
    paths: Path | Sequence[Path],
    out: Path,
    *,
    size: tuple[float, float] | None = None,
    dpi: int = 150,
    fmt: str | None = None,
    on_skip: Callable[[Path, Exception], None] | None = None,
) -> Path:
    """Write the figure of the runs ``paths`` stand for to ``out``; returns ``out``."""
    from bptt_cli import views

    fmt = output_format(Path(out), fmt)
    if not 20 <= dpi <= 1200:
        raise PlotError(f"--dpi {dpi}: use 20 to 1200")
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else list(paths)
    loaded = views.gather(paths, logs=True, on_skip=on_skip)  # a wrong path is reported first, with or without matplotlib
    if not any(r.metrics for r in loaded):
        raise runs.RunError(f"{', '.join(map(str, paths))} holds no logged update to plot")
    plt = _pyplot()
    fig = figure(loaded, size=size, dpi=dpi)
    try:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt)
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(out, buf.getvalue())  # replaces a symlink at out, never writes through it; follows the umask
    except OSError as e:
        raise PlotError(f"--out {out}: cannot be written ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out


def figure(loaded: list[runs.Run], *, size: tuple[float, float] | None = None, dpi: int = 150):
    """The matplotlib Figure of runs read back with their logs (see the module docstring)."""
    from bptt_cli import views

    plt = _pyplot()
    view = views.side_by_side(loaded)
    by_path = {str(r.path): r for r in loaded}
    groups = [[by_path[p] for p in row["paths"]] for row in view["rows"]]
    keys = view["keys"]

    keys = style_keys(view["rows"], keys)
    metric = next((m for m in METRICS if any(m in e for r in loaded for e in r.eval)), None)
    passes = max((len(_flow_passes(r)) for r in loaded), default=0)
    flows = ["flow_first", "flow_last"] if passes > 1 else ["flow_last"] if passes else []
    with_c = bool(flows) and any((d.get("flow") or {}).get("norms_c") for r in loaded for d in r.diagnostics)
    if with_c:  # an lstm: each flow panel with the cell state's beside it
        flows = [p for f in flows for p in (f, f.replace("flow_", "flowc_"))]
    # Full BPTT's cosine to itself is 1: the bias panel is for runs that truncate.
    has_bias = any(_diag(r, "bias", "cosine") for r in loaded) and any(r.summary.get("truncation", "full") != "full" for r in loaded)
    panels = ["loss", *(["metric"] if metric else []), "grad", *flows, *(["bias"] if has_bias else [])]
    ncols = {1: 1, 2: 2, 3: 3, 4: 2}.get(len(panels), 3)
    if with_c:  # two columns, the flow panels last, h and c of one pass on one row
        head = ["loss", *(["metric"] if metric else []), "grad", *(["bias"] if has_bias else [])]
        panels, ncols = [*head, *(["blank"] if len(head) % 2 else []), *flows], 2
    nrows = math.ceil(len(panels) / ncols)
    labels = [_label(row, keys) for row in view["rows"]]
    width = size[0] if size else 4.6 * ncols + 0.4
    longest = max(map(len, labels), default=1)
    legend_cols = max(1, min(3, len(labels), int(width / (0.7 + longest / 14))))  # ~14 characters an inch at 9 pt
    if len(keys) >= 2:  # one column per colour (the legend fills column by column)
        legend_cols = min(legend_cols, len({str(r.get(keys[0])) for r in view["rows"]}))
    legend_rows = math.ceil(len(labels) / legend_cols) + 1 if keys else 0
    height = size[1] if size else 3.5 * nrows + 0.9 + 0.2 * legend_rows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), dpi=dpi, squeeze=False, layout="constrained")
    ax = dict(zip(panels, axes.flat))
    for extra in [*list(axes.flat)[len(panels) :], *([ax["blank"]] if "blank" in ax else [])]:
        extra.set_visible(False)
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    styles = _styles(view["rows"], keys, palette)
    seen: dict[str, list[float]] = {p: [] for p in panels}
    handles = []

    def draw(panel: str, series: list[dict], style: dict, label: str | None, **kw) -> None:
        series = [s for s in series if s]
        if not series:
            return
        xs, mean, lo, hi = _band(series)
        marker = kw.pop("marker", style["marker"])
        if len(xs) == 1 and not marker:  # one point (a run evaluated only at its end) is no line: mark it
            marker = "o"
        (line,) = ax[panel].plot(xs, mean, color=style["color"], ls=kw.pop("ls", style["ls"]), lw=kw.pop("lw", 1.6),
                                 marker=marker, markevery=max(1, len(xs) // 8), ms=4, label=label, **kw)  # fmt: skip
        if len(series) > 1:
            ax[panel].fill_between(xs, lo, hi, color=style["color"], alpha=0.18, lw=0)
        seen[panel] += lo + hi
        if label is not None:
            handles.append(line)

    thresholds = set()
    for label, members, style in zip(labels, groups, styles):
        draw("loss", [_per_step(r.metrics, "loss") for r in members], style, label)
        evals = [_per_step(r.eval, "loss") for r in members]
        draw("loss", evals, style, None, ls="none", marker="o", lw=0)
        if metric:
            draw("metric", [_per_step(r.eval, metric) for r in members], style, None)
        draw("grad", [_per_step(r.metrics, "grad_norm") for r in members], style, None, lw=1.0)
        for panel in flows:
            which, key = (0 if panel.endswith("_first") else -1), ("norms_c" if panel.startswith("flowc_") else "norms")
            draw(panel, [_flow(r, which, key) for r in members], style, None)
        if has_bias:
            draw("bias", [_diag(r, "bias", "cosine") for r in members], style, None, marker=style["marker"] or "o")
        for r in members:
            clip = r.config.get("clip") or {}
            if clip.get("mode") not in (None, "none") and _finite(clip.get("threshold")):
                thresholds.add((clip["mode"], float(clip["threshold"])))

    step_label = "step (training batches)"
    ax["loss"].set(title="Loss (line: training, markers: held-out)", xlabel=step_label, ylabel="loss")
    ax["grad"].set(title="Gradient norm before clipping", xlabel=step_label, ylabel="||g||")
    top = max(seen["grad"], default=0.0)
    above = sorted(t for _, t in thresholds if t > 2 * top)  # lines far above the data would squash it
    for t in sorted({t for _, t in thresholds} - set(above)):
        ax["grad"].axhline(t, color="0.3", ls=(0, (4, 3)), lw=1)
        ax["grad"].annotate(f"clip {t:g}", (1.0, t), xycoords=("axes fraction", "data"), ha="right", va="bottom", fontsize=8, color="0.3")
    if above:
        ax["grad"].set_title(f"Gradient norm before clipping (clip {', '.join(f'{t:g}' for t in above)}: above)")
    if metric:
        chance = next(((r.summary.get("chance") or {}).get(metric) for r in loaded if (r.summary.get("chance") or {}).get(metric) is not None), None)
        ax["metric"].set(title=f"Held-out {metric.replace('_', ' ')}", xlabel=step_label, ylabel=metric.replace("_", " "))
        if chance is not None:
            ax["metric"].axhline(chance, color="0.4", ls=":", lw=1.2)
            ax["metric"].annotate(f"chance {chance:.3g}", (0.01, chance), xycoords=("axes fraction", "data"), va="bottom", fontsize=8, color="0.3")
        if metric == "accuracy":
            ax["metric"].set_ylim(0, 1.02)
    for panel in flows:
        first = panel.endswith("_first")
        when = {u for r in loaded for u in (_flow_passes(r)[:1] if first else _flow_passes(r)[-1:])}
        at = f"update {when.pop()}" if len(when) == 1 else ("the first pass" if first else "the last pass")
        at = "the initial weights" if at == "update 0" else at
        state = "c" if panel.startswith("flowc_") else "h"
        title = f"{state}: gradient flow at {at}" if with_c else f"Gradient flow at {at}"  # c: the LSTM's cell state
        ax[panel].set(title=title, xlabel="lag j", ylabel=f"mean ||dL_t / d{state}_{{t-j}}||", yscale="log")
    if has_bias:
        ax["bias"].set(title="Truncation bias: cosine to the full-BPTT gradient", xlabel=step_label, ylabel="cosine")
        ax["bias"].axhline(1.0, color="0.6", lw=0.8)
    for panel, ratio in (("loss", LOSS_FOLD), ("grad", DECADES)):
        if _spans_decades(seen[panel], ratio):
            ax[panel].set_yscale("log")
            if not _spans_decades(seen[panel], DECADES):  # within two decades: 0.4, 0.6, 2 read better than 4 x 10^-1
                from matplotlib.ticker import FormatStrFormatter, FuncFormatter

                ax[panel].yaxis.set_major_formatter(FormatStrFormatter("%g"))
                ax[panel].yaxis.set_minor_formatter(FuncFormatter(_minor_label))
    for a in ax.values():
        a.grid(True, alpha=0.3)
        a.spines[["top", "right"]].set_visible(False)

    title = view["title"] or "bptt"
    seeds = max((row["runs"] for row in view["rows"]), default=1)
    if seeds > 1:
        title += "  (mean over seeds; band: lowest to highest seed)"
    fig.suptitle(title, fontsize=12)
    if handles and keys:  # one group needs no legend: the title names it
        legend_title = ", ".join("truncation" if k == "truncation.mode" else _short_key(k, keys) for k in keys)
        fig.legend(handles=handles, loc="outside lower center", ncols=legend_cols, title=legend_title, fontsize=9,
                   title_fontsize=9, frameon=False)  # fmt: skip
    return fig
