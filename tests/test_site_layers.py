"""The rule that places a site at a layer (plan/site_layers.py) and the probe that applies it to a model
(scripts/probe_layers.py)."""

from __future__ import annotations

import json
import math
import runpy
import sys
from pathlib import Path

import pytest

from gatedsae.plan.config import load_config
from gatedsae.plan.site_layers import (LayerAblations, choose_layer, predicted_half_width, probe_order, reaches,
                                       windows_needed)


def test_predicted_half_width_by_hand():
    measured = LayerAblations(layer=3, cost=0.1, sd=0.05, windows=64)
    # z(97.5%) · √(ε² + 2 (1 − 0.9)² · 0.05²) / (√100 · 0.1)
    by_hand = 1.959964 * math.sqrt(0.02**2 + 2 * (0.1 * 0.05) ** 2) / (10 * 0.1)
    assert predicted_half_width(measured, 0.9, 100, noise_floor=0.02) == pytest.approx(by_hand)
    # without a floor, only the part that scales with the error: a zero-ablation twice as costly (same
    # relative spread) predicts the same; with it, half the half-width
    doubled = LayerAblations(3, 0.2, 0.1, 64)
    assert predicted_half_width(doubled, 0.9, 100, 0.0) == pytest.approx(predicted_half_width(measured, 0.9, 100, 0.0))
    with_floor = predicted_half_width(measured, 0.9, 100, 1.0)
    assert predicted_half_width(doubled, 0.9, 100, 1.0) == pytest.approx(with_floor / 2, rel=1e-3)
    # four times the windows halve it; the windows needed reach the target exactly
    halved = predicted_half_width(measured, 0.9, 100, 0.02) / 2
    assert predicted_half_width(measured, 0.9, 400, 0.02) == pytest.approx(halved)
    needed = windows_needed(measured, 0.9, 0.005, 0.02)
    assert predicted_half_width(measured, 0.9, needed, 0.02) == pytest.approx(0.005)
    assert predicted_half_width(LayerAblations(3, 0.0, 0.05, 64), 0.9, 100, 0.02) == math.inf


def test_the_rule_takes_the_nearest_layer_that_meets_it_deeper_on_a_tie():
    assert probe_order(6, 3) == [3, 4, 2, 5, 1, 0]
    weak, strong = dict(cost=0.05, sd=0.1, windows=64), dict(cost=1.0, sd=0.1, windows=64)
    measured = [LayerAblations(3, **weak), LayerAblations(4, **weak), LayerAblations(2, **strong), LayerAblations(0, **strong)]
    rule = dict(level=0.9, windows=64, max_half_width=0.01, noise_floor=0.02)
    assert choose_layer(measured, anchor=3, **rule) == (2, True)
    measured.append(LayerAblations(4, **strong))  # as near as 2 and deeper: it wins
    assert choose_layer(measured[1:], anchor=3, **rule) == (4, True)
    # none meets it: the layer with the smallest predicted half-width, said so
    assert choose_layer([LayerAblations(3, **weak), LayerAblations(1, cost=0.1, sd=0.1, windows=64)], 3,
                        **(rule | {"max_half_width": 1e-6})) == (1, False)


def test_with_a_reach_margin_the_rule_skips_a_layer_whose_frontier_cannot_reach_the_level():
    # mean-ablation recovers 1 − 0.09 / 1.0 = 91%: at a 90.95% level no SAE frontier gets below the level
    floor_at_level = LayerAblations(3, cost=1.0, sd=0.1, windows=64, mean_cost=0.09)
    below = LayerAblations(5, cost=1.0, sd=0.1, windows=64, mean_cost=0.5)  # recovers 50%
    assert floor_at_level.mean_ablation_recovered == pytest.approx(0.91)
    assert reaches(floor_at_level, 0.9095, None) and not reaches(floor_at_level, 0.9095, 0.02)
    assert reaches(below, 0.9095, 0.02) and not reaches(below, 0.51, 0.02)
    rule = dict(level=0.9095, windows=64, max_half_width=0.01, noise_floor=0.02)
    assert choose_layer([floor_at_level, below], anchor=3, **rule) == (3, True)  # no margin: the nearest
    assert choose_layer([floor_at_level, below], anchor=3, **rule, reach_margin=0.02) == (5, True)
    # no layer reaches it: the smallest predicted half-width, and the rule is not met
    noisy = LayerAblations(4, cost=0.5, sd=0.1, windows=64, mean_cost=0.01)
    assert choose_layer([floor_at_level, noisy], anchor=4, **rule, reach_margin=0.02) == (3, False)
    # a reach_margin needs the mean-ablation measured
    with pytest.raises(ValueError, match="mean-ablation"):
        reaches(LayerAblations(3, 1.0, 0.1, 64), 0.9, 0.02)


