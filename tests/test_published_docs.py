"""The numbers of the published reference runs in README.md and docs/ come from their files through the
verdict's formatter: a block that disagrees with its file fails here (`python -m gatedsae render-docs`
rewrites them)."""

from __future__ import annotations

import json

import pytest

from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.sites import short_label
from gatedsae.reporting.published import BLOCK, documents, render_block, render_text


@pytest.mark.parametrize("path", documents(), ids=lambda path: path.relative_to(REPO_ROOT).as_posix())
def test_every_generated_block_agrees_with_the_published_run(path):
    text = path.read_text()
    assert render_text(text) == text, f"{path.name} disagrees with reference/: run `python -m gatedsae render-docs`"


def test_the_readme_quotes_the_reference_verdict():
    blocks = {(m["source"], m["kind"]) for m in BLOCK.finditer((REPO_ROOT / "README.md").read_text())}
    assert blocks & {("reference/default/verdict.json", "claims"), ("reference/default/verdict.json", "claims-brief")}
    assert ("reference/default/verdict.json", "summary") in blocks


def test_an_edited_number_is_caught_and_fractions_are_shown_in_points(tmp_path):
    verdict = {"summary": {"REPRODUCED": 1}, "claims": [
        {"id": "rescale_shift_vs_baseline/resid_post/layer15", "claim": "(c) rescale-and-shift beats the baseline",
         "site": "resid_post", "layer": 15, "statistic": "", "value": 0.041832, "ci_low": 0.039343, "ci_high": 0.04485,
         "threshold": "> 0 pp", "paper": "", "status": "REPRODUCED", "percent_points": True, "seeds": 3,
         "seed_sd": 0.0023}]}
    (tmp_path / "reference").mkdir()
    (tmp_path / "reference" / "verdict.json").write_text(json.dumps(verdict))
    block = render_block(tmp_path / "reference" / "verdict.json", "claims")
    assert "+4.18 pp [+3.93, +4.49]" in block and "0.23 pp (3 seeds)" in block  # a fraction, ×100 in points
    brief = render_block(tmp_path / "reference" / "verdict.json", "claims-brief")  # the README's: same numbers
    assert "| (c) rescale-and-shift beats the baseline | Residual stream, L15 | +4.18 pp [+3.93, +4.49] | REPRODUCED |" in brief
    assert "seed SD" not in brief and "seed SD" in block
    head = "<!-- generated from reference/verdict.json (claims) by `python -m gatedsae render-docs`: do not edit -->\n"
    text = head + block + "<!-- end of generated block -->\n"
    assert render_text(text, tmp_path) == text
    edited = text.replace("+4.18 pp", "+0.04 pp")
    assert render_text(edited, tmp_path) != edited
    undecided = {**verdict["claims"][0], "status": "INCONCLUSIVE", "note": "undefined on 10% of resamples"}
    (tmp_path / "reference" / "verdict.json").write_text(json.dumps({**verdict, "claims": [undecided]}))
    assert "| INCONCLUSIVE: undefined on 10% of resamples |" in render_block(tmp_path / "reference" / "verdict.json", "claims")
    assert "undefined" not in render_block(tmp_path / "reference" / "verdict.json", "claims-brief")
    with pytest.raises(ValueError, match="unknown generated block kind"):
        render_block(tmp_path / "reference" / "verdict.json", "numbers")
    (tmp_path / "verdict_other.json").write_text(json.dumps({**verdict, "claims": [undecided]}))
    assert render_block(tmp_path / "verdict_other.json", "claims") == render_block(tmp_path / "reference" / "verdict.json", "claims")
    for wrong in ("comparisons.json", "verdictx.json", "verdict_other.csv"):  # another kind's file, or no separator
        with pytest.raises(ValueError, match="block reads a verdict.json"):
            render_block(tmp_path / wrong, "claims")


