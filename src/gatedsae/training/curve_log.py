"""Training curves: one row per SAE every `train.log_every_steps` steps (loss terms, L0, dead fraction,
lr), appended to `curves.csv` beside the grid's checkpoints and kept consistent with the saved state, so
a resumed run continues its curves.

A row's loss terms and L0 are their means over the steps since the previous row (`IntervalMeans`), not
the last batch's: one batch of a thousand activations reads the reconstruction loss of a dense SAE to
about ±10%, which would drown a convergence rule of a few percent (conf/verdict `convergence`); the mean
of every step costs nothing, since each step computes them anyway. Dead fraction and lr are the step's."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Optional

from gatedsae.core.atomic import atomic_path
from gatedsae.plan.architectures import KNOBS

if TYPE_CHECKING:
    from gatedsae.training.trackers import Tracker
    from gatedsae.training.trainer import GridTrainer

CURVES_FILE = "curves.csv"
LOSS_TERMS = ("total", "reconstruction", "sparsity", "auxiliary")
# An SAE's row sets the knob its architecture is swept over (KNOBS) and leaves the others empty.
FIELDS = ("sae", "arch", "l1", "step", "tokens", *LOSS_TERMS, "l0", "dead_fraction", "lr",
          *(knob for knob in KNOBS if knob != "l1"))


def read_rows(path: Path) -> list[dict]:
    """The well-formed rows of a curves file (a row cut short by a kill, whose last fields are missing,
    is dropped)."""
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    complete = []
    for row in rows:
        if None in row or any(row.get(field) in (None, "") for field in FIELDS if field not in KNOBS):
            continue  # a file written before a knob had its column lacks that column, which is fine
        if not any(row.get(knob) for knob in KNOBS):
            continue
        try:
            row["step"] = int(row["step"])
        except ValueError:
            continue
        complete.append(row)
    return complete


def copy_curve(source: Path, target: Path, sae: str) -> None:
    """`sae`'s rows of the curves file `source` into `target`, in place of any it held for that SAE (an SAE
    adopted from another grid brings its curve with it)."""
    kept = [row for row in read_rows(target) if row["sae"] != sae]
    _write_rows(target, kept + [row for row in read_rows(source) if row["sae"] == sae])


def _write_rows(path: Path, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)


class IntervalMeans:
    """Each SAE's loss terms and L0 summed over the steps since the last logged row; part of the trainer's
    saved state, so a resumed run logs the same means as one never stopped."""

    def __init__(self, state: Optional[dict] = None):
        state = state or {}
        self.steps: int = state.get("steps", 0)
        self.sums: dict[str, dict[str, float]] = {name: dict(terms) for name, terms in state.get("sums", {}).items()}

    def add(self, sae: str, values: dict[str, float]) -> None:
        sums = self.sums.setdefault(sae, dict.fromkeys(values, 0.0))
        for name, value in values.items():
            sums[name] += value

    def step_done(self) -> None:
        self.steps += 1

    def mean(self, sae: str) -> dict[str, float]:
        return {name: total / max(self.steps, 1) for name, total in self.sums[sae].items()}

    def reset(self) -> None:
        self.steps, self.sums = 0, {}

    def state_dict(self) -> dict:
        return {"steps": self.steps, "sums": {name: dict(terms) for name, terms in self.sums.items()}}


class CurveLog:
    """The curves of one trainer's SAEs, in its output folder (and in `tracker`, when one is set)."""

    def __init__(self, directory: Path, every: int, saes: list[str], resumed_at: int,
                 tracker: Optional["Tracker"] = None):
        self.path, self.every, self.tracker = Path(directory) / CURVES_FILE, every, tracker
        if every <= 0:
            return
        mine = set(saes)
        kept = [row for row in read_rows(self.path) if row["sae"] not in mine or row["step"] <= resumed_at]
        _write_rows(self.path, kept)

    def due(self, step: int, last: int) -> bool:
        return self.every > 0 and (step % self.every == 0 or step == last)

    def record(self, trainer: "GridTrainer") -> None:
        """Append one row per SAE for the step the trainer has just taken (before any resampling): its
        losses averaged over the steps since the last row, which then start a new interval."""
        if not self.due(trainer.step, trainer.steps):
            return
        window = trainer.train.resample_window_steps
        rows = []
        for spec in trainer.specs:
            losses = trainer.since_last_row.mean(spec.name)
            idle = trainer.idle_steps[spec.group][spec.index]
            rows.append({"sae": spec.name, "arch": spec.arch, **spec.knob_fields, "step": trainer.step,
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
        trainer.since_last_row.reset()
        if self.tracker is not None:
            self.tracker.log(trainer.step, rows)

    def close(self) -> None:
        if self.tracker is not None:
            self.tracker.close()
            self.tracker = None
