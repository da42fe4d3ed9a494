"""The cache stage: one LM forward per batch of context windows feeds every (site, layer) store of the
run; shards are written atomically and journaled, so a killed run resumes at the first shard some store
lacks. The store's format and reader are in `store.py`."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from gatedsae.activations.store import (
    FORMAT_VERSION,
    NonFiniteActivationError,
    ShardRecord,
    SplitRecord,
    StoreManifest,
    _to_storage,
)
from gatedsae.core.atomic import atomic_path, sha256_file, write_json_atomic
from gatedsae.core.progress import progress_bar
from gatedsae.data.corpus import MANIFEST as TOKENS_MANIFEST
from gatedsae.data.corpus import load_windows
from gatedsae.plan.cache import plan_windows, windows_to_store
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.identity import store_identity
from gatedsae.plan.layout import MANIFEST, SPLITS
from gatedsae.plan.layout import STORE_PROGRESS as PROGRESS
from gatedsae.plan.sites import flatten, hook_name


def token_windows(config: Config) -> tuple[dict, dict[str, np.ndarray], dict[str, int]]:
    """The tokenized windows of both splits, their manifest, and the windows to use per split; checks
    the context length and the token budgets before any compute."""
    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    manifest = json.loads((tokens_dir / TOKENS_MANIFEST).read_text())
    context = config.experiment.context_length
    if manifest["context_length"] != context:
        raise ConfigError(f"config key 'experiment.context_length': {context}, but the token windows in {tokens_dir} "
                          f"have length {manifest['context_length']}; re-run the tokenize step")
    windows = {split: load_windows(tokens_dir, split) for split in SPLITS}
    return manifest, windows, plan_windows(config, {split: len(w) for split, w in windows.items()})


class _StoreWriter:
    """Writes one store's shards and journal; knows nothing about the model."""

    def __init__(self, directory: Path, manifest: StoreManifest):
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: Path, fresh: StoreManifest) -> "_StoreWriter":
        """Resume from the journal if it was written by the same settings, else start over. The finished
        shards are verified first (size, then sha256): the journal is cut at the first one that is
        missing or corrupt, so a rerun recomputes it and what follows."""
        journal = directory / PROGRESS
        if journal.exists():
            try:
                previous = StoreManifest.read(journal)
            except (OSError, ValueError, TypeError, KeyError) as error:
                print(f"{journal} is unreadable ({type(error).__name__}); caching this store from the start", flush=True)
            else:
                if previous.config_hash == fresh.config_hash and previous.format_version == FORMAT_VERSION:
                    writer = cls(directory, previous)
                    writer._keep_verified_shards()
                    return writer
        # Different settings (or no journal): nothing on disk can be reused.
        (directory / MANIFEST).unlink(missing_ok=True)
        for split in fresh.splits:
            shutil.rmtree(directory / split, ignore_errors=True)
        return cls(directory, fresh)

    def _keep_verified_shards(self) -> None:
        cut = False
        for name, split in self.manifest.splits.items():
            for index, record in enumerate(split.shards):
                problem = record.problem(self.directory)
                if problem is not None:
                    dropped = split.shards[index:]
                    print(f"{problem}: recomputing it and the {len(dropped) - 1} shards after it", flush=True)
                    split.shards = split.shards[:index]
                    split.windows = index * self.manifest.windows_per_shard
                    split.tokens = sum(r.rows for r in split.shards)
                    cut = True
                    break
        if cut:
            (self.directory / MANIFEST).unlink(missing_ok=True)  # the store is incomplete until repaired
            write_json_atomic(self.directory / PROGRESS, asdict(self.manifest))

    def finished_shards(self, split: str) -> int:
        return len(self.manifest.splits.setdefault(split, SplitRecord()).shards)

    def write_shard(self, split: str, index: int, rows: torch.Tensor, windows: int, outlier_ratio: float) -> None:
        name = f"{split}/shard_{index:05d}.npy"
        rows32 = rows.float()
        if not torch.isfinite(rows32).all():
            raise NonFiniteActivationError(f"non-finite activation in {self.directory / name}; the model or its dtype "
                                           "overflows here (try model.dtype=float32)")
        norms = rows32.norm(dim=-1)
        median = float(norms.median().clamp_min(1e-12))
        with atomic_path(self.directory / name) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, _to_storage(rows, self.manifest.dtype))
        record = ShardRecord(
            file=name, rows=len(rows), sha256=sha256_file(self.directory / name),
            bytes=(self.directory / name).stat().st_size,
            sum=rows32.sum(0).tolist(), sum_sq_norm=float((norms**2).sum()),
            outliers=int((norms > outlier_ratio * median).sum()), max_norm_ratio=float(norms.max()) / median,
        )
        split_record = self.manifest.splits[split]
        split_record.shards.append(record)
        split_record.windows += windows
        split_record.tokens += len(rows)
        write_json_atomic(self.directory / PROGRESS, asdict(self.manifest))

    def close(self) -> Path:
        self.manifest.finalize()
        write_json_atomic(self.directory / MANIFEST, asdict(self.manifest))
        return self.directory / MANIFEST



