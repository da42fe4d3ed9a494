"""Intervals: the two-level bootstrap (training seeds, then held-out windows) on synthetic per-window
samples whose population values are known: against a hand computation, and its coverage over many
simulated runs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import optimize, stats

from gatedsae.evaluation.intervals import Bootstrap, combined_interval, percentile_interval
from gatedsae.evaluation.seeds import SeedDesign
from gatedsae.plan.config import IntervalsConfig

ROWS_PER_WINDOW = 20
KEY = ("m", "resid_post", 3)


def synthetic_rows(saes: list[tuple[str, float, float, float]], windows: int, store_windows: int, seed: int = 0,
                   site: str = "resid_post", seeds: tuple[int, ...] = (0,), seed_sd: float = 0.0,
                   threshold=None) -> list[dict]:
    """One grid's metrics rows with samples: (arch, L0, loss recovered, γ) per SAE configuration, one row
    per training seed. Per-window CE varies a lot between windows (shared by every SAE, as real text
    does) and a little per SAE; each seed shifts a configuration's loss recovered by N(0, seed_sd). The
    point metrics are computed from the samples exactly as the evaluation does."""
    rng = np.random.default_rng(seed)
    clean = 3.0 + rng.normal(0, 0.5, windows)  # window difficulty, shared
    zero = clean + 4.0 + rng.normal(0, 0.3, windows)
    rows = []
    for index, (arch, l0, recovered, gamma) in enumerate(saes):
        for training_seed in seeds:
            shift = rng.normal(0, seed_sd) if seed_sd else 0.0
            sae = clean + (zero - clean) * (1 - recovered - shift) + rng.normal(0, 0.05, windows)
            rows.append(_row(arch, index, training_seed, site, clean, zero, sae,
                             _store(rng, store_windows, l0, gamma), threshold))
    return rows


def _store(rng: np.random.Generator, store_windows: int, l0: float, gamma: float) -> dict:
    rows_per = np.full(store_windows, float(ROWS_PER_WINDOW))
    dot = rng.uniform(50, 150, store_windows)
    return {"rows": rows_per.tolist(), "l0": (rows_per * l0 * rng.uniform(0.8, 1.2, store_windows)).tolist(),
            "x_hat_sq": (dot * gamma * rng.uniform(0.97, 1.03, store_windows)).tolist(), "x_hat_dot_x": dot.tolist()}


def _row(arch: str, index: int, training_seed: int, site: str, clean, zero, sae, store: dict, threshold=None) -> dict:
    rows_sum = np.sum(store["rows"])
    return {"model": "m", "site": site, "layer": 3, "arch": arch, "variant": "sweep", "l1": 0.01 * (index + 1),
            "width": 64 if arch != "baseline" else 96, "lr": 1e-3, "seed": training_seed,
            "sae": f"{arch}_{index}_s{training_seed}", "l0": np.sum(store["l0"]) / rows_sum,
            "loss_recovered": (zero.mean() - sae.mean()) / (zero.mean() - clean.mean()),
            "delta_lm_loss": sae.mean() - clean.mean(), "gamma": np.sum(store["x_hat_sq"]) / np.sum(store["x_hat_dot_x"]),
            "massive_norm_threshold": threshold,
            "samples": {"ce_clean": list(clean), "ce_zero": list(zero), "ce_sae": list(sae), "store": store}}


GATED_HALF = [("gated", 5, 0.80, 1.0), ("gated", 10, 0.85, 1.0), ("gated", 20, 0.90, 1.0), ("gated", 40, 0.95, 1.0),
              ("baseline", 10, 0.80, 0.9), ("baseline", 20, 0.85, 0.88), ("baseline", 40, 0.90, 0.86),
              ("baseline", 80, 0.95, 0.84)]


def bootstrap(rows: list[dict], resamples: int = 400) -> tuple[pd.DataFrame, Bootstrap]:
    frame = pd.DataFrame(rows)
    return frame, Bootstrap(frame, IntervalsConfig(resamples=resamples, seed=1))


def loss_recovered_of(arch: str):
    """A statistic: one configuration's (seed-averaged) loss recovered, linear in the data."""
    def compute(sweep):
        return {"loss_recovered": float(sweep.loss_recovered[0])}
    return compute


