"""Feature-density histograms for a matched pair per site: the Gated SAE nearest the middle of its
sweep's L0 range and the baseline SAE with the closest L0. The x axis spans the bins that hold
features (every panel the same range), the y axis is the fraction of each SAE's features, shared."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.ticker import MultipleLocator

from gatedsae.plan.architectures import label as arch_label
from gatedsae.reporting.figures.style import (
    COLOURS,
    FULL_WIDTH,
    MIN_FONT_PT,
    SINGLE_COLUMN,
    panel_title,
    save,
    shared_legend,
)
from gatedsae.reporting.figures.placement import queue_note
from gatedsae.reporting.tables import density_key, matched_pairs

STEM = "feature_density"
CAPTIONS = {STEM: "Histograms of log10 feature firing frequency on held-out tokens (fraction of each SAE's "
                  "features per bin) for a Gated and a baseline SAE of similar L0 at each site; each panel "
                  "notes both L0 values and how many features never fired (dead, not drawn)."}


def _histogram(densities: dict, row: pd.Series) -> tuple[np.ndarray, np.ndarray, int]:
    histogram = densities[density_key(row)]
    return np.array(histogram["log10_edges"]), np.array(histogram["counts"], dtype=float), int(histogram["dead"])


def fitted_range(histograms: list[tuple[np.ndarray, np.ndarray, int]], margin: float = 0.25) -> tuple[float, float]:
    """The x range of the bins that hold any feature, with a margin (the full range if none do)."""
    lows, highs = [], []
    for edges, counts, _ in histograms:
        filled = np.nonzero(counts)[0]
        if len(filled):
            lows.append(edges[filled[0]])
            highs.append(edges[filled[-1] + 1])
    if not lows:
        return float(histograms[0][0][0]), float(histograms[0][0][-1])
    return min(lows) - margin, min(max(highs) + margin, 0.0 + margin)


def figures(frame: pd.DataFrame, densities: dict):
    pairs = matched_pairs(frame)
    if not pairs:
        return
    histograms = {id(row): _histogram(densities, row) for pair in pairs for row in pair}
    low, high = fitted_range(list(histograms.values()))
    several_layers = len({pair[0]["layer"] for pair in pairs}) > 1
    width = SINGLE_COLUMN if len(pairs) == 1 else FULL_WIDTH
    fig, axes = plt.subplots(1, len(pairs), figsize=(width, 2.1), squeeze=False, sharey=True)
    for index, (ax, pair) in enumerate(zip(axes[0], pairs)):
        notes = []
        for row in pair:
            edges, counts, dead = histograms[id(row)]
            total = counts.sum() + dead
            ax.stairs(counts / max(total, 1), edges, color=COLOURS[row["arch"]], linewidth=1.2,
                      label=arch_label(row["arch"]))
            notes.append(f"{arch_label(row['arch'])}: L0 {row['l0']:.0f}, {dead} dead")
        queue_note(ax, "\n".join(notes), MIN_FONT_PT)  # placed where it covers no bar (placement.py)
        ax.set_xlim(low, high)
        ax.xaxis.set_major_locator(MultipleLocator(0.5) if high - low <= 4 else MultipleLocator(1.0))
        ax.set_title(panel_title(pair[0]["site"], pair[0]["layer"], several_layers))
        ax.set_xlabel("log10 firing frequency")
        if index == 0:
            ax.set_ylabel("fraction of features")
    shared_legend(fig)
    yield STEM, fig


def render(frame: pd.DataFrame, out_dir: Path, densities: dict | None = None, **_) -> list[Path]:
    return [path for stem, fig in figures(frame, densities or {}) for path in save(fig, out_dir, stem)]
