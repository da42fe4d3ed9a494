"""Our SAEs inside sae-lens: the pipeline's model as a `HookedSAETransformer`, with the very weights the
SAEs were trained on (for an embedded model: the packaged GGUF, dequantized; not the hub's weights).

    from sae_lens import SAE
    from gatedsae.saes.hooked import load_hooked_sae_transformer

    sae = SAE.load_from_disk("data/checkpoints/smollm2-135m/offline_prose/resid_post/layer15/default/gated_w2304_l1_0.05")
    model, tokenizer = load_hooked_sae_transformer(sae.cfg.metadata.model_name)
    model.add_sae(sae, exclude_special_tokens=[tokenizer.bos_token_id])   # BOS stays clean, as in training

sae-lens' activation store and evals on the same data: `ActivationsStore.from_sae(model, sae,
dataset=token_dataset(sae))` (the pipeline's held-out windows of the model and corpus the SAE names).
Importing this module also registers the untied Gated ablation (`gated_untied`) with sae-lens.
"""

from __future__ import annotations

from omegaconf import OmegaConf

from gatedsae.plan.config import CONF_DIR, ConfigError, ModelConfig, PathsConfig, dataclass_from
from gatedsae.saes.saelens import register_untied, token_dataset

__all__ = ["load_hooked_sae_transformer", "as_hooked_sae_transformer", "model_config", "token_dataset"]

try:
    register_untied()
except ImportError:  # sae-lens is not installed: nothing to register with
    pass


def model_config(name: str) -> ModelConfig:
    """conf/model/<name>.yaml, validated (the name an SAE's `metadata.model_name` holds)."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise ConfigError(f"no model config {path}; known models: {known}")
    config = dataclass_from(ModelConfig, OmegaConf.load(path))
    config.validate()
    return config


def as_hooked_sae_transformer(model):
    """A HookedTransformer's weights in a sae-lens HookedSAETransformer (same config and tokenizer)."""
    from sae_lens import HookedSAETransformer

    hooked = HookedSAETransformer(model.cfg, tokenizer=model.tokenizer, move_to_device=False)
    hooked.load_state_dict(model.state_dict())
    return hooked.to(model.cfg.device).eval().requires_grad_(False)


def load_hooked_sae_transformer(model_name: str, data: str = "data", device: str = "cpu"):
    """(HookedSAETransformer, tokenizer) of a prepared pipeline model (`prepare-model` first), unprocessed
    as in training: SAEs attach with `model.add_sae(sae)` and see the activations they were trained on."""
    from gatedsae.data.models import load_model

    loaded = load_model(model_config(model_name), PathsConfig(data=data), device)
    return as_hooked_sae_transformer(loaded.model), loaded.tokenizer