def test_the_summary_says_where_and_on_what_the_claims_were_read():
    from gatedsae.reporting.published import summary

    verdict = {"summary": {"REPRODUCED": 2, "NOT TESTED": 1}, "split": "test",
               "protocol": {"levels": {"resid_post": [0.97825, 0.9875], "mlp_out": [0.8752]}},
               "notes": {"sites": [{"site": "resid_post", "seeds": [0, 1, 2]}]}}
    (line,) = summary(verdict)
    assert line.startswith("3 claims: 2 REPRODUCED, 1 NOT TESTED. Read on the held-out split `test`, with 3 training seeds")
    assert "(Residual stream 97.825%, 98.75%)" in line  # the levels of the sites the run read, not every site's
    assert "Sites:" not in line  # a verdict without its sites' layers and windows
    verdict["notes"]["sites"][0] |= {"layer": 15, "ce_windows": 64.0}
    verdict["notes"]["sites"].append({"site": "attn_z", "layer": 3, "ce_windows": 768.0, "seeds": [0, 1, 2]})
    (line,) = summary(verdict)
    assert line.endswith("Sites: Residual stream at layer 15, 64 test windows; Attention output at layer 3, "
                         "768 test windows.")
    verdict["saes"] = [{"site": "attn_z", "last_step": 3200, "converged": True},
                       {"site": "resid_post", "last_step": 400, "converged": False},
                       {"site": "resid_post", "last_step": 400, "converged": True},
                       {"site": "attn_z", "last_step": 3200, "converged": None}]  # not assessed: not converged
    (line,) = summary(verdict)
    assert line.endswith("768 test windows. SAEs meeting the convergence rule: Residual stream 1 of 2 (400 steps); "
                         "Attention output 1 of 2 (3,200 steps).")  # in the order of the sites read
    (older,) = summary({"summary": {"REPRODUCED": 12, "INCONCLUSIVE": 3}})
    assert "predates the pre-registered protocol" in older


def test_the_quick_start_and_run_time_come_from_their_benchmarks():
    from gatedsae.reporting.published import quick_start, run_time

    record = {"code_version": "abc1234", "setup_exit_code": 0, "run_exit_code": 0, "setup_seconds": 285.2,
              "run_seconds": 456.0, "load_average_after": [12.6, 10.9, 6.1],
              "machine": {"cores": 2, "cpu": "Some CPU", "load_average": [0.4, 0.3, 0.2]},
              "progress_lines": ["19 jobs to run", "started cache (about 1:00): tail -f x.log", "[ 1/19   5%] a",
                                 "[ 2/19  10%] b", "[ 3/19  15%] c"]}
    text = "\n".join(quick_start(record))
    assert "**7.6 min** for `make run EXPERIMENT=smoke`, after 4.8 min" in text
    assert "0.4 at the start, 12.6 at the end" in text
    assert text.endswith("```\n19 jobs to run\n[ 1/19   5%] a\n[ 2/19  10%] b\n```")
    (failed,) = quick_start({**record, "run_exit_code": 2})
    assert "FAILED" in failed and "min" not in failed  # a failed run quotes no time
    replicate = {"machine": {"cpu": "2 cores"}, "wall_seconds": 4397.0, "setup_seconds": 104.0, "verdict": "15 claims",
                 "targets": {"headline_chapter_with_install_seconds": 2758.2},
                 "chapters": [{"name": "headline", "description": "", "wall_seconds": 2654.2},
                              {"name": "ablations", "description": "Fig. 8", "wall_seconds": 934.6}]}
    (line,) = run_time(replicate)
    assert "**73 min** for `make replicate`" in line and "**46 min** for the headline chapter" in line
    assert "then ablations 16 min." in line
    assert "at an earlier commit" in line and "at abc1234," in run_time({**replicate, "code_version": "abc1234 (x)"})[0]
    assert "resumed" not in line  # timed in one piece


