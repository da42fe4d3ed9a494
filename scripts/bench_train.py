"""Benchmark: training throughput of our grid trainer, with steps on the support (sparse_step.py) and
dense steps, against sae-lens, at today's default widths and in the paper's regime.

    python scripts/bench_train.py [--steps 6] [--repeats 3] [--l0 50] \
        [--peer-python /path/to/saelens-venv/bin/python] [--synthetic] [hydra overrides...]

Configurations (d = the store's width; batch 1024 as in the default experiment):
  today         Gated width 1 × d and the compute-matched baseline 1.5 × d (the default sweep's widths)
  paper_regime  Gated width 4 × d, baseline 6 × d, and a group of six Gated λ trained together

Every run of ours starts from the same state: freshly initialised SAEs (b_dec at the data mean) whose
gate biases are set so that, on the first batch, about --l0 features per row are open, with per-feature
firing rates spread log-normally (trained SAEs' density histograms span decades); a code from
initialisation would be dense (half the gates open) and would take dense steps. Then one untimed
step and --steps timed trainer steps (GridTrainer._train_step: forward, backward, decoder projection,
Adam, activity bookkeeping) on batches loaded beforehand. Ours on the support (train.sparse=always), ours
dense (never) and sae-lens (scripts/bench_saelens_peer.py, its own initialisation: its dense step costs
the same whatever the code) run interleaved --repeats times; the report gives medians and (min, max).

Each of our runs is timed twice per round, with the encoder's product in float32 and in bf16
(precision.train; saes/encoder_product.py), all four (sparse/dense × float32/bf16) interleaved with the
peer. The crossover and the L0 sweep below are float32 runs.

Also measured: FLOPs executed per step (torch's FlopCounterMode; the sparse kernels counted as
2 · nnz · d each), the time of the dense encoder matmul alone (same shape, same layout; in bf16 with the
casts of its operands) as a share of a step on the support in the same precision, a profile of a Gated
step on the support at widths d and 4 × d in each precision, tokens/s on the support across L0, and the
crossover density (L0 / width) above which dense steps are faster: the evidence for
train.sparse_max_density. Writes
results/benchmarks/train.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import choose, machine
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import REPO_ROOT, SAEGroupConfig, SweepConfig, load_config
from gatedsae.plan.layout import MANIFEST
from gatedsae.saes.base import BatchedSAE
from gatedsae.saes.encoder_product import bf16_product
from gatedsae.training.sparse_step import dense_step_, sparse_step_
from gatedsae.training.trainer import GridTrainer, TrainingBatches

aten = torch.ops.aten
L1 = 0.1  # the default sweep's middle λ; the code's sparsity is set directly (see set_code_density)
PRECISIONS = ("float32", "bfloat16")  # precision.train: the encoder's product (saes/encoder_product.py)


# --- the state every run starts from ---------------------------------------------------------------


@torch.no_grad()
def set_code_density(module: BatchedSAE, x: torch.Tensor, l0: float, seed: int, spread: float = 1.5,
                     cap: float = 0.5) -> None:
    """Gate biases such that on `x` about `l0` gates per row open: feature j opens on a fraction r_j of
    the rows, r log-normal (σ = `spread`) scaled to sum to l0 and capped at `cap`."""
    n, width = module.n, module.width
    gate_weight, gate_bias = ((module.W_gate, module.b_gate) if hasattr(module, "b_gate")
                              else (module.W_enc, module.b_enc))
    z = torch.bmm((x - module.b_dec[:, None, :]).expand(n, -1, -1), gate_weight)  # [n, B, m]
    generator = torch.Generator().manual_seed(seed)
    rates = torch.exp(spread * torch.randn(n, width, generator=generator))
    rates = (rates / rates.sum(-1, keepdim=True) * l0).clamp(max=cap)
    rank = ((1 - rates) * (len(x) - 1)).round().long()
    thresholds = z.sort(dim=1).values.gather(1, rank[:, None, :]).squeeze(1)
    gate_bias.copy_(-thresholds)


def prepared_trainer(config, store, out: Path, x: torch.Tensor, l0: float) -> GridTrainer:
    trainer = GridTrainer(config, store, out)
    trainer._init_decoder_bias()
    for g, module in enumerate(trainer.modules):
        set_code_density(module, x, l0, seed=g)
    return trainer


# --- measurements ----------------------------------------------------------------------------------


def _sparse_kernel_flops(*args, **kwargs) -> int:
    """2 · nnz · d for embedding_bag (weight [rows, d], indices [nnz]) and sampled_addmm (CSR, [·, d])."""
    first = args[0]
    if first.layout == torch.sparse_csr:  # sampled_addmm(pattern, mat1 [rows, d], mat2 [d, cols])
        return 2 * first._nnz() * args[1].shape[1]
    return 2 * args[1].numel() * first.shape[1]  # embedding_bag(weight, indices, offsets, ...)


_sparse_kernel_flops._get_raw = True
SPARSE_FLOPS = {aten._embedding_bag: _sparse_kernel_flops, aten._embedding_bag_forward_only: _sparse_kernel_flops,
                aten.sparse_sampled_addmm: _sparse_kernel_flops}


def step_flops(trainer: GridTrainer, x: torch.Tensor, sparse: bool = False) -> int:
    """FLOPs of one step's forward and backward over every SAE of the trainer, as executed."""
    with FlopCounterMode(display=False, custom_mapping=SPARSE_FLOPS) as counter:
        for module in trainer.modules:
            (sparse_step_ if sparse else dense_step_)(module, x)
            module.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def with_precision(config, precision: str):
    """`config` with precision.train = `precision` (float32 | bfloat16: the encoder's product)."""
    return replace(config, precision=replace(config.precision, train=precision))


