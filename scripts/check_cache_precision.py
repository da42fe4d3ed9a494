"""Check: do SAEs trained on a bf16 LM forward's cache reach the SAEs trained on a float32 one?

    python scripts/check_cache_precision.py [--train-shards 4] [--steps 400] [hydra overrides...]

Caches the experiment's sites twice from the same token windows (`--train-shards` training shards and the
held-out shard), with precision.cache=float32 and =bfloat16, into a scratch data folder. Then, at every
site, trains the sweep's first Gated and first baseline group (the two middle λ of each, every training
seed of the configuration) on each cache, same seeds and batches, and once more on the float32 cache with
other training seeds; reads every SAE's FVU and L0 on the float32 cache's held-out rows
(training/precision_check.py). The check (precision.cache_check, conf/precision/): over every site's SAEs,
the bf16 cache must change FVU and L0 no more than another seed does (median relative changes). Beside it, how far the two caches' rows lie apart
(what the cache's start-up gate measures, activations/cache.py), and on a few held-out windows what
recomputing the first positions in float32 (precision.cache_float32_positions) removes of it. Writes results/benchmarks/cache_precision.json
with the machine (its CPU flags and torch's kernel level) and the command. Exits 1 when the check fails.
A forced bfloat16 runs anywhere; where bf16 is not native it is slow and says nothing about auto there.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from gatedsae.activations.cache import activation_difference, cache_activations, forward_at_sites, token_windows
from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import choose, machine
from gatedsae.data.lm_precision import matmul_weights
from gatedsae.data.models import load_model
from gatedsae.plan.config import REPO_ROOT, Config, load_config
from gatedsae.training.precision_check import PRECISIONS, cache_check_verdict, check_groups, compare_cache_precisions


def cache_in(config: Config, precision: str, scratch: Path, loaded) -> tuple[Config, float]:
    """The experiment's sites cached with precision.cache = `precision` into `scratch` (the token windows
    linked from the configured data folder); the configuration that reads them and the seconds it took."""
    tokens = config.paths.tokens_dir(config.model.name, config.corpus.name)
    linked = scratch / tokens.relative_to(config.paths.root)
    linked.parent.mkdir(parents=True)
    linked.symlink_to(tokens.resolve())
    local = replace(config, paths=replace(config.paths, data=str(scratch)),
                    precision=replace(config.precision, cache=precision))
    started = time.perf_counter()
    cache_activations(local, loaded=loaded)
    return local, time.perf_counter() - started


def stores_apart(reference: ActivationStore, other: ActivationStore, outlier_norm_ratio: float) -> dict[str, float]:
    """`activation_difference` over every training row of the two caches."""
    return activation_difference(torch.cat([reference.rows(i) for i in range(reference.n_shards)]),
                                 torch.cat([other.rows(i) for i in range(other.n_shards)]), outlier_norm_ratio)


def first_positions(config: Config, loaded, windows: int = 16) -> dict[str, dict[str, float]]:
    """What recomputing the first `precision.cache_float32_positions` positions in float32 does, on the
    first held-out windows: per site, the share of the bf16 forward's squared difference (over the rows
    SAEs train on) that those positions hold, and `activation_difference` without and with the recompute."""
    keys = list(config.activation_dirs())
    stop_at, k = max(layer for _, layer in keys) + 1, config.precision.cache_float32_positions
    _, split_windows, _ = token_windows(config)
    tokens = torch.from_numpy(np.asarray(split_windows["heldout"][:windows], dtype=np.int64))

    def forward(setting: str, positions: int = 0) -> dict:
        precision = choose("cache", setting, config.cache.device)
        with matmul_weights(loaded.model, precision):
            return dict(forward_at_sites(loaded.model, tokens, keys, stop_at, precision, positions))

    fp32, bf16, recomputed = forward("float32"), forward("bfloat16"), forward("bfloat16", k)
    positions = torch.arange(len(next(iter(fp32.values())))) % (tokens.shape[1] - 1) + 1
    report = {}
    for (site, layer), reference in fp32.items():
        norms = reference.norm(dim=-1)
        trained = norms <= config.cache.outlier_norm_ratio * norms.median()
        squared = ((bf16[(site, layer)] - reference) ** 2).sum(-1)[trained]
        report[f"{site}_layer{layer}"] = {
            "windows": windows, "float32_positions": k,
            "share_of_squared_difference_in_those_positions": float(squared[positions[trained] <= k].sum() / squared.sum()),
            "share_of_rows": float((positions[trained] <= k).float().mean()),
            "bf16": activation_difference(reference, bf16[(site, layer)], config.cache.outlier_norm_ratio),
            "bf16_those_positions_float32": activation_difference(reference, recomputed[(site, layer)],
                                                                  config.cache.outlier_norm_ratio)}
    return report


def _medians(judged: dict) -> str:
    return ", ".join(f"median |Δ{key.upper()}|/{key.upper()} by the cache {judged[key]['median_change_by_cache']:.4f}, "
                     f"by a seed {judged[key]['median_change_by_seed']:.4f}" for key in ("fvu", "l0"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-shards", type=int, default=4, help="training shards cached each way")
    parser.add_argument("--steps", type=int, default=400, help="training steps of every SAE (several passes "
                        "over the cached rows where they hold fewer than steps × train.batch_size)")
    parser.add_argument("--heldout-tokens", type=int, default=16384)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "cache_precision.json"))
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    positions = config.experiment.context_length - 1
    config.cache.train_tokens = args.train_shards * config.cache.shard_sequences * positions
    config.cache.heldout_tokens = args.heldout_tokens
    seed_ratio = config.precision.cache_check.seed_ratio
    started = time.time()
    loaded = load_model(config.model, config.paths, device=config.cache.device)
    recompute = first_positions(config, loaded)
    sites, seconds = {}, {}
    with tempfile.TemporaryDirectory() as scratch:
        caches = {}
        for precision in PRECISIONS:
            caches[precision], seconds[precision] = cache_in(config, precision, Path(scratch) / precision, loaded)
            print(f"cached in {precision}: {seconds[precision]:.0f} s", flush=True)
        for (site, layer), directory in caches["float32"].activation_dirs().items():
            trains = {p: ActivationStore(caches[p].activation_dirs()[(site, layer)], "train") for p in PRECISIONS}
            groups = check_groups(config, site)
            site_config = replace(config, sweep=replace(config.sweep, groups=groups),
                                  train=config.train.every_site(args.steps * config.train.batch_size))
            report = compare_cache_precisions(site_config, trains, ActivationStore(directory, "heldout"),
                                              args.heldout_tokens)
            judged = cache_check_verdict(list(report["saes"].values()), seed_ratio)
            sites[f"{site}_layer{layer}"] = {
                "site": site, "layer": layer,
                "activations": stores_apart(trains["float32"], trains["bfloat16"], config.cache.outlier_norm_ratio),
                "groups": [{"arch": g.arch, "width": g.width(config.model.site_width(site)), "l1": g.l1}
                           for g in groups],
                "this_site_alone": judged, **report}
            print(f"{site} layer {layer}: " + _medians(judged), flush=True)
    verdict = cache_check_verdict([sae for entry in sites.values() for sae in entry["saes"].values()], seed_ratio)
    passed = verdict["passed"]
    result = {
        "check": "SAEs trained on a bf16 LM forward's cache against SAEs trained on a float32 one: "
                 "held-out FVU and L0 per SAE, read on the float32 cache's held-out rows",
        "command": "python scripts/check_cache_precision.py " + " ".join(
            re.sub(r"^paths\.data=.*", "paths.data=<data folder>", arg) for arg in sys.argv[1:]),
        "machine": machine(), "auto_resolves_to_before_its_gate": choose("cache", "auto").dtype,
        "model": config.model.name, "train_rows": config.cache.train_tokens, "steps": args.steps,
        "batch_size": config.train.batch_size, "seeds": config.train.seed_values,
        "heldout_tokens": args.heldout_tokens, "cache_seconds": seconds,
        "rule": "precision.cache_check: over every site's SAEs, the median relative change of FVU (and of L0) "
                "from the float32 cache to the bf16 one at most seed_ratio × the median change from one training "
                "seed to another on the float32 cache",
        "verdict": verdict,
        "cache_float32_positions": config.precision.cache_float32_positions, "first_positions": recompute,
        "passed": passed, "seconds": round(time.time() - started, 1), "sites": sites,
    }
    write_json_atomic(Path(args.out), result)
    print(f"SAEs on a bf16 cache against a float32 one, all sites: {_medians(verdict)}: "
          f"{'passed' if passed else 'FAILED'}; wrote {args.out}")
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
