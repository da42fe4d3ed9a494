"""Uncertainty of every reported number: a two-level bootstrap, training seeds then held-out windows.

Each evaluated SAE carries per-window samples (see `evaluate`): mean CE per CE window (clean,
zero-ablated, the SAE's), and per store window the sums behind L0 and γ. A window resample draws the CE
windows with replacement, and independently the store's windows; the same draw serves clean, zero and
every SAE of a grid (model, site, layer, split) and every seed, so differences between SAEs are not
blurred by the windows they share. A seed resample draws training seeds with replacement, the same
labels for every configuration of the grid (`seeds`). Every statistic is a function of the grid's
configurations, each configuration's metrics being the mean over its (drawn) seeds; on each resample it
is recomputed from the sums: each SAE's loss recovered, L0 and γ, the seed means, then the Pareto
frontiers and the readings along them (`frontiers`).

The interval of a statistic θ combines the two levels as independent errors (law of total variance:
seeds, then windows within a seed draw; the windows being crossed with the seeds, slightly
conservative). Its ends are the quantiles of θ*_w + se_seed · T:

- θ*_w: the window resamples of θ, seeds held at their mean (alone, the percentile interval of a single
  seed, as before seeds existed);
- se_seed²: the variance of θ over the seed resamples, windows held at all of them, times S / (S − 1)
  (the plug-in bootstrap variance of a mean of S seeds is (S − 1) / S of the unbiased one: a third too
  small with three seeds); exact, every multiset of seeds with its probability, for up to 6 seeds;
- T: Student's t with S − 1 degrees of freedom, because se_seed is estimated from S seeds (with 3 seeds
  the 97.5% point is 4.30 standard errors, not 1.96).

Each end solves mean_w F_t((x − θ*_w) / se_seed) = 2.5% or 97.5% (a Monte Carlo propagation in the sense
of the GUM's Supplement 1, computed exactly). A percentile interval over 3 resampled seeds would cover
about 75% for a seed-dominated statistic (it is the range of the 3 seeds), and a Welch–Satterthwaite t
interval about 93% (its degrees of freedom grow when the seeds happen to agree); this one covers its
nominal level (tests/test_intervals.py simulates it). With one seed se_seed is not measurable: the
interval is the window interval alone, and the claims say so.

Ratios are combined on the log scale. A resample on which a statistic is undefined (e.g. a frontier no
longer reaches the level where it is read) counts against the interval: more than (1 − level) / 2 of
either level's resamples undefined gives (−∞, ∞).
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import special

from gatedsae.evaluation.frontiers import Sweep
from gatedsae.evaluation.seeds import SeedDesign
from gatedsae.plan.config import IntervalsConfig

GRID = ["model", "site", "layer"]  # plus "split" where rows say which held-out split they were read on
STORE_SUMS = ("rows", "l0", "x_hat_sq", "x_hat_dot_x")
SWEEP_METRICS = ("l0", "loss_recovered", "gamma")  # what a frontier is built from


def grid_columns(frame: pd.DataFrame) -> list[str]:
    return GRID + (["split"] if "split" in frame and frame["split"].notna().any() else [])


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


def combined_interval(point: np.ndarray, windows: np.ndarray, seeds: Optional[np.ndarray],
                      seed_probabilities: Optional[np.ndarray], n_seeds: int, level: float,
                      log: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) of a statistic from its point value [n], its window replicates [B, n] and its seed
    replicates [J, n] with their probabilities [J] (see the module's docstring)."""
    def scale(values):
        values = np.asarray(values, dtype=float)
        if not log:
            return values
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(values > 0, np.log(np.where(values > 0, values, 1.0)), np.nan)

    def unscale(values):
        return np.exp(values) if log else values

    theta, replicates, tail = scale(point), scale(windows), (1 - level) / 2
    if n_seeds <= 1 or seeds is None:
        return tuple(unscale(end) for end in percentile_interval(replicates, level))
    se = np.sqrt(seed_variance(scale(seeds), np.asarray(seed_probabilities, dtype=float), n_seeds, level))
    undefined = np.isnan(replicates)
    low = _quantile_with_t(replicates, se, n_seeds - 1, tail, undefined_below=True)
    high = _quantile_with_t(replicates, se, n_seeds - 1, 1 - tail, undefined_below=False)
    percentile = percentile_interval(replicates, level)  # the statistic does not vary between seeds
    low, high = np.where(se == 0, percentile[0], low), np.where(se == 0, percentile[1], high)
    failed = (undefined.mean(0) > tail) | np.isinf(se)
    low, high = np.where(failed, -np.inf, low), np.where(failed, np.inf, high)
    low, high = np.where(np.isnan(theta) | undefined.all(0), np.nan, low), np.where(np.isnan(theta) | undefined.all(0), np.nan, high)
    return unscale(low), unscale(high)


