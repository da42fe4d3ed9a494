"""Corpus: fetch and tokenize the tiny corpus; the held-out split is by document and fixed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import copy_data, smoke_config

from gatedsae.data.corpus import CorpusUnavailableError, fetch_corpus, is_heldout, load_windows, read_documents
from gatedsae.plan.config import load_config


def test_windows_start_with_bos_and_have_the_context_length(smoke_tokens):
    tokens_dir = smoke_tokens.paths.tokens_dir("tiny", "tiny")
    manifest = json.loads((tokens_dir / "manifest.json").read_text())
    for split in ("train", "heldout"):
        windows = load_windows(tokens_dir, split)
        assert windows.shape == (manifest["splits"][split]["windows"], smoke_tokens.experiment.context_length)
        assert (windows[:, 0] == manifest["bos_token_id"]).all()
        assert not (windows[:, 1:] == manifest["bos_token_id"]).any()


def test_heldout_split_is_by_document_and_reproducible(smoke_tokens):
    documents = list(read_documents(smoke_tokens.paths.text_dir("tiny")))
    corpus = smoke_tokens.corpus
    heldout = [d for d in documents if is_heldout(d["id"], corpus.heldout_fraction, corpus.split_seed)]
    assert 0 < len(heldout) < len(documents)
    manifest = json.loads((smoke_tokens.paths.tokens_dir("tiny", "tiny") / "manifest.json").read_text())
    # Every held-out document's bytes are counted in the held-out split, none in train.
    assert manifest["splits"]["heldout"]["tokens"] == sum(len(d["text"].encode()) for d in heldout)
    train_windows = load_windows(smoke_tokens.paths.tokens_dir("tiny", "tiny"), "train")
    train_bytes = bytes(int(t) for t in np.asarray(train_windows[:, 1:]).ravel() if t < 256)
    longest_heldout = max(heldout, key=lambda d: len(d["text"]))["text"].encode()
    assert longest_heldout[:60] not in train_bytes
    # The same id always lands in the same split; another seed gives another split.
    assert [is_heldout(d["id"], 0.2, 0) for d in documents] == [is_heldout(d["id"], 0.2, 0) for d in documents]
    assert [is_heldout(d["id"], 0.2, 0) for d in documents] != [is_heldout(d["id"], 0.2, 1) for d in documents]


def test_validation_and_test_are_disjoint_by_document_reproducible_and_spread(smoke_tokens, tmp_path):
    """corpus.test_fraction cuts the held-out documents into validation and test by a seeded hash of their
    id, before windowing: every held-out window's text comes from documents of its own part only; the
    parts are spread along the held-out windows; a rerun writes the same bytes; the training windows are
    those of a run that does not split (the split changes nothing outside the held-out set)."""
    from gatedsae.data.corpus import heldout_parts, is_test, tokenize_corpus

    corpus, tokens_dir = smoke_tokens.corpus, smoke_tokens.paths.tokens_dir("tiny", "tiny")
    assert corpus.test_fraction == 0.5
    parts, windows = heldout_parts(tokens_dir), np.asarray(load_windows(tokens_dir, "heldout"))
    heldout = [d for d in read_documents(smoke_tokens.paths.text_dir("tiny"))
               if is_heldout(d["id"], corpus.heldout_fraction, corpus.split_seed)]
    test = {is_test(d["id"], corpus.test_fraction, corpus.split_seed) for d in heldout}
    assert test == {True, False}, "both parts hold documents"
    texts = {part: "\n".join(d["text"] for d in heldout if is_test(d["id"], corpus.test_fraction, corpus.split_seed)
                             == bool(part)).encode() for part in (0, 1)}
    manifest = json.loads((tokens_dir / "manifest.json").read_text())["heldout_split"]
    assert [manifest[name]["windows"] for name in manifest["codes"]] == [int((parts == i).sum()) for i in (0, 1)]
    checked = 0
    for window, part in zip(windows, parts):
        for segment in bytes(int(t) if t < 256 else 0 for t in window[1:]).split(b"\0"):  # EOS ends a document
            if len(segment) >= 24:
                assert segment in texts[part] and segment not in texts[1 - part]
                checked += 1
    assert checked >= len(windows) // 2  # most windows hold a long stretch of one document
    first = parts[: len(parts) // 4]
    assert 0 < first.mean() < 1, "any prefix of the held-out windows samples both parts"

    again = copy_data(smoke_tokens, tmp_path / "again", ("text",))
    tokenize_corpus(again)
    for name in ("heldout.npy", "heldout_split.npy", "train.npy"):
        assert (again.paths.tokens_dir("tiny", "tiny") / name).read_bytes() == (tokens_dir / name).read_bytes()
    unsplit = copy_data(smoke_tokens, tmp_path / "unsplit", ("text",), "corpus.test_fraction=null")
    tokenize_corpus(unsplit)
    assert heldout_parts(unsplit.paths.tokens_dir("tiny", "tiny")) is None
    assert (unsplit.paths.tokens_dir("tiny", "tiny") / "train.npy").read_bytes() == (tokens_dir / "train.npy").read_bytes()


def test_corpus_manifest_records_sources(smoke_tokens):
    manifest = json.loads((smoke_tokens.paths.text_dir("tiny") / "manifest.json").read_text())
    fixture = manifest["sources"]["fixture"]
    assert fixture["documents"] > 40 and fixture["characters"] > 5000 and fixture["licence"]


def test_hub_corpus_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = load_config(["corpus=pile_uncopyrighted", f"paths.data={tmp_path}"])
    with pytest.raises(CorpusUnavailableError, match="pile-uncopyrighted"):
        fetch_corpus(config.corpus, config.paths)
    assert not (tmp_path / "text" / "pile_uncopyrighted" / "manifest.json").exists()


def test_missing_text_folder_is_a_clear_error(tmp_path):
    config = smoke_config(tmp_path, "corpus.sources.0.path=no/such/folder")
    with pytest.raises(CorpusUnavailableError, match="no .txt files"):
        fetch_corpus(config.corpus, config.paths)
