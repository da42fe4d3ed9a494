"""scripts/probe_convergence.py: the training budget against verdict.convergence, on the smoke model: each
budget's SAEs trained and judged by the verdict's own rule from their curves, the smallest budget at
which all of them meet it, the validation split's metrics, and an earlier run's curves read as they are."""

from __future__ import annotations

import json
import runpy
import sys

import pandas as pd
import pytest
from conftest import copy_data

from gatedsae.plan.config import load_config
from gatedsae.reporting.convergence import assess
from gatedsae.training.curve_log import CURVES_FILE


def _probe(monkeypatch, *argv: str) -> None:
    monkeypatch.setattr(sys, "argv", ["probe_convergence.py", *argv])
    runpy.run_path("scripts/probe_convergence.py", run_name="__main__")


def test_each_budget_is_judged_by_the_verdicts_rule(smoke_cache, tmp_path, monkeypatch, one_thread):
    config = copy_data(smoke_cache, tmp_path / "data", ("text", "tokens", "activations"))
    out = tmp_path / "convergence.json"
    overrides = ["experiment=smoke", f"paths.data={config.paths.root}", "verdict.convergence.max_relative_change=0.3",
                 "evaluate.validation_ce_windows=1"]  # --ce-windows wins over the experiment's validation windows
    _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "16,48", "--ce-windows", "2",
           "--saes", "gated:2:0.01,baseline:3:0.01", "--out", str(out), *overrides)
    measured = json.loads(out.read_text())
    site = measured["sites"]["resid_post/layer1"]
    assert [b["steps"] for b in site["budgets"]] == [16, 48]
    rule = load_config(overrides).verdict.convergence
    for budget in site["budgets"]:
        folder = config.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, f"probe_resid_post_l1_{budget['steps']}")
        curves = pd.read_csv(folder / CURVES_FILE).assign(site="resid_post", layer=1, variant="main")
        assert int(curves["step"].max()) == budget["steps"]
        expected = assess(curves, rule).set_index("sae")
        assert set(budget["saes"]) == set(expected.index) and len(expected) == 2
        for name, sae in budget["saes"].items():
            assert sae["converged"] == bool(expected.loc[name, "converged"])
            assert sae["reconstruction_change"] == pytest.approx(expected.loc[name, "reconstruction_change"], abs=1e-4)
            assert 0 < sae["validation"]["l0"] and sae["validation"]["ce_clean"] > 0
            assert sae["validation"]["ce_windows"] == 2
        assert budget["all_converged"] == all(s["converged"] for s in budget["saes"].values())
    met = [b["steps"] for b in site["budgets"] if b["all_converged"]]
    assert site["smallest_budget_meeting_rule"] == (min(met) if met else None)

    # an earlier run's curves, read as they are: here the 48-step probe's, as if it were a published run's
    earlier = tmp_path / "curves.csv"
    folder = config.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, "probe_resid_post_l1_48")
    pd.read_csv(folder / CURVES_FILE).assign(model="tiny", site="resid_post", layer=1, variant="sweep").to_csv(earlier)
    _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "0", "--from-curves", str(earlier),
           "--out", str(out), *overrides)
    again = json.loads(out.read_text())["sites"]
    (read,) = again[f"resid_post/layer1 ({earlier})"]["budgets"]
    trained = site["budgets"][1]
    assert read["steps"] == 48 and {n: s["converged"] for n, s in read["saes"].items()} == {
        n: s["converged"] for n, s in trained["saes"].items()}
    assert again["resid_post/layer1"] == site  # the other entries are kept

    # one λ more: the grid trains only that SAE, its time adds to the budget's, the others read the same
    _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "16", "--ce-windows", "2",
           "--saes", "gated:2:0.01,baseline:3:0.01,baseline:3:0.02", "--out", str(out), *overrides)
    (grown, _) = json.loads(out.read_text())["sites"]["resid_post/layer1"]["budgets"]
    first = site["budgets"][0]
    assert [run["saes"] for run in grown["train_runs"]] == [2, 1]
    assert grown["train_runs"][0]["seconds"] == first["train_seconds"]
    assert grown["train_seconds"] == pytest.approx(sum(run["seconds"] for run in grown["train_runs"]), abs=0.1)
    assert set(grown["saes"]) == set(first["saes"]) | {"baseline_w96_l1_0.02"}
    for name, sae in first["saes"].items():
        assert grown["saes"][name]["validation"] == sae["validation"]


