"""The cache stage: one LM forward per batch of context windows feeds every (site, layer) store of the
run; shards are written atomically and journaled, so a killed run resumes at the first shard some store
lacks. The store's format, its writer and its reader are in `store.py`."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from gatedsae.activations.store import FORMAT_VERSION, SplitRecord, StoreManifest, StoreWriter
from gatedsae.core.allocator import retain_freed_memory
from gatedsae.core.precision import Precision, choose, gated
from gatedsae.core.progress import progress_bar
from gatedsae.core.sealed import read_json
from gatedsae.data.lm_precision import float32_matrices, matmul_weights
from gatedsae.data.corpus import MANIFEST as TOKENS_MANIFEST
from gatedsae.data.corpus import load_windows
from gatedsae.plan.cache import plan_windows, windows_to_store
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.health import RETOKENIZE
from gatedsae.plan.identity import store_identity
from gatedsae.plan.layout import SPLITS
from gatedsae.plan.sites import flatten, hook_name

RERUN_MODEL = "Run the pipeline again (make run): prepare_model rewrites it (or `python -m gatedsae prepare-model …`)."


def token_windows(config: Config) -> tuple[dict, dict[str, np.ndarray], dict[str, int]]:
    """The tokenized windows of both splits, their manifest, and the windows to use per split; checks
    the context length and the token budgets before any compute."""
    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    manifest = read_json(tokens_dir / TOKENS_MANIFEST, RETOKENIZE)
    context = config.experiment.context_length
    if manifest["context_length"] != context:
        raise ConfigError(f"config key 'experiment.context_length': {context}, but the token windows in {tokens_dir} "
                          f"have length {manifest['context_length']}; re-run the tokenize step")
    windows = {split: load_windows(tokens_dir, split) for split in SPLITS}
    return manifest, windows, plan_windows(config, {split: len(w) for split, w in windows.items()})


def cache_activations(config: Config, loaded=None) -> list[Path]:
    """Cache every (site, layer) of the experiment in one pass per batch; resume where a run stopped."""
    from gatedsae.data.models import PREPARED_MARKER, load_model

    if config.cache.threads > 0:
        torch.set_num_threads(config.cache.threads)
    retain_freed_memory(config.resources.retain_freed_mib)
    tokens_manifest, windows, plan = token_windows(config)
    context = config.experiment.context_length
    from gatedsae.plan.estimates import cache_estimate
    from gatedsae.plan.preflight import available_memory, check_disk, check_memory

    estimate = cache_estimate(config)
    check_memory(estimate, config.cache.device, "lower cache.batch_sequences",
                 available_memory(config.cache.device, config))

    prepared = config.paths.model_dir(config.model.name) / PREPARED_MARKER
    provenance = read_json(prepared, RERUN_MODEL).get("provenance", {}) if prepared.exists() else {}
    identity = store_identity(config)
    writers: dict[tuple[str, int], StoreWriter] = {}
    for (site, layer), directory in config.activation_dirs().items():
        fresh = StoreManifest(
            format_version=FORMAT_VERSION, model=config.model.name, model_provenance=provenance, site=site,
            layer=layer, hook_name=hook_name(site, layer), d=config.model.site_width(site), dtype=config.cache.dtype,
            context_length=context, positions_per_window=context - 1, windows_per_shard=config.cache.shard_sequences,
            corpus=config.corpus.name, bos_token_id=tokens_manifest["bos_token_id"], seed=config.seed,
            config_hash=identity, outlier_norm_ratio=config.cache.outlier_norm_ratio,
            splits={split: SplitRecord() for split in SPLITS},
        )
        writers[(site, layer)] = StoreWriter.open(directory, fresh)
    written = sum((w.directory / r.file).stat().st_size  # the verified shards a resumed run keeps
                  for w in writers.values() for split in w.manifest.splits.values() for r in split.shards)
    check_disk(estimate, config.paths.root / "activations", written,
               "lower cache.train_tokens / cache.heldout_tokens, or point paths.data at a larger disk")

    loaded = loaded or load_model(config.model, config.paths, device=config.cache.device)
    plan = windows_to_store(config, plan)
    keys = list(writers)
    precision = cache_precision(config, loaded.model, windows["heldout"], keys)
    print(f"cache in {precision.dtype}: {precision.reason}", flush=True)
    recomputed = config.precision.cache_float32_positions if precision.bf16 else 0
    for writer in writers.values():  # and how many first positions a bf16 forward left to float32
        writer.record_precision({**precision.provenance(), "float32_positions": recomputed})
    per_shard = config.cache.shard_sequences
    with matmul_weights(loaded.model, precision):  # bf16 matrices once for every shard (under bf16)
        for split in SPLITS:
            first_shard = min(w.finished_shards(split) for w in writers.values())
            n_shards = plan[split] // per_shard
            bar = progress_bar(f"cache {split}", "tok", total=plan[split] * (context - 1),
                               initial=first_shard * per_shard * (context - 1), unit_scale=True)
            for shard in range(first_shard, n_shards):
                collected = shard_activations(loaded.model, windows[split], shard, config, keys, precision)
                bar.update(per_shard * (context - 1))
                for key, writer in writers.items():
                    if writer.finished_shards(split) == shard:  # a store may be ahead of the others after a crash
                        writer.write_shard(split, shard, collected[key], per_shard, config.cache.outlier_norm_ratio)
            bar.close()
    return [writer.close() for writer in writers.values()]


def shard_activations(model, windows: np.ndarray, shard: int, config: Config, keys: list[tuple[str, int]],
                      precision: Optional[Precision] = None) -> dict[tuple[str, int], torch.Tensor]:
    """The activations of one shard's windows at every (site, layer) in `keys`: [rows, d] each, float32,
    BOS dropped, on the CPU, the forward in `precision` (None: float32). The cache and the stream both call
    this, batch by batch in window order, so a streamed shard is the stored one."""
    per_shard, batch = config.cache.shard_sequences, config.cache.batch_sequences
    positions = config.precision.cache_float32_positions
    stop_at = max(layer for _, layer in keys) + 1
    shard_tokens = torch.from_numpy(np.asarray(windows[shard * per_shard : (shard + 1) * per_shard], dtype=np.int64))
    shard_tokens = shard_tokens.to(config.cache.device)
    collected: dict[tuple[str, int], list[torch.Tensor]] = {key: [] for key in keys}
    with matmul_weights(model, precision) if precision is not None else contextlib.nullcontext():
        # Under bf16, the float32 prefix of every window of the shard in one forward: a forward of a few
        # positions per batch would cost mostly a forward's fixed overhead.
        exact = float32_prefix(model, shard_tokens, keys, stop_at, precision, positions)
        for start in range(0, len(shard_tokens), batch):
            prefix = None if exact is None else {name: rows[start : start + batch] for name, rows in exact.items()}
            for key, activation in forward_at_sites(model, shard_tokens[start : start + batch], keys, stop_at,
                                                    precision, positions, prefix):
                collected[key].append(activation)
    return {key: torch.cat(parts) for key, parts in collected.items()}


@torch.inference_mode()
def forward_at_sites(model, tokens: torch.Tensor, keys, stop_at: int, precision: Optional[Precision] = None,
                     float32_positions: int = 0, prefix: Optional[dict[str, torch.Tensor]] = None,
                     ) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
    """One forward to `stop_at`, feeding every requested hook; yields [batch·(ctx−1), d] float32 per key,
    BOS dropped. Under bf16, the first `float32_positions` positions after BOS are then taken from a float32
    forward of that prefix alone (`float32_prefix`, or `prefix` when the caller computed it for these
    windows): attention is causal, so a prefix's activations do not depend on what follows it, and those
    few rows, of large norm, hold most of what a bf16 forward changes (conf/precision/)."""
    names = {hook_name(site, layer) for site, layer in keys}
    captured = _hooked(model, tokens, names, stop_at, precision)
    exact = prefix if prefix is not None else float32_prefix(model, tokens, keys, stop_at, precision, float32_positions)
    if exact is not None:
        end = next(iter(exact.values())).shape[1]
        captured = {name: torch.cat([exact[name].float(), captured[name][:, end:].float()], dim=1) for name in names}
    for site, layer in keys:
        activation = flatten(site, captured[hook_name(site, layer)])[:, 1:]
        yield (site, layer), activation.reshape(-1, activation.shape[-1]).float().cpu()


@torch.inference_mode()
def float32_prefix(model, tokens: torch.Tensor, keys, stop_at: int, precision: Optional[Precision],
                   positions: int) -> Optional[dict[str, torch.Tensor]]:
    """Under bf16 with `positions` > 0: each hook's activations from a float32 forward of every window's BOS
    and first `positions` positions (the float32 matrices swapped back in for it); None otherwise."""
    if precision is None or not precision.bf16 or positions <= 0:
        return None
    with float32_matrices(model):
        return _hooked(model, tokens[:, : positions + 1], {hook_name(site, layer) for site, layer in keys}, stop_at, None)


def _hooked(model, tokens: torch.Tensor, names: set[str], stop_at: int,
            precision: Optional[Precision]) -> dict[str, torch.Tensor]:
    """The activations at the hooks `names` of one forward of `tokens` to `stop_at`, in `precision`."""
    captured: dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook) -> None:
        captured[hook.name] = activation

    with contextlib.nullcontext() if precision is None else precision.autocast():
        model.run_with_hooks(tokens, stop_at_layer=stop_at, fwd_hooks=[(name, keep) for name in names])
    return captured


def cache_precision(config: Config, model, heldout: np.ndarray, keys: list[tuple[str, int]]) -> Precision:
    """The cache forward's precision: bf16 where the machine multiplies it natively (`core.precision`), if
    it passes the fidelity gate: on the first `precision.gate.windows` held-out windows, at every cached
    (site, layer), the relative RMS difference ||a_bf16 − a_fp32|| / ||a_fp32|| over the rows SAEs train
    on (norm at most cache.outlier_norm_ratio × the median: the massive activations are left out of
    training and kept clean in evaluation) is at most `precision.gate.activation_rel_error`. The error
    over all rows, massive ones included, is recorded beside it (`…_all_rows`, not gated)."""
    chosen = choose("cache", config.precision.cache, config.cache.device)
    gate = config.precision.gate
    stop_at = max(layer for _, layer in keys) + 1

    def activations(precision: Precision) -> dict[tuple[str, int], torch.Tensor]:
        tokens = torch.from_numpy(np.asarray(heldout[: gate.windows], dtype=np.int64)).to(config.cache.device)
        with matmul_weights(model, precision):
            return dict(forward_at_sites(model, tokens, keys, stop_at, precision, config.precision.cache_float32_positions))

    def measure() -> dict[str, float]:
        fp32 = activations(choose("cache", "float32", config.cache.device))
        bf16 = activations(choose("cache", "bfloat16", config.cache.device))
        return {f"{site}_layer{layer}_{name}": value for (site, layer), reference in fp32.items()
                for name, value in activation_difference(reference, bf16[(site, layer)],
                                                         config.cache.outlier_norm_ratio).items()}

    return gated(chosen, measure, {f"{site}_layer{layer}_rel_error": gate.activation_rel_error for site, layer in keys})


def activation_difference(reference: torch.Tensor, other: torch.Tensor, outlier_norm_ratio: float) -> dict[str, float]:
    """How far `other`'s rows lie from `reference`'s ([rows, d] each, the same rows): the relative RMS
    difference ||other − reference|| / ||reference|| over the rows SAEs train on (norm at most
    `outlier_norm_ratio` × the median; `rel_error`) and over all rows (`rel_error_all_rows`), and quantiles
    of each row's own relative difference (`row_rel_error_p50`, `_p99`, `_max`). The pooled figures weigh
    rows by their norm, and a bf16 forward's difference can sit mostly in a few rows of large norm: the row
    quantiles tell that apart from a difference spread over every row."""
    reference, other = reference.float(), other.float()
    norms = reference.norm(dim=-1)
    trained = norms <= outlier_norm_ratio * norms.median()
    difference = other - reference
    per_row = (difference.norm(dim=-1) / norms.clamp_min(torch.finfo(torch.float32).tiny))[trained]
    quantiles = torch.quantile(per_row.double(), torch.tensor([0.5, 0.99], dtype=torch.float64)) if len(per_row) \
        else torch.zeros(2, dtype=torch.float64)
    return {"rel_error": float(difference[trained].norm() / reference[trained].norm()),
            "rel_error_all_rows": float(difference.norm() / reference.norm()),
            "row_rel_error_p50": float(quantiles[0]), "row_rel_error_p99": float(quantiles[1]),
            "row_rel_error_max": float(per_row.max()) if len(per_row) else 0.0}

