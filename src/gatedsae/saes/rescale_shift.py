"""Fig. 9's rescale-and-shift: a trained baseline, frozen, with a per-feature rescale and shift of its
magnitudes learned on top (written as a tied sae-lens `gated` SAE)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gatedsae.saes.baseline import BaselineSAE
from gatedsae.saes.gated import GatedSAE
from gatedsae.saes.support_step import SupportPass, tied_magnitude, tied_scale


class RescaleShiftSAE(BaselineSAE):
    """Paper Fig. 9: a trained baseline frozen, with only a per-feature rescale r_mag and shift b_mag
    learned on top. The baseline's pre-activation π gates; the magnitude is re-derived from it:

        π = (x − b_dec) W_enc + b_enc,   f = 1[π > 0] ⊙ ReLU(exp(r_mag) ⊙ (π − b_enc) + b_mag).

    With r_mag = 0 and b_mag = b_enc it is exactly the baseline. This is a tied Gated SAE with
    W_gate = W_enc, b_gate = b_enc frozen. The sparsity term ||ReLU(π)||₁ is constant in the trainable
    parameters (reported, not trained); there is no auxiliary term. Build it with `from_baseline`.
    """

    arch = "baseline_rescale_shift"
    frozen = frozenset({"W_enc", "b_enc", "W_dec", "b_dec"})

    def __init__(self, n: int, d: int, width: int, knob: Tensor | float | Sequence[float], seeds: Sequence[int]):
        super().__init__(n, d, width, knob, seeds)
        self._add("r_mag", torch.zeros(n, width))
        self._add("b_mag", self.b_enc.clone())

    @classmethod
    def from_baseline(cls, baseline: BaselineSAE) -> RescaleShiftSAE:
        if type(baseline) is not BaselineSAE:
            raise TypeError(f"from_baseline needs a BaselineSAE, got {type(baseline).__name__}")
        sae = cls(baseline.n, baseline.d, baseline.width, baseline.sparsity_coefficient.detach().clone(), baseline.seeds)
        sae.to(device=baseline.W_dec.device, dtype=baseline.W_dec.dtype)
        with torch.no_grad():
            for name in cls.frozen:
                getattr(sae, name).copy_(getattr(baseline, name))
            sae.b_mag.copy_(baseline.b_enc)
        return sae

    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = self._project(x, self.W_enc)
        pi = z + self.b_enc[:, None, :]
        magnitude = torch.exp(self.r_mag)[:, None, :] * z + self.b_mag[:, None, :]  # z = π − b_enc
        features = (pi > 0).to(z.dtype) * torch.relu(magnitude)
        return features, torch.relu(pi)

    def support_magnitude(self, step: SupportPass) -> Tensor:
        return tied_magnitude(step, self.r_mag, self.b_mag)

    def support_encoder_grads(self, step: SupportPass, d_mag: Tensor, d_penalty: Tensor,
                              g_aux: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        # Only r_mag and b_mag train (the sparsity term is constant in them); the baseline under them is frozen.
        grads = {"b_mag": step.on.per_feature(d_mag),
                 "r_mag": step.on.per_feature(d_mag * tied_scale(step, self.r_mag) * step.z)}
        return grads, None

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        # A tied Gated SAE with W_gate = W_enc, b_gate = b_enc.
        return {"W_enc": state["W_enc"] * scale, "b_gate": state["b_enc"], "r_mag": state["r_mag"],
                "b_mag": state["b_mag"]}

    @staticmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        return GatedSAE.encode_saelens(cfg, tensors, x)
