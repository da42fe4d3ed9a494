"""Benchmark: activation caching vs a bare forward to the same layer; fp32 vs bf16 model weights.

    python scripts/bench_cache.py [--windows 256] [hydra overrides...]

Writes results/benchmarks/cache.json. `caching_overhead` = (time of a cache run) / (time of bare
forwards over the same windows) − 1 for the default configuration (the experiment's sites and layers,
its storage dtype and batch), with the model in float32.

The two are measured *paired*: inside each cache run, every batch's forward (hooks, BOS dropped, copies)
is preceded by a bare forward of the same tokens, so both see the same machine state; the rest of the
cache run (concatenation, statistics, np.save, sha256, fsync, journal) is timed as what remains. Timing
a bare run and a cache run minutes apart, as this script once did, measured the other jobs on a shared
machine as much as the cache: 10-13% "overhead" that a profiler placed uniformly in every op of the
model's forward, and that paired per-batch CPU times put at 1%.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gatedsae.activations.cache import cache_activations
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import machine
from gatedsae.data.corpus import load_windows
from gatedsae.data.models import load_model
from gatedsae.plan.config import REPO_ROOT, load_config


def bare_forward(model, windows: np.ndarray, batch: int, stop_at: int) -> float:
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            model(torch.from_numpy(np.asarray(windows[start : start + batch], dtype=np.int64)), stop_at_layer=stop_at)
    return time.perf_counter() - started


def paired_cache_run(config, loaded, scratch: Path) -> dict:
    """One cache run in which every batch's forward is preceded by a bare forward of the same tokens.
    Returns wall and CPU seconds of the bare forwards, of the cache's forwards, and of the rest of the run."""
    import gatedsae.activations.cache as activations

    cache_forward, pairs = activations._forward, []

    def paired(model, tokens, keys, stop_at):
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            model(tokens, stop_at_layer=stop_at)
        middle = time.perf_counter(), time.process_time()
        outputs = list(cache_forward(model, tokens, keys, stop_at))
        pairs.append({"bare": (middle[0] - wall, middle[1] - cpu),
                      "cached": (time.perf_counter() - middle[0], time.process_time() - middle[1])})
        return iter(outputs)

    activations._forward = paired
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        cached_forward(config, loaded, scratch)
        total = (time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        activations._forward = cache_forward
    result = {}
    for clock, k in (("wall", 0), ("cpu", 1)):
        bare = sum(p["bare"][k] for p in pairs)
        cached = sum(p["cached"][k] for p in pairs)
        result[clock] = {"bare_seconds": bare, "cache_forward_seconds": cached,
                         "rest_of_cache_run_seconds": total[k] - bare - cached,
                         "caching_overhead": (total[k] - bare) / bare - 1,
                         "per_batch_forward_ratio_median": float(np.median([p["cached"][k] / p["bare"][k]
                                                                            for p in pairs]))}
    result["batches"] = len(pairs)
    return result


def cached_forward(config, loaded, scratch: Path) -> float:
    shutil.rmtree(scratch, ignore_errors=True)
    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    (scratch / tokens_dir.relative_to(config.paths.root)).parent.mkdir(parents=True)
    (scratch / tokens_dir.relative_to(config.paths.root)).symlink_to(tokens_dir.resolve())
    local = replace(config, paths=replace(config.paths, data=str(scratch)))
    started = time.perf_counter()
    cache_activations(local, loaded=loaded)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=256, help="context windows per timed run")
    parser.add_argument("--repeats", type=int, default=2, help="paired cache runs (the median counts)")
    parser.add_argument("--bf16-windows", type=int, default=16, help="windows for the bf16-weights comparison")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "cache.json"))
    args, overrides = parser.parse_known_args()

    base = load_config(["experiment=default", *overrides])
    per_shard = base.cache.shard_sequences
    windows_total = max(per_shard, args.windows // per_shard * per_shard)
    positions = base.experiment.context_length - 1
    # Cache exactly `windows_total` training windows and one held-out shard.
    base.cache.train_tokens = windows_total * positions
    base.cache.heldout_tokens = 1
    windows = load_windows(base.paths.tokens_dir(base.model.name, base.corpus.name), "train")[:windows_total]
    stop_at = max(base.experiment.layers) + 1
    heldout_windows = per_shard

    # Caching vs bare forward, float32 weights (the default): the same batches, paired (see the docstring).
    loaded = load_model(base.model, base.paths)
    batch = base.cache.batch_sequences
    bare_forward(loaded.model, windows[:batch], batch, stop_at)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        runs = [paired_cache_run(base, loaded, Path(tmp) / "store") for _ in range(args.repeats)]
    tokens = (windows_total + heldout_windows) * positions
    median = lambda clock, key: float(np.median([r[clock][key] for r in runs]))  # noqa: E731
    bare_seconds, overhead = median("wall", "bare_seconds"), median("wall", "caching_overhead")
    float32 = {"tokens": tokens, "batches": runs[0]["batches"],
               "bare_tokens_per_s": tokens / bare_seconds,
               "cached_tokens_per_s": tokens / (bare_seconds * (1 + overhead)),
               "caching_overhead": median("wall", "caching_overhead"),
               "caching_overhead_cpu_time": median("cpu", "caching_overhead"),
               "caching_overhead_runs": [r["wall"]["caching_overhead"] for r in runs],
               "runs": runs}
    print("float32", json.dumps(float32), file=sys.stderr)

    # bf16 weights: speed of a bare forward on a few windows, and the quality cost in log-probs.
    probe = windows[: args.bf16_windows]
    probe_tokens = torch.from_numpy(np.asarray(probe, dtype=np.int64))
    speed, logprobs = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = loaded.model if dtype == "float32" else load_model(replace(base.model, dtype=dtype), base.paths).model
        bare_forward(model, probe[:1], batch, stop_at)
        speed[dtype] = len(probe) * positions / bare_forward(model, probe, batch, stop_at)
        with torch.inference_mode():
            logprobs[dtype] = model(probe_tokens).float().log_softmax(-1)
    diff = (logprobs["bfloat16"] - logprobs["float32"]).abs()
    ce = {d: -lp[:, :-1].gather(-1, probe_tokens[:, 1:, None]).mean().item() for d, lp in logprobs.items()}
    report = {
        "benchmark": "activation caching",
        "command": "python scripts/bench_cache.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "model": base.model.name,
        "sites": base.experiment.sites,
        "layers": base.experiment.layers,
        "storage_dtype": base.cache.dtype,
        "batch_sequences": batch,
        "context_length": base.experiment.context_length,
        "caching_overhead": float32["caching_overhead"],
        "load_average": os.getloadavg(),
        "target_caching_overhead": 0.10,
        "float32": float32,
        "bf16_weights": {
            "bare_tokens_per_s_float32": speed["float32"],
            "bare_tokens_per_s_bfloat16": speed["bfloat16"],
            "bf16_speedup": speed["bfloat16"] / speed["float32"],
            "max_abs_logprob_diff": diff.max().item(),
            "mean_abs_logprob_diff": diff.mean().item(),
            "cross_entropy_float32": ce["float32"],
            "cross_entropy_bfloat16": ce["bfloat16"],
            "probe_tokens": int(probe_tokens.numel()),
        },
    }
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
