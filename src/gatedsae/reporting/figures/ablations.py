"""Fig. 8 (the Gated ablations), Fig. 9 (baseline, baseline + rescale & shift, Gated) and, beyond the
paper, the Gated SAE's successors (JumpReLU, TopK): loss recovered vs L0 at every site where those SAEs
were trained, with the baseline drawn for scale. Which architectures each figure draws comes from the
architecture registry's figure roles."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gatedsae.plan.architectures import BASELINE, PROPOSED, names
from gatedsae.reporting.figures.style import (
    FULL_WIDTH,
    SINGLE_COLUMN,
    label,
    panel_title,
    plot_sweep,
    reference_line,
    save,
    shared_legend,
)

ABLATIONS, RESCALE_SHIFT, SUCCESSORS = names("ablation"), names("rescale_shift"), names("successor")
FIGURES = {  # stem: (architectures drawn, the ones that must be present for a panel, drawn faint)
    "fig8_ablations": ([PROPOSED, *ABLATIONS, BASELINE], set(ABLATIONS), {BASELINE}),
    "fig9_rescale_shift": ([BASELINE, *RESCALE_SHIFT, PROPOSED], set(RESCALE_SHIFT), set()),
    "successors_pareto": ([BASELINE, PROPOSED, *SUCCESSORS], set(SUCCESSORS), set()),
}
CAPTIONS = {
    "fig8_ablations": "Ablations of the Gated SAE (the paper's Fig. 8): the auxiliary loss also training the decoder "
                      "(unfrozen decoder), r_mag fixed at 0, and separate gate and magnitude encoders (untied), with "
                      "the baseline (faint) for scale. Loss recovered against L0; dashed: 100%.",
    "successors_pareto": "Beyond the paper: the Gated SAE's successors, JumpReLU (an L0 penalty through "
                         "straight-through estimators) and TopK (k features per token, AuxK for dead latents), against "
                         "Gated and the baseline at the same width. Loss recovered against L0; dashed: 100%.",
    "fig9_rescale_shift": "A trained baseline SAE, frozen, with only a per-feature rescale and shift of its "
                          "magnitudes learned on top, against the baseline and Gated (the paper's Fig. 9): fixing "
                          "shrinkage alone closes part of the gap. Dashed: 100% loss recovered.",
}


def figures(frame: pd.DataFrame):
    for stem, (archs, distinctive, faint) in FIGURES.items():
        # Only where the family's distinctive SAEs exist (the ablations are trained at some sites only).
        cells = frame[frame["arch"].isin(archs)].groupby(["site", "layer"])
        panels = [(key, cell) for key, cell in cells if distinctive & set(cell["arch"])]
        if not panels:
            continue
        width = SINGLE_COLUMN if len(panels) == 1 else FULL_WIDTH
        fig, axes = plt.subplots(1, len(panels), figsize=(width, 2.5), squeeze=False)
        several_layers = len({layer for (_, layer), _ in panels}) > 1
        for index, (ax, ((site, layer), cell)) in enumerate(zip(axes[0], panels)):
            reference_line(ax, "loss_recovered")
            for arch in archs:
                plot_sweep(ax, cell, arch, "loss_recovered", faint=arch in faint)
            ax.set_title(panel_title(site, layer, several_layers))
            label(ax, "loss_recovered", first_column=index == 0)
        shared_legend(fig, ncol=3 if len(archs) > 3 else None)
        yield stem, fig


def render(frame: pd.DataFrame, out_dir: Path, **_) -> list[Path]:
    return [path for stem, fig in figures(frame) for path in save(fig, out_dir, stem)]
