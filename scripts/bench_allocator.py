"""Benchmark: what keeping freed memory in the process (`resources.retain_freed_mib`,
`gatedsae.core.allocator`) does to a training step and to the spliced evaluation, against glibc's
default thresholds (`resources.retain_freed_mib=0`).

    python scripts/bench_allocator.py [--rounds 3] [--steps 3] [--windows 8]

The setting acts on the whole process, so every measurement is a fresh subprocess of this script (a
"leg") with one setting; the two settings alternate in each round, so both see the same machine state.
Each leg reports wall seconds, CPU seconds in the kernel and minor page faults per training step or per
SAE and CE window, its peak resident memory, and a sha256 of what it computed; the two settings must
compute the same bits.

- `train`: the default experiment's residual-stream Gated and baseline groups at their widths (every
  λ and seed), on synthetic activations of the model's width (`bench_train.synthetic_store`), from the
  prepared state `bench_train.py` uses (about `--l0` gates open per row, lr 0), with steps on the
  support (`train.sparse=always`) and dense steps (`never`); then three steps of real training from a
  fresh initialisation (lr as configured) whose parameters are hashed.
- `evaluate`: the spliced evaluation's per-SAE path (encode and decode a random Gated SAE of the sweep's
  width, the LM from the site on, the CE), the per-SAE path before `evaluation/lean_blocks.py` (commit
  e7a5009: `SplicedLM(..., lean=False)`, as `bench_eval.py` times it) and a plain full forward with its
  CE, in float32, on `--windows` held-out windows at each of the default's sites; the token losses of
  ours are hashed. `previous_then_over_ours_now`: the previous path with glibc's defaults (how it ran)
  over ours with the memory kept (how it runs now), per round. Needs the
  prepared model and the tokenized corpus (`make dry-run` lists the commands; the benchmark says which
  is missing).

Writes results/benchmarks/allocator.json (ratios taken inside each round: median, min and max).
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

SETTINGS = (0, 1024)  # resources.retain_freed_mib: glibc's defaults, and the configured default


def usage_now() -> tuple[float, float, int]:
    """(wall seconds, kernel CPU seconds, minor page faults) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return time.perf_counter(), usage.ru_stime, usage.ru_minflt


def per_unit(before: tuple, after: tuple, units: int) -> dict:
    return {"seconds": (after[0] - before[0]) / units, "kernel_seconds": (after[1] - before[1]) / units,
            "minor_faults": (after[2] - before[2]) / units}


def digest(tensors) -> str:
    hasher = hashlib.sha256()
    for tensor in tensors:
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def train_leg(config, steps: int, l0: float) -> dict:
    import torch
    from bench_train import prepared_trainer, synthetic_store

    from gatedsae.activations.store import ActivationStore
    from gatedsae.plan.architectures import BASELINE, PROPOSED
    from gatedsae.plan.config import SweepConfig
    from gatedsae.training.trainer import GridTrainer, TrainingBatches

    scratch = Path(tempfile.mkdtemp())
    d = config.model.site_width("resid_post")
    store = ActivationStore(synthetic_store(scratch / "store", d, 65536), "train")
    groups = {}  # the first Gated and baseline group trained at the residual stream: the compute-matched pair
    for group in config.sweep.groups:
        if group.arch in (PROPOSED, BASELINE) and (not group.sites or "resid_post" in group.sites):
            groups.setdefault(group.arch, group)
    per_step, saes, hashes = {}, {}, {}
    for arch, group in groups.items():
        sweep = replace(config, sweep=SweepConfig(arch, [group]))
        scale = GridTrainer(sweep, store, scratch / f"scale_{arch}")
        batches = [x.float() * scale.scale for x in itertools.islice(TrainingBatches(store, scale.train), steps + 1)]
        for mode in ("always", "never"):
            trainer = prepared_trainer(replace(sweep, train=replace(sweep.train, sparse=mode)), store,
                                       scratch / f"{arch}_{mode}", batches[0], l0)
            trainer.base_lrs = [0.0] * len(trainer.modules)
            trainer._train_step(batches[0])  # warm-up
            before = usage_now()
            for x in batches[1:]:
                trainer._train_step(x)
            per_step[f"{arch}_w{group.width(d)}_{'support' if mode == 'always' else 'dense'}"] = per_unit(
                before, usage_now(), steps)
        trainer = GridTrainer(replace(sweep, train=replace(sweep.train, log_every_steps=0)), store, scratch / f"{arch}_real")
        trainer.save_state = lambda: None
        trainer.start()
        for _ in range(3):
            trainer.advance()
        hashes[arch] = digest(p for module in trainer.modules for p in module.parameters())
        saes[f"{arch}_w{group.width(d)}_saes"] = len(trainer.specs)
    return {"per_step": per_step, "saes": saes, "sha256": hashes}


def evaluate_leg(config, windows: int) -> dict:
    import numpy as np
    import torch
    from bench_eval import RandomGated

    from gatedsae.data.corpus import load_windows
    from gatedsae.data.models import load_model
    from gatedsae.evaluation.spliced import SplicedLM, next_token_losses
    from gatedsae.plan.architectures import PROPOSED

    model = load_model(config.model, config.paths, "cpu").model
    heldout = load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "heldout")[:windows]
    batch = config.evaluate.batch_windows
    batches = [torch.from_numpy(np.asarray(heldout[s : s + batch], dtype=np.int64)) for s in range(0, len(heldout), batch)]
    out, losses = {}, []
    with torch.inference_mode():
        model(batches[0][:1])  # warm-up
        before = usage_now()
        for tokens in batches:
            losses.append(next_token_losses(model(tokens), tokens))
        out["full_forward"] = per_unit(before, usage_now(), windows)
        for site in config.experiment.sites:
            layer = config.experiment.layers_at(site)[0]
            d = config.model.site_width(site)
            sae = RandomGated(d, next(g for g in config.sweep.groups if g.arch == PROPOSED).width(d))
            for lean, name in ((True, "spliced"), (False, "previous")):
                spliced = SplicedLM(model, site, layer, lean=lean)
                prefixes = [spliced.prefix(tokens) for tokens in batches]
                spliced.token_losses(prefixes[0], sae.reconstruct(prefixes[0].activation))  # lays the matrices out
                before = usage_now()
                for prefix in prefixes:
                    result = spliced.token_losses(prefix, sae.reconstruct(prefix.activation))
                    if lean:
                        losses.append(result)
                out[f"{name}_{site}_layer{layer}"] = per_unit(before, usage_now(), windows)
    return {"per_window": out, "sha256": digest(losses)}


