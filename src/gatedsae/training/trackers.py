"""Experiment trackers (`train.tracker`): the training curves' rows, as the grid trainer logs them to
curves.csv, also sent to Weights & Biases or DVCLive. Off by default; never part of what is trained.

One tracker run per grid (a site, layer and sweep), each SAE's quantities as `<sae>/<quantity>` against
the training step. W&B follows its own settings (`wandb login`, or `WANDB_MODE=offline` to write runs
under the log folder and `wandb sync` them later); DVCLive writes `logs/<experiment>/dvclive/<grid>/`,
which `dvc plots show` reads. After a kill, the steps between the last saved state and the kill are sent
again when the run resumes (curves.csv itself keeps each step once).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Protocol

QUANTITIES = ("total", "reconstruction", "sparsity", "auxiliary", "l0", "dead_fraction", "lr")


class Tracker(Protocol):
    def log(self, step: int, rows: list[dict]) -> None: ...

    def close(self) -> None: ...


def metrics_of(rows: list[dict]) -> dict[str, float]:
    return {f"{row['sae']}/{name}": float(row[name]) for row in rows for name in QUANTITIES if row.get(name) != ""}


class WandbTracker:
    def __init__(self, run: str, directory: Path, settings: dict):
        import wandb

        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project="gatedsae", name=run, group=run.split("/")[0], dir=str(directory),
                              config=settings, reinit="create_new")

    def log(self, step: int, rows: list[dict]) -> None:
        self.run.log(metrics_of(rows), step=step)

    def close(self) -> None:
        self.run.finish()


class DvcliveTracker:
    def __init__(self, run: str, directory: Path, settings: dict):
        from dvclive import Live

        self.live = Live(dir=str(directory / "dvclive" / run), resume=True, save_dvc_exp=False)
        self.live.log_params(settings)

    def log(self, step: int, rows: list[dict]) -> None:
        self.live.step = step
        for name, value in metrics_of(rows).items():
            self.live.log_metric(name, value)

    def close(self) -> None:
        self.live.end()


TRACKERS = {"wandb": WandbTracker, "dvclive": DvcliveTracker}
PACKAGES = {"wandb": "wandb", "dvclive": "dvclive"}  # what each needs installed


def open_tracker(kind: str, run: str, directory: Path, settings: dict) -> Optional[Tracker]:
    """The tracker `kind` names ("none": None) for one grid's run."""
    return None if kind == "none" else TRACKERS[kind](run, directory, settings)
