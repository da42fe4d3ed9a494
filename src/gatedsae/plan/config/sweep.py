"""`sweep` (conf/sweep/): the grid of SAEs, one group per architecture and width, each swept over its
sparsity knob."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.architectures import (ARCHITECTURES, BASELINE, KNOBS, LEGACY_KNOB, PROPOSED, knob_of,
                                         rescale_shift_base)
from gatedsae.plan.config.checks import choice, distinct, finite, require, require_safe_name
from gatedsae.plan.sites import SITES


L1_UNITS = ("normalized", "paper_per_dim", "paper_per_dim_energy")


@dataclass
class SAEGroupConfig:
    """SAEs of one architecture trained together: one per value of its sparsity knob, named as its paper
    names it (the registry says which): λ in `l1` (baseline, Gated), λ_L0 in `l0_coefficient` (JumpReLU),
    k in `k` (TopK); width = width_ratio × d."""

    arch: str = PROPOSED
    width_ratio: float = 4.0
    lr: float = 1e-3
    l1: list[float] = field(default_factory=list)  # λ, the L1 penalty's coefficient
    l0_coefficient: list[float] = field(default_factory=list)  # λ_L0, the L0 penalty's coefficient (JumpReLU)
    k: list[int] = field(default_factory=list)  # features kept per token (TopK)
    sites: list[str] = field(default_factory=list)  # train this group only at these sites ([]: every site)
    # What the L1 penalty's λ is measured against. normalized: the loss ||x − x̂||² + λ||f||₁ on activations
    # scaled by train.normalize; paper_per_dim: the paper's Gated runs (squared error / d, raw activations);
    # paper_per_dim_energy: the paper's Pythia / Gemma baseline runs (squared error / (d · E||x||²)).
    l1_units: str = "normalized"
    # Whether Fig. 9's rescale-and-shift and the every-token run repeat this group (false: only the sweep
    # trains it, e.g. the baseline at Gated's own width beside the compute-matched one)
    in_variants: bool = True

    def validate(self, key: str) -> None:
        choice(self.l1_units, f"{key}.l1_units", L1_UNITS)
        for site in self.sites:
            choice(site, f"{key}.sites", SITES)
        distinct(self.sites, f"{key}.sites")
        choice(self.arch, f"{key}.arch", sorted(ARCHITECTURES))
        for name in ("width_ratio", "lr"):
            finite(getattr(self, name), f"{key}.{name}")
            require(getattr(self, name) > 0, f"{key}.{name}", "must be positive")
        knob = self.knob
        for other in KNOBS:
            require(other == knob or not getattr(self, other), f"{key}.{other}", f"{self.arch} is swept over "
                    f"{knob} ({KNOBS[knob].meaning}), not {other}; move the values to {key}.{knob}")
        require(knob == "l1" or self.l1_units == "normalized", f"{key}.l1_units", f"units apply to the L1 "
                f"penalty's λ; {self.arch}'s {knob} is given on normalized activations: remove the key")
        require(bool(self.values), f"{key}.{knob}", "list one or more k ≥ 1 (features kept per token)"
                if knob == "k" else f"list one or more {KNOBS[knob].symbol} ≥ 0")
        for i, value in enumerate(self.values):
            if knob == "k":
                require(isinstance(value, int) and value >= 1, f"{key}.k", f"got k = {value} (item {i}); every k "
                        "must be a whole number ≥ 1")
            else:
                require(math.isfinite(value) and value >= 0, f"{key}.{knob}", f"got {KNOBS[knob].symbol} = {value} "
                        f"(item {i}); every {KNOBS[knob].symbol} must be a finite number ≥ 0")
        require(len(set(self.values)) == len(self.values), f"{key}.{knob}", "values must be distinct")

    @property
    def knob(self) -> str:
        """The sweep's sparsity knob for this architecture (the registry's record): a key of KNOBS."""
        return knob_of(self.arch)

    @property
    def values(self) -> list:
        """The knob's values, one SAE each."""
        return getattr(self, self.knob)

    def upgrade_legacy_knob(self, key: str) -> str:
        """Configurations written before each knob had its own key held every penalty's coefficient in `l1`:
        move them to the architecture's own key. Returns a note saying so ("" when nothing moved)."""
        knob = self.knob
        if knob == LEGACY_KNOB or knob == "k" or not self.l1 or getattr(self, knob):
            return ""
        setattr(self, knob, self.l1)
        self.l1 = []
        return f"{key}.{LEGACY_KNOB} of a {self.arch} group is read as {key}.{knob}; rename the key"

    def width(self, d: int) -> int:
        return int(round(self.width_ratio * d))

    def validate_width(self, key: str, d: int, site: str) -> None:
        require(self.width(d) >= 1, f"{key}.width_ratio", f"{self.width_ratio} × d = {d} at {site} rounds to width "
                 f"{self.width(d)}; use a ratio of at least {0.5 / d:.3g} (an SAE needs one feature or more)")
        if self.knob == "k":
            require(max(self.k) <= self.width(d), f"{key}.k", f"k = {max(self.k)} exceeds the width {self.width(d)} "
                     f"at {site}; use k ≤ width")

    def internal_l1(self, l1: float, d: int, scale: float, mean_sq_norm: float) -> float:
        """λ in the trainer's loss, ||s·x − s·x̂||² + λ'||s·f||₁ with s the activation scale, for a λ in
        `l1_units` (dividing the paper's loss by the factor in front of its squared error gives ours). Other
        knobs' coefficients are given in the trainer's units (validation allows only `normalized`)."""
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
    # The paper's treatment of massive activations as its own run: the Gated and baseline groups trained
    # again on every non-BOS row (train.max_norm_ratio null), metrics rows of variant `all_tokens`
    all_tokens: bool = False
    all_tokens_sites: list[str] = field(default_factory=list)  # ... at these sites ([]: every site)
    # ... with a grid of its own ([]: the sweep's Gated and baseline groups that are `in_variants`). Its λ
    # differ: trained on every row, the scale E||x||² = 1 includes the massive rows and shrinks the others,
    # so a λ weighs far more there
    all_tokens_groups: list[SAEGroupConfig] = field(default_factory=list)
    # ... and its gradient clip (train.max_grad_norm for that run only; None: train.max_grad_norm's)
    all_tokens_max_grad_norm: Optional[float] = None

    def validate(self) -> None:
        require_safe_name(self.name, "sweep.name")
        require(bool(self.groups), "sweep.groups", "list at least one group of SAEs")
        require(not self.rescale_shift or any(g.arch == rescale_shift_base() for g in self.groups),
                "sweep.rescale_shift", f"needs a {rescale_shift_base()} group to rescale and shift")
        for index, group in enumerate(self.groups):
            group.validate(f"sweep.groups.{index}")
        require(self.all_tokens_max_grad_norm is None or self.all_tokens_max_grad_norm > 0,
                "sweep.all_tokens_max_grad_norm", "must be positive, or null for train.max_grad_norm's")
        for index, group in enumerate(self.all_tokens_groups):
            group.validate(f"sweep.all_tokens_groups.{index}")
            choice(group.arch, f"sweep.all_tokens_groups.{index}.arch", [PROPOSED, BASELINE])
        for key in ("rescale_shift_sites", "all_tokens_sites"):
            for site in getattr(self, key):
                choice(site, f"sweep.{key}", SITES)
            distinct(getattr(self, key), f"sweep.{key}")
        require(not self.all_tokens or any(self.all_tokens_at(site) for site in SITES), "sweep.all_tokens",
                f"needs a {PROPOSED} and a {BASELINE} group at one of its sites to train on every token")

    def rescale_shift_at(self, site: str) -> bool:
        """Whether Fig. 9's rescale-and-shift is trained at `site` (it needs a baseline group there)."""
        return (self.rescale_shift and (not self.rescale_shift_sites or site in self.rescale_shift_sites)
                and any(g.arch == rescale_shift_base() for g in self.variant_groups_at(site)))

    def all_tokens_at(self, site: str) -> bool:
        """Whether the every-token variant is trained at `site` (it needs Gated and baseline groups there)."""
        archs = {group.arch for group in self.all_tokens_groups_at(site)}
        return (self.all_tokens and (not self.all_tokens_sites or site in self.all_tokens_sites)
                and {PROPOSED, BASELINE} <= archs)

    def groups_at(self, site: str) -> list[SAEGroupConfig]:
        """The groups trained at `site` (ablation groups may be limited to some sites)."""
        return [group for group in self.groups if group.trained_at(site)]

    def all_tokens_grid(self) -> list[SAEGroupConfig]:
        """The groups the every-token run trains: its own grid, or the sweep's Gated and baseline groups
        that are `in_variants`."""
        return self.all_tokens_groups or [group for group in self.groups
                                          if group.arch in (PROPOSED, BASELINE) and group.in_variants]

    def all_tokens_groups_at(self, site: str) -> list[SAEGroupConfig]:
        return [group for group in self.all_tokens_grid() if group.trained_at(site)]

    def variant_groups_at(self, site: str) -> list[SAEGroupConfig]:
        """The groups at `site` that rescale-and-shift and the every-token run repeat (`in_variants`)."""
        return [group for group in self.groups_at(site) if group.in_variants]
