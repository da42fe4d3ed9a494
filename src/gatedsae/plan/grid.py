"""The SAE grid as a plan: which SAEs a sweep trains at a site (`SAESpec`), their seeds, and the grid
index written beside the checkpoints. Torch-free, so the workflow and the estimates can use it. Whether
a finished checkpoint can be reused is its training key (plan/identity.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from gatedsae.core.atomic import write_json_atomic
from gatedsae.plan.config import Config
from gatedsae.plan.identity import config_hash


@dataclass(frozen=True)
class SAESpec:
    """One SAE of the grid: where it sits (group, index) and what it is."""

    group: int
    index: int
    arch: str
    width: int
    value: float  # its sparsity knob's value: λ, or k
    lr: float
    l1_units: str = "normalized"
    knob: str = "l1"

    @property
    def name(self) -> str:
        return f"{self.arch}_w{self.width}_{self.knob}_{self.value:g}"

    @property
    def knob_fields(self) -> dict:
        """The knob as recorded in checkpoints, grid indexes and metrics rows: {knob: value}."""
        return {self.knob: int(self.value) if self.knob == "k" else self.value}


def grid_specs(config: Config, d: int, site: str) -> list[SAESpec]:
    """Every SAE of the sweep at `site`, in order (no parameters allocated)."""
    return [SAESpec(g, i, group.arch, group.width(d), value, group.lr, group.l1_units, group.knob)
            for g, group in enumerate(config.sweep.groups_at(site)) for i, value in enumerate(group.values)]


def sae_seed(seed: int, arch: str, width: int, value: float) -> int:
    """An SAE's initialisation seed: a function of its spec alone, so it is the same in any grid."""
    text = json.dumps([seed, arch, width, float(value)])
    return int(config_hash({"seed": text}), 16) % (2**31)


# ---------------------------------------------------------------------------------------------------
# The grid index beside the checkpoints lists them; a finished checkpoint with the same training key is
# kept (plan/identity.py), so adding one λ to a sweep trains one SAE.

GRID_INDEX = "grid.json"
# The variants of a site's training (metrics.csv's `variant`): the sweep's grid, and Fig. 9's
# rescale-and-shift grid trained on its baselines, in the folder of that name beside the sweep's.
MAIN_VARIANT = "sweep"
RESCALE_SHIFT_VARIANT = "rescale_shift"
RESCALE_SHIFT_DIR = RESCALE_SHIFT_VARIANT


def sweep_of(config: Config, site: str, specs: list[SAESpec]) -> Config:
    """`config` with the sweep at `site` cut down to `specs` (groups keep their order and settings)."""
    from dataclasses import replace

    wanted = {(s.group, s.value) for s in specs}
    groups = [replace(group, **{group.knob: [v for v in group.values if (g, v) in wanted]})
              for g, group in enumerate(config.sweep.groups_at(site))]
    return replace(config, sweep=replace(config.sweep, groups=[g for g in groups if g.values]))


def grid_dir(config: Config, site: str, layer: int) -> Path:
    return config.paths.checkpoints_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)


def write_grid_index(out_dir: Path, site: str, layer: int, sweep: str, specs: list[SAESpec], root: Path) -> Path:
    """`grid.json`, written last: every SAE of the grid and where its checkpoint lies, relative to the data
    root (paths.data), so the data folder can move (read it with `read_grid_index`)."""
    folder = Path(os.path.relpath(out_dir, root))
    entries = [{"sae": spec.name, "path": str(folder / spec.name), "arch": spec.arch, **spec.knob_fields,
                "width": spec.width} for spec in specs]
    write_json_atomic(out_dir / GRID_INDEX, {"site": site, "layer": layer, "sweep": sweep,
                                             "paths_relative_to": "paths.data", "saes": entries})
    return out_dir / GRID_INDEX


def read_grid_index(index: Path) -> list[dict]:
    """The entries of a `grid.json`, each "path" resolved to its checkpoint directory on this machine:
    beside the index, wherever the data root now is (older indexes held working-directory paths)."""
    return [{**entry, "path": Path(index).parent / entry["sae"]} for entry in json.loads(Path(index).read_text())["saes"]]