def timed_training(config, store, batches: list[torch.Tensor], l0: float, sparse: str,
                   precision: str = "float32") -> dict:
    """Time len(batches) − 1 trainer steps after one untimed step, from the prepared state, at lr 0: Adam
    computes its whole update as always (then scaled by 0), so a step costs what it costs in training
    while the code stays at the prepared L0 (a fresh Adam's first sign-like steps would shift it)."""
    config = replace(with_precision(config, precision), train=replace(config.train, sparse=sparse))
    with tempfile.TemporaryDirectory() as out:
        trainer = prepared_trainer(config, store, Path(out), batches[0], l0)
        trainer.base_lrs = [0.0] * len(trainer.modules)
        trainer._train_step(batches[0])  # warm-up
        trainer.step = 1
        started, cpu_started = time.perf_counter(), time.process_time()
        for x in batches[1:]:
            trainer._train_step(x)
            trainer.step += 1
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    steps, saes = len(batches) - 1, len(trainer.specs)
    l0s = [losses["l0"] for losses in trainer.last_losses.values()]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "step_seconds": seconds / steps,
            "sae_tokens_per_cpu_s": steps * len(batches[0]) * saes / cpu_seconds,
            "tokens_per_s": steps * len(batches[0]) / seconds,
            "sae_tokens_per_s": steps * len(batches[0]) * saes / seconds,
            "l0_last_step": statistics.mean(l0s), "sparse_steps": trainer.sparse_steps}


def encoder_matmul_seconds(trainer: GridTrainer, x: torch.Tensor, precision: str = "float32",
                           repeats: int = 5) -> float:
    """The dense encoder matmul of one step of every group (same shapes and memory layout), fastest of
    `repeats`; in bfloat16 as a step computes it, the casts of its operands included."""
    best = float("inf")
    operands = [((x - m.b_dec[:, None, :]).expand(m.n, -1, -1).detach(),
                 (m.W_gate if hasattr(m, "W_gate") else m.W_enc).detach()) for m in trainer.modules]
    product = bf16_product if precision == "bfloat16" else torch.bmm
    for _ in range(repeats):
        started = time.perf_counter()
        for centred, weight in operands:
            product(centred, weight)
        best = min(best, time.perf_counter() - started)
    return best


SUPPORT_OPS = {"aten::nonzero", "aten::gt", "aten::le", "aten::sort", "aten::bincount", "aten::cumsum",
               "aten::div", "aten::index_select", "aten::index_add_", "aten::sparse_csr_tensor", "aten::zeros"}


