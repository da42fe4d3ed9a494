"""The verdict: its decision rule, each claim on synthetic headline and comparison tables, missing
inputs, the reference run, and the whole stage from aggregated synthetic metrics."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from gatedsae.plan.config import load_config
from gatedsae.reporting.verdict import (
    INCONCLUSIVE,
    NOT_MEASURED,
    NOT_REPRODUCED,
    REPRODUCED,
    Rule,
    claims,
    write_verdict,
)

CONFIG = load_config(["experiment=smoke"])


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


def head_row(site: str, ratio, low, high, gated=(1.0, 0.99, 1.01), baseline=(0.9, 0.88, 0.92)) -> dict:
    return {"model": "m", "site": site, "layer": 6, "l0_ratio": ratio, "l0_ratio_ci_low": low, "l0_ratio_ci_high": high,
            "loss_recovered_low": 0.95, "loss_recovered_high": 0.98,
            "gamma_gated": gated[0], "gamma_gated_ci_low": gated[1], "gamma_gated_ci_high": gated[2],
            "gamma_baseline": baseline[0], "gamma_baseline_ci_low": baseline[1], "gamma_baseline_ci_high": baseline[2],
            "note": ""}


def comparison(arch: str, versus: str, value, low, high, gamma=(1.0, 0.99, 1.01)) -> dict:
    return {"model": "m", "site": "resid_post", "layer": 6, "arch": arch, "versus": versus,
            "loss_recovered_difference": value, "loss_recovered_difference_ci_low": low,
            "loss_recovered_difference_ci_high": high, "gamma": gamma[0], "gamma_ci_low": gamma[1],
            "gamma_ci_high": gamma[2], "note": ""}


def by_id(found):
    return {c["id"] if isinstance(c, dict) else c.id: c for c in found}


def test_each_claim_on_synthetic_tables():
    head = pd.DataFrame([
        head_row("resid_post", 0.5, 0.42, 0.58),                                   # halves: reproduced
        head_row("mlp_out", 0.9, 0.82, 0.97, baseline=(1.0, 0.97, 1.03)),          # no halving, no shrinkage
        head_row("attn_z", 0.6, 0.4, 0.95, gated=(1.03, 1.01, 1.05)),              # crosses the threshold
    ])
    comps = pd.DataFrame([
        comparison("baseline_rescale_shift", "baseline", 0.01, 0.005, 0.015),
        comparison("gated", "baseline_rescale_shift", 0.02, -0.001, 0.03),
        comparison("gated_no_rmag", "gated", -0.02, -0.03, -0.01),
        comparison("gated_untied", "gated", 0.03, 0.02, 0.04),
    ])
    found = by_id(claims(head, comps, CONFIG.verdict))
    assert found["l0_ratio/resid_post/layer6"].status == REPRODUCED
    assert found["l0_ratio/mlp_out/layer6"].status == NOT_REPRODUCED
    assert found["l0_ratio/attn_z/layer6"].status == INCONCLUSIVE
    assert found["gamma_gated/resid_post/layer6"].status == REPRODUCED
    assert found["gamma_gated/attn_z/layer6"].status == INCONCLUSIVE
    assert found["gamma_baseline/resid_post/layer6"].status == REPRODUCED
    assert found["gamma_baseline/mlp_out/layer6"].status == INCONCLUSIVE
    assert found["rescale_shift_gamma/resid_post/layer6"].status == REPRODUCED
    assert found["rescale_shift_vs_baseline/resid_post/layer6"].status == REPRODUCED
    assert found["gated_vs_rescale_shift/resid_post/layer6"].status == INCONCLUSIVE
    assert found["gated_no_rmag_vs_gated/resid_post/layer6"].status == REPRODUCED
    assert found["gated_untied_vs_gated/resid_post/layer6"].status == NOT_REPRODUCED
    assert "0.34 (Gemma-7B L20)" in found["l0_ratio/resid_post/layer6"].paper
    assert found["l0_ratio/resid_post/layer6"].measured() == "0.500 [0.420, 0.580]"
    assert found["rescale_shift_vs_baseline/resid_post/layer6"].measured() == "+1.00 pp [+0.50, +1.50]"


def test_missing_inputs_are_said_not_crashed_on():
    head = pd.DataFrame([{**head_row("resid_post", math.nan, math.nan, math.nan),
                          "note": "frontiers do not overlap in loss recovered"}])
    empty = pd.DataFrame(columns=["model", "site", "layer", "arch", "versus", "loss_recovered_difference"])
    found = claims(head, empty, CONFIG.verdict)
    statuses = by_id(found)
    assert statuses["l0_ratio/resid_post/layer6"].status == NOT_MEASURED
    assert "do not overlap" in statuses["l0_ratio/resid_post/layer6"].note
    assert statuses["rescale_shift"].status == NOT_MEASURED and statuses["ablations"].status == NOT_MEASURED
    assert "ablations" in statuses["ablations"].note
    no_interval = pd.DataFrame([head_row("resid_post", 0.5, math.nan, math.nan)])
    claim = by_id(claims(no_interval, empty, CONFIG.verdict))["l0_ratio/resid_post/layer6"]
    assert claim.status == INCONCLUSIVE and "no interval" in claim.note


def test_the_verdict_stage_from_aggregated_metrics_with_a_reference(tmp_path):
    """aggregate → verdict on synthetic samples: files written, the reference run quoted by claim id."""
    from test_intervals import GATED_HALF, synthetic_rows

    from gatedsae.reporting.tables import aggregate

    rows = []
    for seed, site in enumerate(("resid_post", "mlp_out", "attn_z")):
        rows += synthetic_rows(GATED_HALF, 120, 60, seed=seed, site=site)
    rows += synthetic_rows([("gated_untied", 6, 0.8, 1.0), ("gated_untied", 24, 0.9, 1.0)], 120, 60, site="resid_post")
    for row in rows:
        row |= {"corpus": "c", "sweep": "s", "lr": 1e-3, "width": 64, "train_tokens": 1, "eval_tokens": 1,
                "ce_tokens": 1, "checkpoint_id": "x", "checkpoint": "x", "ce_clean": 3.0, "ce_sae": 3.1, "ce_zero": 7.0,
                "alive_fraction": 1.0, "fvu": 0.1, "nmse": 0.1,
                "density_histogram": {"log10_edges": [-1.0, 0.0], "counts": [1], "dead": 0}}
    metrics_file = tmp_path / "metrics.json"
    metrics_file.write_text(json.dumps({"rows": rows}))
    results, reference = tmp_path / "results", tmp_path / "reference"
    aggregate([metrics_file], results, CONFIG.intervals)
    config = replace(CONFIG, experiment=replace(CONFIG.experiment, results_dir=str(results)),
                     verdict=replace(CONFIG.verdict, reference_dir=str(reference)))

    path_json, path_md = write_verdict(config)
    verdict = json.loads(path_json.read_text())
    found = by_id(verdict["claims"])
    assert found["l0_ratio/resid_post/layer3"]["status"] == REPRODUCED  # half the L0, tight interval
    assert found["rescale_shift"]["status"] == NOT_MEASURED
    assert "gated_untied_vs_gated/resid_post/layer3" in found
    assert all(c["reference"] == "n/a" for c in verdict["claims"])
    text = path_md.read_text()
    assert "| Claim |" in text and "REPRODUCED" in text and "L0 ratio (all tokens)" in text
    assert "Interval widths" in text

    reference.mkdir()
    (reference / "verdict.json").write_text(path_json.read_text())
    write_verdict(config)
    quoted = by_id(json.loads(path_json.read_text())["claims"])["l0_ratio/resid_post/layer3"]["reference"]
    assert quoted.startswith(f"{found['l0_ratio/resid_post/layer3']['value']:.3f} [") and quoted.endswith(REPRODUCED)
    assert np.isfinite(found["l0_ratio/resid_post/layer3"]["ci_high"])
