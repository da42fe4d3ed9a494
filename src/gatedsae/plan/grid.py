"""The SAE grid as a plan: which SAEs a sweep trains at a site (`SAESpec`), their seeds, and the grid
index written beside the checkpoints. Torch-free, so the workflow and the estimates can use it. Whether
a finished checkpoint can be reused is its training key (plan/identity.py)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from gatedsae.core.errors import IntegrityError
from gatedsae.core.sealed import read_json, write_sealed_json
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
    seed: Optional[int] = None  # an extra training seed (train.seeds); None: the run's own, train.seed

    @property
    def name(self) -> str:
        return f"{self.arch}_w{self.width}_{self.knob}_{self.value:g}" + ("" if self.seed is None else f"_seed{self.seed}")

    def training_seed(self, run_seed: int) -> int:
        """The seed it is initialised (and resampled) from: its own, or the run's (train.seed)."""
        return run_seed if self.seed is None else self.seed

    @property
    def knob_fields(self) -> dict:
        """The knob as recorded in checkpoints, grid indexes and metrics rows: {knob: value}."""
        return {self.knob: int(self.value) if self.knob == "k" else self.value}


def grid_specs(config: Config, d: int, site: str) -> list[SAESpec]:
    """Every SAE of the sweep at `site`, in order (no parameters allocated): each knob value once per
    training seed (train.seeds), the seeds of one value next to each other in its group's module."""
    seeds = [None, *config.train.seed_values[1:]]
    return [SAESpec(g, i * len(seeds) + j, group.arch, group.width(d), value, group.lr, group.l1_units, group.knob, seed)
            for g, group in enumerate(config.sweep.groups_at(site)) for i, value in enumerate(group.values)
            for j, seed in enumerate(seeds)]


def regrouped(specs: list[SAESpec]) -> list[SAESpec]:
    """`specs` (a subset of a grid, in grid order) placed in modules of their own: groups numbered in
    order of appearance, members in order within each (the layout a trainer of just these SAEs uses)."""
    from dataclasses import replace

    groups: dict[int, int] = {}
    members: dict[int, int] = {}
    placed = []
    for spec in specs:
        group = groups.setdefault(spec.group, len(groups))
        placed.append(replace(spec, group=group, index=members.get(group, 0)))
        members[group] = members.get(group, 0) + 1
    return placed


def sae_seed(seed: int, arch: str, width: int, value: float) -> int:
    """An SAE's initialisation seed: a function of its spec alone, so it is the same in any grid."""
    text = json.dumps([seed, arch, width, float(value)])
    return int(config_hash({"seed": text}), 16) % (2**31)


# ---------------------------------------------------------------------------------------------------
# The grid index beside the checkpoints lists them; a finished checkpoint with the same training key is
# kept (plan/identity.py), so adding one λ (or one seed) to a sweep trains only the new SAEs.

GRID_INDEX = "grid.json"
# The variants of a site's training (metrics.csv's `variant`): the sweep's grid, and the grids trained
# beside it, each in the folder of its name within the sweep's, with its own grid.json: Fig. 9's
# rescale-and-shift on the sweep's baselines, and the every-token run (sweep.all_tokens). The stage that
# trains each.
MAIN_VARIANT = "sweep"
RESCALE_SHIFT_VARIANT = "rescale_shift"
RESCALE_SHIFT_DIR = RESCALE_SHIFT_VARIANT
ALL_TOKENS_VARIANT = "all_tokens"
ALL_TOKENS_DIR = ALL_TOKENS_VARIANT
VARIANT_DIRS = {RESCALE_SHIFT_VARIANT: RESCALE_SHIFT_DIR, ALL_TOKENS_VARIANT: ALL_TOKENS_DIR}
VARIANT_STAGES = {MAIN_VARIANT: "train", RESCALE_SHIFT_VARIANT: "rescale-shift",
                  ALL_TOKENS_VARIANT: "train-all-tokens"}


