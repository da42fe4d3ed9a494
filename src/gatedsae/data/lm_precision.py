"""The LM's forward in the precision a stage chose (`gatedsae.core.precision`).

bfloat16 here is autocast (bf16 operands, float32 accumulation inside each matmul; the residual stream
and the norms stay float32) with one difference that matters for speed: the matrices of the matmuls are
cast to bf16 once, on entry, instead of by autocast at every call (on a 2-core CPU the per-call cast of
the 49,152 × 576 unembedding costs about as much as the bf16 matmul it feeds). The numbers are
autocast's: a weight is rounded to bf16 either way (the spliced evaluation's unembedding goes further and
recomputes the logits the CE reads most in float32: `evaluation.spliced.Unembedding`). On exit the
float32 weights are back in place.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

# Parameters looked up rather than multiplied: they stay float32 (the residual stream starts float32).
LOOKUP_PARAMETERS = ("embed.", "pos_embed.")


def matmul_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters that enter matmuls as matrices (2-D or more), embeddings excepted."""
    return [(name, parameter) for name, parameter in model.named_parameters()
            if parameter.dim() >= 2 and not name.startswith(LOOKUP_PARAMETERS)]


# Where a bf16 block keeps the float32 matrices it replaced (for `float32_matrices`).
_FLOAT32_MATRICES = "_gatedsae_float32_matrices"


@contextlib.contextmanager
def matmul_weights(model: torch.nn.Module, precision) -> Iterator[None]:
    """The model's matmul matrices in bf16 inside this block when `precision` is bf16 (forwards must then
    run under `precision.autocast()`); float32 again on exit. Inside an outer bf16 block it does nothing."""
    kept: dict[str, torch.Tensor] = {}
    try:
        if precision.bf16:
            for name, parameter in matmul_parameters(model):
                if parameter.dtype == torch.float32:
                    kept[name] = parameter.data
                    parameter.data = parameter.data.to(torch.bfloat16)
        if kept:
            setattr(model, _FLOAT32_MATRICES, kept)
        yield
    finally:
        for name, parameter in matmul_parameters(model):
            if name in kept:
                parameter.data = kept[name]
        if kept:
            delattr(model, _FLOAT32_MATRICES)


@contextlib.contextmanager
def float32_matrices(model: torch.nn.Module) -> Iterator[None]:
    """Inside a bf16 `matmul_weights` block, the float32 matrices back in place (a float32 forward of a
    few positions, run outside autocast); the bf16 ones again on exit. Elsewhere it does nothing."""
    kept: dict[str, torch.Tensor] = getattr(model, _FLOAT32_MATRICES, {})
    swapped: dict[str, torch.Tensor] = {}
    try:
        for name, parameter in matmul_parameters(model):
            if name in kept:
                swapped[name] = parameter.data
                parameter.data = kept[name]
        yield
    finally:
        for name, parameter in matmul_parameters(model):
            if name in swapped:
                parameter.data = swapped[name]


@contextlib.contextmanager
def lm_forward_precision(model: torch.nn.Module, precision) -> Iterator[None]:
    """Run the model's forwards inside this block in `precision` (a `core.precision.Precision`)."""
    with matmul_weights(model, precision), precision.autocast():
        yield


def float32_parameter(model: torch.nn.Module, name: str) -> torch.Tensor:
    """A parameter's float32 values, inside a bf16 `matmul_weights` block (which keeps them aside) or not."""
    kept: dict[str, torch.Tensor] = getattr(model, _FLOAT32_MATRICES, {})
    return kept[name] if name in kept else model.get_parameter(name).data
