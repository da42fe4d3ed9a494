"""Bad configuration is rejected before any compute, with a message naming the key and the fix."""

from __future__ import annotations

import subprocess
import sys

import pytest

from gatedsae.plan.config import ConfigError, load_config

EXPERIMENTS = ["default", "gemma3", "smoke", "paper_pythia_2.8b", "paper_gemma_7b"]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes(experiment):
    config = load_config([f"experiment={experiment}"])
    assert config.experiment.name == experiment
    assert all(0 <= layer < config.model.n_layers for layer in config.experiment.layers)


def test_paper_experiments_use_the_papers_layers_and_contexts():
    pythia = load_config(["experiment=paper_pythia_2.8b"])
    gemma = load_config(["experiment=paper_gemma_7b"])
    assert pythia.experiment.layers == [4, 12, 16, 20, 28] and pythia.experiment.context_length == 2048
    assert gemma.experiment.layers == [6, 13, 20, 27] and gemma.experiment.context_length == 1024
    assert pythia.model.d_model == 2560 and gemma.model.d_model == 3072


@pytest.mark.parametrize(
    "override, named",
    [
        ("cache.dtype=int8", "cache.dtype"),
        ("cache.train_tokens=lots", "cache.train_tokens"),
        ("experiment.layers=[99]", "experiment.layers"),
        ("experiment.sites=[resid_pre]", "experiment.sites"),
        ("experiment.context_length=100000", "experiment.context_length"),
        ("corpus.heldout_fraction=0.01", "corpus.heldout_fraction"),
        ("cache.shard_sequences=10", "cache.shard_sequences"),
        ("cache.bogus_key=1", "cache.bogus_key"),
        ("model=no-such-model", "model/no-such-model"),
        ("cache.mode=disk", "cache.mode"),
        ("train.site_devices=[cpu]", "train.site_devices"),
        ("train.statistics_tokens=0", "train.statistics_tokens"),
        ("experiment.sites=[resid_post,resid_post]", "experiment.sites"),
        ("experiment.layers=[1,1]", "experiment.layers"),
        ("sweep.groups.0.sites=[mlp_out,mlp_out]", "sweep.groups.0.sites"),
        ("evaluate.device=tpu", "evaluate.device"),
        ("cache.device=gpu", "cache.device"),
        ("+train.site_devices=[cpu,cuda:x,cpu]", "train.site_devices.1"),
        ("model=null", "model is one of"),
        ("train.tokens=1000 train.tokens=2000", "given twice"),
        ("paths.data=", "paths.data"),
        ("resources.max_job_hours=0", "resources.max_job_hours"),
        ("verdict.levels={resid_post:[97.8]}", "verdict.levels.resid_post"),
        ("~verdict.levels.attn_z", "verdict.levels"),
        ("verdict.matched_l0={resid_post:[-1]}", "verdict.matched_l0.resid_post"),
        ("verdict.matched_l0={residual:[100]}", "verdict.matched_l0"),
        ("verdict.rescale_shift_gap_below=2", "verdict.rescale_shift_gap_below"),
        ("verdict.convergence.window=0.5", "verdict.convergence.window"),
        ("verdict.layer_rule.reach_margin=0.7", "verdict.layer_rule.reach_margin"),
        ("verdict.split=../test", "verdict.split"),
        ("sweep.groups=[{arch:gated,l1:[0.1],sites:[resid_post]},{arch:baseline,l1:[0.1],sites:[resid_post]}]",
         "no group of SAEs is trained at mlp_out"),
        ("train.max_grad_norm=0", "train.max_grad_norm"),
        ("train.site_tokens={attention:100000}", "train.site_tokens"),
        ("train.site_tokens={attn_z:10}", "train.site_tokens.attn_z"),
        ("sweep.all_tokens_max_grad_norm=-1", "sweep.all_tokens_max_grad_norm"),
    ],
)
def test_bad_config_names_the_key(override, named):
    with pytest.raises(ConfigError) as error:
        load_config(["experiment=smoke", *override.split()])
    assert named in str(error.value)


def test_the_same_override_twice_is_fine_and_paths_data_must_be_a_folder(tmp_path):
    assert load_config(["train.tokens=1000", "train.tokens=1000"]).train.tokens == 1000
    afile = tmp_path / "a-file"
    afile.write_text("")
    for data, named in ((afile, "is not a folder"), (afile / "below", "cannot be created")):
        with pytest.raises(ConfigError, match=f"paths.data.*{named}"):
            load_config([f"paths.data={data}"])
    assert load_config([f"paths.data={tmp_path / 'new' / 'folder'}"]).paths.root == tmp_path / "new" / "folder"


def test_the_verdicts_levels_follow_the_rule_written_beside_them():
    """conf/verdict: each site's levels are its paper rows' levels, the mean of each row's Gated and
    baseline loss recovered (as fractions)."""
    verdict = load_config([]).verdict
    assert set(verdict.levels) == {"resid_post", "mlp_out", "attn_z"}
    for site, levels in verdict.levels.items():
        rows = [row for row in verdict.paper_matched_l0 if row.site == site]
        assert levels == pytest.approx([(r.loss_recovered_gated + r.loss_recovered_baseline) / 200 for r in rows], abs=1e-12)


def test_cli_rejects_bad_config_before_compute(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gatedsae", "cache", "experiment=smoke", "cache.dtype=int8", f"paths.data={tmp_path}"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "cache.dtype" in result.stderr and "bfloat16" in result.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for a bad config"


def test_a_chapter_cuts_the_sweep_down_to_the_chapters_so_far():
    full = load_config(["experiment=default"])
    headline = load_config(["experiment=default", "experiment.chapter=headline"])
    assert {g.arch for g in headline.sweep.groups} == {"gated", "baseline"} and not headline.sweep.rescale_shift
    fig9 = load_config(["experiment=default", "experiment.chapter=rescale_shift"])
    assert fig9.sweep.groups == headline.sweep.groups and fig9.sweep.rescale_shift
    last = load_config(["experiment=default", f"experiment.chapter={full.experiment.chapters[-1].name}"])
    assert last.sweep == full.sweep, "the last chapter is the whole experiment"
    # The chapter itself reruns nothing: only the sweep it selects enters the jobs' params.
    from gatedsae.plan.identity import section_params

    assert section_params(last, "experiment", "sweep") == section_params(full, "experiment", "sweep")
    with pytest.raises(ConfigError, match="experiment.chapter"):
        load_config(["experiment=default", "experiment.chapter=nonsense"])


def test_every_sweep_group_belongs_to_a_chapter():
    with pytest.raises(ConfigError, match="experiment.chapters"):
        load_config(["experiment=default", "experiment.chapters=[{name: headline, archs: [gated]}]"])


@pytest.mark.parametrize("overrides, key", [
    (["experiment=default", "model.packages.0.registry=conda"], "model.packages.0.registry"),
    (["experiment=smoke", "+sweep.groups.0.k=[4]"], "sweep.groups.0.k"),  # Gated is swept over λ, not k
    (["experiment=successors", "sweep.groups.3.k=[0]"], "sweep.groups.3.k"),
    (["experiment=successors", "sweep.groups.3.k=[16,5000]"], "sweep.groups.3.k"),  # k above the width
    (["experiment=successors", "sweep.groups.3.k=[]"], "sweep.groups.3.k"),
])
def test_packages_and_knobs_are_checked_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=f"config key '{key}"):
        load_config(overrides)
