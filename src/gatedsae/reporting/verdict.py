"""The replication verdict (`python -m gatedsae verdict`): the claims (`claims`) judged on the readings the
aggregate stage took at the pre-registered levels (`statistics`: headline.csv, levels.csv, comparisons.csv,
with their two-level intervals), on the held-out split conf/verdict names, with the convergence of the SAEs
behind each (`convergence`, from curves.csv), the reference run's value of each, and notes: written as
verdict.json and verdict.md next to the experiment's results.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import pandas as pd

from gatedsae.core.atomic import write_json_atomic, write_text_atomic
from gatedsae.core.errors import PipelineError
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import Config
from gatedsae.plan.grid import MAIN_VARIANT, RESCALE_SHIFT_VARIANT
from gatedsae.plan.groundtruth import outputs as groundtruth_outputs
from gatedsae.plan.groundtruth import runs as groundtruth_runs
from gatedsae.plan.interp import runs as interp_runs
from gatedsae.plan.interp import verdict_summary as interp_verdict_summary
from gatedsae.plan.layout import SPLIT_OUTPUTS, VERDICT_OUTPUTS
from gatedsae.plan.sites import prose as site_prose
from gatedsae.reporting import convergence
from gatedsae.reporting.claims import (
    RESCALE_SHIFT,
    STATUSES,
    VARIANT_LABELS,
    Claim,
    comparison_claims,
    format_interval,
    headline_claims,
)
from gatedsae.reporting.groundtruth_claims import verdict_section as groundtruth_verdict_section
from gatedsae.reporting.interp import read_summary as read_interp_summary
from gatedsae.reporting.interp import verdict_section as interp_verdict_section

UNSPLIT = "held-out (not split)"  # rows of a run whose held-out windows were not split
MEASURED = SPLIT_OUTPUTS  # the aggregate's tables the verdict judges (headline, levels, comparisons, metrics)


def on_split(tables: dict[str, pd.DataFrame], split: str) -> tuple[dict[str, pd.DataFrame], str]:
    """The tables' rows read on `split`, and the split's name as the claims report it."""
    if "split" not in tables["metrics"] or tables["metrics"]["split"].isna().all():
        return tables, UNSPLIT
    found = set(tables["metrics"]["split"].dropna())
    if split not in found:
        raise PipelineError(f"no SAE was evaluated on the held-out split {split!r} (verdict.split; the tables hold "
                            f"{sorted(found)}): run the evaluation and aggregate of that split first")
    return {name: table[table["split"] == split].reset_index(drop=True) if "split" in table else table
            for name, table in tables.items()}, split


def read_measured(measured: Path) -> dict[str, pd.DataFrame]:
    """The aggregate's tables of the split the verdict reads (headline, levels, comparisons, metrics)."""
    missing = [f"{name}.csv" for name in MEASURED if not (measured / f"{name}.csv").exists()]
    if missing:
        raise FileNotFoundError(f"{measured} lacks {', '.join(missing)}: run the aggregate stage first")
    return {name: pd.read_csv(measured / f"{name}.csv") for name in MEASURED}


def behind(claim: Claim, rows: pd.DataFrame) -> pd.DataFrame:
    """The SAEs (every seed) a claim's statistic is made of."""
    kind = claim.id.split("/")[0]
    if kind in ("l0_ratio", "gamma_gated", "gamma_baseline"):
        archs, variants = {PROPOSED, BASELINE}, {claim.variant}
    elif kind.startswith("rescale_shift"):
        archs, variants = {RESCALE_SHIFT, BASELINE, PROPOSED}, {MAIN_VARIANT, RESCALE_SHIFT_VARIANT}
    else:
        archs, variants = set(kind.split("_vs_")), {MAIN_VARIANT}  # "<arch>_vs_<what it is measured against>"
    mask = (rows["site"] == claim.site) & (rows["layer"] == claim.layer) & rows["arch"].isin(archs)
    return rows[mask & rows["variant"].isin(variants)] if "variant" in rows else rows[mask]


def with_reference(found: list[Claim], reference: Path) -> Optional[Path]:
    """Fill each claim's reference value from the reference run's verdict.json (matched by id)."""
    path = reference / "verdict.json"
    if not path.exists():
        return None
    published = {c["id"]: c for c in json.loads(path.read_text())["claims"]}
    for claim in found:
        c = published.get(claim.id)
        if c is not None:
            value, low, high = (_float(c.get(k)) for k in ("value", "ci_low", "ci_high"))
            shown = format_interval(value, low, high, claim.percent_points)
            claim.reference = c["status"] if value is None else f"{shown} {c['status']}"
    return path


def _float(value) -> Optional[float]:
    return None if value is None else float(value)  # "inf" / "-inf" strings of an undecided interval too


