"""Sparse autoencoders as *batched* torch modules: one module holds `n` independent SAEs of the same
architecture and width (every parameter stacked on dim 0), so a grid of L1 coefficients trains in one
pass with batched matmuls. Slice i of every parameter and buffer is SAE i, and no computation mixes
slices: training SAE i inside a grid equals training it alone, up to float rounding.

Orientation follows sae-lens: encoder weights are [n, d, width] (pre-activations = (x − b_dec) @ W + b),
decoder weights are [n, width, d] and their rows are the dictionary directions, kept at unit norm.

Architectures (the registry, `gatedsae.plan.architectures`, maps names to their classes):

    baseline                 ReLU SAE with an L1 penalty on the features
    gated                    Gated SAE, tied magnitude weights W_mag = exp(r_mag) ⊙ W_gate
    gated_unfrozen_decoder   ablation: the auxiliary loss also trains W_dec and b_dec
    gated_no_rmag            ablation: r_mag fixed at 0 (W_mag = W_gate)
    gated_untied             ablation: a separate W_mag parameter
    baseline_rescale_shift   a frozen trained baseline plus learned per-feature rescale and shift (Fig. 9)

This module holds what they share: `BatchedSAE` (decoder, loss, decoder-norm constraint, resampling,
sae-lens export), `make_sae`, and slicing one SAE out of a batched module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch
from torch import Tensor, nn

from gatedsae.plan.architectures import ENCODER_AXIS, architecture, sae_class
from gatedsae.saes.encoder_product import encoder_product
from gatedsae.saes.support_step import SupportPass


@dataclass
class LossTerms:
    """Per-SAE loss terms of one batch. Training backpropagates `total.sum()`: the SAEs are independent,
    so each slice's gradient is that of its own loss."""

    total: Tensor           # [n]  reconstruction + λ · sparsity + auxiliary
    reconstruction: Tensor  # [n]  mean over the batch of ||x − x̂||² (summed over d)
    # [n] mean over the batch of what the sparsity penalty measures, before its coefficient λ: the L1 norm
    # of the penalised activations (baseline, Gated: ReLU(π_gate)), the L0 norm of the features (JumpReLU,
    # in the loss through its straight-through estimator; TopK, reported only: k sets its sparsity)
    sparsity: Tensor
    auxiliary: Tensor       # [n]  zeros for architectures without one (TopK: AuxK; Gated: its auxiliary loss)
    features: Tensor        # [n, B, width]
    x_hat: Tensor           # [n, B, d]


def default_seeds(seed: int, n: int) -> list[int]:
    """Per-slice seeds derived from one run seed."""
    return [seed * 1_000_003 + i for i in range(n)]


def _random_unit_rows(rows: int, d: int, seed: int) -> Tensor:
    generator = torch.Generator().manual_seed(int(seed))
    w = torch.randn(rows, d, generator=generator)
    return w / w.norm(dim=-1, keepdim=True)


def squared_error(x: Tensor, x_hat: Tensor) -> Tensor:
    """[n] mean over the batch of ||x − x̂||²; x is [B, d] (broadcast over the SAEs) or [n, B, d]."""
    return (x - x_hat).pow(2).sum(-1).mean(-1)


