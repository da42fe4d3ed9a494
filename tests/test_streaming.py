"""Stream mode: training activations computed by the LM equal the stored ones, so the same trainer
gives the same SAEs (and so the same metrics) from either; the sites of a layer share each forward."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import copy_data, copy_token_data, smoke_config

from gatedsae.activations.cache import cache_activations
from gatedsae.activations.store import ActivationStore
from gatedsae.activations.stream import streamed_splits
from gatedsae.evaluation.evaluate import evaluate_checkpoint
from gatedsae.plan.config import REPO_ROOT
from gatedsae.plan.grid import read_grid_index
from gatedsae.saes.checkpoints import read_checkpoint
from gatedsae.training.stages import train_grid, train_layer
from gatedsae.training.trainer import GridTrainer

LAYER = 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_streamed_shards_are_the_stored_shards(smoke_tokens, tiny_model, tmp_path, dtype):
    stored_config = smoke_config(copy_token_data(smoke_tokens, tmp_path).paths.root, f"cache.dtype={dtype}")
    cache_activations(stored_config, loaded=tiny_model)
    sites = stored_config.experiment.sites
    streamed = streamed_splits(smoke_config(stored_config.paths.root, f"cache.dtype={dtype}", "cache.mode=stream"),
                               [(site, LAYER) for site in sites], loaded=tiny_model)
    stored = {site: ActivationStore(stored_config.paths.activations_dir("tiny", "tiny", site, LAYER), "train")
              for site in sites}
    n_shards = stored[sites[0]].n_shards
    for index in range(n_shards):  # shard by shard, every site: as trainers in lockstep read them
        for site in sites:
            ours, theirs = streamed[(site, LAYER)].shard(index), stored[site].shard(index)
            assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), f"{site} shard {index}"
    assert streamed[(sites[0], LAYER)].source.forwards == n_shards, "one forward per shard feeds every site"
    for site in sites:
        stream, store = streamed[(site, LAYER)], stored[site]
        assert (stream.n_shards, len(stream), stream.d, stream.identity) == \
            (store.n_shards, len(store), store.d, store.identity)
        ours, theirs = stream.statistics(50.0), store.statistics(50.0)
        assert ours["rows"] == theirs["rows"] and torch.equal(ours["mean"], theirs["mean"])
        assert stream.provenance()["precision"] == store.manifest.precision  # the forward's, as the cache records it


def test_stream_mode_trains_the_same_saes_as_the_cache(smoke_cache, smoke_tokens, tmp_path):
    streamed = smoke_config(copy_token_data(smoke_tokens, tmp_path / "stream").paths.root, "cache.mode=stream")
    indexes = train_layer(streamed, LAYER, progress=False)  # every site of the layer, in lockstep
    stored = copy_data(smoke_cache, tmp_path / "store", ("activations",))  # trained here: compared bit for bit
    for site, index in zip(streamed.experiment.sites, indexes):
        train_grid(stored, site, LAYER, progress=False)
        grid = read_grid_index(index)
        assert grid
        for entry in grid:
            cfg_s, from_stream, record_s = read_checkpoint(entry["path"])
            cfg_c, from_cache, record_c = read_checkpoint(
                stored.paths.checkpoints_dir("tiny", "tiny", site, LAYER, "smoke") / entry["sae"])
            for name in from_cache:
                assert torch.equal(from_stream[name], from_cache[name]), f"{site} {entry['sae']}.{name}"
            assert record_s["training_key"] == record_c["training_key"]
            assert (record_s["activation_store"]["source"], record_c["activation_store"]["source"]) == \
                ("streamed", "stored")
    # Same weights, so the same metrics: one SAE through the evaluation path (the held-out data of the cache).
    sae = read_grid_index(indexes[0])[0]
    mine = evaluate_checkpoint(smoke_cache, sae["path"])
    theirs = evaluate_checkpoint(smoke_cache, stored.paths.checkpoints_dir("tiny", "tiny", streamed.experiment.sites[0],
                                                                           LAYER, "smoke") / sae["sae"])
    for key in ("l0", "fvu", "gamma", "loss_recovered"):
        assert mine[key] == theirs[key]


def test_stream_mode_caches_only_the_heldout_split(smoke_tokens, tiny_model, tmp_path):
    config = smoke_config(copy_token_data(smoke_tokens, tmp_path).paths.root, "cache.mode=stream")
    cache_activations(config, loaded=tiny_model)
    directory = config.paths.activations_dir("tiny", "tiny", "resid_post", LAYER)
    assert len(ActivationStore(directory, "heldout")) > 0
    assert not (directory / "train").exists()
    with pytest.raises(ValueError, match="cache.mode=stream"):
        ActivationStore(directory, "train")


def test_stream_mode_dag_trains_each_layer_in_one_job(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--cores", "1", "--config", "experiment=smoke",
         f"overrides=paths.data={tmp_path} cache.mode=stream"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = [b for b in result.stdout.split("\n\n") if "rule train:" in b]
    assert len(jobs) == 1  # one job for the layer, not one per site
    assert all(f"{site}/layer1/smoke/grid.json" in jobs[0] for site in ("resid_post", "mlp_out", "attn_z"))


def test_a_streamed_run_resumes_without_recomputing_what_it_read(smoke_tokens, tiny_model, tmp_path):
    config = smoke_config(copy_token_data(smoke_tokens, tmp_path).paths.root, "cache.mode=stream")
    site = "resid_post"

    def trainer(out):
        split = streamed_splits(config, [(site, LAYER)], loaded=tiny_model)[(site, LAYER)]
        made = GridTrainer(config, split, tmp_path / out)
        return made, split.source, split.source.forwards  # forwards so far: the statistics pass

    whole, source, statistics = trainer("whole")
    whole.run(progress=False)
    whole_forwards = source.forwards - statistics
    stopped, source, statistics = trainer("resumed")
    stopped.run(progress=False, stop_after=2 * config.train.checkpoint_every_steps)  # state saved here
    before = source.forwards - statistics
    resumed, source, statistics = trainer("resumed")
    resumed.run(progress=False)
    after = source.forwards - statistics
    assert resumed.step == whole.step == config.train.steps
    assert before >= 5 and after <= whole_forwards - before + 2, "the resumed run must not recompute what it had read"
    for spec in whole.specs:
        for name, value in whole.modules[spec.group].named_parameters():
            assert torch.equal(value, dict(resumed.modules[spec.group].named_parameters())[name]), name
