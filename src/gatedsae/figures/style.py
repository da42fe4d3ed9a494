"""One look for every figure: colours and markers per architecture, labelled axes, PNG + PDF output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..tables import ARCH_LABELS, SITE_LABELS, SITE_ORDER, pareto_mask  # noqa: E402

COLOURS = {
    "gated": "#1f77b4", "baseline": "#d62728", "gated_unfrozen_decoder": "#9467bd", "gated_no_rmag": "#2ca02c",
    "gated_untied": "#ff7f0e", "baseline_rescale_shift": "#8c564b",
}
MARKERS = {"gated": "o", "baseline": "s", "gated_unfrozen_decoder": "^", "gated_no_rmag": "v",
           "gated_untied": "D", "baseline_rescale_shift": "P"}
AXIS_LABELS = {
    "l0": "L0 (active features per token, log scale)",
    "loss_recovered": "loss recovered (%)",
    "delta_lm_loss": "Δ LM loss (nats per token)",
    "fvu": "fraction of variance unexplained",
    "gamma": "relative reconstruction bias γ",
}
PERCENT = {"loss_recovered"}

plt.rcParams.update({"figure.dpi": 110, "font.size": 9, "axes.grid": True, "grid.alpha": 0.3,
                     "axes.spines.top": False, "axes.spines.right": False})


def values(frame: pd.DataFrame, column: str):
    return frame[column] * (100 if column in PERCENT else 1)


def plot_sweep(ax, frame: pd.DataFrame, arch: str, y: str, lower_is_better: bool = False) -> None:
    """One architecture's sweep: Pareto frontier as a line, dominated points faint."""
    points = frame[frame["arch"] == arch].sort_values("l0")
    if points.empty:
        return
    if lower_is_better:
        optimal = pareto_mask(points.assign(_y=-points[y]), "l0", "_y")
    else:
        optimal = pareto_mask(points, "l0", y)
    front = points[optimal]
    kwargs = {"color": COLOURS.get(arch, "black"), "marker": MARKERS.get(arch, "o")}
    ax.plot(front["l0"], values(front, y), label=ARCH_LABELS.get(arch, arch), linewidth=1.5, markersize=5, **kwargs)
    dominated = points[~optimal]
    if len(dominated):
        ax.scatter(dominated["l0"], values(dominated, y), alpha=0.3, s=18, **kwargs)


def plot_line(ax, frame: pd.DataFrame, arch: str, y: str) -> None:
    """One architecture's sweep joined in order of L0 (for quantities with no better direction, e.g. γ)."""
    points = frame[frame["arch"] == arch].sort_values("l0")
    if len(points):
        ax.plot(points["l0"], values(points, y), label=ARCH_LABELS.get(arch, arch), color=COLOURS.get(arch, "black"),
                marker=MARKERS.get(arch, "o"), linewidth=1.5, markersize=5)


def site_grid(frame: pd.DataFrame, title: str):
    """A figure with one column per site and one row per layer present in `frame`."""
    sites = [s for s in SITE_ORDER if s in set(frame["site"])]
    layers = sorted(set(frame["layer"]))
    fig, axes = plt.subplots(len(layers), len(sites), figsize=(3.6 * len(sites), 3.0 * len(layers)), squeeze=False)
    fig.suptitle(title)
    cells = {}
    for row, layer in enumerate(layers):
        for col, site in enumerate(sites):
            ax = axes[row][col]
            ax.set_title(f"{SITE_LABELS[site]}, layer {layer}")
            cells[(site, layer)] = ax
    return fig, cells


def label(ax, y: str) -> None:
    ax.set_xscale("log")
    ax.set_xlabel(AXIS_LABELS["l0"])
    ax.set_ylabel(AXIS_LABELS[y])


def save(fig, directory: Path, stem: str) -> list[Path]:
    """Write `stem`.png and `stem`.pdf atomically; returns both paths."""
    directory.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = []
    for suffix in ("png", "pdf"):
        path = directory / f"{stem}.{suffix}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=suffix, dpi=150 if suffix == "png" else None)
        paths.append(path)
    plt.close(fig)
    return paths
