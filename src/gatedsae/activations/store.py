"""The activation store, in one place: its format (manifest, shard records, storage dtypes), its writer
(`StoreWriter`, journaled and resumable) and its reader (`ActivationStore`: shuffled batches without
loading the store into memory). The cache stage that fills stores from the LM is `cache.py`.

Layout of one store (one model, corpus, site, layer):

    <store>/train/shard_00000.npy ...     [rows, d] in the declared dtype (bfloat16 kept as uint16 bits)
    <store>/heldout/shard_00000.npy ...
    <store>/progress.json                 the writer's journal: finished shards, their sha256 and stats
    <store>/manifest.json                 written once, when every shard is finished (the rule's output)

Every shard covers the same context windows in every store of a run, so one LM forward feeds them all,
and a killed run resumes at the first shard that some store lacks. The BOS position is never stored.

With `cache.mode: stream` only the held-out split is written; training computes the same shards on the
fly (`stream.py`) and reads them through the same `ShardedActivations` interface, so the shuffle,
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

from gatedsae.activations.shuffle import ShuffledBatches
from gatedsae.core.atomic import atomic_path, sha256_file, write_json_atomic
from gatedsae.core.errors import IntegrityError, PipelineError
from gatedsae.core.sealed import read_json
from gatedsae.plan.layout import MANIFEST
from gatedsae.plan.layout import STORE_PROGRESS as PROGRESS

FORMAT_VERSION = 1
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
          "Snakemake with --forcerun cache): it re-verifies every finished shard and recomputes only the "
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
    # The forward's precision and its fidelity gate (core.precision; provenance, not identity). A store
    # resumed in another precision lists every run's: {"dtype": "mixed", "runs": [...]}.
    precision: Optional[dict] = None

    @classmethod
    def from_json(cls, data: dict) -> "StoreManifest":
        splits = {
            name: SplitRecord(s["windows"], s["tokens"], [ShardRecord(**r) for r in s["shards"]])
            for name, s in data["splits"].items()
        }
        return cls(**{**data, "splits": splits})

    @classmethod
    def read(cls, path: Path) -> "StoreManifest":
        return cls.from_json(read_json(path, REPAIR))

    def finalize(self) -> None:
        self.complete = True
        self.mean, self.mean_sq_norm = {}, {}
        for name, split in self.splits.items():
            rows = max(split.tokens, 1)
            total = np.sum([r.sum for r in split.shards], axis=0) if split.shards else np.zeros(self.d)
            self.mean[name] = [float(v) / rows for v in total]
            self.mean_sq_norm[name] = sum(r.sum_sq_norm for r in split.shards) / rows


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


# ---------------------------------------------------------------------------------------------------
# Writing.


class StoreWriter:
    """Writes one store's shards and its journal (progress.json), then its manifest; knows nothing about
    the model."""

    def __init__(self, directory: Path, manifest: StoreManifest):
        self.directory = directory
        self.manifest = manifest

    @classmethod
    def open(cls, directory: Path, fresh: StoreManifest) -> "StoreWriter":
        """Resume from the journal if it was written by the same settings, else start over. The finished
        shards are verified first (size, then sha256): the journal is cut at the first one that is
        missing or corrupt, so a rerun recomputes it and what follows."""
        journal = directory / PROGRESS
        if journal.exists():
            try:
                previous = StoreManifest.read(journal)
            except (OSError, ValueError, TypeError, KeyError, IntegrityError) as error:
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

    def record_precision(self, precision: dict) -> None:
        """Record the precision the shards written from now on are computed in."""
        previous = self.manifest.precision
        has_shards = any(split.shards for split in self.manifest.splits.values())
        if previous is None or not has_shards:
            self.manifest.precision = precision
        else:
            runs = previous["runs"] if previous.get("dtype") == "mixed" else [previous]
            dtypes = {run["dtype"] for run in runs} | {precision["dtype"]}
            self.manifest.precision = precision if dtypes == {precision["dtype"]} else {"dtype": "mixed", "runs": [*runs, precision]}

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
        except IntegrityError:  # already names the file and the repair
            raise
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
