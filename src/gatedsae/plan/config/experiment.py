"""`experiment` (conf/experiment/): layers, sites, chapters and output folders; `paths` (where data
lives) and `resources` (how jobs are sized), neither of which changes a result."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gatedsae.core.allocator import MAX_MIB
from gatedsae.plan.config.checks import choice, distinct, finite, require, require_safe_name
from gatedsae.plan.sites import SITES


STAGES = ("cache", "train", "evaluate", "report")  # pipeline stages, in order, an experiment can run through


@dataclass
class ChapterConfig:
    """A part of an experiment that runs (and reports) on its own: the SAEs of the sweep groups whose
    architecture it names, on top of every earlier chapter's. `make replicate` runs the chapters in order,
    so the first one's verdict is out before the later ones start."""

    name: str = ""
    description: str = ""
    archs: list[str] = field(default_factory=list)  # architectures this chapter adds to the sweep
    rescale_shift: bool = False                     # whether it adds Fig. 9's rescale-and-shift
    all_tokens: bool = False                        # whether it adds the every-token run (sweep.all_tokens)
    groundtruth: bool = False                       # whether it adds the ground-truth benchmark (conf/groundtruth)


@dataclass
class ExperimentConfig:
    name: str = ""
    layers: list[int] = field(default_factory=list)
    sites: list[str] = field(default_factory=lambda: list(SITES))
    context_length: int = 128
    through: str = "report"  # the last stage `snakemake all` builds: cache | train | evaluate | report
    results_dir: str = ""    # tables, headline, report ("": results/<name>)
    figures_dir: str = ""    # figures ("": paper_figures/<name>)
    chapters: list[ChapterConfig] = field(default_factory=list)  # [] : the experiment is one chapter
    chapter: str = ""        # run only up to this chapter ("": the whole experiment)
    # site → its layers, in place of `layers` for that site: e.g. the attention output at the layer
    # conf/verdict's layer_rule chose (results/calibration/site_layers.json), {attn_z: [3]}
    site_layers: dict[str, list[int]] = field(default_factory=dict)

    @property
    def results(self) -> Path:
        return Path(self.results_dir or f"results/{self.name}")

    @property
    def figures(self) -> Path:
        return Path(self.figures_dir or f"paper_figures/{self.name}")

    def validate(self) -> None:
        require_safe_name(self.name, "experiment.name")
        require(bool(self.layers), "experiment.layers", "list at least one layer")
        require(bool(self.sites), "experiment.sites", f"list at least one of {', '.join(SITES)}")
        for site in self.sites:
            choice(site, "experiment.sites", SITES)
        distinct(self.sites, "experiment.sites")
        distinct(self.layers, "experiment.layers")
        require(self.context_length >= 2, "experiment.context_length", "must be at least 2 (BOS + one token)")
        choice(self.through, "experiment.through", STAGES)
        for site, layers in self.site_layers.items():
            choice(site, "experiment.site_layers", SITES)  # a site the experiment does not read is ignored
            require(bool(layers), f"experiment.site_layers.{site}", "list at least one layer, or remove the site")
            distinct(layers, f"experiment.site_layers.{site}")
        names = [chapter.name for chapter in self.chapters]
        require(all(names) and len(set(names)) == len(names), "experiment.chapters", "names must be set and distinct")
        if self.chapter:
            choice(self.chapter, "experiment.chapter", names)

    def layers_at(self, site: str) -> list[int]:
        """The layers `site` is read at: its own (site_layers) or the experiment's."""
        return [int(layer) for layer in self.site_layers.get(site, self.layers)]

    def site_layer_pairs(self) -> list[tuple[str, int]]:
        """Every (site, layer) of the experiment, in site order."""
        return [(site, layer) for site in self.sites for layer in self.layers_at(site)]

    @property
    def all_layers(self) -> list[int]:
        """Every layer any site is read at, in order."""
        return sorted({layer for _, layer in self.site_layer_pairs()})

    def chapters_through(self, name: str) -> list[ChapterConfig]:
        """The chapters up to and including `name`."""
        names = [chapter.name for chapter in self.chapters]
        return self.chapters[: names.index(name) + 1]


