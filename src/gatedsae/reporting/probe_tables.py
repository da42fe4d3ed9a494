"""The calibration probes' tables in docs/verdict.md, rendered from results/calibration/convergence.json
(scripts/probe_convergence.py) by `python -m gatedsae render-docs` (gatedsae.reporting.published): the
training budget against the convergence rule, the probes at other learning rates, the probes that
train each SAE with several seeds to tell a setting's effect from the seeds' spread, SAEs trained again
against the published ones (results/calibration/retrain_drift.json), and the headline ratio against
the training budget (results/calibration/budget_effect.json)."""

from __future__ import annotations

import re
from statistics import mean

from gatedsae.plan.sites import short_label

SEED_SUFFIX = re.compile(r"_seed(\d+)$")


def _fvu_gap(validation: dict | None, training: dict | None) -> str:
    """FVU on the validation split and on rows the SAE trained on (as often as its budget repeated them)."""
    if not validation or not training:
        return " — |"
    return f" {validation['fvu']:.3f}, {training['fvu']:.3f} ({100 * (validation['fvu'] / training['fvu'] - 1):+.1f}%) |"


def _rule_cells(sae: dict, metrics: list[str]) -> str:
    """Each metric's change over the rule's last part of training, and whether the SAE meets the rule."""
    return " | ".join(f"{100 * sae[f'{m}_change']:.1f}%" for m in metrics) + f" | {'yes' if sae['converged'] else 'no'}"


def _clip(site: dict) -> str:
    """The probe's gradient clip ('none' without one): as it recorded it, or, in entries written before
    probes recorded it (when the default did not clip), from the overrides it ran with."""
    if "max_grad_norm" in site:
        return "none" if site["max_grad_norm"] is None else str(float(site["max_grad_norm"]))
    return next((o.split("=", 1)[1] for o in site.get("overrides", []) if o.startswith("train.max_grad_norm=")), "none")


def learning_rates(measured: dict) -> list[str]:
    """The probes at a learning rate of their own (`probe_convergence.py --lr`), each SAE against the
    convergence rule with its validation readings; FVU above 1 is a reconstruction worse than the mean."""
    metrics = measured["rule"]["metrics"]
    lines = ["| site | learning rate | gradient clip | steps | SAE | " + " | ".join(f"{m} change" for m in metrics)
             + " | converged | validation L0 | validation loss recovered | validation FVU |",
             "|---|---|---|---|---|" + "---|" * (len(metrics) + 4)]
    windows = {}
    for key, site in measured["sites"].items():
        if "lr" not in site or "seeds" in site:  # several seeds: their own table (seed_probes)
            continue
        where = key.split(" ")[0]  # the key without its label: '<site>/layer<L>'
        windows.setdefault(where, set()).add(site.get("validation_ce_windows"))
        for budget in site["budgets"]:
            for name, sae in budget["saes"].items():
                held = sae.get("validation")
                lines.append(f"| {where} | {site['lr']:g} | {_clip(site)} | {budget['steps']} | {name} | "
                             + _rule_cells(sae, metrics) + " | "
                             + (f"{held['l0']:.1f} | {100 * held['loss_recovered']:.2f}% | {held['fvu']:.3f} |"
                                if held else "— | — | — |"))
    read = "; ".join(f"{site}: {', '.join(str(n) for n in sorted(counts) if n)}" for site, counts in windows.items()
                     if any(counts))
    return lines + (["", f"Validation windows behind the readings: {read}."] if read else [])