def seed_variance(replicates: np.ndarray, probabilities: np.ndarray, n_seeds: int, level: float) -> np.ndarray:
    """The variance of the seed mean: the seed resamples' variance times S / (S − 1) (the plug-in
    bootstrap variance of a mean of S values is (S − 1) / S of the unbiased one); ∞ where more than
    (1 − level) / 2 of the resamples' probability is undefined."""
    p = probabilities[:, None]
    defined = np.isfinite(replicates)
    mass = (p * defined).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = (p * np.where(defined, replicates, 0)).sum(0) / mass
        variance = (p * np.where(defined, replicates - mean, 0) ** 2).sum(0) / mass
    return np.where(1 - mass > (1 - level) / 2, np.inf, variance * n_seeds / (n_seeds - 1))


def _quantile_with_t(replicates: np.ndarray, se: np.ndarray, df: int, q: float, undefined_below: bool,
                     iterations: int = 64) -> np.ndarray:
    """The q-quantile of θ* + se · T (θ* a window replicate, T ~ Student's t with `df` degrees of
    freedom, independent): solves mean_b F_t((x − θ*_b) / se) = q by bisection, per column; undefined
    replicates count as −∞ (`undefined_below`) or +∞."""
    undefined = np.isnan(replicates)
    finite = np.where(undefined, np.nan, replicates)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # columns with no defined replicate
        span = 1000 * np.where(np.isfinite(se), se, 0) + 1e-12
        low, high = np.nanmin(finite, 0) - span, np.nanmax(finite, 0) + span
    for _ in range(iterations):
        middle = (low + high) / 2
        distance = middle - finite
        with np.errstate(invalid="ignore", divide="ignore"):
            standardized = np.where(se > 0, distance / np.where(se > 0, se, 1.0), np.where(distance >= 0, np.inf, -np.inf))
        cdf = np.where(undefined, 1.0 if undefined_below else 0.0, special.stdtr(df, standardized)).mean(0)
        low, high = np.where(cdf < q, middle, low), np.where(cdf < q, high, middle)
    return (low + high) / 2


@dataclass
class Estimate:
    """A statistic with its two-level interval, the seed-to-seed spread (SD of the statistic computed on
    each seed's own grid, all windows) and what it was made of."""

    value: float
    ci_low: float = math.nan
    ci_high: float = math.nan
    seed_sd: float = math.nan
    per_seed: list[float] = field(default_factory=list)
    seeds: int = 1
    undefined_windows: float = 0.0  # fraction of window resamples on which it is undefined
    undefined_seeds: float = 0.0    # probability mass of seed resamples on which it is undefined