def test_percentile_interval_counts_undefined_replicates_against_the_interval():
    values = np.linspace(0, 1, 1001)
    low, high = percentile_interval(values, 0.95)
    assert low == pytest.approx(0.025, abs=1e-3) and high == pytest.approx(0.975, abs=1e-3)
    some_fail = values.copy()
    some_fail[:10] = np.nan  # 1% undefined: still an interval, a little wider
    low, high = percentile_interval(some_fail, 0.95)
    assert np.isfinite(low) and np.isfinite(high)
    many_fail = values.copy()
    many_fail[:100] = np.nan  # 10% undefined: more than the 2.5% tails can absorb
    low, high = percentile_interval(many_fail, 0.95)
    assert low == -np.inf and high == np.inf
    assert np.isnan(percentile_interval(np.full(50, np.nan), 0.95)).all()


def test_sae_intervals_contain_the_point_and_shrink_with_more_windows():
    widths = []
    for windows in (40, 640):
        frame, boot = bootstrap(synthetic_rows(GATED_HALF, windows, windows))
        with_ci = boot.sae_intervals(frame, ("loss_recovered", "delta_lm_loss", "gamma"))
        for metric in ("loss_recovered", "delta_lm_loss", "gamma"):
            assert (with_ci[f"{metric}_ci_low"] <= with_ci[metric] + 1e-12).all()
            assert (with_ci[metric] <= with_ci[f"{metric}_ci_high"] + 1e-12).all()
        widths.append((with_ci["loss_recovered_ci_high"] - with_ci["loss_recovered_ci_low"]).median())
    assert widths[1] < widths[0] / 2.5  # 16× the windows: about a quarter of the width


def test_resampling_is_paired_across_clean_zero_and_every_sae():
    rows = synthetic_rows(GATED_HALF[:2], windows=200, store_windows=50)
    shifted = rows[1]["samples"]
    shifted["ce_sae"] = (np.array(shifted["ce_clean"]) + 0.05).tolist()  # exactly 0.05 nats above clean, per window
    frame, boot = bootstrap(rows)
    with_ci = boot.sae_intervals(frame, ("delta_lm_loss",))
    assert with_ci.loc[1, "delta_lm_loss_ci_low"] == pytest.approx(0.05, abs=1e-9)
    assert with_ci.loc[1, "delta_lm_loss_ci_high"] == pytest.approx(0.05, abs=1e-9)
    # ... while the clean CE itself, resampled on its own, varies by far more than that
    clean = np.array(shifted["ce_clean"])
    assert clean.std() / np.sqrt(len(clean)) > 0.02
    assert boot.grids[KEY].windows["delta_lm_loss"].shape == (400, 2)


def test_seed_draws_are_every_multiset_with_its_probability_and_joint_across_configurations():
    frame = pd.DataFrame(synthetic_rows(GATED_HALF[:2], 10, 10, seeds=(0, 4, 7)))
    design = SeedDesign.of(frame)
    assert design.configs == 2 and design.labels == [0, 4, 7]
    counts, p = design.draws(1000, np.random.default_rng(0))
    assert len(counts) == 10 and (counts.sum(1) == 3).all() and p.sum() == pytest.approx(1)
    assert p[(counts == 3).any(1)] == pytest.approx(np.full(3, 1 / 27))  # one seed three times
    assert p[(counts == 1).all(1)] == pytest.approx([6 / 27])             # each seed once
    # one draw serves every configuration: label 4 twice and 7 once weighs each configuration's rows alike
    averaging = design.averaging(np.array([0.0, 2.0, 1.0]))
    assert np.allclose(averaging[0, :3], [0, 2 / 3, 1 / 3]) and np.allclose(averaging[1, 3:], [0, 2 / 3, 1 / 3])
    # a configuration trained with one seed keeps it whatever the draw
    single = SeedDesign.of(frame.iloc[[0, 1, 2, 3]])
    assert np.allclose(single.averaging(np.array([0.0, 3.0, 0.0]))[1], [0, 0, 0, 1])
    assert single.seeds_of(np.ones(4, bool)) == 1


