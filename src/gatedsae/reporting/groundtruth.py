"""The ground-truth stage (`python -m gatedsae groundtruth`): for each seed, synthetic activations with
known features written as an activation store, every architecture of conf/groundtruth's sweep trained on
it by the pipeline's trainer (rescale-and-shift on the frozen baselines when the sweep asks for it), each
checkpoint scored against the true features on the held-out split; then the rows, their summary with
intervals over seeds, the mechanism's claims judged by conf/groundtruth's rules, and the figures.
Finished stores and checkpoints are kept (a rerun only recomputes what changed or was lost)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pandas as pd
import torch

from gatedsae.activations.store import ActivationStore
from gatedsae.activations.synthetic import LAYER, SITE, SyntheticFeatures, write_store
from gatedsae.core.atomic import write_json_atomic, write_text_atomic
from gatedsae.core.errors import IntegrityError
from gatedsae.evaluation.groundtruth import score_checkpoint
from gatedsae.plan.architectures import knob_of, knob_value
from gatedsae.plan.config import Config
from gatedsae.plan.grid import grid_indexes, read_grid_index
from gatedsae.plan.groundtruth import SYNTHETIC, figures_dir, outputs, seed_config
from gatedsae.reporting import groundtruth_claims


def heldout_batches(features: SyntheticFeatures, store: ActivationStore, batch_rows: int):
    """(true codes, activations) of the held-out split, shard by shard: the codes regenerated from the seed,
    the activations read from the store, which must equal the regenerated ones."""
    for index in range(store.n_shards):
        codes, x = features.shard("heldout", index)
        stored = store.shard(index).float()
        if stored.shape != x.shape or not torch.equal(stored, x):
            raise IntegrityError(f"held-out shard {index} of {store.directory} differs from what its generator "
                                 "makes: delete the folder and run the groundtruth stage again")
        for start in range(0, len(x), batch_rows):
            yield codes[start:start + batch_rows], x[start:start + batch_rows]


def score_seed(config: Config, seed: int) -> list[dict]:
    """Generate, train and score one seed's runs; one row per SAE."""
    from gatedsae.training.stages import train_layer, train_rescale_shift

    truth = config.groundtruth
    run = seed_config(config, seed)
    store_dir = run.paths.activations_dir(SYNTHETIC, SYNTHETIC, SITE, LAYER)
    write_store(store_dir, truth.generator, seed)
    print(f"seed {seed}: synthetic store {store_dir}", flush=True)
    train_layer(run, LAYER, [SITE], progress=False)
    if run.sweep.rescale_shift_at(SITE):
        train_rescale_shift(run, SITE, LAYER, progress=False)
    features = SyntheticFeatures(truth.generator, seed)
    store = ActivationStore(store_dir, "heldout")
    rows = []
    for variant, index in grid_indexes(run, SITE, LAYER).items():
        for entry in read_grid_index(index):
            batches = heldout_batches(features, store, truth.evaluate_batch_rows)
            metrics = score_checkpoint(entry["path"], features.directions, batches, truth.recovered_cosine)
            rows.append({"seed": seed, "arch": entry["arch"], "variant": variant, "sae": entry["sae"],
                         "width": entry["width"], "knob": knob_of(entry["arch"]),
                         "value": float(knob_value(entry["arch"], entry)), **metrics})
    return rows


def run_groundtruth(config: Config) -> Path:
    """Every seed's runs, then rows.csv, summary.json (with the claims) and claims.json, and the figures;
    returns summary.json's path."""
    from gatedsae.reporting.figures.groundtruth import render

    truth = config.groundtruth
    # The benchmark's matrices are tiny: one thread is fastest, and several thrash on a loaded machine
    # (train.threads, when set, decides).
    torch.set_num_threads(config.train.threads or 1)
    rows = pd.DataFrame([row for seed in truth.seeds for row in score_seed(config, seed)])
    paths = outputs(config)
    buffer = io.StringIO()
    rows.to_csv(buffer, index=False)
    write_text_atomic(paths["rows"], buffer.getvalue())
    table = groundtruth_claims.summary(rows, truth.verdict.confidence)
    found = groundtruth_claims.claims(rows, truth.verdict)
    figures = render(rows, table, truth, figures_dir(config))
    claims = groundtruth_claims.as_json(found)
    write_json_atomic(paths["claims"], _finite(claims))
    write_json_atomic(paths["summary"], _finite({
        "seeds": list(truth.seeds), "recovered_cosine": truth.recovered_cosine,
        "true_l0": float(SyntheticFeatures(truth.generator, truth.seeds[0]).expected_l0),
        "generator": _asdict(truth.generator), "rules": _asdict(truth.verdict),
        "saes": table.astype(object).where(table.notna(), None).to_dict("records"),
        "claims": claims, "figures": [str(path) for path in figures]}))
    return Path(paths["summary"])


def _asdict(section) -> dict:
    from dataclasses import asdict

    return asdict(section)


def _finite(data):
    """JSON-safe: NaN and ±∞ as null."""
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if isinstance(data, float) and not math.isfinite(data):
        return None
    return data
