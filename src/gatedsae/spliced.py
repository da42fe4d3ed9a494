"""The LM with one site replaced: the clean prefix is computed once per batch, then only the remainder
of the model runs per replacement (an SAE's reconstruction, zeros, or the clean activation itself).

- resid_post, layer L: the prefix is blocks 0..L; the remainder starts at block L+1 from the
  (replaced) residual stream.
- mlp_out / attn_z, layer L: the prefix is blocks 0..L-1 (the residual stream entering block L); the
  remainder reruns block L with a hook that swaps in the replacement, then the rest.

The first position (BOS) always keeps its clean activation: SAEs are trained and evaluated without
it. Cross-entropy is over the predictions made from positions 1..T-2 (those the replacement can
change; the BOS position's prediction of token 1 is not).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .sites import flatten, hook_name, unflatten


@dataclass
class Prefix:
    """What one batch of windows leaves behind the clean prefix."""

    tokens: torch.Tensor      # [B, T]
    residual: torch.Tensor    # the residual stream the remainder starts from
    activation: torch.Tensor  # the site's clean activation, flattened [B, T, d]


class SplicedLM:
    def __init__(self, model, site: str, layer: int):
        self.model, self.site, self.layer = model, site, layer
        self.hook = hook_name(site, layer)
        self._start = layer + 1 if site == "resid_post" else layer

    @torch.no_grad()
    def prefix(self, tokens: torch.Tensor) -> Prefix:
        residual = self.model(tokens, stop_at_layer=self._start)
        if self.site == "resid_post":
            return Prefix(tokens, residual, residual)
        captured = {}

        def keep(activation, hook):
            captured["activation"] = activation

        # Block L alone, from the stored residual, to read the site's clean activation.
        self.model.run_with_hooks(residual, start_at_layer=self.layer, stop_at_layer=self.layer + 1,
                                  fwd_hooks=[(self.hook, keep)])
        return Prefix(tokens, residual, flatten(self.site, captured["activation"]))

    @torch.no_grad()
    def token_losses(self, prefix: Prefix, replacement: torch.Tensor | None) -> torch.Tensor:
        """Per-token next-token CE [B, T-2] with the site replaced (None: clean) at positions 1..T-1."""
        if replacement is None:
            logits = self._remainder(prefix, prefix.residual, hooks=[])
        else:
            replacement = torch.cat([prefix.activation[:, :1], replacement[:, 1:].to(prefix.activation.dtype)], 1)
            if self.site == "resid_post":
                logits = self._remainder(prefix, replacement, hooks=[])
            else:
                def swap(activation, hook):
                    return unflatten(self.site, replacement, activation)

                logits = self._remainder(prefix, prefix.residual, hooks=[(self.hook, swap)])
        return next_token_losses(logits, prefix.tokens)

    def _remainder(self, prefix: Prefix, residual: torch.Tensor, hooks: list) -> torch.Tensor:
        return self.model.run_with_hooks(residual, start_at_layer=self._start, fwd_hooks=hooks)


def next_token_losses(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CE of the predictions from positions 1..T-2 (of tokens 2..T-1), per token, in float32."""
    predicted = logits[:, 1:-1].float()
    return F.cross_entropy(predicted.reshape(-1, predicted.shape[-1]), tokens[:, 2:].reshape(-1),
                           reduction="none").reshape(tokens.shape[0], -1)