def _constant_window_rows(seed_lr: list[float], windows: int = 50) -> list[dict]:
    """One configuration whose loss recovered is exactly `seed_lr[s]` on every window: no window variation."""
    rng = np.random.default_rng(5)
    clean = 3.0 + rng.normal(0, 0.5, windows)
    zero = clean + 4.0
    return [_row("gated", 0, s, "resid_post", clean, zero, clean + 4.0 * (1 - lr), _store(rng, 20, 10, 1.0))
            for s, lr in enumerate(seed_lr)]


def test_seeds_alone_give_students_t_interval_by_hand():
    seed_lr = [0.90, 0.93, 0.95]
    frame, boot = bootstrap(_constant_window_rows(seed_lr))
    found = boot.estimate(KEY, [np.ones(3, bool)], loss_recovered_of("gated"))["loss_recovered"]
    mean, sd = np.mean(seed_lr), np.std(seed_lr, ddof=1)
    half = stats.t.ppf(0.975, 2) * sd / np.sqrt(3)  # 4.30 standard errors: two degrees of freedom
    assert found.value == pytest.approx(mean, abs=1e-12)
    assert found.ci_low == pytest.approx(mean - half, abs=1e-9) and found.ci_high == pytest.approx(mean + half, abs=1e-9)
    assert found.seed_sd == pytest.approx(sd, abs=1e-12) and found.per_seed == pytest.approx(seed_lr)
    assert found.seeds == 3


def test_one_seed_is_the_window_bootstrap():
    frame, boot = bootstrap(synthetic_rows(GATED_HALF[:1], 60, 30))
    found = boot.estimate(KEY, [np.ones(1, bool)], loss_recovered_of("gated"))["loss_recovered"]
    low, high = percentile_interval(boot.grids[KEY].windows["loss_recovered"][:, 0], 0.95)
    assert (found.ci_low, found.ci_high) == pytest.approx((float(low), float(high)), abs=1e-12)
    assert found.seeds == 1 and np.isnan(found.seed_sd) and found.per_seed == []


def test_two_levels_combined_by_hand():
    """Seeds and windows both vary: each end is a quantile of (window resample) + se_seed · t₂, solved
    here with a root finder on the mixture's distribution function."""
    frame, boot = bootstrap(synthetic_rows(GATED_HALF[:1], 40, 20, seeds=(0, 1, 2), seed_sd=0.01), resamples=600)
    found = boot.estimate(KEY, [np.ones(3, bool)], loss_recovered_of("gated"))["loss_recovered"]
    per_seed = frame["loss_recovered"].to_numpy()
    windows = boot.grids[KEY].windows["loss_recovered"].mean(1)  # the seed mean on each window resample
    se = np.sqrt(per_seed.var(ddof=1) / 3)

    def end(q):
        return optimize.brentq(lambda x: stats.t.cdf((x - windows) / se, 2).mean() - q, -10, 10, xtol=1e-14)

    assert found.value == pytest.approx(per_seed.mean(), abs=1e-12)
    assert (found.ci_low, found.ci_high) == pytest.approx((end(0.025), end(0.975)), abs=1e-9)
    q_low, q_high = percentile_interval(windows, 0.95)
    assert found.ci_low < q_low and found.ci_high > q_high  # wider than either level alone
    assert found.ci_high - found.ci_low > 2 * stats.t.ppf(0.975, 2) * se


def simulated_frame(rng, truth: dict[str, float], seeds: int, windows: int, seed_sd: float, shared_sd: float,
                     window_sd: float, noise_sd: float) -> pd.DataFrame:
    """Configurations with known loss recovered: each seed shifts all of them by a shared N(0, shared_sd)
    (one data order per seed) and each by its own N(0, seed_sd); each window shifts each configuration
    by N(0, window_sd), the same for every seed; N(0, noise_sd) per (seed, window)."""
    clean = 3.0 + rng.normal(0, 0.5, windows)
    zero = clean + 4.0
    shared = rng.normal(0, shared_sd, seeds)
    rows = []
    for index, (arch, recovered) in enumerate(truth.items()):
        window_effect = rng.normal(0, window_sd, windows)
        for s in range(seeds):
            relative = recovered + shared[s] + rng.normal(0, seed_sd) + window_effect + rng.normal(0, noise_sd, windows)
            rows.append(_row(arch, index, s, "resid_post", clean, zero, clean + 4.0 * (1 - relative),
                             _store(rng, 4, 10, 1.0)))
    return pd.DataFrame(rows)


