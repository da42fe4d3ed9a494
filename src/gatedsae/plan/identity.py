"""Run identity: what makes two results "the same run", in one place.

Every artifact the pipeline reuses carries a hash of the settings it was computed from; a later run
reuses it only when its own hash is equal. The identities, from the bottom of the pipeline up:

    store_identity           an activation store (both splits; token budgets only extend a store)
    training_key             one trained SAE checkpoint (kept when a later sweep lists the same SAE)
    training_state_identity  a grid trainer's saved state (resumed only by the same grid)
    evaluation_identity      one SAE's saved metrics
    job_params               a Snakemake job of any stage, the verdict included (a change reruns the job)

Two rules decide which settings enter them. PLACEMENT_ONLY: settings that place the work (devices,
threads, batch sizes of the LM and evaluation, checkpoint cadence) never do. NEUTRAL_DEFAULTS: a
setting added after artifacts existed stays out while at the value that reproduces the earlier
behaviour. tests/test_identity.py checks the whole contract: each result-bearing setting changes exactly
the identities that depend on it, a placement setting changes none.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import TYPE_CHECKING, Any, Optional, Sequence

from gatedsae.core.codehash import (AGGREGATE_CODE, GROUNDTRUTH_CODE, INTERP_CODE, METRICS_CODE, VERDICT_CODE,
                                    code_fingerprint)
from gatedsae.plan.config.stages import DEAD_AFTER_TOKENS, SPARSE_MAX_DENSITY

if TYPE_CHECKING:
    from gatedsae.plan.config import Config, SAEGroupConfig, TrainConfig
    from gatedsae.plan.grid import SAESpec


# Settings added after artifacts existed, each at the value that reproduces the earlier behaviour: left
# out of job params and training keys while at that value, so adding a setting reruns nothing.
NEUTRAL_DEFAULTS: dict[str, dict[str, Any]] = {
    "corpus": {"test_fraction": None},
    "cache": {"mode": "store", "stream_keep_shards": 2},
    "sweep": {"all_tokens": False, "all_tokens_sites": [], "all_tokens_groups": [],
              "all_tokens_max_grad_norm": None},
    "experiment": {"site_layers": {}},
    "evaluate": {"validation_ce_windows": None, "site_ce_windows": {}},
    "train": {"statistics_tokens": None, "sparse": "auto", "site_tokens": {},
              "sparse_max_density": SPARSE_MAX_DENSITY, "dead_after_tokens": DEAD_AFTER_TOKENS, "seeds": 1,
              "max_grad_norm": None},
}

# Settings that choose which SAEs a grid holds, not how any one of them is trained: in the train job's
# params (a new seed trains the new SAEs), never in one SAE's training key. A trainer's saved state names
# its SAEs (seeds included) by itself.
GRID_ONLY: dict[str, set[str]] = {"train": {"seeds"}}


# Settings that change where a run computes, how fast, or what it records, never what it computes (beyond
# float rounding: a batch size or a device may reorder sums): never in job params, training keys or
# evaluation identities, whatever their value, so renumbering GPUs or changing threads reruns nothing.
PLACEMENT_ONLY: dict[str, set[str]] = {
    "cache": {"device", "threads", "batch_sequences"},
    "train": {"device", "threads", "site_devices", "checkpoint_every_steps", "log_every_steps", "tracker"},
    "evaluate": {"device", "threads", "batch_rows", "batch_windows"},
}

# Sections no identity reads, and why: whatever their values, they rerun nothing.
OUTSIDE_IDENTITY: dict[str, str] = {
    "paths": "where the data lives (grid indexes hold paths relative to it, so a data folder can move)",
    "resources": "how jobs are sized and scheduled, never what they compute",
}
# precision (conf/precision/): the cache's and the evaluation's precisions are provenance only (each passes a
# fidelity gate that bounds its effect below the statistics' tolerances). Training's is different: a bf16
# encoder product changes every step's rounding, and over hundreds of steps the weights drift apart far
# beyond rounding (to the same FVU and L0 within precision.train_check's tolerances, not to the same
# weights). So the *resolved* training precision, bfloat16, enters training keys and saved training states
# (`training_precision`): a grid retrained on a machine that resolves `auto` otherwise retrains every SAE
# rather than mixing precisions in one grid, and a state saved in one precision is never resumed in the
# other. float32 stays out (NEUTRAL_DEFAULTS' rule), so float32 checkpoints keep their keys. The setting
# itself (auto) is not in them, nor in the Snakemake params (resolving it needs torch; the planning layer
# loads without it): finished checkpoints are kept whatever machine reads them, their record names the
# precision they were trained in.

# experiment.* keys that choose what to build and where its summaries go, not how anything is computed
# (the chapter changes the sweep, which enters by itself).
EXPERIMENT_NOT_IDENTITY = ("name", "through", "results_dir", "figures_dir", "chapters", "chapter")

# The code whose fingerprint a job's params carry (core/codehash.py), so a fix to it reruns the job.
CODE = {"metrics": METRICS_CODE, "aggregate": AGGREGATE_CODE, "verdict": VERDICT_CODE, "groundtruth": GROUNDTRUTH_CODE,
        "interp": INTERP_CODE}


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


# --- artifacts ---------------------------------------------------------------------------------------------


def store_settings(config: Config) -> dict:
    """The settings whose change invalidates an activation store (token budgets only extend it)."""
    return {"model": asdict(config.model), "corpus": comparable("corpus", asdict(config.corpus)), "seed": config.seed,
            "context_length": config.experiment.context_length, "dtype": config.cache.dtype,
            "shard_sequences": config.cache.shard_sequences}


def store_identity(config: Config) -> str:
    """An activation store's identity, recorded in its manifest; a streamed split shares it by design."""
    return config_hash(store_settings(config))