def test_a_resumed_cold_runs_time_says_so_and_names_the_kinds_of_cpu_it_ran_on():
    from gatedsae.reporting.published import run_time

    amx = {"cpu": "Xeon", "cores": 2, "cpu_features": ["amx_bf16", "avx512_bf16", "avx512f"]}
    plain = {"cpu": "Xeon", "cores": 2, "cpu_features": ["avx512f"]}
    replicate = {"machine": {"cpu": "Xeon"}, "wall_seconds": 4397.0, "setup_seconds": 104.0, "verdict": "15 claims",
                 "targets": {"headline_chapter_with_install_seconds": 2758.2},
                 "chapters": [{"name": "headline", "description": "", "wall_seconds": 2654.2}],
                 "invocations": [{"machine": plain}, {"machine": plain}]}
    (line,) = run_time(replicate)
    assert "from a fresh clone (Xeon), killed and resumed: its 2 invocations' times summed: **73 min**" in line
    (mixed,) = run_time({**replicate, "invocations": [{"machine": None}, {"machine": plain}, {"machine": amx}]})
    assert ("its 3 invocations' times summed (on CPUs of different kinds: Xeon with amx_bf16, avx512_bf16, "
            "avx512f; Xeon with avx512f; 1 not recorded): ") in mixed


def test_an_experiments_own_run_time_sums_its_stages_over_chapters():
    from gatedsae.reporting.published import experiment_run_time

    record = {"experiment": "successors", "machine": {"cpus": 2}, "wall_seconds": 4020.0,
              "chapters": [{"name": "a", "wall_seconds": 3000.0, "stages": {"train_grid": 2400.0, "evaluate": 500.0,
                                                                          "tokenize": 11.0}},
                           {"name": "b", "wall_seconds": 1020.0, "stages": {"evaluate": 400.0, "verdict": 20.0}}]}
    (line,) = experiment_run_time(record)
    assert line == ("Run time of `python -m gatedsae replicate experiment=successors`: **67 min** on 2 CPU cores "
                    "(train_grid 40 min, evaluate 15 min; stages under a minute left out).")


def test_the_forecast_reads_the_default_as_configured_with_its_most_seeds():
    from gatedsae.reporting.published import forecast

    candidate = {"overrides": [], "seeds": 1, "seconds": {"total": 5000.0}}
    plan = {"budget_seconds": 7200, "candidates": [
        candidate, {**candidate, "seeds": 3, "seconds": {"total": 11838.0}},
        {**candidate, "overrides": ["experiment.sites=[resid_post]"], "seeds": 5, "seconds": {"total": 100.0}}]}
    (line,) = forecast(plan)
    assert "(3 training seeds per SAE) is predicted at **197 min**" in line and "over the 120 min budget" in line
    (fits,) = forecast({**plan, "candidates": plan["candidates"][:1]})
    assert "**83 min**" in fits and "within the 120 min budget" in fits
    # once the configuration as it is now has been timed, the block quotes the timing, not a prediction
    (timed,) = forecast({**plan, "calibrated_on": {"measured_seconds": 7500.0, "conf_unchanged_since": True}})
    assert "is the run timed above: **125 min**, over the 120 min budget" in timed and "predicted" not in timed


@pytest.mark.parametrize("local, slurm, says", [(400.0, 800.0, "Overhead per submitted job: 20.0 s"),
                                                 (495.0, 439.0, "not resolved by this record")])
def test_the_cluster_block_quotes_slurms_overhead_only_when_the_record_resolves_it(local, slurm, says):
    from gatedsae.reporting.published import cluster

    record = {"wall_s": {"local": local, "slurm": slurm}, "slurm_over_local": slurm / local,
              "overhead_per_job_s": (slurm - local) / 20, "jobs_local": 19, "jobs_submitted": 20,
              "queue_wait_s": {"median": 8.0, "max": 150.0}, "identical": True,
              "node": {"cpus": 2, "memory_mb": 24576}, "machine": {"load_average": [8.9, 8.4, 5.5]}}
    text = "\n".join(cluster(record))
    assert says in text and ("-2.8 s" not in text)


