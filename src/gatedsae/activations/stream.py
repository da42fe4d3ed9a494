"""Stream mode (`cache.mode: stream`): training activations computed by the LM as training reads them.

A streamed split has the shards a stored one would have (the same windows, batched the same way,
rounded to the storage dtype), so `ShardedActivations` shuffles, filters and summarises it with the
same code and a grid trained from it is the grid trained from the cache. One `ShardSource` serves every
(site, layer) of a training job: a shard is computed by one forward that fills all of them, and the
last few shards are kept so the sites' trainers, running in lockstep, share it.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch

from gatedsae.activations.cache import cache_precision, shard_activations, token_windows
from gatedsae.activations.store import STORAGE, ShardedActivations, as_stored
from gatedsae.plan.config import Config
from gatedsae.plan.identity import store_identity

Key = tuple[str, int]  # (site, layer)


class ShardSource:
    """Training shards of `keys`, computed on demand by the LM (loaded here unless `loaded` is given)."""

    def __init__(self, config: Config, keys: list[Key], loaded=None):
        from gatedsae.data.models import load_model

        _, windows, plan = token_windows(config)
        heldout = windows["heldout"]
        self.n_shards = plan["train"] // config.cache.shard_sequences
        self.windows: np.ndarray = windows["train"]
        self.config, self.keys = config, list(keys)
        self.tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
        self.rows_per_shard = config.cache.shard_sequences * (config.experiment.context_length - 1)
        self.loaded = loaded or load_model(config.model, config.paths, device=config.cache.device)
        self.precision = cache_precision(config, self.loaded.model, heldout, self.keys)  # as the cache would
        self.forwards = 0  # shards computed, including recomputations after eviction
        self._kept: OrderedDict[int, dict[Key, torch.Tensor]] = OrderedDict()

    def shard(self, key: Key, index: int) -> torch.Tensor:
        if index not in self._kept:
            activations = shard_activations(self.loaded.model, self.windows, index, self.config, self.keys,
                                            self.precision)
            self._kept[index] = {k: as_stored(v, self.config.cache.dtype) for k, v in activations.items()}
            self.forwards += 1
            while len(self._kept) > self.config.cache.stream_keep_shards:
                self._kept.popitem(last=False)
        self._kept.move_to_end(index)
        return self._kept[index][key]

    def drop_kept(self) -> None:
        """Forget the kept shards (they are recomputed when read again)."""
        self._kept.clear()


class StreamedActivations(ShardedActivations):
    """The training split of one (site, layer), streamed from a `ShardSource`."""

    def __init__(self, source: ShardSource, site: str, layer: int):
        if (site, layer) not in source.keys:
            raise ValueError(f"the shard source computes {source.keys}, not {(site, layer)}")
        self.source, self.site, self.layer = source, site, layer
        self.d = source.config.model.site_width(site)
        self.identity = store_identity(source.config)  # the stored split's, by design
        self.storage_dtype = STORAGE[source.config.cache.dtype][0]
        self.replay_is_cheap = False

    @property
    def n_shards(self) -> int:
        return self.source.n_shards

    def __len__(self) -> int:
        return self.n_shards * self.source.rows_per_shard

    def shard(self, index: int) -> torch.Tensor:
        return self.source.shard((self.site, self.layer), index)

    def provenance(self) -> dict:
        """As a store's: where the rows come from, and the forward's precision (as its manifest records it)."""
        precision = self.source.precision
        recomputed = self.source.config.precision.cache_float32_positions if precision.bf16 else 0
        return {"source": "streamed", "tokens": str(self.source.tokens_dir), "config_hash": self.identity,
                "model": self.source.config.model.name,
                "precision": {**precision.provenance(), "float32_positions": recomputed}}


def streamed_splits(config: Config, keys: list[Key], loaded=None) -> dict[Key, StreamedActivations]:
    """One streamed training split per (site, layer), all fed by one shared source."""
    source = ShardSource(config, keys, loaded)
    return {key: StreamedActivations(source, *key) for key in keys}


def training_activations(config: Config, keys: list[Key], loaded=None) -> dict[Key, ShardedActivations]:
    """The training split of each (site, layer) as the configuration's cache mode provides it."""
    from gatedsae.activations.store import ActivationStore

    if config.cache.mode == "stream":
        return streamed_splits(config, keys, loaded)
    return {(site, layer): ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name,
                                                                         site, layer), "train")
            for site, layer in keys}