def _per_sae(section: str, values: dict) -> dict:
    """`comparable` values of a section without the settings that only choose a grid's SAEs (GRID_ONLY)."""
    return {key: value for key, value in comparable(section, values).items() if key not in GRID_ONLY.get(section, ())}


def training_key(config: Config, site: str, spec: SAESpec, extra: str = "") -> str:
    """Everything an SAE's trained parameters depend on (besides the code). The activations enter by
    their store's identity, so stored and streamed training share their keys. `extra`: what else the
    SAE is trained from (a rescale-and-shift SAE: its baseline's checkpoint). An extra training seed enters
    as the spec's own seed (the run's seed, train.seed, already enters with `train`), so the SAEs trained
    before seeds existed keep their keys."""
    seed = {} if spec.seed is None else {"seed": spec.seed}
    return config_hash({"spec": [spec.arch, spec.width, spec.value, spec.lr, spec.l1_units],
                        "train": _per_sae("train", asdict(config.train.at_site(site))),
                        "store": store_identity(config), "d": config.model.site_width(site),
                        "extra": extra, **seed, **_precision_entry(training_precision(config, site).dtype)})


def training_precision(config: Config, site: Optional[str] = None):
    """The precision training computes its encoder product in on `site`'s device (or train.device), as
    `precision.train` resolves there (core/precision.py: native bf16 or not); before any compute."""
    from gatedsae.core.precision import choose

    return choose("train", config.precision.train, config.train_device(site) if site else config.train.device)


def _precision_entry(dtype: str) -> dict:
    return {} if dtype == "float32" else {"precision": dtype}


def rescale_shift_extra(baseline_keys: Sequence[str]) -> str:
    """What a rescale-and-shift grid is trained from besides its settings: its baselines' training keys."""
    return config_hash({"baselines": sorted(baseline_keys)})


def training_state_identity(groups: Sequence[SAEGroupConfig], train: TrainConfig, store: str, d: int,
                            extra: str = "", precision: str = "float32") -> str:
    """What a saved grid-training state must share to be resumed: the site's sweep groups, the training
    settings, the store's identity, the width d, `extra` (as in `training_key`) and the resolved training
    precision (bfloat16 | float32)."""
    return config_hash({"sweep": [asdict(group) for group in groups], "train": _per_sae("train", asdict(train)),
                        "store": store, "d": d, "extra": extra, **_precision_entry(precision)})


def evaluation_identity(config: Config, site: str, checkpoint_id: str, massive_norm_threshold: Optional[float],
                        store: str, metrics_code: Optional[str] = None) -> str:
    """What a saved evaluation at `site` must share to be reused: the weights and their massive-activation
    threshold, the evaluation settings as they apply at the site, the store's identity, the LM and
    context, and the code that computes the metrics (`metrics_code`, by default its fingerprint now)."""
    return config_hash({"checkpoint": checkpoint_id, "massive_norm_threshold": massive_norm_threshold,
                        "evaluate": comparable("evaluate", config.evaluate.at_site(site)), "store": store,
                        "context_length": config.experiment.context_length, "model": asdict(config.model),
                        "metrics_code": metrics_code or code_fingerprint(METRICS_CODE)})


