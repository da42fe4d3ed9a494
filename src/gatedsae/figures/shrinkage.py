"""Fig. 6 / 14 analogue: relative reconstruction bias γ vs L0 per site (γ < 1 is shrinkage)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .style import label, plot_line, save, site_grid

STEM = "gamma_vs_l0"
CAPTIONS = {STEM: "Relative reconstruction bias γ = E‖x̂‖² / E[x̂·x] against L0. γ = 1 is unbiased; γ < 1 means "
                  "the reconstructions are shrunk (the paper's Fig. 6 and 14)."}


def figures(frame: pd.DataFrame):
    main = frame[frame["arch"].isin(["gated", "baseline"]) & (frame["variant"] == "sweep")]
    fig, cells = site_grid(main, "Shrinkage: γ vs L0")
    for (site, layer), ax in cells.items():
        cell = main[(main["site"] == site) & (main["layer"] == layer)]
        for arch in ("gated", "baseline"):
            plot_line(ax, cell, arch, "gamma")
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
        label(ax, "gamma")
        ax.legend()
    yield STEM, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
