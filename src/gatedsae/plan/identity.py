"""Run identity: which settings make two results "the same run". Job params, training keys and evaluation
identities are hashes of settings; these rules say which settings enter them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any

from gatedsae.plan.config.stages import SPARSE_MAX_DENSITY


# Settings added after artifacts existed, each at the value that reproduces the earlier behaviour: left
# out of job params and training keys while at that value, so adding a setting reruns nothing.
NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "cache": {"mode": "store", "stream_keep_shards": 2},
    "train": {"statistics_tokens": None, "sparse": "auto",
              "sparse_max_density": SPARSE_MAX_DENSITY},
}


# Settings that change where a run computes, how fast, or what it records, never what it computes (beyond
# float rounding: a batch size or a device may reorder sums): never in job params, training keys or
# evaluation identities, whatever their value, so renumbering GPUs or changing threads reruns nothing.
PLACEMENT_ONLY: dict[str, set[str]] = {
    "cache": {"device", "threads", "batch_sequences"},
    "train": {"device", "threads", "site_devices", "checkpoint_every_steps", "log_every_steps", "tracker"},
    "evaluate": {"device", "threads", "batch_rows", "batch_windows"},
}


def comparable(section: str, values: dict) -> dict:
    """`values` of a config section without the settings still at their neutral default, nor those that
    only place the computation (PLACEMENT_ONLY)."""
    neutral, placement = NEUTRAL_DEFAULTS.get(section, {}), PLACEMENT_ONLY.get(section, set())
    return {key: value for key, value in values.items()
            if key not in placement and (key not in neutral or value != neutral[key])}


def config_hash(config: Any) -> str:
    """A short stable hash of a (sub)config or dict, tying artifacts to the settings that made them."""
    payload = json.dumps(config if isinstance(config, dict) else asdict(config), sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
