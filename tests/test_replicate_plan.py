"""Sizing the default experiment against the time budget: a cold `make replicate` predicted from the
estimates, calibrated on the measured cold run (gatedsae.plan.forecast.replicate_seconds,
scripts/plan_replicate.py, results/benchmarks/replicate_plan.json)."""

from __future__ import annotations

import json
import runpy
import subprocess

import pytest

from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.forecast import (MachineCalibration, calibrate, compute_seconds_by_stage, replicate_seconds,
                                    with_speedups)

PLAN = json.loads((REPO_ROOT / "results" / "benchmarks" / "replicate_plan.json").read_text())
CALIBRATION = MachineCalibration(**PLAN["calibration"])


def test_seeds_multiply_training_and_the_per_sae_part_of_evaluation():
    config = load_config(["experiment=default"])
    one, three = compute_seconds_by_stage(config, seeds=1), compute_seconds_by_stage(config, seeds=3)
    for kind in ("train", "rescale_shift"):
        assert three[kind] == pytest.approx(3 * one[kind])
    assert three["cache"] == one["cache"]
    assert one["evaluate"] < three["evaluate"] < 3 * one["evaluate"]  # the clean prefix runs once
    parts = replicate_seconds(config, CALIBRATION, seeds=3)
    assert parts["total"] == pytest.approx(sum(v for k, v in parts.items() if k != "total"))
    assert parts["chapters"] == pytest.approx(CALIBRATION.chapter_overhead_seconds * len(config.experiment.chapters))


def test_the_calibration_reproduces_the_measured_run():
    """Calibrated on the benchmark's stages of the configuration it measured (conf/ at its commit), the
    prediction for that configuration adds up to the measured wall time."""
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "plan_replicate.py"))
    measured = json.loads((REPO_ROOT / "results" / "benchmarks" / "replicate.json").read_text())
    try:
        old = script["measured_config"](script["measured_commit"](measured), [c["name"] for c in measured["chapters"]])
    except subprocess.CalledProcessError:
        pytest.skip("the measured configuration's commit is not in this clone")
    calibration = calibrate(measured, old)
    assert calibration.ratios == pytest.approx(CALIBRATION.ratios)
    assert calibration.fixed_seconds == pytest.approx(CALIBRATION.fixed_seconds)
    assert replicate_seconds(old, calibration)["total"] == pytest.approx(measured["wall_seconds"], rel=0.02)


def test_the_committed_plan_is_the_one_the_current_configuration_gives():
    """results/benchmarks/replicate_plan.json (and the docs' table from it) is current: rerun
    scripts/plan_replicate.py after changing the default's sizes or the estimates."""
    for candidate in PLAN["candidates"]:
        config = load_config(["experiment=default", *candidate["overrides"]])
        predicted = replicate_seconds(config, CALIBRATION, seeds=candidate["seeds"])
        if "speedups_applied" in candidate:  # the benchmarks' ratios, as the script read them
            predicted = with_speedups(predicted, candidate["speedups_applied"])
        assert predicted["total"] == pytest.approx(candidate["seconds"]["total"], abs=1.0), candidate["name"]
        assert candidate["fits"] == (predicted["total"] <= PLAN["budget_seconds"])


def test_the_speedups_applied_are_the_benchmarks_ratios():
    """The forecast at today's speed divides by what eval.json and train.json measured, not by a number
    typed in: edit a benchmark without rerunning the plan and this fails."""
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "plan_replicate.py"))
    sped = [c for c in PLAN["candidates"] if "speedups_applied" in c]
    expected = script["speedups_since"](PLAN["calibrated_on"]["conf_commit"])
    if expected is None:
        assert not sped  # the timed run already ran at that speed: applying them again would count them twice
        return
    ratios = {kind: expected[kind] for kind in ("evaluate", "train")}
    assert sped and all({k: c["speedups_applied"][k] for k in ratios} == pytest.approx(ratios) for c in sped)
    assert all(ratio >= 1 for ratio in ratios.values()) and any(ratio > 1 for ratio in ratios.values())


