"""What would decide an INCONCLUSIVE claim (reporting/decidability): the interval model against Monte
Carlo and hand computations, its calibration to a published interval, and the plans it gives."""

import math

import numpy as np
import pytest
from scipy import stats

from gatedsae.reporting.claims import NOT_REPRODUCED, REPRODUCED, Rule
from gatedsae.reporting.decidability import (MAX_SEEDS, Projection, calibrate, end_distance, plan_claim,
                                             plan_verdict, to_decide_table)


@pytest.mark.parametrize("window_sd, seed_se, df", [(1.0, 1.0, 2), (0.5, 2.0, 4), (2.0, 0.3, 2)])
def test_end_distance_is_the_quantile_of_the_sum(window_sd, seed_se, df):
    rng = np.random.default_rng(0)
    draws = window_sd * rng.standard_normal(2_000_000) + seed_se * rng.standard_t(df, 2_000_000)
    assert end_distance(window_sd, seed_se, df) == pytest.approx(np.quantile(draws, 0.975), rel=0.01)


def test_end_distance_with_one_term_is_that_terms_quantile():
    assert end_distance(0.3, 0.0, 2) == pytest.approx(0.3 * stats.norm.ppf(0.975))
    assert end_distance(0.0, 0.3, 2) == pytest.approx(0.3 * stats.t.ppf(0.975, 2))


def test_calibrate_gives_back_the_window_sd_an_end_was_made_with():
    distance = end_distance(0.02, 0.01, 2)
    window_sd, seed_se = calibrate(distance, 0.01, 2)
    assert (window_sd, seed_se) == (pytest.approx(0.02, rel=1e-6), 0.01)


def test_calibrate_scales_the_seed_term_down_when_it_alone_reaches_past_the_end():
    window_sd, seed_se = calibrate(0.01, 0.01, 2)  # the seed term alone: 0.043
    assert window_sd == 0.0
    assert seed_se * stats.t.ppf(0.975, 2) == pytest.approx(0.01)


@pytest.mark.parametrize("rule, scale, unit", [(Rule("below", (0.75,)), 1, ""), (Rule("above", (0.0,)), 100, " pp"),
                                               (Rule("within", (0.98, 1.02)), 1, ""), (Rule("within", (0.0, 0.5)), 1, "")])
def test_a_threshold_parses_back_to_its_rule(rule, scale, unit):
    parsed = Rule.parse(rule.describe(scale, unit), scale, unit)
    assert parsed.kind == rule.kind and parsed.bounds == pytest.approx(rule.bounds)


def test_a_threshold_that_is_not_one_is_refused():
    with pytest.raises(ValueError, match="not a claim's threshold"):
        Rule.parse("about 1")


def _claim(value, low, high, per_seed, threshold="within [0.98, 1.02]", claim_id="gamma_gated/resid_post/layer15"):
    return {"id": claim_id, "claim": "(b) Gated does not shrink", "site": "resid_post", "layer": 15,
            "value": value, "ci_low": low, "ci_high": high, "threshold": threshold, "status": "INCONCLUSIVE",
            "per_seed": per_seed, "seeds": len(per_seed), "percent_points": False}


def test_the_projection_gives_back_the_published_interval_at_todays_seeds_and_windows():
    claim = _claim(1.008, 0.972, 1.043, [1.0086, 1.0161, 0.997])
    assert Projection(claim).interval(3, 1) == pytest.approx((0.972, 1.043))
    ratio = _claim(0.557, 0.288, 1.098, [0.5, 0.56, 0.62], "< 0.75", "l0_ratio/resid_post/layer15")
    assert Projection(ratio).interval(3, 1) == pytest.approx((0.288, 1.098))


def test_a_window_dominated_claim_is_decided_by_windows_at_the_hand_computed_factor():
    # no seed spread: the end is 1.96 σ_w = 0.03 from 1.0; clearing 1.02 needs 0.03 / √k < 0.02, k > 2.25
    plan = plan_claim(_claim(1.0, 0.97, 1.03, [1.0, 1.0, 1.0]), windows=64)
    assert (plan.window_factor_needed, plan.decided_by_windows) == (4, REPRODUCED)
    assert plan.seeds_needed is None  # seeds cannot shrink a window term
    assert plan.seed_share == 0.0


def test_a_seed_dominated_claim_is_decided_by_seeds_where_the_t_multiplier_falls():
    sd = 0.004
    per_seed = [1.0 - sd, 1.0, 1.0 + sd]  # SD 0.004: se 0.0023, t(2) · se = 0.0099
    half = stats.t.ppf(0.975, 2) * sd / math.sqrt(3)
    plan = plan_claim(_claim(1.011, 1.011 - half, 1.011 + half, per_seed), windows=64)
    # by hand: n seeds clear 1.02 when t(n − 1) · 0.004 / √n < 0.009
    expected = next(n for n in range(4, 31) if stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n) < 0.009)
    assert (plan.seeds_needed, plan.decided_by_seeds) == (expected, REPRODUCED)
    assert plan.window_factor_needed is None and plan.seed_share == pytest.approx(1.0)


def test_an_estimate_outside_the_band_is_decided_not_reproduced():
    plan = plan_claim(_claim(1.06, 0.999, 1.121, [1.04, 1.06, 1.08]), windows=64)
    decided = {plan.decided_by_seeds, plan.decided_by_windows, plan.decided_by_data} - {None}
    assert decided == {NOT_REPRODUCED}


def test_an_estimate_on_the_threshold_is_never_decided():
    plan = plan_claim(_claim(1.02, 1.0, 1.04, [1.01, 1.02, 1.03]), windows=64)
    assert (plan.seeds_needed, plan.window_factor_needed, plan.data_factor_needed) == (None, None, None)


def test_an_unbounded_interval_gets_no_plan_and_says_why():
    plan = plan_claim(_claim(0.5, float("-inf"), float("inf"), [0.4, 0.5, 0.6], "< 0.75", "l0_ratio/x/layer1"), 64)
    assert "unbounded" in plan.why_not and plan.seeds_needed is None


def test_one_seed_projects_windows_only():
    plan = plan_claim(_claim(1.0, 0.97, 1.03, [1.0]), windows=64)
    assert plan.seeds_needed is None and plan.data_factor_needed is None and plan.window_factor_needed == 4


def test_the_plan_covers_the_inconclusive_claims_only_and_renders_each():
    verdict = {"claims": [_claim(1.0, 0.97, 1.03, [1.0, 1.0, 1.0]),
                          {**_claim(1.0, 0.99, 1.01, [1.0, 1.0, 1.0]), "status": REPRODUCED}],
               "notes": {"sites": [{"site": "resid_post", "layer": 15, "ce_windows": 64.0}]}}
    plans = plan_verdict(verdict)
    assert len(plans) == 1 and plans[0]["windows"] == 64
    table = to_decide_table({"plans": plans, "verdict": "v.json", "seeds": "3", "max_seeds": MAX_SEEDS,
                             "window_factors": [2, 4], "data_factors": [2]})
    assert "| 256 windows (4×): REPRODUCED |" in table[2]
