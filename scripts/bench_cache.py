"""Benchmark: activation caching vs a bare forward to the same layer, in float32 and in the precision
`precision.cache=auto` chooses on this machine (bf16 where it is native and passes the cache's gate).

    python scripts/bench_cache.py [--windows 256] [--repeats 2] [hydra overrides...]

Writes results/benchmarks/cache.json. `caching_overhead` = (time of a cache run) / (time of bare
forwards over the same windows, in the same precision) − 1 for the default configuration (the
experiment's sites and layers, its storage dtype and batch). `auto_speedup` = wall time of the float32
cache run / that of the automatic one, the two run one after the other in each repetition (median over
repetitions); the automatic run's gate (relative error of the cached activations) is recorded as its
stores' manifests record it.

The two are measured *paired*: inside each cache run, every batch's forward (hooks, BOS dropped, copies)
is preceded by a bare forward of the same tokens, so both see the same machine state; the rest of the
cache run (concatenation, statistics, np.save, sha256, fsync, journal) is timed as what remains. Timing
a bare run and a cache run minutes apart, as this script once did, measured the other jobs on a shared
machine as much as the cache: 10-13% "overhead" that a profiler placed uniformly in every op of the
model's forward, and that paired per-batch CPU times put at 1%.
"""

from __future__ import annotations

import argparse
import contextlib
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


def bare_forward(model, windows: np.ndarray, batch: int, stop_at: int) -> float:  # float32
    started = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(windows), batch):
            model(torch.from_numpy(np.asarray(windows[start : start + batch], dtype=np.int64)), stop_at_layer=stop_at)
    return time.perf_counter() - started


def paired_cache_run(config, loaded, scratch: Path) -> dict:
    """One cache run in which every batch's forward is preceded by a bare forward of the same tokens.
    Returns wall and CPU seconds of the bare forwards, of the cache's forwards, and of the rest of the run."""
    import gatedsae.activations.cache as activations

    cache_forward, pairs = activations.forward_at_sites, []

    def paired(model, tokens, keys, stop_at, precision=None, float32_positions=0, prefix=None):
        wall, cpu = time.perf_counter(), time.process_time()
        with torch.inference_mode(), contextlib.nullcontext() if precision is None else precision.autocast():
            model(tokens, stop_at_layer=stop_at)  # the cache holds the matrices in bf16 under bf16
        middle = time.perf_counter(), time.process_time()
        outputs = list(cache_forward(model, tokens, keys, stop_at, precision, float32_positions, prefix))
        pairs.append({"bare": (middle[0] - wall, middle[1] - cpu),
                      "cached": (time.perf_counter() - middle[0], time.process_time() - middle[1])})
        return iter(outputs)

    gate = activations.cache_precision

    def unpaired_gate(*args, **kwargs):  # the precision's fidelity gate counts in the run's rest, unpaired
        activations.forward_at_sites = cache_forward
        try:
            return gate(*args, **kwargs)
        finally:
            activations.forward_at_sites = paired

    activations.forward_at_sites, activations.cache_precision = paired, unpaired_gate
    try:
        wall, cpu = time.perf_counter(), time.process_time()
        cached_forward(config, loaded, scratch)
        total = (time.perf_counter() - wall, time.process_time() - cpu)
    finally:
        activations.forward_at_sites, activations.cache_precision = cache_forward, gate
    manifest = next((scratch / "activations").rglob("manifest.json"))
    result = {"wall_seconds": total[0], "precision": json.loads(manifest.read_text())["precision"]}
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
    sites = list(base.activation_dirs())  # (site, layer): each site at its own layers
    stop_at = max(layer for _, layer in sites) + 1
    heldout_windows = per_shard

    # Caching vs bare forward in the same precision, paired (see the docstring); float32 and automatic
    # runs one after the other in each repetition.
    loaded = load_model(base.model, base.paths)
    batch = base.cache.batch_sequences
    bare_forward(loaded.model, windows[:batch], batch, stop_at)  # warm-up
    settings = ("float32", "auto")
    runs: dict[str, list[dict]] = {setting: [] for setting in settings}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for setting in settings:
                config = replace(base, precision=replace(base.precision, cache=setting))
                runs[setting].append(paired_cache_run(config, loaded, Path(tmp) / "store"))
                print(setting, json.dumps(runs[setting][-1]["wall"]), file=sys.stderr, flush=True)
    tokens = (windows_total + heldout_windows) * positions

    def figures(setting: str) -> dict:
        median = lambda clock, key: float(np.median([r[clock][key] for r in runs[setting]]))  # noqa: E731
        bare_seconds, overhead = median("wall", "bare_seconds"), median("wall", "caching_overhead")
        return {"tokens": tokens, "batches": runs[setting][0]["batches"],
                "precision": runs[setting][-1]["precision"],
                "bare_tokens_per_s": tokens / bare_seconds,
                "cached_tokens_per_s": tokens / (bare_seconds * (1 + overhead)),
                "caching_overhead": overhead,
                "caching_overhead_cpu_time": median("cpu", "caching_overhead"),
                "caching_overhead_runs": [r["wall"]["caching_overhead"] for r in runs[setting]],
                "runs": runs[setting]}

    speedups = [f["wall_seconds"] / a["wall_seconds"] for f, a in zip(runs["float32"], runs["auto"])]
    report = {
        "benchmark": "activation caching",
        "command": "python scripts/bench_cache.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "model": base.model.name,
        "sites": base.experiment.sites,
        "layers": base.experiment.layers,
        "site_layers": [[site, layer] for site, layer in sites],
        "storage_dtype": base.cache.dtype,
        "batch_sequences": batch,
        "context_length": base.experiment.context_length,
        "repeats": args.repeats,
        "caching_overhead": figures("auto")["caching_overhead"],
        "auto_precision": runs["auto"][-1]["precision"]["dtype"],
        "cache_float32_positions": base.precision.cache_float32_positions,
        "auto_speedup": {"median": float(np.median(speedups)), "min": min(speedups), "max": max(speedups),
                         "each": speedups},
        "load_average": os.getloadavg(),
        "target_caching_overhead": 0.10,
        "float32": figures("float32"),
        "auto": figures("auto"),
    }
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
