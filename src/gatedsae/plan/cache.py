"""Planning of the activation cache, without touching data: how many context windows each split needs
for its token budget (checked before any compute). Which settings identify a store: plan/identity.py."""

from __future__ import annotations

import math

from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.layout import SPLITS


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


def windows_to_store(config: Config, plan: dict[str, int]) -> dict[str, int]:
    """The windows the cache step writes: in stream mode the training split is computed by training."""
    return {split: 0 if split == "train" and config.cache.mode == "stream" else windows
            for split, windows in plan.items()}
