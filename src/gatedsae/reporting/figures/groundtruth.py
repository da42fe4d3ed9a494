"""The ground-truth benchmark's figures, from its summary (mean over seeds, Student-t intervals): the
fraction of true features recovered against L0, the magnitude ratio against λ, and every architecture's
L0–FVU frontier. Written by the groundtruth stage under paper_figures/<experiment>/groundtruth/."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gatedsae.plan.architectures import KNOBS
from gatedsae.plan.architectures import label as arch_label
from gatedsae.plan.config import GroundTruthConfig
from gatedsae.plan.groundtruth import FIGURES, SYNTHETIC
from gatedsae.plan.sites import SITES
from gatedsae.reporting.figures.style import (
    AXIS_LABELS,
    COLOURS,
    SINGLE_COLUMN,
    interval,
    plain_log_axis,
    plot_line,
    plot_sweep,
    save,
)

CAPTIONS = {
    FIGURES["recovery"]: "Ground truth: fraction of the true features recovered (a decoder direction at cosine ≥ the "
                         "stated threshold) against L0, mean over seeds with intervals; dashed: the true L0.",
    FIGURES["magnitude"]: "Ground truth: inferred / true magnitude on correctly detected firings against the L1 "
                          "coefficient λ (1, dashed: no shrinkage), mean over seeds with intervals.",
    FIGURES["frontier"]: "Ground truth: FVU against L0 for every architecture (Pareto frontier joined), mean over "
                         "seeds; dashed: the true L0.",
}


def render(rows: pd.DataFrame, table: pd.DataFrame, truth: GroundTruthConfig, out_dir: Path) -> list[Path]:
    """The three figures (PNG and PDF) from the summary table; returns the files written."""
    true_l0 = float(rows["true_l0"].mean())
    files = []
    for stem, fig in (_recovery(table, true_l0, truth.recovered_cosine), _magnitude(table), _frontier(table, true_l0)):
        files += save(fig, out_dir, stem)
    return files


def _legend_above(fig, ax) -> None:
    """The legend above the panel in two columns (the benchmark draws every architecture: inside the
    panel it would hide points); `save` lays the panel out below it."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=2, bbox_to_anchor=(0.5, 1.0), handlelength=1.6,
               columnspacing=0.8, borderaxespad=0.1)


def _by_arch(table: pd.DataFrame):
    return [arch for arch in dict.fromkeys(table["arch"])]


def _recovery(table: pd.DataFrame, true_l0: float, cosine: float):
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN + 0.5, 3.4))
    for arch in _by_arch(table):
        plot_line(ax, table, arch, "recovered")
    ax.axvline(true_l0, color="0.4", linestyle="--", linewidth=0.7, zorder=0)
    plain_log_axis(ax, "x")
    ax.set_xlabel(AXIS_LABELS["l0"])
    ax.set_ylabel(f"true features recovered (cos ≥ {cosine:g})")
    _legend_above(fig, ax)
    return FIGURES["recovery"], fig


def _magnitude(table: pd.DataFrame):
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN + 0.5, 3.4))
    penalised = table[table["knob"] == "l1"]
    for arch in _by_arch(penalised):
        points = penalised[penalised["arch"] == arch].sort_values("value")
        ax.plot(points["value"], points["magnitude_ratio"], label=arch_label(arch), color=COLOURS.get(arch, "black"), marker="o")
        extents = interval(points, "magnitude_ratio")
        if extents is not None:
            ax.errorbar(points["value"], points["magnitude_ratio"], yerr=extents, fmt="none",
                        ecolor=COLOURS.get(arch, "black"), elinewidth=0.7, capsize=1.5)
    ax.axhline(1.0, color="0.4", linestyle="--", linewidth=0.7, zorder=0)
    plain_log_axis(ax, "x")
    ax.set_xlabel(f"{KNOBS['l1'].symbol} ({KNOBS['l1'].meaning})")
    ax.set_ylabel("inferred / true magnitude")
    _legend_above(fig, ax)
    return FIGURES["magnitude"], fig


def _frontier(table: pd.DataFrame, true_l0: float):
    fig, ax = plt.subplots(figsize=(SINGLE_COLUMN + 0.5, 3.4))
    one_cell = table.assign(model=SYNTHETIC, site=SITE, layer=0)  # the frontier helper groups by where SAEs sit
    for arch in _by_arch(table):
        plot_sweep(ax, one_cell, arch, "fvu", lower_is_better=True)
    ax.axvline(true_l0, color="0.4", linestyle="--", linewidth=0.7, zorder=0)
    plain_log_axis(ax, "x")
    ax.set_xlabel(AXIS_LABELS["l0"])
    ax.set_ylabel(AXIS_LABELS["fvu"])
    _legend_above(fig, ax)
    return FIGURES["frontier"], fig


SITE = SITES[0]