def test_a_speedup_counts_only_for_a_change_the_calibrating_run_did_not_have():
    """Benchmarks measured again after the calibrating run (on another machine, say) are no speed-up when
    that run's code already held what they measure; before the changes, both apply."""
    script = runpy.run_path(str(REPO_ROOT / "scripts" / "plan_replicate.py"))
    changes = script["SPEEDUP_CHANGES"]
    calibrating = PLAN["calibrated_on"]["conf_commit"]
    assert all(script["in_history"](change, calibrating) for change in changes.values())
    assert script["speedups_since"](calibrating) is None
    # the parent of the earlier change holds neither; the benchmark files changed after it
    earliest = next(change for change in changes.values()
                    if all(script["in_history"](change, other) for other in changes.values()))
    before = subprocess.run(["git", "rev-parse", f"{earliest}^"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    assert all(not script["in_history"](change, before) for change in changes.values())
    speedups = script["speedups_since"](before)
    measured = script["measured_speedups"]()
    assert speedups is not None and {k: speedups[k] for k in changes} == pytest.approx({k: measured[k] for k in changes})


def test_conf_counts_as_unchanged_when_only_comments_or_blank_lines_changed(tmp_path):
    import subprocess

    script = runpy.run_path(str(REPO_ROOT / "scripts" / "plan_replicate.py"))
    script["git"].__globals__["REPO_ROOT"] = tmp_path

    def commit(text: str) -> str:
        (tmp_path / "conf").mkdir(exist_ok=True)
        (tmp_path / "conf" / "sweep.yaml").write_text(text)
        for args in (["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t", "commit", "-qm", "c"]):
            subprocess.run(["git", *args], cwd=tmp_path, check=True)
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    timed = commit("# why\nl1: [0.1]  # note\n")
    commit("# why, reworded\n\nl1: [0.1]  # note\n")
    assert script["unchanged_since"](timed, "conf")
    commit("# why, reworded\n\nl1: [0.2]  # note\n")
    assert not script["unchanged_since"](timed, "conf")


def test_a_site_timed_on_its_own_is_calibrated_on_its_own():
    """A cold run that timed training per site gives each timed site its own ratio (a sparse step's cost
    follows the SAEs' L0, which the FLOP estimates do not see) and the kind's other jobs the ratio of what is
    left; the measured run is still reproduced, and a longer budget at one site scales that site's time only."""
    from gatedsae.plan.forecast import compute_seconds_by_site

    config = load_config(["experiment=default", "~train.site_tokens"])
    estimated = compute_seconds_by_site(config)
    stages = {kind: 0.5 * sum(sites.values()) for kind, sites in estimated.items()}
    stages["train"] = 0.4 * estimated["train"]["resid_post"] + 0.1 * estimated["train"]["attn_z"] + 0.3 * sum(
        seconds for site, seconds in estimated["train"].items() if site not in ("resid_post", "attn_z"))
    measured = {"setup_seconds": 60.0, "chapters": [
        {"wall_seconds": sum(stages.values()) + 100.0, "stages": stages,
         "site_stages": {"train": {"resid_post": 0.4 * estimated["train"]["resid_post"],
                                   "attn_z": 0.1 * estimated["train"]["attn_z"]}}}]}
    calibration = calibrate(measured, config)
    assert calibration.site_ratios["train"] == pytest.approx({"resid_post": 0.4, "attn_z": 0.1})
    assert calibration.ratios["train"] == pytest.approx(0.3) and calibration.ratios["evaluate"] == pytest.approx(0.5)
    chapters = 100.0 * len(config.experiment.chapters)  # the measured chapter's overhead, in each chapter
    assert replicate_seconds(config, calibration)["total"] == pytest.approx(sum(stages.values()) + 60.0 + chapters)
    longer = load_config(["experiment=default", "train.site_tokens={attn_z: 3276800}"])
    added = replicate_seconds(longer, calibration)["train"] - replicate_seconds(config, calibration)["train"]
    grown = compute_seconds_by_site(longer)["train"]["attn_z"] - estimated["train"]["attn_z"]
    assert grown > 0 and added == pytest.approx(0.1 * grown)
