"""`groundtruth` (conf/groundtruth/): the ground-truth benchmark. Synthetic activations built from known
sparse features in superposition (the toy setting of Elhage et al. 2022 and Sharkey et al. 2022), trained
on by every architecture of its sweep through the pipeline's own store and trainer, and the rules that
judge the paper's mechanism on them (the verdict's ground-truth section)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config.checks import choice, distinct, finite, require
from gatedsae.plan.config.sweep import SweepConfig

MAGNITUDE_LAWS = ("constant", "uniform", "exponential", "lognormal")


@dataclass
class MagnitudeConfig:
    """The magnitude of a feature when it fires (always > 0). constant: `mean`; uniform: on
    [mean − spread, mean + spread]; exponential: mean `mean` (spread unused); lognormal: mean `mean`, the
    log's standard deviation `spread`."""

    law: str = "uniform"
    mean: float = 1.0
    spread: float = 0.5

    def validate(self, key: str) -> None:
        choice(self.law, f"{key}.law", MAGNITUDE_LAWS)
        for name in ("mean", "spread"):
            finite(getattr(self, name), f"{key}.{name}")
        require(self.mean > 0, f"{key}.mean", "must be positive (a firing feature has a positive magnitude)")
        require(self.spread >= 0, f"{key}.spread", "must be ≥ 0")
        require(self.law != "uniform" or self.spread < self.mean, f"{key}.spread",
                f"a uniform law on [mean − spread, mean + spread] needs spread < mean ({self.mean}) so that every "
                "magnitude is positive")


@dataclass
class CorrelationConfig:
    """Correlated groups: the first `groups` × `size` features form groups of `size`. A group is active on a
    row with probability `active`; an active group's members each fire with probability `within`, so a
    grouped feature fires with probability active × within, and its members fire together far more often
    than independent features would. groups = 0: every feature is independent."""

    groups: int = 0
    size: int = 4
    active: float = 0.05
    within: float = 0.5

    def validate(self, key: str, n_features: int) -> None:
        require(self.groups >= 0, f"{key}.groups", "must be ≥ 0")
        require(self.size >= 2, f"{key}.size", "a group needs at least 2 features")
        require(self.groups * self.size <= n_features, f"{key}.groups", f"{self.groups} groups of {self.size} need "
                f"{self.groups * self.size} features; the generator has {n_features}")
        for name in ("active", "within"):
            value = getattr(self, name)
            require(0 < value <= 1, f"{key}.{name}", f"got {value}; a probability in (0, 1]")


