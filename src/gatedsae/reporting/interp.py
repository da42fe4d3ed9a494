"""The interp stage: sparse probing and first-letter absorption of the real SAEs (evaluation/interp.py),
Gated against the baseline at matched L0, with intervals over training seeds and examples; rows.csv (every
score), the development split's summary.json and the test split's (the verdict's). The verdict's section on
it is a PROXY for the paper's third claim, never counted as one of the paper's claims.

The interval: a bootstrap that resamples the matched pairs' training seeds, then each task's scored rows
(documents, tokens, words) — the same rows for both architectures, so the difference is paired over
examples. Sparse probing's statistic is the mean accuracy over the site's tasks; absorption's, the mean
absorption rate over the letters kept.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd

from gatedsae.core.atomic import atomic_path, write_json_atomic
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.architectures import label as arch_label
from gatedsae.plan.config import Config
from gatedsae.plan.interp import outputs
from gatedsae.plan.layout import TEST
from gatedsae.plan.sites import label as site_label

PROXY = ("a PROXY for the paper's third claim (its features are as interpretable as the baseline's), which the "
         "paper tests with blinded human raters; not counted among the paper's claims")


def estimate(point: float, replicates: np.ndarray, confidence: float) -> dict:
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail]) if len(replicates) else (np.nan, np.nan)
    return {"value": float(point), "low": float(low), "high": float(high)}


def bootstrap_means(per_arch: dict[str, list[np.ndarray]], resamples: int, confidence: float,
                    rng: np.random.Generator) -> dict[str, dict]:
    """per_arch: per architecture, per task a [seeds, rows] 0/1 matrix (the same rows for every
    architecture). The statistic: the mean over tasks of the mean over seeds of the mean over rows; with
    their difference (first architecture − second). Each replicate draws the seeds of each architecture and
    one set of row weights per task, shared by the architectures."""
    archs = list(per_arch)
    tasks = len(per_arch[archs[0]])
    points = {arch: float(np.mean([m.mean() for m in per_arch[arch]])) for arch in archs}
    replicates = {arch: np.zeros(resamples) for arch in archs}
    draws = {arch: rng.integers(0, per_arch[arch][0].shape[0], (resamples, per_arch[arch][0].shape[0]))
             for arch in archs}
    for t in range(tasks):
        n = per_arch[archs[0]][t].shape[1]
        weights = rng.multinomial(n, np.full(n, 1 / n), size=resamples) / n  # [resamples, rows]
        for arch in archs:
            per_seed = per_arch[arch][t] @ weights.T  # [seeds, resamples]
            replicates[arch] += np.take_along_axis(per_seed.T, draws[arch], axis=1).mean(1) / tasks
    found = {arch: estimate(points[arch], replicates[arch], confidence) for arch in archs}
    if len(archs) == 2:
        found["difference"] = estimate(points[archs[0]] - points[archs[1]], replicates[archs[0]] - replicates[archs[1]],
                                       confidence)
    return found


def reading(difference: dict, higher_is_better: bool) -> str:
    """Which way the interval points (the proxy's answer, no claim judged)."""
    if not np.isfinite(difference["low"]):
        return "NOT MEASURED"
    if difference["low"] > 0:
        return "Gated higher" + (" (better)" if higher_is_better else " (worse)")
    if difference["high"] < 0:
        return "Gated lower" + (" (worse)" if higher_is_better else " (better)")
    return "no difference detected"


def compare_site(config: Config, pairs: dict, scores: dict[str, dict], raw: dict, rng: np.random.Generator) -> dict:
    """One site's comparison on one split from its matched pairs' scores."""
    interp = config.interp
    matched = [pair for pair in pairs["pairs"] if pair["matched"]]
    found = {"matched": pairs, "proxy": PROXY}
    if not matched:
        found["status"] = (f"NOT MEASURED: no training seed has a Gated and a baseline SAE within an L0 ratio of "
                           f"{interp.max_l0_ratio:g} of each other near L0 {pairs['target_l0']:.3g}")
        return found
    saes = {arch: [scores[pair[arch]["sae"]] for pair in matched] for arch in (PROPOSED, BASELINE)}
    tasks = sorted(raw)
    found["tasks"] = tasks
    found["probing"] = {}
    for k in interp.probing.ks:
        per_arch = {arch: [np.array([s["probing"][task][str(k)]["correct"] for s in saes[arch]], dtype=float)
                           for task in tasks] for arch in saes}
        found["probing"][str(k)] = bootstrap_means(per_arch, interp.bootstrap, interp.confidence, rng) if tasks else {}
        if tasks:
            found["probing"][str(k)]["reading"] = reading(found["probing"][str(k)]["difference"], True)
    found["raw_probe"] = bootstrap_means({"raw": [np.array([raw[task]["correct"]], dtype=float) for task in tasks]},
                                         interp.bootstrap, interp.confidence, rng)["raw"] if tasks else None
    letters = sorted(set.intersection(*[set(s["absorption"]) for arch in saes for s in saes[arch]]))
    found["letters"] = letters
    if letters:
        per_arch = {arch: [np.array([s["absorption"][letter]["absorbed"] for s in saes[arch]], dtype=float)
                           for letter in letters] for arch in saes}
        found["absorption"] = bootstrap_means(per_arch, interp.bootstrap, interp.confidence, rng)
        found["absorption"]["reading"] = reading(found["absorption"]["difference"], False)
    found["status"] = "MEASURED"
    return found


def score_rows(work, split: Optional[str], scores: dict[str, dict]) -> list[dict]:
    """rows.csv's lines of one site and split: each SAE's accuracy per task and k, absorption per letter."""
    frame = work.wanted[split].set_index("sae")
    rows = []
    for name, found in scores.items():
        base = {"split": split or "heldout", "site": work.site, "layer": work.layer, "arch": frame.loc[name, "arch"],
                "sae": name, "seed": int(frame.loc[name, "seed"]), "l0": float(frame.loc[name, "l0"])}
        rows += [{**base, "measure": "probing", "task": task, "k": int(k), "value": r["accuracy"]}
                 for task, per_k in found["probing"].items() for k, r in per_k.items()]
        rows += [{**base, "measure": "absorption", "task": f"letter:{letter}", "k": None, "value": r["absorption_rate"]}
                 for letter, r in found["absorption"].items()]
    return rows


def run_interp(config: Config, progress: bool = True) -> Path:
    """Score, compare, and write rows.csv and the summaries (atomically, the summaries last)."""
    from gatedsae.evaluation.evaluate import heldout_splits
    from gatedsae.evaluation.interp import plan_site, score_sites

    splits = heldout_splits(config)
    pairs = [(site, layer) for site, layer in config.experiment.site_layer_pairs() if site in config.interp_sites]
    works = [plan_site(config, site, layer, splits) for site, layer in pairs]
    found = score_sites(config, works, progress)
    files = outputs(config)
    rows, summaries = [], {}
    for split in splits:
        rng = np.random.default_rng(config.seed)
        per_site = {}
        for work in works:
            site = found[(work.site, work.layer)]
            rows += score_rows(work, split, site["scores"][split])
            rows += [{"split": split or "heldout", "site": work.site, "layer": work.layer, "arch": "raw", "sae": "raw",
                      "seed": None, "l0": None, "measure": "probing", "task": task, "k": None, "value": r["accuracy"]}
                     for task, r in site["raw"][split].items()]  # the reference: a probe on every dimension
            per_site[f"{work.site}/layer{work.layer}"] = compare_site(config, work.pairs, site["scores"][split],
                                                                    site["raw"][split], rng)
        summaries[split] = {"split": split or "heldout", "ks": config.interp.probing.ks,
                            "confidence": config.interp.confidence, "sites": per_site}
    Path(files["rows"]).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(files["rows"])) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    for split, summary in summaries.items():
        key = "test_summary" if split == TEST else "summary"
        Path(files[key]).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(files[key]), summary)
    return Path(files["summary"])


