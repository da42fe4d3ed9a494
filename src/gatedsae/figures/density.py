"""Feature-density histograms for a matched pair per site: the Gated SAE nearest the middle of its
sweep's L0 range and the baseline SAE with the closest L0."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..tables import ARCH_LABELS, SITE_LABELS, density_key
from .style import COLOURS, save

STEM = "feature_density"
CAPTIONS = {STEM: "Histograms of log10 feature firing frequency on held-out tokens for a Gated and a baseline SAE "
                  "of similar L0 at each site; dead features (never fired) are counted in the legend."}


def matched_pairs(frame: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    pairs = []
    main = frame[frame["variant"] == "sweep"]
    for _, cell in main.groupby(["site", "layer"], sort=False):
        gated, baseline = cell[cell["arch"] == "gated"], cell[cell["arch"] == "baseline"]
        if gated.empty or baseline.empty:
            continue
        middle = np.exp(np.log(gated["l0"].clip(lower=1e-3)).median())
        g = gated.loc[(np.log(gated["l0"].clip(lower=1e-3)) - np.log(middle)).abs().idxmin()]
        b = baseline.loc[(np.log(baseline["l0"].clip(lower=1e-3)) - np.log(g["l0"])).abs().idxmin()]
        pairs.append((g, b))
    return pairs


def figures(frame: pd.DataFrame, densities: dict):
    pairs = matched_pairs(frame)
    if not pairs:
        return
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.2 * len(pairs), 3.2), squeeze=False)
    fig.suptitle("Feature density, matched L0")
    for ax, pair in zip(axes[0], pairs):
        for row in pair:
            histogram = densities[density_key(row)]
            edges, counts = np.array(histogram["log10_edges"]), np.array(histogram["counts"])
            ax.stairs(counts, edges, color=COLOURS[row["arch"]], linewidth=1.5,
                      label=f"{ARCH_LABELS[row['arch']]} (L0 {row['l0']:.0f}, {histogram['dead']} dead)")
        ax.set_title(f"{SITE_LABELS[pair[0]['site']]}, layer {pair[0]['layer']}")
        ax.set_xlabel("log10 feature firing frequency (fraction of tokens)")
        ax.set_ylabel("features")
        ax.legend()
    yield STEM, fig


def render(frame: pd.DataFrame, out_dir: Path, densities: dict | None = None, **_) -> list[Path]:
    return [path for stem, fig in figures(frame, densities or {}) for path in save(fig, out_dir, stem)]
