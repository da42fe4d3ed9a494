"""The claims of the verdict, judged: every claim of the paper measurable at this scale, built from the
readings at the pre-registered levels (`statistics`), each REPRODUCED / NOT REPRODUCED / INCONCLUSIVE
by its interval, NOT TESTED when a frontier does not reach where the claim is read, or NOT MEASURED
when the experiment lacks what the claim needs. Thresholds and the paper's numbers: conf/verdict.

Claims, per (site, layer):
(a) Gated needs about half the baseline's L0 at matched loss recovered: the L0 ratio at the site's levels;
(b) Gated's γ ≈ 1 while the baseline's γ < 1: each frontier's γ at those levels;
(c) Fig. 9: rescale-and-shift fixes γ, recovers more loss than the baseline at matched L0, and closes
    only part of the Gated–baseline gap (the fraction it closes, within (0, rescale_shift_gap_below));
(d) Fig. 8: each ablation is no better than Gated at matched L0: worse, or equivalent within ±margin.
Beyond the paper, the successors (JumpReLU, TopK) against Gated, two-sided like (d), are listed apart.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import pandas as pd

from gatedsae.plan import architectures
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import VerdictConfig
from gatedsae.reporting.statistics import ABLATIONS, MAIN_VARIANT, RESCALE_SHIFT, SUCCESSORS, parse_list

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE"
NOT_TESTED, NOT_MEASURED = "NOT TESTED", "NOT MEASURED"
STATUSES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED, NOT_MEASURED)
WORSE, EQUIVALENT, BETTER, UNDECIDED = "WORSE", "EQUIVALENT", "BETTER", "UNDECIDED"  # two-sided comparisons
VARIANT_LABELS = {"all_tokens": "SAEs trained on every non-BOS token, the paper's treatment"}  # training variants


@dataclass(frozen=True)
class Rule:
    """Where the claim's statistic must lie: below / above a threshold, or within [low, high]."""

    kind: str
    bounds: tuple[float, ...]

    def judge(self, low: float, high: float) -> str:
        if any(v is None or math.isnan(v) for v in (low, high)):
            return INCONCLUSIVE
        if self.kind == "below":
            return REPRODUCED if high < self.bounds[0] else NOT_REPRODUCED if low > self.bounds[0] else INCONCLUSIVE
        if self.kind == "above":
            return REPRODUCED if low > self.bounds[0] else NOT_REPRODUCED if high < self.bounds[0] else INCONCLUSIVE
        a, b = self.bounds
        if a <= low and high <= b:
            return REPRODUCED
        return NOT_REPRODUCED if high < a or low > b else INCONCLUSIVE

    def describe(self, scale: float = 1.0, unit: str = "") -> str:
        values = [f"{scale * v:g}{unit}" for v in self.bounds]
        return {"below": f"< {values[0]}", "above": f"> {values[0]}"}.get(self.kind, f"within [{', '.join(values)}]")

    @classmethod
    def parse(cls, text: str, scale: float = 1.0, unit: str = "") -> "Rule":
        """The rule a `describe(scale, unit)` wrote (a verdict.json's `threshold`)."""
        def value(part: str) -> float:
            part = part.strip()
            return float(part[: -len(unit)] if unit and part.endswith(unit) else part) / scale

        text = text.strip()
        if text.startswith(("<", ">")):
            return cls("below" if text[0] == "<" else "above", (value(text[1:]),))
        if text.startswith("within [") and text.endswith("]"):
            return cls("within", tuple(value(part) for part in text[len("within ["):-1].split(",")))
        raise ValueError(f"{text!r} is not a claim's threshold ('< x', '> x' or 'within [a, b]')")


def outcome(low: Optional[float], high: Optional[float], margin: float) -> str:
    """A difference judged two-sided with an equivalence margin, on its interval: EQUIVALENT inside
    (−margin, margin); WORSE below 0 (reaching past −margin); BETTER above 0 (past +margin); else UNDECIDED."""
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return UNDECIDED
    if -margin < low and high < margin:
        return EQUIVALENT
    return WORSE if high < 0 else BETTER if low > 0 else UNDECIDED


