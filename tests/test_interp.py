"""The automatic interpretability measures' parts: labels read off the text and the vocabulary, the probing
tasks (balanced, split by document), the matched-L0 rule, the bootstrap over seeds and examples, absorption
scored on planted latents, and the verdict's section (a proxy, never a claim)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from gatedsae.data.models import ByteTokenizer
from gatedsae.evaluation.interp import SplitRows, WordRows, build_tasks, matched_pairs, score
from gatedsae.evaluation.interp_data import Documents, first_letter_words, token_labels, word_parts, word_prompts
from gatedsae.plan.config import load_config
from gatedsae.plan.interp import outputs, runs, verdict_summary
from gatedsae.reporting.interp import bootstrap_means, verdict_section


def test_token_classes_are_read_off_each_token_text():
    labels = token_labels([" The", "42", ",", "apple", " x"], ["digit", "punctuation", "capitalised", "space_led",
                                                                "vowel_led"])
    assert labels.tolist() == [[False, False, True, True, False], [True, False, False, False, False],
                               [False, True, False, False, False], [False, False, False, False, True],
                               [False, False, False, True, False]]


def test_first_letter_words_come_from_the_vocabulary():
    words = first_letter_words(ByteTokenizer(), min_length=1, max_words=100)
    assert (ord("a"), "a") in words and (ord("Q"), "q") in words and len(words) == 52
    assert all(chr(token).isalpha() for token, _ in words)
    assert first_letter_words(ByteTokenizer(), min_length=2, max_words=100) == []  # bytes are one letter long
    prompt = word_prompts(ByteTokenizer(), [(ord("s"), "s")], "{word}:")[0]
    assert prompt == [256, ord("s"), ord(":")]  # BOS, the word (read at position 1), the template's rest
    parts = word_parts(words, 0.5, seed=0)
    assert set(parts) == {0, 1, 2} and abs((parts == 0).mean() - 0.5) < 0.2


def _documents(n: int = 40) -> tuple[Documents, list[list[str]]]:
    sources = ["a" if i % 2 else "b" for i in range(n)]
    probe_train = np.array([i % 5 < 3 for i in range(n)])
    texts = [["<bos>", " The", "1", ",", " cat"] for _ in range(n)]
    return Documents(sources, probe_train, [[256, 1, 2, 3, 4]] * n), texts


def test_tasks_are_balanced_and_split_by_document():
    config = load_config(["experiment=smoke", "interp.probing.min_documents_per_class=2",
                          "interp.probing.token_classes=[digit,space_led]"])
    documents, texts = _documents()
    tasks, positions = build_tasks(documents, texts, config)
    names = [task.name for task in tasks]
    assert names == ["source:a", "source:b", "token:digit", "token:space_led"]
    for task in tasks:
        assert task.train_labels.mean() == 0.5 and task.test_labels.mean() == 0.5  # balanced
        rows_document = (lambda rows: rows) if task.kind == "documents" else (lambda rows: positions[rows, 0])
        assert documents.probe_train[rows_document(task.train)].all()
        assert not documents.probe_train[rows_document(task.test)].any()  # no document on both sides
    one_source = Documents(["a"] * 40, documents.probe_train, documents.tokens)
    assert all(task.kind == "tokens" for task in build_tasks(one_source, texts, config)[0])


def test_the_matched_pair_is_nearest_the_level_and_flagged_when_too_far_apart():
    frame = pd.DataFrame([{"arch": arch, "sae": f"{arch}{l0}_{seed}", "seed": seed, "l0": float(l0),
                           "loss_recovered": 0.9, "checkpoint_id": "x"}
                          for arch, l0s in (("gated", (10, 30, 90)), ("baseline", (20, 60, 180)))
                          for l0 in l0s for seed in (0, 1)])
    found = matched_pairs(frame, 50.0, max_ratio=1.5)
    assert [(p["gated"]["sae"], p["baseline"]["sae"], p["matched"]) for p in found["pairs"]] == [
        ("gated30_0", "baseline60_0", False), ("gated30_1", "baseline60_1", False)]
    assert found["pairs"][0]["l0_ratio"] == pytest.approx(2.0)
    middle = matched_pairs(frame, None, max_ratio=2.0)  # overlap 20..90: its geometric middle, √1800 ≈ 42
    assert middle["rule"] == "overlap_midpoint" and middle["target_l0"] == pytest.approx(1800**0.5)
    assert all(p["matched"] for p in middle["pairs"])
    assert matched_pairs(frame[frame["arch"] == "gated"], None, max_ratio=2.0)["pairs"] == []  # no baseline: no pair


def test_bootstrap_intervals_cover_seeds_and_examples():
    rng = np.random.default_rng(0)
    right = [np.ones((3, 50))]
    wrong = [np.zeros((3, 50))]
    found = bootstrap_means({"gated": right, "baseline": wrong}, 200, 0.95, rng)
    assert found["difference"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    noisy = [rng.random((3, 200)) < 0.7]
    same = bootstrap_means({"gated": noisy, "baseline": noisy}, 500, 0.95, rng)
    assert same["difference"]["low"] <= 0 <= same["difference"]["high"]  # identical scores: no difference
    assert same["gated"]["low"] < 0.7 < same["gated"]["high"]
    seeds_apart = [np.vstack([np.ones(100), np.zeros(100)])]  # one seed always right, one always wrong
    spread = bootstrap_means({"gated": seeds_apart}, 500, 0.95, rng)["gated"]
    assert spread["low"] == 0.0 and spread["high"] == 1.0  # the seeds' spread is in the interval


class _PlantedSAE:
    """Latent 0 fires on letter 'a' words except the last four, where latent 1 (pointing along 'a' too)
    fires instead: those four words are absorbed."""

    def __init__(self, d: int):
        direction = torch.zeros(d)
        direction[0] = 1
        decoder = torch.randn(6, d, generator=torch.Generator().manual_seed(0)) * 0.01
        decoder[0], decoder[1] = direction, direction
        self.tensors = {"W_dec": decoder}
        self.absorbed_rows = set()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        features = torch.zeros(len(x), 6)
        carries = x[:, 0] > 0.5
        absorbed = carries & (x[:, 1] > 0.5)
        features[carries & ~absorbed, 0] = x[carries & ~absorbed, 0]
        features[absorbed, 1] = x[absorbed, 0]
        features[:, 2:] = torch.relu(x[:, 2:6])
        return features


def test_absorption_on_planted_latents_counts_the_absorbed_words():
    config = load_config(["experiment=smoke", "interp.probing.ks=[1]"])
    generator = torch.Generator().manual_seed(1)
    letters = np.array(["a"] * 30 + ["b"] * 30)
    x = torch.randn(60, 8, generator=generator) * 0.1
    x[:30, 0] += 1.0  # the letter 'a' direction
    parts = np.array([0, 1, 2] * 20)
    x[30:, 2] += 1.0
    absorbed = np.flatnonzero((letters == "a") & (parts == 1))[-4:]
    x[absorbed, 1] += 1.0  # these 'a' words fire the absorbing latent instead of the main one
    sae = _PlantedSAE(8)
    direction = torch.zeros(8)
    direction[0] = 1
    words = WordRows(x, letters, parts, {"a": direction},
                     {("a", "validation"): np.flatnonzero((letters == "a") & (parts == 1))})
    rows = SplitRows([], torch.zeros(0, 8), [])
    found = score(sae, {"validation": rows}, words, config)["validation"]["absorption"]["a"]
    assert found["main"] == [0] and found["rows"] == 10
    assert found["absorption_rate"] == pytest.approx(4 / 10) and found["false_negative_rate"] == pytest.approx(4 / 10)
    assert np.flatnonzero(found["absorbed"]).tolist() == [6, 7, 8, 9]


def test_the_stage_runs_with_the_headline_and_the_verdict_reads_the_test_split():
    config = load_config(["experiment=smoke"])
    assert runs(config) and runs(load_config(["experiment=default", "experiment.chapter=headline"]))
    assert not runs(load_config(["experiment=smoke", "interp.enabled=false"]))
    assert not runs(load_config(["experiment=smoke", "experiment.through=evaluate"]))
    assert verdict_summary(config) == outputs(config)["test_summary"] and "/test/interp/" in verdict_summary(config)


def test_the_verdict_section_is_labelled_a_proxy():
    assert "NOT MEASURED" in "\n".join(verdict_section(None))
    pair = {"seed": 0, "l0_ratio": 3.0, "matched": False, "gated": {"l0": 10.0}, "baseline": {"l0": 30.0}}
    summary = {"split": "test", "confidence": 0.95, "sites": {"resid_post/layer1": {
        "status": "NOT MEASURED: too far apart", "matched": {"pairs": [pair]}}}}
    text = "\n".join(verdict_section(summary))
    assert "PROXY for the paper's third claim" in text and "not counted among the paper's claims" in text
    assert "NOT MEASURED: too far apart" in text and "(unmatched)" in text


def test_an_edited_summary_is_named_and_its_stage_rerun(tmp_path):
    from gatedsae.plan.health import record_outputs, repair

    config = load_config(["experiment=smoke", f"experiment.results_dir={tmp_path}",
                          f"experiment.figures_dir={tmp_path / 'figures'}"])
    files = outputs(config)
    for path in files.values():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("{}")
    record_outputs(config, "interp")
    assert repair(config) == []
    (tmp_path / files["test_summary"]).write_text('{"edited": true}')
    lines = repair(config)
    assert len(lines) == 1 and "test/interp/summary.json does not match" in lines[0] and "rule interp" in lines[0]
    assert not (tmp_path / files["rows"]).exists()  # removed, so the next run rebuilds it
