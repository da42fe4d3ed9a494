"""How long the jobs still to run will take: the project's own estimates (plan/estimates.py: FLOPs at the
configured sustained throughput, plus a start-up cost per job), calibrated on the jobs that finish.

The raw estimates size cluster jobs and may be off by a constant factor on a given machine (on the
2-core reference machine: cache and training 3-4× pessimistic, evaluation about right), so each stage's
ratio of measured to estimated compute is learned from its first finished job and applied to the rest.
Before that, a stage computed on the CPU starts from the ratio the last timed cold `make replicate`
measured for it (the calibration in results/benchmarks/replicate_plan.json; per site where that run timed
each site's jobs apart), else from the ratio of all finished jobs. Start-up (Python, torch, the config)
is learned from the jobs with almost no compute. A job that finds its work already done (a rerun that
resumes from complete outputs) teaches nothing.

A training job trains only the SAEs without a finished checkpoint for their training key (a resumed
run, or a grid with a λ added), so it is priced at their share of the grid's estimated compute, read
from the checkpoint folders when the job is first priced.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gatedsae.plan import estimates
from gatedsae.plan.config import REPO_ROOT, Config
from gatedsae.plan.grid import (ALL_TOKENS_DIR, MAIN_VARIANT, all_tokens_config, grid_dir, grid_specs,
                                same_sae_elsewhere)
from gatedsae.plan.identity import training_key
from gatedsae.plan.layout import TRAINING_RECORD

STARTUP_SECONDS = 10.0   # a stage's start-up before anything is measured (Python, torch, conf/)
LIGHT_SECONDS = 1.0      # jobs estimated below this much compute measure the start-up
# A job whose outputs were already complete (Snakemake reruns it when the next chapter's parameters differ,
# and the stage resumes from its finished SAEs) ends in seconds: one that ends within this fraction of its
# estimated compute, and within a few start-ups, found its work done and prices nothing.
DONE_FRACTION = 0.05
DONE_STARTUPS = 3.0

TARGET_RULES = {"all"}  # rules that run nothing
MACHINE_CALIBRATION = REPO_ROOT / "results" / "benchmarks" / "replicate_plan.json"
# the calibration's stage kinds (plan/forecast.py) → the stages they price
KIND_STAGES = {"cache": ("cache",), "train": ("train", "train-all-tokens"), "rescale_shift": ("rescale-shift",),
               "evaluate": ("evaluate",)}


def measured_ratios(path: Path = MACHINE_CALIBRATION) -> dict[str, float]:
    """Per stage, the measured over the estimated compute seconds of the last cold `make replicate` timed on
    a CPU (replicate_plan.json's calibration); empty where there is none."""
    try:
        ratios = json.loads(path.read_text())["calibration"]["ratios"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    return {stage: float(ratio) for kind, ratio in ratios.items() for stage in KIND_STAGES.get(kind, ())
            if isinstance(ratio, (int, float)) and ratio > 0}


def measured_site_ratios(path: Path = MACHINE_CALIBRATION) -> dict[str, dict[str, float]]:
    """Per stage and site, the same ratio where that run timed each site's jobs apart (its journal's
    `site_stages`): sites differ (the attention output's narrow, sparse SAEs cost less per estimated
    FLOP than the residual stream's); empty where the run did not."""
    try:
        by_kind = json.loads(path.read_text())["calibration"].get("site_ratios") or {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}
    return {stage: {site: float(ratio) for site, ratio in sites.items() if isinstance(ratio, (int, float)) and ratio > 0}
            for kind, sites in by_kind.items() if isinstance(sites, dict) for stage in KIND_STAGES.get(kind, ())}


def _trained(config: Config, site: str, layer: int, variant: str, spec) -> bool:
    """Whether an SAE's checkpoint with its training key exists in its grid, or in another grid at the
    same site and layer that the stage would copy it from (its record only; the stage verifies files).
    The key is computed only where a record exists (it resolves the training precision on the device)."""
    here = grid_dir(config, site, layer, variant) / spec.name
    folders = [here, *same_sae_elsewhere(spec.name, grid_dir(config, site, layer).parent)]
    records = [folder / TRAINING_RECORD for folder in folders if (folder / TRAINING_RECORD).is_file()]
    if not records:
        return False
    key = training_key(config, site, spec)
    for record in records:
        try:
            if json.loads(record.read_text()).get("training_key") == key:
                return True
        except (OSError, ValueError, AttributeError):
            continue
    return False


def untrained_share(config: Config, stage: str, site: str) -> float:
    """The share of a training job's estimated compute still to do at `site`: its SAEs without a finished
    checkpoint, weighted by their estimated compute (1 for other stages, and for a layer's job in stream
    mode, which is priced whole)."""
    variants = {"train": (config, MAIN_VARIANT), "train-all-tokens": (all_tokens_config(config), ALL_TOKENS_DIR)}
    if stage not in variants or config.cache.mode == "stream":
        return 1.0
    grid_config, variant = variants[stage]
    specs = grid_specs(grid_config, grid_config.model.site_width(site), site)
    flops = {spec.name: estimates.train_estimate(grid_config, site, [spec]).flops for spec in specs}
    layers = grid_config.experiment.layers_at(site)
    whole = sum(flops.values()) * len(layers)
    if whole <= 0:
        return 1.0
    left = sum(flops[spec.name] for layer in layers for spec in specs
               if not _trained(grid_config, site, layer, variant, spec))
    return left / whole


def stage_of(rule: str) -> str:
    """The stage a rule runs: rules are named after their stage, '-' written '_'."""
    return rule.replace("_", "-")


def _estimators(config: Config) -> dict[str, Callable[[Optional[str]], estimates.Estimate]]:
    """stage → estimate of one of its jobs (by site where the stage runs per site)."""
    return {
        "cache": lambda site: estimates.cache_estimate(config),
        "train": (lambda site: estimates.train_layer_estimate(config)) if config.cache.mode == "stream"
        else (lambda site: estimates.train_job_estimate(config, site)),
        "rescale-shift": lambda site: estimates.rescale_shift_estimate(config, site),
        "train-all-tokens": lambda site: estimates.all_tokens_estimate(config, site),
        "evaluate": lambda site: estimates.evaluate_estimate(config, site),
    }


@dataclass
class Predictor:
    """Seconds per job, from the estimates, learning from finished jobs as they come: a stage's own
    finished jobs first (their mean where the estimate sees no compute, their ratio of measured to
    estimated compute otherwise), then `site_prior` (measured_site_ratios) or `prior` (measured_ratios)
    for a stage computed on the CPU, else all finished jobs."""

    config: Config
    prior: dict[str, float] = field(default_factory=dict)  # stage → measured / estimated, from an earlier run
    site_prior: dict[str, dict[str, float]] = field(default_factory=dict)  # stage → site → the same, per site
    _measured: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # stage → (compute, seconds)
    _untrained: dict[tuple[str, str], float] = field(default_factory=dict)  # (stage, site) → share, when first priced

    def compute_seconds(self, rule: str, site: Optional[str] = None) -> float:
        """The estimate's compute time for one job of `rule` (at `site`, else the mean over the sites), for
        the SAEs it will train (`untrained_share`, as the folders stood when the job was first priced: by
        the time it is observed its SAEs are trained)."""
        stage = stage_of(rule)
        estimator = _estimators(self.config).get(stage)
        if estimator is None or rule in TARGET_RULES:
            return 0.0
        sites = [site] if site else self._sites(stage)
        tflops = self.config.resources.sustained_tflops
        return statistics.fmean(estimator(s).hours(self._device(stage), tflops) * 3600 * self._share(stage, s)
                                for s in sites)

    def _share(self, stage: str, site: str) -> float:
        if (stage, site) not in self._untrained:
            self._untrained[(stage, site)] = untrained_share(self.config, stage, site)
        return self._untrained[(stage, site)]

    def _device(self, stage: str) -> str:
        return {"cache": self.config.cache.device, "evaluate": self.config.evaluate.device}.get(
            stage, self.config.train.device)

    def _sites(self, stage: str) -> list[str]:
        sites = self.config.experiment.sites
        if stage == "rescale-shift":
            sites = [s for s in sites if self.config.sweep.rescale_shift_at(s)] or sites
        if stage == "train-all-tokens":
            sites = [s for s in sites if self.config.sweep.all_tokens_at(s)] or sites
        return sites

    @property
    def startup(self) -> float:
        """A job's cost beyond its estimated compute: the median of the light jobs measured so far."""
        light = [seconds for pairs in self._measured.values() for compute, seconds in pairs if compute < LIGHT_SECONDS]
        return statistics.median(light) if light else STARTUP_SECONDS

    def seconds(self, rule: str, site: Optional[str] = None) -> float:
        if rule in TARGET_RULES:
            return 0.0
        compute = self.compute_seconds(rule, site)
        own = self._measured.get(stage_of(rule), [])
        if compute < LIGHT_SECONDS:
            light = [seconds for c, seconds in own if c < LIGHT_SECONDS]
            return statistics.fmean(light) if light else self.startup
        heavy = [pair for pair in own if pair[0] >= LIGHT_SECONDS]
        stage = stage_of(rule)
        prior = self.site_prior.get(stage, {}).get(site) if site else None
        prior = self.prior.get(stage) if prior is None else prior
        if not heavy and prior is not None and self._device(stage) == "cpu":
            return self.startup + prior * compute
        heavy = heavy or [pair for pairs in self._measured.values() for pair in pairs if pair[0] >= LIGHT_SECONDS]
        estimated = sum(c for c, _ in heavy)
        ratio = sum(max(s - self.startup, 0.0) for _, s in heavy) / estimated if estimated else 1.0
        return self.startup + ratio * compute

    def observe(self, rule: str, site: Optional[str], actual: float) -> None:
        if rule in TARGET_RULES:
            return
        compute = self.compute_seconds(rule, site)
        if compute >= LIGHT_SECONDS and actual <= min(DONE_FRACTION * compute, DONE_STARTUPS * self.startup):
            return  # its outputs were complete: neither its stage's ratio nor the start-up
        self._measured.setdefault(stage_of(rule), []).append((compute, actual))
