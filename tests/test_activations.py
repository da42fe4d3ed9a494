"""The activation store: round trip, resume after a crash or a SIGKILL, corruption, and shuffled reading."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from conftest import copy_token_data, smoke_config

from gatedsae.activations.cache import cache_activations
from gatedsae.activations.store import ActivationStore, CorruptShardError, StoreWriter
from gatedsae.data.corpus import load_windows
from gatedsae.plan.config import ConfigError
from gatedsae.plan.sites import flatten, hook_name


@pytest.fixture
def cached(smoke_cache):
    return smoke_cache


def _store_bytes(config, split="train") -> dict:
    return {
        key: [p.read_bytes() for p in sorted((directory / split).glob("shard_*.npy"))]
        for key, directory in config.activation_dirs().items()
    }


def test_round_trip_equals_direct_forward_without_bos(cached, tiny_model):
    """Stored rows are the hook's activations, window by window, in order, with position 0 dropped."""
    windows = load_windows(cached.paths.tokens_dir("tiny", "tiny"), "train")
    n_windows = 8
    tokens = torch.from_numpy(np.asarray(windows[:n_windows], dtype=np.int64))
    assert (tokens[:, 0] == tiny_model.tokenizer.bos_token_id).all()
    _, cache = tiny_model.model.run_with_cache(tokens)
    for (site, layer), directory in cached.activation_dirs().items():
        store = ActivationStore(directory, "train")
        expected = flatten(site, cache[hook_name(site, layer)])[:, 1:].reshape(-1, store.d)
        stored = store.shard(0)[: len(expected)]
        assert stored.dtype == torch.float32
        torch.testing.assert_close(stored, expected, rtol=0, atol=0)
        assert store.manifest.d == cached.model.site_width(site)
        assert store.manifest.positions_per_window == cached.experiment.context_length - 1


def test_manifest_describes_the_store(cached):
    for (site, layer), directory in cached.activation_dirs().items():
        manifest = json.loads((directory / "manifest.json").read_text())
        assert manifest["complete"] and manifest["hook_name"] == hook_name(site, layer)
        store = ActivationStore(directory, "train")
        rows = torch.cat(list(store.tokens())).float()
        assert len(store) == len(rows) >= cached.cache.train_tokens
        assert np.allclose(manifest["mean"]["train"], rows.mean(0).numpy(), atol=1e-4)
        assert manifest["mean_sq_norm"]["train"] == pytest.approx(float((rows**2).sum(1).mean()), rel=1e-4)
        heldout = ActivationStore(directory, "heldout")
        assert len(heldout) >= cached.cache.heldout_tokens


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_low_precision_storage_round_trips_exactly(smoke_tokens, tiny_model, tmp_path, dtype, cached):
    config = copy_token_data(smoke_tokens, tmp_path)
    config.cache.dtype = dtype
    cache_activations(config, loaded=tiny_model)
    for key, directory in config.activation_dirs().items():
        low = ActivationStore(directory, "train").shard(0)
        full = ActivationStore(cached.activation_dirs()[key], "train").shard(0)
        assert low.dtype == getattr(torch, dtype)
        torch.testing.assert_close(low, full.to(low.dtype), rtol=0, atol=0)


def test_resume_after_a_crash_recomputes_nothing_finished(smoke_tokens, tiny_model, tmp_path, monkeypatch, cached):
    config = copy_token_data(smoke_tokens, tmp_path)
    real_write = StoreWriter.write_shard
    calls = {"n": 0}

    def crash_after_seven(self, *args, **kwargs):
        if calls["n"] == 7:  # two full shards for three stores, then one store of the third shard
            raise KeyboardInterrupt("simulated kill")
        calls["n"] += 1
        return real_write(self, *args, **kwargs)

    monkeypatch.setattr(StoreWriter, "write_shard", crash_after_seven)
    with pytest.raises(KeyboardInterrupt):
        cache_activations(config, loaded=tiny_model)
    monkeypatch.setattr(StoreWriter, "write_shard", real_write)
    finished = {p: p.stat().st_mtime_ns for p in tmp_path.glob("activations/**/shard_*.npy")}
    assert len(finished) == 7
    assert not list(tmp_path.glob("activations/**/manifest.json")), "an unfinished store must not look complete"

    written = []
    monkeypatch.setattr(StoreWriter, "write_shard",
                        lambda self, split, index, *a, **k: written.append((self.directory, split, index))
                        or real_write(self, split, index, *a, **k))
    cache_activations(config, loaded=tiny_model)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished, "finished shards were rewritten"
    assert len(written) == sum(s.n_shards for d in config.activation_dirs().values()
                               for s in (ActivationStore(d, "train"), ActivationStore(d, "heldout"))) - 7
    assert _store_bytes(config) == _store_bytes(cached)
    assert _store_bytes(config, "heldout") == _store_bytes(cached, "heldout")


