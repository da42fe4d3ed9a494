"""JumpReLU SAEs (Rajamanoharan et al. 2024, "Jumping Ahead"), batched like every SAE here:

    π = (x − b_dec) W_enc + b_enc,   f = π ⊙ H(π − θ),   L = ||x − x̂||² + λ ||f||₀,

with a learned per-feature threshold θ ≥ 0. H passes no gradient to π; the jump's
effect on θ is estimated with the paper's straight-through estimators, whose pseudo-derivatives use the
rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth ε:

    ∂f/∂θ = −(θ/ε) K((π − θ)/ε),   ∂H(π − θ)/∂θ = −(1/ε) K((π − θ)/ε),   ∂f/∂π = H(π − θ).

The L0 term's gradient therefore trains the thresholds only; the encoder learns from reconstruction,
through the features that are open. b_dec is subtracted at the input (sae-lens' convention, not the
paper's pseudo-code, which has no input centring; the two are equivalent up to b_enc ← b_enc − b_dec W_enc)
so that the sae-lens `jumprelu` export has the same form as the Gated SAE's (`gated.to_jumprelu`).

θ itself is the parameter, kept ≥ 0 after each step, where the paper's pseudo-code trains log θ: Adam moves
a parameter by about lr per step, so log θ would take thousands of steps to climb from its initial 10⁻³
to the pre-activations' scale (≈ 0.1), and the replication trains for a few hundred; θ moves there in tens.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import Tensor

from gatedsae.saes.base import BatchedSAE
from gatedsae.saes.jumprelu_form import jumprelu_encode


def _rectangle(u: Tensor) -> Tensor:
    """The kernel K(u) = 1[|u| < 1/2]."""
    return (u.abs() < 0.5).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """f = π ⊙ H(π − θ) for π [n, B, width] and θ [n, width] (broadcast over the batch), with
    ∂f/∂π = H(π − θ) and the pseudo-derivative ∂f/∂θ = −(θ/ε) K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx, pi: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pi, threshold)
        ctx.bandwidth = bandwidth
        return pi * (pi > threshold[:, None, :]).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        pi, threshold = ctx.saved_tensors
        theta = threshold[:, None, :]
        grad_pi = grad * (pi > theta).to(grad.dtype) if ctx.needs_input_grad[0] else None
        grad_theta = None
        if ctx.needs_input_grad[1]:
            kernel = _rectangle((pi - theta) / ctx.bandwidth)
            grad_theta = -(theta / ctx.bandwidth * kernel * grad).sum(1)
        return grad_pi, grad_theta, None


class _Step(torch.autograd.Function):
    """H(π − θ), with no gradient to π and the pseudo-derivative ∂H/∂θ = −(1/ε) K((π − θ)/ε)."""

    @staticmethod
    def forward(ctx, pi: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(pi, threshold)
        ctx.bandwidth = bandwidth
        return (pi > threshold[:, None, :]).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[None, Tensor | None, None]:
        pi, threshold = ctx.saved_tensors
        grad_theta = None
        if ctx.needs_input_grad[1]:
            kernel = _rectangle((pi - threshold[:, None, :]) / ctx.bandwidth)
            grad_theta = -(kernel * grad).sum(1) / ctx.bandwidth
        return None, grad_theta, None


class JumpReLUSAE(BatchedSAE):
    """`n` JumpReLU SAEs; the knob, λ_L0, is each SAE's `sparsity_coefficient`: its L0 penalty's. The sparsity term of
    `forward` is the mean number of open features per input (the Heaviside step through its estimator);
    there is no auxiliary term."""

    arch = "jumprelu"

    # The paper's values, which are in units of the pre-activations: they assume inputs normalised so
    # that E||x||² = 1, as the trainer does (train.normalize); unnormalised inputs would need them scaled.
    INITIAL_THRESHOLD: ClassVar[float] = 1e-3
    BANDWIDTH: ClassVar[float] = 1e-3  # ε, the kernel's width: the threshold learns from π within ε/2 of it

    def __init__(self, n: int, d: int, width: int, knob: Tensor | float | Sequence[float], seeds: Sequence[int]):
        super().__init__(n, d, width, knob, seeds)
        self._add("W_enc", self._encoder_init())
        self._add("b_enc", torch.zeros(n, width))
        self._add("threshold", torch.full((n, width), self.INITIAL_THRESHOLD))  # θ [n, width]

    @torch.no_grad()
    def constrain_(self) -> None:
        """Unit-norm decoder rows, and θ ≥ 0 (a negative threshold would open features below zero)."""
        super().constrain_()
        self.threshold.clamp_(min=0.0)

    def preactivations(self, x: Tensor) -> Tensor:
        """π [n, B, width]."""
        return self._project(x, self.W_enc) + self.b_enc[:, None, :]

    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi, theta = self.preactivations(x), self.threshold
        return _JumpReLU.apply(pi, theta, self.BANDWIDTH), _Step.apply(pi, theta, self.BANDWIDTH)

    @torch.no_grad()
    def resample_(self, dead: Tensor, x: Tensor, errors: Tensor, seeds: Sequence[int]) -> Tensor:
        """The base class's resampling, plus the resampled features' thresholds back at their initial
        value (so the new encoder direction can open the feature)."""
        counts = super().resample_(dead, x, errors, seeds)
        resampled = dead & (counts > 0).to(dead.device)[:, None]
        self.threshold[resampled] = self.INITIAL_THRESHOLD
        return counts

    # --- export to sae-lens ---------------------------------------------------------------------------

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        # Trained on s·x: the pre-activations, and with them θ, are the same for raw x with W_enc · s.
        return {"W_enc": state["W_enc"] * scale, "b_enc": state["b_enc"], "threshold": state["threshold"]}

    @staticmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        """Features of raw activations x [B, d] from exported tensors, as sae-lens computes them."""
        if not cfg.get("apply_b_dec_to_input", True):  # sae-lens then feeds x uncentred to the encoder
            tensors = {**tensors, "b_dec": torch.zeros_like(tensors["b_dec"])}
        return jumprelu_encode(tensors, x)
