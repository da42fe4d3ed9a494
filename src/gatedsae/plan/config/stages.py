"""`cache`, `train` and `evaluate` (conf/cache/, conf/train/, conf/evaluate/): the settings of the three
compute stages."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from gatedsae.plan.config.checks import DTYPES, choice, device, finite, require
from gatedsae.plan.layout import VALIDATION
from gatedsae.plan.sites import SITES


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
        choice(self.mode, "cache.mode", ("store", "stream"))
        choice(self.dtype, "cache.dtype", DTYPES)
        for key in ("shard_sequences", "batch_sequences", "train_tokens", "heldout_tokens", "stream_keep_shards"):
            require(getattr(self, key) > 0, f"cache.{key}", "must be a positive integer")
        require(self.threads >= 0, "cache.threads", "must be 0 (torch's default) or a positive integer")
        finite(self.outlier_norm_ratio, "cache.outlier_norm_ratio")
        require(self.outlier_norm_ratio > 1, "cache.outlier_norm_ratio", "must be above 1 (a multiple of the median norm)")
        device(self.device, "cache.device")
        require(self.shard_sequences % self.batch_sequences == 0, "cache.shard_sequences",
                 f"must be a multiple of cache.batch_sequences ({self.batch_sequences})")


# Largest L0 / width at which `train.sparse: auto` takes steps on the support (sparse_step.py). Measured by
# scripts/bench_train.py on this project's 2-core CPU in fp32 (results/benchmarks/train.json,
# "sparse_crossover"): dense steps become faster at densities 0.24-0.27 (Gated and baseline, widths 1×-6× d);
# at 0.2 steps on the support were still 1.1-1.3× faster, so 0.2 keeps a margin for noise and other CPUs.
SPARSE_MAX_DENSITY = 0.2


DEAD_AFTER_TOKENS = 20_480  # train.dead_after_tokens' default (TopK's dead window, see TrainConfig)


@dataclass
class TrainConfig:
    """Training as in the paper's App. D (Adam β1 = 0, warm-up, resampling), sized for the machine."""

    tokens: int = 500_000          # training tokens per SAE (epochs over the store as needed)
    # A site's own `tokens`, where its SAEs need another budget to meet conf/verdict's convergence rule
    # (results/calibration/convergence.json), e.g. {attn_z: 3276800}; each site's SAEs train (and are keyed)
    # with their site's budget only, so another site's entry retrains nothing here
    site_tokens: dict[str, int] = field(default_factory=dict)
    batch_size: int = 4096
    adam_beta1: float = 0.0
    adam_beta2: float = 0.999
    lr_warmup_steps: int = 20
    normalize: str = "mean_sq_norm"  # scale activations so E||x||² = 1 over the training rows | none
    statistics_tokens: Optional[int] = None  # rows that estimate the scale and mean (None: the whole split)
    max_norm_ratio: Optional[float] = 50.0  # massive activations: rows above this × the median norm (None: none)
    resample_at: list[float] = field(default_factory=lambda: [0.25, 0.5])  # fractions of training
    resample_window_steps: int = 20  # a feature is dead if it did not fire in this many recent steps
    # TopK's AuxK: a latent silent for this many training tokens is dead. The paper's 10M (in runs of billions
    # of tokens) would never trigger in runs of ~400k; 20,480 is ~5% of a default run, resample_window_steps
    # at batch 1,024, and a latent that silent fires at a rate < 5e-5 (an average one: ~k/width, ~1e-2).
    dead_after_tokens: int = DEAD_AFTER_TOKENS
    # Each SAE's gradient (all its parameters together) clipped to this norm before Adam's step (None: never).
    # Adam with β1 = 0 turns one gradient far above those its second moment has seen into a step of up to
    # ~30 × lr: one massive activation in a batch of the every-token run can so kill most gates at once.
    max_grad_norm: Optional[float] = None
    resample_lr_factor: float = 0.1  # lr drop after a resample, recovered along a cosine ...
    resample_recovery_steps: int = 20  # ... over this many steps
    buffer_rows: int = 262_144
    checkpoint_every_steps: int = 50
    log_every_steps: int = 10  # training curves: one row per SAE this often (0: none); never changes results
    tracker: str = "none"  # also send the training curves to an experiment tracker: none | wandb | dvclive
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
    # Training seeds of every SAE of the grid: seed, seed + 1, ... Each seed is an extra member of the
    # batched grid, initialised (and resampled) from its own seed; all of them read the same batches in
    # the same order (`seed` orders the data). The first keeps the SAE's name; the others add `_seed<s>`.
    seeds: int = 1

    def validate(self) -> None:
        for key in ("tokens", "batch_size", "checkpoint_every_steps", "buffer_rows", "seeds"):
            require(getattr(self, key) > 0, f"train.{key}", "must be a positive integer")
        require(self.log_every_steps >= 0, "train.log_every_steps", "must be 0 (no training curves) or positive")
        for site, tokens in self.site_tokens.items():
            choice(site, "train.site_tokens", SITES)
            require(isinstance(tokens, int) and tokens >= self.batch_size, f"train.site_tokens.{site}",
                    f"got {tokens}; must be a whole number of tokens, at least train.batch_size ({self.batch_size})")
        require(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1, "train.adam_beta1",
                 "Adam betas must lie in [0, 1)")
        choice(self.normalize, "train.normalize", ("mean_sq_norm", "none"))
        require(all(0 < f < 1 for f in self.resample_at), "train.resample_at",
                 "list fractions of training strictly between 0 and 1")
        for key in ("lr_warmup_steps", "resample_recovery_steps", "threads"):
            require(getattr(self, key) >= 0, f"train.{key}", f"got {getattr(self, key)}; must be 0 or more")
        require(self.resample_window_steps > 0, "train.resample_window_steps", "must be a positive integer")
        require(self.dead_after_tokens > 0, "train.dead_after_tokens", "must be a positive number of tokens")
        require(0 < self.resample_lr_factor <= 1, "train.resample_lr_factor", "must lie in (0, 1]")
        require(self.buffer_rows >= self.batch_size, "train.buffer_rows", "must be at least train.batch_size")
        require(self.statistics_tokens is None or self.statistics_tokens > 0, "train.statistics_tokens",
                 "must be positive, or null for the whole training split")
        require(self.max_norm_ratio is None or self.max_norm_ratio > 1, "train.max_norm_ratio",
                 "must be above 1 (a multiple of the median norm), or null to keep every row")
        require(self.max_grad_norm is None or self.max_grad_norm > 0, "train.max_grad_norm",
                 "must be positive, or null for no clipping")
        choice(self.sparse, "train.sparse", ("auto", "always", "never"))
        choice(self.tracker, "train.tracker", ("none", "wandb", "dvclive"))
        if self.tracker != "none":
            import importlib.util

            require(importlib.util.find_spec(self.tracker) is not None, "train.tracker",
                     f"{self.tracker} is not installed here; `pip install {self.tracker}` in the environment, or "
                     "train.tracker=none")
        device(self.device, "train.device")
        for index, name in enumerate(self.site_devices):
            device(name, f"train.site_devices.{index}")
        require(0 < self.sparse_max_density <= 1, "train.sparse_max_density",
                 f"got {self.sparse_max_density}; use a fraction of the width in (0, 1]")
        require(not (self.sparse == "always" and self.autocast_bf16), "train.sparse",
                 "'always' computes in float32 and cannot run under train.autocast_bf16; use train.sparse=auto "
                 "(dense steps under autocast) or train.autocast_bf16=false")

    @property
    def steps(self) -> int:
        return max(1, self.tokens // self.batch_size)

    def every_site(self, tokens: int) -> TrainConfig:
        """These settings with every site trained for `tokens` (the sites' own budgets dropped)."""
        return replace(self, tokens=tokens, site_tokens={})

    def at_site(self, site: Optional[str]) -> TrainConfig:
        """These settings as they apply at `site`: `tokens` resolved to the site's own, `site_tokens` emptied
        (so identities read only the budget the site trains with). Site None: the settings unchanged."""
        if site is None or not self.site_tokens:
            return self
        return replace(self, tokens=self.site_tokens.get(site, self.tokens), site_tokens={})

    @property
    def seed_values(self) -> list[int]:
        """The training seeds of every SAE: `seed` first, then the extra ones."""
        return [self.seed + i for i in range(self.seeds)]


@dataclass
class EvaluateConfig:
    """Held-out evaluation: reconstruction metrics from the activation store, CE from the LM. Which
    positions count as massive activations is not set here: each checkpoint's training record carries
    its threshold (`massive_norm_threshold`), so training and evaluation always agree."""

    heldout_tokens: Optional[int] = None  # held-out rows for L0 / FVU / γ / density (None: the whole split)
    batch_rows: int = 8192                # rows per SAE forward
    ce_windows: int = 64                  # held-out context windows for the spliced-LM losses
    # the validation split's own number of CE windows (None: ce_windows): the verdict reads the test split
    # only, so validation, read by development (figures, tables, browser), may be measured more coarsely
    validation_ce_windows: Optional[int] = None
    # a site's own ce_windows (validation_ce_windows, when set, still applies to the validation split):
    # where the site's zero-ablation costs little, its loss recovered needs more windows to be decided
    # (conf/verdict's layer_rule plans with these), e.g. {mlp_out: 128}
    site_ce_windows: dict[str, int] = field(default_factory=dict)
    batch_windows: int = 8                # windows per LM batch (prefix computed once per batch)
    device: str = "cpu"
    threads: int = 0

    def windows_of(self, split: Optional[str], site: Optional[str] = None) -> int:
        """The CE windows a held-out split is evaluated on at `site` (split None: an unsplit held-out set;
        site None: the sites without windows of their own)."""
        if split == VALIDATION and self.validation_ce_windows:
            return self.validation_ce_windows
        return self.site_ce_windows.get(site, self.ce_windows) if site is not None else self.ce_windows

    def at_site(self, site: str) -> dict:
        """These settings as they apply at `site` (what one evaluation there depends on): ce_windows
        resolved to the site's own, site_ce_windows left out, so another site's windows rerun nothing here."""
        settings = {key: value for key, value in asdict(self).items() if key != "site_ce_windows"}
        return {**settings, "ce_windows": self.windows_of(None, site)}

    def validate(self) -> None:
        for key in ("batch_rows", "ce_windows", "batch_windows"):
            require(getattr(self, key) > 0, f"evaluate.{key}", "must be a positive integer")
        require(self.validation_ce_windows is None or self.validation_ce_windows > 0, "evaluate.validation_ce_windows",
                "must be a positive integer, or null for evaluate.ce_windows")
        for site, windows in self.site_ce_windows.items():
            choice(site, "evaluate.site_ce_windows", SITES)
            require(isinstance(windows, int) and windows > 0, f"evaluate.site_ce_windows.{site}",
                    "must be a positive integer")
        require(self.threads >= 0, "evaluate.threads", "must be 0 (torch's default) or a positive integer")
        device(self.device, "evaluate.device")
        require(self.heldout_tokens is None or self.heldout_tokens > 0, "evaluate.heldout_tokens",
                 "must be positive, or null for the whole held-out split")
