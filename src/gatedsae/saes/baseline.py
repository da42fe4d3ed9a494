"""The baseline SAE: ReLU features with an L1 penalty (sae-lens `standard`)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gatedsae.saes.base import BatchedSAE
from gatedsae.saes.support_step import SupportPass, times_encoder

# ---------------------------------------------------------------------------------------------------
# Baseline.


class BaselineSAE(BatchedSAE):
    """f = ReLU((x − b_dec) W_enc + b_enc); L = ||x − x̂||² + λ ||f||₁."""

    arch = "baseline"

    def __init__(self, n: int, d: int, width: int, knob: Tensor | float | Sequence[float], seeds: Sequence[int]):
        super().__init__(n, d, width, knob, seeds)
        self._add("W_enc", self._encoder_init())
        self._add("b_enc", torch.zeros(n, width))

    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        f = torch.relu(self._project(x, self.W_enc) + self.b_enc[:, None, :])
        return f, f

    def support_gate(self) -> tuple[Tensor, Tensor]:
        return self.W_enc, self.b_enc

    def support_encoder_grads(self, step: SupportPass, d_mag: Tensor, d_penalty: Tensor,
                              g_aux: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        d_pre = d_mag + d_penalty  # f = ReLU(π): ∂L/∂π = ∂L/∂f + λ/B on S
        grads = {"b_enc": step.on.per_feature(d_pre), "W_enc": step.on.scatter(d_pre, step.centred)}
        return grads, times_encoder(grads["b_enc"], self.W_enc)

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        return {"W_enc": state["W_enc"] * scale, "b_enc": state["b_enc"]}

    @staticmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.relu((x - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"])
