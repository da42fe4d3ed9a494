"""One look for every figure, sized for a paper: single-column (3.25 in) or full-width (6.75 in) at the
size they are printed, so fonts are real points (7–8 pt); no titles baked in (captions live in
figures.json); one legend per figure; reference lines; intervals where metrics.csv has them; PNG + PDF."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gatedsae.core.atomic import atomic_path
from gatedsae.plan.architectures import ARCHITECTURES, knob_text
from gatedsae.plan.architectures import label as arch_label
from gatedsae.plan.sites import SITES, short_label
from gatedsae.reporting.figures.placement import place_labels, queue_label
from gatedsae.reporting.tables import pareto_mask

SINGLE_COLUMN = 3.25  # inches: one column of a two-column paper
FULL_WIDTH = 6.75     # inches: the text width
MIN_FONT_PT = 7.0
SAVE_DPI = 300        # PNG resolution; the report shows each PNG at width / SAVE_DPI inches of FULL_WIDTH

COLOURS = {name: record.colour for name, record in ARCHITECTURES.items()}
MARKERS = {name: record.marker for name, record in ARCHITECTURES.items()}
AXIS_LABELS = {
    "l0": "L0 (features per token)",
    "loss_recovered": "loss recovered (%)",
    "delta_lm_loss": "Δ LM loss (nats)",
    "fvu": "fraction of variance unexplained",
    "gamma": "relative reconstruction bias γ",
    "probing_accuracy": "sparse probing accuracy",
}
PERCENT = {"loss_recovered"}
REFERENCE = {"loss_recovered": 100.0, "gamma": 1.0, "delta_lm_loss": 0.0}  # the clean model; γ = 1: unbiased

plt.rcParams.update({
    "figure.dpi": 100, "savefig.dpi": SAVE_DPI, "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8,
    "xtick.labelsize": 7, "ytick.labelsize": 7, "legend.fontsize": 7, "lines.linewidth": 1.2,
    "lines.markersize": 3.5, "axes.linewidth": 0.6, "xtick.major.width": 0.6, "ytick.major.width": 0.6,
    "axes.grid": True, "grid.alpha": 0.25, "grid.linewidth": 0.5, "axes.spines.top": False,
    "axes.spines.right": False, "legend.frameon": False, "pdf.fonttype": 42, "ps.fonttype": 42,
    "axes.titlepad": 3.0,
})


def values(frame: pd.DataFrame, column: str):
    return frame[column] * (100 if column in PERCENT else 1)


def interval(frame: pd.DataFrame, column: str):
    """Error-bar extents (below, above) from `<column>_ci_low` / `_ci_high` when metrics.csv has them."""
    low, high = f"{column}_ci_low", f"{column}_ci_high"
    if low not in frame or high not in frame or frame[[low, high]].isna().all().all():
        return None
    scale = 100 if column in PERCENT else 1
    centre = frame[column] * scale
    return np.vstack([(centre - frame[low] * scale).clip(lower=0).fillna(0),
                      (frame[high] * scale - centre).clip(lower=0).fillna(0)])


def _series_style(arch: str) -> dict:
    return {"color": COLOURS.get(arch, "black"), "marker": MARKERS.get(arch, "o")}


def plot_sweep(ax, frame: pd.DataFrame, arch: str, y: str, lower_is_better: bool = False, faint: bool = False) -> None:
    """One architecture's sweep: Pareto frontier as a line, dominated points faint; intervals as error
    bars when present. `faint` draws a whole sweep lightly (a reference for scale)."""
    points = frame[frame["arch"] == arch].sort_values("l0")
    if points.empty:
        return
    if lower_is_better:
        optimal = pareto_mask(points.assign(_y=-points[y]), "l0", "_y")
    else:
        optimal = pareto_mask(points, "l0", y)
    front, style = points[optimal], _series_style(arch)
    alpha = 0.45 if faint else 1.0
    ax.plot(front["l0"], values(front, y), label=arch_label(arch), alpha=alpha, **style)
    _error_bars(ax, front, y, style["color"], alpha)
    dominated = points[~optimal]
    if len(dominated):
        ax.scatter(dominated["l0"], values(dominated, y), alpha=0.3 * alpha, s=9, color=style["color"],
                   marker=style["marker"], linewidths=0)
        _error_bars(ax, dominated, y, style["color"], 0.3 * alpha)


def plot_line(ax, frame: pd.DataFrame, arch: str, y: str) -> None:
    """One architecture's sweep joined in order of L0 (for quantities with no better direction, e.g. γ)."""
    points = frame[frame["arch"] == arch].sort_values("l0")
    if len(points):
        ax.plot(points["l0"], values(points, y), label=arch_label(arch), **_series_style(arch))
        _error_bars(ax, points, y, COLOURS.get(arch, "black"), 1.0)


def _error_bars(ax, points: pd.DataFrame, y: str, colour: str, alpha: float) -> None:
    extents = interval(points, y)
    if extents is not None:
        ax.errorbar(points["l0"], values(points, y), yerr=extents, fmt="none", ecolor=colour, elinewidth=0.7,
                    capsize=1.5, capthick=0.6, alpha=alpha)