def test_the_probe_records_the_rule_applied_to_a_model(smoke_tokens, tmp_path, monkeypatch, one_thread):
    out = tmp_path / "site_layers.json"
    monkeypatch.setattr(sys, "argv", ["probe_layers.py", "--all", "--out", str(out), "experiment=smoke",
                                      f"paths.data={smoke_tokens.paths.root}", "verdict.layer_rule.probe_windows=8"])
    runpy.run_path("scripts/probe_layers.py", run_name="__main__")
    reading = json.loads(out.read_text())
    attention = reading["sites"]["attn_z"]
    assert reading["probe_split"] == "train" and reading["probe_windows"] == 8
    assert [row["layer"] for row in attention["layers"]] == list(range(smoke_tokens.model.n_layers))  # --all
    measured = [LayerAblations(row["layer"], row["zero_ablation_cost"], row["sd"], row["windows"])
                for row in attention["layers"]]
    assert all(m.windows == 8 and m.sd >= 0 for m in measured)
    expected = choose_layer(measured, smoke_tokens.experiment.layers[0], attention["level"],
                            attention["planned_windows"], attention["max_half_width"], attention["noise_floor"])
    assert (attention["layer"], attention["meets_rule"]) == expected

    # --sites probes one site again (here with its own test windows) and keeps the others' readings ...
    base = ["probe_layers.py", "--out", str(out), "--sites", "mlp_out", "experiment=smoke",
            f"paths.data={smoke_tokens.paths.root}", "verdict.layer_rule.probe_windows=8"]
    monkeypatch.setattr(sys, "argv", [*base, "evaluate.site_ce_windows={mlp_out: 32}"])
    runpy.run_path("scripts/probe_layers.py", run_name="__main__")
    again = json.loads(out.read_text())
    assert again["sites"]["attn_z"] == attention and again["sites"]["mlp_out"]["planned_windows"] == 32
    assert "--sites mlp_out" in again["sites"]["mlp_out"]["command"]
    # ... only when they were taken under the same rule
    monkeypatch.setattr(sys, "argv", [*base, "verdict.layer_rule.noise_floor=0.05"])
    with pytest.raises(SystemExit, match="taken with other rule"):
        runpy.run_path("scripts/probe_layers.py", run_name="__main__")


def test_the_committed_reading_follows_the_rule_in_conf():
    """results/calibration/site_layers.json holds the probe of the default experiment's model: its layer is
    the one conf/verdict's rule picks from its measurements at the planned number of windows (a change to
    the rule or to a site's test windows needs the probe re-run: `python scripts/probe_layers.py --all`)."""
    from gatedsae.plan.config import REPO_ROOT, load_config

    reading = json.loads((REPO_ROOT / "results" / "calibration" / "site_layers.json").read_text())
    config = load_config(["experiment=default"])
    rule = config.verdict.layer_rule
    assert reading["rule"] == {"sites": rule.sites, "max_half_width": rule.max_half_width,
                               "noise_floor": rule.noise_floor,
                               **({"reach_margin": rule.reach_margin} if rule.reach_margin is not None else {})}
    assert reading["probe_split"] == "train" and reading["anchor_layer"] == config.experiment.layers[0]
    for site in rule.sites:
        found = reading["sites"][site]
        assert config.experiment.layers_at(site) == [found["layer"]], "the default reads the site where the rule says"
        assert found["planned_windows"] == config.evaluate.windows_of("test", site)
        assert found["level"] == min(config.verdict.levels_at(site))
        measured = [LayerAblations(row["layer"], row["zero_ablation_cost"], row["sd"], row["windows"],
                                   row.get("mean_ablation_cost")) for row in found["layers"]]
        assert (found["layer"], found["meets_rule"]) == choose_layer(
            measured, reading["anchor_layer"], found["level"], found["planned_windows"], rule.max_half_width,
            rule.noise_floor, reading["confidence"], rule.reach_margin)


SITE_LAYERS = "experiment.site_layers={attn_z: [0]}"


