"""Model loading: the tiny model's shape, hub models failing fast offline, and (integration) the hooked
embedded models computing the same logits as plain `transformers` on real text."""

from __future__ import annotations

import time

import pytest
import torch

from gatedsae.data.models import ModelUnavailableError, is_prepared, load_hf_reference, load_model, prepare_model
from gatedsae.plan.config import load_config


def test_tiny_model_matches_its_config(tiny_model):
    cfg, spec = tiny_model.model.cfg, tiny_model.config
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_vocab) == (
        spec.n_layers, spec.d_model, spec.n_heads, spec.d_head, spec.d_vocab)
    assert tiny_model.tokenizer.encode_batch(["hi"]) == [[104, 105]]


@pytest.mark.parametrize("experiment", ["paper_pythia_2.8b", "paper_gemma_7b"])
def test_hub_model_offline_fails_fast_with_instructions(experiment, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hf-home" / "hub"))
    config = load_config([f"experiment={experiment}", f"paths.data={tmp_path}"])
    started = time.time()
    with pytest.raises(ModelUnavailableError) as error:
        prepare_model(config.model, config.paths)
    assert time.time() - started < 10
    message = str(error.value)
    assert config.model.hub_id in message and "HF_HOME" in message and "huggingface-cli download" in message


REAL_TEXT = (
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, "
    "and nothing particular to interest me on shore, I thought I would sail about a little and see the watery "
    "part of the world."
)


@pytest.mark.integration
@pytest.mark.parametrize("experiment", ["default", "gemma3"])
def test_hooked_logits_match_transformers(experiment):
    """Unprocessed HookedTransformer vs the plain HF model on real prose (prepares the model if needed)."""
    config = load_config([f"experiment={experiment}"])
    if experiment != "default" and not is_prepared(config.paths.model_dir(config.model.name)):
        pytest.skip(f"{config.model.name} not prepared (run the {experiment} experiment to include it)")
    if not is_prepared(config.paths.model_dir(config.model.name)):
        prepare_model(config.model, config.paths)
    loaded = load_model(config.model, config.paths)
    reference = load_hf_reference(config.model, config.paths)
    ids = [loaded.tokenizer.bos_token_id] + loaded.tokenizer.encode_batch([REAL_TEXT])[0]
    tokens = torch.tensor([ids])
    with torch.inference_mode():
        hooked = loaded.model(tokens).float()
        plain = reference(tokens).logits.float()
    max_abs_diff = (hooked - plain).abs().max().item()
    print(f"{config.model.name}: max |logit diff| = {max_abs_diff:.2e} over {tokens.shape[1]} tokens")
    assert max_abs_diff < 1e-3
    assert (hooked.argmax(-1) == plain.argmax(-1)).float().mean() > 0.99
