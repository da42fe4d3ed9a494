"""Benchmark: the spliced evaluation's time per SAE per CE window, against the per-SAE path before
`evaluation/lean_blocks.py` and against a plain full forward, in float32 and bf16; plus bf16's fidelity.

    python scripts/bench_eval.py [--windows 8] [--repeats 5] [--sites resid_post,mlp_out,attn_z] [hydra overrides...]

Each site at its own layer (`experiment.layers_at`). On the same held-out windows, each repetition times,
interleaved batch by batch so that every figure sees the same machine state (the machine is shared: only
ratios inside one repetition mean anything):

- `full`: a plain full forward of the LM and the CE of its logits;
- `previous`: the per-SAE path of main before this benchmark's change (commit e7a5009: TransformerLens'
  blocks after the splice, block L rerun at mlp_out and attn_z, the chunked unembedding, every logit
  bf16 under bf16), i.e. `SplicedLM(..., lean=False, exact_logits=False)`;
- `ours`: the per-SAE path now (encode + decode, `LeanBlocks` from the site on, the chunked unembedding
  and CE; under bf16 the logits the CE reads most and the first predictions, `precision.
  evaluate_float32_positions`, in float32); and the float32 prefix, which runs once per batch for all
  SAEs and is not per-SAE time;

each in float32 and in bf16. Ratios: `speedup_same_precision` = previous / ours in one precision;
`speedup_vs_previous` = previous in the precision e7a5009's gate chose (float32 where bf16 moved the CE
clean, zero-ablated or spliced by more than the tolerance) / ours in the precision the gate chooses now
(clean and spliced only: the zero-ablation is float32 always; bf16 logits corrected where the CE reads
them, `spliced.Unembedding`); `ours_vs_full_forward` in one precision.
Each is the median over repetitions with its min and max. `float32_agreement`: ours against previous in
float32, per token and in mean CE, on the timed windows (the change must not move the results). The SAE
timed is a random Gated SAE of the sweep's width (the cost does not depend on the weights). Fidelity
(bf16 against float32 on the same windows) needs a reconstruction that resembles an SAE's: a rank-d/8
PCA of the site's activations (its FVU is recorded), with massive positions (norm above
train.max_norm_ratio × the median) kept clean as the pipeline keeps them; the evaluation's own gate
(`evaluation/precision_gate.py`) runs with it too. The process keeps freed memory as every pipeline stage
does (`resources.retain_freed_mib`), for every path. Writes results/benchmarks/eval.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gatedsae.core.allocator import retain_freed_memory
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import choose, machine
from gatedsae.data.corpus import load_windows
from gatedsae.data.lm_precision import lm_forward_precision, matmul_weights
from gatedsae.data.models import load_model
from gatedsae.evaluation.precision_gate import ce_means, evaluation_precision
from gatedsae.evaluation.spliced import SplicedLM, kept_positions, next_token_losses
from gatedsae.plan.architectures import PROPOSED
from gatedsae.plan.config import REPO_ROOT, load_config


class RandomGated:
    """A tied Gated SAE's matmuls with random weights: what the time per SAE depends on."""

    def __init__(self, d: int, width: int):
        generator = torch.Generator().manual_seed(0)
        self.W_enc = torch.randn(d, width, generator=generator) / d**0.5
        self.W_dec = torch.randn(width, d, generator=generator) / width**0.5
        self.b_gate, self.r_mag, self.b_mag = torch.zeros(width), torch.zeros(width), torch.zeros(width)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1]).float()
        z = flat @ self.W_enc
        f = (z + self.b_gate > 0).float() * torch.relu(torch.exp(self.r_mag) * z + self.b_mag)
        return (f @ self.W_dec).reshape(x.shape)


class PCAStandIn:
    """A rank-k PCA reconstruction of the site's activations: an SAE-like error for the fidelity check."""

    def __init__(self, activations: torch.Tensor, rank: int, max_norm_ratio: float | None):
        rows = activations[:, 1:].reshape(-1, activations.shape[-1]).float()
        norms = rows.norm(dim=-1)
        self.massive_norm_threshold = None if max_norm_ratio is None else float(max_norm_ratio * norms.median())
        kept = rows if self.massive_norm_threshold is None else rows[norms <= self.massive_norm_threshold]
        self.mean = kept.mean(0)
        self.basis = torch.linalg.svd(kept - self.mean, full_matrices=False).Vh[:rank].T
        centred = kept - self.mean
        self.fvu = float(((centred - centred @ self.basis @ self.basis.T) ** 2).sum() / (centred**2).sum())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        centred = x.float() - self.mean
        return self.mean + centred @ self.basis @ self.basis.T


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def summary(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "each": values}


