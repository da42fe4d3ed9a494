"""Uncertainty of every reported number: a paired bootstrap over held-out windows.

Each evaluated SAE carries per-window samples (see `evaluate`): mean CE per CE window (clean,
zero-ablated, the SAE's), and per store window the sums behind L0 and γ. A resample draws the CE
windows with replacement, and independently the store's windows; the same draw serves clean, zero and
every SAE of a grid (model, site, layer), so differences between SAEs are not blurred by the windows
they share. On each resample every statistic is recomputed from those sums: each SAE's loss recovered,
Δ LM loss, L0 and γ, then the Pareto frontiers, the matched band and its interpolation (`frontiers`).
Intervals are percentile intervals of the replicates. A replicate in which a statistic is undefined
(e.g. the frontiers stop overlapping) counts against the interval on both sides, so an interval is
finite only when fewer than (1 − level) / 2 of the resamples fail.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import pandas as pd

from gatedsae.evaluation.frontiers import Sweep
from gatedsae.plan.config import IntervalsConfig

GRID = ["model", "site", "layer"]
TREATMENTS = ("", "_all_tokens")  # massive activations left out as in training; every non-BOS token (the paper)
STORE_SUMS = ("rows", "l0", "x_hat_sq", "x_hat_dot_x")


def percentile_interval(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) percentile interval along axis 0, rounded outward to resampled values; undefined
    (NaN) replicates count as −∞ for the low end and +∞ for the high end; NaN where all are undefined."""
    replicates = np.asarray(replicates, dtype=float)
    tail = (1 - level) / 2
    undefined = np.isnan(replicates)
    low = np.quantile(np.where(undefined, -np.inf, replicates), tail, axis=0, method="lower")
    high = np.quantile(np.where(undefined, np.inf, replicates), 1 - tail, axis=0, method="higher")
    never = undefined.all(0)
    return np.where(never, np.nan, low), np.where(never, np.nan, high)


@dataclass
class GridSamples:
    """One grid's per-window samples under one treatment, SAEs (rows) aligned with its frame rows;
    rows of NaN where an SAE has none."""

    ce_clean: np.ndarray  # [K, W]
    ce_zero: np.ndarray   # [K, W]
    ce_sae: np.ndarray    # [K, W]
    store: dict[str, np.ndarray]  # STORE_SUMS → [K, S]

    @classmethod
    def from_rows(cls, group: pd.DataFrame, treatment: str) -> Optional["GridSamples"]:
        found = [_treatment_samples(row, treatment) for _, row in group.iterrows()]
        present = [s for s in found if s is not None]
        if not present:
            return None
        windows = {len(s["ce_sae"]) for s in present}
        store_windows = {len(s["store"]["rows"]) for s in present}
        if len(windows) > 1 or len(store_windows) > 1:
            model, site, layer = group.iloc[0][GRID]
            raise ValueError(f"the SAEs of {model} {site} layer {layer} were evaluated on different held-out windows "
                             f"({sorted(windows)} CE windows, {sorted(store_windows)} store windows): re-run "
                             "the evaluate stage so that every SAE of the grid is paired")
        w, s = windows.pop(), store_windows.pop()

        def stack(get: Callable[[dict], list], width: int) -> np.ndarray:
            return np.array([get(x) if x is not None else np.full(width, np.nan) for x in found], dtype=float)

        return cls(stack(lambda x: x["ce_clean"], w), stack(lambda x: x["ce_zero"], w),
                   stack(lambda x: x["ce_sae"], w),
                   {key: stack(lambda x, key=key: x["store"][key], s) for key in STORE_SUMS})

    def metrics(self, ce_counts: np.ndarray, store_counts: np.ndarray) -> dict[str, np.ndarray]:
        """Every SAE's metrics on each resample, [B, K]; counts[b, i]: how often window i is drawn."""
        def ce(values: np.ndarray) -> np.ndarray:
            return ce_counts @ np.nan_to_num(values).T / ce_counts.sum(1, keepdims=True) + _nan_columns(values)

        def store(key: str) -> np.ndarray:
            return store_counts @ np.nan_to_num(self.store[key]).T + _nan_columns(self.store[key])

        clean, zero, sae = ce(self.ce_clean), ce(self.ce_zero), ce(self.ce_sae)
        with np.errstate(divide="ignore", invalid="ignore"):
            return {"loss_recovered": (zero - sae) / (zero - clean), "delta_lm_loss": sae - clean,
                    "l0": store("l0") / store("rows"), "gamma": store("x_hat_sq") / store("x_hat_dot_x")}