def notes(rows: pd.DataFrame, config: Config, split: str) -> dict:
    """What the statistics are made of: windows, seeds, massive-activation thresholds, the interval method."""
    by_site = []
    for (site, layer), saes in rows.groupby(["site", "layer"], sort=False):
        thresholds = sorted({float(t) for t in saes["massive_norm_threshold"].dropna()}) \
            if "massive_norm_threshold" in saes else []
        seeds = sorted({int(s) for s in saes["seed"].dropna()}) if "seed" in saes else []
        seeds = seeds or [0]  # rows from before training seeds: one
        by_site.append({"site": site, "layer": int(layer), "massive_norm_threshold": thresholds or None,
                        "massive_store_rows": _max(saes, "massive_rows"), "massive_ce_windows": _max(saes, "massive_windows"),
                        "store_rows": _max(saes, "eval_tokens"), "ce_windows": _max(saes, "ce_windows"),
                        "ce_predictions": _max(saes, "ce_tokens"), "seeds": seeds})
    return {"split": split, "sites": by_site,
            "intervals": {"method": "two-level bootstrap: training seeds (jointly for every SAE configuration of a "
                                    "grid), then held-out windows (paired across SAEs); the seed level through "
                                    "Student's t with seeds − 1 degrees of freedom",
                          "resamples": config.intervals.resamples, "level": config.intervals.level,
                          "seed": config.intervals.seed}}


def _max(frame: pd.DataFrame, column: str) -> Optional[float]:
    if column not in frame or frame[column].dropna().empty:
        return None
    return float(frame[column].max())


def write_verdict(config: Config, measured: Path) -> tuple[Path, Path]:
    """verdict.json and verdict.md next to the experiment's results, judging the readings the aggregate
    stage wrote to `measured` (headline.csv, levels.csv, comparisons.csv, metrics.csv) on verdict.split."""
    results = config.experiment.results
    tables, split = on_split(read_measured(measured), config.verdict.split)
    rows = tables["metrics"]
    found = headline_claims(tables["headline"], tables["levels"], config.verdict, split)
    compared, beyond = comparison_claims(tables["comparisons"], config.verdict, split)
    found += compared
    curves_file = results / "curves.csv"
    status = convergence.assess(pd.read_csv(curves_file) if curves_file.exists() else None, config.verdict.convergence)
    for claim in found + beyond:
        if claim.layer is not None:
            claim.convergence = convergence.behind(status, behind(claim, rows), config.verdict.convergence)
    reference = with_reference(found + beyond, config.verdict.reference(config.experiment.name))
    note = notes(rows, config, split)
    counts = {s: sum(c.status == s for c in found) for s in STATUSES}
    paths = {key: results / name for key, name in VERDICT_OUTPUTS.items()}
    write_json_atomic(paths["verdict_json"], _finite({
        "experiment": config.experiment.name, "split": split, "summary": counts,
        "claims": [asdict(c) for c in found], "beyond_the_paper": [asdict(c) for c in beyond],
        "saes": status.astype(object).where(status.notna(), None).to_dict("records"), "notes": note,
        "reference": None if reference is None else str(reference), "protocol": asdict(config.verdict),
        **({"ground_truth": ground_truth_summary(config)} if groundtruth_runs(config) else {}),
        **({"interpretability_proxy": interp_summary(config)} if interp_runs(config) else {})}))
    write_text_atomic(paths["verdict_markdown"],
                      markdown(config.experiment.name, found, beyond, status, note, reference) + ground_truth_markdown(config)
                      + interp_markdown(config))
    return paths["verdict_json"], paths["verdict_markdown"]


def ground_truth_summary(config: Config) -> Optional[dict]:
    """The ground-truth benchmark's summary (claims and per-SAE metrics), None when it has not run."""
    path = Path(groundtruth_outputs(config)["summary"])
    return json.loads(path.read_text()) if path.exists() else None


def ground_truth_markdown(config: Config) -> str:
    """The verdict's section on the paper's mechanism on ground truth ("" when the experiment does not run it)."""
    if not groundtruth_runs(config):
        return ""
    summary = ground_truth_summary(config)
    if summary is None:
        return ("\n## The mechanism on ground truth\n\nNOT MEASURED: the groundtruth stage has not run "
                "(`python -m gatedsae groundtruth`).\n")
    return "\n".join(groundtruth_verdict_section(summary)) + "\n"


def interp_summary(config: Config) -> Optional[dict]:
    """The interp stage's summary on verdict.split (None when it has not run): a proxy, never a claim."""
    return read_interp_summary(Path(interp_verdict_summary(config)))


def interp_markdown(config: Config) -> str:
    """The verdict's automatic-interpretability section ("" when the experiment does not run the stage)."""
    if not interp_runs(config):
        return ""
    return "\n".join(interp_verdict_section(interp_summary(config))) + "\n"


