"""Does training in bf16 (`precision.train`) reach the SAEs that float32 training reaches?

The same grid (same seeds, same batches in the same order) is trained twice, with the encoder's product
in float32 and in bf16, and every SAE's held-out FVU and L0 are compared: each must lie within
`precision.train_check`'s relative tolerances (conf/precision/, which says why those). The weights
themselves drift apart (a bf16 product rounds the gates' decisions differently from the first step on),
which is why the resolved training precision is part of a checkpoint's identity (plan/identity.py),
and why what is checked is what the statistics read: FVU and L0.

tests/test_precision.py runs it on the tiny model's activations; scripts/check_train_precision.py on a
short run on the embedded model's (results/benchmarks/train_precision.json).
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import torch

from gatedsae.activations.store import ShardedActivations
from gatedsae.core.precision import check
from gatedsae.plan.config import Config
from gatedsae.training.trainer import GridTrainer

PRECISIONS = ("float32", "bfloat16")


@torch.no_grad()
def heldout_summary(trainer: GridTrainer, store: ShardedActivations, tokens: int) -> dict[str, dict[str, float]]:
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


def train_in(config: Config, precision: str, train: ShardedActivations, heldout: ShardedActivations,
             heldout_tokens: int) -> dict[str, dict[str, float]]:
    """The grid of `config` trained with precision.train = `precision` (in a scratch folder), summarised."""
    config = replace(config, precision=replace(config.precision, train=precision))
    with tempfile.TemporaryDirectory() as scratch:
        trainer = GridTrainer(config, train, Path(scratch))
        trainer.run(progress=False)
    return heldout_summary(trainer, heldout, heldout_tokens)


def compare_training_precisions(config: Config, train: ShardedActivations, heldout: ShardedActivations,
                                heldout_tokens: int) -> dict:
    """Train the grid in float32 and in bf16 and check each SAE's FVU and L0 against the tolerances:
    {"passed", "tolerances", "saes": {name: {fvu/l0 per precision, relative changes}}, "worst"}."""
    runs = {precision: train_in(config, precision, train, heldout, heldout_tokens) for precision in PRECISIONS}
    tolerances = {"fvu_rel": config.precision.train_check.fvu_rel, "l0_rel": config.precision.train_check.l0_rel}
    saes, worst = {}, {"fvu_rel": 0.0, "l0_rel": 0.0}
    for name, fp32 in runs["float32"].items():
        bf16 = runs["bfloat16"][name]
        changes = {key: abs(bf16[key] / fp32[key] - 1) if fp32[key] > 0 else abs(bf16[key] - fp32[key])
                   for key in ("fvu", "l0")}
        saes[name] = {"arch": fp32["arch"], "l1": fp32["l1"], "fvu_float32": fp32["fvu"], "fvu_bfloat16": bf16["fvu"],
                      "l0_float32": fp32["l0"], "l0_bfloat16": bf16["l0"],
                      "fvu_rel": changes["fvu"], "l0_rel": changes["l0"]}
        worst = {key: max(worst[key], changes[key.removesuffix("_rel")]) for key in worst}
    passed, measured = check(worst, tolerances)
    return {"passed": passed, "worst": measured, "saes": saes}