SCENARIOS = {  # (seed sd, shared seed sd, window sd, noise sd): which level dominates
    "seeds dominate": (0.010, 0.0, 0.004, 0.002),
    "windows dominate": (0.0005, 0.0, 0.02, 0.002),
    "both": (0.004, 0.0, 0.02, 0.002),
}


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_coverage_of_a_configurations_loss_recovered(scenario):
    """Over 200 simulated runs (3 seeds, 32 windows), the 95% interval covers the true value close to 95%
    of the time; the percentile interval of the seed resamples alone (the naive first level) does not."""
    seed_sd, shared_sd, window_sd, noise_sd = SCENARIOS[scenario]
    rng = np.random.default_rng(11)
    covered, naive_covered, runs = 0, 0, 200
    for _ in range(runs):
        frame = simulated_frame(rng, {"gated": 0.9}, 3, 32, seed_sd, shared_sd, window_sd, noise_sd)
        boot = Bootstrap(frame, IntervalsConfig(resamples=200, seed=int(rng.integers(1 << 30))))
        found = boot.estimate(KEY, [np.ones(3, bool)], loss_recovered_of("gated"))["loss_recovered"]
        covered += found.ci_low <= 0.9 <= found.ci_high
        draws = frame["loss_recovered"].to_numpy()[rng.integers(0, 3, (200, 3))].mean(1)
        naive_covered += np.quantile(draws, 0.025) <= 0.9 <= np.quantile(draws, 0.975)
    assert 0.91 <= covered / runs <= 0.99, covered / runs
    if scenario == "seeds dominate":
        assert naive_covered / runs < 0.85, naive_covered / runs  # the range of 3 seeds: about 75%


def test_coverage_of_a_paired_difference_with_seeds_shared_across_configurations():
    """Two configurations trained on the same seeds share most of their seed effect (one data order per
    seed): drawing the seeds jointly keeps the pairing, and the difference's interval still covers."""
    rng = np.random.default_rng(12)
    covered, widths, runs = 0, [], 200

    def difference(a, b):
        return {"difference": float(a.loss_recovered[0] - b.loss_recovered[0])}

    for _ in range(runs):
        frame = simulated_frame(rng, {"gated": 0.9, "gated_untied": 0.895}, 3, 32, 0.002, 0.01, 0.005, 0.002)
        boot = Bootstrap(frame, IntervalsConfig(resamples=200, seed=int(rng.integers(1 << 30))))
        masks = [(frame["arch"] == arch).to_numpy() for arch in ("gated", "gated_untied")]
        found = boot.estimate(KEY, masks, difference)["difference"]
        covered += found.ci_low <= 0.005 <= found.ci_high
        widths.append(found.ci_high - found.ci_low)
    assert 0.91 <= covered / runs <= 0.99, covered / runs
    # the shared seed effect (0.01) cancels: intervals far narrower than it would make them
    assert np.median(widths) < 2 * 1.96 * 0.01 / np.sqrt(3)


def test_combined_interval_is_undefined_when_too_many_resamples_are():
    point, windows = np.array([0.5]), np.full((100, 1), 0.5)
    seeds, p = np.array([[0.4], [np.nan], [0.6]]), np.array([0.45, 0.1, 0.45])
    low, high = combined_interval(point, windows, seeds, p, 3, 0.95)
    assert low[0] == -np.inf and high[0] == np.inf
    windows[:5] = np.nan  # 5% of the window resamples
    low, high = combined_interval(point, windows, None, None, 1, 0.95)
    assert low[0] == -np.inf and high[0] == np.inf
    low, high = combined_interval(np.array([0.5]), np.full((100, 1), 0.5), None, None, 1, 0.95, log=True)
    assert (low[0], high[0]) == pytest.approx((0.5, 0.5))


def test_saes_evaluated_on_different_windows_are_refused():
    rows = synthetic_rows(GATED_HALF[:2], 100, 100)
    rows[1]["samples"]["ce_sae"] = rows[1]["samples"]["ce_sae"][:50]
    with pytest.raises(ValueError, match="re-run the evaluate stage"):
        bootstrap(rows)