PATHS = ("full", "previous", "ours")
DTYPES = ("float32", "bfloat16")


@torch.inference_mode()
def repetition(model, site: str, layer: int, batches: list[torch.Tensor], sae: RandomGated,
               float32_positions: int) -> dict[str, float]:
    """Seconds per SAE per window of every path in both precisions, the paths one after the other on each
    batch. The matrices are laid out once per precision before timing, as a grid's evaluation does once."""
    seconds = {f"{path}_{dtype}": 0.0 for dtype in DTYPES for path in PATHS} | {"prefix_float32": 0.0}
    prefixes = []
    for tokens in batches:
        started = time.perf_counter()
        prefixes.append({lean: SplicedLM(model, site, layer, lean=lean).prefix(tokens) for lean in (False, True)})
        seconds["prefix_float32"] += (time.perf_counter() - started) / 2
    for dtype in DTYPES:
        precision = choose("evaluate", dtype)
        paths = {"previous": SplicedLM(model, site, layer, precision, lean=False, exact_logits=False),
                 "ours": SplicedLM(model, site, layer, precision, float32_positions=float32_positions)}
        with matmul_weights(model, precision):
            for name, spliced in paths.items():  # untimed: lays the matrices out for this precision
                spliced.token_losses(prefixes[0][name == "ours"].select(torch.arange(len(batches[0])) < 1), None)
            for tokens, prefix in zip(batches, prefixes):
                with precision.autocast():
                    seconds[f"full_{dtype}"] += timed(lambda: next_token_losses(model(tokens), tokens))
                for name, spliced in paths.items():
                    mine = prefix[name == "ours"]
                    seconds[f"{name}_{dtype}"] += timed(lambda: spliced.token_losses(mine, sae.reconstruct(mine.activation)))
    windows = sum(len(tokens) for tokens in batches)
    return {name: value / windows for name, value in seconds.items()}


@torch.inference_mode()
def float32_agreement(model, site: str, layer: int, batches: list[torch.Tensor], sae: RandomGated) -> dict:
    """Ours against the previous path in float32: the largest per-token CE difference and the mean CE's."""
    differences, means = [], []
    for tokens in batches:
        losses = []
        for lean in (False, True):
            spliced = SplicedLM(model, site, layer, lean=lean)
            prefix = spliced.prefix(tokens)
            losses.append(spliced.token_losses(prefix, sae.reconstruct(prefix.activation)).double())
        differences.append(float((losses[1] - losses[0]).abs().max()))
        means.append((float(losses[0].mean()), float(losses[1].mean())))
    previous, ours = (float(np.mean([m[i] for m in means])) for i in (0, 1))
    return {"max_abs_per_token_nats": max(differences), "mean_ce_previous": previous, "mean_ce_ours": ours,
            "abs_mean_difference_nats": abs(ours - previous)}


