"""The LM with one site replaced: the clean prefix is computed once per batch, then only the remainder
of the model runs per replacement (an SAE's reconstruction, zeros, or the clean activation itself).

- resid_post, layer L: the prefix is blocks 0..L; the remainder starts at block L+1 from the
  (replaced) residual stream.
- mlp_out / attn_z, layer L: the prefix is blocks 0..L-1 (the residual stream entering block L); the
  remainder reruns block L with a hook that swaps in the replacement, then the rest.

The first position (BOS) always keeps its clean activation: SAEs are trained and evaluated without
it; so do positions with massive activations when a threshold is given (norm of the clean site
activation above it: the treatment recorded with each checkpoint). Cross-entropy is over the
predictions made from positions 1..T-2 (those the replacement can change; the BOS position's
prediction of token 1 is not), kept per window so that intervals can resample windows.

The blocks after the splice run in `lean_blocks` (TransformerLens' arithmetic without its per-call
overhead; at mlp_out block L is not rerun: the replacement is added to its clean resid_mid, kept as the
prefix's residual; at attn_z block L runs from its z on) for the models it supports, else in TransformerLens.
The remainder stops after the last block; the final norm, the unembedding and the CE then run a few
windows at a time on the predicting positions only (`Unembedding`): the vocabulary-wide logits of a
whole batch never exist at once, and the unembedding's transposed matrix is built once, not per call.

`HeldOutWindows` runs the clean prefix of every held-out window once and keeps it in memory (the
residual stream at the splice point: windows × T × d values), so each SAE then costs only the
remainder of the model and can be finished, and saved, on its own.

Precision (`core.precision`): what every SAE of a grid shares is computed once and in float32 always:
the prefix (so an SAE reads exactly the float32 activation) and the zero-ablation, whose CE moves far
more in bf16 than the clean or spliced CE (an LM with a site zeroed is off its training distribution;
measured per site in results/benchmarks/eval.json). The clean remainder and each
SAE's spliced remainder run in the evaluation's precision, the same for both, so that delta LM loss
compares two forwards of the same arithmetic; the evaluation's gate checks those two. Under bf16 two
parts of them are float32 still, where bf16 moved the CE most: the logits the CE reads most
(`Unembedding`) and the first positions' residual stream (`SplicedLM._float32_head`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from gatedsae.core.progress import progress_bar
from gatedsae.data.lm_precision import float32_matrices, float32_parameter, matmul_weights
from gatedsae.evaluation.lean_blocks import LeanBlocks, nonzero, supports
from gatedsae.plan.sites import flatten, hook_name, unflatten


@dataclass
class Prefix:
    """What one batch of windows leaves behind the clean prefix."""

    tokens: torch.Tensor      # [B, T]
    residual: torch.Tensor    # the residual stream the remainder starts from (under LeanBlocks at mlp_out:
                              # block L's resid_mid, which the site's output is added to)
    activation: torch.Tensor  # the site's clean activation, flattened [B, T, d]

    def select(self, windows: torch.Tensor) -> "Prefix":
        """The prefix of some of the batch's windows (a boolean mask over the batch)."""
        return Prefix(self.tokens[windows], self.residual[windows], self.activation[windows])