def test_the_convergence_block_gives_each_probed_sae_and_the_smallest_budget_meeting_the_rule(tmp_path):
    from gatedsae.reporting.probe_tables import convergence

    def sae(l0, reconstruction):
        return {"l0_change": l0, "reconstruction_change": reconstruction, "converged": max(l0, reconstruction) < 0.05,
                "curve": {"lr_last_part": [0.001, 0.001]}}

    measured = {"rule": {"metrics": ["l0", "reconstruction"], "max_relative_change": 0.05, "last_fraction": 0.25},
                "train": {"batch_size": 1024}, "sites": {
                    "resid_post/layer15": {"smallest_budget_meeting_rule": 800, "validation_ce_windows": 32, "budgets": [
                        {"steps": 400, "saes": {"gated": sae(0.02, 0.12)}},
                        {"steps": 800, "saes": {"gated": {**sae(0.01, 0.03), "validation": {
                            "l0": 41.26, "loss_recovered": 0.98123, "fvu": 0.21}, "training_rows": {"fvu": 0.2}}}}]},
                    "attn_z/layer1": {"smallest_budget_meeting_rule": None, "budgets": [
                        {"steps": 400, "saes": {"baseline": sae(0.2, 0.1)}}]}}}
    lines = convergence(measured)
    assert "| resid_post/layer15 | 400 | gated | 2.0% | 12.0% | no | 0.001 | — | — | — |" in lines
    assert "| resid_post/layer15 | 800 | gated | 1.0% | 3.0% | yes | 0.001 | 41.3 | 98.12% | 0.210, 0.200 (+5.0%) |" in lines
    rule_line = next(line for line in lines if line.startswith("Rule:"))
    assert "resid_post/layer15: 800 steps; attn_z/layer1: none of 400 steps" in rule_line
    train = load_config(["experiment=default"]).train
    own = "".join(f" ({short_label(site)} {tokens // 1024:,})" for site, tokens in train.site_tokens.items())
    assert f"The default trains {train.tokens // 1024} steps{own}." in rule_line
    assert lines[-1] == "Validation windows behind the loss recovered: resid_post/layer15: 32."


def test_learning_rate_probes_get_their_own_table_and_stay_out_of_the_budget_table():
    from gatedsae.reporting.probe_tables import convergence, learning_rates

    def sae(l0, reconstruction, lr, validation=None):
        return {"l0_change": l0, "reconstruction_change": reconstruction, "converged": max(l0, reconstruction) < 0.05,
                "curve": {"lr_last_part": [lr, lr]}, **({"validation": validation} if validation else {})}

    measured = {"rule": {"metrics": ["l0", "reconstruction"], "max_relative_change": 0.05, "last_fraction": 0.25},
                "train": {"batch_size": 1024}, "sites": {
                    "mlp_out/layer28": {"smallest_budget_meeting_rule": None, "budgets": [
                        {"steps": 800, "saes": {"gated": sae(0.02, 0.12, 0.001)}}]},
                    "resid_post/layer15 (clip, lr 0.004)": {
                        "lr": 0.004, "overrides": ["experiment=default", "train.max_grad_norm=1.0"], "validation_ce_windows": 64,
                        "smallest_budget_meeting_rule": None, "budgets": [{"steps": 400, "saes": {
                            "gated": sae(0.891, 5.75, 0.004, {"l0": 31.6, "loss_recovered": 0.54271, "fvu": 0.91724})}}]},
                    "mlp_out/layer28 (lr 0.002)": {"lr": 0.002, "smallest_budget_meeting_rule": None, "budgets": [
                        {"steps": 400, "saes": {"baseline": sae(0.01, 0.02, 0.002)}}]}}}
    table = learning_rates(measured)
    assert table[2:] == ["| resid_post/layer15 | 0.004 | 1.0 | 400 | gated | 89.1% | 575.0% | no | 31.6 | 54.27% | 0.917 |",
                         "| mlp_out/layer28 | 0.002 | none | 400 | baseline | 1.0% | 2.0% | yes | — | — | — |",
                         "", "Validation windows behind the readings: resid_post/layer15: 64."]
    budgets = convergence(measured)
    assert not any("lr 0.00" in line for line in budgets)
    assert "| mlp_out/layer28 | 800 | gated | 2.0% | 12.0% | no | 0.001 | — | — | — |" in budgets