# ---------------------------------------------------------------------------------------------------
# The verdict's section.


def _cell(found: Optional[dict]) -> str:
    if not found:
        return "n/a"
    return f"{found['value']:.3f} [{found['low']:.3f}, {found['high']:.3f}]"


def verdict_section(summary: Optional[dict]) -> list[str]:
    """Markdown lines of the verdict's automatic-interpretability section (from the summary it reads)."""
    lines = ["", "## Automatic interpretability (a proxy for claim 3)", ""]
    if summary is None:
        return lines + ["NOT MEASURED: the interp stage has not run (`python -m gatedsae interp`)."]
    lines += [f"This section is {PROXY}. Sparse probing and first-letter absorption after SAEBench's definitions "
              f"(docs/method.md#automatic-interpretability), on the {summary['split']} split; Gated and the baseline "
              "compared at matched L0 (conf/interp's rule, chosen on the validation split), mean over the matched "
              f"pairs' training seeds with a {100 * summary['confidence']:g}% bootstrap interval over seeds and "
              "examples. Probing: higher accuracy is a more legible latent; absorption: lower is better.", "",
              "| Site | Matched L0 (Gated, baseline per seed) | Measure | Gated | Baseline | Gated − baseline | Reading |",
              "|---|---|---|---|---|---|---|"]
    for key, site in summary["sites"].items():
        name, layer = key.split("/")
        where = f"{site_label(name)}, L{layer.removeprefix('layer')}"
        pairs = "; ".join(f"{p[PROPOSED]['l0']:.0f}, {p[BASELINE]['l0']:.0f}" + ("" if p["matched"] else " (unmatched)")
                          for p in site["matched"]["pairs"])
        if site["status"] != "MEASURED":
            lines.append(f"| {where} | {pairs} | — | — | — | — | {site['status']} |")
            continue
        for k, found in site["probing"].items():
            if found:
                lines.append(f"| {where} | {pairs} | sparse probing, k = {k} (mean of {len(site['tasks'])} tasks) | "
                             f"{_cell(found[PROPOSED])} | {_cell(found[BASELINE])} | {_cell(found['difference'])} | "
                             f"{found['reading']} |")
        if site.get("raw_probe"):
            lines.append(f"| {where} | | probe on the raw activations (reference) | {_cell(site['raw_probe'])} | | | |")
        if not site["tasks"]:
            lines.append(f"| {where} | {pairs} | sparse probing | — | — | — | NOT MEASURED: no task with enough rows "
                         "of each class on this split (conf/interp probing) |")
        if site.get("absorption"):
            found = site["absorption"]
            lines.append(f"| {where} | {pairs} | absorption rate (mean of {len(site['letters'])} letters) | "
                         f"{_cell(found[PROPOSED])} | {_cell(found[BASELINE])} | {_cell(found['difference'])} | "
                         f"{found['reading']} |")
        else:
            lines.append(f"| {where} | {pairs} | absorption rate | — | — | — | NOT MEASURED: no letter with enough words "
                         "the raw probe gets right on this split (conf/interp absorption) |")
    labels = f"{arch_label(PROPOSED)} vs {arch_label(BASELINE)}"
    return lines + ["", f"{labels}; the human study (docs/interpretability-study.md) stays the paper's test of claim 3."]


def read_summary(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.exists() else None
