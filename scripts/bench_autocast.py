"""Benchmark: the quality and speed cost of bf16 autocast in SAE training (fp32 master weights).

    python scripts/bench_autocast.py [--steps 120] [--l1 0.035,0.1] [hydra overrides...]

Trains the same Gated and baseline SAEs (same seed, same batches) twice on the default model's
cached residual-stream activations, once in fp32 and once with bf16 autocast, then compares held-out
L0, FVU and γ and the time per step. Decides whether `train.autocast_bf16` may be a default on this
machine. Writes results/benchmarks/autocast.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_l1 import heldout_summary  # noqa: E402

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import machine
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.training.trainer import GridTrainer

WARM_UP_STEPS = 3


def train_and_measure(config, directory: Path, heldout_tokens: int) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        trainer = GridTrainer(config, ActivationStore(directory, "train"), Path(scratch))
        trainer.run(progress=False, stop_after=WARM_UP_STEPS)  # not timed: first-call overheads
        started = time.perf_counter()
        trainer.run(progress=False)
        seconds = time.perf_counter() - started
    return {"seconds_per_step": seconds / (trainer.step - WARM_UP_STEPS),
            "saes": heldout_summary(trainer, ActivationStore(directory, "heldout"), heldout_tokens)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--l1", default="0.035,0.1")
    parser.add_argument("--site", default="resid_post")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "autocast.json"))
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    l1 = [float(v) for v in args.l1.split(",")]
    groups = [replace(g, l1=l1, sites=[]) for g in config.sweep.groups if g.arch in (PROPOSED, BASELINE)]
    config = replace(config, sweep=replace(config.sweep, groups=groups),
                     train=config.train.every_site(args.steps * config.train.batch_size))
    layer = config.experiment.layers[0]
    directory = config.paths.activations_dir(config.model.name, config.corpus.name, args.site, layer)
    runs = {}
    for name, bf16 in (("fp32", False), ("bf16_autocast", True)):
        runs[name] = train_and_measure(replace(config, train=replace(config.train, autocast_bf16=bf16)), directory,
                                       args.heldout_tokens)
    comparison = {}
    for sae, fp32 in runs["fp32"]["saes"].items():
        bf16 = runs["bf16_autocast"]["saes"][sae]
        comparison[sae] = {"fvu_fp32": fp32["fvu"], "fvu_bf16": bf16["fvu"],
                           "fvu_relative_change": bf16["fvu"] / fp32["fvu"] - 1,
                           "l0_fp32": fp32["l0"], "l0_bf16": bf16["l0"], "l0_relative_change": bf16["l0"] / fp32["l0"] - 1}
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "machine": machine(), "model": config.model.name,
        "site": args.site, "layer": layer, "steps": args.steps, "batch_size": config.train.batch_size,
        "speedup_bf16_vs_fp32": runs["fp32"]["seconds_per_step"] / runs["bf16_autocast"]["seconds_per_step"],
        "max_abs_fvu_relative_change": max(abs(c["fvu_relative_change"]) for c in comparison.values()),
        "saes": comparison, "runs": runs,
    }
    write_json_atomic(Path(args.out), result)
    print(f"bf16 speed-up {result['speedup_bf16_vs_fp32']:.2f}×, "
          f"max |ΔFVU|/FVU {result['max_abs_fvu_relative_change']:.3f}; wrote {args.out}")


if __name__ == "__main__":
    main()
