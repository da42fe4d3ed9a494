"""The claims' statistics, read off the frontiers where conf/verdict pre-registers them, each with its
two-level interval (`evaluation.intervals`):

- `headline`: per grid (and per training variant that has both, e.g. the main sweep), L0_gated /
  L0_baseline and each frontier's γ at the site's loss-recovered levels (one row), and at each level
  (`level_readings`);
- `comparisons`: Figs. 9 and 8 at matched L0 (rescale-and-shift vs the baseline, the part of the
  Gated–baseline gap it closes, each ablation and successor vs Gated), at the L0s the Gated frontier
  needs to reach the site's levels (or conf/verdict's `matched_l0`);
- `ratio_curve`: the L0 ratio over a grid of loss-recovered levels with its pointwise interval (the figure).

Each statistic comes with its interval, the seed-to-seed spread (the SD of the statistic computed on each
seed's own grid), the number of seeds, and how often it was undefined on the resamples.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from gatedsae.evaluation.frontiers import Sweep, anchors, at_levels, at_matched_l0, gap_fraction, ratio_curve as curve_at
from gatedsae.evaluation.intervals import Bootstrap, Estimate, grid_columns
from gatedsae.plan import architectures
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import VerdictConfig
from gatedsae.plan.grid import MAIN_VARIANT

RESCALE_SHIFT = architectures.only("rescale_shift")  # Fig. 9
ABLATIONS = tuple(architectures.names("ablation"))    # Fig. 8
SUCCESSORS = tuple(architectures.names("successor"))  # beyond the paper
COMPUTE_MATCHED = 1.5  # the paper's baseline width relative to Gated's (equal training compute)
CURVE_POINTS = 41


def estimate_columns(name: str, estimate: Optional[Estimate]) -> dict:
    """A statistic's columns: value, interval, seed spread, per-seed values, how often undefined."""
    if estimate is None:
        return {name: math.nan}
    return {name: estimate.value, f"{name}_ci_low": estimate.ci_low, f"{name}_ci_high": estimate.ci_high,
            f"{name}_seed_sd": estimate.seed_sd, f"{name}_per_seed": ";".join(f"{v:.6g}" for v in estimate.per_seed),
            f"{name}_undefined": max(estimate.undefined_windows, estimate.undefined_seeds)}


def _format_list(values: Sequence[float]) -> str:
    return ";".join(f"{v:g}" for v in values)


def parse_list(text) -> list[float]:
    """A list column written by `_format_list` (empty or NaN: none)."""
    return [] if not isinstance(text, str) or not text else [float(v) for v in text.split(";")]


