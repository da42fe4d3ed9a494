"""Check: does training in bf16 (precision.train) reach float32 training's FVU and L0 on the embedded model?

    python scripts/check_train_precision.py [--steps 100] [--site resid_post] [hydra overrides...]

Trains the sweep's first Gated and first baseline group at the site (the two middle λ of each, every
training seed of the configuration) twice on the site's cached activations, same seeds and batches: with
the encoder's product
in float32 and in bf16 (training/precision_check.py). Then compares each SAE's held-out FVU and L0
against precision.train_check's tolerances (conf/precision/). Writes results/benchmarks/train_precision.json
with the machine (its CPU flags and torch's kernel level) and the command. Exits 1 when a tolerance fails.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import choose, machine
from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.training.precision_check import check_groups, compare_training_precisions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--site", default="resid_post")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "train_precision.json"))
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    groups = check_groups(config, args.site)
    config = replace(config, sweep=replace(config.sweep, groups=groups),
                     train=config.train.every_site(args.steps * config.train.batch_size))
    layer = config.experiment.layers[0]
    directory = config.paths.activations_dir(config.model.name, config.corpus.name, args.site, layer)
    started = time.time()
    report = compare_training_precisions(config, ActivationStore(directory, "train"),
                                         ActivationStore(directory, "heldout"), args.heldout_tokens)
    result = {
        "check": "bf16 training (the encoder's product) against float32 training: held-out FVU and L0 per SAE",
        "command": "python scripts/check_train_precision.py " + " ".join(
            re.sub(r"^paths\.data=.*", "paths.data=<data folder>", arg) for arg in sys.argv[1:]),
        "machine": machine(), "auto_resolves_to": choose("train", "auto").dtype,
        "model": config.model.name, "site": args.site, "layer": layer, "steps": args.steps,
        "batch_size": config.train.batch_size, "seeds": config.train.seed_values,
        "groups": [{"arch": g.arch, "width": g.width(config.model.site_width(args.site)), "l1": g.l1} for g in groups],
        "heldout_tokens": args.heldout_tokens, "seconds": round(time.time() - started, 1), **report,
    }
    write_json_atomic(Path(args.out), result)
    worst = report["worst"]
    print(f"bf16 vs float32 training: worst |ΔFVU|/FVU {worst['fvu_rel']['value']:.4f} "
          f"(tolerance {worst['fvu_rel']['tolerance']}), worst |ΔL0|/L0 {worst['l0_rel']['value']:.4f} "
          f"(tolerance {worst['l0_rel']['tolerance']}): {'passed' if report['passed'] else 'FAILED'}; wrote {args.out}")
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()
