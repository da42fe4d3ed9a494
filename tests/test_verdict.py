"""The verdict: its decision rules (one-sided, within, two-sided with an equivalence margin), each claim
on constructed readings (levels reached or not, (c)'s gap fraction, (d)'s outcomes), convergence from
training curves, and the whole stage from synthetic metrics rows with seeds and splits."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from gatedsae.core.errors import PipelineError
from gatedsae.plan.config import ConvergenceConfig, load_config
from gatedsae.reporting import convergence
from gatedsae.reporting.claims import (
    BETTER,
    EQUIVALENT,
    INCONCLUSIVE,
    NOT_MEASURED,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    UNDECIDED,
    WORSE,
    Rule,
    comparison_claims,
    headline_claims,
    outcome,
)
from gatedsae.reporting.verdict import notes, on_split, write_verdict

CONFIG = load_config(["experiment=smoke"])
PROTOCOL = replace(CONFIG.verdict, levels={"resid_post": [0.9, 0.95], "mlp_out": [0.9], "attn_z": [0.9]})


@pytest.mark.parametrize("rule, interval, expected", [
    (Rule("below", (0.75,)), (0.40, 0.60), REPRODUCED),
    (Rule("below", (0.75,)), (0.80, 0.95), NOT_REPRODUCED),
    (Rule("below", (0.75,)), (0.60, 0.90), INCONCLUSIVE),
    (Rule("below", (0.75,)), (-math.inf, math.inf), INCONCLUSIVE),
    (Rule("above", (0.0,)), (0.01, 0.03), REPRODUCED),
    (Rule("above", (0.0,)), (-0.03, -0.01), NOT_REPRODUCED),
    (Rule("above", (0.0,)), (-0.01, 0.01), INCONCLUSIVE),
    (Rule("within", (0.98, 1.02)), (0.99, 1.01), REPRODUCED),
    (Rule("within", (0.98, 1.02)), (0.90, 0.95), NOT_REPRODUCED),
    (Rule("within", (0.98, 1.02)), (1.01, 1.05), INCONCLUSIVE),
    (Rule("within", (0.98, 1.02)), (math.nan, math.nan), INCONCLUSIVE),
])
def test_rule(rule, interval, expected):
    assert rule.judge(*interval) == expected


@pytest.mark.parametrize("interval, expected", [
    ((-0.004, 0.003), EQUIVALENT),   # inside ±0.5 pp: equivalent, whatever its sign
    ((-0.004, -0.001), EQUIVALENT),  # worse, but by less than the margin
    ((-0.02, -0.001), WORSE),        # below 0, reaching past −margin
    ((0.001, 0.02), BETTER),         # above 0, reaching past +margin
    ((-0.002, 0.02), UNDECIDED),     # crosses 0 and the margin
    ((-0.02, 0.001), UNDECIDED),
    ((math.nan, math.nan), UNDECIDED),
])
def test_two_sided_outcome_with_an_equivalence_margin(interval, expected):
    assert outcome(*interval, margin=0.005) == expected


def head_row(site: str, ratio, low, high, gated=(1.0, 0.99, 1.01), baseline=(0.9, 0.88, 0.92), levels="0.9;0.95",
             seeds=3, reach=(0.8, 0.97, 0.8, 0.97)) -> dict:
    return {"model": "m", "site": site, "layer": 6, "variant": "sweep", "width_gated": 64, "width_baseline": 96,
            "levels": levels, "seeds": seeds, "loss_recovered_min_gated": reach[0], "loss_recovered_max_gated": reach[1],
            "loss_recovered_min_baseline": reach[2], "loss_recovered_max_baseline": reach[3],
            "l0_ratio": ratio, "l0_ratio_ci_low": low, "l0_ratio_ci_high": high, "l0_ratio_seed_sd": 0.02,
            "l0_ratio_per_seed": "0.48;0.5;0.52",
            "gamma_gated": gated[0], "gamma_gated_ci_low": gated[1], "gamma_gated_ci_high": gated[2],
            "gamma_baseline": baseline[0], "gamma_baseline_ci_low": baseline[1], "gamma_baseline_ci_high": baseline[2]}


def level_rows(site: str, values: dict[float, float]) -> list[dict]:
    return [{"model": "m", "site": site, "layer": 6, "variant": "sweep", "width_gated": 64, "width_baseline": 96,
             "seeds": 3, "level": level, "l0_ratio": value, "l0_ratio_ci_low": value - 0.05, "l0_ratio_ci_high": value + 0.05,
             "gamma_gated": 1.0, "gamma_baseline": 0.9} for level, value in values.items()]


def comparison(arch: str, versus: str, value, low, high, gamma=(1.0, 0.99, 1.01), gap=None, l0_at="20;40") -> dict:
    row = {"model": "m", "site": "resid_post", "layer": 6, "arch": arch, "versus": versus, "seeds": 3, "l0_at": l0_at,
           "l0_range": "5;80", "l0_range_versus": "10;30",
           "loss_recovered_difference": value, "loss_recovered_difference_ci_low": low,
           "loss_recovered_difference_ci_high": high, "loss_recovered_difference_seed_sd": 0.002,
           "gamma": gamma[0], "gamma_ci_low": gamma[1], "gamma_ci_high": gamma[2]}
    if gap is not None:
        row |= {"gap_fraction": gap[0], "gap_fraction_ci_low": gap[1], "gap_fraction_ci_high": gap[2]}
    return row


def by_id(found):
    return {c["id"] if isinstance(c, dict) else c.id: c for c in found}


def test_headline_claims_at_the_levels_and_not_tested_where_a_frontier_stops_short():
    head = pd.DataFrame([
        head_row("resid_post", 0.5, 0.42, 0.58),                                   # halves: reproduced
        head_row("mlp_out", 0.9, 0.82, 0.97, baseline=(1.0, 0.97, 1.03), levels="0.9"),  # no halving, no shrinkage
        head_row("attn_z", math.nan, math.nan, math.nan, gated=(math.nan,) * 3, baseline=(math.nan,) * 3, levels="0.9",
                 reach=(0.8, 0.88, 0.8, 0.95)),                                    # Gated stops at 88%
    ])
    levels = pd.DataFrame(level_rows("resid_post", {0.9: 0.48, 0.95: 0.52}) + level_rows("mlp_out", {0.9: 0.9})
                          + level_rows("attn_z", {0.9: math.nan}))
    equal_width = {**head_row("resid_post", 0.65, 0.55, 0.72), "width_baseline": 64}  # a second baseline width
    head = pd.concat([head, pd.DataFrame([equal_width])], ignore_index=True)
    found = by_id(headline_claims(head, levels, PROTOCOL, "test"))
    assert found["l0_ratio/resid_post/layer6/baseline_w64"].claim.endswith("(baseline at Gated's width)")
    assert found["l0_ratio/resid_post/layer6/baseline_w64"].status == REPRODUCED
    resid = found["l0_ratio/resid_post/layer6"]
    assert resid.status == REPRODUCED and resid.levels == [0.9, 0.95] and resid.read_at == "90%, 95% loss recovered"
    assert resid.seeds == 3 and resid.seed_sd == 0.02 and resid.per_seed == [0.48, 0.5, 0.52] and resid.split == "test"
    assert [entry["value"] for entry in resid.per_level] == [0.48, 0.52]
    assert resid.measured() == "0.500 [0.420, 0.580]" and resid.spread() == "0.020 (3 seeds)"
    assert found["l0_ratio/mlp_out/layer6"].status == NOT_REPRODUCED
    assert found["gamma_baseline/mlp_out/layer6"].status == INCONCLUSIVE
    attn = found["l0_ratio/attn_z/layer6"]
    assert attn.status == NOT_TESTED and attn.value is None
    assert "not tested at 90% loss recovered" in attn.note and "gated frontier spans 80.0–88.0%" in attn.note
    assert found["gamma_gated/attn_z/layer6"].status == NOT_TESTED


def test_undefined_on_many_resamples_is_inconclusive_and_says_why():
    head = pd.DataFrame([{**head_row("resid_post", 0.5, -math.inf, math.inf), "l0_ratio_undefined": 0.2}])
    claim = by_id(headline_claims(head, pd.DataFrame(), PROTOCOL, "test"))["l0_ratio/resid_post/layer6"]
    assert claim.status == INCONCLUSIVE and "undefined on 20% of resamples" in claim.note
    assert claim.measured() == "0.500 [−∞, ∞]"


def test_rescale_shift_gap_fraction_and_ablation_outcomes():
    comps = pd.DataFrame([
        comparison("baseline_rescale_shift", "baseline", 0.01, 0.005, 0.015, gap=(0.3, 0.2, 0.4)),
        comparison("gated", "baseline_rescale_shift", 0.02, 0.015, 0.03),
        comparison("gated_no_rmag", "gated", -0.02, -0.03, -0.01),     # worse
        comparison("gated_untied", "gated", 0.001, -0.002, 0.004),    # equivalent within ±0.5 pp
        comparison("gated_unfrozen_decoder", "gated", 0.03, 0.02, 0.04),  # better: not reproduced
        comparison("jumprelu", "gated", 0.003, 0.001, 0.006),          # beyond the paper: better
    ])
    found, beyond = comparison_claims(comps, PROTOCOL, "test")
    found = by_id(found)
    assert found["rescale_shift_gamma/resid_post/layer6"].status == REPRODUCED
    assert found["rescale_shift_vs_baseline/resid_post/layer6"].status == REPRODUCED
    gap = found["rescale_shift_gap/resid_post/layer6"]
    assert gap.status == REPRODUCED and gap.threshold == "within [0, 0.5]" and gap.l0_at == [20.0, 40.0]
    assert found["rescale_shift_vs_baseline/resid_post/layer6"].measured() == "+1.00 pp [+0.50, +1.50]"
    assert (found["gated_no_rmag_vs_gated/resid_post/layer6"].outcome, found["gated_no_rmag_vs_gated/resid_post/layer6"].status) \
        == (WORSE, REPRODUCED)
    assert (found["gated_untied_vs_gated/resid_post/layer6"].outcome, found["gated_untied_vs_gated/resid_post/layer6"].status) \
        == (EQUIVALENT, REPRODUCED)
    unfrozen = found["gated_unfrozen_decoder_vs_gated/resid_post/layer6"]
    assert (unfrozen.outcome, unfrozen.status) == (BETTER, NOT_REPRODUCED) and unfrozen.read_at == "L0 20, 40"
    (successor,) = beyond
    assert successor.id == "jumprelu_vs_gated/resid_post/layer6" and successor.status == BETTER

    most = pd.DataFrame([comparison("baseline_rescale_shift", "baseline", 0.04, 0.03, 0.05, gap=(0.8, 0.7, 0.9))])
    assert by_id(comparison_claims(most, PROTOCOL, "test")[0])["rescale_shift_gap/resid_post/layer6"].status == NOT_REPRODUCED
    crossing = pd.DataFrame([comparison("baseline_rescale_shift", "baseline", 0.04, 0.03, 0.05, gap=(0.5, 0.3, 0.7))])
    assert by_id(comparison_claims(crossing, PROTOCOL, "test")[0])["rescale_shift_gap/resid_post/layer6"].status == INCONCLUSIVE


def test_matched_l0_not_reached_is_not_tested():
    comps = pd.DataFrame([comparison("gated_untied", "gated", math.nan, math.nan, math.nan, l0_at="20;40"),
                          comparison("gated_no_rmag", "gated", math.nan, math.nan, math.nan, l0_at="")])
    found = by_id(comparison_claims(comps, PROTOCOL, "test")[0])
    untied = found["gated_untied_vs_gated/resid_post/layer6"]
    assert untied.status == NOT_TESTED and "not tested at L0 20, 40" in untied.note and "Gated 10–30" in untied.note
    assert "Gated frontier does not reach" in found["gated_no_rmag_vs_gated/resid_post/layer6"].note


def test_missing_inputs_are_said_not_crashed_on():
    empty = pd.DataFrame(columns=["model", "site", "layer", "arch", "versus", "loss_recovered_difference"])
    found = by_id(comparison_claims(empty, PROTOCOL, "test")[0])
    assert found["rescale_shift"].status == NOT_MEASURED and found["ablations"].status == NOT_MEASURED
    no_interval = pd.DataFrame([head_row("resid_post", 0.5, math.nan, math.nan)])
    claim = by_id(headline_claims(no_interval, pd.DataFrame(), PROTOCOL, "test"))["l0_ratio/resid_post/layer6"]
    assert claim.status == INCONCLUSIVE and "no interval" in claim.note


def curve(sae: str, l0_end: float, steps: int = 40, variant: str = "sweep") -> list[dict]:
    """L0 falling from 100 towards `l0_end` linearly over training; reconstruction flat."""
    return [{"model": "m", "site": "resid_post", "layer": 3, "variant": variant, "sae": sae, "step": step,
             "l0": 100 + (l0_end - 100) * step / steps, "reconstruction": 0.1} for step in range(1, steps + 1)]


def test_convergence_from_training_curves():
    rule = ConvergenceConfig()
    curves = pd.DataFrame(curve("flat", 100) + curve("falling", 50) + curve("short", 50, steps=2))
    status = convergence.assess(curves, rule).set_index("sae")
    assert bool(status.loc["flat", "converged"]) and status.loc["flat", "l0_change"] == pytest.approx(0)
    assert status.loc["falling", "converged"] == False  # noqa: E712
    # mean over steps 27..30 (L0 ≈ 64.4) vs 37..40 (L0 ≈ 52.2): about 19% lower
    assert status.loc["falling", "l0_change"] == pytest.approx(0.19, abs=0.01) and "l0 19%" in status.loc["falling", "note"]
    assert status.loc["short", "converged"] is None and "too few" in status.loc["short", "note"]
    rows = pd.DataFrame({"site": "resid_post", "layer": 3, "variant": "sweep", "sae": ["flat", "falling", "other"]})
    summary = convergence.behind(convergence.assess(curves, rule), rows)
    assert summary == {"saes": 3, "converged": 1, "not_converged": ["sweep/falling"], "unknown": 1}
    assert convergence.describe(summary) == "1 of 3 converged (not: sweep/falling), 1 not assessed"
    assert convergence.describe(convergence.behind(convergence.assess(None, rule), rows)) == "not assessed (no training curves)"


def test_each_change_carries_its_noise_and_a_change_is_still_moving_only_beyond_twice_it():
    import numpy as np

    rule = ConvergenceConfig()
    steps, sd, mean = 2000, 0.01, 0.1  # flat reconstruction, independent noise of known SD on each logged row
    noise = np.random.default_rng(0).normal(0, sd, steps)
    rows = [{"model": "m", "site": "resid_post", "layer": 3, "variant": "sweep", "sae": "noisy", "step": step,
             "l0": 50.0, "reconstruction": mean + noise[step - 1]} for step in range(1, steps + 1)]
    status = convergence.assess(pd.DataFrame(rows + curve("falling", 50)), rule).set_index("sae")
    # each end averages 201 rows: the difference of two means has SD sd · √(2 / 201), relative to the mean
    expected = sd * np.sqrt(2 / 201) / mean
    assert status.loc["noisy", "reconstruction_noise"] == pytest.approx(expected, rel=0.15)
    assert status.loc["noisy", "l0_noise"] == 0  # a constant curve
    # a smooth trend moves little between rows, so its noise is nearly 0 and its 19% is still moving
    assert status.loc["falling", "l0_noise"] < 0.01
    assert convergence.still_moving(status.loc["falling", "l0_change"], status.loc["falling", "l0_noise"], 0.05)
    assert convergence.still_moving(0.06, 0.02, 0.05) is None  # within twice its noise of the threshold
    assert convergence.still_moving(0.10, 0.02, 0.05) is True and convergence.still_moving(0.0, 0.02, 0.05) is False
    assert convergence.still_moving(0.10, None, 0.05) is None
    assert pd.isna(convergence.assess(pd.DataFrame(curve("short", 50, steps=2)), rule).loc[0, "l0_noise"])
    # per claim: of the SAEs behind it that miss the rule, how many are still moving beyond their noise
    # a 7.5% step late in training, read as about 6% after the noise of these draws: past the rule's 5%,
    # but within twice its noise (about 1%) of it
    noisy_miss = [row | {"sae": "noisy_miss", "reconstruction": 0.1 + 0.0075 * (row["step"] > 1800) + noise[row["step"] - 1]}
                  for row in rows]
    curves = pd.DataFrame(rows + noisy_miss + curve("falling", 50))
    status = convergence.assess(curves, rule)
    keyed = status.set_index("sae")
    assert not keyed.loc["noisy_miss", "converged"]
    claim_rows = pd.DataFrame({"site": "resid_post", "layer": 3, "variant": "sweep", "sae": ["noisy", "noisy_miss", "falling"]})
    summary = convergence.behind(status, claim_rows, rule)
    assert convergence.still_moving(keyed.loc["noisy_miss", "reconstruction_change"],
                                    keyed.loc["noisy_miss", "reconstruction_noise"], 0.05) is None
    assert summary["still_moving"] == 1 and summary["converged"] == 1 and len(summary["not_converged"]) == 2
    assert convergence.describe(summary).endswith("; 1 of them still moving beyond the noise of their curves)")
    assert "still_moving" not in convergence.behind(status, claim_rows)  # no rule given: as before
    legacy = status.drop(columns=["l0_noise", "reconstruction_noise"])  # a run's status read without noise
    assert "still_moving" not in convergence.behind(legacy, claim_rows, rule)


def _synthetic_experiment(tmp_path, split: bool = False):
    """Metrics rows of three sites (3 seeds), an ablation and rescale-and-shift, with samples."""
    from test_intervals import GATED_HALF, synthetic_rows

    rows = []
    for seed, site in enumerate(("resid_post", "mlp_out", "attn_z")):
        rows += synthetic_rows(GATED_HALF, 120, 60, seed=seed, site=site, seeds=(0, 1, 2), seed_sd=0.002)
    rows += synthetic_rows([("gated_untied", 6, 0.8, 1.0), ("gated_untied", 24, 0.9, 1.0)], 120, 60, site="resid_post",
                           seeds=(0, 1, 2))
    rows += [row | {"variant": "all_tokens", "sae": "all_tokens_" + row["sae"]}  # trained on every token: its own claims
             for row in synthetic_rows(GATED_HALF, 120, 60, seed=7, site="resid_post", seeds=(0, 1, 2))]
    for row in rows:
        row |= {"corpus": "c", "sweep": "s", "train_tokens": 1, "eval_tokens": 1, "ce_tokens": 1, "checkpoint_id": "x",
                "checkpoint": "x", "ce_clean": 3.0, "ce_sae": 3.1, "ce_zero": 7.0, "alive_fraction": 1.0, "fvu": 0.1,
                "nmse": 0.1, "density_histogram": {"log10_edges": [-1.0, 0.0], "counts": [1], "dead": 0}}
    if split:  # the development split reads differently: the verdict must not see it
        rows = [row | {"split": "test"} for row in rows] + [row | {"split": "validation", "l0": 1000.0} for row in rows]
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps({"rows": rows}))
    return metrics_file


def test_the_verdict_stage_from_metrics_rows_with_seeds_a_split_and_a_reference(tmp_path):
    """aggregate (the readings, with their intervals) → verdict (the judgement), on rows of two splits."""
    from gatedsae.reporting.tables import aggregate

    metrics_file = _synthetic_experiment(tmp_path, split=True)
    results, reference = tmp_path / "results", tmp_path / "reference"
    results.mkdir()
    pd.DataFrame(curve("gated_0_s0", 100)).assign(layer=3).to_csv(results / "curves.csv", index=False)
    config = replace(CONFIG, experiment=replace(CONFIG.experiment, results_dir=str(results)),
                     verdict=replace(PROTOCOL, reference_dir=str(reference), levels={"resid_post": [0.85, 0.9],
                                                                                     "mlp_out": [0.85], "attn_z": [0.99]}))
    aggregate([metrics_file], results, config.intervals, config.verdict)
    path_json, path_md = write_verdict(config, results)
    verdict = json.loads(path_json.read_text())
    found = by_id(verdict["claims"])
    resid = found["l0_ratio/resid_post/layer3"]
    assert resid["status"] == REPRODUCED and resid["split"] == "test" and resid["seeds"] == 3
    assert resid["levels"] == [0.85, 0.9] and len(resid["per_level"]) == 2 and len(resid["per_seed"]) == 3
    assert resid["value"] == pytest.approx(0.5, abs=0.05), "read on the test rows, not the validation ones"
    assert np.isfinite(resid["ci_low"]) and resid["ci_low"] < resid["value"] < resid["ci_high"]
    assert resid["convergence"] == {"saes": 24, "converged": 1, "not_converged": [], "unknown": 23}
    assert found["l0_ratio/attn_z/layer3"]["status"] == NOT_TESTED
    assert found["rescale_shift"]["status"] == NOT_MEASURED
    assert found["gated_untied_vs_gated/resid_post/layer3"]["outcome"] in (WORSE, EQUIVALENT, BETTER, UNDECIDED)
    assert verdict["split"] == "test" and verdict["protocol"]["levels"]["resid_post"] == [0.85, 0.9]
    text = path_md.read_text()
    assert "| Claim |" in text and "Read on the held-out split: **test**" in text and "## At each pre-registered level" in text
    assert "all tokens" not in text, "the re-evaluation under the paper's treatment is gone"
    every_token = found["l0_ratio/resid_post/layer3/all_tokens"]
    assert every_token["variant"] == "all_tokens" and every_token["status"] == REPRODUCED
    assert every_token["convergence"]["saes"] == 24  # its own SAEs only
    assert "## SAEs trained on every non-BOS token, the paper's treatment" in text

    reference.mkdir()
    (reference / "verdict.json").write_text(path_json.read_text())
    write_verdict(config, results)
    quoted = by_id(json.loads(path_json.read_text())["claims"])["l0_ratio/resid_post/layer3"]["reference"]
    assert quoted.startswith(f"{resid['value']:.3f} [") and quoted.endswith(REPRODUCED)

    unsplit = {name: pd.read_csv(results / f"{name}.csv") for name in ("headline", "levels", "comparisons", "metrics")}
    unsplit["metrics"]["split"] = unsplit["metrics"]["seed"] = np.nan  # metrics.csv from before: empty columns
    tables, split = on_split(unsplit, "test")
    assert split == "held-out (not split)" and notes(tables["metrics"], config, split)["sites"][0]["seeds"] == [0]
    with pytest.raises(PipelineError, match="split 'heldout'"):
        write_verdict(replace(config, verdict=replace(config.verdict, split="heldout")), results)
    (results / "levels.csv").unlink()
    with pytest.raises(FileNotFoundError, match="levels.csv: run the aggregate stage"):
        write_verdict(config, results)