def test_a_learning_rate_probe_trains_at_that_rate_in_folders_of_its_own(smoke_cache, tmp_path, monkeypatch, one_thread):
    config = copy_data(smoke_cache, tmp_path / "data", ("text", "tokens", "activations"))
    out = tmp_path / "convergence.json"
    overrides = ["experiment=smoke", f"paths.data={config.paths.root}"]
    for lr in ("0.001", "0.004"):
        _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "24", "--lr", lr,
               "--saes", "gated:2:0.01,baseline:3:0.01", "--out", str(out), *overrides)
    sites = json.loads(out.read_text())["sites"]
    for lr in (0.001, 0.004):
        entry = sites[f"resid_post/layer1 (lr {lr:g})"]
        assert {group["lr"] for group in entry["groups"]} == {lr} and entry["lr"] == lr
        folder = config.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, f"probe_resid_post_l1_24_lr{lr:g}")
        curves = pd.read_csv(folder / CURVES_FILE)
        assert int(curves["step"].max()) == 24
        assert pd.to_numeric(curves["lr"]).max() == pytest.approx(lr)  # after the warm-up, the rate asked for
        (budget,) = entry["budgets"]
        assert all(sae["curve"]["lr_last_part"][1] == pytest.approx(lr) for sae in budget["saes"].values())

    with pytest.raises(SystemExit, match="positive learning rate"):
        _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "24", "--lr", "0",
               "--out", str(out), *overrides)


def test_a_seeds_probe_trains_each_sae_per_seed_in_one_group_and_a_clipped_one_in_folders_of_its_own(
        smoke_cache, tmp_path, monkeypatch, one_thread):
    config = copy_data(smoke_cache, tmp_path / "data", ("text", "tokens", "activations"))
    out = tmp_path / "convergence.json"
    for clip in ([], ["train.max_grad_norm=1.0"]):
        _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "24", "--seeds", "2",
               "--saes", "gated:2:0.01,gated:2:0.05", "--label", f"seeds{clip}", "--out", str(out),
               "experiment=smoke", f"paths.data={config.paths.root}", *clip)
    sites = json.loads(out.read_text())["sites"]
    for clip, tag in (([], ""), (["train.max_grad_norm=1.0"], "_clip1")):
        entry = sites[f"resid_post/layer1 (seeds{clip})"]
        (group,) = entry["groups"]  # one group: both λ, each with both seeds
        assert entry["seeds"] == 2 and (group["arch"], group["width_ratio"], group["l1"]) == ("gated", 2.0, [0.01, 0.05])
        assert entry["max_grad_norm"] == (1.0 if clip else None)  # recorded, whatever the experiment's default
        (budget,) = entry["budgets"]
        # the first seed's SAE is the one-seed probe's (no suffix), the others carry theirs
        assert sorted(budget["saes"]) == [f"gated_w64_l1_{v}{s}" for v in (0.01, 0.05) for s in ("", "_seed1")]
        folder = config.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, f"probe_resid_post_l1_24_seeds2{tag}")
        assert set(pd.read_csv(folder / CURVES_FILE)["sae"]) == set(budget["saes"])

    with pytest.raises(SystemExit, match="at least 1"):
        _probe(monkeypatch, "--site", "resid_post", "--layer", "1", "--budgets", "8", "--seeds", "0",
               "--out", str(out), "experiment=smoke", f"paths.data={config.paths.root}")
