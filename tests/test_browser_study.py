"""The feature browser and the blinded interpretability study: the data against the SAE and the model, the
pages in a real headless Chromium (rendering, blinding, ratings saved to a downloaded file and kept across a
reload), and the study's analysis end to end on synthetic ratings."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED, copy_data

from gatedsae.activations.store import ActivationStore
from gatedsae.core.errors import InputError
from gatedsae.data.corpus import heldout_parts
from gatedsae.evaluation.evaluate import CheckpointSAE, evaluate_grid
from gatedsae.plan.layout import ANALYSIS_MARKDOWN, HELDOUT_SPLITS, KEY_FILE, VALIDATION, study_dir
from gatedsae.reporting.browse import INDEX_SUFFIX, browse
from gatedsae.reporting.browser import logit_effects
from gatedsae.reporting.feature_index import feature_view
from gatedsae.reporting.study import analyse, analyse_study, build_study, read_ratings
from gatedsae.reporting.tables import aggregate
from gatedsae.training.stages import train_grid

SITE, LAYER = "resid_post", 1


@pytest.fixture(scope="module")
def evaluated(smoke_trained, tiny_model, tmp_path_factory):
    """The smoke residual-stream grid (the session's, copied: training finds it finished), evaluated and
    aggregated, in a data dir of its own."""
    data = tmp_path_factory.mktemp("pages")
    config = copy_data(smoke_trained, data, TRAINED, "browser.features=5", "study.features_per_sae=12",
                       f"study.sites=[{SITE}]", "study.bootstrap=2000", "sweep.rescale_shift=false")
    config = replace(config, experiment=replace(config.experiment, results_dir=str(data / "results")))
    train_grid(config, SITE, LAYER, progress=False)
    aggregate([evaluate_grid(config, SITE, LAYER, progress=False, loaded=tiny_model)], config.experiment.results,
              split="validation")  # development's tables, as the aggregate stage writes them
    return config


@pytest.fixture(scope="module")
def browsed(evaluated, tiny_model) -> Path:
    return browse(evaluated, loaded=tiny_model)


def development_rows(config, store: ActivationStore) -> torch.Tensor:
    """Per row of the held-out store, whether its window is in the validation split (the only one the
    browser and the study may read)."""
    parts = heldout_parts(config.paths.tokens_dir("tiny", "tiny"))
    assert parts is not None and set(parts.tolist()) == {0, 1}, "smoke splits its held-out windows"
    rows = np.arange(len(store)) // store.manifest.positions_per_window
    return torch.as_tensor(parts[rows] == HELDOUT_SPLITS.index(VALIDATION))


def test_browser_data_is_what_the_sae_computes(evaluated, browsed, tiny_model):
    """L0, density, maxima and every example shown, from the validation split's rows only: no example
    comes from a test window and no statistic counts one."""
    store = ActivationStore(evaluated.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout")
    kept = development_rows(evaluated, store)
    rows = torch.cat([store.rows(i, None) for i in range(store.n_shards)])
    positions = store.manifest.positions_per_window
    test_windows = set((np.flatnonzero(~kept.numpy()) // positions).tolist())
    pages = sorted(p for p in browsed.parent.glob("*.json") if not p.name.endswith(INDEX_SUFFIX))
    assert {p.stem.split("_")[0] for p in pages} == {"gated", "baseline"}
    for page in pages:
        data = json.loads(page.read_text())
        sae = CheckpointSAE.load(data["checkpoint"])
        norms = sae.tensors["W_dec"].norm(dim=-1)
        features = sae.encode(rows) * norms * kept[:, None]  # model's units: the decoder rows' scale folded back
        assert data["units"]["decoder_norm_max"] == pytest.approx(float(norms.max()), abs=1e-3)
        assert data["heldout_rows"] == int(kept.sum()) < len(rows)
        assert data["l0"] == pytest.approx(float((features[kept] > 0).sum(-1).float().mean()), abs=1e-3)
        assert len(data["features"]) == 5
        for feature in data["features"]:
            column = features[:, feature["index"]].numpy()
            assert feature["density"] == pytest.approx((column > 0).sum() / int(kept.sum()))
            assert feature["max_activation"] == pytest.approx(column.max(), abs=1e-4)
            top = [example["value"] for example in feature["top"]]
            assert top == sorted(top, reverse=True) and top[0] == pytest.approx(column.max(), abs=1e-4)
            for example in feature["top"] + [e for q in feature["quantiles"] for e in q["examples"]]:
                assert example["window"] not in test_windows, "the browser showed text of the test split"
                row = example["window"] * positions + example["position"] - 1
                assert example["value"] == pytest.approx(column[row], abs=1e-4)
                assert example["activations"][example["focus"]] == pytest.approx(column[row], abs=1e-4)
            for q in feature["quantiles"]:
                assert all(q["low"] - 1e-4 <= e["value"] <= q["high"] + 1e-4 for e in q["examples"])
            ln = tiny_model.model.ln_final  # the tiny model's final LayerNorm, folded in by hand
            decoder = sae.tensors["W_dec"][feature["index"]]
            direction = ((decoder - decoder.mean()) * ln.w) @ tiny_model.model.W_U
            expected = [tiny_model.tokenizer.token_text(int(i)) for i in torch.topk(direction, 10).indices]
            assert [token for token, _ in feature["logits"]["promoted"]] == expected


def test_every_feature_is_indexed_as_the_sae_computes_it(evaluated, browsed, tiny_model):
    """The compact index behind 'open any feature': density, firing count, maximum and histogram of every
    feature in the model's units, its top examples one per window in order, and logit effects along the
    unit decoder direction."""
    store = ActivationStore(evaluated.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout")
    kept = development_rows(evaluated, store)
    rows = torch.cat([store.rows(i, None) for i in range(store.n_shards)])
    positions = store.manifest.positions_per_window
    test_windows = set((np.flatnonzero(~kept.numpy()) // positions).tolist())
    for path in sorted(browsed.parent.glob(f"*{INDEX_SUFFIX}")):
        index = json.loads(path.read_text())
        page = json.loads(path.with_name(path.name.replace(INDEX_SUFFIX, ".json")).read_text())
        sae = CheckpointSAE.load(page["checkpoint"])
        norms = sae.tensors["W_dec"].norm(dim=-1)
        activations = (sae.encode(rows) * norms * kept[:, None]).numpy()
        assert len(index["features"]) == sae.width and index["rows"] == int(kept.sum())
        assert index["windows"] == len(set(range(len(rows) // positions)) - test_windows)
        for number in range(sae.width):
            feature, column = feature_view(index, number), activations[:, number]
            assert feature["index"] == number and feature["fired"] == int((column > 0).sum())
            assert feature["density"] == pytest.approx((column > 0).sum() / int(kept.sum()), abs=1e-6)
            assert not {e["window"] for e in feature["examples"]} & test_windows, "the index showed the test split"
            assert feature["max_activation"] == pytest.approx(column.max(), abs=1e-3)
            assert sum(feature["histogram"]) == feature["fired"]
            values = [e["activations"][e["focus"]] for e in feature["examples"]]
            assert values == sorted(values, reverse=True) and len({e["window"] for e in feature["examples"]}) == len(values)
            assert len(values) == min(evaluated.browser.index_examples, len({r // positions for r in np.flatnonzero(column)}))
            for example in feature["examples"]:
                row = example["window"] * positions + example["position"] - 1
                assert example["activations"][example["focus"]] == pytest.approx(column[row], abs=2e-3)
                window_max = column[example["window"] * positions:(example["window"] + 1) * positions].max()
                assert column[row] == pytest.approx(window_max, abs=1e-4)  # the window's highest activation
        sampled = page["features"][0]
        indexed = feature_view(index, sampled["index"])
        assert [t for t, _ in indexed["promoted"]] == [t for t, _ in sampled["logits"]["promoted"]][: len(indexed["promoted"])]


def test_attention_logit_effects_go_through_w_o(evaluated, tiny_model):
    d = evaluated.model.site_width("attn_z")
    eye = torch.eye(d)
    sae = CheckpointSAE(Path("."), {"architecture": "standard", "d_sae": d},
                        {"W_dec": eye, "W_enc": eye, "b_enc": torch.zeros(d), "b_dec": torch.zeros(d)},
                        {"site": "attn_z", "layer": LAYER})
    effects = logit_effects(tiny_model.model, sae, "attn_z", LAYER, np.array([5]), 3, str)
    W_O = tiny_model.model.blocks[LAYER].attn.W_O  # feature 5 is head 0, dimension 5 of z
    resid = W_O[0, 5]
    expected = torch.topk(((resid - resid.mean()) * tiny_model.model.ln_final.w) @ tiny_model.model.W_U, 3)
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
        pages = [p for p in browsed.parent.glob("*.json") if not p.name.endswith(INDEX_SUFFIX)]
        assert browser.evaluate("document.querySelectorAll('table.saes a').length") == len(pages)
        assert not browser.page_errors()
    finally:
        browser.close()


def test_any_feature_opens_by_index_and_features_search_and_sort_in_headless_chromium(browsed, tmp_path):
    page = sorted(browsed.parent.glob("baseline_*.html"))[0]
    index = json.loads(page.with_name(page.stem + INDEX_SUFFIX).read_text())
    at = {name: i for i, name in enumerate(index["fields"])}
    browser = _chromium(tmp_path)
    try:
        browser.open(page.as_uri())
        assert browser.evaluate("document.body.dataset.explorer") == "ready"
        width = len(index["features"])
        assert browser.evaluate("document.querySelectorAll('#feature-rows tr').length") == min(width, 200)
        # open a feature by its number, through the form: its card, with both histogram axes
        number = width - 1
        browser.evaluate(f"document.getElementById('feature-number').value = {number}; "
                         "document.getElementById('feature-open').requestSubmit(); new Promise(r => setTimeout(r, 200))")
        assert browser.evaluate("location.hash") == f"#feature={number}"
        assert browser.evaluate("document.querySelector('#opened h2').textContent") == f"Feature {number}"
        labels = browser.evaluate("[...document.querySelectorAll('#opened svg.hist text')].map(t => t.textContent)")
        assert "activation (model units)" in labels and "tokens" in labels
        shown = browser.evaluate("document.querySelectorAll('#opened ol.examples li').length")
        assert shown == len(index["features"][number][at["examples"]])
        # sorted by max activation, then by density (the default): the listed order is the data's
        def listed():
            return browser.evaluate("[...document.querySelectorAll('#feature-rows tr')].map(r => +r.dataset.index)")
        browser.evaluate("const s = document.getElementById('feature-sort'); s.value = 'max_activation'; "
                         "s.dispatchEvent(new Event('change'))")
        maxima = [index["features"][i][at["max_activation"]] for i in listed()]
        assert maxima == sorted(maxima, reverse=True) and len(maxima) == min(width, 200)
        # search by a token the features fire on: exactly the features with it among their top tokens
        token = index["tokens"][index["features"][0][at["examples"]][0][1][index["features"][0][at["examples"]][0][0]]]
        query = token.strip() or token
        browser.evaluate(f"const q = document.getElementById('feature-search'); q.value = {json.dumps(query)}; "
                         "q.dispatchEvent(new Event('input'))")
        expected = {i for i, f in enumerate(index["features"])
                    if any(query.lower() in index["tokens"][e[1][e[0]]].strip().lower() for e in f[at["examples"]])}
        assert set(listed()) == expected and 0 in expected
        browser.screenshot(tmp_path / "explorer.png", full_page_height=1400)
        if os.environ.get("GATEDSAE_SCREENSHOT_DIR"):
            shutil.copy(tmp_path / "explorer.png", Path(os.environ["GATEDSAE_SCREENSHOT_DIR"]) / "feature-explorer-smoke.png")
        assert not browser.page_errors()
    finally:
        browser.close()


def synthetic_rating(key: dict, identifier: str, rng: np.random.Generator, gated_yes: float, baseline_yes: float) -> str:
    p_yes = gated_yes if key["features"][identifier]["arch"] == "gated" else baseline_yes
    return str(rng.choice(["yes", "maybe", "no"], p=[p_yes, (1 - p_yes) / 2, (1 - p_yes) / 2]))


@pytest.fixture(scope="module")
def study(evaluated, tiny_model) -> Path:
    return build_study(evaluated, loaded=tiny_model)


def test_the_rating_page_is_blinded(evaluated, study):
    key = json.loads((study_dir(evaluated) / KEY_FILE).read_text())
    page = study.read_text()
    assert len(key["features"]) == 24 and {e["arch"] for e in key["features"].values()} == {"gated", "baseline"}
    pairs = {}
    for entry in key["features"].values():
        pairs.setdefault(entry["pair"], []).append(entry["arch"])
    assert all(sorted(archs) == ["baseline", "gated"] for archs in pairs.values()), "each pair: one of each"
    for leak in ["Gated", "Baseline", "gated_w", "baseline_w", "checkpoint", "λ", *{
            e["checkpoint_id"] for e in key["features"].values()}]:
        assert leak not in page, f"the rating page gives away {leak!r}"
    assert not re.search(r"Feature \d|id=\"f\d", page), "a feature's index would betray the wider baseline"
    order = [entry["arch"] for entry in key["features"].values()]
    assert order != sorted(order) and order != sorted(order, reverse=True), "shuffled"


def test_the_study_reads_no_row_of_the_test_split(evaluated, tiny_model, tmp_path, monkeypatch):
    """Every held-out row the study's features are computed on lies in a validation window: rows of the
    test split are read from the store (windows interleave) but always left out."""
    import gatedsae.reporting.browser as browser_module

    store = ActivationStore(evaluated.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout")
    allowed = development_rows(evaluated, store)
    used, passes = torch.zeros(len(store), dtype=torch.bool), []
    original = browser_module.heldout_shards

    def watched(*args, **kwargs):
        start = 0
        for rows, kept in original(*args, **kwargs):
            used[start : start + len(rows)] |= kept
            start += len(rows)
            yield rows, kept
        passes.append(start)

    monkeypatch.setattr(browser_module, "heldout_shards", watched)
    config = replace(evaluated, experiment=replace(evaluated.experiment, results_dir=str(tmp_path / "results")))
    shutil.copytree(evaluated.experiment.results, config.experiment.results)
    build_study(config, loaded=tiny_model)
    assert passes and used.any(), "the study computed its features from the held-out store"
    assert not (used & ~allowed).any(), "the study read rows of the test split"


def test_ratings_are_saved_to_a_downloaded_file_and_kept_across_a_reload(evaluated, study, tmp_path):
    key = json.loads((study_dir(evaluated) / KEY_FILE).read_text())
    rng = np.random.default_rng(1)
    chosen = {identifier: synthetic_rating(key, identifier, rng, 0.8, 0.3) for identifier in list(key["features"])[:-2]}
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser = _chromium(tmp_path)
    try:
        browser.allow_downloads(downloads)
        browser.open(study.as_uri())
        assert browser.evaluate("document.body.dataset.ready") == "true"
        assert browser.evaluate("document.querySelectorAll('fieldset.rating').length") == len(key["features"])
        browser.evaluate("document.getElementById('rater').value = 'Rater One';"
                         "document.getElementById('rater').dispatchEvent(new Event('input', {bubbles: true}))")
        for identifier, rating in chosen.items():
            browser.evaluate(f"document.querySelector('input[name=\"{identifier}\"][value=\"{rating}\"]').click()")
        browser.evaluate("document.querySelector('input.note[data-id=\"F001\"]').value = 'commas';"
                         "document.querySelector('input.note[data-id=\"F001\"]').dispatchEvent(new Event('input', {bubbles: true}))")
        progress = f"{len(chosen)} of {len(key['features'])} rated"
        assert browser.evaluate("document.querySelector('.progress').textContent") == progress
        browser.evaluate("document.querySelector('button.download').click()")
        browser.wait_for_download()
        (saved,) = downloads.glob("ratings-Rater_One-*.json")
        data = json.loads(saved.read_text())
        assert data["study"] == key["study"] and data["rater"] == "Rater One"
        assert data["ratings"] == chosen and data["notes"] == {"F001": "commas"}
        browser.open(study.as_uri())  # a reload: the ratings come back from the browser's storage
        assert browser.evaluate("document.querySelector('.progress').textContent") == progress
        assert browser.evaluate("document.getElementById('rater').value") == "Rater One"
        assert not browser.page_errors()
        if os.environ.get("GATEDSAE_SCREENSHOT_DIR"):
            browser.screenshot(Path(os.environ["GATEDSAE_SCREENSHOT_DIR"]) / "rating-page-smoke.png")
    finally:
        browser.close()
    assert read_ratings([saved], key)["rating"].tolist() == list(chosen.values())


def _write_raters(directory: Path, key: dict, gated_yes: float, baseline_yes: float, raters: int = 3) -> list[Path]:
    rng = np.random.default_rng(7)
    paths = []
    for r in range(raters):
        ratings = {i: synthetic_rating(key, i, rng, gated_yes, baseline_yes) for i in key["features"]}
        path = directory / f"rater{r}.json"
        path.write_text(json.dumps({"study": key["study"], "rater": f"r{r}", "ratings": ratings}))
        paths.append(path)
    return paths


def test_the_analysis_unblinds_synthetic_ratings_and_finds_a_real_difference(evaluated, study, tmp_path):
    from gatedsae.cli.main import main

    key = json.loads((study_dir(evaluated) / KEY_FILE).read_text())
    better = _write_raters(tmp_path, key, gated_yes=0.9, baseline_yes=0.2)
    overrides = ["experiment=smoke", f"paths.data={evaluated.paths.data}", f"study.sites=[{SITE}]",
                 f"+experiment.results_dir={evaluated.experiment.results}",
                 "study.ratings=[" + ",".join(map(str, better)) + "]"]
    assert main(["study-analysis", *overrides]) == 0
    result = json.loads((study_dir(evaluated) / "analysis.json").read_text())
    comparison = result["gated_minus_baseline"]
    assert comparison["pairs"] == 12 and result["raters"] == ["r0", "r1", "r2"]
    assert comparison["ci_low"] > 0 and comparison["p_value"] < 0.01
    assert result["per_architecture"]["gated"]["fraction_yes"] > result["per_architecture"]["baseline"]["fraction_yes"]
    assert "Gated − baseline" in (study_dir(evaluated) / ANALYSIS_MARKDOWN).read_text()

    same = analyse(key, read_ratings(_write_raters(tmp_path, key, 0.5, 0.5), key), 2000, 0.95, 0)
    null = same["gated_minus_baseline"]
    assert null["ci_low"] < 0 < null["ci_high"] and null["p_value"] > 0.05


def test_hand_computed_analysis_and_bad_rating_files(evaluated, study, tmp_path):
    key = json.loads((study_dir(evaluated) / KEY_FILE).read_text())
    ids = {arch: [i for i, e in key["features"].items() if e["arch"] == arch] for arch in ("gated", "baseline")}
    pair_of = {i: e["pair"] for i, e in key["features"].items()}
    baseline_by_pair = {pair_of[i]: i for i in ids["baseline"]}
    first = ids["gated"][0]
    ratings = {first: "yes", baseline_by_pair[pair_of[first]]: "maybe"}  # one complete pair: +0.5
    path = tmp_path / "one.json"
    path.write_text(json.dumps({"study": key["study"], "rater": "a", "ratings": ratings}))
    result = analyse(key, read_ratings([path], key), 200, 0.9, 0)
    assert result["gated_minus_baseline"]["pairs"] == 1 and result["gated_minus_baseline"]["mean_difference"] == 0.5
    assert result["per_architecture"]["baseline"]["counts"] == {"no": 0, "maybe": 1, "yes": 0}
    for bad, message in (({"study": "other"}, "another build"), ({"ratings": {first: "great"}}, "the scale is"),
                         ({"ratings": {"F999": "yes"}}, "not a feature")):
        path.write_text(json.dumps({"study": key["study"], "rater": "a", "ratings": {}, **bad}))
        with pytest.raises(InputError, match=message):
            read_ratings([path], key)
    with pytest.raises(Exception, match="study.ratings"):
        analyse_study(evaluated, ratings=[])


MALFORMED_RATINGS = {  # what a rater's file may turn out to be, and what the refusal says
    "not-json": (b'{"study": "s", "ratings": {"F001": "yes"', "not valid JSON"),
    "empty": (b"", "not valid JSON"),
    "binary": (b"\xff\xfe\x00\x01PNG", "not a text file"),
    "a-list": (b'[{"F001": "yes"}]', "holds a JSON list"),
    "a-string": (b'"yes"', "holds a JSON str"),
    "ratings-a-list": (b'{"study": "s", "ratings": ["yes"]}', "'ratings' is a JSON list"),
    "rating-a-list": (b'{"study": "s", "ratings": {"F001": ["yes"]}}', "rating ['yes'] for F001"),
    "rating-a-number": (b'{"study": "s", "ratings": {"F001": 1}}', "rating 1 for F001"),
    "rater-a-number": (b'{"study": "s", "rater": 7, "ratings": {"F001": "yes"}}', "'rater' is 7"),
    "no-ratings": (b'{"study": "s", "ratings": {}}', "no ratings in"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_RATINGS))
def test_a_malformed_ratings_file_is_refused_naming_it(case, tmp_path):
    content, message = MALFORMED_RATINGS[case]
    path = tmp_path / f"{case}.json"
    path.write_bytes(content)
    key = {"study": "s", "features": {"F001": {"arch": "gated", "site": "resid_post", "pair": 0}}}
    with pytest.raises(InputError, match=re.escape(message)) as error:
        read_ratings([path], key)
    assert str(path) in str(error.value)
    for missing in (tmp_path / "absent.json", tmp_path):
        with pytest.raises(InputError, match=re.escape(str(missing))):
            read_ratings([missing], key)


def test_the_neuronpedia_export_holds_the_browsers_data(evaluated, browsed, tmp_path):
    """One Neuronpedia source per browsed SAE: its model, release, source-set and source records, and every
    feature and top example of the index, with the browser's values."""
    import gzip

    from gatedsae.cli.main import main

    out = tmp_path / "neuronpedia"
    assert main(["export-neuronpedia", "experiment=smoke", f"paths.data={evaluated.paths.root}", f"--out={out}",
                 f"experiment.results_dir={evaluated.experiment.results}", "--release=smoke-test"]) == 0
    sources = sorted(p for p in (out / "tiny").iterdir())
    indexes = sorted(browsed.parent.glob(f"*{INDEX_SUFFIX}"))
    assert len(sources) == len(indexes) and all(s.name.startswith(f"{LAYER}-gatedsae-resid-post-") for s in sources)
    for path in indexes:
        index = json.loads(path.read_text())
        sae = path.name.removesuffix(INDEX_SUFFIX)
        (source,) = [s for s in sources if s.name.endswith(re.sub(r"[^a-z0-9]+", "-", sae))]
        for name in ("model.jsonl", "release.jsonl", "sourceset.jsonl", "source.jsonl"):
            (record,) = [json.loads(line) for line in (source / name).read_text().splitlines()]
        assert record["id"] == source.name and record["num_prompts"] == index["windows"]
        features = [json.loads(line) for line in gzip.decompress((source / "features/batch-0.jsonl.gz").read_bytes()).splitlines()]
        activations = [json.loads(line) for line in gzip.decompress((source / "activations/batch-0.jsonl.gz").read_bytes()).splitlines()]
        assert [int(f["index"]) for f in features] == list(range(len(index["features"])))
        for feature in features:
            view = feature_view(index, int(feature["index"]))
            assert feature["frac_nonzero"] == view["density"] and feature["maxActApprox"] == view["max_activation"]
            assert feature["pos_str"] == [t for t, _ in view["promoted"]] and feature["layer"] == source.name
            assert feature["freq_hist_data_bar_heights"] == view["histogram"]
        assert len(activations) == sum(len(feature_view(index, i)["examples"]) for i in range(len(index["features"])))
        first = feature_view(index, int(activations[0]["index"]))["examples"][0]
        assert activations[0]["values"] == first["activations"] and activations[0]["maxValueTokenIndex"] == first["focus"]
        assert activations[0]["tokens"] == first["tokens"] and len({a["id"] for a in activations}) == len(activations)


def test_the_browser_pages_each_saes_first_training_seed_unless_asked_for_every_seed(tmp_path, monkeypatch):
    """The extra training seeds' SAEs differ from the first only by seed: paging them too (every_seed) was
    most of a replication's last chapter, so by default only the first seed of each gets a page."""
    import gatedsae.plan.grid as grid
    from gatedsae.plan.config import load_config
    from gatedsae.reporting.browse import browsed_checkpoints

    entries = {"sweep": [{"arch": "gated", "path": "g"}, {"arch": "gated", "path": "g1", "seed": 1},
                         {"arch": "baseline", "path": "b"}, {"arch": "baseline", "path": "b2", "seed": 2},
                         {"arch": "topk", "path": "t"}],
               grid.ALL_TOKENS_VARIANT: [{"arch": "gated", "path": "every-token"}]}
    monkeypatch.setattr(grid, "grid_indexes", lambda config, site, layer: {v: Path(v) for v in entries})
    monkeypatch.setattr(grid, "read_trained_grid", lambda index, variant: entries[variant])
    config = load_config(["experiment=smoke"])
    assert config.browser.every_seed is False
    archs = ["gated", "baseline"]
    assert browsed_checkpoints(config, "resid_post", 1, archs) == [Path("g"), Path("b")]
    assert browsed_checkpoints(config, "resid_post", 1, archs, every_seed=True) == [Path(p) for p in ("g", "g1", "b", "b2")]