def grid_dir(config: Config, site: str, layer: int, variant: str = MAIN_VARIANT) -> Path:
    """Where the checkpoints of (site, layer)'s grid of `variant` lie (a variant: a folder of the sweep's)."""
    root = config.paths.checkpoints_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
    return root if variant == MAIN_VARIANT else root / VARIANT_DIRS[variant]


def same_sae_elsewhere(name: str, layer_dir: Path) -> list[Path]:
    """Every folder under `layer_dir` (a site and layer's checkpoints: each sweep's grid and its variants)
    holding an SAE named `name`: where a grid finds an SAE another grid already trained."""
    return sorted([*layer_dir.glob(f"*/{name}"), *layer_dir.glob(f"*/*/{name}")])


def trained_variants(config: Config, site: str) -> list[str]:
    """The grids trained at `site`: the sweep, its rescale-and-shift and its every-token variant where
    configured."""
    return [MAIN_VARIANT] + [RESCALE_SHIFT_DIR] * config.sweep.rescale_shift_at(site) \
        + [ALL_TOKENS_DIR] * config.sweep.all_tokens_at(site)


def grid_indexes(config: Config, site: str, layer: int) -> dict[str, Path]:
    """The grid index of every grid trained at (site, layer), by variant."""
    return {variant: grid_dir(config, site, layer, variant) / GRID_INDEX for variant in trained_variants(config, site)}


def all_tokens_config(config: Config) -> Config:
    """The paper's treatment of massive activations as a training run of its own: its grid
    (`sweep.all_tokens_groups`, or the sweep's Gated and baseline groups that are `in_variants`) trained
    with every non-BOS row (`train.max_norm_ratio` null) and its own gradient clip where one is set, so
    their checkpoints record no threshold and are evaluated on every non-BOS token too."""
    from dataclasses import replace

    sweep = config.sweep
    return replace(config, sweep=replace(sweep, groups=sweep.all_tokens_grid(), all_tokens_groups=[],
                                         rescale_shift=False),
                   train=replace(config.train, max_norm_ratio=None,
                                 max_grad_norm=sweep.all_tokens_max_grad_norm or config.train.max_grad_norm))


def write_grid_index(out_dir: Path, site: str, layer: int, sweep: str, specs: list[SAESpec], root: Path) -> Path:
    """`grid.json`, written last: every SAE of the grid and where its checkpoint lies, relative to the data
    root (paths.data), so the data folder can move (read it with `read_grid_index`)."""
    folder = Path(os.path.relpath(out_dir, root))
    entries = [{"sae": spec.name, "path": str(folder / spec.name), "arch": spec.arch, **spec.knob_fields,
                "width": spec.width, **({} if spec.seed is None else {"seed": spec.seed})} for spec in specs]
    write_sealed_json(out_dir / GRID_INDEX, {"site": site, "layer": layer, "sweep": sweep,
                                             "paths_relative_to": "paths.data", "saes": entries})
    return out_dir / GRID_INDEX


def read_trained_grid(index: Path, variant: str) -> list[dict]:
    """A grid index's entries; a grid not trained yet is refused with the stage that trains it."""
    if not index.exists():
        raise FileNotFoundError(f"{index} does not exist; train the grid first (stage {VARIANT_STAGES[variant]})")
    return read_grid_index(index)


def read_grid_index(index: Path) -> list[dict]:
    """The entries of a `grid.json`, each "path" resolved to its checkpoint directory on this machine:
    beside the index, wherever the data root now is (older indexes held working-directory paths)."""
    data = read_json(index, "Run the pipeline again (make run, or Snakemake): it rebuilds a damaged index (or `python -m "
                            "gatedsae train --site=S --layer=L …`, `rescale-shift` for Fig. 9's), retraining no finished SAE.")
    if not isinstance(data.get("saes"), list):
        raise IntegrityError(f"{index} lacks its list of SAEs: it is corrupt. Run the pipeline again (make run) to "
                             "rebuild it.")
    return [{**entry, "path": Path(index).parent / entry["sae"]} for entry in data["saes"]]
