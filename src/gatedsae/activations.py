"""Activation store: cache a model's activations at many (site, layer) points in one pass, and read
them back as shuffled batches without loading the store into memory.

Layout of one store (one model, corpus, site, layer):

    <store>/train/shard_00000.npy ...     [rows, d] in the declared dtype (bfloat16 kept as uint16 bits)
    <store>/heldout/shard_00000.npy ...
    <store>/progress.json                 the writer's journal: finished shards, their sha256 and stats
    <store>/manifest.json                 written once, when every shard is finished (the rule's output)

Every shard covers the same context windows in every store of a run, so one LM forward feeds them all,
and a killed run resumes at the first shard that some store lacks. The BOS position is never stored.

With `cache.mode: stream` only the held-out split is written; training computes the same shards on the
fly (`streaming.py`) and reads them through the same `ShardedActivations` interface, so the shuffle,
the outlier rule and the statistics are shared code.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from .atomic import atomic_path, sha256_file, write_json_atomic
from .config import Config, ConfigError, config_hash
from .errors import IntegrityError, PipelineError
from .corpus import MANIFEST as TOKENS_MANIFEST
from .corpus import SPLITS, load_windows
from .sites import flatten, hook_name

FORMAT_VERSION = 1
from .layout import MANIFEST
from .layout import STORE_PROGRESS as PROGRESS
STORAGE = {  # dtype name → (torch dtype, numpy dtype holding its bits)
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, np.uint16),
}


class CorruptShardError(IntegrityError):
    """A shard's bytes differ from the sha256 recorded in its store's manifest."""


class NonFiniteActivationError(PipelineError):
    pass


REPAIR = ("Run the cache step again with the same experiment and overrides (`python -m gatedsae cache …`, or "
          "Snakemake with --forcerun cache_activations): it re-verifies every finished shard and recomputes only the "
          "missing or corrupt ones.")


@dataclass
class ShardRecord:
    file: str
    rows: int
    sha256: str
    sum: list[float]          # per-dimension sum, for the mean
    sum_sq_norm: float        # Σ ||x||², for E||x||²
    outliers: int             # rows whose norm exceeds outlier_norm_ratio × the shard's median norm
    max_norm_ratio: float     # largest norm / median norm seen in the shard
    bytes: Optional[int] = None  # file size (None in stores written before it was recorded)

    def problem(self, directory: Path) -> Optional[str]:
        """Why the shard file does not hold what was recorded (missing, wrong size, wrong sha256), or None."""
        path = directory / self.file
        if not path.is_file():
            return f"{path} is missing"
        if self.bytes is not None and path.stat().st_size != self.bytes:
            return f"{path} has {path.stat().st_size} bytes, not the {self.bytes} recorded (truncated or changed)"
        if sha256_file(path) != self.sha256:
            return f"{path} does not match its recorded sha256 (corrupt or changed)"
        return None


@dataclass
class SplitRecord:
    windows: int = 0
    tokens: int = 0
    shards: list[ShardRecord] = field(default_factory=list)


@dataclass
class StoreManifest:
    """The contract every reader relies on; `complete` is True only in manifest.json."""

    format_version: int
    model: str
    model_provenance: dict
    site: str
    layer: int
    hook_name: str
    d: int
    dtype: str
    context_length: int
    positions_per_window: int  # context_length − 1: the BOS position is excluded
    windows_per_shard: int
    corpus: str
    bos_token_id: int
    seed: int
    config_hash: str
    outlier_norm_ratio: float
    splits: dict[str, SplitRecord]
    complete: bool = False
    mean: Optional[dict[str, list[float]]] = None
    mean_sq_norm: Optional[dict[str, float]] = None

    @classmethod
    def from_json(cls, data: dict) -> "StoreManifest":
        splits = {
            name: SplitRecord(s["windows"], s["tokens"], [ShardRecord(**r) for r in s["shards"]])
            for name, s in data["splits"].items()
        }
        return cls(**{**data, "splits": splits})

    @classmethod
    def read(cls, path: Path) -> "StoreManifest":
        return cls.from_json(json.loads(Path(path).read_text()))

    def finalize(self) -> None:
        self.complete = True
        self.mean, self.mean_sq_norm = {}, {}
        for name, split in self.splits.items():
            rows = max(split.tokens, 1)
            total = np.sum([r.sum for r in split.shards], axis=0) if split.shards else np.zeros(self.d)
            self.mean[name] = [float(v) / rows for v in total]
            self.mean_sq_norm[name] = sum(r.sum_sq_norm for r in split.shards) / rows


def cache_identity(config: Config) -> dict:
    """The settings whose change invalidates a store (token budgets only extend it)."""
    return {"model": asdict(config.model), "corpus": asdict(config.corpus), "seed": config.seed,
            "context_length": config.experiment.context_length, "dtype": config.cache.dtype,
            "shard_sequences": config.cache.shard_sequences}


# ---------------------------------------------------------------------------------------------------
# Writing.


def _windows_needed(tokens: int, positions: int, per_shard: int) -> int:
    return math.ceil(math.ceil(tokens / positions) / per_shard) * per_shard


def plan_windows(config: Config, available: dict[str, int]) -> dict[str, int]:
    """Windows to cache per split: the token budget rounded up to whole shards, checked before compute."""
    positions, per_shard = config.experiment.context_length - 1, config.cache.shard_sequences
    budgets = {"train": config.cache.train_tokens, "heldout": config.cache.heldout_tokens}
    plan = {}
    for split in SPLITS:
        needed = _windows_needed(budgets[split], positions, per_shard)
        if needed > available[split]:
            key = f"cache.{split}_tokens"
            raise ConfigError(
                f"config key '{key}': {budgets[split]:,} tokens need {needed:,} windows of {positions} tokens "
                f"(whole shards of {per_shard}), but the {split} split of corpus '{config.corpus.name}' has only "
                f"{available[split]:,}. Lower {key} or use a larger corpus."
            )
        plan[split] = needed
    return plan


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


def windows_to_store(config: Config, plan: dict[str, int]) -> dict[str, int]:
    """The windows the cache step writes: in stream mode the training split is computed by training."""
    return {split: 0 if split == "train" and config.cache.mode == "stream" else windows
            for split, windows in plan.items()}


def _to_storage(activations: torch.Tensor, dtype: str) -> np.ndarray:
    torch_dtype, numpy_dtype = STORAGE[dtype]
    converted = activations.to(torch_dtype).contiguous()
    if dtype == "bfloat16":  # numpy has no bfloat16: keep the bits
        converted = converted.view(torch.int16)
    return converted.numpy().view(numpy_dtype)


def as_stored(activations: torch.Tensor, dtype: str) -> torch.Tensor:
    """The activations exactly as a store would give them back (rounded to the storage dtype)."""
    return activations.to(STORAGE[dtype][0])


def _from_storage(array: np.ndarray, dtype: str) -> torch.Tensor:
    tensor = torch.from_numpy(np.array(array))  # a private copy: the shard file is memory-mapped read-only
    return tensor.view(torch.bfloat16) if dtype == "bfloat16" else tensor


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


def _progress(total: int, initial: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="tok", unit_scale=True, desc=description, smoothing=0.1)


def cache_activations(config: Config, loaded=None) -> list[Path]:
    """Cache every (site, layer) of the experiment in one pass per batch; resume where a run stopped."""
    from .models import PREPARED_MARKER, load_model

    if config.cache.threads > 0:
        torch.set_num_threads(config.cache.threads)
    tokens_manifest, windows, plan = token_windows(config)
    context = config.experiment.context_length
    from .resources import available_memory, cache_estimate, check_disk, check_memory

    estimate = cache_estimate(config)
    check_memory(estimate, config.cache.device, "lower cache.batch_sequences",
                 available_memory(config.cache.device, config))

    prepared = config.paths.model_dir(config.model.name) / PREPARED_MARKER
    provenance = json.loads(prepared.read_text()).get("provenance", {}) if prepared.exists() else {}
    identity = config_hash(cache_identity(config))
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
        bar = _progress(plan[split] * (context - 1), first_shard * per_shard * (context - 1), f"cache {split}")
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


# ---------------------------------------------------------------------------------------------------
# Reading.


def _without_massive(rows: torch.Tensor, max_norm: Optional[float]) -> torch.Tensor:
    """The rows whose norm is at most `max_norm` (None: every row)."""
    if max_norm is None:
        return rows
    return rows[rows.float().norm(dim=-1) <= max_norm]


class ShardedActivations:
    """The read side shared by a stored split and a streamed one: shards of rows, in a fixed window
    order, read through the same outlier rule, statistics and shuffle. Subclasses say where a shard's
    rows come from (`shard`) and what identifies them (`identity`, `provenance`)."""

    d: int
    site: str
    layer: int
    identity: str  # the hash of the settings that define the activations (the same for both modes)
    storage_dtype: torch.dtype  # rows are exact in it
    replay_is_cheap: bool = True  # False when reading a shard again means recomputing it

    @property
    def n_shards(self) -> int:
        raise NotImplementedError

    def __len__(self) -> int:
        raise NotImplementedError

    def shard(self, index: int) -> torch.Tensor:
        """Shard `index` as [rows, d] in the storage dtype."""
        raise NotImplementedError

    def provenance(self) -> dict:
        """Where the rows came from, for the training record of every checkpoint."""
        raise NotImplementedError

    def rows(self, index: int, max_norm: Optional[float] = None,
             dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        """Shard `index` in `dtype` (None: as stored); with `max_norm`, without the rows whose norm exceeds
        it (the massive activations, see `statistics`)."""
        rows = self.shard(index)
        return _without_massive(rows if dtype is None else rows.to(dtype), max_norm)

    def tokens(self, limit: Optional[int] = None, max_norm: Optional[float] = None) -> Iterator[torch.Tensor]:
        """Every (kept) row in stored order, shard by shard (for evaluation), at most `limit` rows."""
        remaining = len(self) if limit is None else limit
        for index in range(self.n_shards):
            if remaining <= 0:
                return
            rows = self.rows(index, max_norm, dtype=None)[:remaining]
            remaining -= len(rows)
            yield rows

    def statistics_shards(self, tokens: Optional[int]) -> int:
        """How many leading shards hold `tokens` rows (None: all of them)."""
        if tokens is None or not self.n_shards:
            return self.n_shards
        per_shard = len(self) / self.n_shards
        return min(self.n_shards, max(1, math.ceil(tokens / per_shard)))

    def median_norm(self, tokens: Optional[int] = None) -> float:
        """The median row norm over the first shards holding `tokens` rows (None: the whole split)."""
        norms = [self.rows(index).norm(dim=-1) for index in range(self.statistics_shards(tokens))]
        return float(torch.cat(norms).median())

    def statistics(self, max_norm_ratio: Optional[float] = None, tokens: Optional[int] = None) -> dict:
        """Mean, E||x||² and row counts over the first shards holding `tokens` rows (None: the whole split).

        With `max_norm_ratio`, rows whose norm exceeds that multiple of the median norm are *massive
        activations* (e.g. the attention-sink token after BOS): the threshold, in raw units, is returned as
        `massive_norm_threshold` and those rows are left out of the statistics. Training, the held-out
        metrics and the spliced evaluation all treat rows above this one threshold like BOS."""
        threshold = None if max_norm_ratio is None else max_norm_ratio * self.median_norm(tokens)
        total, sum_sq, rows, seen = torch.zeros(self.d, dtype=torch.float64), 0.0, 0, 0
        for index in range(self.statistics_shards(tokens)):
            shard = self.rows(index)
            kept = _without_massive(shard, threshold).double()
            total += kept.sum(0)
            sum_sq += float((kept**2).sum())
            rows, seen = rows + len(kept), seen + len(shard)
        return {"mean": (total / rows).float(), "mean_sq_norm": sum_sq / rows, "rows": rows,
                "excluded": seen - rows, "massive_norm_threshold": threshold}

    def batches(self, batch_size: int, seed: int, buffer_rows: int = 1 << 18,
                dtype: torch.dtype = torch.float32, max_norm: Optional[float] = None) -> "ShuffledBatches":
        """One epoch of shuffled batches (see `ShuffledBatches`)."""
        return ShuffledBatches(self, batch_size, seed, buffer_rows, dtype, max_norm)


class ShuffledBatches:
    """One epoch of shuffled batches: shards in a seeded order flow through a mixing buffer.

    The buffer is filled to `buffer_rows`, permuted, and its first half is emitted while the rest
    stays to mix with the next shards, so rows from different shards meet in one batch while memory
    stays bounded by the buffer. The tail is emitted at the end (the last batch may be short). With
    `max_norm`, massive rows are left out (see `ShardedActivations.rows`).

    Its whole position (shard order, shards consumed, buffer, rows due, generator) is a `state_dict`,
    so a resumed run can continue without re-reading (or, streamed, recomputing) what came before.
    """

    def __init__(self, split: ShardedActivations, batch_size: int, seed: int, buffer_rows: int,
                 dtype: torch.dtype = torch.float32, max_norm: Optional[float] = None):
        self.split, self.batch_size, self.buffer_rows = split, batch_size, buffer_rows
        self.dtype, self.max_norm = dtype, max_norm
        self.generator = torch.Generator().manual_seed(seed)
        self.order = torch.randperm(split.n_shards, generator=self.generator).tolist()
        self.position = 0  # shards of `order` read so far
        self.buffer = torch.empty(0, split.d, dtype=dtype)
        self.due = torch.empty(0, split.d, dtype=dtype)  # permuted rows being emitted, batch by batch
        self.tail_emitted = False

    def __iter__(self) -> "ShuffledBatches":
        return self

    def __next__(self) -> torch.Tensor:
        while not len(self.due):
            if not self._refill():
                raise StopIteration
        batch, self.due = self.due[: self.batch_size], self.due[self.batch_size :]
        return batch

    def _refill(self) -> bool:
        """Make rows due: half of a full buffer, else read the next shard, else the whole tail."""
        if len(self.buffer) >= self.buffer_rows:
            self.buffer = self.buffer[torch.randperm(len(self.buffer), generator=self.generator)]
            emit = (len(self.buffer) // 2 // self.batch_size) * self.batch_size or self.batch_size
            self.due, self.buffer = self.buffer[:emit], self.buffer[emit:]
            return True
        if self.position < len(self.order):
            rows = self.split.rows(self.order[self.position], self.max_norm, self.dtype)
            self.buffer, self.position = torch.cat([self.buffer, rows]), self.position + 1
            return True
        if not self.tail_emitted:
            self.due = self.buffer[torch.randperm(len(self.buffer), generator=self.generator)]
            self.buffer, self.tail_emitted = self.buffer[:0], True
            return True
        return False

    def state_dict(self, storage: Optional[torch.dtype] = None) -> dict:
        """The position in the epoch; rows kept in `storage` (e.g. the split's storage dtype, exact)."""
        def rows(t: torch.Tensor) -> torch.Tensor:
            return (t if storage is None else t.to(storage)).clone()

        return {"order": self.order, "position": self.position, "buffer": rows(self.buffer), "due": rows(self.due),
                "tail_emitted": self.tail_emitted, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.order, self.position, self.tail_emitted = list(state["order"]), state["position"], state["tail_emitted"]
        self.buffer, self.due = state["buffer"].to(self.dtype), state["due"].to(self.dtype)
        self.generator.set_state(state["generator"])


class ActivationStore(ShardedActivations):
    """A stored split: memory-mapped shards, verified against the manifest's sha256."""

    def __init__(self, directory: str | Path, split: str = "train", verify: bool = True):
        self.directory = Path(directory)
        manifest_path = self.directory / MANIFEST
        if not manifest_path.exists():
            raise FileNotFoundError(f"{manifest_path} does not exist: the store is missing or its caching run did not "
                                    "finish (re-run the cache step; it resumes)")
        try:
            self.manifest = StoreManifest.read(manifest_path)
        except (OSError, ValueError, TypeError, KeyError) as error:
            raise IntegrityError(f"{manifest_path} is unreadable ({type(error).__name__}: {error}). {REPAIR}") from None
        if split not in self.manifest.splits:
            raise ValueError(f"split {split!r} not in {manifest_path}; splits: {list(self.manifest.splits)}")
        if not self.manifest.splits[split].shards:
            raise ValueError(f"split {split!r} of {self.directory} holds no shards: it was cached with "
                             "cache.mode=stream, which stores only the held-out split (train with the same mode)")
        self.split = split
        self.records = self.manifest.splits[split].shards
        self.verify = verify
        self._verified: set[int] = set()
        self.d, self.site, self.layer = self.manifest.d, self.manifest.site, self.manifest.layer
        self.identity = self.manifest.config_hash
        self.storage_dtype = STORAGE[self.manifest.dtype][0]

    def __len__(self) -> int:
        return self.manifest.splits[self.split].tokens

    @property
    def n_shards(self) -> int:
        return len(self.records)

    def provenance(self) -> dict:
        return {"source": "stored", "path": str(self.directory), "config_hash": self.identity,
                "shard_sha256": [r.sha256 for r in self.records]}

    def shard(self, index: int) -> torch.Tensor:
        """The whole shard as a tensor in its storage dtype (read from disk, hash checked once)."""
        record = self.records[index]
        path = self.directory / record.file
        if self.verify and index not in self._verified:
            problem = record.problem(self.directory)
            if problem is not None:
                raise CorruptShardError(f"shard {problem}, against {self.directory / MANIFEST}. {REPAIR}")
            self._verified.add(index)
        return _from_storage(np.load(path, mmap_mode="r"), self.manifest.dtype)

    def statistics(self, max_norm_ratio: Optional[float] = None, tokens: Optional[int] = None) -> dict:
        """As `ShardedActivations.statistics`; over the whole split without outlier exclusion the
        manifest's figures are returned and nothing is read."""
        if max_norm_ratio is None and tokens is None:
            return {"mean": torch.tensor(self.manifest.mean[self.split]), "rows": len(self), "excluded": 0,
                    "mean_sq_norm": self.manifest.mean_sq_norm[self.split], "massive_norm_threshold": None}
        return super().statistics(max_norm_ratio, tokens)
