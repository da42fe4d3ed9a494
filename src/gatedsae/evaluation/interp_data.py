"""The labelled rows the automatic interpretability measures read, all available offline:

- each held-out document's corpus source (the embedded corpus is several distinct package sources), for
  one-source-against-the-rest probing tasks on a document's mean activation;
- token classes read off each token's own text (a digit, punctuation, a capitalised word, ...), for
  token-level probing tasks;
- the first-letter task: the tokenizer's vocabulary tokens that are words, each in a prompt, with its
  first letter as the label (absorption).

Documents and words are split into probe-training rows and the rows a probe is scored on by a seeded hash
of their id, so no document's tokens sit on both sides. The LM's activations at the sites come from one
forward per batch of prompts.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from gatedsae.plan.config import Config
from gatedsae.plan.layout import TEST
from gatedsae.plan.sites import flatten, hook_name

TOKEN_TESTS: dict[str, Callable[[str], bool]] = {
    "digit": lambda text: text.strip().isdigit(),
    "punctuation": lambda text: bool(text.strip()) and not any(c.isalnum() or c.isspace() for c in text.strip()),
    "capitalised": lambda text: text.strip()[:1].isupper(),
    "space_led": lambda text: text[:1] == " ",
    "vowel_led": lambda text: text.strip()[:1].lower() in tuple("aeiou"),
}


def hashed_fraction(key: str, seed: int) -> float:
    """A stable number in [0, 1) for `key` (order- and machine-independent)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:interp:{key}".encode()).digest()[:8], "big") / 2**64


@dataclass
class Documents:
    """Held-out documents of one split: their source, whether they train the probes, and their tokens
    (BOS first, at most tokens_per_document after it)."""

    sources: list[str]
    probe_train: np.ndarray  # bool per document
    tokens: list[list[int]]


def split_documents(config: Config, split: Optional[str]) -> Documents:
    """The split's held-out documents (None: every held-out one), each source's first
    probing.documents_per_source in the corpus's order, tokenized for the experiment's model."""
    from gatedsae.data.corpus import is_heldout, is_test, read_documents
    from gatedsae.data.models import load_tokenizer

    corpus, probing = config.corpus, config.interp.probing
    chosen, per_source = [], {}
    for document in read_documents(config.paths.text_dir(corpus.name)):
        if not is_heldout(document["id"], corpus.heldout_fraction, corpus.split_seed):
            continue
        if split is not None and is_test(document["id"], corpus.test_fraction, corpus.split_seed) != (split == TEST):
            continue
        if per_source.get(document["source"], 0) < probing.documents_per_source:
            per_source[document["source"]] = per_source.get(document["source"], 0) + 1
            chosen.append(document)
    tokenizer = load_tokenizer(config.model, config.paths)
    ids = tokenizer.encode_batch([document["text"] for document in chosen])
    tokens = [[tokenizer.bos_token_id, *row[: probing.tokens_per_document]] for row in ids]
    keep = [i for i, row in enumerate(tokens) if len(row) > 1]
    return Documents([chosen[i]["source"] for i in keep],
                     np.array([hashed_fraction(chosen[i]["id"], config.seed) < probing.train_fraction for i in keep],
                              dtype=bool),
                     [tokens[i] for i in keep])


def token_labels(texts: list[str], classes: list[str]) -> np.ndarray:
    """[tokens, classes] bool: which of `classes` each token's text belongs to."""
    return np.array([[TOKEN_TESTS[name](text) for name in classes] for text in texts], dtype=bool).reshape(
        len(texts), len(classes))


def first_letter_words(tokenizer, min_length: int, max_words: int) -> list[tuple[int, str]]:
    """(token id, first letter) of the vocabulary's first `max_words` tokens that read as one word of
    ASCII letters (a leading space allowed) at least `min_length` long, by id."""
    found = []
    for token_id in range(tokenizer.vocab_size):
        if token_id in (tokenizer.bos_token_id, tokenizer.eos_token_id):
            continue
        text = tokenizer.token_text(token_id)
        word = text[1:] if text.startswith(" ") else text
        if len(word) >= min_length and word.isascii() and word.isalpha():
            found.append((token_id, word[0].lower()))
            if len(found) == max_words:
                break
    return found


def word_parts(words: list[tuple[int, str]], train_fraction: float, seed: int) -> np.ndarray:
    """Each word's part: 0 probe-training, 1 validation, 2 test (the rest after training, halved)."""
    draws = np.array([hashed_fraction(f"word{token_id}", seed) for token_id, _ in words])
    return np.where(draws < train_fraction, 0, np.where(draws < (1 + train_fraction) / 2, 1, 2))


def word_prompts(tokenizer, words: list[tuple[int, str]], template: str) -> list[list[int]]:
    """BOS, the word's token, then the template's text after {word}: the word is read at position 1."""
    rest = template.split("{word}", 1)[1]
    tail = tokenizer.encode_batch([rest])[0] if rest else []
    return [[tokenizer.bos_token_id, token_id, *tail] for token_id, _ in words]


@torch.inference_mode()
def site_activations(model, sequences: list[list[int]], keys: list[tuple[str, int]], batch: int, pad_id: int,
                     precision=None) -> dict[tuple[str, int], list[torch.Tensor]]:
    """Per (site, layer): each sequence's activations [len(sequence), d], float32 on the CPU. Sequences are
    padded on the right, which a causal model's earlier positions never see."""
    names = {hook_name(site, layer) for site, layer in keys}
    stop_at = max(layer for _, layer in keys) + 1
    device = next(model.parameters()).device
    found: dict[tuple[str, int], list[torch.Tensor]] = {key: [] for key in keys}
    for start in range(0, len(sequences), batch):
        chunk = sequences[start : start + batch]
        width = max(len(row) for row in chunk)
        tokens = torch.tensor([row + [pad_id] * (width - len(row)) for row in chunk], dtype=torch.long, device=device)
        captured: dict[str, torch.Tensor] = {}

        def keep(activation: torch.Tensor, hook) -> None:
            captured[hook.name] = activation

        with contextlib.nullcontext() if precision is None else precision.autocast():
            model.run_with_hooks(tokens, stop_at_layer=stop_at, fwd_hooks=[(name, keep) for name in names])
        for site, layer in keys:
            activation = flatten(site, captured[hook_name(site, layer)]).float().cpu()
            found[(site, layer)] += [activation[i, : len(row)] for i, row in enumerate(chunk)]
    return found
