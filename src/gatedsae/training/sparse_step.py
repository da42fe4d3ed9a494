"""One training step's loss terms and gradients, computed densely (autograd) or on the support only.

A dense step of an SAE of width m on B activations of width d costs about six B × d × m matmuls. All
but one of them act only on the *support* S: the (row b, feature j) pairs whose gate is open,
π_gate[b, j] > 0 (for a baseline π = the pre-activation). Off S the features f, the penalised
activations ReLU(π_gate) and the derivatives through the ReLU and the Heaviside gate are all zero, so

    forward    c = x − b_dec,  π = c W_gate + b_gate             the one dense matmul (baddbmm)
               S = {(b, j): π_bj > 0}                              nonzero
               f_bj on S: π_bj (baseline); ReLU(exp(r_j) (π_bj − b_gate_j) + b_mag_j) (tied Gated);
                          ReLU(c_b · W_mag[:, j] + b_mag_j) (untied: sampled dot products)
               x̂_b = Σ_{j ∈ S_b} f_bj W_dec[j] + b_dec                        decode
               x̂aux_b = Σ_{j ∈ S_b} π_bj W_dec[j] + b_dec  (Gated; a = ReLU(π) = π on S)
    backward   g = ∂L/∂x̂ = 2 (x̂ − x) / B,  gaux = 2 (x̂aux − x) / B
               ∂L/∂f_bj = g_b · W_dec[j],  ∂L/∂a_bj = gaux_b · W_dec[j] + λ/B   on S only (sampled dots)
               ∂L/∂π_mag = ∂L/∂f ⊙ 1[π_mag > 0],  ∂L/∂π_gate = ∂L/∂a (Gated) or ∂L/∂f + λ/B (baseline)
               ∂L/∂W_dec[j] = Σ_{b: (b,j) ∈ S} f_bj g_b  (+ a_bj gaux_b, decoder unfrozen)   scatter
               ∂L/∂W_gate[:, j] = Σ_{b: (b,j) ∈ S} ∂L/∂z_bj c_b,  z = c W_gate           scatter
               ∂L/∂b_dec = Σ_b g_b (+ Σ_b gaux_b) − W_gate Σ_b ∂L/∂z_b   (c = x − b_dec feeds the encoder)
               biases and r_mag: sums over b of the per-pair gradients               index_add

with ∂L/∂z = ∂L/∂π_gate + exp(r) ⊙ ∂L/∂π_mag for a tied Gated SAE (π_mag = exp(r) ⊙ z + b_mag). So a step
costs one dense matmul plus O(|S| · d) = O(B · L0 · d) instead of O(B · m · d). The kernels: decode and
scatter are `embedding_bag(mode="sum", per_sample_weights=...)` (FBGEMM on CPUs), the sampled dot products
`torch.sparse.sampled_addmm`; each output row is reduced by one thread, so results are deterministic.

What differs between architectures (which pre-activation gates, the magnitudes, the auxiliary term,
the encoder's gradients) is on each SAE class (`support_*`, saes/support_step.py); what they share is here.
`sparse_step_` writes every trainable parameter's full (dense) `.grad`, equal to what
`dense_step_` (autograd on the module's forward) writes up to float rounding, so the optimiser, the
decoder-norm projection and resampling run unchanged: Adam decays its moments for every parameter.
The n SAEs of a batched module are handled at once: SAE i's rows and features are offset by i · B and
i · m in one block-diagonal support, so no computation mixes SAEs.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedsae.plan.architectures import ARCHITECTURES
from gatedsae.saes.base import BatchedSAE
from gatedsae.saes.encoder_product import bf16_product
from gatedsae.saes.support_step import SupportPass

__all__ = ["StepOutcome", "dense_step_", "sparse_step_"]


@dataclass
class StepOutcome:
    """Per-SAE results of one step whose gradients are in the parameters' `.grad`."""

    total: Tensor           # [n] reconstruction + λ · sparsity + auxiliary
    reconstruction: Tensor  # [n]
    sparsity: Tensor        # [n]
    auxiliary: Tensor       # [n]
    l0: Tensor              # [n]  mean number of features with f > 0 per row
    fired: Tensor           # [n, width] bool: the feature had f > 0 on some row


