"""scripts/budget_effect.py: the L0 ratio at the levels per seed and training budget, read from a probe's
validation readings as the verdict reads frontiers, and the outcome rule written down before the probe ran
(moves / does not move / undecided / not tested), on synthetic probes with known ratios."""

from __future__ import annotations

import json
import runpy
import sys

import pytest

SCRIPT = runpy.run_path("scripts/budget_effect.py", run_name="budget_effect")
LEVELS = [0.97, 0.98]
GATED_POINTS = [(10.0, 0.96), (30.0, 0.975), (100.0, 0.99)]  # (L0, loss recovered) along the Gated frontier


def _saes(ratios: dict[int, dict[int, float]]) -> dict:
    """Probe SAEs whose baseline of each width needs 1 / ratio × Gated's L0 at every loss recovered, per seed
    ({width: {seed: ratio}}): the ratio at any level inside the frontiers is exactly `ratio`."""
    saes = {}
    for seed in sorted({s for per_seed in ratios.values() for s in per_seed}):
        suffix = f"_seed{seed}" if seed else ""
        for i, (l0, recovered) in enumerate(GATED_POINTS):
            saes[f"gated_w64_l1_{i}{suffix}"] = {"arch": "gated", "validation": {
                "l0": l0, "loss_recovered": recovered, "gamma": 1.0}}
        for width, per_seed in ratios.items():
            for i, (l0, recovered) in enumerate(GATED_POINTS):
                saes[f"baseline_w{width}_l1_{i}{suffix}"] = {"arch": "baseline", "validation": {
                    "l0": l0 / per_seed[seed], "loss_recovered": recovered, "gamma": 0.9}}
    return saes


def _probe(short: dict, long: dict) -> dict:
    return {"sites": {"resid_post/layer15 (grid)": {
        "command": "python scripts/probe_convergence.py ...", "validation_ce_windows": 64, "seeds": 2,
        "max_grad_norm": 1.0,
        "budgets": [{"steps": 3200, "saes": _saes(long)}, {"steps": 400, "saes": _saes(short)}]}}}


VERDICT = {"claims": [
    {"id": "l0_ratio/resid_post/layer15", "variant": "sweep", "value": 0.41, "seed_sd": 0.03},
    {"id": "l0_ratio/resid_post/layer15/baseline_w64", "variant": "sweep", "value": 0.39, "seed_sd": 0.005},
    {"id": "l0_ratio/resid_post/layer15/all_tokens", "variant": "all_tokens", "value": 0.55, "seed_sd": 0.1}]}


def _effect(short, long):
    return SCRIPT["budget_effect"](_probe(short, long), None, VERDICT, lambda site: LEVELS)


def test_each_seeds_ratio_is_read_at_the_levels_from_its_own_frontiers():
    result = _effect({96: {0: 0.5, 1: 0.4}}, {96: {0: 0.3, 1: 0.2}})
    (comparison,) = result["comparisons"]
    short, long = comparison["budgets"]  # sorted by budget
    assert (short["steps"], long["steps"]) == (400, 3200)
    assert short["per_seed"]["0"]["ratio"] == pytest.approx(0.5) and short["per_seed"]["1"]["ratio"] == pytest.approx(0.4)
    assert short["per_seed"]["0"]["per_level"] == pytest.approx([0.5, 0.5])
    assert short["mean_ratio"] == pytest.approx(0.45) and long["mean_ratio"] == pytest.approx(0.25)
    assert short["per_seed"]["0"]["gamma_gated"] == pytest.approx(1.0)
    # the baseline that no claim names by width is the compute-matched one: the unsuffixed claim's seed SD
    assert comparison["claim"] == "l0_ratio/resid_post/layer15" and comparison["published_seed_sd"] == 0.03
    assert comparison["difference"] == pytest.approx(-0.2) and comparison["outcome"] == "moves"
    assert result["levels"] == LEVELS and result["site"] == "resid_post" and result["layer"] == 15


@pytest.mark.parametrize("long, said", [
    ({0: 0.40, 1: 0.41}, "moves"),                       # both seeds below both, 0.085 > 2 × 0.03
    ({0: 0.49, 1: 0.48}, "does not move"),               # 0.01 apart: under one SD
    ({0: 0.44, 1: 0.46}, "undecided at 2 seeds"),        # 0.045: between one and two SDs
    ({0: 0.30, 1: 0.52}, "undecided at 2 seeds"),        # far apart on average, but the seeds straddle
])
def test_the_pre_registered_outcome(long, said):
    (comparison,) = _effect({96: {0: 0.50, 1: 0.49}}, {96: long})["comparisons"]
    assert comparison["outcome"] == said


def test_each_width_is_judged_against_its_own_claims_seed_sd():
    result = _effect({96: {0: 0.50, 1: 0.49}, 64: {0: 0.40, 1: 0.39}}, {96: {0: 0.49, 1: 0.48}, 64: {0: 0.38, 1: 0.37}})
    by_width = {c["baseline_width"]: c for c in result["comparisons"]}
    assert by_width[64]["claim"].endswith("/baseline_w64") and by_width[64]["outcome"] == "moves"  # 0.02 > 2 × 0.005
    assert by_width[96]["outcome"] == "does not move"


def test_a_level_a_frontier_misses_leaves_the_width_not_tested():
    probe = _probe({96: {0: 0.5, 1: 0.5}}, {96: {0: 0.4, 1: 0.4}})
    for sae in probe["sites"]["resid_post/layer15 (grid)"]["budgets"][0]["saes"].values():
        sae["validation"]["loss_recovered"] -= 0.05  # the 3,200-step frontiers end below the upper level
    (comparison,) = SCRIPT["budget_effect"](probe, None, VERDICT, lambda site: LEVELS)["comparisons"]
    assert comparison["outcome"].startswith("not tested") and comparison["difference"] is None
    assert comparison["budgets"][1]["mean_ratio"] is None