def test_seed_probes_pair_each_clipped_seed_with_the_same_seed_unclipped_and_stay_out_of_the_other_tables():
    from gatedsae.reporting.probe_tables import convergence, learning_rates, seed_probes

    def sae(l0, fvu, converged=False):
        return {"l0_change": 0.1, "reconstruction_change": 0.1, "converged": converged, "curve": {"lr_last_part": [1e-3] * 2},
                "validation": {"l0": l0, "loss_recovered": 1 - fvu / 10, "fvu": fvu}}

    def probe(overrides, saes):
        return {"lr": 0.001, "seeds": 2, "overrides": ["experiment=default", *overrides], "validation_ce_windows": 64,
                "smallest_budget_meeting_rule": None, "budgets": [{"steps": 400, "saes": saes}]}

    measured = {"rule": {"metrics": ["l0", "reconstruction"], "max_relative_change": 0.05, "last_fraction": 0.25},
                "train": {"batch_size": 1024}, "sites": {
                    "resid_post/layer15 (seeds 2)": probe([], {
                        "gated_w2304_l1_0.03": sae(300.0, 0.14), "gated_w2304_l1_0.03_seed1": sae(310.0, 0.12)}),
                    "resid_post/layer15 (seeds 2, clip)": probe(["train.max_grad_norm=1.0"], {
                        "gated_w2304_l1_0.03_seed1": sae(296.0, 0.1, True), "gated_w2304_l1_0.03": sae(290.0, 0.11)})}}
    assert seed_probes(measured)[2:] == [
        "| resid_post/layer15 | 400 | gated_w2304_l1_0.03 | none | 0 of 2 | 305.0 (300.0–310.0) | 98.70% (98.60%–98.80%) "
        "| 0.130 (0.120–0.140) | — |",
        "| resid_post/layer15 | 400 | gated_w2304_l1_0.03 | 1.0 | 1 of 2 | 293.0 (290.0–296.0) | 98.95% (98.90%–99.00%) "
        "| 0.105 (0.100–0.110) | -0.030, -0.020 |",
        "", "Each cell: the mean over seeds (the range). Validation windows behind the readings: 64."]
    assert not any("gated_w2304" in line for line in learning_rates(measured) + convergence(measured))
    # a probe records its clip: a clipped default needs no override, an unclipped probe of it one of null
    measured["sites"]["resid_post/layer15 (seeds 2)"].update(max_grad_norm=None, overrides=["train.max_grad_norm=null"])
    measured["sites"]["resid_post/layer15 (seeds 2, clip)"].update(max_grad_norm=1.0, overrides=["experiment=default"])
    assert [line.split(" | ")[3] for line in seed_probes(measured)[2:4]] == ["none", "1.0"]


def test_the_published_runs_trained_the_saes_they_share_to_the_same_weights():
    """docs/successors.md says so: the baseline and Gated configurations the successors run shares with the
    default (same training key, another experiment's batched grid) came out with the same weights, and the
    two runs read the same numbers for them."""
    import pandas as pd

    default, successors = (pd.read_csv(REPO_ROOT / "reference" / name / "metrics.csv") for name in ("default", "successors"))
    shared = default.merge(successors, on=["site", "layer", "variant", "sae", "seed", "split"],
                           suffixes=("_default", "_successors"))
    assert len(shared) >= 8 and set(shared["arch_default"]) == {"baseline", "gated"}
    assert (shared["checkpoint_id_default"] == shared["checkpoint_id_successors"]).all()
    for column in ("l0", "loss_recovered", "gamma", "fvu"):
        assert (shared[f"{column}_default"] == shared[f"{column}_successors"]).all(), column


