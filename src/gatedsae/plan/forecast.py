"""A whole `make replicate` in seconds on a measured machine: the estimates' compute seconds per stage kind,
calibrated by one measured cold run (results/benchmarks/replicate.json), for the README's forecast
(scripts/plan_replicate.py). Where that run timed a stage per site, each site has its own ratio: the estimates
count dense FLOPs, while a sparse training step's cost also grows with the SAEs' L0, which differs by site
(an attention SAE at L0 3 trains several times faster per FLOP than a residual-stream SAE at L0 300)."""

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
    # stage kind → site → measured / estimated seconds, for the sites the run timed on their own (`ratios`
    # then holds the kind's other sites and its jobs without a site)
    site_ratios: dict[str, dict[str, float]] = field(default_factory=dict)

    def ratio(self, kind: str, site: Optional[str]) -> float:
        return self.site_ratios.get(kind, {}).get(site, self.ratios.get(kind, 1.0))

    def to_dict(self) -> dict:
        return {"ratios": self.ratios, "setup_seconds": self.setup_seconds, "data_seconds": self.data_seconds,
                "chapter_overhead_seconds": self.chapter_overhead_seconds, "fixed_seconds": self.fixed_seconds,
                "site_ratios": self.site_ratios}


def training_seeds(config: Config) -> int:
    """How many times each SAE is trained (train.seeds where the configuration has it)."""
    return int(getattr(config.train, "seeds", 1) or 1)


def compute_seconds_by_stage(config: Config, seeds: Optional[int] = None) -> dict[str, float]:
    """Estimated compute seconds of each stage kind of the whole experiment on a CPU (every job of the DAG,
    every training seed: `seeds`, else the configuration's)."""
    return {kind: sum(sites.values()) for kind, sites in compute_seconds_by_site(config, seeds).items()}


def compute_seconds_by_site(config: Config, seeds: Optional[int] = None) -> dict[str, dict[Optional[str], float]]:
    """compute_seconds_by_stage, per site within each stage kind (None: jobs without a site)."""
    from dataclasses import replace

    totals: dict[str, dict[Optional[str], float]] = {kind: {} for kind in ("cache", "train", "rescale_shift", "evaluate")}
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
        totals[kind][site] = totals[kind].get(site, 0.0) + seconds
    return totals


def calibrate(measured: dict, config: Config) -> MachineCalibration:
    """A MachineCalibration from a replicate benchmark (results/benchmarks/replicate.json: setup_seconds
    and chapters with their stages' seconds) of `config`."""
    stages: dict[str, float] = {}
    by_site: dict[str, dict[str, float]] = {}  # stage kind → site → measured seconds
    kind_of = {name: kind for kind, names in MEASURED_STAGES.items() for name in names}
    overheads = []
    for chapter in measured["chapters"]:
        for name, seconds in chapter["stages"].items():
            stages[name] = stages.get(name, 0.0) + seconds
        for name, sites in chapter.get("site_stages", {}).items():
            for site, seconds in sites.items():
                if name in kind_of:
                    kind = by_site.setdefault(kind_of[name], {})
                    kind[site] = kind.get(site, 0.0) + seconds
        overheads.append(chapter["wall_seconds"] - sum(chapter["stages"].values()))
    ratios: dict[str, float] = {}
    site_ratios: dict[str, dict[str, float]] = {}
    for kind, estimated in compute_seconds_by_site(config).items():
        timed = {site: seconds for site, seconds in by_site.get(kind, {}).items() if estimated.get(site, 0.0) > 0}
        if timed:
            site_ratios[kind] = {site: seconds / estimated[site] for site, seconds in timed.items()}
        total = sum(stages.get(name, 0.0) for name in MEASURED_STAGES[kind])
        rest = sum(seconds for site, seconds in estimated.items() if site not in timed)
        if rest > 0:  # the kind's other sites and its jobs without a site, at the ratio of what is left
            ratios[kind] = (total - sum(timed.values())) / rest
        elif timed:  # every site timed: a site the run did not have gets the kind's ratio as a whole
            ratios[kind] = total / sum(estimated.values())
    data = sum(stages.get(name, 0.0) for name in MEASURED_STAGES["data"])
    sized = {name for names in MEASURED_STAGES.values() for name in names}
    return MachineCalibration(ratios, float(measured.get("setup_seconds", 0.0)), data,
                              sum(overheads) / len(overheads),
                              {name: seconds for name, seconds in sorted(stages.items()) if name not in sized},
                              site_ratios)


def replicate_seconds(config: Config, calibration: MachineCalibration, seeds: Optional[int] = None) -> dict[str, float]:
    """Predicted wall seconds of a cold `make replicate` of `config` (with `seeds` training seeds, else the
    configuration's) on the calibrated machine, by part (`total` their sum): each computing stage's
    estimate times its measured ratio, plus the install, the data preparation, each chapter's overhead and
    the stages the estimates do not size, as measured."""
    parts = {kind: sum(seconds * calibration.ratio(kind, site) for site, seconds in sites.items())
             for kind, sites in compute_seconds_by_site(config, seeds).items()}
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
