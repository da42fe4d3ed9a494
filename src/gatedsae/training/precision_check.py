"""Does a stage's bf16 lead training to the SAEs that its float32 leads to?

Two stages' bf16 change what training reaches, and each is checked end to end, by what the statistics
read (every SAE's held-out FVU and L0, within `precision.<check>`'s relative tolerances, conf/precision/):

- training (`precision.train`): the same grid (same seeds, same batches in the same order) trained twice on
  the same activations, with the encoder's product in float32 and in bf16 (`compare_training_precisions`).
  The weights themselves drift apart (a bf16 product rounds the gates' decisions differently from the
  first step on), which is why the resolved training precision is part of a checkpoint's identity
  (plan/identity.py);
- the cache (`precision.cache`): the same grid trained on the activations of a float32 LM forward and on
  those of a bf16 one, both read on the float32 forward's held-out rows (`compare_cache_precisions`).
  How far the two caches' rows differ says little by itself: the difference sits in a few rows of large
  norm, which an SAE may or may not reconstruct anyway.

tests/test_precision.py runs both on the tiny model's activations; scripts/check_train_precision.py and
scripts/check_cache_precision.py on short runs on the embedded model's (results/benchmarks/).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from gatedsae.activations.store import ShardedActivations
from gatedsae.core.precision import check
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import Config, EndToEndCheckConfig, SAEGroupConfig
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


def compare(runs: dict[str, Summary], tolerances: EndToEndCheckConfig) -> dict:
    """Each SAE's FVU and L0 of the bf16 run against the float32 run's, checked against the tolerances:
    {"passed", "worst": {fvu_rel, l0_rel: {value, tolerance}}, "saes": {name: both runs' figures and the
    relative changes}}."""
    saes, worst = {}, {"fvu_rel": 0.0, "l0_rel": 0.0}
    for name, fp32 in runs["float32"].items():
        bf16 = runs["bfloat16"][name]
        changes = {key: abs(bf16[key] / fp32[key] - 1) if fp32[key] > 0 else abs(bf16[key] - fp32[key])
                   for key in ("fvu", "l0")}
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
    (`trains`, keyed by PRECISIONS); read both on `heldout` (the float32 cache's held-out split) and check
    each SAE against `precision.cache_check` (the result of `compare`)."""
    runs = {precision: train_and_summarise(config, trains[precision], heldout, heldout_tokens)
            for precision in PRECISIONS}
    return compare(runs, config.precision.cache_check)