def dense_step_(module: BatchedSAE, x: Tensor, autocast: bool = False) -> StepOutcome:
    """Autograd on the module's forward: `total.sum().backward()` (optionally under bf16 autocast)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=autocast):
        terms = module(x)
    total = terms.total.float()
    total.sum().backward()
    with torch.no_grad():
        active = terms.features > 0
        return StepOutcome(total.detach(), terms.reconstruction.detach().float(), terms.sparsity.detach().float(),
                           terms.auxiliary.detach().float(), active.float().sum(-1).mean(-1), active.any(dim=1))


@dataclass
class _Support:
    """The open-gate (SAE i, row b, feature j) triples of a batch, in row-major order, with the index
    arrays the kernels need. Rows are numbered i · B + b and features i · m + j (block-diagonal)."""

    flat: Tensor         # [nnz]  index into the [n, B, m] pre-activations
    row: Tensor          # [nnz]  i · B + b
    col: Tensor          # [nnz]  i · m + j
    sae: Tensor          # [nnz]  i
    row_starts: Tensor   # [n · B] where each row's run begins (embedding_bag offsets)
    pattern: Tensor      # sparse CSR [n · B, n · m] with this support (for sampled dot products)
    by_col: Tensor       # [nnz] the permutation that sorts the triples by feature (stable)
    row_by_col: Tensor   # [nnz] row[by_col]
    col_starts: Tensor   # [n · m] where each feature's run begins in that order
    cols: int            # n · m

    @classmethod
    def of(cls, open_gate: Tensor) -> _Support:
        n, batch, width = open_gate.shape
        flat = open_positions(open_gate)
        row = flat.div(width, rounding_mode="floor")
        sae = row.div(batch, rounding_mode="floor")
        col = flat - row * width + sae * width
        crow = _exclusive_cumsum(torch.bincount(row, minlength=n * batch), end=True)
        with warnings.catch_warnings():  # "sparse CSR support is in beta": sampled_addmm is all we use
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, col, torch.zeros(len(col), device=col.device),
                                              (n * batch, n * width), check_invariants=False)
        # Sorting the columns as int32 gives the same stable permutation in about two thirds of the time.
        by_col = torch.sort(col.to(torch.int32) if n * width < 2**31 else col, stable=True).indices
        col_starts = _exclusive_cumsum(torch.bincount(col, minlength=n * width))
        return cls(flat, row, col, sae, crow[:-1], pattern, by_col, row.index_select(0, by_col), col_starts,
                   n * width)

    def decode(self, values: Tensor, table: Tensor) -> Tensor:
        """[n · B, d]: row r = Σ over its triples of value × table[col] (table [n · m, d])."""
        return F.embedding_bag(self.col, table, self.row_starts, mode="sum", per_sample_weights=values)

    def scatter(self, values: Tensor, table: Tensor) -> Tensor:
        """[n · m, d]: feature c = Σ over its triples of value × table[row] (table [n · B, d])."""
        return F.embedding_bag(self.row_by_col, table, self.col_starts, mode="sum",
                               per_sample_weights=values.index_select(0, self.by_col))

    def dots(self, left: Tensor, right: Tensor) -> Tensor:
        """[nnz]: left[row] · right[col] for each triple (left [n · B, d], right [n · m, d])."""
        pattern = self.pattern if self.pattern.dtype == left.dtype else self.pattern.to(left.dtype)
        return torch.sparse.sampled_addmm(pattern, left, right.T, beta=0.0).values()

    def at_features(self, per_feature: Tensor) -> Tensor:
        """[nnz]: a per-feature tensor [n, m] read at each triple's feature."""
        return per_feature.reshape(-1).index_select(0, self.col)

    def at_saes(self, per_sae: Tensor) -> Tensor:
        return per_sae.index_select(0, self.sae)

    def per_feature(self, values: Tensor) -> Tensor:
        """[n · m]: the sum of `values` over each feature's triples."""
        return values.new_zeros(self.cols).index_add_(0, self.col, values)

    def per_sae(self, values: Tensor, n: int) -> Tensor:
        return values.new_zeros(n).index_add_(0, self.sae, values)


def open_positions(mask: Tensor) -> Tensor:
    """The flat indices of a bool tensor's True entries, ascending: `mask.reshape(-1).nonzero()`, found
    eight entries at a time. A gate is open for a few percent of (row, feature) pairs, so most 8-byte
    words of the mask are zero; scanning its words, then the bytes of the words that are not, reads the
    mask about twice as fast as scanning every byte (the scan is the support's largest cost)."""
    flat = mask.reshape(-1)
    if flat.numel() % 8 or flat.storage_offset() % 8:  # a word view needs whole, aligned words
        return flat.nonzero().squeeze(1)
    words = flat.view(torch.int64).nonzero().squeeze(1)
    lanes = flat.view(-1, 8).index_select(0, words).nonzero()      # (word, byte) of each True entry, in order
    return words.index_select(0, lanes[:, 0]).mul_(8).add_(lanes[:, 1])


