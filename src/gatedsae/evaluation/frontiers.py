"""Pareto frontiers of one architecture's sweep and the readings the claims take along them, on plain
arrays: the same code gives the point estimates and every bootstrap replicate of them.

Frontiers are read where the verdict's configuration says, never where the data happen to overlap:

- `at_levels`: L0_gated / L0_baseline at pre-registered levels of loss recovered (log L0 interpolated
  linearly in loss recovered between neighbouring frontier points), with each frontier's γ there;
- `at_matched_l0`: one frontier's loss recovered minus another's at given L0 values (loss recovered
  interpolated linearly in log L0), with the first one's γ there (Figs. 8 and 9);
- `gap_fraction`: the part of the Gated–baseline gap in loss recovered that a third frontier closes at
  given L0 values (Fig. 9: rescale-and-shift).

A level outside a frontier's range is not reached: the reading there is NaN (never extrapolated).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Sweep:
    """The SAEs of one architecture at one (site, layer): L0, loss recovered and γ, one entry each."""

    l0: np.ndarray
    loss_recovered: np.ndarray
    gamma: np.ndarray

    def frontier(self) -> "Sweep":
        """The Pareto-optimal points (low L0, high loss recovered), sorted by L0; undefined points left out."""
        finite = np.isfinite(self.l0) & np.isfinite(self.loss_recovered) & (self.l0 > 0)
        points = Sweep(self.l0[finite], self.loss_recovered[finite], self.gamma[finite])
        keep = pareto_optimal(points.l0, points.loss_recovered)
        order = np.argsort(points.l0[keep], kind="stable")
        return Sweep(points.l0[keep][order], points.loss_recovered[keep][order], points.gamma[keep][order])


def pareto_optimal(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True where no other point has lower-or-equal x and higher-or-equal y, one of them strictly."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    no_worse = (x[None, :] <= x[:, None]) & (y[None, :] >= y[:, None])
    better = (x[None, :] < x[:, None]) | (y[None, :] > y[:, None])
    return ~(no_worse & better).any(1)


def _within(values: np.ndarray, reach: np.ndarray) -> np.ndarray:
    return (len(reach) > 0) & (values >= (reach.min() if len(reach) else 0)) & (values <= (reach.max() if len(reach) else 0))


def along_loss_recovered(front: Sweep, levels: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` of a frontier's points interpolated at loss-recovered `levels` (NaN where not reached)."""
    levels = np.asarray(levels, dtype=float)
    if len(front.l0) == 0:
        return np.full(levels.shape, np.nan)
    return np.where(_within(levels, front.loss_recovered), np.interp(levels, front.loss_recovered, values), np.nan)


def l0_at(front: Sweep, levels: np.ndarray) -> np.ndarray:
    """The L0 a frontier needs to reach each loss-recovered level (log-linear); NaN where it does not."""
    return np.exp(along_loss_recovered(front, levels, np.log(front.l0)))


def along_l0(front: Sweep, l0s: np.ndarray, values: np.ndarray) -> np.ndarray:
    """`values` of a frontier's points interpolated in log L0 at `l0s` (NaN outside the frontier)."""
    l0s = np.asarray(l0s, dtype=float)
    if len(front.l0) == 0:
        return np.full(l0s.shape, np.nan)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = _within(l0s, front.l0) & (l0s > 0)
        return np.where(inside, np.interp(np.log(np.where(inside, l0s, 1.0)), np.log(front.l0), values), np.nan)


def _mean(values: np.ndarray) -> float:
    """The mean, NaN when any value is undefined (a claim needs every one of its levels)."""
    return float(np.mean(values)) if len(values) and np.isfinite(values).all() else float("nan")


def at_levels(gated: Sweep, baseline: Sweep, levels: np.ndarray) -> dict:
    """The L0 ratio (geometric mean over the levels) and each frontier's γ (mean over them) at
    pre-registered loss-recovered levels, with the per-level readings (`*_per_level`)."""
    fronts = gated.frontier(), baseline.frontier()
    log_ratio = np.log(l0_at(fronts[0], levels)) - np.log(l0_at(fronts[1], levels))
    gammas = [along_loss_recovered(front, levels, front.gamma) for front in fronts]
    return {"l0_ratio": float(np.exp(_mean(log_ratio))), "gamma_gated": _mean(gammas[0]),
            "gamma_baseline": _mean(gammas[1]), "l0_ratio_per_level": np.exp(log_ratio),
            "gamma_gated_per_level": gammas[0], "gamma_baseline_per_level": gammas[1]}


def ratio_curve(gated: Sweep, baseline: Sweep, levels: np.ndarray) -> dict:
    """L0_gated / L0_baseline at each loss-recovered level (for the figure: NaN where not reached)."""
    fronts = gated.frontier(), baseline.frontier()
    return {"l0_ratio": l0_at(fronts[0], levels) / l0_at(fronts[1], levels)}


def anchors(gated: Sweep, levels: np.ndarray) -> np.ndarray:
    """Where Figs. 8 and 9 are read: the L0 the Gated frontier needs to reach each level."""
    return l0_at(gated.frontier(), levels)


def at_matched_l0(sweep: Sweep, versus: Sweep, l0s: np.ndarray) -> dict:
    """Loss recovered of `sweep`'s frontier minus `versus`'s at each L0 of `l0s`, averaged, and the first
    frontier's γ there; NaN when either frontier misses one of them."""
    fronts = sweep.frontier(), versus.frontier()
    recovered = [along_l0(front, l0s, front.loss_recovered) for front in fronts]
    return {"loss_recovered_difference": _mean(recovered[0] - recovered[1]),
            "gamma": _mean(along_l0(fronts[0], l0s, fronts[0].gamma))}


def gap_fraction(middle: Sweep, baseline: Sweep, gated: Sweep, l0s: np.ndarray) -> dict:
    """(LR_middle − LR_baseline) / (LR_gated − LR_baseline), each averaged over `l0s`: the part of the
    Gated–baseline gap `middle` closes (NaN where a frontier misses an L0, or no gap is left)."""
    recovered = [along_l0(front, l0s, front.loss_recovered) for front in (middle.frontier(), baseline.frontier(),
                                                                           gated.frontier())]
    closed, gap = _mean(recovered[0] - recovered[1]), _mean(recovered[2] - recovered[1])
    return {"gap_fraction": closed / gap if gap > 0 else float("nan")}