def _finite(data):
    """JSON-safe: ±∞ interval ends (undecided) as strings, NaN as null."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None if math.isnan(data) else ("inf" if data > 0 else "-inf")
    return data


# ---------------------------------------------------------------------------------------------------
# verdict.md


def _where(claim: Claim) -> str:
    return "—" if claim.layer is None else f"{site_prose(claim.site)}, L{claim.layer}"


def _verdict_cell(claim: Claim) -> str:
    text = f"**{claim.status}**"
    if claim.outcome and claim.outcome != claim.status:
        text += f" ({claim.outcome.lower()})"
    return text + (f" ({claim.note})" if claim.note else "")


def claims_table(found: list[Claim], with_reference: bool = True) -> list[str]:
    header = ["Claim", "Site", "Statistic", "Read at", "Measured [95% CI]", "Seed SD", "Threshold", "Paper",
              *(["Reference run"] if with_reference else []), "SAEs converged", "Verdict"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for c in found:
        cells = [c.claim, _where(c), c.statistic, c.read_at or "—", c.measured(), c.spread(), c.threshold, c.paper,
                 *([c.reference] if with_reference else []), convergence.describe(c.convergence) if c.convergence else "—",
                 _verdict_cell(c)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def markdown(experiment: str, found: list[Claim], beyond: list[Claim], status: pd.DataFrame, note: dict,
             reference: Optional[Path]) -> str:
    counts = {s: sum(c.status == s for c in found) for s in STATUSES}
    seeds = sorted({n for site in note["sites"] for n in [len(site["seeds"])]})
    lines = [f"# Replication verdict: experiment `{experiment}`", "",
             f"{len(found)} claims: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + ".",
             f"Read on the held-out split: **{note['split']}**. Each statistic is read where conf/verdict "
             "pre-registers it (loss-recovered levels per site; Figs. 8/9 at the L0 the Gated frontier needs there). "
             f"95% intervals: two-level bootstrap ({note['intervals']['resamples']} window resamples; training seeds "
             f"per grid: {', '.join(map(str, seeds))}); seed SD: the statistic's spread over each seed's own grid. "
             "REPRODUCED / NOT REPRODUCED when the interval lies on one side of the threshold, INCONCLUSIVE when it "
             "crosses it, NOT TESTED when a frontier does not reach where the claim is read.", ""]
    if seeds == [1]:
        lines += ["One training seed: the intervals cover the choice of held-out windows only, not training.", ""]
    lines += claims_table([c for c in found if c.variant == MAIN_VARIANT])
    for variant in dict.fromkeys(c.variant for c in found if c.variant != MAIN_VARIANT):
        lines += ["", f"## {VARIANT_LABELS.get(variant, variant)[0].upper()}{VARIANT_LABELS.get(variant, variant)[1:]}",
                  "", f"The same claims on the `{variant}` training variant (its own SAEs, evaluated the same way).", ""]
        lines += claims_table([c for c in found if c.variant == variant])
    main = [c for c in found if c.per_level and len(c.per_level) > 1]
    if main:
        lines += ["", "## At each pre-registered level", "", "| Claim | Site | Level | Measured [95% CI] |",
                  "|---|---|---|---|"]
        for c in main:
            for entry in c.per_level:
                lines.append(f"| {c.claim} | {_where(c)} | {100 * entry['level']:g}% | "
                             f"{format_interval(entry['value'], entry['ci_low'], entry['ci_high'])} |")
    if beyond:
        lines += ["", "## Beyond the paper", "",
                  "The Gated SAE's successors against Gated at matched L0, judged two-sided like (d): WORSE, "
                  "EQUIVALENT (within the margin), BETTER or UNDECIDED.", ""]
        lines += claims_table(beyond)
    lines += ["", f"Reference run: {reference if reference else 'none found (n/a)'}.", "", "## Convergence", ""]
    lines += _convergence_lines(status)
    lines += ["", "## Notes", "",
              "Massive activations: positions whose norm exceeds the threshold τ recorded with each checkpoint are "
              "treated like BOS (never trained on, never replaced in the splice, left out of the store metrics).", "",
              "| Site | τ | massive store rows | CE windows with one | seeds |", "|---|---|---|---|---|"]
    for s in note["sites"]:
        tau = "none" if not s["massive_norm_threshold"] else ", ".join(f"{t:.4g}" for t in s["massive_norm_threshold"])
        lines.append(f"| {site_prose(s['site'])}, L{s['layer']} | {tau} | {_count(s['massive_store_rows'])} of "
                     f"{_count(s['store_rows'])} | {_count(s['massive_ce_windows'])} of {_count(s['ce_windows'])} | "
                     f"{', '.join(map(str, s['seeds']))} |")
    ce = [s for s in note["sites"] if s["ce_windows"]]
    if ce:
        lines += ["", f"CE from {_count(ce[0]['ce_windows'])} held-out windows ({_count(ce[0]['ce_predictions'])} "
                      "predictions) per SAE."]
    return "\n".join(lines) + "\n"


def _convergence_lines(status: pd.DataFrame) -> list[str]:
    if status.empty:
        return ["Not assessed: no training curves (train.log_every_steps = 0, or the curves stage has not run)."]
    converged = status["converged"]
    lines = [f"{int((converged == True).sum())} of {len(status)} SAEs converged by the rule in conf/verdict "  # noqa: E712
             f"({int(converged.isna().sum())} with too short a curve to tell)."]
    moving = status[converged == False]  # noqa: E712
    if not moving.empty:
        lines += ["", "| SAE | last step | not converged |", "|---|---|---|"]
        lines += [f"| {r.site}, L{r.layer}, {r.variant}/{r.sae} | {r.last_step} | {r.note} |" for r in moving.itertuples()]
    return lines


def _count(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{int(value):,}"
