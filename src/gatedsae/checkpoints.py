"""SAE checkpoints: one directory per SAE, in the layout sae-lens 6.x loads, plus a training record.

    <dir>/cfg.json                  sae-lens config (architecture, d_in, d_sae, dtype, metadata: model, hook, ...)
    <dir>/sae_weights.safetensors   sae-lens tensor names ([d_in, d_sae] encoders, [d_sae, d_in] decoder)
    <dir>/training.json             our record: spec, λ, lr, steps, tokens, seed, final losses, provenance

The activation scale used in training is folded into the weights, so an exported SAE works on the
model's raw activations (sae-lens' `normalize_activations: none`). Tied Gated SAEs (and the
rescale-and-shift baseline, which is one) load as sae-lens `gated`; the untied ablation has no sae-lens
equivalent and is saved under our own architecture name.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import sha256_file, write_json_atomic, write_text_atomic
from .config import REPO_ROOT
from .saes import BaselineSAE, BatchedSAE, load_slice_state, slice_state

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
RECORD_FILE = "training.json"

SAELENS_ARCHITECTURE = {
    "baseline": "standard",
    "gated": "gated",
    "gated_unfrozen_decoder": "gated",
    "gated_no_rmag": "gated",
    "baseline_rescale_shift": "gated",
    "gated_untied": "gated_untied",  # not loadable by sae-lens
}


def code_version() -> str:
    try:
        result = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO_ROOT,
                                capture_output=True, text=True, timeout=10)
        return result.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def saelens_tensors(sae: BatchedSAE, index: int, scale: float) -> dict[str, torch.Tensor]:
    """SAE `index` of a batched module as sae-lens tensors, for raw (unscaled) activations.

    Trained on s·x: pre-activations (s·x − b_dec) W + b = (x − b_dec/s)(s·W) + b, and x̂ = (f W_dec + b_dec)/s.
    """
    state = {k: v.detach().float().cpu() for k, v in slice_state(sae, index).items()}
    tensors = {"W_dec": state["W_dec"] / scale, "b_dec": state["b_dec"] / scale}
    if sae.arch == "baseline":
        tensors |= {"W_enc": state["W_enc"] * scale, "b_enc": state["b_enc"]}
    elif sae.arch == "baseline_rescale_shift":  # a tied Gated SAE with W_gate = W_enc, b_gate = b_enc
        tensors |= {"W_enc": state["W_enc"] * scale, "b_gate": state["b_enc"], "r_mag": state["r_mag"],
                    "b_mag": state["b_mag"]}
    else:
        tensors |= {"W_enc": state["W_gate"] * scale, "b_gate": state["b_gate"], "b_mag": state["b_mag"]}
        if sae.arch == "gated_untied":
            tensors["W_mag"] = state["W_mag"] * scale
        else:
            tensors["r_mag"] = state["r_mag"] if "r_mag" in state else torch.zeros_like(state["b_mag"])
    return {k: v.contiguous() for k, v in tensors.items()}


# The sae-lens release whose config format `saelens_cfg` writes (and the tests load with). A version
# >= 6 in `metadata` makes sae-lens read the file as a 6.x config, metadata included.
SAELENS_FORMAT_VERSION = "6.54.12"

# sae-lens 6.x metadata that its training runner fills and its tools read (HookedSAETransformer.add_sae
# and evals read hook_name; evals load model_name with model_from_pretrained_kwargs), at the values
# that describe how our SAEs were trained; `meta` fills in the model, hook, context and dataset.
SAELENS_METADATA_DEFAULTS = {
    "sae_lens_version": SAELENS_FORMAT_VERSION,
    "sae_lens_training_version": None,   # trained by gatedsae, not by sae-lens
    "model_class_name": "HookedTransformer",
    "hook_head_index": None,             # attn_z SAEs read every head (concatenated), not one
    "prepend_bos": True,                 # every context window starts with BOS ...
    "seqpos_slice": [1, None],           # ... which is left out of training and evaluation
    "exclude_special_tokens": False,     # every other position is kept (document separators included)
    "sequence_separator_token": "eos",   # documents are concatenated with EOS between them
    "disable_concat_sequences": False,
    "model_from_pretrained_kwargs": {},  # unprocessed weights: no LayerNorm folding, no centring
    "neuronpedia_id": None,
}


def model_weights(model) -> dict:
    """Which weights an SAE belongs to (its `model_name` is the pipeline's model, loaded by
    `gatedsae.hooked_sae.load_hooked_sae_transformer`): for an embedded model, the packaged GGUF
    dequantized, whose activations differ from those of the hub's original weights."""
    weights = {"source": model.source, "original": model.hub_id or None}
    if model.source == "package_gguf":
        weights |= {"gguf_file": model.gguf_file, "dequantized_to": "float32",
                    "packages": [f"{p.registry}:{p.name}=={p.version}" for p in model.packages]}
    return weights


