"""The paper's three sites and where they live in a transformer-lens model.

- resid_post: the residual stream after the block;
- mlp_out:    the MLP's output (before it is added to the residual stream);
- attn_z:     the attention output *before* W_O, heads concatenated ([.., n_heads·d_head]).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the sites are planned without torch
    import torch


@dataclass(frozen=True)
class Site:
    name: str
    hook: str         # transformer-lens hook name, {layer} to fill
    label: str        # tables and report headings
    short_label: str  # figure panel titles
    prose: str        # inside a sentence (the verdict)


_SITES = [
    Site("resid_post", "blocks.{layer}.hook_resid_post", "Residual stream", "Residual stream", "residual stream"),
    Site("mlp_out", "blocks.{layer}.hook_mlp_out", "MLP output", "MLP output", "MLP output"),
    Site("attn_z", "blocks.{layer}.attn.hook_z", "Attention output (pre W_O)", "Attention output", "attention output"),
]
SITES = tuple(site.name for site in _SITES)  # in the paper's order, which tables and figures follow
BY_NAME = {site.name: site for site in _SITES}
_HOOKS = {site.name: site.hook for site in _SITES}


def label(site: str) -> str:
    return BY_NAME[site].label if site in BY_NAME else site


def short_label(site: str) -> str:
    return BY_NAME[site].short_label if site in BY_NAME else site


def prose(site: str) -> str:
    return BY_NAME[site].prose if site in BY_NAME else site


def hook_name(site: str, layer: int) -> str:
    try:
        return _HOOKS[site].format(layer=layer)
    except KeyError:
        raise ValueError(f"unknown site {site!r}; known sites: {', '.join(_HOOKS)}") from None


def flatten(site: str, activation: torch.Tensor) -> torch.Tensor:
    """Hook output → [..., d]: attn_z's [batch, pos, heads, d_head] becomes [batch, pos, heads·d_head]."""
    return activation.flatten(-2) if site == "attn_z" else activation


def unflatten(site: str, activation: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Inverse of `flatten`, shaped like the hook's own output `like` (for splicing back in)."""
    return activation.reshape(like.shape) if site == "attn_z" else activation