@dataclass
class ResourcesConfig:
    """How jobs are sized (never what they compute): device memory and sustained throughput, used to
    split a grid into passes that fit, for scheduler resources and for `gatedsae estimate`."""

    device_memory_gib: Optional[float] = None  # None: the device's own (GPU total, or the RAM available)
    sustained_tflops: Optional[float] = None   # None: 300 on a GPU, 0.06 on a CPU (see plan/estimates.py)
    # A job estimated to take longer than this (device-hours) is refused before anything runs: a token
    # budget or a resample count with a few zeros too many. Raise it for a run that really is that long.
    max_job_hours: float = 10_000.0
    light_job_mem_mb: int = 4000  # memory asked for jobs that only read and write files (no estimate of their own)
    job_cpus: int = 8             # CPUs each job that caches, trains or evaluates asks a cluster for
    gpu_model: Optional[str] = None  # the scheduler's GPU type for GPU jobs (SLURM --gpus=<model>:<n>)
    # Freed memory a stage's process keeps for reuse (MiB; 0: glibc's defaults): core/allocator.py
    retain_freed_mib: int = 1024

    def validate(self) -> None:
        for key in ("device_memory_gib", "sustained_tflops"):
            value = getattr(self, key)
            require(value is None or value > 0, f"resources.{key}", "must be positive, or null")
        finite(self.max_job_hours, "resources.max_job_hours")
        require(self.max_job_hours > 0, "resources.max_job_hours", "must be positive (device-hours)")
        require(self.light_job_mem_mb > 0, "resources.light_job_mem_mb", "must be a positive number of MB")
        require(self.job_cpus >= 1, "resources.job_cpus", "must be a positive integer")
        require(isinstance(self.retain_freed_mib, int) and 0 <= self.retain_freed_mib <= MAX_MIB,
                "resources.retain_freed_mib", f"must be a whole number of MiB from 0 (glibc's defaults) to {MAX_MIB}")
        require(self.gpu_model is None or re.fullmatch(r"[A-Za-z0-9_.]+", str(self.gpu_model)) is not None,
                "resources.gpu_model", "must be a GPU type name (letters, digits, '_' or '.'), e.g. h100, or null")


@dataclass
class PathsConfig:
    data: str = "data"

    def validate(self) -> None:
        require(bool(str(self.data).strip()), "paths.data", "is empty; give the folder for downloads, tokens, "
                "activations and checkpoints, e.g. paths.data=data")
        root = Path(self.data)
        require(not root.exists() or root.is_dir(), "paths.data", f"{root} exists and is not a folder; give a "
                "folder (it is created if missing)")
        existing = next(parent for parent in [root, *root.parents] if parent.exists())  # nearest existing ancestor
        require(existing.is_dir(), "paths.data", f"{existing} is not a folder, so {root} cannot be created")

    @property
    def root(self) -> Path:
        return Path(self.data)

    @property
    def downloads(self) -> Path:
        return self.root / "downloads"

    def model_dir(self, model: str) -> Path:
        return self.root / "models" / model

    def text_dir(self, corpus: str) -> Path:
        return self.root / "text" / corpus

    def tokens_dir(self, model: str, corpus: str) -> Path:
        return self.root / "tokens" / model / corpus

    def activations_dir(self, model: str, corpus: str, site: str, layer: int) -> Path:
        return self.root / "activations" / model / corpus / site / f"layer{layer}"

    def checkpoints_dir(self, model: str, corpus: str, site: str, layer: int, sweep: str) -> Path:
        return self.root / "checkpoints" / model / corpus / site / f"layer{layer}" / sweep

    def evaluation_dir(self, model: str, corpus: str, site: str, layer: int, sweep: str) -> Path:
        return self.root / "evaluation" / model / corpus / site / f"layer{layer}" / sweep
