"""The replication verdict: every claim of the paper measurable at this scale, with the measured value
and its interval, the paper's value, the reference run's, and REPRODUCED / NOT REPRODUCED /
INCONCLUSIVE (the interval crosses the threshold) — or NOT MEASURED when the experiment lacks what the
claim needs. Thresholds and the paper's numbers come from conf/verdict (`VerdictConfig`).

Claims, per (site, layer):
(a) Gated needs about half the baseline's L0 at matched loss recovered: the headline's l0_ratio;
(b) Gated's γ ≈ 1 while the baseline's γ < 1: each frontier's γ over the matched band;
(c) Fig. 9: rescale-and-shift fixes γ, and at matched L0 recovers more loss than the baseline and less
    than Gated;
(d) Fig. 8: no ablation recovers more loss than the full Gated SAE at matched L0 (beyond a margin).
The notes give the headline and γ under both treatments of massive activations, the thresholds τ, and
how wide the intervals are.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from gatedsae.core.atomic import write_json_atomic, write_text_atomic
from gatedsae.plan.config import Config, VerdictConfig
from gatedsae.plan.layout import VERDICT_OUTPUTS
from gatedsae.plan.sites import prose as site_prose

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED = "REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE", "NOT MEASURED"
STATUSES = (REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_MEASURED)
ABLATION_NAMES = {"gated_unfrozen_decoder": "unfrozen decoder", "gated_no_rmag": "no r_mag",
                  "gated_untied": "untied encoders"}


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

    def measured(self) -> str:
        return format_interval(self.value, self.ci_low, self.ci_high, self.percent_points)


def format_interval(value, low, high, percent_points: bool = False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    scale, fmt, unit = (100, "+.2f", " pp") if percent_points else (1, ".3f", "")
    text = f"{scale * value:{fmt}}{unit}"
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return text + " (no interval)"
    return f"{text} [{scale * low:{fmt}}, {scale * high:{fmt}}]"


def _number(row: pd.Series, column: str) -> Optional[float]:
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def _judged(claim_id: str, claim: str, site: str, layer: int, statistic: str, row: Optional[pd.Series],
            column: str, rule: Rule, paper: str, percent_points: bool = False, missing: str = "") -> Claim:
    """A claim measured by `row[column]` and its interval columns, judged by `rule`."""
    threshold = rule.describe(100, " pp") if percent_points else rule.describe()
    value = None if row is None else _number(row, column)
    if value is None:
        note = missing or (row.get("note") if row is not None and isinstance(row.get("note"), str) else "") or "no data"
        return Claim(claim_id, claim, site, layer, statistic, None, None, None, threshold, paper, NOT_MEASURED,
                     note=note, percent_points=percent_points)
    low, high = _number(row, f"{column}_ci_low"), _number(row, f"{column}_ci_high")
    status = rule.judge(math.nan if low is None else low, math.nan if high is None else high)
    note = "" if low is not None else "no interval: re-run the evaluate stage to keep per-window samples"
    if low is not None and not (np.isfinite(low) and np.isfinite(high)):
        note = "the statistic is undefined on too many resamples (e.g. the frontiers stop overlapping)"
    return Claim(claim_id, claim, site, layer, statistic, value, low, high, threshold, paper, status, note=note,
                 percent_points=percent_points)


def paper_l0_ratios(config: VerdictConfig, site: str) -> str:
    rows = [row for row in config.paper_matched_l0 if row.site == site]
    return ", ".join(f"{row.l0_ratio:.2f} ({row.run})" for row in rows) or "n/a"


def claims(head: pd.DataFrame, comparisons: pd.DataFrame, config: VerdictConfig) -> list[Claim]:
    """Every claim of the verdict, judged on the headline and the Figs. 8–9 comparisons."""
    found: list[Claim] = []
    for _, row in head.iterrows():
        site, layer = row["site"], int(row["layer"])
        where = f"{site}/layer{layer}"
        band = "" if _number(row, "loss_recovered_low") is None else \
            f" (band {100 * row['loss_recovered_low']:.1f}–{100 * row['loss_recovered_high']:.1f}% loss recovered)"
        found += [
            _judged(f"l0_ratio/{where}", "(a) Gated needs about half the baseline's L0",
                    site, layer, "L0 Gated / L0 baseline" + band, row, "l0_ratio", Rule("below", (config.l0_ratio_below,)),
                    paper_l0_ratios(config, site)),
            _judged(f"gamma_gated/{where}", "(b) Gated does not shrink: γ ≈ 1", site, layer,
                    "γ of the Gated frontier over the band", row, "gamma_gated",
                    Rule("within", tuple(config.gated_gamma_within)), config.paper_gamma_gated),
            _judged(f"gamma_baseline/{where}", "(b) the baseline shrinks: γ < 1", site, layer,
                    "γ of the baseline frontier over the band", row, "gamma_baseline",
                    Rule("below", (config.baseline_gamma_below,)), config.paper_gamma_baseline),
        ]
    found += _comparison_claims(comparisons, config)
    return found


def _comparison_claims(comparisons: pd.DataFrame, config: VerdictConfig) -> list[Claim]:
    def pick(arch: str, versus: str) -> pd.DataFrame:
        return comparisons[(comparisons["arch"] == arch) & (comparisons["versus"] == versus)]

    found = []
    rescale = pick("baseline_rescale_shift", "baseline")
    if rescale.empty:
        found.append(Claim("rescale_shift", "(c) Fig. 9: rescale-and-shift", "—", None,
                           "", None, None, None, "", "Fig. 9", NOT_MEASURED,
                           note="the experiment trains no rescale-and-shift SAEs (sweep.rescale_shift)"))
    for _, row in rescale.iterrows():
        site, layer = row["site"], int(row["layer"])
        where = f"{site}/layer{layer}"
        gated = pick("gated", "baseline_rescale_shift")
        gated = gated[(gated["site"] == site) & (gated["layer"] == layer)]
        found += [
            _judged(f"rescale_shift_gamma/{where}", "(c) rescale-and-shift fixes shrinkage: γ ≈ 1", site, layer,
                    "γ of the rescale-and-shift frontier at matched L0", row, "gamma",
                    Rule("within", tuple(config.rescale_shift_gamma_within)), config.paper_rescale_shift_gamma),
            _judged(f"rescale_shift_vs_baseline/{where}", "(c) rescale-and-shift beats the baseline", site, layer,
                    "loss recovered, rescale-and-shift − baseline, at matched L0", row, "loss_recovered_difference",
                    Rule("above", (0.0,)), config.paper_rescale_shift_vs_baseline, percent_points=True),
            _judged(f"gated_vs_rescale_shift/{where}", "(c) ... but stays below Gated", site,
                    layer, "loss recovered, Gated − rescale-and-shift, at matched L0",
                    None if gated.empty else gated.iloc[0], "loss_recovered_difference", Rule("above", (0.0,)),
                    config.paper_gated_vs_rescale_shift, percent_points=True, missing="no Gated frontier at this site"),
        ]
    ablations = comparisons[(comparisons["versus"] == "gated") & comparisons["arch"].isin(list(ABLATION_NAMES))]
    if ablations.empty:
        found.append(Claim("ablations", "(d) Fig. 8: ablations", "—", None, "", None, None,
                           None, "", config.paper_ablations, NOT_MEASURED,
                           note="the experiment trains none of the Fig. 8 ablations"))
    for _, row in ablations.iterrows():
        site, layer = row["site"], int(row["layer"])
        name = ABLATION_NAMES[row["arch"]]
        found.append(_judged(f"{row['arch']}_vs_gated/{site}/layer{layer}",
                             f"(d) the ablation '{name}' is no better than Gated", site, layer,
                             f"loss recovered, {name} − Gated, at matched L0", row, "loss_recovered_difference",
                             Rule("below", (config.ablation_margin,)), config.paper_ablations, percent_points=True))
    return found


# ---------------------------------------------------------------------------------------------------
# The reference run, the notes, the files.


def with_reference(found: list[Claim], reference: Path) -> Optional[Path]:
    """Fill each claim's reference value from the reference run's verdict.json (matched by id)."""
    path = reference / "verdict.json"
    if not path.exists():
        return None
    published = {c["id"]: c for c in json.loads(path.read_text())["claims"]}
    for claim in found:
        c = published.get(claim.id)
        if c is not None:
            value, low, high = (None if c.get(k) is None else float(c[k]) for k in ("value", "ci_low", "ci_high"))
            shown = format_interval(value, low, high, claim.percent_points)
            claim.reference = c["status"] if value is None else f"{shown} {c['status']}"
    return path


def notes(head: pd.DataFrame, metrics: pd.DataFrame, config: Config) -> dict:
    """The headline and γ under both treatments of massive activations, the thresholds, the interval
    widths and what the intervals are made of."""
    by_site = []
    for _, row in head.iterrows():
        site, layer = row["site"], int(row["layer"])
        saes = metrics[(metrics["site"] == site) & (metrics["layer"] == layer) & metrics["arch"].isin(["gated", "baseline"])]
        thresholds = sorted({float(t) for t in saes["massive_norm_threshold"].dropna()}) if "massive_norm_threshold" in saes else []
        entry = {"site": site, "layer": layer, "massive_norm_threshold": thresholds or None,
                 "massive_store_rows": _max(saes, "massive_rows"), "massive_ce_windows": _max(saes, "massive_windows"),
                 "store_rows": _max(saes, "eval_tokens"), "ce_windows": _max(saes, "ce_windows"),
                 "ce_predictions": _max(saes, "ce_tokens")}
        for treatment, label in (("", "massive_left_out"), ("_all_tokens", "all_tokens")):
            entry[label] = {name: {"value": _number(row, name + treatment), "ci_low": _number(row, f"{name}{treatment}_ci_low"),
                                   "ci_high": _number(row, f"{name}{treatment}_ci_high")}
                            for name in ("l0_ratio", "gamma_gated", "gamma_baseline")}
        entry["l0_ratio_ci_width"] = _width(row, "l0_ratio")
        by_site.append(entry)
    widths = {}
    for metric in ("loss_recovered", "delta_lm_loss"):
        if f"{metric}_ci_low" in metrics:
            w = (metrics[f"{metric}_ci_high"] - metrics[f"{metric}_ci_low"]).dropna()
            if len(w):
                widths[metric] = {"median": float(w.median()), "max": float(w.max())}
    return {"sites": by_site, "sae_interval_widths": widths,
            "intervals": {"method": "paired percentile bootstrap over held-out windows",
                          "resamples": config.intervals.resamples, "level": config.intervals.level,
                          "seed": config.intervals.seed}}


def _max(frame: pd.DataFrame, column: str) -> Optional[float]:
    if column not in frame or frame[column].dropna().empty:
        return None
    return float(frame[column].max())


def _width(row: pd.Series, name: str) -> Optional[float]:
    low, high = _number(row, f"{name}_ci_low"), _number(row, f"{name}_ci_high")
    return None if low is None or high is None else high - low


def markdown(experiment: str, found: list[Claim], note: dict, reference: Optional[Path]) -> str:
    counts = {status: sum(c.status == status for c in found) for status in STATUSES}
    lines = [f"# Replication verdict: experiment `{experiment}`", "",
             f"{len(found)} claims: " + ", ".join(f"{n} {status}" for status, n in counts.items() if n) + ".",
             "Measured values with their 95% interval (paired bootstrap over held-out windows, "
             f"{note['intervals']['resamples']} resamples); REPRODUCED / NOT REPRODUCED when the interval lies on "
             "one side of the threshold, INCONCLUSIVE when it crosses it.", "",
             "| Claim | Site | Statistic | Measured [95% CI] | Threshold | Paper | Reference run | Verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for c in found:
        site = "—" if c.layer is None else f"{site_prose(c.site)}, L{c.layer}"
        verdict = f"**{c.status}**" + (f" ({c.note})" if c.note else "")
        lines.append(f"| {c.claim} | {site} | {c.statistic} | {c.measured()} | {c.threshold} | {c.paper} | "
                     f"{c.reference} | {verdict} |")
    lines += ["", f"Reference run: {reference if reference else 'none found (n/a)'}.", "", "## Notes", "",
              "Massive activations: positions whose norm exceeds the threshold τ recorded with each checkpoint "
              "are treated like BOS (never trained on, never replaced in the splice, left out of the store "
              "metrics). The paper keeps every token but BOS. The headline and γ under both:", "",
              "| Site | τ | massive store rows | CE windows with one | L0 ratio (τ) | L0 ratio (all tokens) | "
              "γ Gated (τ / all) | γ baseline (τ / all) |", "|---|---|---|---|---|---|---|---|"]
    for s in note["sites"]:
        kept, every = s["massive_left_out"], s["all_tokens"]

        def show(entry):
            return format_interval(entry["value"], entry["ci_low"], entry["ci_high"])

        tau = "none" if not s["massive_norm_threshold"] else ", ".join(f"{t:.4g}" for t in s["massive_norm_threshold"])
        lines.append(f"| {site_prose(s['site'])}, L{s['layer']} | {tau} | {_count(s['massive_store_rows'])} "
                     f"of {_count(s['store_rows'])} | {_count(s['massive_ce_windows'])} of {_count(s['ce_windows'])} | "
                     f"{show(kept['l0_ratio'])} | {show(every['l0_ratio'])} | {show(kept['gamma_gated'])} / "
                     f"{show(every['gamma_gated'])} | {show(kept['gamma_baseline'])} / {show(every['gamma_baseline'])} |")
    lines += ["", "Interval widths: " + "; ".join(
        f"l0_ratio at {site_prose(s['site'])} L{s['layer']}: "
        + ("n/a" if s["l0_ratio_ci_width"] is None else f"{s['l0_ratio_ci_width']:.3f}") for s in note["sites"]) + "."]
    for metric, w in note["sae_interval_widths"].items():
        lines.append(f"Per-SAE {metric.replace('_', ' ')}: median width {_points(metric, w['median'])}, "
                     f"largest {_points(metric, w['max'])}.")
    ce = [s for s in note["sites"] if s["ce_windows"]]
    if ce:
        lines.append(f"CE from {_count(ce[0]['ce_windows'])} held-out windows ({_count(ce[0]['ce_predictions'])} "
                     "predictions) per SAE.")
    return "\n".join(lines) + "\n"


def _count(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{int(value):,}"


def _points(metric: str, width: float) -> str:
    return f"{100 * width:.2f} pp" if metric == "loss_recovered" else f"{width:.4f} nats"


def write_verdict(config: Config) -> tuple[Path, Path]:
    """verdict.json and verdict.md next to the experiment's results."""
    results = config.experiment.results
    head = pd.read_csv(results / "headline.csv")
    comparisons = pd.read_csv(results / "comparisons.csv")
    metrics = pd.read_csv(results / "metrics.csv")
    found = claims(head, comparisons, config.verdict)
    reference = with_reference(found, config.verdict.reference(config.experiment.name))
    note = notes(head, metrics, config)
    counts = {status: sum(c.status == status for c in found) for status in STATUSES}
    paths = {key: results / name for key, name in VERDICT_OUTPUTS.items()}
    write_json_atomic(paths["verdict_json"], _finite({
        "experiment": config.experiment.name, "summary": counts, "claims": [asdict(c) for c in found],
        "notes": note, "reference": None if reference is None else str(reference),
        "thresholds": asdict(config.verdict)}))
    write_text_atomic(paths["verdict_markdown"], markdown(config.experiment.name, found, note, reference))
    return paths["verdict_json"], paths["verdict_markdown"]


def _finite(data):
    """JSON-safe: ±∞ interval ends (undefined on too many resamples) as strings, NaN as null."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None if math.isnan(data) else ("inf" if data > 0 else "-inf")
    return data