@dataclass
class GridSamples:
    """One grid's per-window samples, SAEs (rows) aligned with its frame rows; rows of NaN where an SAE
    has none."""

    ce_clean: np.ndarray  # [K, W]
    ce_zero: np.ndarray   # [K, W]
    ce_sae: np.ndarray    # [K, W]
    store: dict[str, np.ndarray]  # STORE_SUMS → [K, S]

    @classmethod
    def from_rows(cls, group: pd.DataFrame) -> Optional["GridSamples"]:
        found = [row.get("samples") if isinstance(row.get("samples"), dict) else None for _, row in group.iterrows()]
        present = [s for s in found if s is not None]
        if not present:
            return None
        windows = {len(s["ce_sae"]) for s in present}
        store_windows = {len(s["store"]["rows"]) for s in present}
        if len(windows) > 1 or len(store_windows) > 1:
            where = " ".join(str(v) for v in group.iloc[0][grid_columns(group)])
            raise ValueError(f"the SAEs of {where} were evaluated on different held-out windows "
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


@dataclass
class Grid:
    """One grid's rows, how they group into configurations and seeds, each row's metrics as measured and
    on every window resample, and the seed resamples."""

    rows: pd.Index
    design: SeedDesign
    point: dict[str, np.ndarray]                 # metric → [K], as in the metrics rows
    windows: Optional[dict[str, np.ndarray]]     # metric → [B, K]; None without per-window samples
    window_counts: tuple[int, int] = (0, 0)      # (CE windows, store windows)
    seed_counts: np.ndarray = field(default_factory=lambda: np.ones((1, 1)))  # [J, S] labels drawn
    seed_probabilities: np.ndarray = field(default_factory=lambda: np.ones(1))  # [J]


class Bootstrap:
    """Two-level bootstrap replicates of every SAE's metrics, grid by grid."""

    def __init__(self, frame: pd.DataFrame, config: IntervalsConfig):
        self.config = config
        self.grids: dict[tuple, Grid] = {}
        for key, group in frame.groupby(grid_columns(frame), sort=False):
            key = key if isinstance(key, tuple) else (key,)
            rng = np.random.default_rng([config.seed, zlib.crc32("/".join(map(str, key)).encode())])
            design = SeedDesign.of(group)
            point = {m: group[m].to_numpy(dtype=float) if m in group else np.full(len(group), np.nan)
                     for m in (*SWEEP_METRICS, "delta_lm_loss")}
            samples = GridSamples.from_rows(group) if "samples" in group else None
            windows, counts = None, (0, 0)
            if samples is not None:
                w, s = samples.ce_sae.shape[1], samples.store["rows"].shape[1]
                ce_counts = rng.multinomial(w, np.full(w, 1 / w), size=config.resamples).astype(float)
                store_counts = rng.multinomial(s, np.full(s, 1 / s), size=config.resamples).astype(float)
                windows, counts = samples.metrics(ce_counts, store_counts), (w, s)
            seed_counts, probabilities = design.draws(config.resamples, rng)
            self.grids[key] = Grid(group.index, design, point, windows, counts, seed_counts, probabilities)

    @property
    def rows(self) -> dict[tuple, pd.Index]:
        return {key: grid.rows for key, grid in self.grids.items()}

    def interval(self, replicates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return percentile_interval(replicates, self.config.level)

    def sae_intervals(self, frame: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
        """`frame` with `<metric>_ci_low` / `_ci_high` columns per SAE (held-out windows only: each row is
        one trained SAE; NaN where a grid has no samples)."""
        frame = frame.copy()
        for metric in metrics:
            frame[f"{metric}_ci_low"] = frame[f"{metric}_ci_high"] = np.nan
        for grid in self.grids.values():
            for metric in metrics:
                if grid.windows is not None and metric in grid.windows:
                    low, high = self.interval(grid.windows[metric])
                    frame.loc[grid.rows, f"{metric}_ci_low"], frame.loc[grid.rows, f"{metric}_ci_high"] = low, high
        return frame

    def sweeps(self, key: tuple, masks: Sequence[np.ndarray]) -> list[Sweep]:
        """The seed-averaged configurations of the rows selected by each mask, as measured."""
        grid = self.grids[key]
        averaging = grid.design.averaging(np.ones(grid.design.seeds)).T
        metrics = {m: grid.point[m] @ averaging for m in SWEEP_METRICS}
        return [_sweep(metrics, grid.design, mask) for mask in masks]

    def estimate(self, key: tuple, masks: Sequence[np.ndarray], compute: Callable[..., Optional[dict]],
                 log_scale: Sequence[str] = ()) -> Optional[dict[str, Estimate]]:
        """Every value of `compute(*sweeps)` with its two-level interval, the sweeps being the seed-averaged
        configurations of the grid's rows selected by each boolean mask; None when undefined at the
        point. `compute` returns a dict of floats or of equally long arrays (NaN where undefined)."""
        grid = self.grids[key]
        design = grid.design

        def configured(label_weights: np.ndarray, metrics: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
            """Configuration-level metrics ([..., C]): each configuration's mean over its drawn seeds."""
            averaging = design.averaging(label_weights).T
            return {m: metrics[m] @ averaging for m in SWEEP_METRICS}

        selections = [np.unique(design.config[mask]) for mask in masks]  # configurations of each sweep

        def evaluate(metrics: dict[str, np.ndarray]) -> Optional[dict]:
            return compute(*[Sweep(*(metrics[m][configs] for m in SWEEP_METRICS)) for configs in selections])

        everything = np.ones(design.seeds)
        point = evaluate(configured(everything, grid.point))
        if point is None:
            return None
        names = list(point)
        shaped = {name: np.atleast_1d(np.asarray(point[name], dtype=float)) for name in names}

        def replicates(results: list[Optional[dict]]) -> dict[str, np.ndarray]:
            return {name: np.array([np.full_like(shaped[name], np.nan) if r is None else
                                    np.atleast_1d(np.asarray(r[name], dtype=float)) for r in results]) for name in names}

        selected = np.logical_or.reduce(list(masks))
        n_seeds = design.seeds_of(selected)
        per_seed = replicates([evaluate(configured(design.single(s), grid.point)) for s in range(design.seeds)])
        seed_reps = None
        if n_seeds > 1:
            seed_reps = replicates([evaluate(configured(w, grid.point)) for w in grid.seed_counts])
        window_reps = None
        if grid.windows is not None:
            resampled = configured(everything, grid.windows)  # [B, C] per metric
            window_reps = replicates([evaluate({m: resampled[m][b] for m in SWEEP_METRICS})
                                      for b in range(self.config.resamples)])
        found = {}
        for name in names:
            value = shaped[name]
            if window_reps is None:
                low = high = np.full_like(value, np.nan)
            else:
                low, high = combined_interval(value, window_reps[name], None if seed_reps is None else seed_reps[name],
                                              grid.seed_probabilities, n_seeds, self.config.level,
                                              log=name in log_scale)
            with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a statistic undefined on every seed's own grid
                spread = np.nanstd(per_seed[name], axis=0, ddof=1) if n_seeds > 1 else np.full_like(value, np.nan)
            undefined_windows = np.isnan(window_reps[name]).mean(0) if window_reps is not None else np.zeros_like(value)
            undefined_seeds = ((np.isnan(seed_reps[name]) * grid.seed_probabilities[:, None]).sum(0)
                               if seed_reps is not None else np.zeros_like(value))
            found[name] = [Estimate(float(value[i]), float(low[i]), float(high[i]), float(spread[i]),
                                    [float(v) for v in per_seed[name][:, i]] if n_seeds > 1 else [],
                                    n_seeds, float(undefined_windows[i]), float(undefined_seeds[i]))
                           for i in range(len(value))]
            if np.ndim(point[name]) == 0:
                found[name] = found[name][0]
        return found


def _sweep(metrics: dict[str, np.ndarray], design: SeedDesign, mask: np.ndarray) -> Sweep:
    """The configurations of the rows in `mask`, from configuration-level metrics."""
    configs = np.unique(design.config[mask])
    return Sweep(*(metrics[m][configs] for m in SWEEP_METRICS))