def saelens_meta(config, site: str, layer: int) -> dict:
    """The metadata particular to one grid: model, hook, context, dataset (the rest is constant)."""
    from .sites import hook_name

    return {"model_name": config.model.name, "hook_name": hook_name(site, layer), "hook_layer": layer,
            "context_size": config.experiment.context_length, "dataset_path": config.corpus.name,
            "model_weights": model_weights(config.model)}


def saelens_cfg(arch: str, d: int, width: int, meta: dict) -> dict:
    """cfg.json as sae-lens 6.x writes it: the SAE config's fields, and `metadata` (see above)."""
    return {
        "architecture": SAELENS_ARCHITECTURE[arch],
        "d_in": d,
        "d_sae": width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if meta.get("hook_name", "").endswith("hook_z") else "none",
        "metadata": SAELENS_METADATA_DEFAULTS | meta,
    }


def upgrade_saelens_cfg(directory: Path, config) -> bool:
    """Rewrite an older checkpoint's cfg.json (written before `metadata`) in the current format, from its
    training record and `config`; the weights are untouched, so its identity and evaluation stand.
    Returns whether it was rewritten."""
    directory = Path(directory)
    cfg, record = json.loads((directory / CFG_FILE).read_text()), json.loads((directory / RECORD_FILE).read_text())
    meta = saelens_meta(config, record["site"], int(record["layer"]))
    upgraded = saelens_cfg(record["arch"], int(cfg["d_in"]), int(cfg["d_sae"]), meta)
    if upgraded == cfg:
        return False
    write_text_atomic(directory / CFG_FILE, json.dumps(upgraded, indent=2) + "\n")
    return True


def write_checkpoint(directory: Path, sae: BatchedSAE, index: int, scale: float, meta: dict, record: dict) -> Path:
    """Write one SAE's directory atomically (staged beside it, then renamed into place)."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(saelens_tensors(sae, index, scale), staging / WEIGHTS_FILE)
    (staging / CFG_FILE).write_text(json.dumps(saelens_cfg(sae.arch, sae.d, sae.width, meta), indent=2) + "\n")
    write_json_atomic(staging / RECORD_FILE, record)
    shutil.rmtree(directory, ignore_errors=True)
    staging.rename(directory)
    return directory


def read_checkpoint(directory: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(cfg, tensors, training record) of one checkpoint directory."""
    directory = Path(directory)
    cfg = json.loads((directory / CFG_FILE).read_text())
    record = json.loads((directory / RECORD_FILE).read_text())
    return cfg, load_file(directory / WEIGHTS_FILE), record


def encode_raw(cfg: dict, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Features of raw activations x [B, d] from a checkpoint's tensors (sae-lens semantics)."""
    centred = x - tensors["b_dec"]
    if cfg["architecture"] == "standard":
        return torch.relu(centred @ tensors["W_enc"] + tensors["b_enc"])
    gate = centred @ tensors["W_enc"] + tensors["b_gate"]
    if "W_mag" in tensors:
        magnitude = centred @ tensors["W_mag"] + tensors["b_mag"]
    else:
        magnitude = torch.exp(tensors["r_mag"]) * (centred @ tensors["W_enc"]) + tensors["b_mag"]
    return (gate > 0).to(x.dtype) * torch.relu(magnitude)


def decode_raw(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    return features @ tensors["W_dec"] + tensors["b_dec"]


def checkpoint_id(directory: str | Path) -> str:
    """A checkpoint's identity: the hash of its weights file (first 16 hex digits)."""
    return sha256_file(Path(directory) / WEIGHTS_FILE)[:16]


def baseline_from_checkpoints(directories: list[str | Path], seeds: list[int]) -> BaselineSAE:
    """Baseline checkpoints of one width stacked back into a batched module, in the scaled space they
    were trained in (the inverse of `saelens_tensors`)."""
    loaded = [read_checkpoint(Path(d)) for d in directories]
    widths = {cfg["d_sae"] for cfg, _, _ in loaded}
    if len(widths) != 1 or any(cfg["architecture"] != "standard" for cfg, _, _ in loaded):
        raise ValueError(f"baseline_from_checkpoints needs standard SAEs of one width, got {directories}")
    d, width = loaded[0][0]["d_in"], widths.pop()
    l1 = [record["l1"] for _, _, record in loaded]
    module = BaselineSAE(len(loaded), d, width, l1, seeds)
    for i, (_, tensors, record) in enumerate(loaded):
        scale = record["activation_scale"]
        load_slice_state(module, i, {"W_enc": tensors["W_enc"] / scale, "b_enc": tensors["b_enc"],
                                     "W_dec": tensors["W_dec"] * scale, "b_dec": tensors["b_dec"] * scale,
                                     "l1": torch.tensor(float(record["l1"]))})
    return module