def step_breakdown(config, store, batches: list[torch.Tensor], l0: float, precision: str = "float32") -> dict:
    """Where the trainer's steps on the support spend their time: torch.profiler over len(batches) − 1
    steps, each top-level op's CPU time (children included) put in one category, in ms per step."""
    from torch.profiler import ProfilerActivity, profile

    config = replace(with_precision(config, precision), train=replace(config.train, sparse="always"))
    with tempfile.TemporaryDirectory() as out:
        trainer = prepared_trainer(config, store, Path(out), batches[0], l0)
        trainer.base_lrs = [0.0] * len(trainer.modules)
        trainer._train_step(batches[0])
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            started = time.perf_counter()
            for x in batches[1:]:
                trainer._train_step(x)
            seconds = time.perf_counter() - started
    batch, categories, ops = len(batches[0]), {}, {}
    for event in prof.events():
        if event.cpu_parent is not None:
            continue
        shapes = event.input_shapes or [[]]
        if event.name == "aten::bmm" and len(shapes[0]) == 3 and shapes[0][1] == batch:
            category = "encoder matmul"
        elif event.name == "aten::to" and len(shapes[0]) == 3:  # only the encoder's operands are cast in 3-D
            category = "encoder matmul: bf16 casts of its operands"
        elif event.name.startswith("Optimizer.step"):
            category = "Adam (fused, every parameter)"
        elif event.name in ("aten::embedding_bag", "aten::sparse_sampled_addmm"):
            category = "sparse kernels (decode, scatter, sampled dots)"
        elif event.name in SUPPORT_OPS:
            category = "support: mask, nonzero, sort, gathers, per-feature sums"
        else:
            category = "other ops (decoder projection, elementwise, bookkeeping)"
        categories[category] = categories.get(category, 0.0) + event.cpu_time_total / 1e3
        ops[event.name] = ops.get(event.name, 0.0) + event.cpu_time_total / 1e3
    steps = len(batches) - 1
    per_step = {name: ms / steps for name, ms in sorted(categories.items(), key=lambda item: -item[1])}
    wall = seconds * 1e3 / steps
    return {"precision": precision, "width": trainer.modules[0].width, "step_ms_profiled": wall,
            "ms_per_step": per_step, "python_and_unattributed_ms": wall - sum(per_step.values()),
            "shares": {name: ms / wall for name, ms in per_step.items()},
            "top_ops_ms_per_step": {name: ms / steps for name, ms in sorted(ops.items(), key=lambda i: -i[1])[:12]}}


def peer_run(args, store_dir: Path, config, width: int, tokens: int) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as peer_out:
        subprocess.run([args.peer_python, str(REPO_ROOT / "scripts" / "bench_saelens_peer.py"),
                        "--store", str(store_dir), "--tokens", str(tokens), "--width", str(width),
                        "--l1", str(L1), "--lr", "1e-3", "--batch", str(config.train.batch_size),
                        "--seed", str(config.train.seed), "--buffer-rows", str(config.train.buffer_rows),
                        "--lr-warm-up-steps", str(config.train.lr_warmup_steps), "--threads", str(args.threads),
                        "--out", peer_out.name],
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(peer_out.name).read_text())


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def crossover(config, store, x: torch.Tensor, widths: dict[str, int], densities: list[float],
              repeats: int = 3) -> dict:
    """Seconds of one step on the support and one dense step (forward + backward of one SAE, fastest of
    `repeats`) across code densities (feature rates spread log-normally, σ = 0.5, so high densities are
    reachable), and the lowest density where dense steps become faster (linear interpolation)."""
    out = {}
    for arch, width in widths.items():
        group = SAEGroupConfig(arch.split("_w")[0], width / store.d, 1e-3, [L1])
        sweep = replace(config, sweep=SweepConfig("one", [group]))
        with tempfile.TemporaryDirectory() as tmp:
            trainer = GridTrainer(sweep, store, Path(tmp))
            trainer._init_decoder_bias()
        module = trainer.modules[0]
        rows = []
        for density in densities:
            set_code_density(module, x, density * width, seed=0, spread=0.5, cap=0.95)
            times = {}
            for name, step in (("sparse", sparse_step_), ("dense", dense_step_)):
                best = float("inf")
                for _ in range(repeats):
                    module.zero_grad(set_to_none=True)
                    started = time.perf_counter()
                    outcome = step(module, x)
                    best = min(best, time.perf_counter() - started)
                times[name] = best
            rows.append({"density": float(outcome.l0.mean()) / width, "sparse_s": times["sparse"],
                         "dense_s": times["dense"], "speedup": times["dense"] / times["sparse"]})
        cross = None
        for low, high in zip(rows, rows[1:]):
            if low["speedup"] >= 1 > high["speedup"]:
                t = (low["speedup"] - 1) / (low["speedup"] - high["speedup"])
                cross = low["density"] + t * (high["density"] - low["density"])
                break
        out[arch] = {"points": rows, "crossover_density": cross}
    return out


