"""SAE checkpoints: one directory per SAE, in the layout sae-lens 6.x loads, plus a training record.

    <dir>/cfg.json                  sae-lens config (architecture, d_in, d_sae, dtype, metadata: model, hook, ...)
    <dir>/sae_weights.safetensors   sae-lens tensor names ([d_in, d_sae] encoders, [d_sae, d_in] decoder)
    <dir>/training.json             our record: spec, λ, lr, steps, tokens, seed, final losses, provenance,
                                    and the sha256 of the two files above, checked on every load

The activation scale used in training is folded into the weights, so an exported SAE works on the
model's raw activations (sae-lens' `normalize_activations: none`). Tied Gated SAEs (and the
rescale-and-shift baseline, which is one) load as sae-lens `gated`; the untied ablation has no sae-lens
equivalent and is saved under our own architecture name.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from gatedsae.core.atomic import atomic_directory, sha256_file, storage_errors, write_text_atomic
from gatedsae.core.errors import IntegrityError
from gatedsae.core.sealed import seal_problem, write_sealed_json
from gatedsae.plan.architectures import SAELENS_TENSORS, architecture, by_saelens, sae_class
from gatedsae.plan.layout import TRAINING_RECORD
from gatedsae.saes.base import BatchedSAE, load_slice_state
from gatedsae.saes.baseline import BaselineSAE

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
RECORD_FILE = TRAINING_RECORD
HASHES = "sha256"  # key of the training record holding {file name: sha256} of the weights and cfg.json

REPAIR = ("Retrain it by running its grid's training stage again with the same experiment and overrides "
          "(`python -m gatedsae train --site=S --layer=L …`, `rescale-shift` for a rescale_shift SAE, or Snakemake "
          "with --forcerun train rescale_shift): it retrains only the SAEs whose checkpoint is missing or corrupt.")


class CheckpointError(IntegrityError):
    """A checkpoint directory is incomplete or corrupt, or its cfg.json disagrees with its tensors; the
    message is the problem (naming the file), then how to repair it."""

    def __init__(self, problem: str):
        super().__init__(f"{problem} {REPAIR}")
        self.problem = problem

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
    `gatedsae.saes.hooked.load_hooked_sae_transformer`): for an embedded model, the packaged GGUF
    dequantized, whose activations differ from those of the hub's original weights."""
    weights = {"source": model.source, "original": model.hub_id or None}
    if model.source == "package_gguf":
        weights |= {"gguf_file": model.gguf_file, "dequantized_to": "float32",
                    "packages": [f"{p.registry}:{p.name}=={p.version}" for p in model.packages]}
    return weights


def saelens_meta(config, site: str, layer: int) -> dict:
    """The metadata particular to one grid: model, hook, context, dataset (the rest is constant)."""
    from gatedsae.plan.sites import hook_name

    return {"model_name": config.model.name, "hook_name": hook_name(site, layer), "hook_layer": layer,
            "context_size": config.experiment.context_length, "dataset_path": config.corpus.name,
            "model_weights": model_weights(config.model)}


def saelens_cfg(arch: str, d: int, width: int, meta: dict, extra: Optional[dict] = None) -> dict:
    """cfg.json as sae-lens 6.x writes it: the SAE config's fields (`extra`: the architecture's own, e.g.
    TopK's k), and `metadata` (see above)."""
    return {
        "architecture": architecture(arch).saelens,
        "d_in": d,
        "d_sae": width,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "hook_z" if meta.get("hook_name", "").endswith("hook_z") else "none",
        **(extra or {}),
        "metadata": SAELENS_METADATA_DEFAULTS | meta,
    }


