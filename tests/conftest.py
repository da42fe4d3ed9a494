"""Shared fixtures: the smoke experiment (tiny random model, tiny in-repo corpus) in a temp data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from gatedsae.plan.config import Config, load_config


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (tiny matmuls, where threading only adds overhead)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def smoke_config(data_dir: Path, *overrides: str) -> Config:
    return load_config(["experiment=smoke", f"paths.data={data_dir}", *overrides])


@pytest.fixture(scope="session")
def smoke_tokens(tmp_path_factory) -> Config:
    """The smoke corpus fetched and tokenized once per session (read-only for tests)."""
    from gatedsae.data.corpus import fetch_corpus, tokenize_corpus

    config = smoke_config(tmp_path_factory.mktemp("smoke-data"))
    fetch_corpus(config.corpus, config.paths)
    tokenize_corpus(config)
    return config


@pytest.fixture(scope="session")
def tiny_model(smoke_tokens):
    from gatedsae.data.models import load_model

    return load_model(smoke_tokens.model, smoke_tokens.paths)


@pytest.fixture(scope="session")
def smoke_cache(smoke_tokens, tiny_model, tmp_path_factory) -> Config:
    """One uninterrupted cache run of the smoke experiment (float32 storage), read-only for tests."""
    from gatedsae.activations.cache import cache_activations

    config = copy_token_data(smoke_tokens, tmp_path_factory.mktemp("cached"))
    cache_activations(config, loaded=tiny_model)
    return config


def copy_data(source: Config, target_dir: Path, parts: tuple[str, ...], *overrides: str) -> Config:
    """A fresh data dir holding the `parts` of `source`'s (text, tokens, activations, checkpoints), and the
    smoke configuration pointing at it: a test writes there without touching a session fixture's data."""
    import shutil

    for part in parts:
        shutil.copytree(source.paths.root / part, Path(target_dir) / part)
    return smoke_config(target_dir, *overrides)


def copy_token_data(source: Config, target_dir: Path) -> Config:
    """A fresh data dir holding `source`'s text and tokens, so a test can cache into it."""
    return copy_data(source, target_dir, ("text", "tokens"))


SMOKE_SITES = ("resid_post", "mlp_out", "attn_z")
TRAINED = ("text", "tokens", "activations", "checkpoints")  # what `smoke_trained` holds


@pytest.fixture(scope="session")
def smoke_trained(smoke_cache, tmp_path_factory) -> Config:
    """The smoke sweep trained once per session at every site, with Fig. 9's rescale-and-shift on top:
    read-only for tests, which take a copy (`copy_data(smoke_trained, dir, TRAINED)`). A test that trains
    the same grid in its copy finds every SAE finished (same training keys) and trains nothing."""
    from gatedsae.training.stages import train_grid, train_rescale_shift

    config = copy_data(smoke_cache, tmp_path_factory.mktemp("trained"), ("text", "tokens", "activations"))
    for site in SMOKE_SITES:
        train_grid(config, site, 1, progress=False)
        train_rescale_shift(config, site, 1, progress=False)
    return config
