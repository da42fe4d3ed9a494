"""Numbers of the published reference runs (and of the benchmarks that time them: results/benchmarks/
quickstart.json, replicate.json) in README.md and docs/, never copied by hand: each is inside a
generated block, rewritten from the file it names (`python -m gatedsae render-docs`, and after every
`publish-reference`) through the verdict's own formatter (`claims.format_interval`: fractions of loss
recovered shown ×100 in points). tests/test_published_docs.py fails when a block disagrees with its file.

A block in Markdown:

    <!-- generated from reference/default/verdict.json (claims) by `python -m gatedsae render-docs`: do not edit -->
    ...
    <!-- end of generated block -->
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd

from gatedsae.core.atomic import write_text_atomic
from gatedsae.plan.config import REPO_ROOT
from gatedsae.plan.sites import short_label
from gatedsae.reporting.claims import (BETTER, EQUIVALENT, NOT_REPRODUCED, REPRODUCED, STATUSES, WORSE, Claim,
                                       format_interval, load_claims)
from gatedsae.reporting.decidability import to_decide_table
from gatedsae.reporting.probe_tables import budget_effect, convergence, learning_rates, retrain_drift, seed_probes

DECIDED = (REPRODUCED, NOT_REPRODUCED, BETTER, WORSE, EQUIVALENT)  # a note says why the others are not

BLOCK = re.compile(r"(?P<head><!-- generated from (?P<source>\S+) \((?P<kind>[\w-]+)\) by `python -m gatedsae "
                   r"render-docs`: do not edit -->\n)(?P<body>.*?)(?P<tail><!-- end of generated block -->)", re.DOTALL)


def documents(root: Path = REPO_ROOT) -> list[Path]:
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _site(claim: Claim) -> str:
    return "—" if claim.layer is None else f"{short_label(claim.site)}, L{claim.layer}"


def _claims_table(claims: list[Claim], brief: bool = False) -> list[str]:
    """One row per claim; `brief` (the README's) leaves out where each is read, the seeds' spread and why
    an undecided claim is undecided."""
    head = ["claim", "site", *([] if brief else ["read at"]), "measured [95% CI]", *([] if brief else ["seed SD"]),
            "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for c in claims:
        verdict = c.status + (f" ({c.outcome.lower()})" if c.outcome and c.outcome != c.status else "")
        if not brief and c.note and c.status not in DECIDED:  # why it is not decided
            verdict += f": {c.note}"
        cells = [c.claim, _site(c), *([] if brief else [c.read_at or "—"]), c.measured(),
                 *([] if brief else [c.spread()]), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def summary(verdict: dict) -> list[str]:
    counts = ", ".join(f"{n} {status}" for status, n in verdict["summary"].items() if n and status in STATUSES)
    total = sum(verdict["summary"].values())
    if "split" not in verdict:
        return [f"{total} claims: {counts}. This verdict predates the pre-registered protocol (docs/verdict.md): "
                "its statistics are averaged over the band of loss recovered both "
                "frontiers happen to cover, and its intervals cover held-out windows only (one training seed)."]
    read = {site["site"] for site in verdict["notes"]["sites"] if "site" in site}  # the sites this run has
    levels = "; ".join(f"{short_label(site)} {', '.join(f'{100 * v:g}%' for v in values)}"
                       for site, values in verdict["protocol"]["levels"].items() if not read or site in read)
    seeds = sorted({len(site["seeds"]) for site in verdict["notes"]["sites"]})
    where = "; ".join(f"{short_label(site['site'])} at layer {site['layer']}, {site['ce_windows']:g} {verdict['split']} windows"
                      for site in verdict["notes"]["sites"] if "layer" in site and "ce_windows" in site)
    return [f"{total} claims: {counts}. Read on the held-out split `{verdict['split']}`, with "
            f"{' or '.join(map(str, seeds))} training seed{'s' if seeds != [1] else ''} per SAE, at the pre-registered "
            f"loss-recovered levels ({levels})." + (f" Sites: {where}." if where else "") + _converged(verdict)]


def _converged(verdict: dict) -> str:
    """How many SAEs of each site meet verdict.convergence, and the training steps they had."""
    by_site: dict[str, list[dict]] = {}
    for sae in verdict.get("saes", []):
        by_site.setdefault(sae["site"], []).append(sae)
    if not by_site:
        return ""
    order = [site["site"] for site in verdict.get("notes", {}).get("sites", []) if "site" in site]
    parts = []
    for site, saes in sorted(by_site.items(), key=lambda item: order.index(item[0]) if item[0] in order else len(order)):
        steps = "/".join(f"{s:,}" for s in sorted({sae["last_step"] for sae in saes if sae.get("last_step")}))
        met = sum(bool(sae["converged"]) for sae in saes)
        parts.append(f"{short_label(site)} {met} of {len(saes)}" + (f" ({steps} steps)" if steps else ""))
    return f" SAEs meeting the convergence rule: {'; '.join(parts)}."


def claims(verdict: dict) -> list[str]:
    return _claims_table(load_claims(verdict["claims"]))


def claims_brief(verdict: dict) -> list[str]:
    return _claims_table(load_claims(verdict["claims"]), brief=True)


def beyond(verdict: dict) -> list[str]:
    return _claims_table(load_claims(verdict.get("beyond_the_paper", [])))


def _value(row, column: str):
    value = row.get(column)
    return None if value is None or pd.isna(value) else float(value)


def comparisons(frame: pd.DataFrame) -> list[str]:
    """Differences at matched L0 from a comparisons.csv (loss recovered in points)."""
    from gatedsae.plan.architectures import label

    lines = ["| at matched L0 | L0 | loss recovered, difference [95% CI] | γ of the first |", "|---|---|---|---|"]
    for _, row in frame.iterrows():
        if "l0_at" in row and isinstance(row["l0_at"], str):
            where = ", ".join(f"{float(v):.0f}" for v in row["l0_at"].split(";"))
        else:
            where = f"{row['l0_low']:.0f}–{row['l0_high']:.0f}"
        difference = format_interval(_value(row, "loss_recovered_difference"), _value(row, "loss_recovered_difference_ci_low"),
                                     _value(row, "loss_recovered_difference_ci_high"), percent_points=True)
        gamma = _value(row, "gamma")
        lines.append(f"| {label(row['arch'])} − {label(row['versus'])} | {where} | {difference} | "
                     f"{'n/a' if gamma is None else f'{gamma:.3f}'} |")
    return lines


def headline(frame: pd.DataFrame) -> list[str]:
    """L0 ratios from a headline.csv, with where each was read."""
    lines = ["| site | read at | L0 Gated / L0 baseline [95% CI] |", "|---|---|---|"]
    for _, row in frame.iterrows():
        if "levels" in row and isinstance(row["levels"], str):
            where = ", ".join(f"{100 * float(v):g}%" for v in row["levels"].split(";")) + " loss recovered"
        else:
            where = f"{100 * row['loss_recovered_low']:.1f}–{100 * row['loss_recovered_high']:.1f}% loss recovered (band)"
        ratio = format_interval(_value(row, "l0_ratio"), _value(row, "l0_ratio_ci_low"), _value(row, "l0_ratio_ci_high"))
        lines.append(f"| {short_label(row['site'])}, L{int(row['layer'])} | {where} | {ratio} |")
    return lines


def coverage(measured: dict) -> list[str]:
    """The intervals' coverage over simulated runs (scripts/interval_coverage.py)."""
    methods = list(next(iter(measured["scenarios"].values()))["coverage"])
    lines = ["| simulated variation | seeds × windows | " + " | ".join(methods) + " |", "|---|---|" + "---|" * len(methods)]
    for name, scenario in measured["scenarios"].items():
        cells = [f"{100 * scenario['coverage'][m]:.1f}%" for m in methods]
        lines.append(f"| {name} | {scenario['seeds']} × {scenario['windows']} | " + " | ".join(cells) + " |")
    runs = {scenario["runs"] for scenario in measured["scenarios"].values()}
    lines += ["", f"Coverage of 95% intervals over {', '.join(map(str, sorted(runs)))} simulated runs per row "
                  f"({measured['resamples']} window resamples each)."]
    return lines


def replicate_plan(plan: dict) -> list[str]:
    """Predicted cold `make replicate` times of candidate sizes (scripts/plan_replicate.py)."""
    parts = ["cache", "train", "rescale_shift", "evaluate", "chapters"]
    unsized = plan["calibration"].get("fixed_seconds") or {}
    parts += ["unsized"] if unsized else []  # stages the estimates do not size, as measured
    lines = ["| candidate | seeds | " + " | ".join(parts) + " | total | fits |", "|---|---|" + "---|" * (len(parts) + 2)]
    for candidate in plan["candidates"]:
        seconds = candidate["seconds"]
        cells = [f"{seconds[part] / 60:.0f}" for part in parts]
        lines.append(f"| {candidate['name']} | {candidate['seeds']} | " + " | ".join(cells)
                     + f" | **{seconds['total'] / 60:.0f}** | {'yes' if candidate['fits'] else 'no'} |")
    measured = plan["calibrated_on"]
    lines += ["", f"Minutes, install ({plan['calibration']['setup_seconds'] / 60:.0f}) and data preparation "
                  f"({plan['calibration']['data_seconds'] / 60:.0f}) included in the total; budget "
                  f"{plan['budget_seconds'] / 60:.0f} min."
                  + (f" Unsized: {', '.join(unsized)}, as measured." if unsized else "")
                  + " Calibrated on the measured cold run "
                  f"({measured['measured_seconds'] / 60:.1f} min; its configuration predicted at "
                  f"{measured['predicted_seconds_of_the_measured_configuration'] / 60:.1f} min)."]
    return lines


def forecast(plan: dict) -> list[str]:
    """The default as configured now: its predicted cold `make replicate` time (scripts/plan_replicate.py)."""
    as_calibrated = [c for c in plan["candidates"] if not c["overrides"] and "speedups_applied" not in c]
    current = max(as_calibrated, key=lambda c: c["seeds"])
    total, budget = current["seconds"]["total"], plan["budget_seconds"]
    measured = plan.get("calibrated_on", {})
    if measured.get("conf_unchanged_since"):  # the configuration that was timed is the default as it is now
        timed = measured["measured_seconds"]
        return [f"The default as configured now ({current['seeds']} training seeds per SAE) is the run timed above: "
                f"**{_minutes(timed)}**, {'within' if timed <= budget else 'over'} the {_minutes(budget)} budget "
                f"(`python scripts/plan_replicate.py`, calibrated on it, sizes the alternatives)."]
    lines = [f"The default as configured now ({current['seeds']} training seeds per SAE) is predicted at "
             f"**{_minutes(total)}** by `python scripts/plan_replicate.py`, "
             f"{'within' if total <= budget else 'over'} the {_minutes(budget)} budget; it has not been timed yet."]
    sped = [c for c in plan["candidates"] if c.get("speedups_applied") and c["seeds"] == current["seeds"]]
    for candidate in sped:
        ratios = candidate["speedups_applied"]
        lines.append(f"With the speed-ups benchmarked since (evaluation {ratios['evaluate']:.2f}×, training "
                     f"{ratios['train']:.2f}×): **{_minutes(candidate['seconds']['total'])}**.")
    return lines


def site_layers(reading: dict) -> list[str]:
    """The verdict's layer rule applied to the model (scripts/probe_layers.py): each layer's zero-ablation
    cost and predicted half-width per site (and mean-ablation's loss recovered where the rule asks for it),
    the rule's layer in bold."""
    sites = reading["sites"]
    rows = {site: {row["layer"]: row for row in found["layers"]} for site, found in sites.items()}
    with_mean = {site: any("mean_ablation_recovered" in row for row in rows[site].values()) for site in sites}
    head = ["layer", *(f"{short_label(site)}: {part}" for site in sites
                       for part in ("zero-ablation cost (SD), nat", "predicted half-width",
                                    *(["mean-ablation recovers"] if with_mean[site] else [])))]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for layer in sorted(set().union(*rows.values())):
        cells = [str(layer)]
        for site, found in sites.items():
            row = rows[site].get(layer)
            chosen = "**" if layer == found["layer"] else ""
            width = 3 if with_mean[site] else 2
            if row is None:
                cells += ["—"] * width
                continue
            cells += [f"{chosen}{row['zero_ablation_cost']:.3f} ({row['sd']:.3f}){chosen}",
                      f"{chosen}{100 * row['predicted_half_width']:.2f} pt{chosen}"]
            if with_mean[site]:
                cells.append(f"{chosen}{100 * row['mean_ablation_recovered']:.1f}%{chosen}")
        lines.append("| " + " | ".join(cells) + " |")
    rule = reading["rule"]
    reach = (f", and where mean-ablation recovers at least {100 * rule['reach_margin']:g} points less than the "
             "site's lowest level" if rule.get("reach_margin") is not None else "")
    lines += ["", f"Rule: the layer nearest layer {reading['anchor_layer']} (deeper on a tie) whose predicted 95% "
                  f"half-width of loss recovered is at most {100 * rule['max_half_width']:g} point, noise floor "
                  f"{rule['noise_floor']:g} nat{reach}; probed on {reading['probe_windows']} {reading['probe_split']}-split "
                  "windows. " + " ".join(_site_layer_sentence(site, found, rows[site]) for site, found in sites.items())]
    return lines


def _site_layer_sentence(site: str, found: dict, rows: dict) -> str:
    """Where a site is read; for a layer that does not meet the rule, the windows it would need."""
    needed = "" if found["meets_rule"] else (
        f"; it would meet the half-width at about {rows[found['layer']]['windows_needed']:.0f} windows")
    return (f"{short_label(site)}: layer {found['layer']} ({'meets' if found['meets_rule'] else 'does not meet'} "
            f"the rule), read at {100 * found['level']:g}% with {found['planned_windows']} test windows{needed}.")


def cluster(measured: dict) -> list[str]:
    """The smoke experiment locally and through the local SLURM cluster (tests/test_cluster.py)."""
    wall, wait = measured["wall_s"], measured["queue_wait_s"]
    node = measured["node"]
    return ["| | locally | through SLURM |", "|---|---|---|",
            f"| jobs | {measured['jobs_local']} | {measured['jobs_submitted']} submitted (one training job cancelled "
            f"and resubmitted) |",
            f"| wall time | {wall['local']:.0f} s | {wall['slurm']:.0f} s ({measured['slurm_over_local']:.2f}×) |",
            "", _overhead(measured) + " SLURM's wait from submission to start, "
            f"which includes waiting for the node's CPUs while another job holds them: median {wait['median']:.0f} s, "
            f"at most {wait['max']:.0f} s. Results identical to the local run: "
            f"{'yes' if measured['identical'] else 'NO'}. One node of {node['cpus']} CPUs and "
            f"{node['memory_mb'] / 1024:.0f} GiB, shared with other work."]


def _overhead(measured: dict) -> str:
    """SLURM's cost per job, or, when the SLURM run finished first, that the machine's load from other work
    outweighed it (the two runs are one after the other, not interleaved)."""
    per_job, load = measured["overhead_per_job_s"], measured["machine"].get("load_average", [None])[0]
    if per_job >= 0:
        return (f"Overhead per submitted job: {per_job:.1f} s of wall time (the difference over the jobs submitted, "
                f"the cancelled job's lost work included).")
    under = f" (load average {load:.1f} when the record was written)" if load is not None else ""
    return (f"Overhead per submitted job: not resolved by this record: the SLURM run finished "
            f"{-per_job * measured['jobs_submitted']:.0f} s sooner than the local one, so the load from other work on "
            f"the machine{under} varied by more than SLURM's own cost.")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{seconds / 60:.1f} min"


def quick_start(record: dict) -> list[str]:
    """The README's quick start as scripts/bench_quickstart.py timed it on a fresh clone, with the console's
    first progress lines."""
    machine = record["machine"]
    if record["setup_exit_code"] or record["run_exit_code"]:
        return [f"The last timed quick start (code {record['code_version']}) FAILED: `make setup` exited "
                f"{record['setup_exit_code']}, `make run EXPERIMENT=smoke` {record['run_exit_code']}."]
    loads = f"{machine['load_average'][0]:.1f} at the start, {record['load_average_after'][0]:.1f} at the end"
    shown = [line for line in record["progress_lines"] if not line.startswith("started ")][:3]
    return [f"Timed from a fresh clone (`python scripts/bench_quickstart.py`, code {record['code_version']}): "
            f"**{_minutes(record['run_seconds'])}** for `make run EXPERIMENT=smoke`, after "
            f"{_minutes(record['setup_seconds'])} for the install (pip's wheel cache warm), on {machine['cores']} "
            f"CPU cores ({machine['cpu']}), no GPU, while other work shared the machine (load average {loads}). "
            "Its first lines on the console:", "", "```", *shown, "```"]


def _machine(facts: dict) -> str:
    """'Intel(R) Xeon(R) Processor, 2 cores, no GPU' from a benchmark's machine record."""
    if "cores" not in facts:  # records before core/precision.machine(): one line already
        return facts["cpu"]
    accelerator = facts["device_name"] if facts.get("device", "cpu") != "cpu" else "no GPU"
    return f"{facts['cpu']}, {facts['cores']} cores, {accelerator}"


def _invocations(record: dict) -> str:
    """How a run killed and resumed was timed, and on which CPUs where its invocations recorded them."""
    invocations = record.get("invocations")
    if not invocations:
        return ""
    cpus = {(m["cpu"], ", ".join(m["cpu_features"])) for m in (i.get("machine") for i in invocations) if m}
    unrecorded = sum(not i.get("machine") for i in invocations)
    where = ""
    if len(cpus) > 1:
        where = (" (on CPUs of different kinds: " + "; ".join(f"{cpu} with {features or 'none of the flags'}"
                                                              for cpu, features in sorted(cpus))
                 + (f"; {unrecorded} not recorded" if unrecorded else "") + ")")
    return f", killed and resumed: its {len(invocations)} invocations' times summed{where}"


def run_time(record: dict) -> list[str]:
    """The default replication's cold run (results/benchmarks/replicate.json)."""
    first, *rest = record["chapters"]
    later = ", ".join(f"{chapter['name']} {_minutes(chapter['wall_seconds'])}" for chapter in rest)
    headline = record["targets"]["headline_chapter_with_install_seconds"]
    code = record.get("code_version", "").split(" ")[0]
    return [f"Run time of the default as configured at {code or 'an earlier commit'}, measured as one cold run "
            f"from a fresh clone ({_machine(record['machine'])}){_invocations(record)}: "
            f"**{_minutes(record['wall_seconds'])}** for `make replicate` as a whole, of which "
            f"**{_minutes(headline)}** for the {first['name']} chapter with the install "
            f"({_minutes(record['setup_seconds'])}, pip's wheel cache warm), then {later}. Its verdict: "
            f"{record['verdict']}."]


def experiment_run_time(record: dict) -> list[str]:
    """An experiment's own run (`python -m gatedsae replicate`: results/<experiment>/replicate.json, published
    with it): its wall time and where it went, stage by stage."""
    stages: dict[str, float] = {}
    for chapter in record["chapters"]:
        for stage, seconds in chapter.get("stages", {}).items():
            stages[stage] = stages.get(stage, 0.0) + seconds
    spent = ", ".join(f"{stage} {_minutes(seconds)}" for stage, seconds in sorted(stages.items(), key=lambda s: -s[1])
                      if seconds >= 60)
    cpus = record["machine"].get("cpus")
    return [f"Run time of `python -m gatedsae replicate experiment={record['experiment']}`: "
            f"**{_minutes(record['wall_seconds'])}**" + (f" on {cpus} CPU cores" if cpus else "")
            + (f" ({spent}; stages under a minute left out)" if spent else "") + "."]


RENDERERS: dict[str, tuple[str, Callable]] = {  # kind: (the file it reads, how)
    "summary": ("verdict.json", summary), "claims": ("verdict.json", claims), "beyond": ("verdict.json", beyond),
    "claims-brief": ("verdict.json", claims_brief),
    "comparisons": ("comparisons.csv", comparisons), "headline": ("headline.csv", headline),
    "coverage": ("interval_coverage.json", coverage), "cluster": ("cluster.json", cluster),
    "replicate_plan": ("replicate_plan.json", replicate_plan), "forecast": ("replicate_plan.json", forecast),
    "convergence": ("convergence.json", convergence), "learning-rates": ("convergence.json", learning_rates),
    "seed-probes": ("convergence.json", seed_probes),
    "retrain-drift": ("retrain_drift.json", retrain_drift),
    "budget-effect": ("budget_effect.json", budget_effect),
    "to-decide": ("to_decide.json", to_decide_table),
    "site-layers": ("site_layers.json", site_layers),
    "quickstart": ("quickstart.json", quick_start), "runtime": ("replicate.json", run_time),
    "experiment-runtime": ("replicate.json", experiment_run_time),
}


def render_block(source: Path, kind: str) -> str:
    if kind not in RENDERERS:
        raise ValueError(f"unknown generated block kind {kind!r}; use one of {', '.join(RENDERERS)}")
    expected, renderer = RENDERERS[kind]
    stem, suffix = expected.rsplit(".", 1)
    if not (source.name == expected or (source.name.startswith(stem + "_") and source.name.endswith("." + suffix))):
        raise ValueError(f"a '{kind}' block reads a {expected} (or a {stem}_<which>.{suffix}), not {source}")
    data = json.loads(source.read_text()) if source.suffix == ".json" else pd.read_csv(source)
    return "\n".join(renderer(data)) + "\n"


def render_text(text: str, root: Path = REPO_ROOT) -> str:
    """`text` with every generated block rewritten from its source (paths relative to `root`)."""
    def replace(match: re.Match) -> str:
        return match["head"] + render_block(root / match["source"], match["kind"]) + match["tail"]

    return BLOCK.sub(replace, text)


def render_docs(root: Path = REPO_ROOT) -> list[Path]:
    """Rewrite the generated blocks of README.md and docs/*.md; the files that changed."""
    changed = []
    for path in documents(root):
        text = path.read_text()
        rendered = render_text(text, root)
        if rendered != text:
            write_text_atomic(path, rendered)
            changed.append(path)
    return changed