def _exclusive_cumsum(counts: Tensor, end: bool = False) -> Tensor:
    """[0, c0, c0 + c1, ...] (with the total appended when `end`)."""
    starts = torch.zeros(len(counts) + 1, dtype=torch.long, device=counts.device)
    torch.cumsum(counts, 0, out=starts[1:])
    return starts if end else starts[:-1]


def _features_to_encoder(grad: Tensor, param: Tensor) -> Tensor:
    """The inverse layout: [n · m, d] -> [n, d, m], laid out in memory as `param` is (encoder weights
    start as the transposed decoder, so they are usually stored feature-major: then no copy)."""
    grad = grad.view(param.shape[0], param.shape[2], param.shape[1]).transpose(1, 2)
    return grad if grad.stride() == param.stride() else grad.contiguous()


@torch.no_grad()
def sparse_step_(module: BatchedSAE, x: Tensor) -> StepOutcome:
    """The step's loss terms, with the gradient of `total.sum()` written into every trainable
    parameter's `.grad` (dense tensors), computed on the support only (see the module docstring): the
    shared part here, each architecture's own part through its class's `support_*` methods
    (saes/support_step.py). x is [B, d] (shared by the SAEs) or [n, B, d]; float32 or float64, no autocast;
    the encoder's product in bf16 when the module's `encoder_bf16` says so, as in its dense step."""
    record = ARCHITECTURES.get(getattr(module, "arch", None))
    if record is None or not record.sparse_steps:
        raise TypeError(f"no sparse step for {type(module).__name__}")
    n, width, d = module.n, module.width, module.d
    gate_weight, gate_bias = module.support_gate()

    centred = x - module.b_dec[:, None, :]                                   # [n, B, d]
    batch = centred.shape[1]
    centred = centred.expand(n, batch, d)
    # The dense matmul, [n, B, m]: under bf16 it stays bf16 (as the dense step's, saes/encoder_product.py)
    # and only its entries on S are cast, which saves writing and reading B × m float32 values.
    z = bf16_product(centred, gate_weight) if module.encoder_bf16 else torch.bmm(centred, gate_weight)
    support = _Support.of(z > -gate_bias[:, None, :])                        # π = z + b_gate > 0
    z = z.reshape(-1).index_select(0, support.flat).to(x.dtype)              # z on S
    pi = z + support.at_features(gate_bias)                                  # π on S (> 0): also ReLU(π)
    decoder = module.W_dec.reshape(-1, d)                                    # [n · m, d]
    step = SupportPass(support, x, centred.reshape(-1, d), z, pi, decoder)
    pi_mag = module.support_magnitude(step)
    f = torch.relu(pi_mag)

    # Forward: reconstruction, sparsity, auxiliary.
    x_hat = support.decode(f, decoder).view(n, batch, d) + module.b_dec[:, None, :]
    residual = x_hat - x
    reconstruction = residual.pow(2).sum(-1).mean(-1)
    sparsity = support.per_sae(pi, n) / batch
    l1 = module.sparsity_coefficient.to(pi.dtype)
    aux_residual = module.support_auxiliary(step)
    auxiliary = torch.zeros_like(reconstruction) if aux_residual is None else aux_residual.pow(2).sum(-1).mean(-1)
    total = reconstruction + l1 * sparsity + auxiliary

    # Backward.
    g = (2.0 / batch) * residual.reshape(-1, d)                               # ∂L/∂x̂
    g_aux = None if aux_residual is None else (2.0 / batch) * aux_residual.reshape(-1, d)
    d_mag = support.dots(g, decoder).masked_fill_(pi_mag <= 0, 0.0)          # ∂L/∂π_mag (= ∂L/∂f where on)
    grads, encoder_sum = module.support_encoder_grads(step, d_mag, support.at_saes(l1 / batch), g_aux)
    if module.decoder_trainable:
        grads |= module.support_decoder_grads(step, f, g, g_aux, encoder_sum)

    for name, param in module.named_parameters():
        grad = grads[name]
        if param.dim() == 3 and name != "W_dec":  # encoder weights: [n · m, d] -> [n, d, m]
            grad = _features_to_encoder(grad, param)
        param.grad = grad.view_as(param)

    active = (f > 0).to(f.dtype)
    fired = support.per_feature(active).view(n, width) > 0
    l0 = support.per_sae(active, n) / batch
    return StepOutcome(total, reconstruction, sparsity, auxiliary, l0, fired)
