"""What an architecture supplies to a training step computed on its support only.

`gatedsae.training.sparse_step` holds the shared machinery: the support S (the open-gate (SAE, row,
feature) triples), its kernels, the one dense matmul, the reconstruction and its gradient, and writing
every parameter's `.grad`; its docstring derives the gradients. Each architecture whose record sets
`sparse_steps` says on its class what differs, through `BatchedSAE`'s `support_*` methods:

    support_gate            the pre-activation whose sign is the gate: its weight and bias
    support_magnitude       the magnitude pre-activation π_mag on S (f = ReLU(π_mag) there)
    support_auxiliary       the auxiliary reconstruction's residual, if the loss has one
    support_encoder_grads   the gradients of its encoder parameters, and W_enc-side sum for ∂L/∂b_dec
    support_decoder_grads   the decoder's gradients (shared; an ablation that trains it more adds its part)

The methods see S through the `Support` protocol only, so this layer does not import training's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Support(Protocol):
    """The kernels on S (training/sparse_step.py's `_Support`); nnz triples, n SAEs, B rows, m features."""

    def decode(self, values: Tensor, table: Tensor) -> Tensor:
        """[n · B, d]: row r = Σ over its triples of value × table[col] (table [n · m, d])."""

    def scatter(self, values: Tensor, table: Tensor) -> Tensor:
        """[n · m, d]: feature c = Σ over its triples of value × table[row] (table [n · B, d])."""

    def dots(self, left: Tensor, right: Tensor) -> Tensor:
        """[nnz]: left[row] · right[col] for each triple (left [n · B, d], right [n · m, d])."""

    def at_features(self, per_feature: Tensor) -> Tensor:
        """[nnz]: a per-feature tensor [n, m] read at each triple's feature."""

    def per_feature(self, values: Tensor) -> Tensor:
        """[n · m]: the sum of `values` over each feature's triples."""


@dataclass
class SupportPass:
    """One batch on the support, as the architecture's `support_*` methods read it."""

    on: Support
    x: Tensor        # [B, d] or [n, B, d]: the inputs
    centred: Tensor  # [n · B, d]: x − b_dec, one row per (SAE, row)
    z: Tensor        # [nnz]: (x − b_dec) · W_gate[:, j] on S
    pi: Tensor       # [nnz]: π_gate = z + b_gate on S (> 0 there, so also ReLU(π_gate))
    decoder: Tensor  # [n · m, d]: the decoder rows of every SAE


def rows_to_features(W: Tensor) -> Tensor:
    """An encoder weight [n, d, m] as one table [n · m, d] whose row i · m + j is W[i, :, j]."""
    return W.transpose(1, 2).reshape(-1, W.shape[1])


def times_encoder(per_feature: Tensor, W: Tensor) -> Tensor:
    """[n, d]: W[i] @ v[i] for an encoder weight W [n, d, m] and v = `per_feature` [n · m]."""
    return torch.bmm(per_feature.view(W.shape[0], 1, W.shape[2]), W.transpose(1, 2)).view(W.shape[0], -1)


def tied_scale(step: SupportPass, r_mag: Tensor) -> Tensor:
    """[nnz]: exp(r_mag) at each triple's feature (tied magnitudes: W_mag = exp(r_mag) ⊙ W_gate)."""
    return step.on.at_features(torch.exp(r_mag))


def tied_magnitude(step: SupportPass, r_mag: Tensor, b_mag: Tensor) -> Tensor:
    """[nnz]: π_mag = exp(r_mag) ⊙ z + b_mag on S, reusing the gate's product z."""
    return torch.addcmul(step.on.at_features(b_mag), tied_scale(step, r_mag), step.z)
