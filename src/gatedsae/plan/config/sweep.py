"""`sweep` (conf/sweep/): the grid of SAEs, one group per architecture and width, each swept over its
sparsity knob."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gatedsae.plan.config.checks import choice, distinct, finite, require, require_safe_name
from gatedsae.plan.sites import SITES


L1_UNITS = ("normalized", "paper_per_dim", "paper_per_dim_energy")


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

        choice(self.l1_units, f"{key}.l1_units", L1_UNITS)
        for site in self.sites:
            choice(site, f"{key}.sites", SITES)
        distinct(self.sites, f"{key}.sites")
        choice(self.arch, f"{key}.arch", sorted(ARCHITECTURES))
        for name in ("width_ratio", "lr"):
            finite(getattr(self, name), f"{key}.{name}")
            require(getattr(self, name) > 0, f"{key}.{name}", "must be positive")
        knob = self.knob
        other = "k" if knob == "l1" else "l1"
        require(not getattr(self, other), f"{key}.{other}", f"{self.arch} is swept over {knob}, not {other}; "
                 f"move the values to {key}.{knob}")
        require(bool(self.values), f"{key}.{knob}", "list one or more λ ≥ 0" if knob == "l1" else
                 "list one or more k ≥ 1 (features kept per token)")
        for i, value in enumerate(self.values):
            if knob == "l1":
                require(math.isfinite(value) and value >= 0, f"{key}.l1", f"got λ = {value} (item {i}); every λ "
                         "must be a finite number ≥ 0")
            else:
                require(isinstance(value, int) and value >= 1, f"{key}.k", f"got k = {value} (item {i}); every k "
                         "must be a whole number ≥ 1")
        require(len(set(self.values)) == len(self.values), f"{key}.{knob}", "values must be distinct")

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
        require(self.width(d) >= 1, f"{key}.width_ratio", f"{self.width_ratio} × d = {d} at {site} rounds to width "
                 f"{self.width(d)}; use a ratio of at least {0.5 / d:.3g} (an SAE needs one feature or more)")
        if self.knob == "k":
            require(max(self.k) <= self.width(d), f"{key}.k", f"k = {max(self.k)} exceeds the width {self.width(d)} "
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
        require(bool(self.groups), "sweep.groups", "list at least one group of SAEs")
        require(not self.rescale_shift or any(g.arch == "baseline" for g in self.groups), "sweep.rescale_shift",
                 "needs a baseline group to rescale and shift")
        for index, group in enumerate(self.groups):
            group.validate(f"sweep.groups.{index}")
        for site in self.rescale_shift_sites:
            choice(site, "sweep.rescale_shift_sites", SITES)
        distinct(self.rescale_shift_sites, "sweep.rescale_shift_sites")

    def rescale_shift_at(self, site: str) -> bool:
        """Whether Fig. 9's rescale-and-shift is trained at `site` (it needs a baseline group there)."""
        return (self.rescale_shift and (not self.rescale_shift_sites or site in self.rescale_shift_sites)
                and any(g.arch == "baseline" for g in self.groups_at(site)))

    def groups_at(self, site: str) -> list[SAEGroupConfig]:
        """The groups trained at `site` (ablation groups may be limited to some sites)."""
        return [group for group in self.groups if group.trained_at(site)]
