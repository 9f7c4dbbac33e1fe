"""``bptt plot``: matplotlib figures of a run or a compare directory (the ``plot`` extra).

Four panels, each from the run files alone:
    loss        training loss per update (thin) and held-out loss (markers), per variant
    grad norm   gradient norm before clipping per update (log scale), the clip threshold dashed
    flow        mean ||dL_t/dh_{t-j}|| vs lag j (log scale) at the first and last diagnostic pass
    bias        cosine between the run's gradient and the full-BPTT gradient over training
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from bptt_cli import runs
from bptt_cli.core.errors import BpttError

INSTALL_HINT = 'bptt plot needs matplotlib: pip install -e ".[plot]"'


class PlotUnavailable(BpttError):
    """matplotlib is not installed."""


class PlotError(BpttError, ValueError):
    """The figure cannot be written where or as asked."""


def _check_format(plt, out: Path) -> None:
    """The suffix of ``out`` names a format matplotlib writes; refused before any drawing."""
    formats = sorted(plt.figure().canvas.get_supported_filetypes())
    plt.close("all")
    suffix = out.suffix.lstrip(".").lower()
    if suffix not in formats:
        raise PlotError(f"--out {out}: cannot write {('.' + suffix) if suffix else 'a file without a suffix'}; use one of: {', '.join('.' + f for f in formats)}")


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only; never needs a display
        import matplotlib.pyplot as plt
    except ImportError:
        raise PlotUnavailable(INSTALL_HINT) from None
    return plt


def load_variants(path: Path, on_skip: Callable[[Path, Exception], None] | None = None) -> list[tuple[str, runs.Run]]:
    """(label, run) for a run directory or for each variant of a compare directory; the label
    is the mode and grid point, shared by the seeds of a variant. A damaged variant is left
    out (and reported to ``on_skip``); the others are still plotted."""
    from bptt_cli import compare

    path = Path(path)
    if compare.is_compare_dir(path):
        variants, _ = compare.read_plan(path)
        out = []
        for v in variants:
            if runs.is_run_dir(path / v.id):
                try:
                    out.append((v.group, runs.load_run(path / v.id)))
                except BpttError as e:
                    if on_skip is not None:
                        on_skip(path / v.id, e)
        return out
    run = runs.load_run(path)
    return [(run.summary.get("truncation") or str((run.config.get("truncation") or {}).get("mode", "")), run)]


def _update_positions(metrics: list[dict]) -> list[float]:
    """An x for every update, spread evenly inside its step (several per step in chunk mode)."""
    per_step: dict[int, int] = {}
    for m in metrics:
        per_step[m["step"]] = per_step.get(m["step"], 0) + 1
    seen: dict[int, int] = {}
    xs = []
    for m in metrics:
        i = seen[m["step"]] = seen.get(m["step"], 0) + 1
        xs.append(m["step"] - 1 + i / per_step[m["step"]])
    return xs


def plot(
    path: Path,
    out: Path,
    *,
    size: tuple[float, float] = (12.0, 8.0),
    dpi: int = 100,
    on_skip: Callable[[Path, Exception], None] | None = None,
) -> Path:
    """Write the four-panel figure of ``path`` to ``out`` (PNG, or any format by suffix)."""
    variants = load_variants(path, on_skip)  # a wrong path is reported first, with or without matplotlib
    if not variants:
        raise runs.RunError(f"{path} holds no run to plot")
    plt = _pyplot()
    out = Path(out)
    _check_format(plt, out)
    fig, axes = plt.subplots(2, 2, figsize=size, dpi=dpi)
    (ax_loss, ax_norm), (ax_flow, ax_bias) = axes
    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    groups = list(dict.fromkeys(label for label, _ in variants))
    seeds = {g: sum(1 for label, _ in variants if label == g) for g in groups}
    thresholds = set()
    labelled: set[str] = set()
    for group, run in variants:
        # One colour and one legend entry per mode/grid point; its seeds share them.
        c = palette[groups.index(group) % len(palette)]
        label = None if group in labelled else (f"{group} ({seeds[group]} seeds)" if seeds[group] > 1 else group)
        labelled.add(group)
        if run.metrics:
            ax_loss.plot(*runs.step_losses(run.metrics), color=c, lw=0.8, alpha=0.8, label=label)
            ax_norm.plot(_update_positions(run.metrics), [m.get("grad_norm") for m in run.metrics], color=c, lw=0.8, alpha=0.8, label=label)
        evals = [(e["step"], e["loss"]) for e in run.eval if e.get("loss") is not None]
        if evals:
            ax_loss.plot(*zip(*evals), "o--", color=c, ms=3, lw=0.8)
        clip = run.config.get("clip") or {}
        if clip.get("mode") not in (None, "none") and isinstance(clip.get("threshold"), (int, float)):
            thresholds.add((clip["mode"], float(clip["threshold"])))
        if run.diagnostics:
            firsts = [(run.diagnostics[0], "-")]
            if len(run.diagnostics) > 1:
                firsts.append((run.diagnostics[-1], ":"))
            for d, style in firsts:
                flow = d.get("flow") or {}
                pts = [(j, n) for j, n in zip(flow.get("lags", []), flow.get("norms", [])) if n and n > 0]
                if pts:
                    ax_flow.plot(*zip(*pts), style, color=c, label=f"{label} (step {d.get('step')})" if label else None)
            bias = [(d["step"], d["bias"]["cosine"]) for d in run.diagnostics if (d.get("bias") or {}).get("cosine") is not None]
            if bias:
                ax_bias.plot(*zip(*bias), "o-", color=c, ms=3, label=label)
    for mode, t in sorted(thresholds):
        ax_norm.axhline(t, color="k", ls="--", lw=1, label=f"clip {mode} = {t:g}")
    # x is the training step (batches seen), so modes that update per chunk line up with the rest
    # log scale: one diverging variant's spike must not flatten the others
    ax_loss.set(title="Loss (line: train, markers: held-out)", xlabel="step (training batches)", ylabel="loss", yscale="log")
    ax_norm.set(title="Gradient norm before clipping, per update", xlabel="step (training batches)", ylabel="||g||", yscale="log")
    ax_flow.set(title="Gradient flow: mean ||dL_t/dh_{t-j}||", xlabel="lag j", ylabel="norm", yscale="log")
    ax_bias.set(title="Truncation bias: cosine to the full-BPTT gradient", xlabel="step (training batches)", ylabel="cosine")
    for ax in axes.flat:
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        elif ax in (ax_flow, ax_bias):
            ax.text(0.5, 0.5, "no diagnostics logged\n(set train.diagnostics_every)", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle(str(Path(path).resolve()), fontsize=9)
    fig.tight_layout()
    import io

    try:
        buf = io.BytesIO()
        fig.savefig(buf, format=out.suffix.lstrip(".").lower())
        out.parent.mkdir(parents=True, exist_ok=True)
        runs.atomic_write(out, buf.getvalue())  # replaces a symlink at out, never writes through it
    except OSError as e:
        raise PlotError(f"--out {out}: cannot be written ({e.strerror or e})") from None
    finally:
        plt.close(fig)
    return out
