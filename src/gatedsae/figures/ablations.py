"""Fig. 8 (the Gated ablations) and Fig. 9 (baseline, baseline + rescale & shift, Gated): loss
recovered vs L0 at every site where those SAEs were trained."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..tables import SITE_LABELS
from .style import label, plot_sweep, save

FIGURES = {  # stem: (title, architectures drawn, the ones that must be present for a panel)
    "fig8_ablations": ("Fig. 8: Gated ablations",
                       ["gated", "gated_unfrozen_decoder", "gated_no_rmag", "gated_untied"],
                       {"gated_unfrozen_decoder", "gated_no_rmag", "gated_untied"}),
    "fig9_rescale_shift": ("Fig. 9: fixing shrinkage alone", ["baseline", "baseline_rescale_shift", "gated"],
                           {"baseline_rescale_shift"}),
}
CAPTIONS = {
    "fig8_ablations": "Ablations of the Gated SAE (the paper's Fig. 8): the auxiliary loss also training the decoder, "
                      "r_mag fixed at 0, and separate gate and magnitude encoders.",
    "fig9_rescale_shift": "A trained baseline SAE, frozen, with only a per-feature rescale and shift of its "
                          "magnitudes learned on top, against the baseline and Gated (the paper's Fig. 9).",
}


def figures(frame: pd.DataFrame):
    for stem, (title, archs, distinctive) in FIGURES.items():
        # Only where the family's distinctive SAEs exist (the ablations are trained at some sites only).
        cells = frame[frame["arch"].isin(archs)].groupby(["site", "layer"])
        panels = [(key, cell) for key, cell in cells if distinctive & set(cell["arch"])]
        if not panels:
            continue
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
        fig.suptitle(title)
        for ax, ((site, layer), cell) in zip(axes[0], panels):
            for arch in archs:
                plot_sweep(ax, cell, arch, "loss_recovered")
            ax.set_title(f"{SITE_LABELS[site]}, layer {layer}")
            label(ax, "loss_recovered")
            ax.legend()
        yield stem, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
