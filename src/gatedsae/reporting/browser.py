"""The feature browser: for sampled features of an SAE, what a researcher looks at to judge a feature.

For each feature, on the held-out split's development part (text the SAE never trained on; where the
held-out documents are split, corpus.test_fraction, only the validation windows: the test split is left
to the verdict):
- its top-activating contexts (at most one per window), the activating token marked, every token
  shaded by the feature's activation on it;
- random contexts from each quantile of its non-zero activations (how it behaves below the top);
- its activation density (how often it fires) and the histogram of its non-zero activations;
- the tokens its decoder direction promotes and suppresses through the unembedding (W_dec · W_U,
  through W_O first at the attention output, and through the final norm's centring and weight, as a
  model with the norm folded into W_U computes it).

Rows of the held-out store map back to text exactly: row r is window r // (T−1), position 1 + r % (T−1)
(BOS excluded), the order the cache wrote them in. Rows the evaluation leaves out as massive activations
(norm above the checkpoint's `massive_norm_threshold`) are left out here too, and so are the rows of test
windows (`development_windows`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from gatedsae.activations.store import ActivationStore
from gatedsae.evaluation.evaluate import CheckpointSAE
from gatedsae.plan.architectures import knob_fields
from gatedsae.plan.config import BrowserConfig, Config
from gatedsae.plan.layout import HELDOUT_SPLITS, development_split


@dataclass
class HeldoutText:
    """The held-out token windows behind a store's rows, and how each token reads."""

    windows: np.ndarray  # [n, T] token ids, BOS first
    token_text: Callable[[int], str]
    development: Optional[np.ndarray] = None  # [n] bool: the windows development may read (None: all of them)

    @property
    def positions(self) -> int:
        return self.windows.shape[1] - 1

    def locate(self, row: int) -> tuple[int, int]:
        return row // self.positions, 1 + row % self.positions


def development_windows(config: Config) -> Optional[np.ndarray]:
    """Per held-out window, whether development stages (browser, study, exports) may read it: the
    validation split's windows where the held-out documents are split (the test split is the verdict's
    alone), None (every window) where they are not."""
    from gatedsae.data.corpus import heldout_parts

    split = development_split(config)
    if split is None:
        return None
    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    parts = heldout_parts(tokens_dir)
    if parts is None:
        raise FileNotFoundError(f"corpus.test_fraction is set but the held-out windows in {tokens_dir} are not split "
                                f"into {HELDOUT_SPLITS}: re-run the tokenize stage")
    return parts == HELDOUT_SPLITS.index(split)


def heldout_shards(store: ActivationStore, limit: Optional[int], max_norm: Optional[float],
                   development: Optional[np.ndarray] = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(rows [n, d] float32, kept [n] bool) per shard in stored order, at most `limit` rows in all; `kept`
    is False for the rows the evaluation leaves out (massive: norm above `max_norm`) and for the rows of
    windows `development` (bool per held-out window) marks False: those of the test split."""
    remaining = len(store) if limit is None else limit
    positions, first = store.manifest.positions_per_window, 0
    for index in range(store.n_shards):
        if remaining <= 0:
            return
        rows = store.rows(index, None, torch.float32)
        norms = rows.norm(dim=-1)
        kept = torch.ones(len(rows), dtype=torch.bool) if max_norm is None else norms <= max_norm
        if development is not None:
            kept &= torch.as_tensor(development[np.arange(first, first + len(rows)) // positions])
        first += len(rows)
        rows, kept = rows[:remaining], kept[:remaining]
        remaining -= len(rows)
        yield rows, kept


@dataclass
class Scan:
    """One pass of an SAE over the held-out rows: how often each feature fires."""

    fired: torch.Tensor  # [width] rows (kept) on which each feature fired
    rows: int            # kept rows
    l0: float


def decoder_norms(sae: CheckpointSAE) -> torch.Tensor:
    """‖W_dec[i]‖ per feature: a checkpoint's rows carry the training's activation scale (norm 1 / scale),
    so activation × this norm is the feature's contribution to the reconstruction in the model's units."""
    return sae.tensors["W_dec"].float().norm(dim=-1)


@torch.no_grad()
def scan(sae: CheckpointSAE, shards, batch_rows: int) -> Scan:
    fired, rows, active = torch.zeros(sae.width, dtype=torch.long), 0, 0
    for x, kept in shards:
        for chunk, keep in zip(x.split(batch_rows), kept.split(batch_rows)):
            on = (sae.encode(chunk) > 0) & keep[:, None]
            fired += on.sum(0)
            rows += int(keep.sum())
            active += int(on.sum())
    return Scan(fired, rows, active / max(rows, 1))


@torch.no_grad()
def activations_of(sae: CheckpointSAE, features: torch.Tensor, shards, batch_rows: int) -> np.ndarray:
    """[rows, len(features)] activations of the chosen features on every row (0 on rows left out), in the
    model's units (times the decoder row's norm: see `decoder_norms`)."""
    parts, scale = [], decoder_norms(sae)[features]
    for x, kept in shards:
        for chunk, keep in zip(x.split(batch_rows), kept.split(batch_rows)):
            parts.append((sae.encode(chunk)[:, features] * scale * keep[:, None]).numpy())
    return np.concatenate(parts) if parts else np.zeros((0, len(features)), dtype=np.float32)


def sample_features(scan_: Scan, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` features that fired at least once (all of them if fewer), in increasing index order."""
    alive = np.flatnonzero(scan_.fired.numpy() > 0)
    return np.sort(rng.choice(alive, size=min(count, len(alive)), replace=False))


