"""Peer benchmark: train ONE Gated SAE with sae-lens on our cached activations; report tokens/s and losses.

    /path/to/saelens-venv/bin/python scripts/bench_saelens_peer.py --store <activation store> \
        --tokens 40960 --width 2304 --l1 0.08 --lr 1e-3 --batch 4096 --out peer.json

Runs in a separate environment that has sae-lens (and torch, numpy) but not our package's dependencies,
so the store is read directly: manifest.json, then train/shard_XXXXX.npy (bfloat16 kept as uint16 bits).
Batches are drawn exactly as `gatedsae.activations.store.ActivationStore.batches(batch, seed, buffer_rows)`
draws them (same seeded shard order and mixing buffer), so with the same seed and buffer both trainers
see the same batches. Activations are scaled so E||x||² = 1 (x / sqrt(manifest mean_sq_norm["train"])).

Training is sae-lens's own: `GatedTrainingSAE` stepped by `SAETrainer.fit()` with an in-memory data
provider (Adam β=(0, 0.999), constant lr, no wandb, no checkpoints, no resampling). sae-lens's defaults
are kept where our trainer differs: its SAETrainer clips the gradient norm to 1.0; its Gated SAE does
not constrain decoder rows to unit norm (rows start at norm `--decoder-init-norm`, default 0.1, and the
L1 term is weighted by each row's norm); its auxiliary reconstruction also trains W_dec and b_dec.
Every batch is loaded before timing; one warm-up step runs before the clock starts.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import deque
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # no progress bar from SAETrainer.fit

import numpy as np
import sae_lens
import torch
from sae_lens.config import LoggingConfig, SAETrainerConfig
from sae_lens.saes.gated_sae import GatedTrainingSAE, GatedTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer


def read_shard(store: Path, record: dict, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(np.load(store / record["file"], mmap_mode="r")))
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


def load_batches(store: Path, n: int, batch: int, seed: int, buffer_rows: int) -> tuple[list[torch.Tensor], dict]:
    """The first `n` full float32 batches of ActivationStore.batches(batch, seed, buffer_rows) on the train split."""
    manifest = json.loads((store / "manifest.json").read_text())
    records = manifest["splits"]["train"]["shards"]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(records), generator=generator).tolist()
    buffer, batches = torch.empty(0, manifest["d"]), []

    def emit(rows: torch.Tensor) -> None:
        batches.extend(b for b in rows.split(batch) if len(b) == batch and len(batches) < n)

    for index in order:
        buffer = torch.cat([buffer, read_shard(store, records[index], manifest["dtype"]).float()])
        while len(buffer) >= buffer_rows and len(batches) < n:
            buffer = buffer[torch.randperm(len(buffer), generator=generator)]
            size = (len(buffer) // 2 // batch) * batch or batch
            emit(buffer[:size])
            buffer = buffer[size:]
        if len(batches) >= n:
            break
    else:
        emit(buffer[torch.randperm(len(buffer), generator=generator)])
    if len(batches) < n:
        raise SystemExit(f"{store} has only {len(batches)} full batches of {batch} in its train split; {n} needed")
    scale = 1.0 / math.sqrt(manifest["mean_sq_norm"]["train"])
    mean = torch.tensor(manifest["mean"]["train"]) * scale
    return [b * scale for b in batches], {"scale": scale, "mean": mean, "d": manifest["d"]}


class RecordingTrainer(SAETrainer):
    """SAETrainer that keeps the outputs of its last few steps (losses, input, reconstruction, features)."""

    def __init__(self, *args, keep: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.recent = deque(maxlen=keep)

    def step(self, batch: torch.Tensor):
        output = super().step(batch)
        self.recent.append(output)
        return output


def build(args, d: int, mean: torch.Tensor, steps: int, data) -> RecordingTrainer:
    sae = GatedTrainingSAE(GatedTrainingSAEConfig(
        d_in=d, d_sae=args.width, l1_coefficient=args.l1, l1_warm_up_steps=0,
        decoder_init_norm=args.decoder_init_norm, dtype="float32", device="cpu"))
    if args.b_dec_init == "mean":  # as our trainer: b_dec starts at the (scaled) data mean
        with torch.no_grad():
            sae.b_dec.copy_(mean)
    cfg = SAETrainerConfig(
        total_training_samples=steps * args.batch, train_batch_size_samples=args.batch, lr=args.lr,
        lr_end=args.lr / 10, lr_scheduler_name="constant", lr_warm_up_steps=args.lr_warm_up_steps,
        adam_beta1=0.0, adam_beta2=0.999,
        device="cpu", dead_feature_window=10**9, feature_sampling_window=10**9,
        logger=LoggingConfig(log_to_wandb=False))
    return RecordingTrainer(cfg, sae, data, keep=args.last)


@torch.no_grad()
def summarise(outputs, l1: float) -> dict:
    """Per-token means over the recorded steps: sae-lens's loss terms, our reconstruction term, L0."""
    mean = lambda values: float(np.mean([float(v) for v in values]))  # noqa: E731
    return {
        "final_losses": {
            "mse": mean(o.losses["mse_loss"] for o in outputs),
            "l1": mean(o.losses["l1_loss"] for o in outputs),
            "l1_over_lambda": mean(o.losses["l1_loss"] for o in outputs) / l1,
            "aux": mean(o.losses["auxiliary_reconstruction_loss"] for o in outputs),
            "total": mean(o.loss for o in outputs),
        },
        "mse_per_token_sum_over_d": mean((o.sae_in - o.sae_out).pow(2).sum(-1).mean() for o in outputs),
        "l0": mean((o.feature_acts > 0).float().sum(-1).mean() for o in outputs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, type=Path, help="one activation store (holds manifest.json)")
    parser.add_argument("--tokens", type=int, required=True, help="timed training tokens (rounded down to batches)")
    parser.add_argument("--width", type=int, required=True, help="SAE width (d_sae)")
    parser.add_argument("--l1", type=lambda s: float(s.strip("[] ")), required=True, help="L1 coefficient λ")
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0, help="batch-order seed and torch seed (ours: train.seed)")
    parser.add_argument("--buffer-rows", type=int, default=1 << 18, help="shuffle buffer (ours: train.buffer_rows)")
    parser.add_argument("--lr-warm-up-steps", type=int, default=0, help="sae-lens linear lr warm-up (ours: 20)")
    parser.add_argument("--decoder-init-norm", type=float, default=0.1, help="sae-lens default 0.1; ours: 1")
    parser.add_argument("--b-dec-init", choices=["mean", "zeros"], default="mean", help="ours: mean; sae-lens: zeros")
    parser.add_argument("--last", type=int, default=3, help="final losses averaged over this many last steps")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    steps = max(1, args.tokens // args.batch)
    started = time.perf_counter()
    batches, meta = load_batches(args.store, steps + 1, args.batch, args.seed, args.buffer_rows)
    load_seconds = time.perf_counter() - started

    trainer = build(args, meta["d"], meta["mean"], steps + 1, iter(batches[1:]))
    trainer.step(batches[0])  # warm-up step, untimed (as in our benchmark)
    trainer.n_training_steps += 1
    started, cpu_started = time.perf_counter(), time.process_time()
    trainer.fit()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started

    report = {
        "library": "sae-lens", "version": sae_lens.__version__, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "tokens": steps * args.batch, "steps": steps, "seconds": seconds,
        "tokens_per_s": steps * args.batch / seconds, "load_seconds": load_seconds, "cpu_seconds": cpu_seconds,
        "tokens_per_cpu_s": steps * args.batch / cpu_seconds,
        **summarise(list(trainer.recent), args.l1),
        "config": {"class": "sae_lens.saes.gated_sae.GatedTrainingSAE", "trainer": "sae_lens.SAETrainer.fit",
                   "d_in": meta["d"], "d_sae": args.width, "l1_coefficient": args.l1, "lr": args.lr,
                   "batch": args.batch, "adam_betas": [0.0, 0.999], "lr_warm_up_steps": args.lr_warm_up_steps,
                   "decoder_init_norm": args.decoder_init_norm, "b_dec_init": args.b_dec_init,
                   "grad_clip_norm": 1.0, "activation_scale": meta["scale"], "seed": args.seed,
                   "buffer_rows": args.buffer_rows, "store": str(args.store)},
        "notes": ("Timed: SAETrainer.fit over batches held in memory, after one untimed warm-up step; load_seconds "
                  "is reading and shuffling them. Losses are per-token means over the last "
                  f"{len(trainer.recent)} steps, as computed in each step's forward (before its update). mse = ours "
                  "'reconstruction' (||x - x_hat||^2 summed over d); l1 = lambda * sum_i ReLU(pi_gate)_i ||W_dec_i|| "
                  "(ours: lambda * 'sparsity', rows at unit norm); aux = ours 'auxiliary', but sae-lens also "
                  "trains W_dec, b_dec through it. sae-lens keeps no unit-norm decoder constraint and clips "
                  "gradients to norm 1."),
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