class BatchedSAE(nn.Module, ABC):
    """`n` SAEs of one architecture. Holds the decoder (shared by all architectures), the loss, and the
    decoder-norm constraint; subclasses supply the encoder through `_encode_terms`."""

    arch: ClassVar[str]
    # Names of tensors stored as (non-trainable) buffers instead of parameters, e.g. an ablation's fixed
    # r_mag or the frozen baseline under a rescale-and-shift.
    frozen: ClassVar[frozenset[str]] = frozenset()
    # Buffers renamed since states were saved: old name → new. "l1" held the sparsity coefficient (and, for
    # TopK, zeros: dropped, as TopK has no coefficient).
    LEGACY_BUFFERS: ClassVar[dict[str, str]] = {"l1": "sparsity_coefficient"}
    # Whether the encoder's product runs in bf16 (saes/encoder_product.py): set by the trainer from
    # `precision.train`, never saved with the weights (a loaded SAE evaluates in float32).
    encoder_bf16: bool = False

    def __init__(self, n: int, d: int, width: int, knob: Tensor | float | Sequence[float], seeds: Sequence[int]):
        """`knob`: each SAE's value of its architecture's sparsity knob (or one value for all): the
        coefficient λ of the sparsity penalty here, k for TopK (see `_set_knob`)."""
        super().__init__()
        seeds = [int(s) for s in seeds]
        if len(seeds) != n:
            raise ValueError(f"{self.arch}: got {len(seeds)} seeds for n={n} SAEs")
        self.n, self.d, self.width, self.seeds = n, d, width, seeds
        self._set_knob(knob)
        # Each slice draws from its own generator, so its init depends on its seed only (not on n or i).
        self._add("W_dec", torch.stack([_random_unit_rows(width, d, s) for s in seeds]))
        self._add("b_dec", torch.zeros(n, d))

    def _set_knob(self, knob: Tensor | float | Sequence[float]) -> None:
        """Store the knob: λ per SAE, the sparsity penalty's coefficient in `forward`'s loss (an architecture
        whose knob is not a penalty's coefficient stores its own instead)."""
        coefficient = torch.as_tensor(knob, dtype=torch.float32).flatten()
        if coefficient.numel() == 1:
            coefficient = coefficient.expand(self.n)
        if coefficient.shape != (self.n,):
            raise ValueError(f"{self.arch}: the sparsity coefficient needs one value per SAE ({self.n}), got shape "
                             f"{tuple(coefficient.shape)}")
        self.register_buffer("sparsity_coefficient", coefficient.clone())

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for old, new in self.LEGACY_BUFFERS.items():
            if prefix + old in state_dict:
                value = state_dict.pop(prefix + old)
                if hasattr(self, new) and prefix + new not in state_dict:
                    state_dict[prefix + new] = value
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def use_training_settings(self, train) -> None:
        """Take what the architecture reads from the training settings (`train`, conf/train/); the trainer
        calls this once the grid is built. Most read nothing; TopK reads its dead window."""

    def _add(self, name: str, value: Tensor) -> None:
        if name in self.frozen:
            self.register_buffer(name, value)
        else:
            self.register_parameter(name, nn.Parameter(value))

    def _encoder_init(self) -> Tensor:
        """[n, d, width]: encoder weights start as the decoder transposed."""
        return self.W_dec.detach().transpose(1, 2).clone()

    def _project(self, x: Tensor, W: Tensor) -> Tensor:
        """(x − b_dec) @ W per SAE: x [B, d] or [n, B, d], W [n, d, width] -> [n, B, width]; in bf16 under
        `encoder_bf16` (the gate's or encoder's product, the one a step on the support computes densely)."""
        centred = x - self.b_dec[:, None, :]  # [B, d] broadcasts to [n, B, d]
        return encoder_product(centred, W, self.encoder_bf16)

    @abstractmethod
    def _encode_terms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(features, penalised): the features [n, B, width] and the non-negative activations whose L1 norm
        is the sparsity term (the features themselves for a baseline, ReLU(π_gate) for a Gated SAE)."""

    def _auxiliary(self, x: Tensor, penalised: Tensor) -> Tensor:
        return penalised.new_zeros(self.n)

    def encode(self, x: Tensor) -> Tensor:
        return self._encode_terms(x)[0]

    def decode(self, f: Tensor) -> Tensor:
        return torch.bmm(f, self.W_dec) + self.b_dec[:, None, :]

    def forward(self, x: Tensor) -> LossTerms:
        features, penalised = self._encode_terms(x)
        x_hat = self.decode(features)
        reconstruction = squared_error(x, x_hat)
        sparsity = penalised.sum(-1).mean(-1)  # penalised ≥ 0, so its sum is its L1 norm
        auxiliary = self._auxiliary(x, penalised)
        total = reconstruction + self.sparsity_coefficient.to(reconstruction.dtype) * sparsity + auxiliary
        return LossTerms(total, reconstruction, sparsity, auxiliary, features, x_hat)

    @property
    def decoder_trainable(self) -> bool:
        return isinstance(self.W_dec, nn.Parameter)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Project every decoder row back to unit norm (after each optimizer step). A frozen decoder is
        left alone."""
        if self.decoder_trainable:
            self.W_dec.div_(self.W_dec.norm(dim=-1, keepdim=True))

    @torch.no_grad()
    def constrain_(self) -> None:
        """The architecture's constraints, applied after each optimizer step: unit-norm decoder rows (a
        subclass adds its own, e.g. JumpReLU's non-negative thresholds)."""
        self.normalize_decoder_()

    @torch.no_grad()
    def remove_parallel_decoder_grad_(self) -> None:
        """Drop the component of W_dec.grad parallel to each decoder row (before each optimizer step), so
        the step moves rows along the unit sphere rather than changing their norm."""
        if not self.decoder_trainable or self.W_dec.grad is None:
            return
        # One SAE at a time, through one [width, d] buffer: its row products stay in cache where an
        # [n, width, d] temporary would not, and a dot per row as a batched 1×1 matmul (einsum's route)
        # costs about 4× as much on CPU.
        product = torch.empty_like(self.W_dec[0])
        for W, grad in zip(self.W_dec, self.W_dec.grad):
            parallel = torch.mul(grad, W, out=product).sum(-1) / torch.mul(W, W, out=product).sum(-1)
            grad.addcmul_(parallel.unsqueeze(-1), W, value=-1)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # --- a training step on the support only (saes/support_step.py; training/sparse_step.py) -------------

    def support_gate(self) -> tuple[Tensor, Tensor]:
        """(weight [n, d, width], bias [n, width]) of the pre-activation whose sign opens a feature's gate:
        its positive entries are the support. Only architectures whose record sets `sparse_steps` have one."""
        raise TypeError(f"no sparse step for {type(self).__name__}")

    def support_magnitude(self, step: SupportPass) -> Tensor:
        """[nnz]: the magnitude pre-activation π_mag on the support (the features are ReLU(π_mag) there)."""
        return step.pi

    def support_auxiliary(self, step: SupportPass) -> Tensor | None:
        """[n, B, d]: the residual of the loss's auxiliary reconstruction, or None when it has none."""
        return None

    def support_encoder_grads(self, step: SupportPass, d_mag: Tensor, d_penalty: Tensor,
                              g_aux: Tensor | None) -> tuple[dict[str, Tensor], Tensor | None]:
        """The encoder parameters' gradients (encoder weights as [n · m, d] tables) from ∂L/∂π_mag on S
        (`d_mag`), the penalty's λ/B per triple (`d_penalty`) and the auxiliary residual's gradient
        [n · B, d]; and Σ_j ∂L/∂z_j W[:, j] per SAE [n, d], which ∂L/∂b_dec subtracts (None: frozen decoder)."""
        raise TypeError(f"no sparse step for {type(self).__name__}")

    def support_decoder_grads(self, step: SupportPass, f: Tensor, g: Tensor, g_aux: Tensor | None,
                              encoder_sum: Tensor) -> dict[str, Tensor]:
        """W_dec's and b_dec's gradients (a trainable decoder) from the features on S and ∂L/∂x̂ [n · B, d]."""
        return {"W_dec": step.on.scatter(f, g),
                "b_dec": g.view(self.n, -1, self.d).sum(1) - encoder_sum.view(self.n, self.d)}

    # --- dead-feature resampling (Bricken et al.) ----------------------------------------------------

    def _feature_axes(self) -> dict[str, int]:
        """Trainable tensor → the axis indexing its features (the architecture registry's record)."""
        return architecture(self.arch).feature_axes

    def feature_mask_for(self, param: Tensor, dead: Tensor) -> Tensor | None:
        """A boolean mask over `param` selecting the entries of the features marked in `dead` [n, width]."""
        name = next((k for k, p in self.named_parameters() if p is param), None)
        axes = self._feature_axes()
        if name not in axes:
            return None
        return (dead[:, None, :] if axes[name] == ENCODER_AXIS and param.dim() == 3
                else dead[:, :, None] if param.dim() == 3 else dead).expand_as(param)

    @torch.no_grad()
    def resample_(self, dead: Tensor, x: Tensor, errors: Tensor, seeds: Sequence[int]) -> Tensor:
        """Re-initialise the features in `dead` [n, width] towards inputs drawn with probability ∝ the
        square of their reconstruction loss, i.e. ∝ ||x − x̂||⁴ (`errors` [n, B] holds ||x − x̂||²): Bricken
        et al.'s rule, which the paper's App. D follows. The inputs are drawn from the current batch without
        replacement while the batch has rows left (Bricken et al. draw from 819,200 inputs, so two features
        rarely share one): ∝ ||x − x̂||⁴ puts nearly all the mass on a massive activation when one is in the
        batch, and drawn with replacement it would give hundreds of dead features the same direction, which
        then fire together on every input that leans that way (the every-token run diverged so).
        Decoder row = the centred input's direction,
        encoder column = that direction × 0.2 × the mean norm of alive encoder columns, biases and r_mag
        zero. `seeds[i]` drives SAE i's draws, so no SAE's resampling depends on the others'. Returns the
        number of features resampled per SAE. A frozen decoder is left alone."""
        counts = torch.zeros(self.n, dtype=torch.long)
        if not self.decoder_trainable:
            return counts
        params, axes = dict(self.named_parameters()), self._feature_axes()
        # Encoders: [n, d, width] with the features last; biases (and r_mag): [n, width]. W_dec is set apart.
        encoders = [p for k, p in params.items() if axes.get(k) == ENCODER_AXIS and p.dim() == 3]
        biases = [p for k, p in params.items() if k in axes and p.dim() == 2]
        for i in range(self.n):
            index = dead[i].nonzero().squeeze(-1)
            weights = errors[i].float().cpu() ** 2
            if len(index) == 0 or not torch.isfinite(weights).all() or weights.sum() <= 0:
                continue
            generator = torch.Generator().manual_seed(int(seeds[i]))
            picks = _draw_rows(weights / weights.sum(), len(index), generator)
            centred = x[picks.to(x.device)] - self.b_dec[i]
            directions = centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            self.W_dec[i, index] = directions
            for encoder in encoders:
                alive = ~dead[i]
                norm = encoder[i][:, alive].norm(dim=0).mean() if alive.any() else torch.tensor(1.0)
                encoder[i][:, index] = directions.T * 0.2 * norm
            for bias in biases:
                bias[i, index] = 0.0
            counts[i] = len(index)
        return counts

    # --- export as sae-lens ----------------------------------------------------------------------------

    def saelens_tensors(self, i: int, scale: float) -> dict[str, Tensor]:
        """SAE i as the tensors of its sae-lens architecture, for raw (unscaled) activations.

        Trained on s·x: pre-activations (s·x − b_dec) W + b = (x − b_dec/s)(s·W) + b, and x̂ = (f W_dec + b_dec)/s,
        so encoder matrices are multiplied by s, decoder and b_dec divided by s, and biases are unchanged."""
        state = {k: v.detach().float().cpu() for k, v in slice_state(self, i).items()}
        tensors = {"W_dec": state["W_dec"] / scale, "b_dec": state["b_dec"] / scale,
                   **self._saelens_encoder(state, scale)}
        return {k: v.contiguous() for k, v in tensors.items()}

    @abstractmethod
    def _saelens_encoder(self, state: dict[str, Tensor], scale: float) -> dict[str, Tensor]:
        """The encoder's sae-lens tensors from one slice's state (see `saelens_tensors`)."""

    def saelens_cfg_extra(self, i: int) -> dict:
        """Fields of SAE i's sae-lens cfg.json beyond the shared ones (e.g. TopK's k)."""
        return {}

    @staticmethod
    @abstractmethod
    def encode_saelens(cfg: dict, tensors: dict[str, Tensor], x: Tensor) -> Tensor:
        """Features [B, width] of raw activations x [B, d] from exported sae-lens tensors."""

    def extra_repr(self) -> str:
        return f"arch={self.arch}, n={self.n}, d={self.d}, width={self.width}"


