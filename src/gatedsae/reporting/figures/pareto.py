"""Fig. 1 / 12 / 13 analogue: loss recovered vs L0 (log x), Gated vs baseline, one panel per site and one
row per layer; plus the later papers' axes, Δ LM loss vs L0 and FVU vs L0."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.reporting.figures.style import (
    label_grid,
    label_knobs,
    plot_sweep,
    reference_line,
    save,
    shared_legend,
    site_grid,
)

MAIN = (PROPOSED, BASELINE)
FIGURES = {  # stem: (y column, lower is better, shared y across sites)
    "fig1_loss_recovered_vs_l0": ("loss_recovered", False, False),
    "delta_lm_loss_vs_l0": ("delta_lm_loss", True, False),
    "fvu_vs_l0": ("fvu", True, True),
}
CAPTIONS = {
    "fig1_loss_recovered_vs_l0": "Loss recovered against L0 (log scale) for Gated and compute-matched baseline SAEs, "
                                 "one panel per site (the paper's Fig. 1); higher and further left is better. Lines "
                                 "join each sweep's Pareto-optimal SAEs, faint points are dominated, the dashed line "
                                 "is 100% (the clean model); λ labels mark the ends of the sweeps. Error "
                                 "bars, where drawn, are the intervals in metrics.csv.",
    "delta_lm_loss_vs_l0": "Increase in next-token loss when the site is replaced by the SAE reconstruction (Δ LM "
                           "loss, nats) against L0; lower and further left is better.",
    "fvu_vs_l0": "Fraction of variance unexplained on held-out activations against L0 (shared y axis).",
}


def figures(frame: pd.DataFrame):
    """(stem, figure) for each figure of the family."""
    main = frame[frame["arch"].isin(MAIN) & (frame["variant"] == "sweep")]
    if main.empty:
        return
    for stem, (y, lower, sharey) in FIGURES.items():
        fig, cells = site_grid(main, sharey=sharey)
        for (site, layer), ax in cells.items():
            cell = main[(main["site"] == site) & (main["layer"] == layer)]
            reference_line(ax, y)
            for arch in MAIN:
                plot_sweep(ax, cell, arch, y, lower_is_better=lower)
            if y == "loss_recovered":
                label_knobs(ax, cell, PROPOSED, y)
                label_knobs(ax, cell, BASELINE, y, ends=("sparse",))
        label_grid(cells, y)
        shared_legend(fig)
        yield stem, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
