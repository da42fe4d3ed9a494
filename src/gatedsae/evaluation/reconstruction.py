"""Reconstruction metrics from the held-out activation store: L0, FVU, normalised MSE,
γ = E||x̂||² / E[x̂·x] (ratio of dataset means), % alive and a feature-density histogram.

Rows whose norm exceeds the checkpoint's `massive_norm_threshold` are left out (as in training: the
massive activations are treated like BOS). For the Gated and baseline SAEs the same pass also counts
every row (the paper's treatment). Per held-out window the sums behind L0 and γ are kept too, so the
intervals can resample windows later without the store.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

DENSITY_EDGES = np.arange(-7.0, 0.01, 0.25)  # log10 of the firing frequency, shared by every histogram
WINDOW_SUMS = ("rows", "l0", "x_hat_sq", "x_hat_dot_x")  # per-window sums kept for the bootstrap


class ReconstructionStats:
    """Running float64 sums over rows, from which every reconstruction metric is a ratio of means;
    with `windows`, the sums behind L0 and γ also per held-out window."""

    def __init__(self, width: int, d: int, windows: int = 0):
        self.rows = 0
        self.l0 = self.error = self.x_sq = self.x_hat_sq = self.x_hat_dot_x = 0.0
        self.x_sum = torch.zeros(d, dtype=torch.float64)
        self.fires = torch.zeros(width, dtype=torch.float64)
        self.per_window = {key: torch.zeros(windows, dtype=torch.float64) for key in WINDOW_SUMS}

    def update(self, x: torch.Tensor, features: torch.Tensor, x_hat: torch.Tensor,
               window_ids: Optional[torch.Tensor] = None) -> None:
        x, x_hat, active = x.double(), x_hat.double(), (features > 0)
        active_per_row = active.sum(-1).double()
        x_hat_sq, x_hat_dot_x = (x_hat**2).sum(-1), (x_hat * x).sum(-1)
        self.rows += len(x)
        self.l0 += float(active_per_row.sum())
        self.fires += active.sum(0).double().cpu()
        self.error += float(((x_hat - x) ** 2).sum())
        self.x_sq += float((x**2).sum())
        self.x_sum += x.sum(0).cpu()
        self.x_hat_sq += float(x_hat_sq.sum())
        self.x_hat_dot_x += float(x_hat_dot_x.sum())
        if window_ids is not None:
            ids = window_ids.cpu()
            for key, values in (("rows", torch.ones_like(active_per_row)), ("l0", active_per_row),
                                ("x_hat_sq", x_hat_sq), ("x_hat_dot_x", x_hat_dot_x)):
                self.per_window[key].index_add_(0, ids, values.cpu())

    def result(self) -> dict:
        if not self.rows:  # every row left out (a threshold below every norm): nothing is defined
            return {"l0": math.nan, "fvu": math.nan, "nmse": math.nan, "gamma": math.nan, "alive_fraction": math.nan,
                    "eval_tokens": 0, "density_histogram": {"log10_edges": DENSITY_EDGES.tolist(),
                                                            "counts": [0] * (len(DENSITY_EDGES) - 1), "dead": 0}}
        variance = self.x_sq - float((self.x_sum**2).sum()) / self.rows  # Σ||x − mean||²
        density = self.fires / self.rows
        alive = density > 0
        histogram, _ = np.histogram(np.log10(density[alive].numpy()), bins=DENSITY_EDGES)
        return {
            "l0": self.l0 / self.rows,
            "fvu": self.error / variance,
            "nmse": self.error / self.x_sq,
            "gamma": self.x_hat_sq / self.x_hat_dot_x if self.x_hat_dot_x else math.nan,
            "alive_fraction": float(alive.double().mean()),
            "eval_tokens": self.rows,
            "density_histogram": {"log10_edges": DENSITY_EDGES.tolist(), "counts": histogram.tolist(),
                                  "dead": int((~alive).sum())},
        }

    def window_sums(self) -> dict[str, list[float]]:
        return {key: values.tolist() for key, values in self.per_window.items()}


@dataclass
class StoreResult:
    """One SAE's store metrics (rows above its massive-activation threshold left out)."""

    metrics: dict
    windows: dict[str, list[float]]
    massive_rows: int = 0


@torch.no_grad()
def reconstruction_metrics(saes: list, store, heldout_tokens: Optional[int], batch_rows: int,
                           device: str, windows_kept: Optional[np.ndarray] = None) -> list[StoreResult]:
    """Reconstruction metrics of each SAE over the same held-out rows, read once. Rows above an SAE's
    `massive_norm_threshold` are left out of its metrics. `windows_kept` (one flag per held-out window):
    only those windows' rows count (a held-out split's), their per-window sums numbered among themselves."""
    rows_per_window = store.manifest.positions_per_window
    total = len(store) if heldout_tokens is None else min(heldout_tokens, len(store))
    windows = math.ceil(total / rows_per_window)
    renumber = None
    if windows_kept is not None:  # window i of the store → its index among the kept windows, or -1
        kept_flags = np.asarray(windows_kept[:windows], dtype=bool)
        renumber = torch.from_numpy(np.where(kept_flags, np.cumsum(kept_flags) - 1, -1))
        windows = int(kept_flags.sum())
    thresholds = [sae.massive_norm_threshold for sae in saes]
    kept = [ReconstructionStats(sae.width, store.d, windows) for sae in saes]
    offset = skipped = 0
    for chunk in store.tokens(total):
        for rows in chunk.split(batch_rows):
            x = rows.to(device, torch.float32)
            window_ids = torch.arange(offset, offset + len(x)) // rows_per_window
            offset += len(x)
            if renumber is not None:
                window_ids = renumber[window_ids]
                inside = window_ids >= 0
                skipped += int((~inside).sum())
                x, window_ids = x[inside.to(x.device)], window_ids[inside]
                if not len(x):
                    continue
            window_ids = window_ids.to(device)
            norms = x.norm(dim=-1)
            for sae, threshold, stat in zip(saes, thresholds, kept):
                features = sae.encode(x)
                x_hat = sae.decode(features)
                if threshold is None:
                    stat.update(x, features, x_hat, window_ids)
                else:
                    keep = norms <= threshold
                    stat.update(x[keep], features[keep], x_hat[keep], window_ids[keep])
    return [StoreResult(stat.result(), stat.window_sums(), massive_rows=offset - skipped - stat.rows) for stat in kept]
