"""Gather every grid's training curves into one table for the experiment's report and `dvc plots`."""

from __future__ import annotations

from pathlib import Path

from gatedsae.plan.config import Config
from gatedsae.plan.grid import read_grid_index
from gatedsae.training.curve_log import CURVES_FILE, FIELDS, read_rows

# ---------------------------------------------------------------------------------------------------
# The experiment's curves in one table.

COLUMNS = ("model", "site", "layer", "variant", *FIELDS)


def gather_curves(config: "Config") -> Path:
    """`results/.../curves.csv`: the curves of every SAE in the experiment's grids (SAEs trained before
    curves were logged have none; the stage says how many)."""
    import pandas as pd

    from gatedsae.plan.grid import grid_indexes
    from gatedsae.reporting.tables import write_csv_atomic

    rows, missing = [], []
    for site, layer in config.experiment.site_layer_pairs():
        for variant, index in grid_indexes(config, site, layer).items():
            if not index.exists():
                continue
            logged = {}
            for row in read_rows(index.parent / CURVES_FILE):
                logged.setdefault(row["sae"], []).append(row)
            for entry in read_grid_index(index):
                if entry["sae"] not in logged:
                    missing.append(f"{site}/layer{layer}/{entry['sae']}")
                rows += [{"model": config.model.name, "site": site, "layer": layer, "variant": variant, **row}
                         for row in logged.get(entry["sae"], [])]
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame = frame.sort_values(["site", "layer", "variant", "sae", "step"], kind="stable")
    path = config.experiment.results / CURVES_FILE
    write_csv_atomic(frame, path)
    if missing:
        print(f"{len(missing)} SAEs have no training curves (trained before curves were logged, or with "
              f"train.log_every_steps=0): {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return path
