"""The density (L0 / width) above which a dense training step is faster than a step on the support, in
each precision the trainer can run in (`precision.train`: float32, or the encoder's product in bf16), at
the widths the default experiment trains. The evidence for `train.sparse_max_density`: the trainer steps
on the support only below it, so it must sit under the crossover of the precision the machine trains in.
Then, as a check in training itself, the first `--steps` steps of the default's residual-stream Gated and
baseline groups (every λ and seed, the machine's precision) from a fresh start, once at each of
`--thresholds` (a group's steps take the same path at both once its density is under both).

    python scripts/bench_crossover.py --thresholds 0.2,0.1 paths.data=<data folder>

Reads the default experiment's residual-stream store when it exists (else synthetic activations of the
same width), and writes results/benchmarks/train_crossover.json. Each point is the fastest of three
steps of each kind; run it alone on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from bench_train import crossover, synthetic_store, with_precision

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import choose, machine
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import REPO_ROOT, SweepConfig, load_config
from gatedsae.plan.layout import MANIFEST
from gatedsae.training.trainer import GridTrainer, TrainingBatches

DENSITIES = [0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3]


def group_name(group, d: int) -> str:
    """'<arch>_w<width>': how the file names a group of the sweep."""
    return f"{group.arch}_w{int(group.width_ratio * d)}"


def default_widths(config, d: int) -> dict[str, int]:
    """The width of every Gated and baseline group of the default sweep, by `group_name`."""
    return {group_name(group, d): int(group.width_ratio * d)
            for group in config.sweep.groups if group.arch in (PROPOSED, BASELINE)}


def trained_steps(config, store, group, steps: int, threshold: float) -> dict:
    """Wall seconds of the first `steps` steps of one sweep group trained alone at `threshold`."""
    config = replace(config, sweep=SweepConfig("one", [group]),
                     train=replace(config.train, sparse_max_density=threshold, log_every_steps=0))
    with tempfile.TemporaryDirectory() as out:
        trainer = GridTrainer(config, store, Path(out))
        trainer.save_state = lambda: None  # timing the steps, not the checkpoints
        trainer.start()
        started = time.perf_counter()
        for _ in range(steps):
            trainer.advance()
        seconds = time.perf_counter() - started
    l0 = [losses["l0"] for losses in trainer.last_losses.values()]
    return {"threshold": threshold, "seconds": seconds, "sparse_steps": trainer.sparse_steps[0],
            "mean_density_last_step": sum(l0) / len(l0) / trainer.modules[0].width}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--thresholds", default="0.2,0.1", help="train.sparse_max_density values to train at")
    parser.add_argument("--steps", type=int, default=150, help="training steps per group and threshold")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "train_crossover.json"))
    args, overrides = parser.parse_known_args()
    load_before = os.getloadavg()
    default = load_config(["experiment=default", *overrides])
    config = replace(default, train=replace(default.train, seeds=1))
    store_dir = config.paths.activations_dir(config.model.name, config.corpus.name, "resid_post",
                                             config.experiment.layers[0])
    scratch = tempfile.TemporaryDirectory()
    data = f"real: {store_dir}"
    if not (store_dir / MANIFEST).exists():
        data = f"synthetic (no {store_dir / MANIFEST})"
        store_dir = synthetic_store(Path(scratch.name) / "store", config.model.site_width("resid_post"), 65536)
    store = ActivationStore(store_dir, "train")
    scale = GridTrainer(config, store, Path(scratch.name) / "scale").scale
    x = next(iter(TrainingBatches(store, config.train))).float() * scale
    widths = default_widths(config, store.d)
    measured = {}
    for precision in ("float32", "bfloat16"):
        print(f"precision.train={precision}", flush=True)
        measured[precision] = crossover(with_precision(config, precision), store, x, widths, DENSITIES)
    thresholds = [float(value) for value in args.thresholds.split(",")]
    training = {}
    residual_groups = [g for g in default.sweep.groups if not g.sites or "resid_post" in g.sites]
    for group in residual_groups[:2]:  # the Gated group and its compute-matched baseline
        name = group_name(group, store.d)
        print(f"training {name} at thresholds {thresholds}", flush=True)
        runs = [trained_steps(default, store, group, args.steps, threshold) for threshold in thresholds]
        training[name] = {"saes": len(group.l1) * default.train.seeds, "runs": runs,
                          "seconds_ratio_first_over_last": runs[0]["seconds"] / runs[-1]["seconds"]}
    crossings = {precision: [v["crossover_density"] for v in by_width.values() if v["crossover_density"] is not None]
                 for precision, by_width in measured.items()}
    report = {
        "benchmark": "density above which a dense training step beats a step on the support, per precision",
        "command": "python scripts/bench_crossover.py " + " ".join(
            re.sub(r"^paths\.data=.*", "paths.data=<data folder>", arg) for arg in sys.argv[1:]),
        "machine": machine(), "precision_train_auto": choose("train", "auto").provenance(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "data": data, "d": store.d, "batch_size": config.train.batch_size, "threads": torch.get_num_threads(),
        "how_measured": ("one SAE per width (the default's groups), its code set to each density with log-normal "
                         "feature rates (σ 0.5); per point the fastest of 3 steps of each kind; the crossover "
                         "interpolated linearly where dense first becomes faster"),
        "crossover": measured,
        "crossover_min": {precision: min(values) if values else None for precision, values in crossings.items()},
        "train_sparse_max_density": config.train.sparse_max_density,
        "training": {"steps": args.steps, "thresholds": thresholds, "precision": choose("train", "auto").dtype,
                     "groups": training},
    }
    write_json_atomic(args.out, report)
    print({precision: report["crossover_min"][precision] for precision in measured},
          {name: round(entry["seconds_ratio_first_over_last"], 3) for name, entry in training.items()})


if __name__ == "__main__":
    main()