# --- jobs --------------------------------------------------------------------------------------------------

# What each Snakemake job depends on: its rule's config sections, and the code whose fingerprint its params
# carry (CODE). A job reads its other inputs as files, so their changes reach it through them; a
# stream-mode train job runs the LM itself, so it depends on what makes the activations as well.
STORE_SECTIONS = ("model", "corpus", "cache", "experiment", "seed")
# Which stores an experiment has (its sites and layers) is named by the store jobs' outputs, never by what
# one store holds: left out of their params, so experiments sharing a store (successors on the default's)
# do not rerun its tokenize and cache jobs.
STORE_JOBS = ("tokenize", "cache", "train_streamed")
STORE_CHOICE = ("sites", "layers", "site_layers")
JOBS: dict[str, tuple[tuple[str, ...], Optional[str]]] = {
    "prepare_model": (("model",), None),
    "fetch_corpus": (("corpus",), None),
    "tokenize": (("model", "corpus", "experiment", "seed"), None),
    "cache": (STORE_SECTIONS, None),
    "train": (("sweep", "train"), None),
    "train_streamed": ((*STORE_SECTIONS, "sweep", "train"), None),
    "rescale_shift": (("sweep", "train"), None),
    "train_all_tokens": (("sweep", "train"), None),
    "evaluate": (("evaluate",), "metrics"),
    "aggregate": (("intervals", "verdict"), "aggregate"),  # the verdict's levels: where the readings are taken
    "verdict": (("verdict", "intervals"), "verdict"),
    "browse": (("browser", "evaluate"), None),
    "study": (("study", "browser", "evaluate"), None),  # the rating page (below)
    "study_analysis": (("study",), None),
    "groundtruth": (("groundtruth", "train"), "groundtruth"),  # its own data; train.* beyond groundtruth.train apply
    "interp": (("interp",), "interp"),
}
# The study's settings that only its analysis reads (never the rating page).
STUDY_ANALYSIS_ONLY = ("ratings", "bootstrap", "confidence")
# Settings of a job's sections that the job never reads: the ground truth trains on its own synthetic data
# with its own budget (groundtruth.train), never a site's.
NOT_READ_BY: dict[str, dict[str, tuple[str, ...]]] = {"groundtruth": {"train": ("site_tokens",)}}


def job_params(config: Config, job: str) -> str:
    """A job's params (Snakemake reruns a job whose params changed): the config sections it depends on
    (JOBS), as one canonical JSON string."""
    if job in ("train", "train_all_tokens") and config.cache.mode == "stream":
        job = "train_streamed"  # it runs the LM itself
    if job == "study":
        study = {k: v for k, v in asdict(config.study).items() if k not in STUDY_ANALYSIS_ONLY}
        return json.dumps({"study": study, "page": json.loads(section_params(config, "browser", "evaluate"))},
                          sort_keys=True)
    sections, code = JOBS[job]
    return section_params(config, *sections, code=code, not_identity=STORE_CHOICE if job in STORE_JOBS else (),
                          not_read=NOT_READ_BY.get(job, {}))


def section_params(config: Config, *sections: str, code: Optional[str] = None,
                   not_identity: Sequence[str] = (), not_read: Optional[dict[str, tuple[str, ...]]] = None) -> str:
    """Config sections as one canonical JSON string, without what never identifies a result (placement,
    neutral defaults, EXPERIMENT_NOT_IDENTITY and the experiment's keys in `not_identity`). `code` names
    the code whose fingerprint is part of it (metrics | aggregate | verdict), so that a fix to what
    computes the stage's numbers reruns it;
    Snakemake's own `code` trigger only sees the rule's shell command, not the package it calls."""
    resolved = asdict(config)
    for key in (*EXPERIMENT_NOT_IDENTITY, *not_identity):
        resolved["experiment"].pop(key)
    found = {section: comparable(section, resolved[section]) if isinstance(resolved[section], dict)
             else resolved[section] for section in sections}
    for section, keys in (not_read or {}).items():
        for key in keys:
            found[section].pop(key, None)
    if code is not None:
        found["code"] = code_fingerprint(CODE[code])
    return json.dumps(found, sort_keys=True)
