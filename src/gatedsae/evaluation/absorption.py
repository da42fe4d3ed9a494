"""Feature absorption (Chanin et al. 2024, "A is for Absorption"; SAEBench's absorption metric), on rows
that carry a known feature, e.g. tokens starting with one letter, whose direction p a linear probe on the
raw activations gives. The feature's main latents are those a k-sparse probe picks for it
(sparse_probing.py). On a row that carries the feature, the main latents may stay silent (a false
negative); the feature is *absorbed* there when another latent fires whose decoder direction has a cosine
of at least `min_cosine` with p and whose contribution along p, f_j (d_j · p), is at least `min_share` of
the row's own projection x · p: that latent carries the feature in the main latents' place.

Returns the main latents' false-negative rate and the absorption rate, each over the rows that carry the
feature, and which rows were absorbed (the interp stage resamples them for its intervals).
"""

from __future__ import annotations

from typing import Sequence

import torch


def absorption(x: torch.Tensor, features: torch.Tensor, decoder: torch.Tensor, probe: torch.Tensor,
               main: Sequence[int], min_cosine: float = 0.025, min_share: float = 0.4) -> dict:
    """x [N, d]: rows that carry the feature; features [N, w] and decoder [w, d]: the SAE's on them;
    probe [d]: the feature's direction; main: its main latents."""
    p = probe.double() / probe.double().norm()
    decoder = decoder.double()
    features = features.double()
    main_fires = (features[:, list(main)] > 0).any(dim=1)
    cosine = decoder @ p / decoder.norm(dim=1).clamp_min(1e-12)
    others = torch.ones(decoder.shape[0], dtype=torch.bool)
    others[list(main)] = False
    contribution = features * (decoder @ p)  # [N, w]: what each latent writes along p
    candidates = contribution[:, others & (cosine >= min_cosine)]
    projection = x.double() @ p
    carried = (candidates >= min_share * projection.clamp_min(1e-12).unsqueeze(1)).any(dim=1) \
        if candidates.shape[1] else torch.zeros(len(x), dtype=torch.bool)
    absorbed = ~main_fires & carried
    rows = max(len(x), 1)
    return {"rows": len(x), "false_negative_rate": float((~main_fires).sum()) / rows,
            "absorption_rate": float(absorbed.sum()) / rows, "absorbed": absorbed}