@dataclass
class Claim:
    id: str                      # stable across runs: "<claim>/<site>/layer<L>" (the reference is matched on it)
    claim: str
    site: str
    layer: Optional[int]
    statistic: str
    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    threshold: str
    paper: str
    status: str
    reference: str = "n/a"
    note: str = ""
    percent_points: bool = False  # a difference of loss recovered: shown ×100, in points
    read_at: str = ""             # where it is read: the pre-registered levels, or the matched L0s
    levels: list = field(default_factory=list)     # pre-registered loss-recovered levels (fractions)
    l0_at: list = field(default_factory=list)      # the L0s Figs. 8/9 are read at
    per_level: list = field(default_factory=list)  # the statistic at each level: {level, value, ci_low, ci_high}
    seed_sd: Optional[float] = None  # SD of the statistic over the seeds' own grids (all windows)
    per_seed: list = field(default_factory=list)
    seeds: int = 0
    split: str = ""               # the held-out split it was read on
    outcome: str = ""             # two-sided comparisons: WORSE / EQUIVALENT / BETTER / UNDECIDED
    convergence: dict = field(default_factory=dict)  # the SAEs behind it (`convergence.behind`)
    variant: str = MAIN_VARIANT   # the training variant its SAEs come from

    def measured(self) -> str:
        return format_interval(self.value, self.ci_low, self.ci_high, self.percent_points)

    def spread(self) -> str:
        """The seed-to-seed SD with the number of seeds ('0.012 (3 seeds)'; '1 seed' when unmeasurable)."""
        if self.seeds <= 1 or self.seed_sd is None or math.isnan(self.seed_sd):
            return f"{self.seeds} seed" + ("s" if self.seeds != 1 else "")
        shown = f"{100 * self.seed_sd:.2f} pp" if self.percent_points else f"{self.seed_sd:.3f}"
        return f"{shown} ({self.seeds} seeds)"


def load_claims(records: list[dict]) -> list[Claim]:
    """Claims read back from a verdict.json (±∞ interval ends are stored as strings there)."""
    def number(value):
        return float(value) if isinstance(value, str) else value

    return [Claim(**{"seeds": 1,  # verdicts from before training seeds: one each
                     **{k: number(v) if k in ("value", "ci_low", "ci_high", "seed_sd") else v for k, v in c.items()}})
            for c in records]