def test_a_site_is_read_at_its_own_layer(tmp_path):
    from conftest import smoke_config

    from gatedsae.plan.config import ConfigError
    from gatedsae.plan.estimates import dag_jobs
    from gatedsae.plan.workflow import ExperimentPlan

    config = smoke_config(tmp_path, SITE_LAYERS)
    assert config.experiment.layers_at("attn_z") == [0] and config.experiment.layers_at("resid_post") == [1]
    assert set(config.activation_dirs()) == {("resid_post", 1), ("mlp_out", 1), ("attn_z", 0)}
    assert config.experiment.all_layers == [0, 1] and ("evaluate", "attn_z", 1) in dag_jobs(config)
    targets = ExperimentPlan("smoke", [f"paths.data={tmp_path}", SITE_LAYERS]).targets()
    assert any("/attn_z/layer0/" in t for t in targets) and not any("/attn_z/layer1/" in t for t in targets)
    assert any("/resid_post/layer1/" in t for t in targets)
    with pytest.raises(ConfigError, match="site_layers"):
        smoke_config(tmp_path, SITE_LAYERS, "cache.mode=stream")
    with pytest.raises(ConfigError, match="experiment.layers"):
        smoke_config(tmp_path, "experiment.site_layers={attn_z: [99]}")
    with pytest.raises(ConfigError, match="site_layers"):
        smoke_config(tmp_path, "experiment.site_layers={attention: [0]}")
    assert smoke_config(tmp_path, "experiment.sites=[resid_post]", SITE_LAYERS).activation_dirs().keys() == {
        ("resid_post", 1)}


def test_a_site_at_its_own_layer_is_cached_trained_and_evaluated_there(smoke_tokens, tiny_model, tmp_path, one_thread):
    from conftest import copy_token_data

    from gatedsae.activations.cache import cache_activations
    from gatedsae.evaluation.evaluate import evaluate_grid
    from gatedsae.training.stages import train_grid

    data = copy_token_data(smoke_tokens, tmp_path).paths.root
    config = load_config(["experiment=smoke", f"paths.data={data}", SITE_LAYERS, "sweep.rescale_shift=false"])
    cache_activations(config, loaded=tiny_model)
    train_grid(config, "attn_z", 0, progress=False)
    rows = json.loads(evaluate_grid(config, "attn_z", 0, progress=False, loaded=tiny_model).read_text())["rows"]
    assert rows and {row["layer"] for row in rows} == {0} and {row["site"] for row in rows} == {"attn_z"}
    assert all(json.loads((Path(row["checkpoint"]) / "training.json").read_text())["layer"] == 0 for row in rows)


def test_the_probe_measures_mean_ablation_when_the_rule_has_a_reach_margin(smoke_tokens, tiny_model, tmp_path,
                                                                           monkeypatch, one_thread):
    import numpy as np
    import torch

    from gatedsae.data.corpus import load_windows
    from gatedsae.plan.sites import hook_name

    probe = runpy.run_path("scripts/probe_layers.py", run_name="probe")
    model = tiny_model.model
    windows = load_windows(smoke_tokens.paths.tokens_dir(smoke_tokens.model.name, smoke_tokens.corpus.name), "train")[:8]
    passes = probe["clean_pass"](model, windows, 4)
    for site in ("attn_z", "mlp_out"):  # the mean over every position but BOS, from a partial forward
        _, cache = model.run_with_cache(torch.from_numpy(np.asarray(windows, dtype=np.int64)))
        activations = cache[hook_name(site, 1)][:, 1:]
        expected = activations.reshape(-1, *activations.shape[2:]).double().mean(0).float()
        assert torch.allclose(probe["site_mean"](model, passes, site, 1), expected, atol=1e-5)
    # one layer measured both ways
    measured = probe["measure_layer"](model, passes, "mlp_out", 1, with_mean=True)
    assert measured.mean_cost is not None and measured.windows == 8

    out = tmp_path / "site_layers.json"
    monkeypatch.setattr(sys, "argv", ["probe_layers.py", "--all", "--out", str(out), "--sites", "attn_z",
                                      "experiment=smoke", f"paths.data={smoke_tokens.paths.root}",
                                      "verdict.layer_rule.probe_windows=8", "verdict.layer_rule.sites=[attn_z]",
                                      "verdict.layer_rule.reach_margin=0.0"])
    runpy.run_path("scripts/probe_layers.py", run_name="__main__")
    reading = json.loads(out.read_text())
    assert reading["rule"]["reach_margin"] == 0.0
    attention = reading["sites"]["attn_z"]
    rows = attention["layers"]
    for row in rows:
        cost = row["zero_ablation_cost"]  # a random model's zero-ablation may even help: no loss to recover
        assert row["mean_ablation_recovered"] == (pytest.approx(1 - row["mean_ablation_cost"] / cost) if cost > 0
                                                  else -math.inf)
        assert row["reaches_level"] == (row["mean_ablation_recovered"] <= attention["level"])
    measured = [LayerAblations(row["layer"], row["zero_ablation_cost"], row["sd"], row["windows"],
                               row["mean_ablation_cost"]) for row in rows]
    assert (attention["layer"], attention["meets_rule"]) == choose_layer(
        measured, reading["anchor_layer"], attention["level"], attention["planned_windows"],
        attention["max_half_width"], attention["noise_floor"], reach_margin=0.0)