def context(text: HeldoutText, column: np.ndarray, row: int, browser: BrowserConfig) -> dict:
    """The tokens around `row`'s token with the feature's activation on each (BOS is never shown)."""
    window, position = text.locate(row)
    first_row = window * text.positions
    start = max(1, position - browser.context_before)
    stop = min(text.positions, position + browser.context_after, len(column) - first_row)  # last position shown
    ids = text.windows[window, start : stop + 1]
    values = column[first_row + start - 1 : first_row + stop]
    return {"tokens": [text.token_text(int(t)) for t in ids], "activations": [round(float(v), 4) for v in values],
            "focus": position - start, "value": round(float(column[row]), 4), "window": int(window),
            "position": int(position)}


def feature_record(index: int, column: np.ndarray, rows: int, text: HeldoutText, browser: BrowserConfig,
                   rng: np.random.Generator, logits: dict) -> dict:
    """Everything the browser shows about one feature, from its activations on every held-out row."""
    fired = np.flatnonzero(column > 0)
    values = column[fired]
    top, windows = [], set()
    for row in fired[np.argsort(-values, kind="stable")]:
        window = int(row) // text.positions
        if window not in windows:
            windows.add(window)
            top.append(int(row))
            if len(top) == browser.top_examples:
                break
    edges = np.quantile(values, np.linspace(0, 1, browser.quantile_bins + 1)) if len(values) else np.zeros(2)
    quantiles, shown = [], set(top)
    for b in range(browser.quantile_bins if len(values) else 0):
        low, high = edges[b], edges[b + 1]
        upper = values <= high if b == browser.quantile_bins - 1 else values < high
        candidates = [int(r) for r in fired[(values >= low) & upper] if int(r) not in shown]
        picked = rng.choice(candidates, size=min(browser.examples_per_bin, len(candidates)), replace=False).tolist() \
            if candidates else []
        chosen = sorted(picked, key=lambda r: -column[r])
        shown.update(chosen)
        quantiles.append({"low": round(float(low), 4), "high": round(float(high), 4),
                          "examples": [context(text, column, r, browser) for r in chosen]})
    counts, hist_edges = np.histogram(values, bins=20, range=(0.0, float(values.max()) if len(values) else 1.0))
    return {
        "index": int(index), "density": len(fired) / max(rows, 1), "fired": int(len(fired)),
        "max_activation": round(float(values.max()), 4) if len(values) else 0.0,
        "histogram": {"edges": [round(float(e), 4) for e in hist_edges], "counts": counts.tolist()},
        "top": [context(text, column, r, browser) for r in top], "quantiles": quantiles, "logits": logits,
    }


def through_final_norm(model, directions: torch.Tensor) -> torch.Tensor:
    """Residual directions as the unembedding sees them, up to the norm's positive scale: centred if the
    final norm is a LayerNorm, times its weight if it has one (what folding the norm into W_U computes;
    our models are loaded unfolded)."""
    norm = model.ln_final
    if type(norm).__name__ in ("LayerNorm", "LayerNormPre"):
        directions = directions - directions.mean(-1, keepdim=True)
    weight = getattr(norm, "w", None)
    return directions * weight.float() if weight is not None else directions