class Readings:
    """The statistics of one frame of metrics rows (one held-out split, as the rows say)."""

    def __init__(self, frame: pd.DataFrame, bootstrap: Bootstrap, protocol: VerdictConfig):
        self.frame, self.bootstrap, self.protocol = frame, bootstrap, protocol
        self.grid = grid_columns(frame)

    def _grids(self):
        for key, index in self.bootstrap.rows.items():
            yield key, self.frame.loc[index]

    def _estimate(self, key: tuple, masks: Sequence[pd.Series], compute: Callable[..., dict],
                  log_scale: Sequence[str] = ()) -> Optional[dict[str, Estimate]]:
        return self.bootstrap.estimate(key, [mask.to_numpy() for mask in masks], compute, log_scale)

    # -- which rows each frontier is made of ------------------------------------------------------

    @staticmethod
    def _arch(group: pd.DataFrame, arch: str, variant: Optional[str] = MAIN_VARIANT) -> pd.Series:
        mask = group["arch"] == arch
        return mask & (group["variant"] == variant) if variant is not None and "variant" in group else mask

    @staticmethod
    def baseline_widths(group: pd.DataFrame, gated: pd.Series, baseline: pd.Series) -> list[int]:
        """The baseline widths, the compute-matched one (1.5× Gated's) first."""
        widths = sorted({int(w) for w in group.loc[baseline, "width"]}) if "width" in group else []
        gated_width = float(group.loc[gated, "width"].median()) if "width" in group and gated.any() else math.nan
        return sorted(widths, key=lambda w: abs(w / gated_width - COMPUTE_MATCHED) if gated_width else 0)

    # -- the headline -----------------------------------------------------------------------------------

    def headline(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """(one row per grid, variant and baseline width; one row per level of each) at the levels."""
        records, per_level = [], []
        for key, group in self._grids():
            site = group["site"].iloc[0]
            levels = np.array(self.protocol.levels_at(site), dtype=float)
            variants = sorted(group["variant"].unique(), key=lambda v: v != MAIN_VARIANT) if "variant" in group else [None]
            for variant in variants:
                gated, all_baselines = self._arch(group, PROPOSED, variant), self._arch(group, BASELINE, variant)
                if not gated.any() or not all_baselines.any():
                    continue
                for width in self.baseline_widths(group, gated, all_baselines) or [None]:
                    baseline = all_baselines & (group["width"] == width) if width is not None else all_baselines
                    record = {**dict(zip(self.grid, key)), "variant": variant, "width_gated": _width(group, gated),
                              "width_baseline": width, "levels": _format_list(levels)}
                    found = self._estimate(key, [gated, baseline],
                                           lambda g, b: at_levels(g, b, levels), log_scale=("l0_ratio", "l0_ratio_per_level"))
                    record |= self._reach(key, gated, baseline)
                    record["seeds"] = next(iter(found.values())).seeds if found else 0
                    for name in ("l0_ratio", "gamma_gated", "gamma_baseline"):
                        record |= estimate_columns(name, found[name] if found else None)
                    records.append(record)
                    for i, level in enumerate(levels):
                        entry = {k: record[k] for k in (*self.grid, "variant", "width_gated", "width_baseline", "seeds")}
                        entry["level"] = level
                        for name in ("l0_ratio", "gamma_gated", "gamma_baseline"):
                            entry |= estimate_columns(name, found[f"{name}_per_level"][i] if found else None)
                        per_level.append(entry)
        return pd.DataFrame(records), pd.DataFrame(per_level)

    def _reach(self, key: tuple, gated: pd.Series, baseline: pd.Series) -> dict:
        """How far each seed-averaged frontier reaches in loss recovered (says why a level is not reached)."""
        found = {}
        for name, sweep in zip((PROPOSED, BASELINE), self.bootstrap.sweeps(key, [gated.to_numpy(), baseline.to_numpy()])):
            front = sweep.frontier()
            found[f"loss_recovered_min_{name}"] = float(front.loss_recovered.min()) if len(front.l0) else math.nan
            found[f"loss_recovered_max_{name}"] = float(front.loss_recovered.max()) if len(front.l0) else math.nan
        return found

    def _l0_range(self, key: tuple, mask: pd.Series) -> str:
        """'low;high': the L0 a seed-averaged frontier spans."""
        front = self.bootstrap.sweeps(key, [mask.to_numpy()])[0].frontier()
        return _format_list([front.l0.min(), front.l0.max()]) if len(front.l0) else ""

    # -- Figs. 8 and 9 ------------------------------------------------------------------------------------

    def comparisons(self) -> pd.DataFrame:
        """At matched L0: rescale-and-shift vs the baseline (with the part of the gap it closes), Gated vs
        rescale-and-shift, each ablation and successor vs Gated."""
        records = []
        for key, group in self._grids():
            site = group["site"].iloc[0]
            levels = np.array(self.protocol.levels_at(site), dtype=float)
            fixed = np.array(self.protocol.matched_l0_at(site), dtype=float)
            gated = self._arch(group, PROPOSED)
            rescale = self._arch(group, RESCALE_SHIFT, None)
            baseline = self._arch(group, architectures.versus(RESCALE_SHIFT))
            if rescale.any():  # the baseline the rescale-and-shift SAEs were trained on: their width
                baseline &= group["width"].isin(set(group.loc[rescale, "width"]))

            def where(g: Sweep) -> np.ndarray:
                return fixed if len(fixed) else anchors(g, levels)

            pairs = [(RESCALE_SHIFT, rescale, architectures.versus(RESCALE_SHIFT), baseline),
                     (PROPOSED, gated, RESCALE_SHIFT, rescale)]
            pairs += [(arch, self._arch(group, arch), architectures.versus(arch), self._arch(group, architectures.versus(arch)))
                      for arch in (*ABLATIONS, *SUCCESSORS)]
            for arch, mask, versus, versus_mask in pairs:
                if not mask.any() or not versus_mask.any() or not gated.any():
                    continue
                found = self._estimate(key, [mask, versus_mask, gated],
                                       lambda s, v, g: {**at_matched_l0(s, v, where(g)), "l0_at": where(g)})
                record = {**dict(zip(self.grid, key)), "arch": arch, "versus": versus,
                          "seeds": found["loss_recovered_difference"].seeds if found else 0,
                          "l0_at": _format_list([e.value for e in found["l0_at"]]) if found else "",
                          "l0_rule": "conf" if len(fixed) else "gated frontier at the levels",
                          "l0_range": self._l0_range(key, mask), "l0_range_versus": self._l0_range(key, versus_mask)}
                for name in ("loss_recovered_difference", "gamma"):
                    record |= estimate_columns(name, found[name] if found else None)
                if arch == RESCALE_SHIFT:
                    closed = self._estimate(key, [mask, versus_mask, gated],
                                            lambda s, b, g: gap_fraction(s, b, g, where(g)))
                    record |= estimate_columns("gap_fraction", closed["gap_fraction"] if closed else None)
                records.append(record)
        columns = [*self.grid, "arch", "versus", "seeds", "l0_rule", "l0_at", "l0_range", "l0_range_versus"]
        return pd.DataFrame(records).reindex(columns=columns + [c for c in pd.DataFrame(records).columns
                                                                if c not in columns]) if records else \
            pd.DataFrame(columns=columns + ["loss_recovered_difference"])

    # -- the figure's curve ------------------------------------------------------------------------------

    def ratio_curve(self, points: int = CURVE_POINTS) -> pd.DataFrame:
        """The main sweep's L0 ratio (compute-matched baseline) over loss recovered, pointwise intervals,
        across the range both seed-averaged frontiers cover."""
        records = []
        for key, group in self._grids():
            gated, baselines = self._arch(group, PROPOSED), self._arch(group, BASELINE)
            if not gated.any() or not baselines.any():
                continue
            width = self.baseline_widths(group, gated, baselines)[0]
            baseline = baselines & (group["width"] == width)
            reach = self._reach(key, gated, baseline)
            low = max(reach["loss_recovered_min_gated"], reach["loss_recovered_min_baseline"])
            high = min(reach["loss_recovered_max_gated"], reach["loss_recovered_max_baseline"])
            if not low < high:
                continue
            grid = np.linspace(low, high, points)
            found = self._estimate(key, [gated, baseline], lambda g, b: curve_at(g, b, grid),
                                   log_scale=("l0_ratio",))
            for i, level in enumerate(grid):
                estimate = found["l0_ratio"][i] if found else None
                records.append({**dict(zip(self.grid, key)), "loss_recovered": level, "seeds": estimate.seeds if estimate else 0,
                                **estimate_columns("l0_ratio", estimate)})
        return pd.DataFrame(records)


def _width(group: pd.DataFrame, mask: pd.Series) -> Optional[int]:
    widths = sorted({int(w) for w in group.loc[mask, "width"]}) if "width" in group else []
    return widths[0] if len(widths) == 1 else None
