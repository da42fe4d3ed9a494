"""Benchmark: one training step of a sweep group, this code against an earlier commit's, in one run.

    python scripts/bench_step.py --before HEAD~1 --repeats 5
    python scripts/bench_step.py --before 141d47a --arch baseline --width-ratio 6 --l0 150

Each side runs in a process of its own with that side's src/ first on the path (the earlier commit's
from a clone at it, as scripts/bench_refactor.py makes them; `--after`'s default is this checkout's
working tree), the sides
alternating --repeats times so that both meet the same load. Each run builds one batched group of the
default's grid shape (its λ values, --width-ratio × d wide, 4 × 3 SAEs as the default's 3 seeds of 4 λ)
on synthetic activations, opens its gates to --l0 per row (scripts/bench_train.py's prepared state),
takes one untimed step and times --steps trainer steps (GridTrainer._train_step) at lr 0, so the support
stays where it was put. Reported: each side's seconds per step (wall and process CPU time; the CPU time
is the fairer figure on a shared machine), their ratio per round, and whether the two sides train to the
same bits: each also trains the group from its fresh initialisation for --steps steps at the group's lr
(GridTrainer.start, then .advance), and the two parameter sets are compared (identical, or their largest
relative difference). Writes results/benchmarks/step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gatedsae.plan.architectures import PROPOSED

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = REPO_ROOT / "results" / "benchmarks" / "step.json"


def child(args) -> None:
    """One side's measurement: prints a JSON line, saves the trained parameters to args.params."""
    import itertools
    from dataclasses import replace

    import torch

    import gatedsae
    from bench_train import prepared_trainer, synthetic_store, with_precision
    from gatedsae.activations.store import ActivationStore
    from gatedsae.core.allocator import retain_freed_memory
    from gatedsae.plan.config import SAEGroupConfig, SweepConfig, load_config
    from gatedsae.training.trainer import GridTrainer, TrainingBatches

    retain_freed_memory(1024)  # as the trainer's own process does (gatedsae.core.allocator)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    base = load_config(["experiment=default", "train.max_norm_ratio=null", "train.sparse=always",
                        "train.log_every_steps=0"])
    config = with_precision(base, "float32")
    group = SAEGroupConfig(args.arch, args.width_ratio, 1e-3, [float(v) for v in args.l1.split(",")])
    config = replace(config, sweep=SweepConfig(args.arch, [group]), train=replace(config.train, seeds=args.seeds))
    scratch = Path(tempfile.mkdtemp())
    store = ActivationStore(synthetic_store(scratch / "store", 576, 16384), "train")
    fresh = GridTrainer(config, store, scratch / "fresh")
    batches = [x.float() * fresh.scale for x in itertools.islice(TrainingBatches(store, fresh.train), args.steps + 1)]

    timed = prepared_trainer(config, store, scratch / "timed", batches[0], args.l0)
    timed.base_lrs = [0.0] * len(timed.modules)
    timed._train_step(batches[0])
    wall, cpu = time.perf_counter(), time.process_time()
    for x in batches[1:]:
        timed._train_step(x)
    wall, cpu = (time.perf_counter() - wall) / args.steps, (time.process_time() - cpu) / args.steps
    l0 = statistics.mean(v["l0"] for v in timed.last_losses.values())

    fresh.save_state = lambda: None  # nothing of this run is kept
    fresh.start()
    for _ in range(args.steps):
        fresh.advance()
    torch.save([p.detach().clone() for m in fresh.modules for p in m.parameters()], args.params)
    print(json.dumps({"seconds_per_step": wall, "cpu_seconds_per_step": cpu, "saes": len(timed.specs),
                      "l0": round(l0, 1), "gatedsae": str(Path(gatedsae.__file__).parents[1])}))


def run_side(src: Path, args, params: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--params", str(params), "--arch", args.arch,
               "--width-ratio", str(args.width_ratio), "--l1", args.l1, "--seeds", str(args.seeds),
               "--l0", str(args.l0), "--steps", str(args.steps), "--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), str(REPO_ROOT / "scripts")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"the run with {src} failed:\n{done.stderr[-4000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(measured["gatedsae"]).resolve() != src.resolve():
        raise SystemExit(f"the side meant to run {src} imported gatedsae from {measured['gatedsae']}")
    return measured


def compare(before: Path, after: Path) -> dict:
    import torch

    pairs = list(zip(torch.load(before), torch.load(after)))
    identical = all(torch.equal(a, b) for a, b in pairs)
    largest = max(float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in pairs)
    return {"identical_bits": identical, "largest_relative_difference": largest}


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", default="HEAD~1", help="the earlier commit")
    parser.add_argument("--after", default=None, help="a later commit (default: this checkout's working tree)")
    parser.add_argument("--arch", default=PROPOSED)
    parser.add_argument("--width-ratio", type=float, default=4.0)
    parser.add_argument("--l1", default="0.02,0.03,0.05,0.09", help="the group's λ values")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--l0", type=float, default=50.0, help="open gates per row in the timed state")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    from bench_refactor import clone_at, commit_of
    from gatedsae.core.atomic import write_json_atomic
    from gatedsae.core.precision import machine

    scratch = Path(tempfile.mkdtemp()).resolve()
    sides = {"before": clone_at(args.before, scratch / "before") / "src"}
    sides["after"] = clone_at(args.after, scratch / "after") / "src" if args.after else REPO_ROOT / "src"
    runs = {side: [] for side in sides}
    started = os.getloadavg()
    for _ in range(args.repeats):
        for side, src in sides.items():
            runs[side].append(run_side(src, args, scratch / f"{side}.pt"))
    load = [started, os.getloadavg()]
    ratio = [b["cpu_seconds_per_step"] / a["cpu_seconds_per_step"] for b, a in zip(runs["before"], runs["after"])]
    result = {
        "benchmark": "one training step of a sweep group: this code against an earlier commit's (scripts/bench_step.py)",
        "command": "python scripts/bench_step.py " + " ".join(sys.argv[1:]),
        "machine": machine(), "load_average_before_after": load,
        "code": {"before": commit_of(args.before),
                 "after": commit_of(args.after) if args.after else f"working tree on {commit_of('HEAD')}"},
        "group": {"arch": args.arch, "width_ratio": args.width_ratio, "l1": args.l1, "seeds": args.seeds,
                  "saes": runs["after"][0]["saes"], "l0": args.l0, "precision": "float32", "steps": args.steps},
        **{side: {"seconds_per_step": summary([r["seconds_per_step"] for r in measured]),
                  "cpu_seconds_per_step": summary([r["cpu_seconds_per_step"] for r in measured]),
                  "l0": measured[0]["l0"]} for side, measured in runs.items()},
        "speedup_cpu_time": summary(ratio),
        "same_training": compare(scratch / "before.pt", scratch / "after.pt"),
    }
    write_json_atomic(Path(args.out), result)
    print(json.dumps({k: result[k] for k in ("code", "speedup_cpu_time", "same_training")}, indent=1))


if __name__ == "__main__":
    main()