LOGIT_CHUNK = 256  # features whose logits are computed at once ([chunk, vocab] floats)


@torch.no_grad()
def logit_effects(model, sae: CheckpointSAE, site: str, layer: int, features: np.ndarray, count: int,
                  token_text) -> list[dict]:
    """Per feature, the `count` tokens whose logits its decoder direction (normalised to 1, as SAEDashboard
    and Neuronpedia show it) raises and lowers the most, through the final norm and the unembedding."""
    effects = []
    for start in range(0, len(features), LOGIT_CHUNK):
        chosen = torch.as_tensor(np.asarray(features[start : start + LOGIT_CHUNK]), dtype=torch.long)
        directions = sae.tensors["W_dec"][chosen].float()  # [k, d_site]
        directions = directions / directions.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if site == "attn_z":  # z (heads concatenated) → the residual stream, through W_O
            W_O = model.blocks[layer].attn.W_O.float()  # [heads, d_head, d_model]
            directions = torch.einsum("khd,hdm->km", directions.reshape(len(chosen), *W_O.shape[:2]), W_O)
        logits = through_final_norm(model, directions) @ model.W_U.float()  # [k, vocab]
        up, down = torch.topk(logits, count, dim=-1), torch.topk(-logits, count, dim=-1)
        for values, indices, low_values, low_indices in zip(up.values, up.indices, down.values, down.indices):
            effects.append({
                "promoted": [[token_text(int(i)), round(float(v), 4)] for v, i in zip(values, indices)],
                "suppressed": [[token_text(int(i)), round(-float(v), 4)] for v, i in zip(low_values, low_indices)]})
    return effects


def sae_features(sae: CheckpointSAE, store: ActivationStore, text: HeldoutText, model, browser: BrowserConfig,
                 config: Config, features: Optional[np.ndarray] = None, count: Optional[int] = None) -> dict:
    """One SAE's browser data: its summary and the records of `features` (or `count` sampled ones)."""
    batch = config.evaluate.batch_rows
    threshold = sae.record.get("massive_norm_threshold")
    shards = lambda: heldout_shards(store, browser.heldout_tokens, threshold, text.development)  # noqa: E731
    scanned = scan(sae, shards(), batch)
    rng = np.random.default_rng([browser.seed, int(sae.checkpoint_id, 16) % (2**32)])
    if features is None:
        features = sample_features(scanned, count or browser.features, rng)
    columns = activations_of(sae, torch.as_tensor(features, dtype=torch.long), shards(), batch)
    record = sae.record
    effects = logit_effects(model, sae, record["site"], int(record["layer"]), features, browser.logit_tokens,
                            text.token_text)
    norms = decoder_norms(sae)
    return {
        "sae": record["sae"], "arch": record["arch"], **knob_fields(record["arch"], record), "width": sae.width,
        "site": record["site"], "layer": int(record["layer"]), "model": config.model.name,
        "checkpoint": str(sae.directory), "checkpoint_id": sae.checkpoint_id, "heldout_rows": scanned.rows,
        "l0": round(scanned.l0, 3), "alive": int((scanned.fired > 0).sum()), "dead": int((scanned.fired == 0).sum()),
        "units": {"activation": "model", "decoder_norm_min": round(float(norms.min()), 4),
                  "decoder_norm_max": round(float(norms.max()), 4)},
        "features": [feature_record(int(f), columns[:, i], scanned.rows, text, browser, rng, effects[i])
                     for i, f in enumerate(features)],
    }


def load_context(config: Config, site: str, layer: int, loaded=None):
    """(held-out store, its text with the windows development may read, the LM) for a site and layer."""
    from gatedsae.data.corpus import load_windows
    from gatedsae.data.models import load_model

    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "heldout")
    loaded = loaded or load_model(config.model, config.paths, config.evaluate.device)
    windows = np.asarray(load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "heldout"))
    if windows.shape[1] - 1 != store.manifest.positions_per_window:
        raise ValueError(f"the held-out windows ({windows.shape[1]} tokens) do not match the store "
                         f"({store.manifest.positions_per_window} positions per window); re-run tokenize and cache")
    development = development_windows(config)
    if development is not None and len(development) != len(windows):
        raise ValueError(f"the held-out split file marks {len(development)} windows, the held-out tokens hold "
                         f"{len(windows)}; re-run tokenize")
    return store, HeldoutText(windows, loaded.tokenizer.token_text, development), loaded