def convergence(measured: dict) -> list[str]:
    """Each probed SAE's curves against verdict.convergence at each training budget
    (scripts/probe_convergence.py), and the smallest budget at which every one of a site's meets it,
    beside the default's budget as conf/ sets it now."""
    from gatedsae.plan.config import load_config

    train = load_config(["experiment=default"]).train
    rule = measured["rule"]
    own = ", ".join(f"{short_label(site)} {train.at_site(site).steps:,}" for site in train.site_tokens)
    default_steps = f"{train.steps:,} steps" + (f" ({own})" if own else "")
    metrics = rule["metrics"]
    lines = ["| site | steps | SAE | " + " | ".join(f"{m} change" for m in metrics)
             + " | converged | lr, last part | validation L0 | validation loss recovered | FVU: validation, training rows |",
             "|---|---|---|" + "---|" * (len(metrics) + 5)]
    smallest, settings, windows = [], [], []
    for key, site in measured["sites"].items():
        if "lr" in site or "seeds" in site:  # tables of their own (learning_rates, seed_probes)
            continue
        if site.get("validation_ce_windows"):  # as read (a record corrected for the probe bug says 16)
            windows.append(f"{key}: {site['validation_ce_windows']}")
        for budget in site["budgets"]:
            for name, sae in budget["saes"].items():
                held = sae.get("validation")
                low, high = sae["curve"]["lr_last_part"]
                lr = f"{low:g}" if low == high else f"{low:g}–{high:g}"
                lines.append(f"| {key} | {budget['steps']} | {name} | {_rule_cells(sae, metrics)} | {lr} | "
                             + (f"{held['l0']:.1f} | {100 * held['loss_recovered']:.2f}% |" if held else "— | — |")
                             + _fvu_gap(held, sae.get("training_rows")))
        met = site["smallest_budget_meeting_rule"]
        probed = ", ".join(str(b["steps"]) for b in site["budgets"])
        smallest.append(f"{key}: {met} steps" if met else f"{key}: none of {probed} steps")
        changed = [o for o in site.get("overrides", []) if o != "experiment=default"]
        settings += [f"{key}: `{' '.join(changed)}`"] if changed else []
    lines += ["", f"Rule: each of {', '.join(metrics)} changes by less than {100 * rule['max_relative_change']:.0f}% "
                  f"over the last {100 * rule['last_fraction']:.0f}% of training (one seed per SAE, batches of "
                  f"{measured['train']['batch_size']}). Smallest budget at which every probed SAE meets it: "
                  f"{'; '.join(smallest)}. The default trains {default_steps}."]
    if windows:
        lines += ["", "Validation windows behind the loss recovered: " + "; ".join(windows) + "."]
    if settings:
        lines += ["", "Settings other than the default's: " + "; ".join(settings) + "."]
    return lines


def _spread(values: list[float], form: str) -> str:
    """The mean over seeds and their range."""
    return f"{form.format(mean(values))} ({form.format(min(values))}–{form.format(max(values))})"


def seed_probes(measured: dict) -> list[str]:
    """The probes with several training seeds per SAE (`probe_convergence.py --seeds`): per SAE and
    setting (the gradient clip), the validation readings' mean over seeds and range, and, for a clipped
    probe, each seed's change from the same seed unclipped at the same site, budget and SAE (the same
    initialisation and batches: a paired comparison)."""
    lines = ["| site | steps | SAE | gradient clip | converged | validation L0 | validation loss recovered "
             "| validation FVU | FVU change from no clip, per seed |", "|---|---|---|---|---|---|---|---|---|"]
    readings: dict[tuple, dict[str, dict[int, dict]]] = {}  # (site, steps, SAE) → clip → seed → SAE record
    windows = set()
    for key, site in measured["sites"].items():
        if "seeds" not in site:
            continue
        windows.add(site.get("validation_ce_windows"))
        for budget in site["budgets"]:
            for name, sae in budget["saes"].items():
                seed = SEED_SUFFIX.search(name)  # none on the first seed's: the run's seed (train.seed)
                spec = (key.split(" ")[0], budget["steps"], name[:seed.start()] if seed else name)
                number = int(seed.group(1)) if seed else measured["train"].get("seed", 0)
                readings.setdefault(spec, {}).setdefault(_clip(site), {})[number] = sae
    for (where, steps, name), by_clip in readings.items():
        for clip, seeds in by_clip.items():
            held = [sae["validation"] for sae in seeds.values()]
            unclipped = by_clip.get("none", {})
            paired = ", ".join(f"{seeds[s]['validation']['fvu'] - unclipped[s]['validation']['fvu']:+.3f}"
                               for s in sorted(seeds) if s in unclipped)
            lines.append(f"| {where} | {steps} | {name} | {clip} | {sum(s['converged'] for s in seeds.values())} of "
                         f"{len(seeds)} | {_spread([h['l0'] for h in held], '{:.1f}')} | "
                         f"{_spread([100 * h['loss_recovered'] for h in held], '{:.2f}%')} | "
                         f"{_spread([h['fvu'] for h in held], '{:.3f}')} | {paired if clip != 'none' else '—'} |")
    read = ", ".join(str(n) for n in sorted(w for w in windows if w))
    return lines + (["", f"Each cell: the mean over seeds (the range). Validation windows behind the readings: {read}."]
                    if read else [])