def run_leg(args, overrides: list[str]) -> None:
    import torch

    from gatedsae.core.allocator import retain_freed_memory
    from gatedsae.plan.config import load_config

    config = load_config(["experiment=default", "train.max_norm_ratio=null", f"resources.retain_freed_mib={args.retain}",
                          "precision.train=float32", "precision.evaluate=float32", *overrides])
    setting = retain_freed_memory(config.resources.retain_freed_mib)
    torch.set_num_threads(args.threads)
    result = train_leg(config, args.steps, args.l0) if args.leg == "train" else evaluate_leg(config, args.windows)
    result["allocator"] = setting.as_dict()
    result["max_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(result))


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per group and path")
    parser.add_argument("--l0", type=float, default=50.0, help="open gates per row in the prepared state")
    parser.add_argument("--windows", type=int, default=8, help="held-out windows timed per site")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--legs", default="train,evaluate")
    parser.add_argument("--leg", choices=("train", "evaluate"), help=argparse.SUPPRESS)
    parser.add_argument("--retain", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None)
    args, overrides = parser.parse_known_args()
    sys.path.insert(0, str(Path(__file__).parent))
    if args.leg:
        return run_leg(args, overrides)

    from gatedsae.core.atomic import write_json_atomic
    from gatedsae.core.precision import machine
    from gatedsae.plan.config import REPO_ROOT

    load_before = os.getloadavg()
    legs = args.legs.split(",")
    runs = {(leg, mib): [] for leg in legs for mib in SETTINGS}
    for round_index in range(args.rounds):
        for leg, mib in itertools.product(legs, SETTINGS):
            command = [sys.executable, __file__, "--leg", leg, "--retain", str(mib), "--steps", str(args.steps),
                       "--l0", str(args.l0), "--windows", str(args.windows), "--threads", str(args.threads), *overrides]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode:
                sys.exit(f"leg {leg} at retain_freed_mib={mib} failed:\n{done.stderr[-3000:]}")
            runs[(leg, mib)].append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"round {round_index + 1} of {args.rounds} done", file=sys.stderr, flush=True)
    default, retained = SETTINGS
    results = {}
    for leg in legs:
        key = "per_step" if leg == "train" else "per_window"
        parts = runs[(leg, retained)][0][key]
        results[leg] = {
            "parts": {part: {
                "seconds": {str(mib): summary([run[key][part]["seconds"] for run in runs[(leg, mib)]]) for mib in SETTINGS},
                "kernel_seconds": {str(mib): summary([run[key][part]["kernel_seconds"] for run in runs[(leg, mib)]])
                                   for mib in SETTINGS},
                "minor_faults": {str(mib): summary([run[key][part]["minor_faults"] for run in runs[(leg, mib)]])
                                 for mib in SETTINGS},
                "speedup": summary([a[key][part]["seconds"] / b[key][part]["seconds"]
                                    for a, b in zip(runs[(leg, default)], runs[(leg, retained)])]),
            } for part in parts},
            "max_rss_gib": {str(mib): summary([run["max_rss_gib"] for run in runs[(leg, mib)]]) for mib in SETTINGS},
            "identical": len({json.dumps(run["sha256"], sort_keys=True) for mib in SETTINGS for run in runs[(leg, mib)]}) == 1,
            "allocator": {str(mib): runs[(leg, mib)][0]["allocator"] for mib in SETTINGS},
        }
        if leg == "train":
            results[leg]["saes"] = runs[(leg, retained)][0]["saes"]
        else:  # the per-SAE path before lean_blocks (e7a5009) with glibc's defaults, against ours as it runs now
            results[leg]["previous_then_over_ours_now"] = {
                part[len("spliced_"):]: summary([a[key][f"previous_{part[len('spliced_'):]}"]["seconds"]
                                                 / b[key][part]["seconds"]
                                                 for a, b in zip(runs[(leg, default)], runs[(leg, retained)])])
                for part in parts if part.startswith("spliced_")}
    out = Path(args.out) if args.out else REPO_ROOT / "results" / "benchmarks" / "allocator.json"
    write_json_atomic(out, {
        "benchmark": "resources.retain_freed_mib: glibc's default thresholds (0) against the default (1024 MiB)",
        "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(),
        "load_average_before": list(load_before), "load_average_after": list(os.getloadavg()),
        "rounds": args.rounds, "steps": args.steps, "l0": args.l0, "windows": args.windows, "threads": args.threads,
        "settings": list(SETTINGS), "results": results,
        "note": "per training step (every SAE of the group) or per SAE and CE window; speedup = seconds at 0 / seconds "
                "at 1024 inside each round (median, min, max over rounds); each leg a fresh process",
    })
    print(json.dumps({leg: {part: round(v["speedup"]["median"], 2) for part, v in r["parts"].items()}
                      for leg, r in results.items()}))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