@dataclass
class GeneratorConfig:
    """n unit directions in d dimensions (n > d: superposition), drawn uniformly on the sphere; each row is
    Σ_i a_i u_i + noise, feature i firing with its own probability (log-spaced from the first to the second
    value of `firing_probability` over the features; equal values: all the same) and, when it fires, a
    magnitude a_i from `magnitude`; `noise` is the standard deviation of isotropic Gaussian noise per
    dimension."""

    d: int = 32
    n_features: int = 64
    firing_probability: list[float] = field(default_factory=lambda: [0.06, 0.02])
    magnitude: MagnitudeConfig = field(default_factory=MagnitudeConfig)
    correlation: CorrelationConfig = field(default_factory=CorrelationConfig)
    noise: float = 0.0
    train_rows: int = 262_144
    heldout_rows: int = 16_384
    shard_rows: int = 16_384

    def validate(self, key: str) -> None:
        require(self.d >= 2, f"{key}.d", "must be at least 2")
        require(self.n_features > self.d, f"{key}.n_features", f"got {self.n_features} features in d = {self.d}: "
                "superposition needs more features than dimensions (n_features > d)")
        require(len(self.firing_probability) == 2, f"{key}.firing_probability",
                "give two probabilities [first feature's, last feature's] (equal: every feature the same)")
        for p in self.firing_probability:
            require(isinstance(p, (int, float)) and 0 < p <= 1, f"{key}.firing_probability", f"got {p}; a "
                    "probability in (0, 1]")
        self.magnitude.validate(f"{key}.magnitude")
        self.correlation.validate(f"{key}.correlation", self.n_features)
        finite(self.noise, f"{key}.noise")
        require(self.noise >= 0, f"{key}.noise", "a standard deviation is ≥ 0")
        for name in ("train_rows", "heldout_rows", "shard_rows"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be a positive number of rows")


@dataclass
class GroundTruthTrainConfig:
    """The training settings of the ground-truth runs, replacing train.* of the experiment (every other
    train.* setting applies as it is)."""

    tokens: int = 262_144               # rows seen by each SAE (epochs over the synthetic store as needed)
    batch_size: int = 512
    lr_warmup_steps: int = 20
    resample_window_steps: int = 50     # steps (the real runs' are sized for far longer training)
    resample_recovery_steps: int = 20
    buffer_rows: int = 32_768           # the shuffle buffer: a few synthetic shards
    checkpoint_every_steps: int = 200
    log_every_steps: int = 0            # no training curves by default (the benchmark reads its checkpoints)

    def validate(self, key: str) -> None:
        for name in ("tokens", "batch_size", "buffer_rows", "checkpoint_every_steps", "resample_window_steps",
                     "resample_recovery_steps"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be a positive integer")
        require(self.lr_warmup_steps >= 0 and self.log_every_steps >= 0, f"{key}.lr_warmup_steps",
                "steps are ≥ 0")
        require(self.tokens >= self.batch_size, f"{key}.tokens", f"{self.tokens} rows make no batch of "
                f"{self.batch_size}; raise tokens or lower batch_size")


@dataclass
class GroundTruthVerdictConfig:
    """The rules of the verdict's ground-truth section, fixed before the run. Each statistic is the mean over
    `groundtruth.seeds` with a Student-t interval at `confidence`; REPRODUCED when the interval lies on the
    claim's side, NOT REPRODUCED when it lies on the other, UNDECIDED when it crosses."""

    confidence: float = 0.95
    # The magnitude ratio (inferred / true on correctly detected firings) against λ: its least-squares slope
    # per decade of λ over the sweep. The baseline shrinks more as λ grows: slope below this.
    baseline_slope_below: float = 0.0
    # Gated's magnitudes do not shrink as λ grows: its slope above −this margin (non-inferiority) ...
    gated_slope_margin: float = 0.05
    # ... and sit at the true magnitudes: its ratio, interpolated (in log L0) at matched_l0 × the true L0,
    # within this band.
    gated_ratio_within: list[float] = field(default_factory=lambda: [0.9, 1.1])
    # Gated recovers at least as many true features at matched L0: Gated's fraction recovered minus the
    # baseline's, each interpolated (in log L0) at matched_l0 × the true L0, above −margin (non-inferiority).
    matched_l0: list[float] = field(default_factory=lambda: [1.0, 1.5])
    recovery_margin: float = 0.05

    def validate(self, key: str) -> None:
        require(0.5 < self.confidence < 1, f"{key}.confidence", f"got {self.confidence}; e.g. 0.95")
        for name in ("baseline_slope_below", "gated_slope_margin", "recovery_margin"):
            finite(getattr(self, name), f"{key}.{name}")
            require(name == "baseline_slope_below" or getattr(self, name) >= 0, f"{key}.{name}", "a margin is ≥ 0")
        low, high = (self.gated_ratio_within + [math.nan, math.nan])[:2]
        require(len(self.gated_ratio_within) == 2 and 0 < low < 1 < high, f"{key}.gated_ratio_within",
                "give [low, high] with low < 1 < high")
        require(bool(self.matched_l0) and all(m > 0 for m in self.matched_l0), f"{key}.matched_l0",
                "list one or more positive multiples of the true L0")


@dataclass
class GroundTruthConfig:
    """The benchmark: the generator, the seeds (each a dictionary, its samples and the SAEs' initialisation),
    the sweep every architecture trains in, the cosine above which a true feature counts as recovered,
    and the verdict's rules."""

    enabled: bool = True
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sweep: SweepConfig = field(default_factory=lambda: SweepConfig(name="groundtruth"))
    train: GroundTruthTrainConfig = field(default_factory=GroundTruthTrainConfig)
    recovered_cosine: float = 0.9
    evaluate_batch_rows: int = 4096
    verdict: GroundTruthVerdictConfig = field(default_factory=GroundTruthVerdictConfig)

    def validate(self) -> None:
        key = "groundtruth"
        self.generator.validate(f"{key}.generator")
        require(len(self.seeds) >= 2, f"{key}.seeds", "list at least two seeds (the intervals are over seeds)")
        distinct(self.seeds, f"{key}.seeds")
        if not self.enabled:
            return
        self.sweep.validate()
        require(not self.sweep.all_tokens, f"{key}.sweep.all_tokens", "the synthetic rows have no massive "
                "activations to leave out (every row is trained on): remove the key")
        archs = {group.arch for group in self.sweep.groups}
        require({PROPOSED, BASELINE} <= archs, f"{key}.sweep.groups", f"the verdict compares {PROPOSED} with "
                f"{BASELINE}: the sweep needs a group of each")
        for index, group in enumerate(self.sweep.groups):
            require(not group.sites, f"{key}.sweep.groups.{index}.sites", "the synthetic activations have no sites; "
                    "remove the key")
            group.validate_width(f"{key}.sweep.groups.{index}", self.generator.d, "the synthetic site")
        for index, group in enumerate(self.sweep.groups):
            if group.arch in (PROPOSED, BASELINE):
                require(len(group.values) >= 2, f"{key}.sweep.groups.{index}", "the magnitude slope against λ "
                        "needs at least two λ values")
        self.train.validate(f"{key}.train")
        finite(self.recovered_cosine, f"{key}.recovered_cosine")
        require(0 < self.recovered_cosine < 1, f"{key}.recovered_cosine", "a cosine in (0, 1), e.g. 0.9")
        require(self.evaluate_batch_rows >= 1, f"{key}.evaluate_batch_rows", "must be positive")
        self.verdict.validate(f"{key}.verdict")
