"""The Gated SAE (Rajamanoharan et al. 2024) and its Fig. 8 ablations, and its export as the
equivalent JumpReLU SAE."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from gatedsae.saes.base import BatchedSAE, squared_error
from gatedsae.saes.support_step import SupportPass, rows_to_features, tied_magnitude, tied_scale, times_encoder

# ---------------------------------------------------------------------------------------------------
# Gated SAEs: the variants override small methods (`_init_magnitude`, `magnitude_weight`,
# `_magnitude_preactivation`, `_decode_auxiliary`) or `frozen`.


class GatedSAE(BatchedSAE):
    """π_gate = (x − b_dec) W_gate + b_gate,  π_mag = (x − b_dec) W_mag + b_mag,  W_mag = W_gate ⊙ exp(r_mag),
    f = 1[π_gate > 0] ⊙ ReLU(π_mag)   (the Heaviside passes no gradient),
    L = ||x − x̂||² + λ ||ReLU(π_gate)||₁ + ||x − (ReLU(π_gate) W_dec' + b_dec')||²   (' = gradient stopped).

    As in the paper's pseudo-code, only the decoder *output* of the auxiliary term is detached; the
    b_dec subtracted from x at the encoder input still receives the auxiliary gradient."""

    arch = "gated"

    def __init__(self, n: int, d: int, width: int, knob: Tensor | float | Sequence[float], seeds: Sequence[int]):
        super().__init__(n, d, width, knob, seeds)
        self._add("W_gate", self._encoder_init())
        self._add("b_gate", torch.zeros(n, width))
        self._add("b_mag", torch.zeros(n, width))
        self._init_magnitude()

    def _init_magnitude(self) -> None:
        self._add("r_mag", torch.zeros(self.n, self.width))

    def magnitude_weight(self) -> Tensor:
        """The effective W_mag [n, d, width]."""
        return self.W_gate * torch.exp(self.r_mag)[:, None, :]

    def _magnitude_preactivation(self, x: Tensor, z_gate: Tensor) -> Tensor:
        # Tied: (x − b_dec)(W_gate ⊙ exp(r_mag)) = exp(r_mag) ⊙ ((x − b_dec) W_gate), so reuse the gate's matmul.
        return torch.exp(self.r_mag)[:, None, :] * z_gate + self.b_mag[:, None, :]

    def preactivations(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(π_gate, π_mag), each [n, B, width]."""
        z_gate = self._project(x, self.W_gate)
        return z_gate + self.b_gate[:, None, :], self._magnitude_preactivation(x, z_gate)

    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        pi_gate, pi_mag = self.preactivations(x)
        features = (pi_gate > 0).to(pi_mag.dtype) * torch.relu(pi_mag)  # comparison: no gradient to the gate
        return features, torch.relu(pi_gate)

    def _decode_auxiliary(self, gate_acts: Tensor) -> Tensor:
        # Stopped decoder: the auxiliary term trains the gate path only.
        return torch.bmm(gate_acts, self.W_dec.detach()) + self.b_dec.detach()[:, None, :]

    def _auxiliary(self, x: Tensor, penalised: Tensor) -> Tensor:
        return squared_error(x, self._decode_auxiliary(penalised))

    # On the support (saes/support_step.py): ∂L/∂π_gate = ∂L/∂a + λ/B with a = ReLU(π_gate), which the
    # auxiliary reconstruction decodes; z = (x − b_dec) W_gate feeds both paths (π_mag = exp(r_mag) ⊙ z + b_mag).

    def support_gate(self) -> tuple[Tensor, Tensor]:
        return self.W_gate, self.b_gate

    def support_magnitude(self, step: SupportPass) -> Tensor:
        return tied_magnitude(step, self.r_mag, self.b_mag)

    def support_auxiliary(self, step: SupportPass) -> Tensor | None:
        x_aux = step.on.decode(step.pi, step.decoder).view(self.n, -1, self.d) + self.b_dec[:, None, :]
        return x_aux - step.x

    def _support_gate_grad(self, step: SupportPass, d_penalty: Tensor, g_aux: Tensor) -> Tensor:
        """[nnz]: ∂L/∂π_gate on S."""
        return step.on.dots(g_aux, step.decoder) + d_penalty

    def support_encoder_grads(self, step: SupportPass, d_mag: Tensor, d_penalty: Tensor,
                              g_aux: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        d_gate = self._support_gate_grad(step, d_penalty, g_aux)
        scale = tied_scale(step, self.r_mag)
        d_z = d_gate + scale * d_mag
        grads = {"b_gate": step.on.per_feature(d_gate), "b_mag": step.on.per_feature(d_mag),
                 "r_mag": step.on.per_feature(d_mag * scale * step.z), "W_gate": step.on.scatter(d_z, step.centred)}
        return grads, times_encoder(step.on.per_feature(d_z), self.W_gate)

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        r_mag = state["r_mag"] if "r_mag" in state else torch.zeros_like(state["b_mag"])
        return {"W_enc": state["W_gate"] * scale, "b_gate": state["b_gate"], "b_mag": state["b_mag"], "r_mag": r_mag}

    @staticmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        """sae-lens `gated` (and our `gated_untied`, which has its own W_mag instead of r_mag)."""
        centred = x - tensors["b_dec"]
        gate = centred @ tensors["W_enc"] + tensors["b_gate"]
        if "W_mag" in tensors:
            magnitude = centred @ tensors["W_mag"] + tensors["b_mag"]
        else:
            magnitude = torch.exp(tensors["r_mag"]) * (centred @ tensors["W_enc"]) + tensors["b_mag"]
        return (gate > 0).to(x.dtype) * torch.relu(magnitude)


class GatedUnfrozenDecoderSAE(GatedSAE):
    """Ablation (Fig. 8): the auxiliary reconstruction also trains W_dec and b_dec."""

    arch = "gated_unfrozen_decoder"

    def _decode_auxiliary(self, gate_acts: Tensor) -> Tensor:
        return self.decode(gate_acts)

    def support_decoder_grads(self, step: SupportPass, f: Tensor, g: Tensor, g_aux: Tensor | None,
                              encoder_sum: Tensor) -> dict[str, Tensor]:
        grads = super().support_decoder_grads(step, f, g, g_aux, encoder_sum)
        grads["W_dec"] += step.on.scatter(step.pi, g_aux)  # the auxiliary reconstruction trains the decoder
        grads["b_dec"] += g_aux.view(self.n, -1, self.d).sum(1)
        return grads


class GatedNoRmagSAE(GatedSAE):
    """Ablation (Fig. 8): r_mag fixed at 0 (a buffer), so W_mag = W_gate."""

    arch = "gated_no_rmag"
    frozen = frozenset({"r_mag"})


class GatedUntiedSAE(GatedSAE):
    """Ablation (Fig. 8): a separate W_mag [n, d, width], no r_mag. Not expressible as a JumpReLU."""

    arch = "gated_untied"

    def _init_magnitude(self) -> None:
        self._add("W_mag", self._encoder_init())

    def magnitude_weight(self) -> Tensor:
        return self.W_mag

    def _magnitude_preactivation(self, x: Tensor, z_gate: Tensor) -> Tensor:
        # float32 whatever `encoder_bf16`: a step on the support takes these products on S only (dots)
        return torch.bmm(x - self.b_dec[:, None, :], self.W_mag) + self.b_mag[:, None, :]

    def support_magnitude(self, step: SupportPass) -> Tensor:
        return step.on.dots(step.centred, rows_to_features(self.W_mag)) + step.on.at_features(self.b_mag)

    def support_encoder_grads(self, step: SupportPass, d_mag: Tensor, d_penalty: Tensor,
                              g_aux: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        d_gate = self._support_gate_grad(step, d_penalty, g_aux)
        grads = {"b_gate": step.on.per_feature(d_gate), "b_mag": step.on.per_feature(d_mag),
                 "W_gate": step.on.scatter(d_gate, step.centred), "W_mag": step.on.scatter(d_mag, step.centred)}
        return grads, times_encoder(grads["b_gate"], self.W_gate) + times_encoder(grads["b_mag"], self.W_mag)

    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        return {"W_enc": state["W_gate"] * scale, "b_gate": state["b_gate"], "b_mag": state["b_mag"],
                "W_mag": state["W_mag"] * scale}


# ---------------------------------------------------------------------------------------------------
# Export and checkpoints.


def to_jumprelu(sae: GatedSAE, i: int) -> dict[str, Tensor]:
    """Slice i of a tied Gated SAE as the equivalent JumpReLU SAE (inference costs as a baseline):
    W_enc = W_gate ⊙ exp(r_mag), b_enc = b_mag, threshold θ = b_mag − exp(r_mag) ⊙ b_gate.
    Since π_mag − θ = exp(r_mag) ⊙ π_gate and exp > 0, π_gate > 0 ⇔ π_mag > θ."""
    if not isinstance(sae, GatedSAE) or isinstance(sae, GatedUntiedSAE):
        raise TypeError(f"only a tied Gated SAE is a JumpReLU; got {getattr(sae, 'arch', type(sae).__name__)}")
    with torch.no_grad():
        scale = torch.exp(sae.r_mag[i])
        return {
            "W_enc": (sae.W_gate[i] * scale).clone(),
            "b_enc": sae.b_mag[i].clone(),
            "threshold": (sae.b_mag[i] - scale * sae.b_gate[i]).clone(),
            "W_dec": sae.W_dec[i].clone(),
            "b_dec": sae.b_dec[i].clone(),
        }
