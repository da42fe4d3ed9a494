"""Metrics against known features (the ground-truth benchmark; definitions and sources: docs/method.md).

Each true feature is matched to the SAE latent whose decoder direction has the largest cosine with it
(several features may match one latent). Then, on held-out rows:

- recovery: the mean over true features of that largest cosine (MMCS, Sharkey et al. 2022) and the
  fraction of true features whose largest cosine reaches `recovered_cosine`;
- on the recovered features only, each true firing against its matched latent's firing: the false-negative
  rate P(latent off | feature on), the false-positive rate P(latent on | feature off), and the magnitude
  ratio Σ inferred / Σ true magnitude over the rows where both fire (correctly detected), the inferred
  magnitude being the latent's activation times its decoder row's norm (the length it writes along its
  direction, in the activations' units);
- L0 (latents > 0 per row) beside the true L0 (firing features per row), and FVU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch


def match(directions: torch.Tensor, decoder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest cosine [n], its latent [n]) of each true direction [n, d] among the decoder's rows [w, d]."""
    unit = lambda m: m.double() / m.double().norm(dim=1, keepdim=True).clamp_min(1e-12)  # noqa: E731
    cosines = unit(directions) @ unit(decoder).T
    best, latent = cosines.max(dim=1)
    return best.float(), latent


@dataclass
class GroundTruthScore:
    """Running sums over held-out batches for one SAE (see the module's docstring)."""

    directions: torch.Tensor   # [n, d] true unit directions
    decoder: torch.Tensor      # [w, d] the SAE's decoder rows (any norm)
    recovered_cosine: float
    best_cosine: torch.Tensor = field(init=False)
    latent: torch.Tensor = field(init=False)
    recovered: torch.Tensor = field(init=False)
    sums: dict = field(init=False)

    def __post_init__(self) -> None:
        self.best_cosine, self.latent = match(self.directions, self.decoder)
        self.recovered = self.best_cosine >= self.recovered_cosine
        self.norms = self.decoder.double().norm(dim=1)
        keys = ("rows", "l0", "true_l0", "sse", "sum_sq", "on", "off", "false_negative", "false_positive",
                "inferred", "true")
        self.sums = {key: 0.0 for key in keys}
        self.sum_x = torch.zeros(self.decoder.shape[1], dtype=torch.float64)

    def update(self, codes: torch.Tensor, latents: torch.Tensor, x: torch.Tensor, x_hat: torch.Tensor) -> None:
        """One batch: true codes [B, n], the SAE's latents [B, w], activations and reconstructions [B, d]."""
        s = self.sums
        x, x_hat = x.double(), x_hat.double()
        s["rows"] += len(x)
        s["l0"] += float((latents > 0).sum())
        s["true_l0"] += float((codes > 0).sum())
        s["sse"] += float(((x - x_hat) ** 2).sum())
        s["sum_sq"] += float((x**2).sum())
        self.sum_x += x.sum(0)
        features = self.recovered.nonzero().squeeze(1)
        if not len(features):
            return
        true = codes[:, features].double()
        inferred = latents[:, self.latent[features]].double() * self.norms[self.latent[features]]
        on, fired = true > 0, inferred > 0
        s["on"] += float(on.sum())
        s["off"] += float((~on).sum())
        s["false_negative"] += float((on & ~fired).sum())
        s["false_positive"] += float((~on & fired).sum())
        detected = on & fired
        s["inferred"] += float(inferred[detected].sum())
        s["true"] += float(true[detected].sum())

    def result(self) -> dict:
        s, nan = self.sums, float("nan")
        rows = max(s["rows"], 1.0)
        variance = s["sum_sq"] - float((self.sum_x**2).sum()) / rows
        return {
            "mmcs": float(self.best_cosine.mean()), "recovered": float(self.recovered.float().mean()),
            "l0": s["l0"] / rows, "true_l0": s["true_l0"] / rows,
            "fvu": s["sse"] / variance if variance > 0 else nan,
            "false_negative_rate": s["false_negative"] / s["on"] if s["on"] else nan,
            "false_positive_rate": s["false_positive"] / s["off"] if s["off"] else nan,
            "magnitude_ratio": s["inferred"] / s["true"] if s["true"] else nan,
            "rows": int(s["rows"]),
        }


def score_checkpoint(directory, directions: torch.Tensor, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     recovered_cosine: float) -> dict:
    """The metrics of one exported checkpoint on (codes, activations) batches in raw units."""
    from gatedsae.saes.checkpoints import decode_raw, encode_raw, read_checkpoint

    cfg, tensors, _ = read_checkpoint(directory)
    score = GroundTruthScore(directions, tensors["W_dec"], recovered_cosine)
    with torch.no_grad():
        for codes, x in batches:
            latents = encode_raw(cfg, tensors, x)
            score.update(codes, latents, x, decode_raw(tensors, latents))
    return score.result()