class SplicedLM:
    """`precision` (a `core.precision.Precision`; None: float32) is the LM's: its forwards run under that
    precision's autocast (the caller casts the weights once: `data.lm_precision.matmul_weights`), while a
    replacement is computed by the caller outside it, in float32."""

    def __init__(self, model, site: str, layer: int, precision=None, lean: bool = True, exact_logits: bool = True,
                 float32_positions: int = 0):
        self.model, self.site, self.layer = model, site, layer
        self.float32_positions = float32_positions if precision is not None and precision.bf16 else 0
        self.hook = hook_name(site, layer)
        self._start = layer + 1 if site == "resid_post" else layer
        self.precision = precision
        self.unembedding = Unembedding(model, drop_zero_bias=lean, exact_logits=exact_logits)
        # The blocks after the splice without TransformerLens' overhead, where the model is one it knows
        # (`lean_blocks`); block L of mlp_out and attn_z then runs only from the site on.
        self.lean = LeanBlocks(model) if lean and supports(model) else None

    @property
    def exact(self) -> "SplicedLM":
        """This LM's float32 twin (the same unembedding cache): for what every SAE shares."""
        if self.precision is None or not self.precision.bf16:
            return self
        twin = SplicedLM.__new__(SplicedLM)
        twin.__dict__.update(self.__dict__, precision=None, float32_positions=0)
        return twin

    @property
    def dtype(self) -> str:
        return "float32" if self.precision is None else self.precision.dtype

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if self.precision is None else self.precision.autocast()

    @torch.no_grad()
    def prefix(self, tokens: torch.Tensor) -> Prefix:
        with self.autocast():
            return self._prefix(tokens)

    def _prefix(self, tokens: torch.Tensor) -> Prefix:
        residual = self.model(tokens, stop_at_layer=self._start)
        if self.site == "resid_post":
            return Prefix(tokens, residual, residual)
        captured = {}

        def keep(activation, hook):
            captured["activation"] = activation

        def keep_mid(resid_mid, hook):
            captured["resid_mid"] = resid_mid

        # Block L alone, from the stored residual, to read the site's clean activation.
        lean_mlp = self.lean is not None and self.site == "mlp_out"
        hooks = [(self.hook, keep)] + ([(f"blocks.{self.layer}.hook_resid_mid", keep_mid)] if lean_mlp else [])
        self.model.run_with_hooks(residual, start_at_layer=self.layer, stop_at_layer=self.layer + 1, fwd_hooks=hooks)
        return Prefix(tokens, captured["resid_mid"] if lean_mlp else residual, flatten(self.site, captured["activation"]))

    @torch.no_grad()
    def token_losses(self, prefix: Prefix, replacement: torch.Tensor | None,
                     kept: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token next-token CE [B, T-2] with the site replaced (None: clean) at every position but
        those `kept` clean ([B, T] mask; None: BOS only)."""
        with self.autocast():
            final = self._final(prefix, replacement, kept)
        final = self._float32_head(final, prefix, replacement, kept)
        with self.autocast():
            return self.unembedding.token_losses(final, prefix.tokens)

    def _float32_head(self, final: torch.Tensor, prefix: Prefix, replacement: torch.Tensor | None,
                      kept: torch.Tensor | None) -> torch.Tensor:
        """Under bf16, the residual stream after the last block at positions 1..`float32_positions` computed
        again in float32 (attention is causal: a forward of the first positions alone computes them
        exactly); the unembedding then reads them as it reads the rest. Their residual stream holds
        SmolLM2's massive activations, which bf16 rounds coarsely: at the attention output of layer 3 the
        predictions made there carried nearly all of bf16's mean CE difference (validation windows;
        conf/precision)."""
        positions = min(self.float32_positions, final.shape[1] - 2)
        if positions <= 0:
            return final
        end = positions + 1  # BOS and the positions
        head = Prefix(prefix.tokens[:, :end], prefix.residual[:, :end], prefix.activation[:, :end])
        with float32_matrices(self.model):
            exact = self._final(head, None if replacement is None else replacement[:, :end],
                                None if kept is None else kept[:, :end])
        # Not in place: at the last layer the remainder may hand back the prefix's own tensor.
        return torch.cat([final[:, :1].float(), exact[:, 1:].float(), final[:, end:].float()], 1)

    def _final(self, prefix: Prefix, replacement: torch.Tensor | None, kept: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after the last block, the site replaced (None: clean)."""
        if self.lean is not None:
            return self._lean_remainder(prefix, replacement, kept)
        if replacement is None:
            return self._remainder(prefix, prefix.residual, hooks=[])
        kept = kept_positions(prefix.activation, None) if kept is None else kept
        replacement = torch.where(kept[..., None], prefix.activation, replacement.to(prefix.activation.dtype))
        if self.site == "resid_post":
            return self._remainder(prefix, replacement, hooks=[])

        def swap(activation, hook):
            return unflatten(self.site, replacement, activation)

        return self._remainder(prefix, prefix.residual, hooks=[(self.hook, swap)])

    def _lean_remainder(self, prefix: Prefix, replacement: torch.Tensor | None,
                        kept: torch.Tensor | None) -> torch.Tensor:
        """The residual stream after the last block by `LeanBlocks`, the site replaced (None: clean):
        resid_post starts at block L+1 from the replacement; mlp_out adds it to block L's clean resid_mid;
        attn_z finishes block L from its z."""
        if replacement is None:
            site = prefix.activation
        else:
            kept = kept_positions(prefix.activation, None) if kept is None else kept
            site = torch.where(kept[..., None], prefix.activation, replacement.to(prefix.activation.dtype))
        if self.site == "resid_post":
            residual = site
        elif self.site == "mlp_out":
            residual = prefix.residual + site
        else:
            residual = self.lean.after_z(self.lean.layers()[self.layer], prefix.residual, site)
        return self.lean.run(residual, self.layer + 1)

    def _remainder(self, prefix: Prefix, residual: torch.Tensor, hooks: list) -> torch.Tensor:
        """The residual stream after the last block (the unembedding is `Unembedding`'s)."""
        n_layers = self.model.cfg.n_layers
        if self._start >= n_layers:
            return residual
        return self.model.run_with_hooks(residual, start_at_layer=self._start, stop_at_layer=n_layers, fwd_hooks=hooks)


