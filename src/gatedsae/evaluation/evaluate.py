"""Evaluation as in the paper, on held-out data only, from exported checkpoints (so anyone can redo it).

Per SAE:
- from the held-out activation store (BOS excluded): L0, FVU, normalised MSE, γ, % alive, a
  feature-density histogram (see `reconstruction`);
- from the LM on held-out windows, the site replaced (see `spliced`): CE clean / zero-ablated / SAE,
  loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean) and delta LM loss = CE_sae − CE_clean,
  each also per window, so that intervals can be computed later without the LM.

Massive activations follow the checkpoint's training record (`massive_norm_threshold`): positions
above it are treated like BOS (left out of the store metrics, kept clean in the splice, for the
zero-ablation too). The paper's treatment (every non-BOS position) is a training run of its own
(`sweep.all_tokens`), whose checkpoints record no threshold.

A grid's job runs the clean prefix of every window once, keeps it in memory, then evaluates SAE by SAE
and writes each SAE's result as soon as it exists, keyed by the checkpoint's hash, the evaluation
settings and a fingerprint of the code that computes the metrics: a rerun (after a kill, one new λ, or a
fix to the metrics) evaluates only what is new.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch

from gatedsae.activations.store import ActivationStore
from gatedsae.core.errors import IntegrityError
from gatedsae.core.sealed import REEVALUATE, read_json, write_sealed_json
from gatedsae.core.codehash import METRICS_CODE, code_fingerprint
from gatedsae.data.lm_precision import matmul_weights
from gatedsae.evaluation.precision_gate import evaluation_precision
from gatedsae.evaluation.reconstruction import StoreResult, reconstruction_metrics
from gatedsae.evaluation.spliced import HeldOutWindows, SplicedLM, WindowLosses
from gatedsae.plan.architectures import KNOBS, knob_fields
from gatedsae.plan.config import Config
from gatedsae.plan.identity import evaluation_identity
from gatedsae.plan.grid import grid_indexes, read_trained_grid
from gatedsae.plan.layout import HELDOUT_SPLITS, METRICS_FILE, development_split
from gatedsae.saes.checkpoints import checkpoint_id, decode_raw, encode_raw, read_checkpoint


@dataclass
class CheckpointSAE:
    """An exported SAE read back from its directory (sae-lens layout), on raw activations."""

    directory: Path
    cfg: dict
    tensors: dict[str, torch.Tensor]
    record: dict

    @classmethod
    def load(cls, directory: str | Path, device: str = "cpu") -> "CheckpointSAE":
        cfg, tensors, record = read_checkpoint(Path(directory))
        return cls(Path(directory), cfg, {k: v.to(device) for k, v in tensors.items()}, record)

    @property
    def checkpoint_id(self) -> str:
        return checkpoint_id(self.directory)

    @property
    def width(self) -> int:
        return int(self.cfg["d_sae"])

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return encode_raw(self.cfg, self.tensors, x.float())

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        return decode_raw(self.tensors, features)

    def reconstruct(self, activation: torch.Tensor) -> torch.Tensor:
        """x̂ of activations of any leading shape [..., d]."""
        flat = activation.reshape(-1, activation.shape[-1]).float()
        return self.decode(self.encode(flat)).reshape(activation.shape)

    @property
    def massive_norm_threshold(self) -> Optional[float]:
        """Rows above this norm (raw units) were left out of training: massive activations, treated
        like BOS in evaluation too (None: no threshold, every non-BOS row counts)."""
        value = self.record.get("massive_norm_threshold")
        return None if value is None else float(value)


def loss_metrics(clean: np.ndarray, zero: np.ndarray, sae: np.ndarray, predictions_per_window: int) -> dict:
    """CE metrics from per-window mean CE (every window has the same number of predictions)."""
    ce_clean, ce_zero, ce_sae = float(clean.mean()), float(zero.mean()), float(sae.mean())
    return {
        "ce_clean": ce_clean, "ce_zero": ce_zero, "ce_sae": ce_sae,
        "loss_recovered": (ce_zero - ce_sae) / (ce_zero - ce_clean) if ce_zero != ce_clean else math.nan,
        "delta_lm_loss": ce_sae - ce_clean,
        "ce_tokens": len(sae) * predictions_per_window, "ce_windows": len(sae),
    }


# ---------------------------------------------------------------------------------------------------
# The stage.


def describe(sae: CheckpointSAE) -> dict:
    """The identifying columns of a metrics row, from the checkpoint's training record."""
    record = sae.record
    return {"arch": record["arch"], **dict.fromkeys(KNOBS), **knob_fields(record["arch"], record), "lr": record["lr"],
            "width": record["width"], "seed": record.get("seed", 0),
            "d": record["d"], "train_tokens": record["tokens"], "sae": record["sae"],
            "checkpoint_id": sae.checkpoint_id, "checkpoint": str(sae.directory)}


