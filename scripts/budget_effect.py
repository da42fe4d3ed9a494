"""Whether longer training moves a site's headline: the L0 ratio at the site's pre-registered levels, read
per training seed and budget from a `scripts/probe_convergence.py` run over the site's whole grid (several
budgets, `--seeds 2`, `--ce-windows N`: the validation split only), judged by the rule docs/verdict.md
wrote down before the probe ran (Convergence: "Does longer training move the headline?"):

- per baseline width, **moves** when each seed's ratio at the longest budget lies on the same side of each
  seed's ratio at the shortest, and the two budgets' means differ by more than twice the published seed SD
  of that claim (`verdict.json`: `seed_sd`); **does not move** when they differ by less than one such SD;
  otherwise **undecided at <n> seeds**; **not tested** where a frontier misses a level at either budget.

    python scripts/budget_effect.py --probe results/calibration/headline_training_length.json \\
        --verdict reference/default/verdict.json --out results/calibration/budget_effect.json experiment=default

Beside the ratios, each budget's SAEs against the convergence rule: how many meet it, how many are still
moving beyond the noise of their logged curve, how many that noise cannot tell (reporting/convergence.py).

Each seed's frontiers are read as the verdict reads them (`evaluation/frontiers.at_levels`), Gated against
each baseline width the probe trained; the published claim for a width is the one whose id names it
(`.../baseline_w<width>`), the compute-matched width's claim the one that names none.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import statistics
from pathlib import Path

import numpy as np

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.codehash import code_version
from gatedsae.evaluation.frontiers import Sweep, at_levels
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import load_config
from gatedsae.reporting.convergence import moving_beyond_noise
from gatedsae.reporting.probe_tables import SEED_SUFFIX

WIDTH = re.compile(r"_w(\d+)_")


def seed_of(name: str) -> int:
    found = SEED_SUFFIX.search(name)
    return int(found.group(1)) if found else 0


def width_of(name: str) -> int:
    found = WIDTH.search(name)
    if not found:
        raise SystemExit(f"{name}: no width (_w<width>_) in the SAE's name")
    return int(found.group(1))


def _sweep(saes: list[tuple[str, dict]]) -> Sweep:
    readings = [sae["validation"] for _, sae in saes]
    return Sweep(*(np.array([r[key] for r in readings], dtype=float) for key in ("l0", "loss_recovered", "gamma")))


def readings_per_seed(budget: dict, levels: list[float]) -> dict[int, dict[int, dict]]:
    """{baseline width: {seed: the ratio at the levels, per level, and Gated's γ there}} at one budget."""
    saes = budget["saes"]
    missing = [name for name, sae in saes.items() if "validation" not in sae]
    if missing:
        raise SystemExit(f"{', '.join(missing)}: no validation readings (run the probe with --ce-windows)")
    out: dict[int, dict[int, dict]] = {}
    for seed in sorted({seed_of(name) for name in saes}):
        mine = [(name, sae) for name, sae in saes.items() if seed_of(name) == seed]
        gated = _sweep([(n, s) for n, s in mine if s["arch"] == PROPOSED])
        for width in sorted({width_of(n) for n, s in mine if s["arch"] == BASELINE}):
            baseline = _sweep([(n, s) for n, s in mine if s["arch"] == BASELINE and width_of(n) == width])
            read = at_levels(gated, baseline, np.asarray(levels, dtype=float))
            out.setdefault(width, {})[seed] = {
                "ratio": _number(read["l0_ratio"]), "per_level": [_number(v) for v in read["l0_ratio_per_level"]],
                "gamma_gated": _number(read["gamma_gated"])}
    return out


def _number(value) -> float | None:
    value = float(value)
    return round(value, 6) if np.isfinite(value) else None


def published_claims(verdict: dict, site: str, layer: int, widths: list[int]) -> dict[int, dict]:
    """{baseline width: the published L0-ratio claim for it} (the main sweep's claims at site and layer)."""
    prefix = f"l0_ratio/{site}/layer{layer}"
    claims = [c for c in verdict["claims"] if c["id"].startswith(prefix) and c.get("variant", "sweep") == "sweep"]
    named = {int(c["id"].rsplit("_w", 1)[1]): c for c in claims if "/baseline_w" in c["id"]}
    unnamed = [c for c in claims if c["id"] == prefix]
    rest = [width for width in widths if width not in named]
    if len(rest) > 1 or (rest and len(unnamed) != 1):
        raise SystemExit(f"no published claim of {prefix} for the baseline {rest} wide")
    return {width: named[width] if width in named else unnamed[0] for width in widths}


def outcome(short: list[float | None], long: list[float | None], seed_sd: float) -> tuple[str, float | None]:
    """The pre-registered reading: moves / does not move / undecided at n seeds / not tested."""
    if not short or not long or None in short or None in long:
        return "not tested (a frontier misses a level)", None
    difference = statistics.mean(long) - statistics.mean(short)
    same_side = all(b > a for a in short for b in long) or all(b < a for a in short for b in long)
    if same_side and abs(difference) > 2 * seed_sd:
        return "moves", difference
    if abs(difference) < seed_sd:
        return "does not move", difference
    return f"undecided at {min(len(short), len(long))} seeds", difference


def convergence_at(budget: dict, rule: dict) -> dict:
    """How many of a budget's SAEs meet the convergence rule; of the others, how many are still moving
    (a metric's change above the rule's fraction by more than twice its noise) and how many the logged
    rows cannot tell (within that noise; an SAE recorded without noise counts here)."""
    threshold = rule["max_relative_change"]
    meets, moving, unclear = [], [], []
    for name, sae in sorted(budget["saes"].items()):
        if sae["converged"]:
            meets.append(name)
            continue
        (moving if moving_beyond_noise(sae, rule["metrics"], threshold) else unclear).append(name)
    return {"steps": budget["steps"], "saes": len(budget["saes"]), "meet_rule": len(meets),
            "still_moving": len(moving), "within_noise": len(unclear), "within_noise_saes": unclear}


def budget_effect(probe: dict, key: str | None, verdict: dict, levels_of) -> dict:
    keys = [key] if key else list(probe["sites"])
    if len(keys) != 1:
        raise SystemExit(f"the probe holds {len(keys)} sites ({', '.join(keys)}): name one with --key")
    entry = probe["sites"][keys[0]]
    where = keys[0].split(" ")[0]  # '<site>/layer<L>'
    site, layer = where.split("/layer")
    levels = levels_of(site)
    budgets = sorted(entry["budgets"], key=lambda b: b["steps"])
    rule = probe.get("rule")
    if len(budgets) < 2:
        raise SystemExit(f"{keys[0]}: one budget only ({budgets[0]['steps']} steps): nothing to compare")
    per_budget = {b["steps"]: readings_per_seed(b, levels) for b in budgets}
    widths = sorted(set().union(*(set(r) for r in per_budget.values())))
    claims = published_claims(verdict, site, int(layer), widths)
    shortest, longest = budgets[0]["steps"], budgets[-1]["steps"]
    comparisons = []
    for width in widths:
        claim = claims[width]
        ratios = {steps: [r["ratio"] for r in readings.get(width, {}).values()] for steps, readings in per_budget.items()}
        rows = [{"steps": steps, "per_seed": {str(s): r for s, r in readings.get(width, {}).items()},
                 "mean_ratio": _mean(ratios[steps])} for steps, readings in per_budget.items()]
        said, difference = outcome(ratios[shortest], ratios[longest], claim["seed_sd"])
        comparisons.append({"baseline_width": width, "claim": claim["id"], "published": claim["value"],
                            "published_seed_sd": claim["seed_sd"], "budgets": rows,
                            "compared": [shortest, longest], "difference": difference, "outcome": said})
    return {"site": site, "layer": int(layer), "levels": levels, "probe_key": keys[0],
            "convergence": [convergence_at(b, rule) for b in budgets] if rule else None,
            "validation_ce_windows": entry.get("validation_ce_windows"), "seeds": entry.get("seeds", 1),
            "max_grad_norm": entry.get("max_grad_norm"), "probe_command": entry["command"], "comparisons": comparisons}


def _mean(values: list[float | None]) -> float | None:
    return round(statistics.mean(values), 6) if values and None not in values else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=Path, required=True, help="a probe_convergence.py JSON over a site's grid")
    parser.add_argument("--key", default=None, help="the probe's site entry (when it holds several)")
    parser.add_argument("--verdict", type=Path, required=True, help="the published run's verdict.json (seed SDs)")
    parser.add_argument("--out", type=Path, required=True)
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    result = budget_effect(json.loads(args.probe.read_text()), args.key, json.loads(args.verdict.read_text()),
                           config.verdict.levels_at)
    write_json_atomic(args.out, {
        "what": "the L0 ratio at the pre-registered levels against the training budget, per seed, on the "
                "validation split, judged by the rule docs/verdict.md fixed before the probe ran",
        "rule": "moves: each longest-budget seed on the same side of each shortest-budget seed and the means "
                "more than 2 published seed SDs apart; does not move: less than 1 SD apart; else undecided",
        "command": f"python scripts/budget_effect.py --probe {args.probe} "
                   + (f"--key {shlex.quote(args.key)} " if args.key else "")
                   + f"--verdict {args.verdict} --out {args.out} " + " ".join(overrides),
        "written_at_commit": code_version(), **result})
    for comparison in result["comparisons"]:
        means = ", ".join(f"{row['steps']} steps {row['mean_ratio']}" for row in comparison["budgets"])
        print(f"baseline {comparison['baseline_width']} wide: {comparison['outcome']} ({means})")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
