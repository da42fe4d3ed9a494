"""Training curves of the main sweep (Gated and baseline), one column per site: the total loss, its
reconstruction term, L0, the dead fraction and the learning rate against training steps. Each λ is a
line; darker lines are larger λ."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.colors import to_rgb

from gatedsae.plan.architectures import BASELINE, PROPOSED, knob_value
from gatedsae.plan.architectures import label as arch_label
from gatedsae.plan.sites import SITES
from gatedsae.reporting.figures.style import (
    COLOURS,
    FULL_WIDTH,
    SINGLE_COLUMN,
    panel_title,
    plain_log_axis,
    save,
    shared_legend,
)

STEM = "training_curves"
CAPTIONS = {STEM: "Training curves of the Gated and baseline sweeps at each site, logged every "
                  "train.log_every_steps steps from the training batch: the total loss and its reconstruction "
                  "term (in the units of training: activations scaled to E‖x‖² = 1), L0, the fraction of dead "
                  "features (not fired in the last resample_window_steps steps, before any resampling) and "
                  "the learning rate (warm-up, and the drop and recovery after each resampling). "
                  "Darker lines are larger λ."}
ROWS = {  # column: (axis label, log scale)
    "total": ("total loss", True),
    "reconstruction": ("reconstruction loss", True),
    "l0": ("L0 (batch)", True),
    "dead_fraction": ("dead fraction", False),
    "lr": ("learning rate", False),
}
MAIN = (PROPOSED, BASELINE)


def shades(arch: str, count: int) -> list[tuple[float, float, float]]:
    """`count` shades of the architecture's colour, light (small λ) to full (large λ)."""
    base = np.array(to_rgb(COLOURS.get(arch, "#333333")))
    return [tuple(base * t + (1 - t)) for t in np.linspace(0.3, 1.0, count)] if count > 1 else [tuple(base)] * count


def figures(curves: pd.DataFrame):
    main = curves[curves["arch"].isin(MAIN) & (curves["variant"] == "sweep")]
    if main.empty:
        return
    cells = [(site, layer) for site in SITES for layer in sorted(set(main["layer"]))
             if not main[(main["site"] == site) & (main["layer"] == layer)].empty]
    width = FULL_WIDTH if len(cells) > 1 else SINGLE_COLUMN
    fig, axes = plt.subplots(len(ROWS), len(cells), figsize=(width, 1.15 * len(ROWS) + 0.45), squeeze=False,
                             sharex="col", sharey="row")
    several_layers = len(set(main["layer"])) > 1
    for col, (site, layer) in enumerate(cells):
        cell = main[(main["site"] == site) & (main["layer"] == layer)]
        axes[0][col].set_title(panel_title(site, layer, several_layers))
        for arch in MAIN:
            saes = cell[cell["arch"] == arch].groupby("sae")
            ordered = sorted(saes, key=lambda item: float(knob_value(arch, item[1].iloc[0])))
            for colour, (_, sae) in zip(shades(arch, len(ordered)), ordered):
                sae = sae.sort_values("step")
                for row, column in enumerate(ROWS):
                    axes[row][col].plot(sae["step"], sae[column], color=colour, linewidth=0.8)
        for row, (column, (label, log)) in enumerate(ROWS.items()):
            ax = axes[row][col]
            if log:
                plain_log_axis(ax)
            if column == "dead_fraction":
                ax.set_ylim(bottom=0, top=max(0.05, float(main[column].max()) * 1.1))
            if col == 0:
                ax.set_ylabel(label)
        axes[-1][col].set_xlabel("training step")
    for arch in MAIN:  # legend entries: one per architecture, in its full colour
        axes[0][0].plot([], [], color=COLOURS[arch], label=arch_label(arch))
    shared_legend(fig)
    yield STEM, fig


def render(frame: pd.DataFrame, out_dir: Path, curves: pd.DataFrame | None = None, **_) -> list[Path]:
    if curves is None or curves.empty:
        return []
    return [path for stem, fig in figures(curves) for path in save(fig, out_dir, stem)]