def _draw_rows(probabilities: Tensor, count: int, generator: torch.Generator) -> Tensor:
    """`count` row indices drawn ∝ `probabilities`: without replacement while rows of nonzero probability
    remain, the rest (more dead features than such rows) with replacement."""
    distinct = min(count, int((probabilities > 0).sum()))
    picks = torch.multinomial(probabilities, distinct, replacement=False, generator=generator)
    if distinct == count:
        return picks
    rest = torch.multinomial(probabilities, count - distinct, replacement=True, generator=generator)
    return torch.cat([picks, rest])


def make_sae(
    arch: str,
    n: int,
    d: int,
    width: int,
    knob: Tensor | float | Sequence[float],
    seed: int,
    seeds: Sequence[int] | Tensor | None = None,
) -> BatchedSAE:
    """`n` SAEs of architecture `arch`, slice i at `knob[i]` of its sparsity knob (λ, or k for TopK);
    slice i is initialised from `seeds[i]` when given, else from
    `default_seeds(seed, n)[i]`. (`baseline_rescale_shift` built here wraps a freshly initialised baseline;
    use `RescaleShiftSAE.from_baseline` to wrap a trained one.)"""
    per_slice = default_seeds(seed, n) if seeds is None else [int(s) for s in seeds]
    return sae_class(arch)(n, d, width, knob, per_slice)


def slice_state(sae: BatchedSAE, i: int) -> dict[str, Tensor]:
    """SAE i's parameters and buffers (its knob included) without the leading n dim."""
    tensors = {**dict(sae.named_parameters()), **dict(sae.named_buffers())}
    return {name: t.detach()[i].clone() for name, t in tensors.items()}


def load_slice_state(sae: BatchedSAE, i: int, state: dict[str, Tensor]) -> None:
    """Write a `slice_state` into slice i (keys and shapes must match exactly)."""
    tensors = {**dict(sae.named_parameters()), **dict(sae.named_buffers())}
    if set(state) != set(tensors):
        raise KeyError(
            f"{sae.arch} slice state mismatch: missing {sorted(set(tensors) - set(state))}, "
            f"unexpected {sorted(set(state) - set(tensors))}"
        )
    with torch.no_grad():
        for name, target in tensors.items():
            if state[name].shape != target.shape[1:]:
                raise ValueError(f"{name}: expected shape {tuple(target.shape[1:])}, got {tuple(state[name].shape)}")
            target[i].copy_(state[name])
