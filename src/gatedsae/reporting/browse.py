"""The `browse` stage: per SAE of `browser.site`, a page of sampled features (reporting/browser.py) with an
index of every feature (reporting/feature_index.py), its JSON, and an index page of the site's SAEs."""

from __future__ import annotations

import json
from pathlib import Path

from gatedsae.activations.store import ActivationStore
from gatedsae.core.atomic import write_text_atomic
from gatedsae.evaluation.evaluate import CheckpointSAE
from gatedsae.plan.config import Config
from gatedsae.plan.layout import browser_dir
from gatedsae.reporting.browser import HeldoutText, heldout_shards, load_context, sae_features
from gatedsae.reporting.feature_index import IndexShape, index_features

INDEX_FILE = "index.html"
INDEX_SUFFIX = ".features.json"  # every feature of an SAE, compact (reporting/feature_index.py)


def browsed_checkpoints(config: Config, site: str, layer: int, archs: list[str], every_seed: bool = False) -> list[Path]:
    """The checkpoints of (site, layer)'s grids whose architecture is in `archs`, in grid order (not the
    every-token run's: its SAEs repeat the sweep's names), each SAE's first training seed only unless
    `every_seed` (the others differ from it by seed alone, and paging them was most of a replication's
    last chapter)."""
    from gatedsae.plan.grid import ALL_TOKENS_VARIANT, grid_indexes, read_trained_grid

    found = []
    for variant, index in grid_indexes(config, site, layer).items():
        if variant != ALL_TOKENS_VARIANT:
            found += [Path(e["path"]) for e in read_trained_grid(index, variant)
                      if e["arch"] in archs and (every_seed or "seed" not in e)]
    if not found:
        raise FileNotFoundError(f"no SAE of architecture {archs} in the grids of {site} layer {layer}; "
                                "check browser.archs")
    return found


def all_features(sae: CheckpointSAE, store: ActivationStore, text: HeldoutText, model, config: Config) -> dict:
    """Every feature of `sae`, compact (reporting/feature_index.py), for the page's index and search."""
    browser = config.browser
    shape = IndexShape(browser.index_examples, browser.context_before, browser.context_after, browser.logit_tokens)
    threshold = sae.record.get("massive_norm_threshold")
    shards = lambda: heldout_shards(store, browser.heldout_tokens, threshold, text.development)  # noqa: E731
    return index_features(sae, shards, text, model, shape, config.evaluate.batch_rows)


def browse(config: Config, loaded=None) -> Path:
    """Write `<results>/browser/<site>/layer<L>/`: per SAE `<sae>.json` and `<sae>.html`, then index.html."""
    from gatedsae.reporting.feature_html import index_page, sae_page

    site, layer, browser = config.browser.site, config.browser_layer, config.browser
    checkpoints = browsed_checkpoints(config, site, layer, browser.archs, browser.every_seed)
    store, text, loaded = load_context(config, site, layer, loaded)
    out = browser_dir(config)
    pages = []
    for directory in checkpoints:
        sae = CheckpointSAE.load(directory)
        data = sae_features(sae, store, text, loaded.model, browser, config)
        index = all_features(sae, store, text, loaded.model, config) if browser.all_features else None
        write_text_atomic(out / f"{data['sae']}.json", json.dumps(data, separators=(",", ":")) + "\n")
        if index is not None:
            write_text_atomic(out / f"{data['sae']}{INDEX_SUFFIX}", json.dumps(index, separators=(",", ":")) + "\n")
        write_text_atomic(out / f"{data['sae']}.html", sae_page(data, index))
        pages.append(data)
        print(f"{data['sae']}: {len(data['features'])} features (L0 {data['l0']:.1f}, {data['dead']} dead)", flush=True)
    write_text_atomic(out / INDEX_FILE, index_page(pages, config.experiment.name))
    return out / INDEX_FILE
