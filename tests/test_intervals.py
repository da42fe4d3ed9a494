"""Intervals: the paired bootstrap over held-out windows, on synthetic per-window samples whose
population values are known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from gatedsae.evaluation.intervals import Bootstrap, percentile_interval
from gatedsae.plan.config import IntervalsConfig
from gatedsae.reporting.tables import headline

ROWS_PER_WINDOW = 20


def synthetic_rows(saes: list[tuple[str, float, float, float]], windows: int, store_windows: int, seed: int = 0,
                   site: str = "resid_post", threshold=None) -> list[dict]:
    """One grid's metrics rows with samples: (arch, L0, loss recovered, γ) per SAE. Per-window CE varies
    a lot between windows (shared by every SAE, as real text does) and a little per SAE; the point
    metrics are computed from the samples exactly as the evaluation does."""
    rng = np.random.default_rng(seed)
    clean = 3.0 + rng.normal(0, 0.5, windows)  # window difficulty, shared
    zero = clean + 4.0 + rng.normal(0, 0.3, windows)
    rows = []
    for index, (arch, l0, recovered, gamma) in enumerate(saes):
        sae = clean + (zero - clean) * (1 - recovered) + rng.normal(0, 0.05, windows)
        rows_per = np.full(store_windows, float(ROWS_PER_WINDOW))
        l0_sums = rows_per * l0 * rng.uniform(0.8, 1.2, store_windows)
        dot = rng.uniform(50, 150, store_windows)
        x_hat_sq = dot * gamma * rng.uniform(0.97, 1.03, store_windows)
        store = {"rows": rows_per.tolist(), "l0": l0_sums.tolist(), "x_hat_sq": x_hat_sq.tolist(),
                 "x_hat_dot_x": dot.tolist()}
        samples = {"ce_clean": clean.tolist(), "ce_zero": zero.tolist(), "ce_sae": sae.tolist(), "store": store,
                    "all_tokens": None}
        rows.append({
            "model": "m", "site": site, "layer": 3, "arch": arch, "variant": "sweep", "l1": 0.01 * (index + 1),
            "sae": f"{arch}_{index}", "l0": l0_sums.sum() / rows_per.sum(),
            "loss_recovered": (zero.mean() - sae.mean()) / (zero.mean() - clean.mean()),
            "delta_lm_loss": sae.mean() - clean.mean(), "gamma": x_hat_sq.sum() / dot.sum(),
            "massive_norm_threshold": threshold, "samples": samples,
        })
    return rows


GATED_HALF = [("gated", 5, 0.80, 1.0), ("gated", 10, 0.85, 1.0), ("gated", 20, 0.90, 1.0), ("gated", 40, 0.95, 1.0),
              ("baseline", 10, 0.80, 0.9), ("baseline", 20, 0.85, 0.88), ("baseline", 40, 0.90, 0.86),
              ("baseline", 80, 0.95, 0.84)]


def bootstrap(rows: list[dict], resamples: int = 400) -> tuple[pd.DataFrame, Bootstrap]:
    frame = pd.DataFrame(rows)
    return frame, Bootstrap(frame, IntervalsConfig(resamples=resamples, seed=1))


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
            assert (with_ci[f"{metric}_ci_low"] <= with_ci[metric]).all()
            assert (with_ci[metric] <= with_ci[f"{metric}_ci_high"]).all()
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
    # same draw for every SAE: the difference of two SAEs' CE is as narrow as its own per-window spread allows
    key = ("m", "resid_post", 3)
    replicates = boot.replicates[key]["delta_lm_loss"]
    assert replicates.shape == (400, 2)


def test_headline_intervals_contain_the_point_and_shrink_with_more_windows():
    widths = []
    for windows in (30, 480):
        frame, boot = bootstrap(synthetic_rows(GATED_HALF, windows, windows, seed=3))
        head = headline(frame, boot)
        row = head.iloc[0]
        assert row["l0_ratio"] == pytest.approx(0.5, abs=0.1)
        for name in ("l0_ratio", "gamma_gated", "gamma_baseline"):
            assert row[f"{name}_ci_low"] <= row[name] <= row[f"{name}_ci_high"], name
        assert row["gamma_baseline_ci_high"] < 1 and row["gamma_gated_ci_low"] > 0.95
        widths.append(row["l0_ratio_ci_high"] - row["l0_ratio_ci_low"])
    assert widths[1] < widths[0] / 2


def test_without_a_threshold_both_treatments_are_the_same_and_ablations_without_samples_have_none():
    rows = synthetic_rows(GATED_HALF, 100, 100)
    frame, boot = bootstrap(rows)
    replicates = boot.replicates[("m", "resid_post", 3)]
    assert np.array_equal(replicates["loss_recovered"], replicates["loss_recovered_all_tokens"])
    head = headline(frame.assign(l0_all_tokens=frame["l0"], loss_recovered_all_tokens=frame["loss_recovered"],
                                 gamma_all_tokens=frame["gamma"]), boot)
    assert head["l0_ratio_all_tokens"].iloc[0] == pytest.approx(head["l0_ratio"].iloc[0])
    assert head["l0_ratio_all_tokens_ci_low"].iloc[0] == pytest.approx(head["l0_ratio_ci_low"].iloc[0])

    # with a threshold, the paper's treatment has its own samples; an SAE without them has no replicates
    rows = synthetic_rows(GATED_HALF, 100, 100, threshold=10.0)
    own = rows[0]["samples"]
    own["all_tokens"] = {"ce_zero": own["ce_zero"], "ce_sae": (np.array(own["ce_sae"]) + 0.1).tolist(),
                         "store": own["store"]}
    frame, boot = bootstrap(rows)
    replicates = boot.replicates[("m", "resid_post", 3)]
    assert np.isfinite(replicates["loss_recovered_all_tokens"][:, 0]).all()
    assert (replicates["loss_recovered_all_tokens"][:, 0] < replicates["loss_recovered"][:, 0]).all()
    assert np.isnan(replicates["loss_recovered_all_tokens"][:, 1:]).all()


def test_saes_evaluated_on_different_windows_are_refused():
    rows = synthetic_rows(GATED_HALF[:2], 100, 100)
    rows[1]["samples"]["ce_sae"] = rows[1]["samples"]["ce_sae"][:50]
    with pytest.raises(ValueError, match="re-run the evaluate stage"):
        bootstrap(rows)
