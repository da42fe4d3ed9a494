"""Fig. 6 / 14 analogue: relative reconstruction bias γ vs L0 per site (γ < 1 is shrinkage), on one y
axis so the sites compare."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.reporting.figures.style import (
    label_grid,
    label_knobs,
    plot_line,
    reference_line,
    save,
    shared_legend,
    site_grid,
)

STEM = "gamma_vs_l0"
CAPTIONS = {STEM: "Relative reconstruction bias γ = E‖x̂‖² / E[x̂·x] against L0 (the paper's Fig. 6 and 14). "
                  "γ = 1 (dashed) is unbiased; γ < 1 means the reconstructions are shrunk. The sweep's end "
                  "points are labelled with λ."}


def figures(frame: pd.DataFrame):
    main = frame[frame["arch"].isin([PROPOSED, BASELINE]) & (frame["variant"] == "sweep")]
    if main.empty:
        return
    fig, cells = site_grid(main, sharey=True)
    for (site, layer), ax in cells.items():
        cell = main[(main["site"] == site) & (main["layer"] == layer)]
        reference_line(ax, "gamma")
        for arch in (PROPOSED, BASELINE):
            plot_line(ax, cell, arch, "gamma")
        label_knobs(ax, cell, BASELINE, "gamma")
    label_grid(cells, "gamma")
    shared_legend(fig)
    yield STEM, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
