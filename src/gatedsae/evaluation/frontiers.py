"""Pareto frontiers of one architecture's sweep and the comparisons the paper makes along them, on
plain arrays: the same code gives the point estimates and every bootstrap replicate of them.

- `matched_loss_recovered`: the headline. L0_gated / L0_baseline at matched loss recovered, over the
  band of loss recovered both frontiers cover (geometric mean over evenly spaced levels, linear in
  (loss recovered, log L0)), with each frontier's γ at the same levels.
- `matched_l0`: loss recovered of one frontier minus another's at matched L0, over the L0 range both
  cover (mean over levels evenly spaced in log L0), with the first one's γ there (Figs. 8 and 9).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np

LEVELS = 21  # interpolation levels across a matched band


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


def matched_loss_recovered(gated: Sweep, baseline: Sweep, levels: int = LEVELS) -> Optional[dict]:
    """The headline of one (site, layer), or None when the frontiers do not overlap in loss recovered."""
    fronts = {"gated": gated.frontier(), "baseline": baseline.frontier()}
    if any(len(front.l0) < 2 for front in fronts.values()):
        return None
    low = max(front.loss_recovered.min() for front in fronts.values())
    high = min(front.loss_recovered.max() for front in fronts.values())
    if not low < high:
        return None
    grid = np.linspace(low, high, levels)

    def along(front: Sweep, values: np.ndarray) -> np.ndarray:  # frontiers rise in L0 and loss recovered
        return np.interp(grid, front.loss_recovered, values)

    log_ratio = along(fronts["gated"], np.log(fronts["gated"].l0)) - along(fronts["baseline"], np.log(fronts["baseline"].l0))
    return {"l0_ratio": float(np.exp(log_ratio.mean())), "l0_ratio_min": float(np.exp(log_ratio.min())),
            "l0_ratio_max": float(np.exp(log_ratio.max())), "loss_recovered_low": float(low),
            "loss_recovered_high": float(high),
            "gamma_gated": float(along(fronts["gated"], fronts["gated"].gamma).mean()),
            "gamma_baseline": float(along(fronts["baseline"], fronts["baseline"].gamma).mean())}


def matched_l0(sweep: Sweep, versus: Sweep, levels: int = LEVELS) -> Optional[dict]:
    """Loss recovered of `sweep`'s frontier minus `versus`'s at matched L0, or None without overlap."""
    fronts = (sweep.frontier(), versus.frontier())
    if any(len(front.l0) < 2 for front in fronts):
        return None
    low, high = max(front.l0.min() for front in fronts), min(front.l0.max() for front in fronts)
    if not low < high:
        return None
    grid = np.linspace(math.log(low), math.log(high), levels)
    recovered = [np.interp(grid, np.log(front.l0), front.loss_recovered) for front in fronts]
    return {"loss_recovered_difference": float((recovered[0] - recovered[1]).mean()),
            "gamma": float(np.interp(grid, np.log(fronts[0].l0), fronts[0].gamma).mean()),
            "l0_low": float(low), "l0_high": float(high)}
