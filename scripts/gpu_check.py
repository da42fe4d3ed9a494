"""Check the GPU path end to end and measure it: cache, train and evaluate on the device chosen in
conf/ (cache.device, train.device, evaluate.device), with bf16 autocast for the SAEs on CUDA.

    bash scripts/gpu_check.sh                     # CUDA if available, else a degraded CPU run
    python scripts/gpu_check.py --models tiny,smollm2-135m --out results/benchmarks/gpu.json

For each model (the tiny random one always; an embedded one if prepared in data/models/): caching
tokens/s, training SAE-tokens/s and achieved FLOP/s against a matmul of the same shape and dtype, the
same training in stream mode (its speed relative to training from the store), and evaluation tokens/s; all in one run on one machine. Without a GPU the same code runs on the CPU and the
JSON says `degraded: true`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import step_flops  # noqa: E402

from gatedsae.activations.cache import cache_activations
from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import machine
from gatedsae.data.models import is_prepared, load_model
from gatedsae.evaluation.evaluate import CheckpointSAE, evaluate_saes
from gatedsae.plan.architectures import PROPOSED
from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.grid import grid_specs
from gatedsae.plan.identity import training_key
from gatedsae.training.stages import export_checkpoints
from gatedsae.training.trainer import GridTrainer

EXPERIMENTS = {"tiny": "experiment=smoke", "smollm2-135m": "experiment=default", "gemma3-270m": "experiment=gemma3"}


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_tflops(rows: int, d: int, width: int, dtype: torch.dtype, device: str, repeats: int = 20) -> float:
    a = torch.randn(rows, d, device=device, dtype=dtype)
    b = torch.randn(d, width, device=device, dtype=dtype)
    a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * rows * d * width * repeats / (time.perf_counter() - started) / 1e12


def check_model(name: str, device: str, data: Path, source_data: Path, train_steps: int) -> dict:
    cuda = device.startswith("cuda")
    overrides = [EXPERIMENTS[name], f"paths.data={data}", f"cache.device={device}", f"train.device={device}",
                 f"evaluate.device={device}", f"train.autocast_bf16={cuda}", "experiment.sites=[resid_post]",
                 "sweep.rescale_shift=false",
                 "train.sparse=never"]  # dense steps, whose FLOPs step_flops counts (on GPUs auto is dense too)
    if name != "tiny":
        overrides += ["cache.train_tokens=40000", "cache.heldout_tokens=8000", "evaluate.ce_windows=8",
                      "train.batch_size=4096"]
    config = load_config(overrides)
    site, layer = "resid_post", config.experiment.layers[0]
    _link_inputs(config, source_data, data)

    loaded = load_model(config.model, config.paths, device)
    synchronize(device)
    started = time.perf_counter()
    cache_activations(config, loaded=loaded)
    synchronize(device)
    cache_seconds = time.perf_counter() - started
    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "train")
    heldout = ActivationStore(store.directory, "heldout")
    cached_tokens = len(store) + len(heldout)

    out_dir = config.paths.checkpoints_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
    config = replace(config, train=replace(config.train.every_site(train_steps * config.train.batch_size),
                                           checkpoint_every_steps=10**9))
    trainer = GridTrainer(config, store, out_dir)
    x = next(iter(store.batches(config.train.batch_size, seed=0, buffer_rows=config.train.buffer_rows)))
    flops = step_flops(trainer, x.to(device, torch.float32) * trainer.scale, sparse=False)  # the dense matmul count
    trainer.run(progress=False, stop_after=1)  # warm-up
    synchronize(device)
    started = time.perf_counter()
    trainer.run(progress=False)
    synchronize(device)
    train_seconds = time.perf_counter() - started
    timed_steps = trainer.step - 1
    keys = {spec.name: training_key(config, site, spec) for spec in grid_specs(config, store.d, site)}
    export_checkpoints(trainer, site, layer, out_dir, keys)
    gated = next(g for g in config.sweep.groups_at(site) if g.arch == PROPOSED)
    dtype = torch.bfloat16 if cuda else torch.float32
    peak = matmul_tflops(config.train.batch_size, store.d, gated.width(store.d), dtype, device)

    stream = _time_streamed_training(config, site, layer, loaded, out_dir.parent / "streamed")

    saes = [CheckpointSAE.load(out_dir / spec.name, device) for spec in trainer.specs]
    started = time.perf_counter()
    rows = evaluate_saes(config, site, layer, saes, loaded=loaded)
    synchronize(device)
    eval_seconds = time.perf_counter() - started
    achieved = flops * timed_steps / train_seconds / 1e12
    return {
        "model": config.model.name, "site": site, "layer": layer,
        "cache_tokens_per_s": cached_tokens / cache_seconds,
        "train": {"saes": len(trainer.specs), "batch_size": config.train.batch_size, "steps_timed": timed_steps,
                  "sae_tokens_per_s": timed_steps * config.train.batch_size * len(trainer.specs) / train_seconds,
                  "achieved_tflops": achieved, "matmul_tflops_same_shape": peak, "matmul_dtype": str(dtype),
                  "fraction_of_matmul_peak": achieved / peak, "autocast_bf16": cuda},
        "train_streamed": {**stream, "speed_vs_stored": stream["steps_per_s"] / (timed_steps / train_seconds)},
        "evaluate": {"saes": len(saes), "ce_tokens": rows[0]["ce_tokens"], "seconds": eval_seconds,
                     "sae_ce_tokens_per_s": rows[0]["ce_tokens"] * len(saes) / eval_seconds},
        "finite_metrics": all(all(isinstance(v, (int, float)) and v == v for k, v in row.items()
                                  if k in ("l0", "fvu", "loss_recovered", "gamma")) for row in rows),
    }


def _time_streamed_training(config, site: str, layer: int, loaded, out_dir: Path) -> dict:
    """The same grid trained in stream mode, the LM computing every shard as training reads it: timed
    from the first step (the shards kept from the statistics pass are dropped first, so each one
    training reads is computed inside the timed run)."""
    from gatedsae.activations.stream import streamed_splits

    config = replace(config, cache=replace(config.cache, mode="stream"))
    split = streamed_splits(config, [(site, layer)], loaded=loaded)[(site, layer)]
    trainer = GridTrainer(config, split, out_dir)  # reads the split once for its statistics
    split.source.drop_kept()
    forwards = split.source.forwards
    synchronize(config.train.device)
    started = time.perf_counter()
    trainer.run(progress=False)
    synchronize(config.train.device)
    seconds = time.perf_counter() - started
    return {"steps_timed": trainer.step, "steps_per_s": trainer.step / seconds,
            "rows_trained_on": trainer.step * config.train.batch_size,
            "rows_computed": (split.source.forwards - forwards) * split.source.rows_per_shard}


def _link_inputs(config, source_data: Path, data: Path) -> None:
    """The prepared model and the token windows, from the main data folder (or made for tiny)."""
    from gatedsae.data.corpus import fetch_corpus, tokenize_corpus

    if config.model.source == "random":
        fetch_corpus(config.corpus, config.paths)
        tokenize_corpus(config)
        return
    for part in (Path("models") / config.model.name, Path("tokens") / config.model.name / config.corpus.name):
        (data / part).parent.mkdir(parents=True, exist_ok=True)
        (data / part).symlink_to((source_data / part).resolve())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="tiny,smollm2-135m")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--data", default="data", help="where prepared models and token windows are")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "gpu.json"))
    args = parser.parse_args()
    source = Path(args.data)
    results, skipped = [], []
    for name in args.models.split(","):
        prepared = name == "tiny" or (is_prepared(source / "models" / name)
                                      and (source / "tokens" / name).exists())
        if not prepared:
            skipped.append(f"{name}: not prepared in {source} (run its experiment's prepare_model and tokenize first)")
            continue
        with tempfile.TemporaryDirectory() as scratch:
            results.append(check_model(name, args.device, Path(scratch), source, args.train_steps))
    result = {"command": " ".join([sys.executable, *sys.argv]), "machine": machine(), "device": args.device,
              "device_name": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
              "degraded": not args.device.startswith("cuda"), "models": results, "skipped": skipped}
    write_json_atomic(Path(args.out), result)
    print(json.dumps({r["model"]: {"cache tok/s": round(r["cache_tokens_per_s"]),
                                   "train SAE-tok/s": round(r["train"]["sae_tokens_per_s"]),
                                   "fraction_of_matmul_peak": round(r["train"]["fraction_of_matmul_peak"], 2)}
                      for r in results}))
    print(f"wrote {args.out}" + (" (degraded: no GPU, ran on the CPU)" if result["degraded"] else ""))
    if not all(r["finite_metrics"] for r in results):
        sys.exit("non-finite metrics on the device path")


if __name__ == "__main__":
    main()
