"""Does a stage's bf16 lead training to the SAEs that its float32 leads to?

Two stages' bf16 change what training reaches, and each is checked end to end, by what the statistics
read (every SAE's held-out FVU and L0; `precision.train_check` and `precision.cache_check`, conf/precision/):

- training (`precision.train`): the same grid (same seeds, same batches in the same order) trained twice on
  the same activations, with the encoder's product in float32 and in bf16 (`compare_training_precisions`).
  The weights themselves drift apart (a bf16 product rounds the gates' decisions differently from the
  first step on), which is why the resolved training precision is part of a checkpoint's identity
  (plan/identity.py);
- the cache (`precision.cache`): the same grid trained on the activations of a float32 LM forward and on
  those of a bf16 one, both read on the float32 forward's held-out rows (`compare_cache_precisions`),
  against what another training seed changes on the float32 cache (`precision.cache_check`: a single run
  can move far on a tiny change of its data, a seed's variation is what the verdict's intervals hold).

tests/test_precision.py runs both on the tiny model's activations; scripts/check_train_precision.py and
scripts/check_cache_precision.py on short runs on the embedded model's (results/benchmarks/).
"""

from __future__ import annotations

import statistics
import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from gatedsae.activations.store import ShardedActivations
from gatedsae.core.precision import check
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import Config, SAEGroupConfig, TrainPrecisionCheckConfig
from gatedsae.training.trainer import GridTrainer

PRECISIONS = ("float32", "bfloat16")
Summary = dict[str, dict[str, float]]  # SAE name → {"arch", "l1", "l0", "fvu"}


def check_groups(config: Config, site: str) -> list[SAEGroupConfig]:
    """The SAEs a check trains at `site`: the sweep's first Gated and first baseline group there, each cut
    to its two middle λ (all of them when it has at most two)."""
    at_site = config.sweep.groups_at(site)
    groups = [next(g for g in at_site if g.arch == arch) for arch in (PROPOSED, BASELINE)]
    return [replace(g, l1=_middle(g.l1), sites=[site]) for g in groups]


def _middle(values: list[float]) -> list[float]:
    if len(values) <= 2:
        return list(values)
    start = (len(values) - 1) // 2
    return list(values[start:start + 2])


@torch.no_grad()
def heldout_summary(trainer: GridTrainer, store: ShardedActivations, tokens: int) -> Summary:
    """Held-out L0 and FVU of every SAE of a trained grid (on the scaled activations it was trained on),
    computed in float32 as a saved checkpoint is evaluated, whatever precision it trained in."""
    x = torch.cat(list(store.tokens(tokens, trainer.massive_norm_threshold))).float() * trainer.scale
    centred_energy = ((x - x.mean(0)) ** 2).sum()
    summary = {}
    for module in trainer.modules:
        trained_in, module.encoder_bf16 = module.encoder_bf16, False
        try:
            terms = module(x)
        finally:
            module.encoder_bf16 = trained_in
        for spec in (s for s in trainer.specs if trainer.modules[s.group] is module):
            summary[spec.name] = {
                "arch": spec.arch, "l1": spec.value,
                "l0": float((terms.features[spec.index] > 0).float().sum(-1).mean()),
                "fvu": float(((terms.x_hat[spec.index] - x) ** 2).sum() / centred_energy),
            }
    return summary


def train_and_summarise(config: Config, train: ShardedActivations, heldout: ShardedActivations,
                        heldout_tokens: int) -> Summary:
    """The grid of `config` trained on `train` (in a scratch folder), read on `heldout`."""
    with tempfile.TemporaryDirectory() as scratch:
        trainer = GridTrainer(config, train, Path(scratch))
        trainer.run(progress=False)
    return heldout_summary(trainer, heldout, heldout_tokens)


def relative_changes(reference: Summary, other: Summary) -> dict[str, dict[str, float]]:
    """Per SAE: |other / reference − 1| of its FVU and of its L0 (the absolute change where the reference is 0)."""
    return {name: {key: abs(other[name][key] / ref[key] - 1) if ref[key] > 0 else abs(other[name][key] - ref[key])
                   for key in ("fvu", "l0")} for name, ref in reference.items()}