def upgrade_saelens_cfg(directory: Path, config) -> bool:
    """Rewrite an older checkpoint's cfg.json (written before `metadata`) in the current format, from its
    training record and `config`; the weights are untouched, so its identity and evaluation stand.
    Returns whether it was rewritten."""
    directory = Path(directory)
    cfg, record = json.loads((directory / CFG_FILE).read_text()), json.loads((directory / RECORD_FILE).read_text())
    meta = saelens_meta(config, record["site"], int(record["layer"]))
    extra = {key: cfg[key] for key in architecture(record["arch"]).saelens_cfg_fields if key in cfg}
    upgraded = saelens_cfg(record["arch"], int(cfg["d_in"]), int(cfg["d_sae"]), meta, extra)
    if upgraded == cfg:
        return False
    write_text_atomic(directory / CFG_FILE, json.dumps(upgraded, indent=2) + "\n")
    if CFG_FILE in (record.get(HASHES) or {}):  # keep the recorded hash true to the rewritten file
        record[HASHES][CFG_FILE] = sha256_file(directory / CFG_FILE)
        write_sealed_json(directory / RECORD_FILE, record)
    return True


def write_checkpoint(directory: Path, sae: BatchedSAE, index: int, scale: float, meta: dict, record: dict) -> Path:
    """Write one SAE's directory atomically (staged beside it, then renamed into place); the record
    keeps the sha256 of the weights and cfg.json, which every load checks."""
    directory = Path(directory)
    with atomic_directory(directory, staging_name=directory.name + ".staging") as staging:
        with storage_errors(staging):
            save_file(sae.saelens_tensors(index, scale), staging / WEIGHTS_FILE)
            cfg = saelens_cfg(sae.arch, sae.d, sae.width, meta, sae.saelens_cfg_extra(index))
            (staging / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
        hashes = {name: sha256_file(staging / name) for name in (WEIGHTS_FILE, CFG_FILE)}
        write_sealed_json(staging / RECORD_FILE, {**record, HASHES: hashes})
    return directory


def read_checkpoint(directory: Path) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """(cfg, tensors, training record) of one checkpoint directory, verified (see `verify_checkpoint`);
    raises CheckpointError naming the file at fault."""
    directory = Path(directory)
    cfg, record = verify_checkpoint(directory, finite=False)
    try:
        tensors = load_file(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} cannot be read ({error}).") from None
    _check_finite(directory, tensors.items())
    return cfg, tensors, record


def verify_checkpoint(directory: Path, finite: bool = True) -> tuple[dict, dict]:
    """(cfg, training record) of a checkpoint whose files are all there, readable, unchanged since export
    (sha256 recorded in training.json) and consistent (cfg.json's architecture, d_in and d_sae against
    the tensors' names and shapes). Reads the weights once to hash them, never holds them all; with
    `finite`, a checkpoint that predates recorded hashes also has its values checked for NaN / inf."""
    directory = Path(directory)
    record = _read_json(directory / RECORD_FILE)
    cfg = _read_json(directory / CFG_FILE)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file() or weights.stat().st_size == 0:
        raise CheckpointError(f"{weights} is {'empty' if weights.is_file() else 'missing'}.")
    hashes = record.get(HASHES) or {}
    if not isinstance(hashes, dict):
        raise CheckpointError(f"{directory / RECORD_FILE}: '{HASHES}' is not a mapping of file names: it is corrupt.")
    for name, expected in ((n, hashes[n]) for n in (WEIGHTS_FILE, CFG_FILE) if n in hashes):
        if sha256_file(directory / name) != expected:
            raise CheckpointError(f"{directory / name} does not match the sha256 recorded in {directory / RECORD_FILE} "
                                  "when it was exported: it is corrupt or was changed.")
    shapes = _tensor_shapes(weights)
    _check_against_cfg(directory, cfg, shapes, record)
    if finite and not hashes:
        with safe_open(weights, framework="pt") as handle:
            _check_finite(directory, ((name, handle.get_tensor(name)) for name in shapes))
    return cfg, record


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete.") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error}): it is corrupt.") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a {type(data).__name__}, not a JSON object: it is corrupt.")
    problem = seal_problem(data)  # a training record's own sha256: an edited λ or a flipped bit is caught
    if problem is not None:
        raise CheckpointError(f"{path} {problem}.")
    return data