def test_the_site_layers_block_bolds_each_sites_rule_layer_and_gives_its_windows(tmp_path):
    """A 'site-layers' block: one row per probed layer, each site's rule layer in bold, and per site the
    layer, the level and the test windows the rule planned with (a site's own windows where it has them)."""
    def row(layer, cost, width):
        return {"layer": layer, "zero_ablation_cost": cost, "sd": 0.1, "windows": 16, "predicted_half_width": width,
                "windows_needed": 128 * (width / 0.01) ** 2}

    reading = {"anchor_layer": 2, "probe_windows": 16, "probe_split": "train",
               "rule": {"sites": ["attn_z", "mlp_out"], "max_half_width": 0.01, "noise_floor": 0.02},
               "sites": {"attn_z": {"layer": 1, "meets_rule": True, "level": 0.9095, "planned_windows": 64,
                                    "layers": [row(0, 2.0, 0.008), row(1, 3.5, 0.006)]},
                         "mlp_out": {"layer": 0, "meets_rule": False, "level": 0.87165, "planned_windows": 128,
                                     "layers": [row(0, 0.7, 0.012)]}}}
    source = tmp_path / "site_layers.json"
    source.write_text(json.dumps(reading))
    text = render_block(source, "site-layers")
    assert "| 1 | **3.500 (0.100)** | **0.60 pt** | — | — |" in text
    assert "| 0 | 2.000 (0.100) | 0.80 pt | **0.700 (0.100)** | **1.20 pt** |" in text
    assert "Attention output: layer 1 (meets the rule), read at 90.95% with 64 test windows" in text
    # a layer that misses the rule says how many windows it would need (128 × (1.2 / 1)² ≈ 184)
    assert ("MLP output: layer 0 (does not meet the rule), read at 87.165% with 128 test windows; it would meet "
            "the half-width at about 184 windows.") in text
    # with a reach margin the probe measured mean-ablation too: a column for the site that has it
    reading["rule"]["reach_margin"] = 0.02
    for row, recovered in zip(reading["sites"]["attn_z"]["layers"], (0.95, 0.80)):
        row |= {"mean_ablation_cost": (1 - recovered) * row["zero_ablation_cost"], "mean_ablation_recovered": recovered}
    source.write_text(json.dumps(reading))
    text = render_block(source, "site-layers")
    assert "| 1 | **3.500 (0.100)** | **0.60 pt** | **80.0%** | — | — |" in text
    assert "| 0 | 2.000 (0.100) | 0.80 pt | 95.0% | **0.700 (0.100)** | **1.20 pt** |" in text
    assert "at least 2 points less than the site's lowest level" in text


def test_docs_verdict_reads_the_clip_probes_as_the_file_holds_them():
    """docs/verdict.md (and conf/experiment/default.yaml's comment) say, of the probes with two seeds per
    SAE: at each site every seed reconstructs better clipped than the same seed unclipped (twelve pairs at
    the residual stream, 28 in all), the baselines' FVU falls by more than the Gated SAEs' at the same rank
    of λ, and every λ recovers more loss on average, but the attention output's sparsest Gated SAE."""
    import re
    from statistics import mean

    measured = json.loads((REPO_ROOT / "results" / "calibration" / "convergence.json").read_text())
    pairs = {}
    for site in ("resid_post", "mlp_out", "attn_z"):
        probes = {("clip" if any(o.startswith("train.max_grad_norm=") for o in entry["overrides"]) else "none"):
                  entry["budgets"][0]["saes"] for key, entry in measured["sites"].items()
                  if key.startswith(site) and entry.get("seeds") == 2}
        assert set(probes) == {"none", "clip"}, site
        fvu_drop = {}
        for name, clipped in probes["clip"].items():
            unclipped = probes["none"][name]
            assert clipped["validation"]["fvu"] < unclipped["validation"]["fvu"], name
            fvu_drop.setdefault(re.sub(r"_seed\d+$", "", name), []).append(
                unclipped["validation"]["fvu"] - clipped["validation"]["fvu"])
        pairs[site] = len(probes["clip"])
        sparsest_gated = max((spec for spec in fvu_drop if spec.startswith("gated_")),
                             key=lambda spec: float(spec.rsplit("_", 1)[1]))
        for spec in fvu_drop:
            recovered = {c: mean(s["validation"]["loss_recovered"] for n, s in probes[c].items()
                                 if re.sub(r"_seed\d+$", "", n) == spec) for c in probes}
            assert (recovered["clip"] > recovered["none"]) != (site == "attn_z" and spec == sparsest_gated), spec
        by_arch = {arch: [mean(fvu_drop[s]) for s in sorted(fvu_drop, key=lambda s: float(s.rsplit("_", 1)[1]))
                          if s.startswith(arch + "_")] for arch in ("gated", "baseline")}
        assert all(b > g for g, b in zip(by_arch["gated"], by_arch["baseline"])), (site, by_arch)
    assert pairs["resid_post"] == 12 and sum(pairs.values()) == 28