@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(smoke_tokens, tmp_path):
    """A real `kill -9` of the cache CLI mid-run; the rerun finishes with byte-identical shards."""
    overrides = ["cache.train_tokens=6000"]
    killed = copy_token_data(smoke_tokens, tmp_path / "killed")
    command = [sys.executable, "-m", "gatedsae", "cache", "experiment=smoke", f"paths.data={killed.paths.root}",
               *overrides]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    journal = killed.activation_dirs()[("attn_z", 1)] / "progress.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if journal.exists() and len(json.loads(journal.read_text())["splits"]["train"]["shards"]) >= 2:
            os.killpg(process.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    subprocess.run(command, check=True, capture_output=True)

    reference = copy_token_data(smoke_tokens, tmp_path / "reference")
    subprocess.run([*command[:5], f"paths.data={reference.paths.root}", *overrides], check=True, capture_output=True)
    full = smoke_config(reference.paths.root, *overrides)
    assert _store_bytes(smoke_config(killed.paths.root, *overrides)) == _store_bytes(full)


def test_corrupted_shard_is_refused_by_name(smoke_tokens, tiny_model, tmp_path):
    config = copy_token_data(smoke_tokens, tmp_path)
    cache_activations(config, loaded=tiny_model)
    directory = config.activation_dirs()[("resid_post", 1)]
    shard = directory / "train" / "shard_00001.npy"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    store = ActivationStore(directory, "train")
    store.shard(0)  # untouched shards still read
    with pytest.raises(CorruptShardError, match="shard_00001.npy"):
        store.shard(1)
    with pytest.raises(CorruptShardError):
        list(store.batches(batch_size=16, seed=0))


def test_too_few_tokens_is_a_config_error_before_compute(smoke_tokens, tmp_path):
    config = copy_token_data(smoke_tokens, tmp_path)
    config.cache.train_tokens = 10**9
    with pytest.raises(ConfigError, match="cache.train_tokens"):
        cache_activations(config, loaded=object())  # a model is never touched
    assert not (tmp_path / "activations").exists()


def test_shuffled_batches_cover_every_row_once_and_depend_on_the_seed(cached):
    store = ActivationStore(cached.activation_dirs()[("resid_post", 1)], "train")
    every_row = torch.cat(list(store.tokens())).float()
    first = list(store.batches(batch_size=32, seed=1, buffer_rows=100))
    again = list(store.batches(batch_size=32, seed=1, buffer_rows=100))
    other = list(store.batches(batch_size=32, seed=2, buffer_rows=100))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])
    assert all(len(b) == 32 for b in first[:-1])
    seen = torch.cat(first)
    # Same multiset of rows: sort both by a fixed projection and compare.
    key = torch.randn(store.d, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[(seen @ key).argsort()], every_row[(every_row @ key).argsort()])
    # Rows of one batch come from more than one shard (the buffer mixes shards).
    per_shard = len(every_row) // store.n_shards
    shard_of = {tuple(r.tolist()): i // per_shard for i, r in enumerate(every_row)}
    assert len({shard_of[tuple(r.tolist())] for r in first[1]}) > 1


def test_outlier_rows_can_be_left_out_and_statistics_follow(cached):
    store = ActivationStore(cached.activation_dirs()[("resid_post", 1)], "train")
    everything = store.statistics(None)
    assert everything["excluded"] == 0 and everything["rows"] == len(store)
    ratio = 1.05  # far below any real threshold, so that many rows count as massive here
    stats = store.statistics(ratio)
    every_norm = torch.cat([store.shard(i).float().norm(dim=-1) for i in range(store.n_shards)])
    threshold = stats["massive_norm_threshold"]
    assert threshold == pytest.approx(ratio * float(every_norm.median()), rel=1e-6)  # one threshold for the split
    kept = [store.rows(i, threshold) for i in range(store.n_shards)]
    for index, rows in enumerate(kept):
        assert (rows.norm(dim=-1) <= threshold).all()
    rows = torch.cat(kept)
    assert 0 < len(rows) < len(store)
    assert stats["rows"] == len(rows) and stats["excluded"] == len(store) - len(rows)
    assert stats["mean_sq_norm"] == pytest.approx(float((rows.double() ** 2).sum(1).mean()), rel=1e-6)
    assert sum(len(b) for b in store.batches(16, seed=0, buffer_rows=64, max_norm=threshold)) == len(rows)
