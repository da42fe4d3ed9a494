"""The spliced evaluation's precision: bf16 where the machine multiplies it natively (`core.precision`),
after a fidelity gate on the stage's own data. On the first `precision.gate.windows` held-out windows the
gate computes CE clean, zero-ablated and spliced with the grid's first SAE (its massive-activation
treatment) once in float32 and once in bf16; bf16 is kept only if every mean differs by at most
`precision.gate.ce_nats` per token."""

from __future__ import annotations

import numpy as np
import torch

from gatedsae.core.precision import Precision, choose, gated
from gatedsae.data.lm_precision import matmul_weights
from gatedsae.evaluation.spliced import SplicedLM, kept_positions, window_means

GATED_CE = ("clean", "zero", "spliced")


@torch.no_grad()
def ce_means(model, site: str, layer: int, windows: np.ndarray, sae, batch_windows: int, device: str,
             precision: Precision) -> dict[str, float]:
    """Mean CE per token, clean, zero-ablated and spliced with `sae`, over `windows` in `precision`."""
    spliced = SplicedLM(model, site, layer, precision)
    threshold = sae.massive_norm_threshold
    means: dict[str, list[np.ndarray]] = {name: [] for name in GATED_CE}
    with matmul_weights(model, precision):
        for start in range(0, len(windows), batch_windows):
            tokens = torch.from_numpy(np.asarray(windows[start : start + batch_windows], dtype=np.int64)).to(device)
            prefix = spliced.prefix(tokens)
            kept = kept_positions(prefix.activation, threshold)
            means["clean"].append(window_means(spliced.token_losses(prefix, None)))
            means["zero"].append(window_means(spliced.token_losses(prefix, torch.zeros_like(prefix.activation), kept)))
            means["spliced"].append(window_means(spliced.token_losses(prefix, sae.reconstruct(prefix.activation), kept)))
    return {name: float(np.concatenate(parts).mean()) for name, parts in means.items()}


def evaluation_precision(config, model, site: str, layer: int, windows: np.ndarray, sae) -> Precision:
    """The precision of the spliced LM forwards for this grid, gated as the module says."""
    evaluate, gate = config.evaluate, config.precision.gate
    chosen = choose("evaluate", config.precision.evaluate, evaluate.device)

    def measure() -> dict[str, float]:
        sample = windows[: gate.windows]
        fp32, bf16 = (ce_means(model, site, layer, sample, sae, evaluate.batch_windows, evaluate.device,
                               choose("evaluate", dtype, evaluate.device)) for dtype in ("float32", "bfloat16"))
        return {f"ce_{name}_nats": abs(bf16[name] - fp32[name]) for name in GATED_CE}

    return gated(chosen, measure, {f"ce_{name}_nats": gate.ce_nats for name in GATED_CE})