def _tensor_shapes(weights: Path) -> dict[str, tuple[int, ...]]:
    try:
        with safe_open(weights, framework="pt") as handle:
            return {name: tuple(handle.get_slice(name).get_shape()) for name in handle.keys()}
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"{weights} is not a readable safetensors file ({error}): it is truncated or "
                              "corrupt.") from None


def _check_against_cfg(directory: Path, cfg: dict, shapes: dict[str, tuple[int, ...]], record: dict) -> None:
    where = directory / CFG_FILE
    expected = SAELENS_TENSORS.get(cfg.get("architecture"))
    if expected is None:
        raise CheckpointError(f"{where}: unknown architecture {cfg.get('architecture')!r} (known: "
                              f"{', '.join(SAELENS_TENSORS)}).")
    sizes = {key: cfg.get(key) for key in ("d_in", "d_sae")}
    if not all(isinstance(v, int) and v > 0 for v in sizes.values()):
        raise CheckpointError(f"{where}: d_in and d_sae must be positive integers, got {sizes}.")
    missing = sorted(set(expected) - set(shapes))
    if missing:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} lacks the tensors {', '.join(missing)} that a "
                              f"{cfg['architecture']} SAE needs ({where}).")
    for name, dims in expected.items():
        want = tuple(sizes[dim] for dim in dims)
        if shapes[name] != want:
            raise CheckpointError(f"{directory / WEIGHTS_FILE}: tensor {name} has shape {list(shapes[name])} but "
                                  f"{where} (d_in {sizes['d_in']}, d_sae {sizes['d_sae']}) implies {list(want)}.")
    for key, cfg_key in (("d", "d_in"), ("width", "d_sae")):
        if key in record and record[key] != sizes[cfg_key]:
            raise CheckpointError(f"{where}: {cfg_key} = {sizes[cfg_key]} but {directory / RECORD_FILE} says {key} = "
                                  f"{record[key]}.")


def _check_finite(directory: Path, tensors) -> None:
    for name, tensor in tensors:
        if not torch.isfinite(tensor).all():
            raise CheckpointError(f"{directory / WEIGHTS_FILE}: tensor {name} holds NaN or inf values.")


def encode_raw(cfg: dict, tensors: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Features of raw activations x [B, d] from a checkpoint's tensors (sae-lens semantics)."""
    return sae_class(by_saelens(cfg["architecture"]).name).encode_saelens(cfg, tensors, x)


def decode_raw(tensors: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    return features @ tensors["W_dec"] + tensors["b_dec"]


def checkpoint_id(directory: str | Path) -> str:
    """A checkpoint's identity: the hash of its weights file (first 16 hex digits)."""
    return sha256_file(Path(directory) / WEIGHTS_FILE)[:16]


def baseline_from_checkpoints(directories: list[str | Path], seeds: list[int]) -> BaselineSAE:
    """Baseline checkpoints of one width stacked back into a batched module, in the scaled space they
    were trained in (the inverse of `BatchedSAE.saelens_tensors`)."""
    loaded = [read_checkpoint(Path(d)) for d in directories]
    widths = {cfg["d_sae"] for cfg, _, _ in loaded}
    if len(widths) != 1 or any(cfg["architecture"] != "standard" for cfg, _, _ in loaded):
        raise ValueError(f"baseline_from_checkpoints needs standard SAEs of one width, got {directories}")
    d, width = loaded[0][0]["d_in"], widths.pop()
    l1 = [record["l1"] for _, _, record in loaded]  # the baseline's knob: λ of its L1 penalty
    module = BaselineSAE(len(loaded), d, width, l1, seeds)
    for i, (_, tensors, record) in enumerate(loaded):
        scale = record["activation_scale"]
        load_slice_state(module, i, {"W_enc": tensors["W_enc"] / scale, "b_enc": tensors["b_enc"],
                                     "W_dec": tensors["W_dec"] * scale, "b_dec": tensors["b_dec"] * scale,
                                     "sparsity_coefficient": torch.tensor(float(record["l1"]))})
    return module