def fidelity(config, model, site: str, layer: int, windows: np.ndarray) -> dict:
    """CE clean, zero-ablated and spliced (PCA stand-in) in float32 and bf16; the evaluation's gate."""
    tokens = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    spliced = SplicedLM(model, site, layer)
    with torch.inference_mode():
        activations = torch.cat([spliced.prefix(tokens[s : s + 8]).activation.float() for s in range(0, len(tokens), 8)])
    stand_in = PCAStandIn(activations, model.cfg.d_model // 8, config.train.max_norm_ratio)
    batch = config.evaluate.batch_windows
    def differences(ours: bool) -> tuple[dict, dict[str, float]]:
        means = ce_means(model, site, layer, windows, stand_in, batch, "cpu",
                         {dtype: choose("evaluate", dtype) for dtype in ("float32", "bfloat16")},
                         passes=("clean", "zero", "spliced"), exact_logits=ours,
                         float32_positions=config.precision.evaluate_float32_positions if ours else 0)
        return means, {k: abs(means["bfloat16"][k] - means["float32"][k]) for k in means["float32"]}

    means, ours = differences(ours=True)
    gate = evaluation_precision(config, model, site, layer, windows, stand_in)
    return {"stand_in": f"rank-{model.cfg.d_model // 8} PCA of the site's activations", "stand_in_fvu": stand_in.fvu,
            "windows": len(windows), "ce_float32": means["float32"], "ce_bfloat16": means["bfloat16"],
            "abs_difference_nats": ours, "abs_difference_nats_bf16_logits": differences(ours=False)[1],
            "tolerance_nats": config.precision.gate.ce_nats, "gate": gate.provenance()}


def previous_gate(check: dict, tolerance: float) -> str:
    """The precision e7a5009's evaluation gate chose: bf16 only if the CE clean, zero-ablated and spliced all
    moved by at most the tolerance, every logit bf16 (its prefix ran in bf16 too, which this check does not
    repeat)."""
    native = check["gate"]["setting"] == "auto" and "bfloat16" in (check["gate"]["dtype"], check["gate"]["reason"])
    within = all(value <= tolerance for value in check["abs_difference_nats_bf16_logits"].values())
    return "bfloat16" if native and within else "float32"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=8, help="CE windows timed per repetition")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--fidelity-windows", type=int, default=16)
    parser.add_argument("--sites", default="", help="comma-separated (default: the experiment's)")
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "eval.json"))
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    # The process as an evaluation stage runs it (every CLI stage keeps freed memory: core/allocator.py),
    # for every path alike; results/benchmarks/allocator.json measures what that setting itself does.
    allocator = retain_freed_memory(config.resources.retain_freed_mib)
    model = load_model(config.model, config.paths, "cpu").model
    heldout = load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "heldout")
    sites = args.sites.split(",") if args.sites else list(config.experiment.sites)
    batch = config.evaluate.batch_windows
    timed_windows = heldout[: args.windows]
    batches = [torch.from_numpy(np.asarray(timed_windows[s : s + batch], dtype=np.int64)) for s in range(0, len(timed_windows), batch)]
    with lm_forward_precision(model, choose("evaluate", "bfloat16")), torch.inference_mode():
        model(batches[0][:1])  # warm-up of the bf16 kernels
    results = []
    for site in sites:
        layer = config.experiment.layers_at(site)[0]
        d = config.model.site_width(site)
        gated = next(g for g in config.sweep.groups if g.arch == PROPOSED)
        sae = RandomGated(d, gated.width(d))
        check = fidelity(config, model, site, layer, heldout[: args.fidelity_windows])
        auto, before = check["gate"]["dtype"], previous_gate(check, config.precision.gate.ce_nats)
        agreement = float32_agreement(model, site, layer, batches, sae)
        runs = []
        for index in range(args.repeats):
            runs.append(repetition(model, site, layer, batches, sae, config.precision.evaluate_float32_positions))
            print(site, index, json.dumps({k: round(v, 3) for k, v in runs[-1].items()}), file=sys.stderr, flush=True)
        results.append({
            "site": site, "layer": layer, "sae_width": gated.width(d), "auto_precision": auto,
            "previous_auto_precision": before,
            "seconds_per_sae_per_window": {name: summary([run[name] for run in runs]) for name in runs[0]},
            "speedup_vs_previous": summary([run[f"previous_{before}"] / run[f"ours_{auto}"] for run in runs]),
            "speedup_same_precision": {dtype: summary([run[f"previous_{dtype}"] / run[f"ours_{dtype}"] for run in runs])
                                       for dtype in DTYPES},
            "ours_vs_full_forward": {dtype: summary([run[f"ours_{dtype}"] / run[f"full_{dtype}"] for run in runs])
                                     for dtype in DTYPES},
            "bf16_vs_float32_ours": summary([run["ours_float32"] / run["ours_bfloat16"] for run in runs]),
            "float32_agreement": agreement,
            "fidelity": check,
        })
        # Written after every site, so a run stopped part-way keeps the sites it finished.
        write_json_atomic(Path(args.out), {
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": machine(), "model": config.model.name,
            "windows": args.windows, "batch_windows": batch, "context_length": config.experiment.context_length,
            "repeats": args.repeats, "allocator": allocator.as_dict(), "sites": results,
            "note": "seconds per SAE per CE window; ratios within each repetition (median, min, max over repetitions); "
                    "speedup_vs_previous = previous path in the precision e7a5009's gate chose / ours in the precision "
                    "the gate chooses now; speedup_same_precision = previous / ours in one precision",
        })
    print(json.dumps({r["site"]: {"speedup": round(r["speedup_vs_previous"]["median"], 2), "auto": r["auto_precision"]}
                      for r in results}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
