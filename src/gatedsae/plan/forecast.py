"""A whole `make replicate` in seconds on a measured machine: the estimates' compute seconds per stage kind,
calibrated by one measured cold run (results/benchmarks/replicate.json), for the README's forecast
(scripts/plan_replicate.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.config import Config
from gatedsae.plan.estimates import COMPUTE_RULES, _saes_per_grid, dag_jobs, rule_estimate


# How the replicate benchmark's stages map onto the estimated rules (its older stage names included).
MEASURED_STAGES = {"cache": ("cache", "cache_activations"), "train": ("train", "train_grid", "train_all_tokens"),
                   "rescale_shift": ("rescale_shift",), "evaluate": ("evaluate",),
                   "data": ("prepare_model", "fetch_corpus", "tokenize")}


@dataclass
class MachineCalibration:
    """Measured seconds per estimated compute-second of each stage kind on one machine (from one cold
    `make replicate` of a known configuration), and what the estimates do not see: the install, the data
    preparation, and each chapter's cost beyond its computing stages (Snakemake, tables, figures, report,
    browser, study)."""

    ratios: dict[str, float]  # stage kind (MEASURED_STAGES) → measured / estimated seconds
    setup_seconds: float
    data_seconds: float
    chapter_overhead_seconds: float
    # measured stages the estimates do not size (the ground-truth benchmark, the interpretability measures):
    # their seconds as measured, added as they are
    fixed_seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"ratios": self.ratios, "setup_seconds": self.setup_seconds, "data_seconds": self.data_seconds,
                "chapter_overhead_seconds": self.chapter_overhead_seconds, "fixed_seconds": self.fixed_seconds}


def training_seeds(config: Config) -> int:
    """How many times each SAE is trained (train.seeds where the configuration has it)."""
    return int(getattr(config.train, "seeds", 1) or 1)


def compute_seconds_by_stage(config: Config, seeds: Optional[int] = None) -> dict[str, float]:
    """Estimated compute seconds of each stage kind of the whole experiment on a CPU (every job of the DAG,
    every training seed: `seeds`, else the configuration's)."""
    from dataclasses import replace

    totals = dict.fromkeys(("cache", "train", "rescale_shift", "evaluate"), 0.0)
    seeds = seeds or training_seeds(config)
    if hasattr(config.train, "seeds"):  # the jobs' estimates of one seed, multiplied below
        config = replace(config, train=replace(config.train, seeds=1))
    for rule, site, count in dag_jobs(config):
        estimate = rule_estimate(config, rule, site)
        kind = "train" if rule == "train_all_tokens" else rule
        if estimate is None or rule not in COMPUTE_RULES or kind not in totals:  # (interp: not yet measured)
            continue
        seconds = estimate.hours("cpu", config.resources.sustained_tflops) * 3600 * count
        if kind == "evaluate":  # the clean prefix once, the remainder once per SAE and seed
            n_saes = _saes_per_grid(config, site)
            seconds *= (n_saes * seeds + 2) / (n_saes + 2)
        elif kind != "cache":
            seconds *= seeds
        totals[kind] += seconds
    return totals


def calibrate(measured: dict, config: Config) -> MachineCalibration:
    """A MachineCalibration from a replicate benchmark (results/benchmarks/replicate.json: setup_seconds
    and chapters with their stages' seconds) of `config`."""
    stages: dict[str, float] = {}
    overheads = []
    for chapter in measured["chapters"]:
        for name, seconds in chapter["stages"].items():
            stages[name] = stages.get(name, 0.0) + seconds
        overheads.append(chapter["wall_seconds"] - sum(chapter["stages"].values()))
    estimated = compute_seconds_by_stage(config)
    ratios = {kind: sum(stages.get(name, 0.0) for name in MEASURED_STAGES[kind]) / estimated[kind]
              for kind in estimated if estimated[kind] > 0}
    data = sum(stages.get(name, 0.0) for name in MEASURED_STAGES["data"])
    sized = {name for names in MEASURED_STAGES.values() for name in names}
    return MachineCalibration(ratios, float(measured.get("setup_seconds", 0.0)), data,
                              sum(overheads) / len(overheads),
                              {name: seconds for name, seconds in sorted(stages.items()) if name not in sized})


def replicate_seconds(config: Config, calibration: MachineCalibration, seeds: Optional[int] = None) -> dict[str, float]:
    """Predicted wall seconds of a cold `make replicate` of `config` (with `seeds` training seeds, else the
    configuration's) on the calibrated machine, by part (`total` their sum): each computing stage's
    estimate times its measured ratio, plus the install, the data preparation, each chapter's overhead and
    the stages the estimates do not size, as measured."""
    parts = {kind: seconds * calibration.ratios.get(kind, 1.0)
             for kind, seconds in compute_seconds_by_stage(config, seeds).items()}
    parts |= {"setup": calibration.setup_seconds, "data": calibration.data_seconds,
              "chapters": calibration.chapter_overhead_seconds * max(len(config.experiment.chapters), 1),
              "unsized": sum(calibration.fixed_seconds.values())}
    return parts | {"total": sum(parts.values())}


def with_speedups(parts: dict[str, float], speedups: dict) -> dict[str, float]:
    """`parts` (replicate_seconds) with evaluation and training divided by the speed-ups measured since the
    calibrating run (component benchmarks: a prediction, until a cold run times it)."""
    faster = {kind: seconds / speedups[kind] if kind in ("evaluate", "train") else seconds
              for kind, seconds in parts.items() if kind != "total"}
    return faster | {"total": sum(faster.values())}
