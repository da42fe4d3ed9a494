"""The ground-truth benchmark's statistics and the verdict on the paper's mechanism (rules:
conf/groundtruth, `verdict`). Every statistic is computed on each seed's own runs (a seed is a dictionary,
its samples and the SAEs' initialisation), then summarised by its mean over seeds with a Student-t
interval; a claim is REPRODUCED when the interval lies on its side of the rule, NOT REPRODUCED when it
lies on the other side, UNDECIDED when it crosses, NOT TESTED when a seed's curves do not reach where the
claim is read.

Claims (the paper's mechanism, Rajamanoharan et al. 2024, §3):
- the baseline's magnitudes shrink as λ grows: the slope of its magnitude ratio per decade of λ < threshold;
- Gated's do not: its slope above −margin (non-inferiority), and its ratio at matched L0 within a band;
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
from gatedsae.plan.grid import MAIN_VARIANT

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


def at_l0(rows: pd.DataFrame, l0: float, metric: str) -> Optional[float]:
    """One seed's `metric` interpolated (linear in log L0) at `l0`; None outside its L0 range or where the
    metric is undefined."""
    points = rows[(rows["l0"] > 0) & np.isfinite(rows[metric])].sort_values("l0")
    if points.empty or not points["l0"].min() <= l0 <= points["l0"].max():
        return None
    return float(np.interp(np.log(l0), np.log(points["l0"]), points[metric]))


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
    """The mechanism's claims from the per-seed rows (one row per seed and SAE), read on the sweep's SAEs."""
    sweep = rows[rows["variant"] == MAIN_VARIANT]
    seeds = [int(seed) for seed in sorted(rows["seed"].unique())]
    of = lambda arch, seed: sweep[(sweep["arch"] == arch) & (sweep["seed"] == seed)]  # noqa: E731
    c = rules.confidence
    found = [
        _claim("groundtruth/baseline_shrinks", f"{label(BASELINE)}'s magnitudes shrink as λ grows",
               "slope of the magnitude ratio per decade of λ", {s: magnitude_slope(of(BASELINE, s)) for s in seeds},
               c, "below", (rules.baseline_slope_below,), f"< {rules.baseline_slope_below:g}"),
        _claim("groundtruth/gated_slope", f"{label(PROPOSED)}'s magnitudes do not shrink as λ grows",
               "slope of the magnitude ratio per decade of λ", {s: magnitude_slope(of(PROPOSED, s)) for s in seeds},
               c, "above", (-rules.gated_slope_margin,), f"> −{rules.gated_slope_margin:g}"),
    ]
    true_l0 = {seed: float(sweep[sweep["seed"] == seed]["true_l0"].mean()) for seed in seeds}
    for multiple in rules.matched_l0:
        found.append(_claim(f"groundtruth/gated_ratio_at_{multiple:g}x_true_l0",
                            f"{label(PROPOSED)} infers the true magnitudes",
                            f"magnitude ratio at L0 = {multiple:g} × true L0",
                            {s: at_l0(of(PROPOSED, s), multiple * true_l0[s], "magnitude_ratio") for s in seeds}, c,
                            "within", tuple(rules.gated_ratio_within),
                            "within [{:g}, {:g}]".format(*rules.gated_ratio_within)))
    for multiple in rules.matched_l0:
        per_seed = {}
        for seed in seeds:
            gated, baseline = (at_l0(of(arch, seed), multiple * true_l0[seed], "recovered")
                               for arch in (PROPOSED, BASELINE))
            per_seed[seed] = None if gated is None or baseline is None else gated - baseline
        found.append(_claim(f"groundtruth/recovery_at_{multiple:g}x_true_l0",
                            f"{label(PROPOSED)} recovers at least as many true features at matched L0",
                            f"fraction recovered, {label(PROPOSED)} − {label(BASELINE)}, at L0 = {multiple:g} × true L0",
                            per_seed, c, "above", (-rules.recovery_margin,), f"> −{rules.recovery_margin:g}"))
    return found


def as_json(found: list[GroundTruthClaim]) -> list[dict]:
    return [asdict(claim) for claim in found]


# ---------------------------------------------------------------------------------------------------
# The verdict's section (reporting/verdict.py appends it when the experiment runs the benchmark).


def _interval(value, low, high) -> str:
    if value is None:
        return "n/a"
    if low is None or high is None:
        return f"{value:.3g}"
    return f"{value:.3g} [{low:.3g}, {high:.3g}]"


def verdict_section(summary: dict) -> list[str]:
    """Markdown lines of the verdict's ground-truth section, from summary.json."""
    generator, rules = summary["generator"], summary["rules"]
    lines = ["", "## The mechanism on ground truth", "",
             f"Synthetic activations with known features: {generator['n_features']} unit directions in d = "
             f"{generator['d']} (superposition), true L0 ≈ {summary['true_l0']:.2f}, magnitudes "
             f"{generator['magnitude']['law']} (mean {generator['magnitude']['mean']:g}), noise σ = "
             f"{generator['noise']:g}; every architecture trained on {len(summary['seeds'])} seeds (dictionary, data "
             f"and initialisation), a feature counted as recovered at cosine ≥ {summary['recovered_cosine']:g}. "
             f"Mean over seeds with a {100 * rules['confidence']:g}% Student-t interval; rules in conf/groundtruth "
             "(docs/method.md defines each metric).", "",
             "| Claim | Statistic | Measured [CI] | Rule | Per seed | Verdict |", "|---|---|---|---|---|---|"]
    for c in summary["claims"]:
        per_seed = ", ".join("n/a" if v is None else f"{v:.3g}" for v in c["per_seed"].values())
        note = f" ({c['note']})" if c["note"] else ""
        lines.append(f"| {c['claim']} | {c['statistic']} | {_interval(c['value'], c['ci_low'], c['ci_high'])} | "
                     f"{c['threshold']} | {per_seed} | **{c['status']}**{note} |")
    lines += ["", "| SAE | knob | L0 (true L0) | FVU | MMCS | recovered | FP rate | FN rate | magnitude ratio |",
              "|---|---|---|---|---|---|---|---|---|"]
    for s in summary["saes"]:
        cell = lambda m: _interval(s[m], s[f"{m}_ci_low"], s[f"{m}_ci_high"])  # noqa: E731
        lines.append(f"| {label(s['arch'])} | {s['knob']} = {s['value']:g} | {cell('l0')} ({s['true_l0']:.2f}) | {cell('fvu')} | "
                     f"{cell('mmcs')} | {cell('recovered')} | {cell('false_positive_rate')} | "
                     f"{cell('false_negative_rate')} | {cell('magnitude_ratio')} |")
    return lines
