"""Evaluation as in the paper, on held-out data only, from exported checkpoints (so anyone can redo it).

Per SAE:
- from the held-out activation store (BOS excluded, outlier rows left out as in training):
  L0, FVU, normalised MSE, γ = E||x̂||² / E[x̂·x] (ratio of dataset means), % alive, a feature-density
  histogram;
- from the LM on held-out windows, the site replaced (see `spliced`): CE clean / zero-ablated / SAE,
  loss recovered = (CE_zero − CE_sae) / (CE_zero − CE_clean) and delta LM loss = CE_sae − CE_clean.

A grid's job computes the clean prefix of each batch once and runs only the remainder per SAE. Each
SAE's metrics are written as soon as they exist, keyed by the checkpoint's hash and the evaluation
settings, so a rerun (after a kill, or after one new λ) evaluates only what is new.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from .activations import ActivationStore
from .atomic import write_json_atomic
from .checkpoints import checkpoint_id, decode_raw, encode_raw, read_checkpoint
from .config import Config, EvaluateConfig, config_hash
from .spliced import SplicedLM
from .train import read_grid_index

METRICS_FILE = "metrics.json"   # a grid's evaluation (written last: the stage's output)
DENSITY_EDGES = np.arange(-7.0, 0.01, 0.25)  # log10 of the firing frequency, shared by every histogram


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


class ReconstructionStats:
    """Running float64 sums over rows, from which every reconstruction metric is a ratio of means."""

    def __init__(self, width: int, d: int):
        self.rows = 0
        self.l0 = self.error = self.x_sq = self.x_hat_sq = self.x_hat_dot_x = 0.0
        self.x_sum = torch.zeros(d, dtype=torch.float64)
        self.fires = torch.zeros(width, dtype=torch.float64)

    def update(self, x: torch.Tensor, features: torch.Tensor, x_hat: torch.Tensor) -> None:
        x, x_hat, active = x.double(), x_hat.double(), (features > 0)
        self.rows += len(x)
        self.l0 += float(active.sum())
        self.fires += active.sum(0).double().cpu()
        self.error += float(((x_hat - x) ** 2).sum())
        self.x_sq += float((x**2).sum())
        self.x_sum += x.sum(0).cpu()
        self.x_hat_sq += float((x_hat**2).sum())
        self.x_hat_dot_x += float((x_hat * x).sum())

    def result(self) -> dict:
        variance = self.x_sq - float((self.x_sum**2).sum()) / self.rows  # Σ||x − mean||²
        density = self.fires / self.rows
        alive = density > 0
        histogram, _ = np.histogram(np.log10(density[alive].numpy()), bins=DENSITY_EDGES)
        return {
            "l0": self.l0 / self.rows,
            "fvu": self.error / variance,
            "nmse": self.error / self.x_sq,
            "gamma": self.x_hat_sq / self.x_hat_dot_x if self.x_hat_dot_x else math.nan,
            "alive_fraction": float(alive.double().mean()),
            "eval_tokens": self.rows,
            "density_histogram": {"log10_edges": DENSITY_EDGES.tolist(), "counts": histogram.tolist(),
                                  "dead": int((~alive).sum())},
        }


@torch.no_grad()
def reconstruction_metrics(saes: list[CheckpointSAE], store: ActivationStore, evaluate: EvaluateConfig) -> list[dict]:
    """Reconstruction metrics of each SAE over the same held-out rows, read once."""
    stats = [ReconstructionStats(sae.width, store.d) for sae in saes]
    for chunk in store.tokens(evaluate.heldout_tokens, evaluate.max_norm_ratio):
        for rows in chunk.split(evaluate.batch_rows):
            x = rows.to(evaluate.device, torch.float32)
            for sae, stat in zip(saes, stats):
                features = sae.encode(x)
                stat.update(x, features, sae.decode(features))
    return [stat.result() for stat in stats]


@dataclass
class LossSums:
    total: float = 0.0
    tokens: int = 0

    def add(self, losses: torch.Tensor) -> None:
        self.total += float(losses.double().sum())
        self.tokens += losses.numel()

    @property
    def mean(self) -> float:
        return self.total / self.tokens


@torch.no_grad()
def spliced_losses(spliced: SplicedLM, windows: np.ndarray, saes: list[CheckpointSAE], evaluate: EvaluateConfig,
                   progress: bool = False) -> tuple[LossSums, LossSums, list[LossSums]]:
    """(clean, zero-ablated, per-SAE) CE sums over `windows`, each batch's prefix computed once."""
    clean, zero, per_sae = LossSums(), LossSums(), [LossSums() for _ in saes]
    starts = range(0, len(windows), evaluate.batch_windows)
    for start in _maybe_progress(starts, progress, "spliced CE"):
        tokens = torch.from_numpy(np.asarray(windows[start : start + evaluate.batch_windows], dtype=np.int64))
        prefix = spliced.prefix(tokens.to(evaluate.device))
        clean.add(spliced.token_losses(prefix, None))
        zero.add(spliced.token_losses(prefix, torch.zeros_like(prefix.activation)))
        flat = prefix.activation.reshape(-1, prefix.activation.shape[-1]).float()
        for sae, sums in zip(saes, per_sae):
            x_hat = sae.decode(sae.encode(flat)).reshape(prefix.activation.shape)
            sums.add(spliced.token_losses(prefix, x_hat))
    return clean, zero, per_sae


def _maybe_progress(items: Iterable, enabled: bool, description: str):
    if not enabled:
        return items
    from tqdm.auto import tqdm

    return tqdm(items, desc=description, unit="batch")