def retrain_drift(measured: dict) -> list[str]:
    """SAEs trained again against a published run's (results/calibration/retrain_drift.json, written by
    scripts/retrain_drift.py): per SAE and probe, the difference from the published seed-0 readings on the
    same validation windows, also in units of the published seeds' standard deviation."""
    labels = list(measured["probes"])
    lines = ["| SAE | trained by | published: L0, loss recovered | seed SD: L0, loss recovered | "
             + " | ".join(f"{label}: ΔL0, Δ loss recovered" for label in labels) + " |",
             "|---|---|---|---|" + "---|" * len(labels)]

    def cell(entry: dict, label: str) -> str:
        again = entry["retrained"].get(label)
        if again is None:
            return " — |"
        if again["identical"]:
            return " identical |"
        sds = again["in_seed_sds"]
        return (f" {again['difference']['l0']:+.1f} ({sds['l0']:.1f} SD), "
                f"{100 * again['difference']['loss_recovered']:+.2f} pt ({sds['loss_recovered']:.1f} SD) |")

    for entry in measured["saes"]:
        published, sd = entry["published"], entry["seed_sd"]
        lines.append(f"| {entry['sae']} | {entry.get('published_code_version') or '—'} | "
                     f"{published['l0']:.1f}, {100 * published['loss_recovered']:.2f}% | "
                     f"{sd['l0']:.1f}, {100 * sd['loss_recovered']:.2f} pt ({entry['seeds']} seeds) |"
                     + "".join(cell(entry, label) for label in labels))
    summary = []
    for label in labels:
        rows = [entry["retrained"][label] for entry in measured["saes"] if label in entry["retrained"]]
        same = sum(row["identical"] for row in rows)
        beyond = sum(not row["identical"] and max(row["in_seed_sds"]["l0"], row["in_seed_sds"]["loss_recovered"]) > 1
                     for row in rows)
        summary.append(f"{label}: {same} of {len(rows)} SAEs identical, {beyond} more than one seed SD away in L0 "
                       "or loss recovered")
    return lines + ["", "; ".join(summary) + "."]


def budget_effect(measured: dict) -> list[str]:
    """Whether longer training moves the headline (results/calibration/budget_effect.json, written by
    scripts/budget_effect.py): the L0 ratio at the levels per seed and budget, each width's outcome."""
    def ratio(value) -> str:
        return "not reached" if value is None else f"{value:.3f}"

    lines = ["| baseline width | steps | L0 ratio, each seed | mean | Gated γ, each seed |", "|---|---|---|---|---|"]
    outcomes = []
    for comparison in measured["comparisons"]:
        for row in comparison["budgets"]:
            seeds = row["per_seed"].values()
            lines.append(f"| {comparison['baseline_width']} | {row['steps']} | "
                         + ", ".join(ratio(s["ratio"]) for s in seeds) + f" | {ratio(row['mean_ratio'])} | "
                         + ", ".join(ratio(s["gamma_gated"]) for s in seeds) + " |")
        shortest, longest = comparison["compared"]
        difference = comparison["difference"]
        moved = "" if difference is None else (f", {difference:+.3f}: "
                                               + ("lower" if difference < 0 else "higher") + " at the longer budget")
        outcomes.append(f"the baseline {comparison['baseline_width']} wide: **{comparison['outcome']}** "
                        f"({shortest} → {longest} steps{moved}; the published seed SD of `{comparison['claim']}` "
                        f"{comparison['published_seed_sd']:.4f})")
    levels = ", ".join(f"{100 * level:g}%" for level in measured["levels"])
    lines += ["", f"Read at {levels} loss recovered, on {measured['validation_ce_windows']} validation windows, "
                  f"{measured['seeds']} seeds. Outcome: " + "; ".join(outcomes) + "."]
    if measured.get("convergence"):
        counts = "; ".join(f"{c['steps']} steps: {c['meet_rule']} of {c['saes']} meet it, {c['still_moving']} are "
                           f"still moving beyond the noise of their curves, {c['within_noise']} within it"
                           for c in measured["convergence"])
        lines += ["", f"The probe's SAEs against the convergence rule: {counts}."]
    return lines
