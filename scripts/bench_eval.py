"""Benchmark: the spliced evaluation's cost per SAE against a full forward of the LM.

    python scripts/bench_eval.py [--windows 32] [hydra overrides...]

For each site of the experiment's first layer, on the same batches of held-out windows, times
(1) full forwards, (2) the clean prefix (once per batch) and (3) per SAE: encode + decode of the
site's activations and the remainder of the model. `cost_per_sae_vs_full_forward` is (3) / (1) for the
residual stream of the default configuration: below 1 because the prefix is not repeated. Uses the
first SAE of each trained grid when one exists, otherwise a random SAE of the sweep's Gated width
(the cost does not depend on the weights). Writes results/benchmarks/eval.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import machine
from gatedsae.data.corpus import load_windows
from gatedsae.data.models import load_model
from gatedsae.evaluation.evaluate import CheckpointSAE
from gatedsae.evaluation.spliced import SplicedLM, next_token_losses
from gatedsae.plan.architectures import PROPOSED
from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.grid import read_grid_index


class RandomGated:
    """Stands in for a checkpoint when no grid is trained: the same matmuls as a tied Gated SAE."""

    def __init__(self, d: int, width: int):
        generator = torch.Generator().manual_seed(0)
        self.W_enc = torch.randn(d, width, generator=generator) / d**0.5
        self.W_dec = torch.randn(width, d, generator=generator) / width**0.5
        self.b_gate, self.r_mag, self.b_mag = torch.zeros(width), torch.zeros(width), torch.zeros(width)

    def encode(self, x):
        z = x @ self.W_enc
        return (z + self.b_gate > 0).float() * torch.relu(torch.exp(self.r_mag) * z + self.b_mag)

    def decode(self, f):
        return f @ self.W_dec


def first_sae(config, site: str, layer: int):
    index = config.paths.checkpoints_dir(config.model.name, config.corpus.name, site, layer,
                                         config.sweep.name) / "grid.json"
    if index.exists():
        return CheckpointSAE.load(read_grid_index(index)[0]["path"]), "trained checkpoint"
    d = config.model.site_width(site)
    gated = next(g for g in config.sweep.groups if g.arch == PROPOSED)
    return RandomGated(d, gated.width(d)), "random Gated SAE of the sweep's width"


def timed(function) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


@torch.inference_mode()
def measure(loaded, config, site: str, layer: int, windows: np.ndarray, batch: int, repeats: int) -> dict:
    spliced = SplicedLM(loaded.model, site, layer)
    sae, kind = first_sae(config, site, layer)
    batches = [torch.from_numpy(np.asarray(windows[s : s + batch], dtype=np.int64)) for s in range(0, len(windows), batch)]
    full = prefix = per_sae = 0.0
    for _ in range(repeats):
        for tokens in batches:
            full += timed(lambda: next_token_losses(loaded.model(tokens), tokens))
            started = time.perf_counter()
            state = spliced.prefix(tokens)
            prefix += time.perf_counter() - started

            def one_sae():
                flat = state.activation.reshape(-1, state.activation.shape[-1]).float()
                x_hat = sae.decode(sae.encode(flat)).reshape(state.activation.shape)
                spliced.token_losses(state, x_hat)

            per_sae += timed(one_sae)
    return {"site": site, "layer": layer, "sae": kind, "full_forward_s": full, "prefix_s": prefix,
            "per_sae_s": per_sae, "cost_per_sae_vs_full_forward": per_sae / full,
            "prefix_vs_full_forward": prefix / full,
            "evaluating_12_saes_vs_12_full_forwards": (prefix + 12 * per_sae) / (12 * full)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--windows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO_ROOT / "results" / "benchmarks" / "eval.json"))
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    loaded = load_model(config.model, config.paths, config.evaluate.device)
    windows = load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "heldout")[: args.windows]
    layer = config.experiment.layers[0]
    loaded.model(torch.from_numpy(np.asarray(windows[:2], dtype=np.int64)))  # warm-up
    sites = [measure(loaded, config, site, layer, windows, config.evaluate.batch_windows, args.repeats)
             for site in config.experiment.sites]
    default = next(s for s in sites if s["site"] == "resid_post") if any(
        s["site"] == "resid_post" for s in sites) else sites[0]
    result = {
        "command": " ".join([sys.executable, *sys.argv]), "machine": machine(), "model": config.model.name,
        "windows": args.windows, "context_length": config.experiment.context_length,
        "batch_windows": config.evaluate.batch_windows, "repeats": args.repeats,
        "cost_per_sae_vs_full_forward": default["cost_per_sae_vs_full_forward"], "sites": sites,
        "note": "per SAE: encode + decode + the model from the site on; the prefix runs once per batch for all SAEs",
    }
    write_json_atomic(Path(args.out), result)
    print(json.dumps({s["site"]: round(s["cost_per_sae_vs_full_forward"], 3) for s in sites}))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