def label_knobs(ax, frame: pd.DataFrame, arch: str, y: str, ends: tuple[str, ...] = ("sparse", "dense")) -> None:
    """The knob (λ, λ_L0 or k) beside a sweep's sparsest and/or densest SAE, so the sweep's direction reads off
    the figure; placed once the figure is laid out, where it hides no line, marker or other label (placement.py)."""
    points = frame[frame["arch"] == arch].sort_values("l0")
    if len(points) < 2:
        return
    for end in ends:
        point = points.iloc[0] if end == "sparse" else points.iloc[-1]
        queue_label(ax, knob_text(arch, point).replace(" = ", "="), point["l0"],
                    point[y] * (100 if y in PERCENT else 1), COLOURS.get(arch, "black"), MIN_FONT_PT)


def reference_line(ax, y: str) -> None:
    """The quantity's reference value (100% loss recovered, γ = 1) as a thin dashed line."""
    if y in REFERENCE:
        ax.axhline(REFERENCE[y], color="0.4", linestyle="--", linewidth=0.7, zorder=0)


def plain_log_axis(ax, axis: str = "y") -> None:
    """A log scale whose ticks read as plain numbers (0.2, 0.5, 1, 2, ...) rather than powers of ten."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    getattr(ax, f"set_{axis}scale")("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    target.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    target.set_minor_formatter(NullFormatter())


def cells_of(frame: pd.DataFrame) -> tuple[list[str], list[int]]:
    return [s for s in SITES if s in set(frame["site"])], sorted(set(frame["layer"]))


def site_grid(frame: pd.DataFrame, sharey: bool = False, panel_height: float = 2.0):
    """A full-width figure with one column per site and one row per layer in `frame`; panels titled by
    site (and layer, when there are several). When the sites sit at different layers (the default's
    attention output at layer 3, the MLP output at 28, the residual stream at 15), one row with a panel per (site, layer) that has data
    instead of a grid of mostly empty panels. Returns (figure, {(site, layer): axes})."""
    sites, layers = cells_of(frame)
    present = set(zip(frame["site"], frame["layer"].astype(int)))
    grid = [[(site, layer) for site in sites] for layer in layers]
    if not all(pair in present for row in grid for pair in row):
        grid = [[pair for pair in (cell for row in zip(*grid) for cell in row) if pair in present]]
    columns = max(len(row) for row in grid)
    width = FULL_WIDTH if columns > 1 else SINGLE_COLUMN
    fig, axes = plt.subplots(len(grid), columns, figsize=(width, panel_height * len(grid) + 0.35),
                             squeeze=False, sharey=sharey)
    cells = {}
    for row, pairs in enumerate(grid):
        for col, (site, layer) in enumerate(pairs):
            ax = axes[row][col]
            ax.set_title(panel_title(site, layer, len(layers) > 1))
            cells[(site, layer)] = ax
    return fig, cells


def panel_title(site: str, layer: int, with_layer: bool) -> str:
    return f"{short_label(site)}" + (f", layer {layer}" if with_layer else "")


def label(ax, y: str, first_column: bool = True, bottom_row: bool = True) -> None:
    plain_log_axis(ax, "x")  # major ticks 10, 20, 50, 100, ...: matplotlib's minor labels overlap on short spans
    if bottom_row:
        ax.set_xlabel(AXIS_LABELS["l0"])
    if first_column:
        ax.set_ylabel(AXIS_LABELS[y])


def label_grid(cells: dict, y: str) -> None:
    """Axis labels on the outer panels only: x on the bottom row, y on the first column."""
    for ax in cells.values():
        spec = ax.get_subplotspec()
        label(ax, y, first_column=spec.is_first_col(), bottom_row=spec.is_last_row())


def shared_legend(fig, axes=None, ncol: int | None = None) -> None:
    """One legend for the figure, each label once in the order first drawn: above the panels, or inside
    the lower right of a figure with a single panel (where no sweep's points lie: better is up-left)."""
    handles: dict[str, object] = {}
    for ax in axes if axes is not None else fig.axes:
        for handle, text in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(text, handle)
    if not handles:
        return
    if len(fig.axes) == 1:
        fig.axes[0].legend(list(handles.values()), list(handles), loc="lower right", handlelength=1.6)
        return
    fig.legend(list(handles.values()), list(handles), loc="upper center", ncol=ncol or len(handles),
               bbox_to_anchor=(0.5, 1.0), handlelength=1.8, columnspacing=1.2, borderaxespad=0.1)


def finish(fig) -> None:
    """Lay out the figure at its own size, leaving the figure legend its measured height above the
    panels, then place the queued notes and labels where they hide nothing."""
    fig.tight_layout(pad=0.3)
    if fig.legends:
        fig.canvas.draw()
        height = max(legend.get_window_extent().height for legend in fig.legends) / fig.bbox.height
        fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - height))
    place_labels(fig)


def save(fig, directory: Path, stem: str) -> list[Path]:
    """`finish` the figure; write `stem`.png and `stem`.pdf atomically; return both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    finish(fig)
    paths = []
    for suffix in ("png", "pdf"):
        path = directory / f"{stem}.{suffix}"
        with atomic_path(path) as tmp:
            # No creation date in the PDF: the same results give the same bytes (a rerun is checked that way).
            fig.savefig(tmp, format=suffix, metadata={"CreationDate": None} if suffix == "pdf" else None)
        paths.append(path)
    plt.close(fig)
    return paths