def format_interval(value, low, high, percent_points: bool = False) -> str:
    """'0.359 [0.348, 0.370]', or for a difference of loss recovered '+4.18 pp [+3.93, +4.49]' (fractions
    shown ×100 in points): the one formatter of every number the verdict, the README and the docs quote."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, fmt, unit = (100, "+.2f", " pp") if percent_points else (1, ".3f", "")
    text = f"{scale * value:{fmt}}{unit}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text + " (no interval)"
    return f"{text} [{_end(scale * low, fmt)}, {_end(scale * high, fmt)}]"


def _end(value: float, fmt: str) -> str:
    return ("∞" if value > 0 else "−∞") if math.isinf(value) else format(value, fmt)


def _number(row, column: str) -> Optional[float]:
    value = row.get(column) if row is not None else None
    if value is None or (isinstance(value, str) and not value) or pd.isna(value):
        return None
    return float(value)


def _percent(levels: list[float]) -> str:
    return ", ".join(f"{100 * level:g}%" for level in levels)


@dataclass
class Context:
    """What every claim of one grid shares: where it is, the split, the protocol."""

    site: str
    layer: int
    split: str
    protocol: VerdictConfig
    suffix: str = ""  # claim-id suffix of a variant or a second baseline width
    label: str = ""   # ... and its words
    variant: str = MAIN_VARIANT

    def id(self, claim: str) -> str:
        return f"{claim}/{self.site}/layer{self.layer}{self.suffix}"


def _judged(context: Context, claim_id: str, claim: str, statistic: str, row, column: str, rule: Rule, paper: str,
            percent_points: bool = False, missing: str = "", not_reached: str = "") -> Claim:
    """A claim measured by `row[column]` (with its interval, seed spread and per-seed values), judged by `rule`."""
    threshold = rule.describe(100, " pp") if percent_points else rule.describe()
    base = dict(id=context.id(claim_id), claim=claim + context.label, site=context.site, layer=context.layer,
                statistic=statistic, threshold=threshold, paper=paper, percent_points=percent_points,
                split=context.split, variant=context.variant)
    value = _number(row, column)
    if row is None:
        return Claim(**base, value=None, ci_low=None, ci_high=None, status=NOT_MEASURED, note=missing or "no data")
    spread = dict(seed_sd=_number(row, f"{column}_seed_sd"), per_seed=parse_list(row.get(f"{column}_per_seed")),
                  seeds=int(_number(row, "seeds") or 0))
    if value is None:
        return Claim(**base, **spread, value=None, ci_low=None, ci_high=None, status=NOT_TESTED,
                     note=not_reached or "a frontier does not reach where the claim is read")
    low, high = _number(row, f"{column}_ci_low"), _number(row, f"{column}_ci_high")
    status = rule.judge(math.nan if low is None else low, math.nan if high is None else high)
    note = "" if low is not None else "no interval: re-run the evaluate stage to keep per-window samples"
    if low is not None and not (math.isfinite(low) and math.isfinite(high)):
        undefined = _number(row, f"{column}_undefined") or 0.0
        note = (f"undefined on {100 * undefined:.0f}% of resamples (a frontier stops reaching where the claim "
                "is read): more held-out windows or seeds, or SAEs nearer the level, would decide it")
    return Claim(**base, **spread, value=value, ci_low=low, ci_high=high, status=status, note=note)


def _unreached(levels: list[float], per_level: pd.DataFrame, row) -> str:
    """Which levels a frontier does not reach, and how far each frontier does."""
    missing = [level for level, value in zip(per_level["level"], per_level["l0_ratio"]) if pd.isna(value)] \
        if not per_level.empty else levels
    if not missing:
        return ""
    reach = "; ".join(f"the {name} frontier spans {100 * _number(row, f'loss_recovered_min_{name}'):.1f}–"
                      f"{100 * _number(row, f'loss_recovered_max_{name}'):.1f}%"
                      for name in (PROPOSED, BASELINE) if _number(row, f"loss_recovered_max_{name}") is not None)
    return f"not tested at {_percent(missing)} loss recovered" + (f": {reach}" if reach else "")


def headline_claims(head: pd.DataFrame, per_level: pd.DataFrame, config: VerdictConfig, split: str) -> list[Claim]:
    """(a) and (b) of every grid, at its pre-registered levels."""
    found = []
    for _, row in head.iterrows():
        site, layer = row["site"], int(row["layer"])
        first = head[(head["site"] == site) & (head["layer"] == layer) & (head["variant"] == row["variant"])].index[0]
        context = Context(site, layer, split, config, variant=row["variant"])
        if row["variant"] != MAIN_VARIANT:
            context.suffix = f"/{row['variant']}"
            context.label = f" ({VARIANT_LABELS.get(row['variant'], row['variant'])})"
        if row.name != first:  # a second baseline width (e.g. equal width): its own claims
            width = int(row["width_baseline"])
            context.suffix += f"/baseline_w{width}"
            context.label += (" (baseline at Gated's width)" if width == _number(row, "width_gated")
                              else f" (baseline at width {width})")
        levels = parse_list(row["levels"])
        mine = per_level[(per_level["site"] == site) & (per_level["layer"] == layer)
                         & (per_level["variant"] == row["variant"])
                         & (per_level["width_baseline"] == row["width_baseline"])] if not per_level.empty else per_level
        unreached = _unreached(levels, mine, row)
        read_at = f"{_percent(levels)} loss recovered"
        claims = [
            _judged(context, "l0_ratio", "(a) Gated needs about half the baseline's L0",
                    "L0 Gated / L0 baseline at matched loss recovered (geometric mean over the levels)", row, "l0_ratio",
                    Rule("below", (config.l0_ratio_below,)), paper_l0_ratios(config, site), not_reached=unreached),
            _judged(context, "gamma_gated", "(b) Gated does not shrink: γ ≈ 1", "γ of the Gated frontier at the levels",
                    row, "gamma_gated", Rule("within", tuple(config.gated_gamma_within)), config.paper_gamma_gated,
                    not_reached=unreached),
            _judged(context, "gamma_baseline", "(b) the baseline shrinks: γ < 1", "γ of the baseline frontier at the levels",
                    row, "gamma_baseline", Rule("below", (config.baseline_gamma_below,)), config.paper_gamma_baseline,
                    not_reached=unreached),
        ]
        for claim, column in zip(claims, ("l0_ratio", "gamma_gated", "gamma_baseline")):
            claim.read_at, claim.levels = read_at, levels
            claim.per_level = [{"level": float(r["level"]), "value": _number(r, column),
                                "ci_low": _number(r, f"{column}_ci_low"), "ci_high": _number(r, f"{column}_ci_high")}
                               for _, r in mine.iterrows()]
        found += claims
    return found


def paper_l0_ratios(config: VerdictConfig, site: str) -> str:
    rows = [row for row in config.paper_matched_l0 if row.site == site]
    return ", ".join(f"{row.l0_ratio:.2f} ({row.run})" for row in rows) or "n/a"


def comparison_claims(comparisons: pd.DataFrame, config: VerdictConfig, split: str) -> tuple[list[Claim], list[Claim]]:
    """(c) and (d) of every grid; and, beyond the paper, each successor against Gated."""
    found, beyond = [], []
    measured_against_its_own = comparisons["versus"] == comparisons["arch"].map(architectures.versus)
    rescale = comparisons[(comparisons["arch"] == RESCALE_SHIFT) & measured_against_its_own]
    if rescale.empty:
        found.append(Claim("rescale_shift", "(c) Fig. 9: rescale-and-shift", "—", None, "", None, None, None, "",
                           "Fig. 9", NOT_MEASURED, note="the experiment trains no rescale-and-shift SAEs (sweep.rescale_shift)"))
    for _, row in rescale.iterrows():
        context = Context(row["site"], int(row["layer"]), split, config)
        l0_at = parse_list(row.get("l0_at"))
        unreached = _l0_unreached(row, l0_at)
        claims = [
            _judged(context, "rescale_shift_gamma", "(c) rescale-and-shift fixes shrinkage: γ ≈ 1",
                    "γ of the rescale-and-shift frontier at matched L0", row, "gamma",
                    Rule("within", tuple(config.rescale_shift_gamma_within)), config.paper_rescale_shift_gamma,
                    not_reached=unreached),
            _judged(context, "rescale_shift_vs_baseline", "(c) rescale-and-shift beats the baseline",
                    "loss recovered, rescale-and-shift − baseline, at matched L0", row, "loss_recovered_difference",
                    Rule("above", (0.0,)), config.paper_rescale_shift_vs_baseline, percent_points=True,
                    not_reached=unreached),
            _judged(context, "rescale_shift_gap", "(c) ... but closes only part of the gap to Gated",
                    "fraction of the Gated − baseline gap in loss recovered that rescale-and-shift closes, at matched L0",
                    row, "gap_fraction", Rule("within", (0.0, config.rescale_shift_gap_below)),
                    config.paper_gated_vs_rescale_shift, not_reached=unreached),
        ]
        found += [_at_l0(claim, l0_at) for claim in claims]
    ablations = comparisons[measured_against_its_own & comparisons["arch"].isin(ABLATIONS)]
    if ablations.empty:
        found.append(Claim("ablations", "(d) Fig. 8: ablations", "—", None, "", None, None, None, "",
                           config.paper_ablations, NOT_MEASURED, note="the experiment trains none of the Fig. 8 ablations"))
    margin = config.ablation_margin
    for _, row in ablations.iterrows():
        name = architectures.label(row["arch"])
        claim = _two_sided(Context(row["site"], int(row["layer"]), split, config), row, f"{row['arch']}_vs_{row['versus']}",
                           f"(d) the ablation '{name}' is no better than Gated", f"loss recovered, {name} − Gated", margin,
                           config.paper_ablations, {WORSE: REPRODUCED, EQUIVALENT: REPRODUCED, BETTER: NOT_REPRODUCED})
        found.append(claim)
    for _, row in comparisons[measured_against_its_own & comparisons["arch"].isin(SUCCESSORS)].iterrows():
        name = architectures.label(row["arch"])
        beyond.append(_two_sided(Context(row["site"], int(row["layer"]), split, config), row, f"{row['arch']}_vs_{row['versus']}",
                                 f"{name} against Gated", f"loss recovered, {name} − Gated", margin, "—", None))
    return found, beyond


def _two_sided(context: Context, row, claim_id: str, claim: str, statistic: str, margin: float, paper: str,
               statuses: Optional[dict]) -> Claim:
    """A difference at matched L0 with its two-sided outcome; `statuses` maps outcomes to a claim's
    status (None: no claim, the outcome alone)."""
    l0_at = parse_list(row.get("l0_at"))
    judged = _judged(context, claim_id, claim, statistic + ", at matched L0", row, "loss_recovered_difference",
                     Rule("below", (margin,)), paper, percent_points=True, not_reached=_l0_unreached(row, l0_at))
    judged.threshold = f"worse, or equivalent within ±{100 * margin:g} pp"
    if judged.value is not None:
        judged.outcome = outcome(judged.ci_low, judged.ci_high, margin)
        judged.status = (statuses or {}).get(judged.outcome, INCONCLUSIVE) if statuses is not None else judged.outcome
    return _at_l0(judged, l0_at)


def _l0_unreached(row, l0_at: list[float]) -> str:
    if not l0_at or any(math.isnan(v) for v in l0_at):
        return "not tested: the Gated frontier does not reach the site's pre-registered loss-recovered levels"
    return (f"not tested at L0 {', '.join(f'{v:.0f}' for v in l0_at)}: a frontier of the comparison does not span "
            f"them{_l0_ranges(row)}")


def _l0_ranges(row) -> str:
    spans = [f"{architectures.label(arch)} {_span(row.get(column))}" for arch, column in
             ((row.get("arch"), "l0_range"), (row.get("versus"), "l0_range_versus")) if _span(row.get(column))]
    return f" (L0 spans: {'; '.join(spans)})" if spans else ""


def _span(text) -> str:
    values = parse_list(text)
    return "–".join(f"{v:.3g}" for v in values) if values else ""


def _at_l0(claim: Claim, l0_at: list[float]) -> Claim:
    claim.l0_at = l0_at
    claim.read_at = "L0 " + ", ".join(f"{v:.0f}" for v in l0_at) if l0_at and all(math.isfinite(v) for v in l0_at) else ""
    return claim
