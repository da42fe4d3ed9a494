"""The feature browser: the data against the SAE and the model, and the page in a real headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import smoke_config
from gatedsae.activations import ActivationStore
from gatedsae.browser import browse, logit_effects
from gatedsae.evaluate import CheckpointSAE, evaluate_grid
from gatedsae.tables import aggregate
from gatedsae.train import train_grid

SITE, LAYER = "resid_post", 1


@pytest.fixture(scope="module")
def evaluated(smoke_cache, tiny_model, tmp_path_factory):
    """The smoke residual-stream grid trained, evaluated and aggregated, in a data dir of its own."""
    data = tmp_path_factory.mktemp("pages")
    for part in ("text", "tokens", "activations"):
        shutil.copytree(smoke_cache.paths.root / part, data / part)
    config = smoke_config(data, "browser.features=5", "sweep.rescale_shift=false")
    config = replace(config, experiment=replace(config.experiment, results_dir=str(data / "results")))
    train_grid(config, SITE, LAYER, progress=False)
    aggregate([evaluate_grid(config, SITE, LAYER, progress=False, loaded=tiny_model)], config.experiment.results)
    return config


@pytest.fixture(scope="module")
def browsed(evaluated, tiny_model) -> Path:
    return browse(evaluated, loaded=tiny_model)


def test_browser_data_is_what_the_sae_computes(evaluated, browsed, tiny_model):
    store = ActivationStore(evaluated.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout")
    rows = torch.cat([store.rows(i, None) for i in range(store.n_shards)])
    positions = store.manifest.positions_per_window
    pages = sorted(browsed.parent.glob("*.json"))
    assert {p.stem.split("_")[0] for p in pages} == {"gated", "baseline"}
    for page in pages:
        data = json.loads(page.read_text())
        sae = CheckpointSAE.load(data["checkpoint"])
        features = sae.encode(rows)
        assert data["l0"] == pytest.approx(float((features > 0).sum(-1).float().mean()), abs=1e-3)
        assert len(data["features"]) == 5
        for feature in data["features"]:
            column = features[:, feature["index"]].numpy()
            assert feature["density"] == pytest.approx((column > 0).mean())
            assert feature["max_activation"] == pytest.approx(column.max(), abs=1e-4)
            top = [example["value"] for example in feature["top"]]
            assert top == sorted(top, reverse=True) and top[0] == pytest.approx(column.max(), abs=1e-4)
            for example in feature["top"] + [e for q in feature["quantiles"] for e in q["examples"]]:
                row = example["window"] * positions + example["position"] - 1
                assert example["value"] == pytest.approx(column[row], abs=1e-4)
                assert example["activations"][example["focus"]] == pytest.approx(column[row], abs=1e-4)
            for q in feature["quantiles"]:
                assert all(q["low"] - 1e-4 <= e["value"] <= q["high"] + 1e-4 for e in q["examples"])
            direction = sae.tensors["W_dec"][feature["index"]] @ tiny_model.model.W_U
            expected = [tiny_model.tokenizer.token_text(int(i)) for i in torch.topk(direction, 10).indices]
            assert [token for token, _ in feature["logits"]["promoted"]] == expected


def test_attention_logit_effects_go_through_w_o(evaluated, tiny_model):
    d = evaluated.model.site_width("attn_z")
    eye = torch.eye(d)
    sae = CheckpointSAE(Path("."), {"architecture": "standard", "d_sae": d},
                        {"W_dec": eye, "W_enc": eye, "b_enc": torch.zeros(d), "b_dec": torch.zeros(d)},
                        {"site": "attn_z", "layer": LAYER})
    effects = logit_effects(tiny_model.model, sae, "attn_z", LAYER, np.array([5]), 3, str)
    W_O = tiny_model.model.blocks[LAYER].attn.W_O  # feature 5 is head 0, dimension 5 of z
    expected = torch.topk(W_O[0, 5] @ tiny_model.model.W_U, 3)
    assert [int(t) for t, _ in effects[0]["promoted"]] == expected.indices.tolist()


def _chromium(tmp_path):
    from headless import Chromium

    return Chromium(tmp_path / "profile")


def test_the_browser_renders_in_headless_chromium(browsed, tmp_path):
    page = sorted(browsed.parent.glob("gated_*.html"))[0]
    browser = _chromium(tmp_path)
    try:
        browser.open(page.as_uri())
        assert browser.evaluate("document.querySelectorAll('section.feature').length") == 5
        assert browser.evaluate("document.querySelectorAll('section.feature svg.hist rect').length") == 5 * 20
        assert browser.evaluate("document.querySelectorAll('.ctx span.f').length") > 5, "activating tokens marked"
        shaded = browser.evaluate("getComputedStyle(document.querySelector('.ctx span.f')).backgroundColor")
        assert shaded.startswith("rgba(255, 110, 0") or shaded.startswith("rgb(255, 110, 0"), shaded
        assert browser.evaluate("[...document.images].length + document.querySelectorAll('link,script[src]').length") == 0
        screenshot = browser.screenshot(tmp_path / "feature-browser.png")
        assert screenshot.stat().st_size > 10_000
        if os.environ.get("GATEDSAE_SCREENSHOT_DIR"):  # to refresh docs/img
            shutil.copy(screenshot, Path(os.environ["GATEDSAE_SCREENSHOT_DIR"]) / "feature-browser-smoke.png")
        browser.open(browsed.as_uri())
        assert browser.evaluate("document.querySelectorAll('table.saes a').length") == len(list(browsed.parent.glob("*.json")))
        assert not browser.page_errors()
    finally:
        browser.close()
