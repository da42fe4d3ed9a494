"""The ground-truth benchmark's statistics and the verdict on the paper's mechanism (rules:
conf/groundtruth, `verdict`). Every statistic is computed on each seed's own runs (a seed is a dictionary,
its samples and the SAEs' initialisation), then summarised by its mean over seeds with a Student-t
interval; a claim is REPRODUCED when the interval lies on its side of the rule, NOT REPRODUCED when it
lies on the other side, UNDECIDED when it crosses, NOT TESTED when a seed's curves do not reach where the
claim is read.

Claims (the paper's mechanism, Rajamanoharan et al. 2024, §3):
- the baseline's magnitudes shrink as λ grows: the slope of its magnitude ratio per decade of λ < threshold;
- Gated's do not: its slope within ±margin (equivalence), and its ratio (mean over its λ) within a band;
- Gated recovers at least as many true features at matched L0: Gated − baseline fraction recovered, each
  interpolated at a multiple of the true L0, above −margin (non-inferiority).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import pandas as pd

from gatedsae.plan.architectures import BASELINE, PROPOSED, label
from gatedsae.plan.config import GroundTruthVerdictConfig

REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_TESTED = "REPRODUCED", "NOT REPRODUCED", "UNDECIDED", "NOT TESTED"
STATUSES = (REPRODUCED, NOT_REPRODUCED, UNDECIDED, NOT_TESTED)
METRICS = ("l0", "true_l0", "fvu", "mmcs", "recovered", "false_positive_rate", "false_negative_rate", "magnitude_ratio")


def t_interval(values, confidence: float) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean over seeds (NaN when fewer than two values)."""
    from scipy import stats

    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(values) < 2:
        return (float(values.mean()) if len(values) else math.nan), math.nan, math.nan
    mean, sem = float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(values) - 1)) * sem
    return mean, mean - half, mean + half


def judge(low: float, high: float, kind: str, bounds: tuple[float, ...]) -> str:
    """below b / above b / within [a, b], on an interval."""
    if any(math.isnan(v) for v in (low, high)):
        return UNDECIDED
    if kind == "below":
        return REPRODUCED if high < bounds[0] else NOT_REPRODUCED if low >= bounds[0] else UNDECIDED
    if kind == "above":
        return REPRODUCED if low > bounds[0] else NOT_REPRODUCED if high <= bounds[0] else UNDECIDED
    a, b = bounds
    if a <= low and high <= b:
        return REPRODUCED
    return NOT_REPRODUCED if high < a or low > b else UNDECIDED


def summary(rows: pd.DataFrame, confidence: float) -> pd.DataFrame:
    """Per (arch, variant, knob value): each metric's mean over seeds and its interval."""
    out = []
    for (arch, variant, knob, value), group in rows.groupby(["arch", "variant", "knob", "value"], sort=False):
        entry = {"arch": arch, "variant": variant, "knob": knob, "value": value, "seeds": len(group)}
        for metric in METRICS:
            entry[metric], entry[f"{metric}_ci_low"], entry[f"{metric}_ci_high"] = t_interval(group[metric], confidence)
        out.append(entry)
    return pd.DataFrame(out)


def magnitude_slope(rows: pd.DataFrame) -> Optional[float]:
    """One seed's least-squares slope of the magnitude ratio per decade of λ (None: fewer than 2 points)."""
    points = rows[(rows["value"] > 0) & np.isfinite(rows["magnitude_ratio"])]
    if points["value"].nunique() < 2:
        return None
    return float(np.polyfit(np.log10(points["value"]), points["magnitude_ratio"], 1)[0])


def recovered_at(rows: pd.DataFrame, l0: float) -> Optional[float]:
    """One seed's fraction recovered interpolated (linear in log L0) at `l0`; None outside its L0 range."""
    points = rows[rows["l0"] > 0].sort_values("l0")
    if points.empty or not points["l0"].min() <= l0 <= points["l0"].max():
        return None
    return float(np.interp(np.log(l0), np.log(points["l0"]), points["recovered"]))


@dataclass
class GroundTruthClaim:
    id: str
    claim: str
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    threshold: str
    status: str
    per_seed: dict
    note: str = ""


def _claim(id_: str, claim: str, statistic: str, per_seed: dict, confidence: float, kind: str,
           bounds: tuple[float, ...], threshold: str) -> GroundTruthClaim:
    missing = sorted(seed for seed, value in per_seed.items() if value is None)
    value, low, high = t_interval(list(per_seed.values()), confidence)
    status = NOT_TESTED if missing else judge(low, high, kind, bounds)
    note = f"not measurable on seeds {missing}" if missing else ""
    return GroundTruthClaim(id_, claim, statistic, value, low, high, threshold, status, per_seed, note)


def claims(rows: pd.DataFrame, rules: GroundTruthVerdictConfig) -> list[GroundTruthClaim]:
    """The mechanism's claims from the per-seed rows (one row per seed and SAE; variant 'sweep')."""
    sweep = rows[rows["variant"] == "sweep"]
    seeds = [int(seed) for seed in sorted(rows["seed"].unique())]
    of = lambda arch, seed: sweep[(sweep["arch"] == arch) & (sweep["seed"] == seed)]  # noqa: E731
    c = rules.confidence
    found = [
        _claim("groundtruth/baseline_shrinks", f"{label(BASELINE)}'s magnitudes shrink as λ grows",
               "slope of the magnitude ratio per decade of λ", {s: magnitude_slope(of(BASELINE, s)) for s in seeds},
               c, "below", (rules.baseline_slope_below,), f"< {rules.baseline_slope_below:g}"),
        _claim("groundtruth/gated_slope", f"{label(PROPOSED)}'s magnitudes do not shrink as λ grows",
               "slope of the magnitude ratio per decade of λ", {s: magnitude_slope(of(PROPOSED, s)) for s in seeds},
               c, "within", (-rules.gated_slope_within, rules.gated_slope_within),
               f"within ±{rules.gated_slope_within:g}"),
        _claim("groundtruth/gated_ratio", f"{label(PROPOSED)} infers the true magnitudes",
               "magnitude ratio, mean over its λ",
               {s: _mean(of(PROPOSED, s)["magnitude_ratio"]) for s in seeds}, c, "within",
               tuple(rules.gated_ratio_within), "within [{:g}, {:g}]".format(*rules.gated_ratio_within)),
    ]
    for multiple in rules.matched_l0:
        per_seed = {}
        for seed in seeds:
            true_l0 = float(sweep[sweep["seed"] == seed]["true_l0"].mean())
            gated, baseline = (recovered_at(of(arch, seed), multiple * true_l0) for arch in (PROPOSED, BASELINE))
            per_seed[seed] = None if gated is None or baseline is None else gated - baseline
        found.append(_claim(f"groundtruth/recovery_at_{multiple:g}x_true_l0",
                            f"{label(PROPOSED)} recovers at least as many true features at matched L0",
                            f"fraction recovered, {label(PROPOSED)} − {label(BASELINE)}, at L0 = {multiple:g} × true L0",
                            per_seed, c, "above", (-rules.recovery_margin,), f"> −{rules.recovery_margin:g}"))
    return found


def _mean(values: pd.Series) -> Optional[float]:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def as_json(found: list[GroundTruthClaim]) -> list[dict]:
    return [asdict(claim) for claim in found]
