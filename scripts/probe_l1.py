"""Probe which λ values give which L0: train a wide, short λ grid on one site's cached activations and
report held-out L0 and FVU per SAE. Used to choose the λ grids in conf/sweep/ (the JSON it writes is
the evidence); it reads the same conf/ as the pipeline.

    python scripts/probe_l1.py --site resid_post --layer 15 --l1 0.1,0.3,1,3,10 \
        experiment=default train.tokens=262144 train.batch_size=1024
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.plan.config import SAEGroupConfig, load_config
from gatedsae.training.precision_check import heldout_summary
from gatedsae.training.trainer import GridTrainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", required=True)
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--l1", required=True, help="comma-separated λ values, used for every group")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--out", default="results/calibration")
    args, overrides = parser.parse_known_args()

    config = load_config(overrides)
    l1 = [float(v) for v in args.l1.split(",")]
    config.sweep.groups = [SAEGroupConfig(g.arch, g.width_ratio, g.lr, l1) for g in config.sweep.groups]
    paths, model, corpus = config.paths, config.model.name, config.corpus.name
    directory = paths.activations_dir(model, corpus, args.site, args.layer)
    started = time.time()
    with tempfile.TemporaryDirectory() as scratch:
        trainer = GridTrainer(config, ActivationStore(directory, "train"), Path(scratch))
        trainer.run(progress=True)
    summary = heldout_summary(trainer, ActivationStore(directory, "heldout"), args.heldout_tokens)
    result = {
        "command": " ".join([sys.executable, *sys.argv]),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads()},
        "model": model, "site": args.site, "layer": args.layer,
        "train_tokens": trainer.step * config.train.batch_size, "batch_size": config.train.batch_size,
        "groups": [{"arch": g.arch, "width_ratio": g.width_ratio, "lr": g.lr} for g in config.sweep.groups],
        "seconds": round(time.time() - started, 1),
        "saes": summary,
    }
    out = Path(args.out) / f"{model}_{args.site}_layer{args.layer}.json"
    write_json_atomic(out, result)
    for name, row in summary.items():
        print(f"{name:40s} L0 {row['l0']:8.1f}  FVU {row['fvu']:.3f}")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
