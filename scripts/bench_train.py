"""Benchmark: grid-trainer throughput on the default model's cached activations.

    python scripts/bench_train.py [--steps 12] [--peer-python /path/to/saelens-venv/bin/python]

Measures, in one run on one machine: SAE-tokens/s (tokens × SAEs per second) for one Gated SAE and
for the default grid; achieved GFLOP/s (FLOPs counted by torch's FlopCounterMode on a real step)
against a batched matmul of the same shape and dtype; and, when a sae-lens environment is given,
the same Gated configuration trained by sae-lens on the same activations (scripts/bench_saelens_peer.py)
as a ratio. Writes results/benchmarks/train.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_cache import machine  # noqa: E402

from gatedsae.activations import ActivationStore  # noqa: E402
from gatedsae.atomic import write_json_atomic  # noqa: E402
from gatedsae.config import REPO_ROOT, SAEGroupConfig, SweepConfig, load_config  # noqa: E402
from gatedsae.train import GridTrainer, TrainingBatches  # noqa: E402


def step_flops(trainer: GridTrainer, x: torch.Tensor) -> int:
    """FLOPs of one training step of every SAE of the trainer (forward and backward), counted by torch."""
    with FlopCounterMode(display=False) as counter:
        for module in trainer.modules:
            module(x).total.sum().backward()
            module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def timed_training(config, store: ActivationStore, steps: int) -> dict:
    """Time `steps` training steps (after one warm-up step) on batches loaded beforehand, as the
    sae-lens peer does: the step alone (forward, backward, decoder constraint, Adam, activity
    bookkeeping), not the data pipeline."""
    with tempfile.TemporaryDirectory() as out:
        trainer = GridTrainer(config, store, Path(out))
        trainer.steps = steps + 1
        batches = [x.float() * trainer.scale for x in itertools.islice(TrainingBatches(store, trainer.train), steps + 1)]
        flops = step_flops(trainer, batches[0])
        trainer._init_decoder_bias()
        trainer._train_step(batches[0])  # warm-up
        trainer.step = 1
        started = time.perf_counter()
        for x in batches[1:]:
            trainer._train_step(x)
            trainer.step += 1
        seconds = time.perf_counter() - started
    n_saes = len(trainer.specs)
    tokens = steps * config.train.batch_size
    return {"saes": n_saes, "steps": steps, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "sae_tokens_per_s": tokens * n_saes / seconds,
            "flops_per_step": flops, "achieved_gflops": flops * steps / seconds / 1e9,
            "final_losses": trainer.last_losses}


def matmul_peak(batch: int, d: int, width: int, n: int = 1, repeats: int = 10) -> float:
    """GFLOP/s of the encoder-shaped batched matmul [n, batch, d] @ [n, d, width] in float32."""
    a, b = torch.randn(n, batch, d), torch.randn(n, d, width)
    torch.bmm(a, b)
    started = time.perf_counter()
    for _ in range(repeats):
        torch.bmm(a, b)
    return 2 * n * batch * d * width * repeats / (time.perf_counter() - started) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per measurement")
    parser.add_argument("--site", default="resid_post")
    parser.add_argument("--peer-python", default=None, help="python of a venv with sae-lens installed")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "train.json"))
    args, overrides = parser.parse_known_args()

    # Every row is kept (no outlier exclusion) so that sae-lens, which reads the store as it is, sees
    # exactly the same batches and scale.
    config = load_config(["experiment=default", "train.max_norm_ratio=null", *overrides])
    layer = config.experiment.layers[0]
    store_dir = config.paths.activations_dir(config.model.name, config.corpus.name, args.site, layer)
    store = ActivationStore(store_dir, "train")
    gated = next(g for g in config.sweep.groups if g.arch == "gated")
    single_group = SAEGroupConfig("gated", gated.width_ratio, gated.lr, [gated.l1[len(gated.l1) // 2]])
    single = timed_training(replace(config, sweep=SweepConfig("single", [single_group])), store, args.steps)
    grid = timed_training(config, store, args.steps)
    width = single_group.width(store.d)
    peak = matmul_peak(config.train.batch_size, store.d, width)

    report = {
        "benchmark": "SAE grid training",
        "command": "python scripts/bench_train.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "store": str(store_dir),
        "batch_size": config.train.batch_size,
        "single_gated": {**single, "width": width, "l1": single_group.l1[0]},
        "default_grid": {**grid, "groups": [{"arch": g.arch, "width": g.width(store.d), "l1": g.l1}
                                            for g in config.sweep.groups]},
        "grid_speedup_per_sae": grid["sae_tokens_per_s"] / single["sae_tokens_per_s"],
        "matmul_gflops_same_shape_fp32": peak,
        "fraction_of_matmul_peak": single["achieved_gflops"] / peak,
        "fraction_of_matmul_peak_grid": grid["achieved_gflops"] / peak,
        "target_fraction_of_matmul_peak": 0.5,
    }
    if args.peer_python:
        with tempfile.NamedTemporaryFile(suffix=".json") as peer_out:
            subprocess.run([args.peer_python, str(REPO_ROOT / "scripts" / "bench_saelens_peer.py"),
                            "--store", str(store_dir), "--tokens", str(single["tokens"]), "--width", str(width),
                            "--l1", str(single_group.l1[0]), "--lr", str(single_group.lr),
                            "--batch", str(config.train.batch_size), "--seed", str(config.train.seed),
                            "--buffer-rows", str(config.train.buffer_rows),
                            "--lr-warm-up-steps", str(config.train.lr_warmup_steps), "--out", peer_out.name],
                           check=True)
            peer = json.loads(Path(peer_out.name).read_text())
        report["sae_lens"] = peer
        report["ratio_vs_sae_lens"] = single["tokens_per_s"] / peer["tokens_per_s"]
        report["ratio_vs_sae_lens_grid_per_sae"] = grid["sae_tokens_per_s"] / peer["tokens_per_s"]
        report["target_ratio_vs_sae_lens"] = 5.0
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