class Unembedding:
    """The final norm and the unembedding of a hooked transformer, applied to a few windows at a time.

    The transposed unembedding matrix (what `F.linear` wants) is kept between calls, one per storage and
    dtype (a stage may switch precision; a bf16 evaluation reads both).

    With the matrix in bf16 (`data.lm_precision.matmul_weights`) the product's output is bf16 too, and
    that rounding is most of what bf16 moves in the CE: a confident prediction's largest logits reach
    16–32, where a bf16 step is 0.06–0.12. The CE reads the target's logit and, through the log-sum-exp,
    mainly the largest ones, so those (`EXACT_LOGITS` per prediction, and the target's) are computed again
    in float32 from the float32 matrix and the float32 normed residual, a few hundred multiply-adds each
    against the vocabulary's tens of thousands; the rest keep their bf16 values (`exact_logits=False`:
    every logit bf16, as before this, for the benchmark of the earlier path)."""

    PREDICTIONS_PER_CHUNK = 252  # [252, vocabulary] logits at once (two windows of 128): tens of MB for SmolLM2
    EXACT_LOGITS = 8       # the largest bf16 logits per prediction recomputed in float32

    KEPT = 2  # transposed matrices kept: a bf16 evaluation reads the bf16 one and the float32 one

    def __init__(self, model, drop_zero_bias: bool = False, exact_logits: bool = True):
        self.model, self.exact_logits = model, exact_logits
        self._transposed: dict[tuple, torch.Tensor] = {}
        # An all-zero bias (SmolLM2's) changes no logit but makes every call copy it into the output first.
        self.bias = nonzero(model.unembed.b_U.detach()) if drop_zero_bias else model.unembed.b_U

    def _transpose(self, W_U: torch.Tensor) -> torch.Tensor:
        # Keyed by storage, not by tensor: a bf16 block keeps the float32 matrix aside as another tensor of
        # the same storage. The pipeline never edits an LM's weights in place (it swaps them whole).
        key = (W_U.data_ptr(), W_U.dtype, tuple(W_U.shape))
        if key not in self._transposed:
            while len(self._transposed) >= self.KEPT:
                self._transposed.pop(next(iter(self._transposed)))
            self._transposed[key] = W_U.detach().T.contiguous()
        return self._transposed[key]

    def weight(self) -> torch.Tensor:
        """The transposed matrix [vocabulary, d] in the model's current dtype."""
        return self._transpose(self.model.unembed.W_U)

    def exact_weight(self) -> torch.Tensor:
        """The float32 transposed matrix [vocabulary, d], also inside a bf16 block."""
        return self._transpose(float32_parameter(self.model, "unembed.W_U"))

    def normed(self, residual: torch.Tensor) -> torch.Tensor:
        model = self.model
        return model.ln_final(residual) if model.cfg.normalization_type is not None else residual

    def soft_cap(self, logits: torch.Tensor) -> torch.Tensor:
        cap = getattr(self.model.cfg, "output_logits_soft_cap", -1.0) or -1.0
        return cap * torch.tanh(logits / cap) if cap > 0 else logits

    def logits(self, residual: torch.Tensor) -> torch.Tensor:
        return self.soft_cap(F.linear(self.normed(residual), self.weight(), self.bias))

    def token_losses(self, residual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """CE of the predictions from positions 1..T-2 (of tokens 2..T-1), per token, in float32."""
        bf16 = self.exact_logits and self.model.unembed.W_U.dtype == torch.bfloat16
        # Whole windows per chunk; each chunk reads the whole matrix, so many short windows (the float32
        # head of a bf16 evaluation) share one
        per_chunk = max(1, self.PREDICTIONS_PER_CHUNK // max(1, tokens.shape[1] - 2))
        chunks = []
        for start in range(0, len(tokens), per_chunk):
            window = slice(start, start + per_chunk)
            if bf16:
                chunks.append(self._bf16_losses(residual[window, 1:-1], tokens[window]))
            else:
                chunks.append(next_token_losses(self.logits(residual[window, 1:-1]), tokens[window], predicting_only=True))
        return torch.cat(chunks)

    def _bf16_losses(self, residual: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """`next_token_losses` from bf16 logits whose largest and target entries are float32 (see the class)."""
        with torch.autocast(residual.device.type, enabled=False):
            normed = self.normed(residual.float()).reshape(-1, residual.shape[-1])
            logits = F.linear(normed.to(torch.bfloat16), self.weight()).float()
            targets = tokens[:, 2:].reshape(-1)
            top = min(self.EXACT_LOGITS, logits.shape[-1])
            columns = torch.cat([logits.topk(top, dim=-1, sorted=False).indices, targets[:, None]], 1)
            rows = self.exact_weight().index_select(0, columns.reshape(-1)).view(*columns.shape, -1)
            exact = torch.bmm(rows, normed[:, :, None]).squeeze(-1)
            logits.scatter_(1, columns, exact)
            if self.bias is not None:
                logits += self.bias.float()
            losses = F.cross_entropy(self.soft_cap(logits), targets, reduction="none")
        return losses.view(tokens.shape[0], -1)


def next_token_losses(logits: torch.Tensor, tokens: torch.Tensor, predicting_only: bool = False) -> torch.Tensor:
    """CE of the predictions from positions 1..T-2 (of tokens 2..T-1), per token, in float32, from a full
    forward's logits [B, T, V] (`predicting_only`: the logits of positions 1..T-2 alone)."""
    predicted = (logits if predicting_only else logits[:, 1:-1]).float()
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), tokens[:, 2:].reshape(-1),
                           reduction="none").reshape(tokens.shape[0], -1)


def kept_positions(activation: torch.Tensor, threshold: Optional[float]) -> torch.Tensor:
    """[B, T] True where the site keeps its clean activation: BOS, and (with a threshold) the positions
    whose clean activation's norm exceeds it (massive activations, treated like BOS)."""
    kept = torch.zeros(activation.shape[:2], dtype=torch.bool, device=activation.device)
    kept[:, 0] = True
    if threshold is not None:
        kept |= activation.float().norm(dim=-1) > threshold
    return kept


def window_means(losses: torch.Tensor) -> np.ndarray:
    """Mean CE per window [B] (every window has the same number of predictions)."""
    return losses.double().mean(1).cpu().numpy()


@dataclass
class WindowLosses:
    """Mean CE per held-out window with the site replaced, massive positions kept clean."""

    kept: np.ndarray
    massive_windows: int  # windows with a massive position kept clean


class HeldOutWindows:
    """Held-out windows through the clean prefix once; then per-window CE of any replacement.

    The prefixes and the zero-ablations (one per massive-activation threshold in `thresholds`) run here in
    float32, the clean remainder in `spliced`'s precision; `losses` then runs each SAE's remainder in that
    precision, fastest inside `data.lm_precision.matmul_weights(model, precision)` (the matrices cast
    once). A zero-ablation asked later for a new threshold is computed then, in float32, which needs the
    model's float32 matrices in place (outside that block)."""

    def __init__(self, spliced: SplicedLM, windows: np.ndarray, batch_windows: int, device: str,
                 progress: bool = False, thresholds: Iterable[Optional[float]] = ()):
        self.spliced = spliced
        self.prefixes: list[Prefix] = []
        for start in progress_bar("clean prefixes", "batch", items=range(0, len(windows), batch_windows),
                                  enabled=progress):
            tokens = torch.from_numpy(np.asarray(windows[start : start + batch_windows], dtype=np.int64))
            self.prefixes.append(spliced.exact.prefix(tokens.to(device)))
        self.predictions_per_window = windows.shape[1] - 2
        self._zero: dict[Optional[float], WindowLosses] = {}
        for threshold in dict.fromkeys(thresholds):
            self.zero(threshold)
        with matmul_weights(spliced.model, spliced.precision) if spliced.precision else contextlib.nullcontext():
            self.clean = np.concatenate([window_means(spliced.token_losses(prefix, None)) for prefix in self.prefixes])

    def __len__(self) -> int:
        return len(self.clean)

    def passes(self) -> dict[str, str | int]:
        """The precision of each pass (for the provenance of what is saved)."""
        head = self.spliced.float32_positions
        return {"prefix": "float32", "zero_ablation": "float32", "clean": self.spliced.dtype,
                "spliced": self.spliced.dtype} | ({"float32_positions": head} if head else {})

    @torch.no_grad()
    def losses(self, reconstruct: Callable[[torch.Tensor], torch.Tensor], threshold: Optional[float]) -> WindowLosses:
        """Per-window CE with the site replaced by `reconstruct(clean activation)`. Massive positions
        (above `threshold`) keep their clean activation, as BOS does."""
        return self._losses(self.spliced, reconstruct, threshold)

    def _losses(self, spliced: SplicedLM, reconstruct, threshold: Optional[float]) -> WindowLosses:
        kept_means, massive = [], 0
        for prefix in self.prefixes:
            kept = kept_positions(prefix.activation, threshold)
            kept_means.append(window_means(spliced.token_losses(prefix, reconstruct(prefix.activation), kept)))
            massive += int(kept[:, 1:].any(1).sum())
        return WindowLosses(np.concatenate(kept_means), massive)

    def zero(self, threshold: Optional[float]) -> WindowLosses:
        """The zero-ablation, in float32 whatever the evaluation's precision (computed once per threshold)."""
        if threshold not in self._zero:
            self._zero[threshold] = self._losses(self.spliced.exact, torch.zeros_like, threshold)
        return self._zero[threshold]
