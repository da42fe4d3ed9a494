"""Shuffled batches from a sharded activation split: shards in a seeded order through a mixing buffer,
with a resumable position (`state_dict`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:  # the store hands its splits to this module, which never builds one
    from gatedsae.activations.store import ShardedActivations



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
