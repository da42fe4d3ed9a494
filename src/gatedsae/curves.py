"""Training curves: every `train.log_every_steps` steps, one row per SAE of a grid (loss terms, L0, dead
fraction, learning rate) appended to `<grid dir>/curves.csv`; the experiment's curves are then gathered
into `results/.../curves.csv`, which `dvc plots` and the report's figure read.

The logger only reads what a training step leaves behind (`GridTrainer.last_losses`, the optimisers'
learning rates, the steps since each feature last fired), so it does not touch the step itself. A
resumed run first drops its SAEs' rows past the step it resumes from (written after the last saved
state, before a kill), then appends: no step is logged twice.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .atomic import atomic_path

if TYPE_CHECKING:
    from .config import Config
    from .train import GridTrainer

CURVES_FILE = "curves.csv"
LOSS_TERMS = ("total", "reconstruction", "sparsity", "auxiliary")
FIELDS = ("sae", "arch", "l1", "step", "tokens", *LOSS_TERMS, "l0", "dead_fraction", "lr")


def _read_rows(path: Path) -> list[dict]:
    """The well-formed rows of a curves file (a row cut short by a kill is dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    complete = []
    for row in rows:
        if None in row or any(row.get(field) in (None, "") for field in FIELDS):
            continue
        try:
            row["step"] = int(row["step"])
        except ValueError:
            continue
        complete.append(row)
    return complete


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


class CurveLog:
    """The curves of one trainer's SAEs, in its output folder."""

    def __init__(self, directory: Path, every: int, saes: list[str], resumed_at: int):
        self.path, self.every = Path(directory) / CURVES_FILE, every
        if every <= 0:
            return
        mine = set(saes)
        kept = [row for row in _read_rows(self.path) if row["sae"] not in mine or row["step"] <= resumed_at]
        _write_rows(self.path, kept)

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == last)

    def record(self, trainer: "GridTrainer") -> None:
        """Append one row per SAE for the step the trainer has just taken (before any resampling)."""
        if not self.due(trainer.step, trainer.steps):
            return
        window = trainer.train.resample_window_steps
        rows = []
        for spec in trainer.specs:
            losses = trainer.last_losses[spec.name]
            idle = trainer.idle_steps[spec.group][spec.index]
            rows.append({"sae": spec.name, "arch": spec.arch, "l1": spec.l1, "step": trainer.step,
                         "tokens": trainer.step * trainer.train.batch_size,
                         **{term: f"{losses.get(term, 0.0):.6g}" for term in LOSS_TERMS},
                         "l0": f"{losses['l0']:.6g}", "dead_fraction": f"{float((idle >= window).float().mean()):.6g}",
                         "lr": f"{trainer.optimizers[spec.group].param_groups[0]['lr']:.6g}"})
        new = not self.path.exists()
        with open(self.path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerows(rows)


# ---------------------------------------------------------------------------------------------------
# The experiment's curves in one table.

COLUMNS = ("model", "site", "layer", "variant", *FIELDS)


def gather_curves(config: "Config") -> Path:
    """`results/.../curves.csv`: the curves of every SAE in the experiment's grids (SAEs trained before
    curves were logged have none; the stage says how many)."""
    from .evaluate import grid_indexes
    from .tables import write_csv_atomic

    import pandas as pd

    rows, missing = [], []
    for site in config.experiment.sites:
        for layer in config.experiment.layers:
            for variant, index in grid_indexes(config, site, layer).items():
                if not index.exists():
                    continue
                logged = {}
                for row in _read_rows(index.parent / CURVES_FILE):
                    logged.setdefault(row["sae"], []).append(row)
                for entry in json.loads(index.read_text())["saes"]:
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
