"""The JumpReLU form, f = 1[π > θ] ⊙ ReLU(π) with π = (x − b_dec) W_enc + b_enc: what a JumpReLU SAE
computes, and what a tied Gated SAE reduces to at inference (`gated.to_jumprelu`). Both architectures'
sae-lens `jumprelu` exports are read through this one function."""

from __future__ import annotations

import torch
from torch import Tensor


def jumprelu_encode(params: dict[str, Tensor], x: Tensor) -> Tensor:
    """x [B, d] -> features [B, width] = 1[π > θ] ⊙ ReLU(π), π = (x − b_dec) W_enc + b_enc."""
    pi = (x - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
    return (pi > params["threshold"]).to(pi.dtype) * torch.relu(pi)