def compare(runs: dict[str, Summary], tolerances: TrainPrecisionCheckConfig) -> dict:
    """Each SAE's FVU and L0 of the bf16 run against the float32 run's, checked against the tolerances:
    {"passed", "worst": {fvu_rel, l0_rel: {value, tolerance}}, "saes": {name: both runs' figures and the
    relative changes}}."""
    saes, worst = {}, {"fvu_rel": 0.0, "l0_rel": 0.0}
    for name, changes in relative_changes(runs["float32"], runs["bfloat16"]).items():
        fp32, bf16 = runs["float32"][name], runs["bfloat16"][name]
        saes[name] = {"arch": fp32["arch"], "l1": fp32["l1"], "fvu_float32": fp32["fvu"], "fvu_bfloat16": bf16["fvu"],
                      "l0_float32": fp32["l0"], "l0_bfloat16": bf16["l0"],
                      "fvu_rel": changes["fvu"], "l0_rel": changes["l0"]}
        worst = {key: max(worst[key], changes[key.removesuffix("_rel")]) for key in worst}
    passed, measured = check(worst, {"fvu_rel": tolerances.fvu_rel, "l0_rel": tolerances.l0_rel})
    return {"passed": passed, "worst": measured, "saes": saes}


def compare_training_precisions(config: Config, train: ShardedActivations, heldout: ShardedActivations,
                                heldout_tokens: int) -> dict:
    """Train the grid in float32 and in bf16 on the same activations; check each SAE against
    `precision.train_check` (the result of `compare`)."""
    runs = {precision: train_and_summarise(replace(config, precision=replace(config.precision, train=precision)),
                                           train, heldout, heldout_tokens)
            for precision in PRECISIONS}
    return compare(runs, config.precision.train_check)


def compare_cache_precisions(config: Config, trains: dict[str, ShardedActivations], heldout: ShardedActivations,
                             heldout_tokens: int) -> dict:
    """Train the grid, as `config` trains it, on the float32 cache's activations and on the bf16 cache's
    (`trains`, keyed by PRECISIONS), and once more on the float32 cache with the next training seeds
    (train.seed moved past every seed of the first runs); read all three on `heldout` (the float32 cache's
    held-out split). Returns each SAE's FVU and L0 in the three runs and its relative changes from the
    float32 run: to the bf16 cache's (`cache`) and to the other seeds' (`seed`). `cache_check_verdict`
    judges them."""
    reseeded = replace(config, train=replace(config.train, seed=config.train.seed + config.train.seeds))
    runs = {precision: train_and_summarise(config, trains[precision], heldout, heldout_tokens) for precision in PRECISIONS}
    # The same SAEs in the same order; an extra seed's name holds its seed, so pair them by position.
    other_seeds = train_and_summarise(reseeded, trains["float32"], heldout, heldout_tokens)
    runs["float32_other_seeds"] = dict(zip(runs["float32"], other_seeds.values()))
    assert all((a["arch"], a["l1"]) == (b["arch"], b["l1"]) for a, b in zip(runs["float32"].values(), other_seeds.values()))
    by_cache = relative_changes(runs["float32"], runs["bfloat16"])
    by_seed = relative_changes(runs["float32"], runs["float32_other_seeds"])
    return {"saes": {name: {"arch": fp32["arch"], "l1": fp32["l1"],
                            **{f"{key}_{run}": runs[run][name][key] for run in runs for key in ("fvu", "l0")},
                            "cache": by_cache[name], "seed": by_seed[name]}
                     for name, fp32 in runs["float32"].items()},
            "other_seeds": reseeded.train.seed_values}


def cache_check_verdict(saes: list[dict], seed_ratio: float) -> dict:
    """`precision.cache_check` over SAEs pooled from `compare_cache_precisions` (every site's): passed when,
    for FVU and for L0, the median change the bf16 cache makes is at most `seed_ratio` × the median change
    another training seed makes."""
    figures = {}
    for key in ("fvu", "l0"):
        cache = statistics.median(sae["cache"][key] for sae in saes)
        seed = statistics.median(sae["seed"][key] for sae in saes)
        figures[key] = {"median_change_by_cache": cache, "median_change_by_seed": seed,
                        "limit": seed_ratio * seed, "passed": cache <= seed_ratio * seed}
    return {"passed": all(entry["passed"] for entry in figures.values()), "seed_ratio": seed_ratio,
            "saes": len(saes), **figures}
