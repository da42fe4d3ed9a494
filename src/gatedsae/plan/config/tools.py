"""`browser` and `study` (conf/browser/, conf/study/): the feature browser and the blinded rating study,
tools beside the replication that read its trained SAEs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.architectures import ARCHITECTURES, BASELINE, PROPOSED
from gatedsae.plan.config.checks import choice, distinct, require
from gatedsae.plan.sites import SITES


@dataclass
class BrowserConfig:
    """The feature browser (`browse` stage): per SAE of one site, an HTML page (and JSON) of sampled
    features, each with its top-activating held-out contexts, examples from its activation quantiles, its
    activation density and the tokens its decoder direction promotes and suppresses."""

    enabled: bool = False     # build it with the experiment (`snakemake all`); `python -m gatedsae browse` any time
    site: str = "resid_post"   # the site whose SAEs are browsed: resid_post | mlp_out | attn_z
    layer: Optional[int] = None  # None: the experiment's first layer
    archs: list[str] = field(default_factory=lambda: [PROPOSED, BASELINE])  # the SAEs browsed (architectures)
    every_seed: bool = False  # also the extra training seeds' SAEs (train.seeds), which differ only by seed
    features: int = 32        # features sampled per SAE (among those that fire on the held-out rows)
    top_examples: int = 10    # top-activating contexts per feature (one per window)
    quantile_bins: int = 4    # the feature's non-zero activations split at their quantiles ...
    examples_per_bin: int = 3  # ... and this many random contexts drawn from each
    context_before: int = 12  # tokens shown before the activating token
    context_after: int = 4    # ... and after it
    logit_tokens: int = 10    # tokens promoted and suppressed through the unembedding
    heldout_tokens: Optional[int] = None  # held-out rows scanned in stored order (None: all); validation rows only
    all_features: bool = True  # also every feature in a compact index: open any by number, search, sort
    index_examples: int = 5   # top-activating contexts per feature in that index
    seed: int = 0             # the sampling of features and of quantile examples

    def validate(self) -> None:
        choice(self.site, "browser.site", SITES)
        for key in ("features", "top_examples", "quantile_bins", "logit_tokens", "index_examples"):
            require(getattr(self, key) > 0, f"browser.{key}", "must be a positive integer")
        for key in ("examples_per_bin", "context_before", "context_after"):
            require(getattr(self, key) >= 0, f"browser.{key}", "must be 0 or more")
        require(bool(self.archs), "browser.archs", "list at least one architecture, e.g. [gated, baseline]")
        for arch in self.archs:
            choice(arch, "browser.archs", sorted(ARCHITECTURES))
        distinct(self.archs, "browser.archs")
        require(self.heldout_tokens is None or self.heldout_tokens > 0, "browser.heldout_tokens",
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
            choice(site, "study.sites", SITES)
        distinct(self.sites, "study.sites")
        require(self.features_per_sae > 0, "study.features_per_sae", "must be a positive integer")
        require(self.bootstrap >= 100, "study.bootstrap", "use at least 100 resamples")
        require(0.5 < self.confidence < 1, "study.confidence", "must lie in (0.5, 1), e.g. 0.95")