def test_bad_probes_are_refused_with_what_to_do(tmp_path):
    one_budget = _probe({96: {0: 0.5}}, {96: {0: 0.4}})
    one_budget["sites"]["resid_post/layer15 (grid)"]["budgets"].pop()
    with pytest.raises(SystemExit, match="one budget only"):
        SCRIPT["budget_effect"](one_budget, None, VERDICT, lambda site: LEVELS)
    unread = _probe({96: {0: 0.5}}, {96: {0: 0.4}})
    del unread["sites"]["resid_post/layer15 (grid)"]["budgets"][0]["saes"]["gated_w64_l1_0"]["validation"]
    with pytest.raises(SystemExit, match="--ce-windows"):
        SCRIPT["budget_effect"](unread, None, VERDICT, lambda site: LEVELS)
    with pytest.raises(SystemExit, match="no published claim"):
        SCRIPT["budget_effect"](_probe({7: {0: 0.5}, 8: {0: 0.5}}, {7: {0: 0.4}, 8: {0: 0.4}}), None, VERDICT,
                                lambda site: LEVELS)


def test_the_script_writes_its_file(tmp_path, monkeypatch):
    probe, verdict, out = tmp_path / "probe.json", tmp_path / "verdict.json", tmp_path / "effect.json"
    probe.write_text(json.dumps(_probe({96: {0: 0.5, 1: 0.49}}, {96: {0: 0.40, 1: 0.41}})))
    verdict.write_text(json.dumps(VERDICT))
    monkeypatch.setattr(sys, "argv", ["budget_effect.py", "--probe", str(probe), "--verdict", str(verdict),
                                      "--out", str(out), "experiment=smoke", "verdict.levels={resid_post: [0.97, 0.98]}"])
    runpy.run_path("scripts/budget_effect.py", run_name="__main__")
    written = json.loads(out.read_text())
    assert written["comparisons"][0]["outcome"] == "moves" and written["levels"] == LEVELS
    assert "experiment=smoke" in written["command"]


def test_the_docs_table_gives_each_seed_and_each_widths_outcome():
    from gatedsae.reporting.probe_tables import budget_effect

    result = _effect({96: {0: 0.50, 1: 0.49}}, {96: {0: 0.40, 1: 0.41}})
    lines = budget_effect({**result, "validation_ce_windows": 64, "seeds": 2})
    assert lines[2] == "| 96 | 400 | 0.500, 0.490 | 0.495 | 1.000, 1.000 |"
    assert lines[3] == "| 96 | 3200 | 0.400, 0.410 | 0.405 | 1.000, 1.000 |"
    assert lines[-1] == ("Read at 97%, 98% loss recovered, on 64 validation windows, 2 seeds. Outcome: the baseline "
                         "96 wide: **moves** (400 → 3200 steps, -0.090: lower at the longer budget; the published "
                         "seed SD of `l0_ratio/resid_post/layer15` 0.0300).")
    result["convergence"] = [{"steps": 400, "saes": 12, "meet_rule": 0, "still_moving": 9, "within_noise": 3},
                             {"steps": 3200, "saes": 12, "meet_rule": 5, "still_moving": 4, "within_noise": 3}]
    lines = budget_effect({**result, "validation_ce_windows": 64, "seeds": 2})
    assert lines[-1] == ("The probe's SAEs against the convergence rule: 400 steps: 0 of 12 meet it, 9 are still moving "
                         "beyond the noise of their curves, 3 within it; 3200 steps: 5 of 12 meet it, 4 are still "
                         "moving beyond the noise of their curves, 3 within it.")


def test_each_budgets_saes_are_counted_against_the_convergence_rule_beside_their_noise():
    rule = {"max_relative_change": 0.05, "metrics": ["l0", "reconstruction"]}
    saes = {"meets": {"converged": True, "l0_change": 0.01, "l0_noise": 0.01, "reconstruction_change": 0.02,
                      "reconstruction_noise": 0.01},
            "moving": {"converged": False, "l0_change": 0.15, "l0_noise": 0.01, "reconstruction_change": 0.2,
                       "reconstruction_noise": 0.1},
            "noisy": {"converged": False, "l0_change": 0.02, "l0_noise": 0.01, "reconstruction_change": 0.2,
                      "reconstruction_noise": 0.1},
            "unrecorded": {"converged": False, "l0_change": 0.15, "reconstruction_change": 0.2}}
    assert SCRIPT["convergence_at"]({"steps": 400, "saes": saes}, rule) == {
        "steps": 400, "saes": 4, "meet_rule": 1, "still_moving": 1, "within_noise": 2,
        "within_noise_saes": ["noisy", "unrecorded"]}
    probe = _probe({96: {0: 0.5, 1: 0.4}}, {96: {0: 0.3, 1: 0.2}})
    for budget in probe["sites"]["resid_post/layer15 (grid)"]["budgets"]:
        for sae in budget["saes"].values():
            sae.update(converged=False, l0_change=0.2, l0_noise=0.01, reconstruction_change=0.0, reconstruction_noise=0.01)
    result = SCRIPT["budget_effect"](probe | {"rule": rule}, None, VERDICT, lambda site: LEVELS)
    assert [(c["steps"], c["still_moving"]) for c in result["convergence"]] == [(400, 12), (3200, 12)]