def cache_activations(config: Config, loaded=None) -> list[Path]:
    """Cache every (site, layer) of the experiment in one pass per batch; resume where a run stopped."""
    from gatedsae.data.models import PREPARED_MARKER, load_model

    if config.cache.threads > 0:
        torch.set_num_threads(config.cache.threads)
    tokens_manifest, windows, plan = token_windows(config)
    context = config.experiment.context_length
    from gatedsae.plan.estimates import cache_estimate
    from gatedsae.plan.preflight import available_memory, check_disk, check_memory

    estimate = cache_estimate(config)
    check_memory(estimate, config.cache.device, "lower cache.batch_sequences",
                 available_memory(config.cache.device, config))

    prepared = config.paths.model_dir(config.model.name) / PREPARED_MARKER
    provenance = json.loads(prepared.read_text()).get("provenance", {}) if prepared.exists() else {}
    identity = store_identity(config)
    writers: dict[tuple[str, int], _StoreWriter] = {}
    for (site, layer), directory in config.activation_dirs().items():
        fresh = StoreManifest(
            format_version=FORMAT_VERSION, model=config.model.name, model_provenance=provenance, site=site,
            layer=layer, hook_name=hook_name(site, layer), d=config.model.site_width(site), dtype=config.cache.dtype,
            context_length=context, positions_per_window=context - 1, windows_per_shard=config.cache.shard_sequences,
            corpus=config.corpus.name, bos_token_id=tokens_manifest["bos_token_id"], seed=config.seed,
            config_hash=identity, outlier_norm_ratio=config.cache.outlier_norm_ratio,
            splits={split: SplitRecord() for split in SPLITS},
        )
        writers[(site, layer)] = _StoreWriter.open(directory, fresh)
    written = sum((w.directory / r.file).stat().st_size  # the verified shards a resumed run keeps
                  for w in writers.values() for split in w.manifest.splits.values() for r in split.shards)
    check_disk(estimate, config.paths.root / "activations", written,
               "lower cache.train_tokens / cache.heldout_tokens, or point paths.data at a larger disk")

    loaded = loaded or load_model(config.model, config.paths, device=config.cache.device)
    plan = windows_to_store(config, plan)
    keys = list(writers)
    per_shard = config.cache.shard_sequences
    for split in SPLITS:
        first_shard = min(w.finished_shards(split) for w in writers.values())
        n_shards = plan[split] // per_shard
        bar = progress_bar(f"cache {split}", "tok", total=plan[split] * (context - 1),
                           initial=first_shard * per_shard * (context - 1), unit_scale=True)
        for shard in range(first_shard, n_shards):
            collected = shard_activations(loaded.model, windows[split], shard, config, keys)
            bar.update(per_shard * (context - 1))
            for key, writer in writers.items():
                if writer.finished_shards(split) == shard:  # a store may be ahead of the others after a crash
                    writer.write_shard(split, shard, collected[key], per_shard, config.cache.outlier_norm_ratio)
        bar.close()
    return [writer.close() for writer in writers.values()]


def shard_activations(model, windows: np.ndarray, shard: int, config: Config,
                      keys: list[tuple[str, int]]) -> dict[tuple[str, int], torch.Tensor]:
    """The activations of one shard's windows at every (site, layer) in `keys`: [rows, d] each, BOS
    dropped, on the CPU. The cache and the stream both call this, batch by batch in window order, so a
    streamed shard is the stored one."""
    per_shard, batch = config.cache.shard_sequences, config.cache.batch_sequences
    stop_at = max(layer for _, layer in keys) + 1
    collected: dict[tuple[str, int], list[torch.Tensor]] = {key: [] for key in keys}
    for start in range(shard * per_shard, (shard + 1) * per_shard, batch):
        tokens = torch.from_numpy(np.asarray(windows[start : start + batch], dtype=np.int64))
        for key, activation in _forward(model, tokens.to(config.cache.device), keys, stop_at):
            collected[key].append(activation)
    return {key: torch.cat(parts) for key, parts in collected.items()}


@torch.inference_mode()
def _forward(model, tokens: torch.Tensor, keys, stop_at: int) -> Iterator[tuple[tuple[str, int], torch.Tensor]]:
    """One forward to `stop_at`, feeding every requested hook; yields [batch·(ctx−1), d] per key, BOS dropped."""
    captured: dict[str, torch.Tensor] = {}

    def keep(activation: torch.Tensor, hook) -> None:
        captured[hook.name] = activation

    names = {hook_name(site, layer) for site, layer in keys}
    model.run_with_hooks(tokens, stop_at_layer=stop_at, fwd_hooks=[(name, keep) for name in names])
    for site, layer in keys:
        activation = flatten(site, captured[hook_name(site, layer)])[:, 1:]
        yield (site, layer), activation.reshape(-1, activation.shape[-1]).cpu()