def metrics_code_version() -> str:
    """The fingerprint of the code that computes a saved result (see `codehash.METRICS_CODE`)."""
    return code_fingerprint(METRICS_CODE)


@dataclass
class Evaluated:
    """One SAE's metrics row (without the grid columns), its per-window samples, and its cost."""

    sae: CheckpointSAE
    row: dict
    samples: dict
    seconds: float
    precision: dict  # the LM forwards' precision, its fidelity gate and each pass's (provenance, not identity)


DEVELOPMENT = "development"  # evaluate_saes' default split: development_split(config)


def heldout_splits(config: Config) -> list[Optional[str]]:
    """The held-out splits an SAE is evaluated on: validation and test where the held-out documents were
    split (corpus.test_fraction), else the whole held-out set (None)."""
    from gatedsae.data.corpus import heldout_parts

    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    return list(HELDOUT_SPLITS) if heldout_parts(tokens_dir) is not None else [None]


def split_windows(config: Config, split: Optional[str], site: Optional[str] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The CE windows of a held-out split at `site` (its first evaluate.windows_of(split, site)), and which
    held-out windows of the store belong to it (None: every window, the held-out set not being split)."""
    from gatedsae.data.corpus import heldout_parts, load_windows

    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    windows = load_windows(tokens_dir, "heldout")
    if split is None:
        return np.asarray(windows[: config.evaluate.windows_of(None, site)]), None
    parts = heldout_parts(tokens_dir)
    if parts is None:
        raise FileNotFoundError(f"the held-out windows in {tokens_dir} are not split into {HELDOUT_SPLITS}: run the "
                                "tokenize stage with corpus.test_fraction set")
    mine = parts == HELDOUT_SPLITS.index(split)
    return np.asarray(windows[np.flatnonzero(mine)[: config.evaluate.windows_of(split, site)]]), mine


def evaluate_each(config: Config, site: str, layer: int, saes: list[CheckpointSAE], loaded=None,
                  progress: bool = False, split: Optional[str] = None) -> Iterator[Evaluated]:
    """Evaluate `saes` at (site, layer) on a held-out split (None: the whole held-out set), yielding each
    SAE as soon as it is done: one pass over the store for all of them, the clean prefixes once, then the
    remainder of the LM SAE by SAE."""
    if not saes:
        return
    evaluate = config.evaluate
    if evaluate.threads > 0:
        torch.set_num_threads(evaluate.threads)
    started = time.time()
    windows, store_windows = split_windows(config, split, site)
    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "heldout")
    stored = reconstruction_metrics(saes, store, evaluate.heldout_tokens, evaluate.batch_rows, evaluate.device,
                                    store_windows)
    if loaded is None:
        from gatedsae.data.models import load_model

        loaded = load_model(config.model, config.paths, evaluate.device)
    precision = evaluation_precision(config, loaded.model, site, layer, windows, saes[0])
    print(f"evaluate at {site} layer {layer} in {precision.dtype}: {precision.reason}", flush=True)
    # The prefixes and every zero-ablation in float32 first (what the SAEs share); then the LM's matrices
    # stay bf16 (under bf16) until the last SAE is done, or the generator is closed.
    spliced = SplicedLM(loaded.model, site, layer, precision,
                        float32_positions=config.precision.evaluate_float32_positions)
    held_out = HeldOutWindows(spliced, windows, evaluate.batch_windows,
                              evaluate.device, progress, thresholds=[sae.massive_norm_threshold for sae in saes])
    provenance = precision.provenance() | {"passes": held_out.passes()}
    with matmul_weights(loaded.model, precision):
        shared = (time.time() - started) / len(saes)
        for sae, store_result in zip(saes, stored):
            started = time.time()
            threshold = sae.massive_norm_threshold
            losses = held_out.losses(sae.reconstruct, threshold)
            row, samples = _assemble(sae, store_result, held_out, held_out.zero(threshold), losses)
            row |= {} if split is None else {"split": split}
            yield Evaluated(sae, row, samples, shared + time.time() - started, provenance)


def _assemble(sae: CheckpointSAE, stored: StoreResult, held_out: HeldOutWindows, zero: WindowLosses,
              losses: WindowLosses) -> tuple[dict, dict]:
    """The metrics row and the per-window samples of one SAE."""
    predictions = held_out.predictions_per_window
    row = {**describe(sae), **loss_metrics(held_out.clean, zero.kept, losses.kept, predictions), **stored.metrics,
           "massive_norm_threshold": sae.massive_norm_threshold, "massive_rows": stored.massive_rows,
           "massive_windows": losses.massive_windows}
    samples = {"ce_clean": held_out.clean.tolist(), "ce_zero": zero.kept.tolist(), "ce_sae": losses.kept.tolist(),
               "store": stored.windows}
    return row, samples


def evaluate_saes(config: Config, site: str, layer: int, saes: list[CheckpointSAE], loaded=None,
                  progress: bool = False, split: Optional[str] = DEVELOPMENT) -> list[dict]:
    """Metrics rows (without the grid columns) for `saes` at (site, layer), on a held-out split (by
    default development's: validation, or every held-out window when they are not split)."""
    split = development_split(config) if split == DEVELOPMENT else split
    return [evaluated.row for evaluated in evaluate_each(config, site, layer, saes, loaded, progress, split)]


def evaluate_grid(config: Config, site: str, layer: int, progress: bool = True, loaded=None) -> Path:
    """Evaluate every SAE of (site, layer)'s grids; reuse saved results whose identity matches."""
    from gatedsae.plan.estimates import evaluate_estimate
    from gatedsae.plan.preflight import available_memory, check_memory

    check_memory(evaluate_estimate(config, site), config.evaluate.device,
                 "lower evaluate.batch_windows (or evaluate.ce_windows: every window's prefix is kept)",
                 available_memory(config.evaluate.device, config))
    out_dir = config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "heldout")
    entries = []  # (split, variant, sae, path of its saved metrics, identity)
    splits = heldout_splits(config)  # each SAE on each held-out split: one saved result (and row) per split
    for variant, index in grid_indexes(config, site, layer).items():
        for entry in read_trained_grid(index, variant):
            sae = CheckpointSAE.load(entry["path"], config.evaluate.device)
            identity = evaluation_identity(config, site, sae.checkpoint_id, sae.massive_norm_threshold,
                                           store.manifest.config_hash, metrics_code_version())
            entries += [(split, variant, sae, out_dir / (split or "") / variant / f"{entry['sae']}.json", identity)
                        for split in splits]
    todo = [entry for entry in entries if not _saved_matches(entry[3], entry[4])]
    if todo:
        print(f"evaluating {len(todo)} of {len(entries)} SAEs at {site} layer {layer}"
              + (f" ({len(splits)} held-out splits each)" if splits != [None] else ""), flush=True)
    for split in splits:
        mine = [entry for entry in todo if entry[0] == split]
        evaluated = evaluate_each(config, site, layer, [sae for _, _, sae, _, _ in mine], loaded, progress, split)
        for (_, variant, _, path, identity), result in zip(mine, evaluated):
            write_sealed_json(path, {"identity": identity, "seconds": result.seconds, "precision": result.precision,
                                     "row": result.row, "samples": result.samples})
            print(f"  {split + '/' if split else ''}{variant}/{result.sae.record['sae']}: {result.seconds:.1f} s",
                  flush=True)
    grid_columns = {"model": config.model.name, "corpus": config.corpus.name, "site": site, "layer": layer,
                    "sweep": config.sweep.name}
    rows = []
    for _, variant, sae, path, _ in entries:
        saved = read_json(path, REEVALUATE)
        rows.append({**grid_columns, "variant": variant, **saved["row"], "samples": saved["samples"],
                     "checkpoint": str(sae.directory)})  # where it is now (a saved row may predate a move)
    write_sealed_json(out_dir / METRICS_FILE, {"rows": rows})
    return out_dir / METRICS_FILE


def _saved_matches(path: Path, identity: str) -> bool:
    """Whether an SAE's saved result is this evaluation's, intact (its seal holds): else it is recomputed."""
    if not path.exists():
        return False
    try:
        return read_json(path, REEVALUATE).get("identity") == identity
    except IntegrityError as error:
        print(f"re-evaluating: {error}", flush=True)
        return False


def evaluate_checkpoint(config: Config, directory: str | Path, progress: bool = True,
                        split: Optional[str] = DEVELOPMENT) -> dict:
    """One checkpoint's metrics, recomputed from scratch from the checkpoint and the data (the site and
    layer are read from its training record), on a held-out split (by default development's)."""
    require_checkpoint_directory(Path(directory))
    sae = CheckpointSAE.load(directory, config.evaluate.device)
    site, layer = sae.record["site"], int(sae.record["layer"])
    return evaluate_saes(config, site, layer, [sae], progress=progress, split=split)[0]


def require_checkpoint_directory(directory: Path) -> None:
    """A path the user gave for one checkpoint: not found, or not a checkpoint at all, said as such (a
    checkpoint that is there but incomplete gets CheckpointError's repair advice instead)."""
    from gatedsae.saes.checkpoints import CFG_FILE, RECORD_FILE

    where = "one SAE's folder, e.g. data/checkpoints/<model>/<corpus>/<site>/layer<L>/<sweep>/<sae> (grid.json lists them)"
    if not directory.exists():
        raise FileNotFoundError(f"checkpoint {directory} not found; a checkpoint is {where}")
    if not directory.is_dir() or not any((directory / name).exists() for name in (CFG_FILE, RECORD_FILE)):
        raise FileNotFoundError(f"{directory} is not a checkpoint (no {CFG_FILE} or {RECORD_FILE}); a checkpoint is {where}")
