"""The paper's treatment of massive activations as a run of its own (sweep.all_tokens): the Gated and
baseline SAEs trained again on every non-BOS row, evaluated as such, with metrics rows of variant
`all_tokens`; planned by the workflow and the estimates."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from conftest import copy_data, smoke_config

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import ConfigError
from gatedsae.plan.grid import ALL_TOKENS_DIR, GRID_INDEX, grid_dir, grid_indexes, read_grid_index

SITE = "resid_post"
EVERY_TOKEN = ("sweep.all_tokens=true", f"sweep.all_tokens_sites=[{SITE}]")


def test_the_every_token_run_trains_gated_and_baseline_on_every_row_as_its_own_variant(smoke_cache, tiny_model,
                                                                                     tmp_path, one_thread):
    from gatedsae.evaluation.evaluate import evaluate_grid
    from gatedsae.training.stages import train_all_tokens, train_grid

    # a low ratio, so that the main sweep leaves rows out on the tiny model
    config = copy_data(smoke_cache, tmp_path, ("text", "tokens", "activations"), *EVERY_TOKEN,
                       "train.max_norm_ratio=1.2", "sweep.rescale_shift=false")
    train_grid(config, SITE, 1, progress=False)
    index = train_all_tokens(config, SITE, 1, progress=False)
    assert index == grid_dir(config, SITE, 1, ALL_TOKENS_DIR) / GRID_INDEX
    assert list(grid_indexes(config, SITE, 1)) == ["sweep", ALL_TOKENS_DIR]
    records = {variant: [json.loads((entry["path"] / "training.json").read_text()) for entry in read_grid_index(path)]
               for variant, path in grid_indexes(config, SITE, 1).items()}
    assert {r["arch"] for r in records[ALL_TOKENS_DIR]} == {PROPOSED, BASELINE}
    seeds = config.train.seeds  # every SAE trained with each seed, the every-token run's too
    assert len(records[ALL_TOKENS_DIR]) == sum(r["arch"] in (PROPOSED, BASELINE) for r in records["sweep"]) == 4 * seeds
    for record in records[ALL_TOKENS_DIR]:
        assert record["max_norm_ratio"] is None and record["massive_norm_threshold"] is None
        assert record["rows_excluded_as_outliers"] == 0
    assert all(r["max_norm_ratio"] == 1.2 and r["rows_excluded_as_outliers"] > 0 for r in records["sweep"])
    with pytest.raises(ConfigError, match="sweep.all_tokens"):
        train_all_tokens(config, "mlp_out", 1, progress=False)

    rows = json.loads(evaluate_grid(config, SITE, 1, progress=False, loaded=tiny_model).read_text())["rows"]
    splits = {row["split"] for row in rows}
    assert splits == {"validation", "test"}  # each SAE evaluated on each held-out split
    assert Counter(row["variant"] for row in rows) == {"sweep": 6 * seeds * 2, ALL_TOKENS_DIR: 4 * seeds * 2}
    every_token = [row for row in rows if row["variant"] == ALL_TOKENS_DIR]
    assert all(row["massive_norm_threshold"] is None and row["massive_rows"] == 0 for row in every_token)
    assert all(row["massive_rows"] > 0 for row in rows if row["variant"] == "sweep")
    assert not any(key.endswith("_all_tokens") for row in rows for key in row)  # no re-evaluation of the sweep


def test_the_every_token_run_is_planned_where_configured(tmp_path):
    from gatedsae.plan.estimates import _saes_per_grid, dag_jobs, rule_estimate
    from gatedsae.plan.workflow import ExperimentPlan

    plain = smoke_config(tmp_path)
    config = smoke_config(tmp_path, *EVERY_TOKEN)
    assert [config.sweep.all_tokens_at(site) for site in ("resid_post", "mlp_out", "attn_z")] == [True, False, False]
    assert ("train_all_tokens", SITE, 1) in dag_jobs(config) and not any(
        rule == "train_all_tokens" for rule, _, _ in dag_jobs(plain))
    assert _saes_per_grid(config, SITE) == _saes_per_grid(plain, SITE) + 4 * config.train.seeds
    assert rule_estimate(config, "train_all_tokens", SITE).job == f"train_all_tokens[{SITE}]"
    plan = ExperimentPlan("smoke", [f"paths.data={tmp_path}", *EVERY_TOKEN])
    every_token = [t for t in plan.stage_targets("train") if f"/{ALL_TOKENS_DIR}/" in t]
    assert len(every_token) == 1 and f"/{SITE}/" in every_token[0]
    # a chapter run keeps it only once a chapter up to it adds it
    chapters = "experiment.chapters=[{name: a, archs: [gated, baseline, gated_untied]}, {name: b, all_tokens: true}]"
    assert not smoke_config(tmp_path, *EVERY_TOKEN, chapters, "experiment.chapter=a").sweep.all_tokens
    assert smoke_config(tmp_path, *EVERY_TOKEN, chapters, "experiment.chapter=b").sweep.all_tokens


def test_an_every_token_run_without_gated_and_baseline_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="sweep.all_tokens"):
        smoke_config(tmp_path, "sweep.all_tokens=true", "sweep.all_tokens_sites=[resid_post]",
                     "sweep.rescale_shift=false", "sweep.groups=[{arch: gated, l1: [0.1]}]")


def test_the_every_token_run_trains_its_own_grid_where_one_is_given(tmp_path):
    from gatedsae.plan.estimates import _saes_per_grid
    from gatedsae.plan.grid import all_tokens_config

    own = "sweep.all_tokens_groups=[{arch: gated, l1: [0.01, 0.02, 0.04]}, {arch: baseline, l1: [0.001, 0.002]}]"
    plain = smoke_config(tmp_path, *EVERY_TOKEN)
    config = smoke_config(tmp_path, *EVERY_TOKEN, own)
    groups = all_tokens_config(config).sweep.groups_at(SITE)
    assert [(g.arch, g.l1) for g in groups] == [(PROPOSED, [0.01, 0.02, 0.04]), (BASELINE, [0.001, 0.002])]
    assert all_tokens_config(config).train.max_norm_ratio is None
    assert all_tokens_config(config).train.max_grad_norm is None
    clipped = smoke_config(tmp_path, *EVERY_TOKEN, own, "sweep.all_tokens_max_grad_norm=0.5")
    assert all_tokens_config(clipped).train.max_grad_norm == 0.5 and clipped.train.max_grad_norm is None
    assert config.sweep.groups == plain.sweep.groups  # the sweep itself is untouched
    assert _saes_per_grid(config, SITE) == _saes_per_grid(plain, SITE) + (5 - 4) * config.train.seeds
    with pytest.raises(ConfigError, match=r"sweep.all_tokens_groups.0.arch"):
        smoke_config(tmp_path, *EVERY_TOKEN, "sweep.all_tokens_groups=[{arch: gated_untied, l1: [0.1]}]")
    with pytest.raises(ConfigError, match="sweep.all_tokens"):  # its grid needs both
        smoke_config(tmp_path, *EVERY_TOKEN, "sweep.all_tokens_groups=[{arch: gated, l1: [0.1]}]")
