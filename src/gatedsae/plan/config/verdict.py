"""`intervals` and `verdict` (conf/intervals/, conf/verdict/): how uncertain a measured claim is, what
counts as reproducing it, and the paper's numbers it is compared with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from gatedsae.plan.config.checks import choice, require, require_safe_name
from gatedsae.plan.sites import SITES


@dataclass
class IntervalsConfig:
    """Uncertainty: a two-level bootstrap, training seeds (the same draw for every configuration of a
    grid) then held-out windows (the same draw for clean, zero-ablated and every SAE of a grid). Used by
    the aggregate and verdict stages, never by evaluation."""

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
class ConvergenceConfig:
    """When an SAE counts as converged, read from its training curve: each of `metrics` changes by less
    than `max_relative_change` between the start and the end of the last `last_fraction` of training,
    each end the mean of the logged points within `window` (a fraction of training) of it."""

    last_fraction: float = 0.25
    window: float = 0.1
    max_relative_change: float = 0.05
    metrics: list[str] = field(default_factory=lambda: ["l0", "reconstruction"])

    def validate(self) -> None:
        require(0 < self.last_fraction < 1, "verdict.convergence.last_fraction",
                f"got {self.last_fraction}; a fraction of training in (0, 1), e.g. 0.25")
        require(0 < self.window <= self.last_fraction, "verdict.convergence.window",
                f"got {self.window}; a fraction of training in (0, last_fraction], e.g. 0.1")
        require(0 < self.max_relative_change < 1, "verdict.convergence.max_relative_change",
                f"got {self.max_relative_change}; a relative change in (0, 1), e.g. 0.05")
        require(bool(self.metrics), "verdict.convergence.metrics", "name at least one training-curve column")


@dataclass
class LayerRuleConfig:
    """How the layer of a site whose zero-ablation may be too cheap to measure against is chosen, before
    any SAE is trained (plan/site_layers.py states the rule, scripts/probe_layers.py applies it to the
    model): the layer nearest the experiment's first layer (deeper on a tie) whose predicted 95%
    half-width of loss recovered, at the site's lowest level and the planned number of evaluation windows,
    is at most `max_half_width` and, with a `reach_margin`, where mean-ablation recovers at least that much
    less than the level (so the sparse end of a frontier lies below it)."""

    sites: list[str] = field(default_factory=list)  # the sites the rule places ([]: none)
    max_half_width: float = 0.01  # of loss recovered (a fraction): one point
    noise_floor: float = 0.02     # nats: per-window SD of an SAE's excess CE that does not shrink with its error
    probe_windows: int = 16       # training-split windows the probe measures (never held-out text)
    reach_margin: Optional[float] = None  # of loss recovered; None: no condition on mean-ablation

    def validate(self) -> None:
        for site in self.sites:
            choice(site, "verdict.layer_rule.sites", SITES)
        require(0 < self.max_half_width < 0.5, "verdict.layer_rule.max_half_width",
                f"got {self.max_half_width}; a half-width of loss recovered in (0, 0.5), e.g. 0.01")
        require(self.noise_floor >= 0, "verdict.layer_rule.noise_floor",
                f"got {self.noise_floor}; a per-window SD in nats, ≥ 0 (e.g. 0.02)")
        require(self.probe_windows >= 8, "verdict.layer_rule.probe_windows",
                f"got {self.probe_windows}; measure at least 8 windows")
        require(self.reach_margin is None or 0 <= self.reach_margin < 0.5, "verdict.layer_rule.reach_margin",
                f"got {self.reach_margin}; a margin of loss recovered in [0, 0.5), e.g. 0.02, or null for none")


@dataclass
class VerdictConfig:
    """What each claim reads (pre-registered levels, the held-out split), what counts as reproducing it,
    and the paper's numbers it is compared with."""

    reference_dir: Optional[str] = None  # the published reference run (None: reference/<experiment name>)
    split: str = "test"                  # the held-out split the claims are read on (rows without one: all held-out)
    levels: dict[str, list[float]] = field(default_factory=dict)  # site → loss-recovered levels (fractions)
    # site → L0s where Figs. 8/9 are read (None: where the Gated frontier reaches `levels`); Any: "[100, 200]" holds ints
    matched_l0: Optional[dict[str, list[Any]]] = None
    l0_ratio_below: float = 0.75         # (a) REPRODUCED when the l0_ratio interval lies below this
    gated_gamma_within: list[float] = field(default_factory=lambda: [0.98, 1.02])  # (b) Gated γ ≈ 1
    baseline_gamma_below: float = 1.0    # (b) the baseline shrinks
    rescale_shift_gamma_within: list[float] = field(default_factory=lambda: [0.98, 1.02])  # (c)
    rescale_shift_gap_below: float = 0.5  # (c) "closes only part of the gap": the fraction's interval within (0, this)
    ablation_margin: float = 0.005       # (d) equivalence margin: |ablation − Gated| below it is "equivalent"
    convergence: ConvergenceConfig = field(default_factory=ConvergenceConfig)
    layer_rule: LayerRuleConfig = field(default_factory=LayerRuleConfig)
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
        require_safe_name(self.split, "verdict.split")
        for key in ("levels", "matched_l0"):
            for site, values in (getattr(self, key) or {}).items():
                choice(site, f"verdict.{key}", SITES)
                require(bool(values), f"verdict.{key}.{site}", "list at least one value")
        for site, levels in self.levels.items():
            require(all(0 < level < 1.5 for level in levels), f"verdict.levels.{site}",
                    f"got {levels}; loss recovered as fractions, e.g. [0.978, 0.988]")
        for site, l0s in (self.matched_l0 or {}).items():
            require(all(isinstance(l0, (int, float)) and l0 > 0 for l0 in l0s), f"verdict.matched_l0.{site}",
                    f"got {l0s}; L0 values are positive numbers")
        require(0 < self.l0_ratio_below <= 1, "verdict.l0_ratio_below",
                f"got {self.l0_ratio_below}; a ratio in (0, 1] (1 means no improvement)")
        for key in ("gated_gamma_within", "rescale_shift_gamma_within"):
            low_high = getattr(self, key)
            require(len(low_high) == 2 and 0 < low_high[0] <= 1 <= low_high[1], f"verdict.{key}",
                    f"got {low_high}; give [low, high] around 1, e.g. [0.98, 1.02]")
        require(0 < self.baseline_gamma_below <= 1.5, "verdict.baseline_gamma_below",
                f"got {self.baseline_gamma_below}; use 1.0 (no shrinkage)")
        require(0 < self.rescale_shift_gap_below <= 1, "verdict.rescale_shift_gap_below",
                f"got {self.rescale_shift_gap_below}; a fraction of the gap in (0, 1], e.g. 0.5")
        require(0 < self.ablation_margin < 0.1, "verdict.ablation_margin",
                f"got {self.ablation_margin}; a fraction of loss recovered, e.g. 0.005 (half a point)")
        self.convergence.validate()
        self.layer_rule.validate()
        for index, row in enumerate(self.paper_matched_l0):
            choice(row.site, f"verdict.paper_matched_l0.{index}.site", SITES)
            require(row.l0_gated > 0 and row.l0_baseline > 0, f"verdict.paper_matched_l0.{index}",
                    "give both L0 values from the paper's table")

    def reference(self, experiment: str) -> Path:
        return Path(self.reference_dir or f"reference/{experiment}")

    def levels_at(self, site: str) -> list[float]:
        return [float(level) for level in self.levels.get(site, [])]

    def matched_l0_at(self, site: str) -> list[float]:
        """The L0s conf fixes for Figs. 8/9 at `site` ([]: read where the Gated frontier reaches the levels)."""
        return [float(l0) for l0 in (self.matched_l0 or {}).get(site, [])]