def loss_metrics(clean: LossSums, zero: LossSums, sae: LossSums) -> dict:
    return {
        "ce_clean": clean.mean, "ce_zero": zero.mean, "ce_sae": sae.mean,
        "loss_recovered": (zero.mean - sae.mean) / (zero.mean - clean.mean),
        "delta_lm_loss": sae.mean - clean.mean,
        "ce_tokens": sae.tokens,
    }


# ---------------------------------------------------------------------------------------------------
# The stage.


def describe(sae: CheckpointSAE) -> dict:
    """The identifying columns of a metrics row, from the checkpoint's training record."""
    record = sae.record
    return {"arch": record["arch"], "l1": record["l1"], "lr": record["lr"], "width": record["width"],
            "d": record["d"], "train_tokens": record["tokens"], "sae": record["sae"],
            "checkpoint_id": sae.checkpoint_id, "checkpoint": str(sae.directory)}


def evaluation_identity(sae: CheckpointSAE, config: Config, store: ActivationStore) -> str:
    """What a saved result must share to be reused: the weights, the settings, the data."""
    return config_hash({"checkpoint": sae.checkpoint_id, "evaluate": asdict(config.evaluate),
                        "store": store.manifest.config_hash, "context_length": config.experiment.context_length,
                        "model": asdict(config.model)})


def evaluate_saes(config: Config, site: str, layer: int, saes: list[CheckpointSAE], loaded=None,
                  progress: bool = False) -> list[dict]:
    """Metrics rows (without the grid columns) for `saes` at (site, layer), every SAE in one pass."""
    if not saes:
        return []
    evaluate = config.evaluate
    if evaluate.threads > 0:
        torch.set_num_threads(evaluate.threads)
    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "heldout")
    reconstruction = reconstruction_metrics(saes, store, evaluate)
    if loaded is None:
        from .models import load_model

        loaded = load_model(config.model, config.paths, evaluate.device)
    from .corpus import load_windows

    windows = load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "heldout")
    windows = windows[: evaluate.ce_windows]
    clean, zero, per_sae = spliced_losses(SplicedLM(loaded.model, site, layer), windows, saes, evaluate, progress)
    return [{**describe(sae), **loss_metrics(clean, zero, sums), **metrics}
            for sae, sums, metrics in zip(saes, per_sae, reconstruction)]


def grid_indexes(config: Config, site: str, layer: int) -> dict[str, Path]:
    """The trained grids of (site, layer): the sweep, and its rescale-and-shift variant if configured."""
    from .train import GRID_INDEX, RESCALE_SHIFT_DIR

    grid_dir = config.paths.checkpoints_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
    indexes = {"sweep": grid_dir / GRID_INDEX}
    if config.sweep.rescale_shift_at(site):
        indexes["rescale_shift"] = grid_dir / RESCALE_SHIFT_DIR / GRID_INDEX
    return indexes


def evaluate_grid(config: Config, site: str, layer: int, progress: bool = True, loaded=None) -> Path:
    """Evaluate every SAE of (site, layer)'s grids; reuse saved results whose identity matches."""
    from .resources import available_memory, check_memory, evaluate_estimate

    check_memory(evaluate_estimate(config, site), config.evaluate.device, "lower evaluate.batch_windows",
                 available_memory(config.evaluate.device, config))
    out_dir = config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "heldout")
    entries = []  # (variant, sae, path of its saved metrics, identity)
    for variant, index in grid_indexes(config, site, layer).items():
        if not index.exists():
            raise FileNotFoundError(f"{index} does not exist; train the grid first (Snakemake rule train_grid"
                                    f"{' and rescale_shift' if variant == 'rescale_shift' else ''})")
        for entry in read_grid_index(index):
            sae = CheckpointSAE.load(entry["path"], config.evaluate.device)
            entries.append((variant, sae, out_dir / variant / f"{entry['sae']}.json",
                            evaluation_identity(sae, config, store)))
    todo = [(variant, sae, path, identity) for variant, sae, path, identity in entries
            if not _saved_matches(path, identity)]
    if todo:
        print(f"evaluating {len(todo)} of {len(entries)} SAEs at {site} layer {layer}", flush=True)
        started = time.time()
        rows = evaluate_saes(config, site, layer, [sae for _, sae, _, _ in todo], loaded, progress)
        seconds = (time.time() - started) / len(todo)
        for (variant, sae, path, identity), row in zip(todo, rows):
            write_json_atomic(path, {"identity": identity, "seconds": seconds, "row": row})
    grid_columns = {"model": config.model.name, "corpus": config.corpus.name, "site": site, "layer": layer,
                    "sweep": config.sweep.name}
    rows = [{**grid_columns, "variant": variant, **json.loads(path.read_text())["row"],
             "checkpoint": str(sae.directory)}  # where it is now (a saved row may predate a move)
            for variant, sae, path, _ in entries]
    write_json_atomic(out_dir / METRICS_FILE, {"rows": rows})
    return out_dir / METRICS_FILE


def _saved_matches(path: Path, identity: str) -> bool:
    try:
        return json.loads(path.read_text()).get("identity") == identity
    except (OSError, ValueError):
        return False


def evaluate_checkpoint(config: Config, directory: str | Path, progress: bool = True) -> dict:
    """One checkpoint's metrics, recomputed from scratch from the checkpoint and the data (the site and
    layer are read from its training record)."""
    sae = CheckpointSAE.load(directory, config.evaluate.device)
    site, layer = sae.record["site"], int(sae.record["layer"])
    return evaluate_saes(config, site, layer, [sae], progress=progress)[0]