def _nan_columns(values: np.ndarray) -> np.ndarray:
    """0 for SAEs with samples, NaN for those without, as a [1, K] row to add."""
    return np.where(np.isnan(values).any(1), np.nan, 0.0)[None, :]


def _treatment_samples(row: pd.Series, treatment: str) -> Optional[dict]:
    """An SAE's samples under a treatment: the paper's is its own only where a threshold was applied."""
    samples = row.get("samples")
    if not isinstance(samples, dict):
        return None
    threshold = row.get("massive_norm_threshold")
    if treatment == "" or threshold is None or pd.isna(threshold):
        return samples
    if samples.get("all_tokens") is None:
        return None
    return {"ce_clean": samples["ce_clean"], **samples["all_tokens"]}


class Bootstrap:
    """Paired bootstrap replicates of every SAE's metrics, grid by grid, under both treatments."""

    def __init__(self, frame: pd.DataFrame, config: IntervalsConfig):
        self.config = config
        self.replicates: dict[tuple, dict[str, np.ndarray]] = {}  # grid → metric+treatment → [B, K]
        self.rows: dict[tuple, pd.Index] = {}                      # grid → its frame rows, in K order
        self.windows: dict[tuple, tuple[int, int]] = {}            # grid → (CE windows, store windows)
        if "samples" not in frame:
            return
        for key, group in frame.groupby(GRID, sort=False):
            per_treatment = {t: GridSamples.from_rows(group, t) for t in TREATMENTS}
            primary = per_treatment[""]
            if primary is None:
                continue
            rng = np.random.default_rng([config.seed, zlib.crc32("/".join(map(str, key)).encode())])
            w, s = primary.ce_sae.shape[1], primary.store["rows"].shape[1]
            ce_counts = rng.multinomial(w, np.full(w, 1 / w), size=config.resamples).astype(float)
            store_counts = rng.multinomial(s, np.full(s, 1 / s), size=config.resamples).astype(float)
            replicates = {}
            for treatment, samples in per_treatment.items():
                if samples is not None:
                    for metric, values in samples.metrics(ce_counts, store_counts).items():
                        replicates[metric + treatment] = values
            self.replicates[key], self.rows[key], self.windows[key] = replicates, group.index, (w, s)

    def interval(self, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return percentile_interval(replicates, self.config.level)

    def sae_intervals(self, frame: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
        """`frame` with `<metric>_ci_low` / `_ci_high` columns (NaN where a grid has no samples)."""
        frame = frame.copy()
        for metric in metrics:
            frame[f"{metric}_ci_low"] = frame[f"{metric}_ci_high"] = np.nan
        for key, index in self.rows.items():
            for metric in metrics:
                if metric in self.replicates[key]:
                    low, high = self.interval(self.replicates[key][metric])
                    frame.loc[index, f"{metric}_ci_low"], frame.loc[index, f"{metric}_ci_high"] = low, high
        return frame

    def replicate(self, key: tuple, masks: list[np.ndarray], treatment: str,
                  compute: Callable[..., Optional[dict]], names: tuple[str, ...]) -> Optional[dict[str, np.ndarray]]:
        """Replicates of `compute(*sweeps)[name]` for each name, the sweeps being the SAEs selected by
        `masks` (boolean, over the grid's rows) on each resample; None without samples."""
        replicates = self.replicates.get(key, {})
        needed = [metric + treatment for metric in ("l0", "loss_recovered", "gamma")]
        if not all(metric in replicates for metric in needed):
            return None
        l0, recovered, gamma = (replicates[metric] for metric in needed)
        values = {name: np.full(self.config.resamples, np.nan) for name in names}
        for b in range(self.config.resamples):
            result = compute(*[Sweep(l0[b, mask], recovered[b, mask], gamma[b, mask]) for mask in masks])
            if result is not None:
                for name in names:
                    values[name][b] = result[name]
        return values
