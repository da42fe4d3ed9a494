"""TopK SAEs (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"), batched like the others:
the sparsity knob is k, the number of latents kept per token, instead of an L1 coefficient.

    π = (x − b_dec) W_enc + b_enc,   f = ReLU(TopK_k(π)),   x̂ = f W_dec + b_dec,
    L = ||x − x̂||² + α · ||e − ê||²,   e = sg(x − x̂),   ê = ReLU(TopK_k_aux(π of dead latents)) W_dec.

The second term is AuxK, the paper's dead-latent loss: the dead latents' largest pre-activations model
the part of x the live ones miss. A latent is dead once it has not fired for `dead_after_tokens` training
tokens. There is no L1 penalty (λ = 0) and no resampling: AuxK is what keeps latents alive.

What is detached follows the paper and its reference code: only the target e (x̂ is stopped), so AuxK
trains the dead latents' encoder columns and biases, their decoder rows, and b_dec through the encoder's
input centring, never the live latents' selection. ê has no b_dec (the paper's ê = W_dec z); the reference
code adds b_dec to both ê and e (detached in e), which would give b_dec a second, spurious AuxK gradient.

Deviations from the paper, each for a reason stated where it is set: the dead window is scaled to our
short runs, k_aux defaults to d/2, AuxK is plain squared error (not normalised by the variance of e as in
the reference code, so it is on the same scale as the reconstruction term it is added to), and a latent
counts as fired when its feature is > 0 (the reference code uses > 1e-3).
"""

from __future__ import annotations

import math
from typing import ClassVar, Sequence

import torch
from torch import Tensor

from gatedsae.plan.config.stages import DEAD_AFTER_TOKENS
from gatedsae.saes.base import BatchedSAE, LossTerms, squared_error


def topk_features(pi: Tensor, k: Tensor | int) -> Tensor:
    """ReLU of the k largest entries of each row of π, the others zero (sae-lens' `TopK`: select, then ReLU).

    π is [..., width]; k is an int, or a tensor broadcastable to π.shape[:-1] (e.g. [n, 1] for π
    [n, B, width]: one k per SAE). With several k the top-k_max is taken once and each row keeps its first
    k ranks, so rows never mix. Gradients reach the kept entries only."""
    k = torch.as_tensor(k, device=pi.device)
    k_max = int(k.max())
    values, indices = pi.topk(k_max, dim=-1, sorted=True)
    ranks = torch.arange(k_max, device=pi.device)
    kept = ranks < k.unsqueeze(-1)
    return torch.zeros_like(pi).scatter(-1, indices, torch.where(kept, torch.relu(values), 0.0))


def _validated_k(k: Tensor | float | Sequence[float], n: int, width: int) -> Tensor:
    values = torch.as_tensor(k, dtype=torch.float64).flatten()
    if values.numel() == 1:
        values = values.expand(n)
    if values.shape != (n,):
        raise ValueError(f"topk: k must have one value per SAE ({n}), got shape {tuple(values.shape)}")
    for value in values.tolist():
        if not (math.isfinite(value) and value == int(value) and 1 <= value <= width):
            raise ValueError(f"topk: k = {value:g} is not an integer in [1, width = {width}]; choose k as the "
                             "number of latents kept per token, between 1 and the SAE's width")
    return values.to(torch.long)


