"""Fig. 1 / 12 / 13 analogue: loss recovered vs L0, Gated vs baseline, one panel per site and one row
per layer; plus the later papers' axes, Δ LM loss vs L0 and FVU vs L0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import label, plot_sweep, save, site_grid

MAIN = ("gated", "baseline")
FIGURES = {  # stem: (y column, lower is better, title)
    "fig1_loss_recovered_vs_l0": ("loss_recovered", False, "Loss recovered vs L0 (higher and further left is better)"),
    "delta_lm_loss_vs_l0": ("delta_lm_loss", True, "Δ LM loss vs L0 (lower and further left is better)"),
    "fvu_vs_l0": ("fvu", True, "Fraction of variance unexplained vs L0"),
}
CAPTIONS = {
    "fig1_loss_recovered_vs_l0": "Loss recovered against L0 for Gated and compute-matched baseline SAEs (the paper's "
                                 "Fig. 1). Lines join each sweep's Pareto-optimal SAEs; faint points are dominated.",
    "delta_lm_loss_vs_l0": "Increase in next-token loss when the site is replaced by the SAE reconstruction, "
                           "against L0.",
    "fvu_vs_l0": "Fraction of variance unexplained on held-out activations, against L0.",
}


def figures(frame: pd.DataFrame):
    """(stem, figure) for each figure of the family."""
    main = frame[frame["arch"].isin(MAIN) & (frame["variant"] == "sweep")]
    for stem, (y, lower, title) in FIGURES.items():
        fig, cells = site_grid(main, title)
        for (site, layer), ax in cells.items():
            cell = main[(main["site"] == site) & (main["layer"] == layer)]
            for arch in MAIN:
                plot_sweep(ax, cell, arch, y, lower_is_better=lower)
            label(ax, y)
            ax.legend()
        yield stem, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