# --- data ------------------------------------------------------------------------------------------


def synthetic_store(directory: Path, d: int, rows: int, seed: int = 0) -> Path:
    """A store of `rows` synthetic activations of width d: each row a sparse non-negative combination of
    about 30 of 8·d random unit directions (Zipf-like frequencies, log-normal magnitudes) plus an offset
    and noise, so the data has the shape and the sparse structure SAEs are trained on."""
    from gatedsae.activations.store import FORMAT_VERSION, SplitRecord, StoreManifest, StoreWriter

    generator = torch.Generator().manual_seed(seed)
    atoms = 8 * d
    directions = torch.randn(atoms, d, generator=generator)
    directions /= directions.norm(dim=-1, keepdim=True)
    frequency = 1.0 / torch.arange(1, atoms + 1) ** 0.8
    frequency = (frequency / frequency.sum() * 30).clamp(max=0.5)
    offset = 2.0 * torch.randn(d, generator=generator)
    manifest = StoreManifest(FORMAT_VERSION, "synthetic", {}, "resid_post", 0, "synthetic", d, "float32", 128, 127,
                             256, "synthetic", 0, seed, "synthetic", 50.0, {"train": SplitRecord()})
    writer = StoreWriter(directory, manifest)
    per_shard = 8192
    for index in range(rows // per_shard):
        active = torch.rand(per_shard, atoms, generator=generator) < frequency
        magnitude = torch.exp(0.5 * torch.randn(per_shard, atoms, generator=generator))
        x = (active * magnitude) @ directions + offset + 0.05 * torch.randn(per_shard, d, generator=generator)
        writer.write_shard("train", index, x, per_shard // 127, 50.0)
    writer.close()
    return directory


# --- main ------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each trainer")
    parser.add_argument("--l0", type=float, default=50.0, help="open gates per row in the prepared state")
    parser.add_argument("--site", default="resid_post")
    parser.add_argument("--synthetic", action="store_true", help="synthetic activations even if the store exists")
    parser.add_argument("--peer-python", default=None, help="python of a venv with sae-lens installed")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads, ours and the peer's (0: torch's default)")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "train.json"))
    args, overrides = parser.parse_known_args()
    load_before = os.getloadavg()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    # Every row is kept (no outlier exclusion) so that sae-lens, which reads the store as it is, sees
    # exactly the same batches and scale. The default experiment's batch (1024).
    # precision.train float32 unless a run names bf16 (the crossover and the L0 sweep are float32 runs).
    config = with_precision(load_config(["experiment=default", "train.max_norm_ratio=null", *overrides]), "float32")
    layer = config.experiment.layers[0]
    store_dir = config.paths.activations_dir(config.model.name, config.corpus.name, args.site, layer)
    scratch = tempfile.TemporaryDirectory()
    if args.synthetic or not (store_dir / MANIFEST).exists():
        data = f"synthetic (no {store_dir / MANIFEST})" if not args.synthetic else "synthetic (--synthetic)"
        store_dir = synthetic_store(Path(scratch.name) / "store", config.model.site_width(args.site), 65536)
    else:
        data = f"real: {store_dir}"
    store = ActivationStore(store_dir, "train")
    d, batch = store.d, config.train.batch_size
    trainer0 = GridTrainer(config, store, Path(scratch.name) / "scale")
    batches = [x.float() * trainer0.scale
               for x in itertools.islice(TrainingBatches(store, trainer0.train), args.steps + 1)]

    def one(arch: str, width_ratio: float, l1s: list[float]) -> object:
        return replace(config, sweep=SweepConfig(arch, [SAEGroupConfig(arch, width_ratio, 1e-3, l1s)]))

    cases = {
        "today": {PROPOSED: (one(PROPOSED, 1.0, [L1]), True), BASELINE: (one(BASELINE, 1.5, [L1]), False)},
        "paper_regime": {PROPOSED: (one(PROPOSED, 4.0, [L1]), True), BASELINE: (one(BASELINE, 6.0, [L1]), False),
                         "gated_group_of_6": (one(PROPOSED, 4.0, [0.02, 0.035, 0.06, 0.1, 0.18, 0.3]), False)},
    }
    runs = {(c, k, path, p): [] for c, kinds in cases.items() for k in kinds for path in ("sparse", "dense")
            for p in PRECISIONS}
    peers = {(c, k): [] for c, kinds in cases.items() for k in kinds}
    matmul = {(c, k, p): [] for c, kinds in cases.items() for k in kinds for p in PRECISIONS}
    for repeat in range(args.repeats):  # interleaved: every trainer once per round
        for case, kinds in cases.items():
            for kind, (case_config, with_peer) in kinds.items():
                paths = (("sparse", "always"), ("dense", "never"))
                for (path, mode), precision in itertools.product(paths, PRECISIONS):
                    runs[(case, kind, path, precision)].append(
                        timed_training(case_config, store, batches, args.l0, mode, precision))
                with tempfile.TemporaryDirectory() as tmp:
                    trainer = prepared_trainer(case_config, store, Path(tmp), batches[0], args.l0)
                    for precision in PRECISIONS:
                        matmul[(case, kind, precision)].append(encoder_matmul_seconds(trainer, batches[0], precision))
                if with_peer and args.peer_python:
                    width = case_config.sweep.groups[0].width(d)
                    peers[(case, kind)].append(peer_run(args, store_dir, config, width, args.steps * batch))
        print(f"round {repeat + 1} of {args.repeats} done", file=sys.stderr, flush=True)

    results = {}
    for case, kinds in cases.items():
        results[case] = {}
        for kind, (case_config, with_peer) in kinds.items():
            with tempfile.TemporaryDirectory() as tmp:
                trainer = prepared_trainer(case_config, store, Path(tmp), batches[0], args.l0)
                flops = {path: step_flops(trainer, batches[0], sparse=path == "sparse") for path in ("sparse", "dense")}
            group = case_config.sweep.groups[0]
            entry = {"arch": group.arch, "width": group.width(d), "saes": len(group.values), "l1": group.l1,
                     "l0_prepared": args.l0, "flops_per_step_float32": flops}
            for precision in PRECISIONS:
                sparse, dense = runs[(case, kind, "sparse", precision)], runs[(case, kind, "dense", precision)]
                seconds = matmul[(case, kind, precision)]
                entry[precision] = {
                    "l0_last_step": statistics.mean(r["l0_last_step"] for r in sparse),
                    **{figure: {"sparse": summary([r[figure] for r in sparse]),
                                "dense": summary([r[figure] for r in dense])}
                       for figure in ("sae_tokens_per_s", "sae_tokens_per_cpu_s", "step_seconds")},
                    "sparse_over_dense": summary([s["sae_tokens_per_s"] / t["sae_tokens_per_s"]
                                                  for s, t in zip(sparse, dense)]),
                    "encoder_matmul_seconds": summary(seconds),
                    "encoder_matmul_share_of_sparse_step": summary(
                        [mm / r["step_seconds"] for mm, r in zip(seconds, sparse)]),
                    "encoder_matmul_gflops": 2 * len(group.values) * batch * d * group.width(d) / min(seconds) / 1e9,
                }
            entry["bf16_over_fp32"] = {
                path: summary([b["sae_tokens_per_s"] / f["sae_tokens_per_s"] for b, f in
                               zip(runs[(case, kind, path, "bfloat16")], runs[(case, kind, path, "float32")])])
                for path in ("sparse", "dense")}
            if peers[(case, kind)]:
                peer = peers[(case, kind)]
                entry["sae_lens_tokens_per_s"] = summary([q["tokens_per_s"] for q in peer])
                entry["ratio_vs_sae_lens"] = {
                    f"{path}_{precision}": summary([r["sae_tokens_per_s"] / q["tokens_per_s"]
                                                    for r, q in zip(runs[(case, kind, path, precision)], peer)])
                    for path in ("sparse", "dense") for precision in PRECISIONS}
                entry["ratio_vs_sae_lens_cpu_time"] = {
                    f"{path}_{precision}": summary([r["sae_tokens_per_cpu_s"] / q["tokens_per_cpu_s"]
                                                    for r, q in zip(runs[(case, kind, path, precision)], peer)])
                    for path in ("sparse", "dense") for precision in PRECISIONS}
                entry["sae_lens"] = {k: v for k, v in peer[-1].items() if k not in ("tokens_per_s", "seconds")}
            results[case][kind] = entry

    widths = {"gated_w1d": d, "baseline_w1.5d": int(1.5 * d), "gated_w4d": 4 * d, "baseline_w6d": 6 * d}
    densities = [0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5]
    cross = crossover(config, store, batches[1], {f"{k.split('_w')[0]}_w{w}": w for k, w in widths.items()}, densities)
    crossings = [v["crossover_density"] for v in cross.values() if v["crossover_density"] is not None]
    breakdown = {f"{case}_{precision}": step_breakdown(cases[case][PROPOSED][0], store, batches, args.l0, precision)
                 for case in ("today", "paper_regime") for precision in PRECISIONS}
    l0_sweep = {}
    for l0 in (10, 20, 50, 100, 200):
        case_config = cases["paper_regime"][PROPOSED][0]
        l0_sweep[str(l0)] = timed_training(case_config, store, batches, l0, "always")

    report = {
        "benchmark": "SAE training: steps on the support vs dense steps vs sae-lens",
        "command": "python scripts/bench_train.py " + " ".join(
            "<python with sae-lens>" if arg == args.peer_python
            else re.sub(r"^paths\.data=.*", "paths.data=<data folder>", arg) for arg in sys.argv[1:]),
        "machine": machine(), "precision_train_auto": choose("train", "auto").provenance(),
        "load_average_before_after": [load_before, os.getloadavg()],
        "noise": ("the machine is shared (2 cores, other jobs running): compare the ratios measured within "
                  "one round, and see each figure's (min, max) over the interleaved rounds; *_per_cpu_s figures "
                  "divide by the process's CPU time instead of wall time, which time-slicing by other jobs "
                  "inflates far less (with one thread it is the robust figure on a busy machine)"),
        "data": data, "d": d, "batch_size": batch, "steps_per_run": args.steps, "rounds": args.repeats,
        "prepared_state": (f"fresh SAEs, b_dec at the data mean, gate biases set so ~{args.l0:g} gates per row open "
                           "on the first batch (log-normal per-feature rates); our timed steps at lr 0 so the code "
                           "keeps that L0 (the step's cost does not depend on lr); sae-lens from its own init at "
                           "lr 1e-3 (its dense step costs the same whatever the code)"),
        "results": results,
        "sparse_l0_sweep_paper_regime_gated": {
            l0: {"tokens_per_s": r["tokens_per_s"], "l0_last_step": r["l0_last_step"]} for l0, r in l0_sweep.items()},
        "step_breakdown_gated_sparse": breakdown,
        "sparse_crossover": cross,
        "sparse_crossover_min": min(crossings) if crossings else None,
        "train_sparse_max_density": config.train.sparse_max_density,
        "targets": {"ratio_vs_sae_lens_paper_regime": 5.0, "encoder_matmul_share": 0.6},
    }
    write_json_atomic(args.out, report)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
