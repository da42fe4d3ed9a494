"""Sparse probing accuracy against L0, Gated and the baseline, one panel per site (the interp stage's
rows.csv, development split): each SAE configuration at the mean of its training seeds and of the site's
tasks, one line per k; the probe on the raw activations as the reference."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.architectures import label as arch_label
from gatedsae.plan.interp import FIGURE
from gatedsae.reporting.figures.style import COLOURS, MARKERS, label_grid, save, shared_legend, site_grid

CAPTIONS = {FIGURE: "Sparse probing (a proxy for interpretability, after SAEBench): held-out accuracy of a logistic "
                    "probe on the k latents that best separate each task's classes (tasks: each corpus source "
                    "against the others, token classes), mean over the site's tasks and each configuration's "
                    "training seeds, against L0; dotted: the same probe on every dimension of the raw activations. "
                    "Development split."}
LINESTYLES = ("-", "--", ":", "-.")


def render(rows: pd.DataFrame, out_dir: Path) -> list[Path]:
    """The figure (PNG and PDF) from rows.csv; none when it holds no probing rows."""
    rows = rows[(rows["measure"] == "probing") & (rows["split"] == _development(rows))]
    if rows.empty:
        return []
    saes = rows[rows["arch"].isin([PROPOSED, BASELINE])]
    # per SAE: the mean over tasks; per configuration (its L0 and accuracy): the mean over seeds
    per_sae = saes.groupby(["site", "layer", "arch", "sae", "seed", "k"], as_index=False)[["l0", "value"]].mean()
    per_sae["config"] = per_sae["sae"].str.replace(r"_seed\d+$", "", regex=True)
    configs = per_sae.groupby(["site", "layer", "arch", "config", "k"], as_index=False)[["l0", "value"]].mean()
    fig, cells = site_grid(rows)
    ks = sorted(rows["k"].dropna().unique())
    for (site, layer), ax in cells.items():
        mine = configs[(configs["site"] == site) & (configs["layer"] == layer)]
        for arch in (PROPOSED, BASELINE):
            for k, style in zip(ks, LINESTYLES):
                line = mine[(mine["arch"] == arch) & (mine["k"] == k)].sort_values("l0")
                if not line.empty:
                    ax.plot(line["l0"], line["value"], style, marker=MARKERS.get(arch), color=COLOURS.get(arch),
                            markersize=3, label=f"{arch_label(arch)}, k = {int(k)}")
        raw = rows[(rows["arch"] == "raw") & (rows["site"] == site) & (rows["layer"] == layer)]
        if not raw.empty:
            ax.axhline(raw["value"].mean(), color="grey", linestyle=":", linewidth=1, label="raw activations")
        ax.set_xscale("log")
    label_grid(cells, "probing_accuracy")
    shared_legend(fig, ncol=3)
    plt.setp([ax.get_xticklabels(minor=True) for ax in cells.values()], visible=False)
    return save(fig, out_dir, FIGURE)


def _development(rows: pd.DataFrame) -> str:
    splits = set(rows["split"])
    return "validation" if "validation" in splits else sorted(splits)[0]
