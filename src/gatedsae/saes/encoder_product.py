"""The encoder's product (x − b_dec) @ W in the precision training chose (`precision.train`).

In a training step this product is the largest dense part (B × d × m multiply-adds; on the support
everything else costs O(B · L0 · d)). Under bfloat16 its operands are rounded to bf16 and multiplied
with float32 accumulation (the bf16 GEMM of oneDNN on a CPU with AVX512-BF16/AMX, tensor cores on a
GPU); the product is then rounded to bf16, as under autocast, and used as float32. Nothing else changes:
the weights that train (the master weights), Adam's moments, every other term of the loss and every
gradient stay float32, and the gradient of the product is the float32 one (straight through the
rounding of the operands), which is what a step on the support computes (training/sparse_step.py).

A dense step and a step on the support compute this product with the same call on the same operands,
so in the same precision they see the same bf16 values, the same open gates and the same gradients up
to float rounding (tests/test_sparse_step.py).
"""

from __future__ import annotations

import torch
from torch import Tensor


def bf16_product(centred: Tensor, W: Tensor) -> Tensor:
    """[n, B, m] in bf16: centred [n, B, d] @ W [n, d, m] with bf16 operands and float32 accumulation."""
    return torch.bmm(centred.to(torch.bfloat16), W.to(torch.bfloat16))


class _Bf16Product(torch.autograd.Function):
    """bf16 forward, float32 backward (the gradient of the exact product at the float32 operands)."""

    @staticmethod
    def forward(ctx, centred: Tensor, W: Tensor) -> Tensor:
        ctx.save_for_backward(centred, W)
        return bf16_product(centred, W).to(centred.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        centred, W = ctx.saved_tensors
        grad_centred = torch.bmm(grad, W.transpose(1, 2)) if ctx.needs_input_grad[0] else None
        grad_W = torch.bmm(centred.transpose(1, 2), grad) if ctx.needs_input_grad[1] else None
        return grad_centred, grad_W


def encoder_product(centred: Tensor, W: Tensor, bf16: bool) -> Tensor:
    """centred [n, B, d] @ W [n, d, m], in bf16 (float32 accumulation, float32 result and gradient) when
    `bf16`, else in the operands' own dtype."""
    if not bf16:
        return torch.bmm(centred, W)
    return _Bf16Product.apply(centred, W)