class TopKSAE(BatchedSAE):
    """`n` TopK SAEs; slice i keeps `k[i]` latents per token. k is the knob (`(n, d, width, k, seeds)`, as
    λ is the others'); there is no sparsity penalty, so no `sparsity_coefficient`."""

    arch = "topk"

    # AuxK's weight, the paper's α.
    AUX_COEFFICIENT: ClassVar[float] = 1 / 32

    def __init__(
        self,
        n: int,
        d: int,
        width: int,
        k: Tensor | float | Sequence[float],
        seeds: Sequence[int],
        *,
        k_aux: int | None = None,
        dead_after_tokens: int = DEAD_AFTER_TOKENS,
        aux_coefficient: float = AUX_COEFFICIENT,
    ):
        k = _validated_k(k, n, width)  # before any compute
        # k_aux: the paper uses 512 at d_model 768 and up, and recommends a power of two near d_model/2 (App.
        # B.1); d/2 (as sae-lens and EleutherAI do) keeps that ratio at any d, where a fixed 512 would exceed
        # d for small models. Never more than the width.
        k_aux = max(1, d // 2) if k_aux is None else k_aux
        if not (isinstance(k_aux, int) and k_aux >= 1):
            raise ValueError(f"topk: k_aux = {k_aux!r} must be a positive integer (default d/2)")
        if not (isinstance(dead_after_tokens, int) and dead_after_tokens >= 1):
            raise ValueError(f"topk: dead_after_tokens = {dead_after_tokens!r} must be a positive integer")
        if not (math.isfinite(aux_coefficient) and aux_coefficient >= 0):
            raise ValueError(f"topk: aux_coefficient = {aux_coefficient!r} must be finite and ≥ 0 (paper: 1/32)")
        super().__init__(n, d, width, k, seeds)
        self.k_aux, self.dead_after_tokens, self.aux_coefficient = min(k_aux, width), dead_after_tokens, aux_coefficient
        self.register_buffer("tokens_since_fired", torch.zeros(n, width, dtype=torch.long))
        self._add("W_enc", self._encoder_init())
        self._add("b_enc", torch.zeros(n, width))

    def _set_knob(self, knob: Tensor) -> None:
        self.register_buffer("k", knob)  # validated in __init__, before any compute

    def use_training_settings(self, train) -> None:
        self.dead_after_tokens = train.dead_after_tokens

    def preactivations(self, x: Tensor) -> Tensor:
        """π [n, B, width]."""
        return self._project(x, self.W_enc) + self.b_enc[:, None, :]

    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = topk_features(self.preactivations(x), self.k[:, None])
        return features, (features > 0).to(features.dtype)  # the sparsity reported is L0

    def dead(self) -> Tensor:
        """[n, width] bool: latents that have not fired for `dead_after_tokens` training tokens."""
        return self.tokens_since_fired >= self.dead_after_tokens

    @torch.no_grad()
    def _count_firing_(self, features: Tensor) -> None:
        fired = (features > 0).any(dim=1)  # [n, width]: fired on some token of this batch
        self.tokens_since_fired.add_(features.shape[1]).masked_fill_(fired, 0)

    def forward(self, x: Tensor) -> LossTerms:
        """As `BatchedSAE.forward`, with `sparsity` the mean L0 (count of non-zero features per token; not in
        the loss) and `auxiliary` the AuxK term. In training mode the batch first updates the counter of
        tokens since each latent fired, so a latent firing now is not dead for this batch's AuxK."""
        pi = self.preactivations(x)
        features = topk_features(pi, self.k[:, None])
        x_hat = self.decode(features)
        reconstruction = squared_error(x, x_hat)
        sparsity = (features > 0).to(pi.dtype).sum(-1).mean(-1)
        if self.training:
            self._count_firing_(features)
        auxiliary = self._auxk(x, x_hat, pi)
        return LossTerms(reconstruction + auxiliary, reconstruction, sparsity, auxiliary, features, x_hat)

    def _auxk(self, x: Tensor, x_hat: Tensor, pi: Tensor) -> Tensor:
        """[n] α · mean_B ||e − ê||² per SAE, zero for an SAE without dead latents."""
        dead = self.dead()
        if not dead.any():
            return pi.new_zeros(self.n)
        # Live latents can never be chosen: -inf ranks last, and ReLU turns any it takes (fewer dead
        # latents than k_aux) into 0, with no gradient.
        z = topk_features(pi.masked_fill(~dead[:, None, :], -math.inf), self.k_aux)
        residual = (x - x_hat).detach()
        e_hat = torch.bmm(z, self.W_dec)
        return self.aux_coefficient * dead.any(-1).to(pi.dtype) * squared_error(residual, e_hat)

    # --- export to sae-lens' inference `topk` architecture ---------------------------------------------

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        # π(s·x) = (x − b_dec/s)(s·W_enc) + b_enc: the top-k selection is unchanged on raw activations.
        return {"W_enc": state["W_enc"] * scale, "b_enc": state["b_enc"]}

    def saelens_cfg_extra(self, i: int) -> dict:
        """SAE i's fields of sae-lens' TopKSAEConfig. The exported decoder rows have norm 1/s, not 1, so
        sae-lens must not rescale pre-activations by them (its training config defaults to doing so)."""
        return {"k": int(self.k[i]), "rescale_acts_by_decoder_norm": False}

    @staticmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        """Features of raw x [B, d] from exported tensors, as sae-lens' `TopKSAE.encode` computes them."""
        pi = (x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"]
        if cfg.get("rescale_acts_by_decoder_norm", False):
            pi = pi * tensors["W_dec"].norm(dim=-1)
        return topk_features(pi, int(cfg["k"]))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, k={self.k.tolist()}, k_aux={self.k_aux}"
