"""`intervals` and `verdict` (conf/intervals/, conf/verdict/): how uncertain a measured claim is, what
counts as reproducing it, and the paper's numbers it is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from gatedsae.plan.config.checks import choice, require
from gatedsae.plan.sites import SITES


@dataclass
class IntervalsConfig:
    """Uncertainty: a paired bootstrap over held-out windows (the same resample for clean, zero-ablated
    and every SAE of a grid), percentile intervals. Used by the aggregate stage, never by evaluation."""

    resamples: int = 1000
    level: float = 0.95
    seed: int = 0

    def validate(self) -> None:
        require(self.resamples >= 100, "intervals.resamples", f"got {self.resamples}; use at least 100 "
                 "(1000 or more for 95% intervals)")
        require(0.5 < self.level < 1, "intervals.level", f"got {self.level}; use a coverage in (0.5, 1), e.g. 0.95")


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
        require(0 < self.l0_ratio_below <= 1, "verdict.l0_ratio_below",
                 f"got {self.l0_ratio_below}; a ratio in (0, 1] (1 means no improvement)")
        for key in ("gated_gamma_within", "rescale_shift_gamma_within"):
            low_high = getattr(self, key)
            require(len(low_high) == 2 and 0 < low_high[0] <= 1 <= low_high[1], f"verdict.{key}",
                     f"got {low_high}; give [low, high] around 1, e.g. [0.98, 1.02]")
        require(0 < self.baseline_gamma_below <= 1.5, "verdict.baseline_gamma_below",
                 f"got {self.baseline_gamma_below}; use 1.0 (no shrinkage)")
        require(0 <= self.ablation_margin < 0.1, "verdict.ablation_margin",
                 f"got {self.ablation_margin}; a fraction of loss recovered, e.g. 0.005 (half a point)")
        for index, row in enumerate(self.paper_matched_l0):
            choice(row.site, f"verdict.paper_matched_l0.{index}.site", SITES)
            require(row.l0_gated > 0 and row.l0_baseline > 0, f"verdict.paper_matched_l0.{index}",
                     "give both L0 values from the paper's table")

    def reference(self, experiment: str) -> Path:
        return Path(self.reference_dir or f"reference/{experiment}")
