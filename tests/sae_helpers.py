"""What the SAE maths tests share: random inputs, SAEs moved off their initialisation, gradients, one
training step, and toy data with known sparse features."""

from __future__ import annotations

import torch

from gatedsae.saes.base import LossTerms

KNOB_BUFFERS = {"sparsity_coefficient", "k"}  # what `perturb` leaves alone: the knob sets what is tested


def inputs(batch: int, d: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[batch, d] standard normal inputs, the same for a seed."""
    return torch.randn(batch, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


@torch.no_grad()
def perturb(sae, seed: int = 1, scale: float = 0.3, buffers: bool = True) -> None:
    """Move every parameter (and with `buffers`, every floating buffer but the knob and an ablation's fixed
    r_mag) off its init, so no term is trivially zero; decoder rows back at unit norm."""
    gen = torch.Generator().manual_seed(seed)
    tensors = [*sae.named_parameters(), *(sae.named_buffers() if buffers else [])]
    for name, t in tensors:
        if name in KNOB_BUFFERS or not t.is_floating_point() or (name == "r_mag" and "r_mag" in sae.frozen):
            continue
        t.add_(scale * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))


def gradients(sae, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every parameter's gradient of `loss` (zeros where none reaches it)."""
    sae.zero_grad(set_to_none=True)
    loss.backward()
    return {name: p.grad.clone() if p.grad is not None else torch.zeros_like(p) for name, p in sae.named_parameters()}


def train_step(sae, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> LossTerms:
    """One step as the trainer takes it: backward, decoder gradient along the sphere, step, constraints."""
    optimizer.zero_grad(set_to_none=True)
    terms = sae(x)
    terms.total.sum().backward()
    sae.remove_parallel_decoder_grad_()
    optimizer.step()
    sae.constrain_()
    return terms


def toy_directions(gen: torch.Generator, features: int = 32, d: int = 16) -> torch.Tensor:
    """`features` random unit ground-truth directions in d dimensions."""
    directions = torch.randn(features, d, generator=gen)
    return directions / directions.norm(dim=-1, keepdim=True)


def toy_batch(gen: torch.Generator, directions: torch.Tensor, batch: int) -> torch.Tensor:
    """Each direction active with probability 0.05, magnitude U[1, 3]."""
    active = torch.rand(batch, directions.shape[0], generator=gen) < 0.05
    magnitude = 1 + 2 * torch.rand(batch, directions.shape[0], generator=gen)
    return (active * magnitude) @ directions
