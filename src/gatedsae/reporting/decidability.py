"""What it would take to decide an INCONCLUSIVE claim: the training seeds, or the held-out windows, at
which its interval would clear the claim's threshold, were the estimate and the spreads it was read
with to hold.

A claim's interval ends are θ̂ + q, q a 2.5% or 97.5% point of W + se · T (evaluation/intervals.py):
W the window error, se the seed standard error, T Student's t with S − 1 degrees of freedom. Here W is
modelled as normal with SD σ_w, and se as the per-seed readings' SD over √S. Each end of the published
interval then fixes σ_w on its side (or, where the seed term alone reaches past that end, the seed term
is scaled down to meet it and σ_w is 0), so the model gives back the published interval at S seeds and
the windows it was read on. Projected to S' seeds and k times the windows (se · √(S/S'), σ_w / √k,
S' − 1 degrees of freedom), the claim is decidable there when its own rule (`claims.Rule`) judges the
projected interval REPRODUCED or NOT REPRODUCED.

It is an extrapolation, not a forecast of the outcome: more data moves the estimate too, and a claim
whose estimate sits on its threshold needs more than any budget here. Seeds shrink only the seed term
(every seed is read on the same windows); windows shrink only the window term. L0 ratios are projected
on the log scale their intervals are made on."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
from scipy import optimize, stats

from gatedsae.plan.sites import short_label
from gatedsae.reporting.claims import INCONCLUSIVE, Rule, format_interval

TAIL = 0.975
MAX_SEEDS = 30
WINDOW_FACTORS = (2, 4, 8, 16, 32, 64)
DATA_FACTORS = range(2, 11)  # seeds and windows both times these
QUADRATURE = 4000  # strata of T in end_distance
LOG_SCALE_PREFIX = "l0_ratio"  # the statistics whose intervals are made on the log scale


def end_distance(window_sd: float, seed_se: float, df: int, q: float = TAIL) -> float:
    """The q-point of window_sd · Z + seed_se · T (Z normal, T Student's t with `df` degrees of freedom)."""
    if seed_se <= 0 or df < 1:
        return window_sd * stats.norm.ppf(q)
    if window_sd <= 0:
        return seed_se * stats.t.ppf(q, df)

    # E_T[Φ((x − se·T) / σ)] on T's quantiles at the midpoints of equal-probability strata
    t = stats.t.ppf((np.arange(QUADRATURE) + 0.5) / QUADRATURE, df)

    def cdf(x: float) -> float:
        return float(stats.norm.cdf((x - seed_se * t) / window_sd).mean())

    top = window_sd * stats.norm.ppf(q) + seed_se * stats.t.ppf(q, df)  # the sum of the two points bounds it
    return optimize.brentq(lambda x: cdf(x) - q, 0.0, top, xtol=1e-12 * max(top, 1e-300))


def calibrate(distance: float, seed_se: float, df: int) -> tuple[float, float]:
    """(σ_w, se) that give an interval end `distance` from the estimate: σ_w solved at the given se, or,
    where the seed term alone reaches past that end, σ_w 0 and se scaled to meet it."""
    seed_only = end_distance(0.0, seed_se, df)
    if seed_se > 0 and df >= 1 and seed_only >= distance:
        return 0.0, distance / stats.t.ppf(TAIL, df)
    return optimize.brentq(lambda sd: end_distance(sd, seed_se, df) - distance, 0.0,
                           distance / stats.norm.ppf(TAIL) + 1e-300, xtol=1e-14), seed_se


@dataclass(frozen=True)
class Side:
    """One end of a claim's interval, as its seed and window terms (on the claim's interval scale)."""

    window_sd: float
    seed_se: float
    seeds: int

    def distance(self, seeds: int, window_factor: float) -> float:
        seed_se = self.seed_se * math.sqrt(self.seeds / seeds) if self.seeds > 1 else 0.0
        return end_distance(self.window_sd / math.sqrt(window_factor), seed_se, seeds - 1)


@dataclass(frozen=True)
class Plan:
    """What would decide one INCONCLUSIVE claim (None: nothing up to MAX_SEEDS, or 64 times the windows)."""

    id: str
    claim: str
    site: str
    layer: int
    measured: str
    threshold: str
    seeds: int
    windows: Optional[int]
    seeds_needed: Optional[int]        # at today's windows
    decided_by_seeds: Optional[str]    # the status the projected interval gets there
    window_factor_needed: Optional[int]  # at today's seeds
    decided_by_windows: Optional[str]
    data_factor_needed: Optional[int]  # seeds and windows both times this
    decided_by_data: Optional[str]
    seed_share: float                  # the seed term's share of the interval's variance, on the deciding side
    why_not: str = ""                  # why no plan is given


def _seed_se(claim: dict, forward) -> float:
    values = [forward(v) for v in claim.get("per_seed") or [] if v is not None and (v > 0 or forward is float)]
    return float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


class Projection:
    """A claim's interval as a seed term and a window term per end, projected to other seeds and windows."""

    def __init__(self, claim: dict):
        self.forward, self.back = (math.log, math.exp) if claim["id"].startswith(LOG_SCALE_PREFIX) else (float, float)
        self.seeds = int(claim.get("seeds") or 1)
        self.centre = self.forward(claim["value"])
        seed_se = _seed_se(claim, self.forward)
        self.sides = {end: Side(*calibrate(abs(self.forward(claim[end]) - self.centre), seed_se, self.seeds - 1),
                                self.seeds) for end in ("ci_low", "ci_high")}

    def interval(self, seeds: int, window_factor: float) -> tuple[float, float]:
        return (self.back(self.centre - self.sides["ci_low"].distance(seeds, window_factor)),
                self.back(self.centre + self.sides["ci_high"].distance(seeds, window_factor)))

    def seed_share(self, end: str) -> float:
        """The seed term's share of one end's spread (squared 97.5% points), as published."""
        side = self.sides[end]
        seed = (stats.t.ppf(TAIL, self.seeds - 1) * side.seed_se) ** 2 if self.seeds > 1 else 0.0
        window = (stats.norm.ppf(TAIL) * side.window_sd) ** 2
        return seed / (seed + window) if seed + window > 0 else float("nan")


def plan_claim(claim: dict, windows: Optional[int]) -> Plan:
    """The seeds (today's windows), the windows (today's seeds), or both, that would decide `claim`."""
    rule = Rule.parse(claim["threshold"], *((100, " pp") if claim.get("percent_points") else (1, "")))
    value, low, high = (claim.get(k) for k in ("value", "ci_low", "ci_high"))
    seeds = int(claim.get("seeds") or 1)
    base = dict(id=claim["id"], claim=claim["claim"], site=claim["site"], layer=claim["layer"],
                measured=format_interval(value, low, high, bool(claim.get("percent_points"))),
                threshold=claim["threshold"], seeds=seeds, windows=windows)
    if any(not isinstance(v, (int, float)) or not math.isfinite(v) for v in (value, low, high)):
        return Plan(**base, seeds_needed=None, decided_by_seeds=None, window_factor_needed=None, decided_by_windows=None,
                    data_factor_needed=None, decided_by_data=None, seed_share=float("nan"),
                    why_not="its interval is unbounded or missing")
    projection = Projection(claim)

    def first(trials) -> tuple:  # the first (size, status) the projection decides, else (None, None)
        return next(((size, status) for size, n_seeds, factor in trials
                     if (status := rule.judge(*projection.interval(n_seeds, factor))) != INCONCLUSIVE), (None, None))

    more_seeds = seeds > 1  # with one seed the seed term is not measured, so more seeds cannot be projected
    by_seeds = first((n, n, 1) for n in range(seeds + 1, MAX_SEEDS + 1)) if more_seeds else (None, None)
    by_windows = first((k, seeds, k) for k in WINDOW_FACTORS)
    by_data = first((k, k * seeds, k) for k in DATA_FACTORS) if more_seeds else (None, None)
    deciding = "ci_high" if _nearest(rule, value) > value else "ci_low"  # the end that must cross the threshold
    return Plan(**base, seeds_needed=by_seeds[0], decided_by_seeds=by_seeds[1], window_factor_needed=by_windows[0],
                decided_by_windows=by_windows[1], data_factor_needed=by_data[0], decided_by_data=by_data[1],
                seed_share=projection.seed_share(deciding))


def _nearest(rule: Rule, value: float) -> float:
    return min(rule.bounds, key=lambda bound: abs(bound - value))


def plan_verdict(verdict: dict) -> list[dict]:
    """A plan per INCONCLUSIVE claim of a verdict.json, with its site's held-out CE windows."""
    windows = {(s["site"], s["layer"]): int(s["ce_windows"]) if s.get("ce_windows") else None
               for s in verdict.get("notes", {}).get("sites", [])}
    return [asdict(plan_claim(c, windows.get((c["site"], c["layer"]))))
            for c in verdict["claims"] if c["status"] == INCONCLUSIVE]


def to_decide_table(data: dict) -> list[str]:
    """docs/verdict.md's table of what would decide each INCONCLUSIVE claim (results/calibration/to_decide.json)."""
    lines = ["| claim | site | measured | threshold | seed share | seeds, windows held | windows, seeds held | "
             "both × k |", "|---|---|---|---|---|---|---|---|"]

    def cell(size, status, shown: str, beyond: str) -> str:
        return f"{shown}: {status}" if size else beyond

    for plan in data["plans"]:
        head = f"| {plan['claim']} | {short_label(plan['site'])}, L{plan['layer']} | {plan['measured']} | {plan['threshold']} |"
        if plan["why_not"]:
            lines.append(f"{head} — | {plan['why_not']} | — | — |")
            continue
        unmeasured = "— (one seed)" if plan["seeds"] <= 1 else None
        windows = plan["windows"]
        factor = plan["window_factor_needed"]
        cells = [
            f"{100 * plan['seed_share']:.0f}%",
            unmeasured or cell(plan["seeds_needed"], plan["decided_by_seeds"], f"{plan['seeds_needed']} seeds",
                               f"more than {data['max_seeds']} seeds"),
            cell(factor, plan["decided_by_windows"], f"{(factor or 0) * (windows or 0)} windows ({factor}×)"
                 if windows else f"{factor}× the windows", f"more than {max(data['window_factors'])}× the windows"),
            unmeasured or cell(plan["data_factor_needed"], plan["decided_by_data"], f"k = {plan['data_factor_needed']}",
                               f"k > {max(data['data_factors'])}"),
        ]
        lines.append(f"{head} {' | '.join(cells)} |")
    plans = data["plans"]
    decided = {kind: sum(bool(plan[f"{kind}_needed"]) for plan in plans)
               for kind in ("seeds", "window_factor", "data_factor")}
    lines += ["", f"Of {len(plans)}: more seeds alone (up to {data['max_seeds']}) would decide {decided['seeds']}, "
              f"more windows alone (up to {max(data['window_factors'])}×) {decided['window_factor']}, both "
              f"(k up to {max(data['data_factors'])}) {decided['data_factor']}."]
    lines += ["", f"{len(plans)} INCONCLUSIVE claims of `{data['verdict']}`, each read with {data['seeds']} "
              "seeds. A cell: the smallest number of seeds (the windows held), of held-out CE windows (the seeds "
              "held), or k, seeds and windows both k times today's, at which the claim's interval, projected with "
              "its estimate fixed, clears its threshold, and the status it would get there. The seed share: the "
              "seed term's part of the interval's spread on the side that decides."]
    return lines
