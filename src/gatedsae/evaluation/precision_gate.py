"""The spliced evaluation's precision: bf16 where the machine multiplies it natively (`core.precision`),
after a fidelity gate on the stage's own data. On the first `precision.gate.windows` held-out windows the
gate computes the clean CE and the CE spliced with the grid's first SAE (its massive-activation
treatment) once in float32 and once in bf16, from the same float32 prefixes (as the evaluation does);
bf16 is kept only if both means differ by at most `precision.gate.ce_nats` per token. The zero-ablated CE
is not gated: the evaluation computes it in float32 whatever the precision (`spliced`)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from gatedsae.core.precision import Precision, choose, gated
from gatedsae.data.lm_precision import matmul_weights
from gatedsae.evaluation.spliced import SplicedLM, kept_positions, window_means

GATED_CE = ("clean", "spliced")  # what runs in the evaluation's precision
REPLACEMENTS = {"clean": None, "zero": torch.zeros_like}  # "spliced": the SAE's reconstruction


@torch.no_grad()
def ce_means(model, site: str, layer: int, windows: np.ndarray, sae, batch_windows: int, device: str,
             precisions: dict[str, Precision], passes=GATED_CE, exact_logits: bool = True,
             float32_positions: int = 0) -> dict[str, dict[str, float]]:
    """Mean CE per token of each pass in `passes` (clean, zero, spliced with `sae`) over `windows`, per
    precision in `precisions` ({name: Precision}), the remainder only in that precision: the prefixes
    are float32 and computed once (`exact_logits`, `float32_positions`: as `spliced.SplicedLM`)."""
    exact = SplicedLM(model, site, layer)
    prefixes = [exact.prefix(torch.from_numpy(np.asarray(windows[start : start + batch_windows], dtype=np.int64)).to(device))
                for start in range(0, len(windows), batch_windows)]
    means = {}
    for name, precision in precisions.items():
        spliced = SplicedLM(model, site, layer, precision, exact_logits=exact_logits, float32_positions=float32_positions)
        per_pass: dict[str, list[np.ndarray]] = {part: [] for part in passes}
        with matmul_weights(model, precision) if precision.bf16 else contextlib.nullcontext():
            for prefix in prefixes:
                kept = kept_positions(prefix.activation, sae.massive_norm_threshold)
                for part in passes:
                    if part == "clean":
                        losses = spliced.token_losses(prefix, None)
                    else:
                        replace = REPLACEMENTS.get(part, sae.reconstruct)
                        losses = spliced.token_losses(prefix, replace(prefix.activation), kept)
                    per_pass[part].append(window_means(losses))
        means[name] = {part: float(np.concatenate(parts).mean()) for part, parts in per_pass.items()}
    return means


def evaluation_precision(config, model, site: str, layer: int, windows: np.ndarray, sae) -> Precision:
    """The precision of the clean and spliced remainders for this grid, gated as the module says."""
    evaluate, gate = config.evaluate, config.precision.gate
    chosen = choose("evaluate", config.precision.evaluate, evaluate.device)

    def measure() -> dict[str, float]:
        means = ce_means(model, site, layer, windows[: gate.windows], sae, evaluate.batch_windows, evaluate.device,
                         {dtype: choose("evaluate", dtype, evaluate.device) for dtype in ("float32", "bfloat16")},
                         float32_positions=config.precision.evaluate_float32_positions)
        return {f"ce_{name}_nats": abs(means["bfloat16"][name] - means["float32"][name]) for name in GATED_CE}

    return gated(chosen, measure, {f"ce_{name}_nats": gate.ce_nats for name in GATED_CE})
