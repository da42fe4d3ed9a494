"""The rule that places a site at a layer before any SAE is trained (conf/verdict `layer_rule`), as
arithmetic on what a probe of the model measured (scripts/probe_layers.py runs the probe).

A site's loss recovered is 1 − e/Δ, with Δ the mean CE cost of zero-ablating the site and e the SAE's
excess CE, both means over the evaluation windows. The rule predicts the 95% half-width of loss
recovered at the site's lowest pre-registered level L before any SAE exists, from the zero-ablation's
per-window costs (mean Δ, SD σ) and a stated noise floor ε: the per-window SD of an SAE's excess CE that
does not shrink with its error (the SAEs of an earlier run at a cheap site, SmolLM2's attention output
at layer 15, show 0.009–0.034 nat at loss recovered ≈ 100%). With the part that scales with the error,
(1 − L)·σ, counted for the excess and for Δ alike:

    half-width ≈ z · √(ε² + 2 (1 − L)² σ²) / (√W · Δ)        (W: the planned evaluation windows)

The chosen layer is the one nearest the experiment's first layer (deeper on a tie), so the sites stay as
close as the paper's (one layer for all three), whose predicted half-width is at most `max_half_width`;
when none is, the one with the smallest.

With a `reach_margin`, the layer must also let a frontier reach the level from below: an SAE with no
active latent outputs a constant, and the best constant is about the site's mean, so no frontier's
sparse end recovers much less than mean-ablation does. The rule asks that mean-ablation's loss recovered,
1 − (mean-ablation's CE cost)/Δ, lie at least `reach_margin` below the site's lowest level; otherwise
the sparsest SAEs sit at the level and the frontier misses it on a share of the resamples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Optional


@dataclass(frozen=True)
class LayerAblations:
    """What the probe measured at one layer: the mean and per-window SD of the zero-ablation's CE cost,
    and the mean-ablation's mean CE cost where the rule asks for it."""

    layer: int
    cost: float     # Δ: mean over windows of (CE zero-ablated − CE clean), nats per prediction
    sd: float       # σ: SD over windows of that per-window difference
    windows: int    # how many windows measured it
    mean_cost: Optional[float] = None  # mean over windows of (CE mean-ablated − CE clean); None: not measured

    @property
    def mean_ablation_recovered(self) -> float:
        """Loss recovered by the site's mean activation: the floor of any SAE frontier at this layer."""
        if self.mean_cost is None:
            raise ValueError(f"layer {self.layer}: the probe did not measure mean-ablation (run it with the "
                             "rule's reach_margin set)")
        return 1 - self.mean_cost / self.cost if self.cost > 0 else -math.inf


def reaches(measured: LayerAblations, level: float, reach_margin: Optional[float]) -> bool:
    """Whether a frontier at this layer can reach `level` from below: mean-ablation recovers at least
    `reach_margin` less than `level` (always, when the rule sets no margin)."""
    return reach_margin is None or measured.mean_ablation_recovered <= level - reach_margin


def predicted_half_width(measured: LayerAblations, level: float, windows: float, noise_floor: float,
                         confidence: float = 0.95) -> float:
    """The rule's predicted half-width of loss recovered at `level` with `windows` evaluation windows."""
    if measured.cost <= 0:
        return math.inf
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    spread = math.sqrt(noise_floor**2 + 2 * ((1 - level) * measured.sd) ** 2)
    return z * spread / (math.sqrt(windows) * measured.cost)


def windows_needed(measured: LayerAblations, level: float, max_half_width: float, noise_floor: float,
                   confidence: float = 0.95) -> float:
    """Evaluation windows at which the predicted half-width reaches `max_half_width`."""
    return predicted_half_width(measured, level, 1, noise_floor, confidence) ** 2 / max_half_width**2


def probe_order(n_layers: int, anchor: int) -> list[int]:
    """Every layer, nearest `anchor` first, the deeper of two at equal distance first: the rule's order."""
    return sorted(range(n_layers), key=lambda layer: (abs(layer - anchor), -layer))


def choose_layer(measured: list[LayerAblations], anchor: int, level: float, windows: int, max_half_width: float,
                 noise_floor: float, confidence: float = 0.95, reach_margin: Optional[float] = None) -> tuple[int, bool]:
    """(the rule's layer, whether it meets the rule) among the measured layers: the first in `probe_order`
    whose predicted half-width is at most `max_half_width` and from which a frontier reaches `level`; else,
    among the layers that reach it (all, if none does), the one with the smallest predicted half-width."""
    if not measured:
        raise ValueError("no layer was measured")
    ranked = sorted(measured, key=lambda m: (abs(m.layer - anchor), -m.layer))
    width = lambda m: predicted_half_width(m, level, windows, noise_floor, confidence)  # noqa: E731
    reachable = [m for m in ranked if reaches(m, level, reach_margin)]
    for candidate in reachable:
        if width(candidate) <= max_half_width:
            return candidate.layer, True
    return min(reachable or ranked, key=width).layer, False
