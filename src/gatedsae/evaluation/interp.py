"""Sparse probing and first-letter absorption of the real SAEs (conf/interp), scored SAE by SAE.

At each site: the held-out documents of a split give probing tasks (one source against the others, on a
document's mean activation; one token class against the other tokens); the vocabulary's words give the
first-letter task. The LM runs once for every site; then each SAE's latents are probed (k = probing.ks)
and its absorption measured, and its scores saved under its checkpoint's identity, so a rerun scores only
SAEs it has not seen. Which rows each probe got right (and which words were absorbed) are kept: the
intervals resample them.

The pair compared at a site is chosen on the validation split's L0 (`matched_pairs`); every Gated and
baseline SAE is scored on the validation split (the figure), only the matched ones on the test split.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import torch

from gatedsae.core.codehash import INTERP_SCORES_CODE, code_fingerprint
from gatedsae.core.errors import IntegrityError
from gatedsae.core.sealed import REEVALUATE, read_json, write_sealed_json
from gatedsae.evaluation.absorption import absorption
from gatedsae.evaluation.interp_data import (Documents, first_letter_words, split_documents, site_activations,
                                             token_labels, word_parts, word_prompts)
from gatedsae.evaluation.sparse_probing import correct, fit_logistic, sparse_probing, top_k_latents
from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import Config
from gatedsae.plan.grid import MAIN_VARIANT
from gatedsae.plan.identity import config_hash
from gatedsae.plan.interp import saved_dir
from gatedsae.plan.layout import METRICS_FILE, TEST, VALIDATION

WORD_PART = {VALIDATION: 1, TEST: 2, None: (1, 2)}  # interp_data.word_parts: 0 probe-training, 1, 2


@dataclass
class Task:
    """A binary probing task: rows of `kind` (documents or tokens), the probe-training rows and the rows it
    is scored on, each with its labels (classes balanced in both)."""

    name: str
    kind: str
    train: np.ndarray
    train_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


@dataclass
class SplitRows:
    """One held-out split at one site: each document's token activations (BOS dropped), the sampled token
    rows, the tasks over them, and the raw-activation probe's accuracy on each (the reference)."""

    documents: list[torch.Tensor]
    tokens: torch.Tensor
    tasks: list[Task]
    raw: dict[str, dict] = field(default_factory=dict)


@dataclass
class WordRows:
    """The first-letter task at one site: each word's activation, letter and part; per kept letter the raw
    probe's direction and, per split, the words of the letter it gets right (the rows absorption reads)."""

    x: torch.Tensor
    letters: np.ndarray
    parts: np.ndarray
    directions: dict[str, torch.Tensor]
    positives: dict[tuple[str, Optional[str]], np.ndarray]


def _balanced(indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """As many rows of each class (the smaller class's count), drawn at random, in their order."""
    positive, negative = indices[labels], indices[~labels]
    n = min(len(positive), len(negative))
    kept = np.sort(np.concatenate([rng.choice(positive, n, replace=False), rng.choice(negative, n, replace=False)]))
    return kept, np.isin(kept, positive)


def _task(name: str, kind: str, labels: np.ndarray, probe_train: np.ndarray, minimum: int,
          rng: np.random.Generator) -> Optional[Task]:
    """The task, or None when either class has fewer than `minimum` rows in either part."""
    parts = []
    for mask in (probe_train, ~probe_train):
        rows = np.flatnonzero(mask)
        if min(labels[rows].sum(), (~labels[rows]).sum()) < minimum:
            return None
        parts += list(_balanced(rows, labels[rows], rng))
    return Task(name, kind, *parts)


def build_tasks(documents: Documents, token_texts: list[list[str]], config: Config
                ) -> tuple[list[Task], np.ndarray]:
    """The split's tasks, and which token positions (document, position) the token rows are."""
    probing = config.interp.probing
    rng = np.random.default_rng(config.seed)
    tasks = []
    sources = np.array(documents.sources)
    for source in sorted(set(documents.sources)) if len(set(documents.sources)) > 1 else []:
        task = _task(f"source:{source}", "documents", sources == source, documents.probe_train,
                     probing.min_documents_per_class, rng)
        tasks += [task] if task else []
    positions = np.array([(d, p) for d, texts in enumerate(token_texts) for p in range(1, len(texts))]).reshape(-1, 2)
    if len(positions) > probing.token_rows:
        positions = positions[np.sort(rng.choice(len(positions), probing.token_rows, replace=False))]
    labels = token_labels([token_texts[d][p] for d, p in positions], probing.token_classes)
    probe_train = documents.probe_train[positions[:, 0]] if len(positions) else np.zeros(0, dtype=bool)
    for column, name in enumerate(probing.token_classes):
        task = _task(f"token:{name}", "tokens", labels[:, column], probe_train, probing.min_rows_per_class, rng)
        tasks += [task] if task else []
    return tasks, positions


def _rows(task: Task, documents: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    return documents if task.kind == "documents" else tokens


def raw_reference(rows: SplitRows) -> dict[str, dict]:
    """The probe on every dimension of the raw activations, per task: accuracy and rows right."""
    pooled = torch.stack([d.mean(0) for d in rows.documents]) if rows.documents else torch.zeros(0)
    found = {}
    for task in rows.tasks:
        x = _rows(task, pooled, rows.tokens)
        right = correct(fit_logistic(x[task.train], torch.from_numpy(task.train_labels)), x[task.test],
                        torch.from_numpy(task.test_labels))
        found[task.name] = {"accuracy": float(right.double().mean()), "correct": right.int().tolist()}
    return found


def word_rows(x: torch.Tensor, words: list[tuple[int, str]], config: Config) -> WordRows:
    """The letters kept (enough words in every part), their raw probes, and the words each gets right."""
    absorbing = config.interp.absorption
    letters = np.array([letter for _, letter in words])
    parts = word_parts(words, absorbing.train_fraction, config.seed)
    directions, positives = {}, {}
    for letter in sorted(set(letters)):
        mine = letters == letter
        if (mine & (parts == 0)).sum() < absorbing.min_words_per_letter or (~mine & (parts == 0)).sum() == 0:
            continue  # too few words to train its probe on
        probe = fit_logistic(x[parts == 0], torch.from_numpy(mine[parts == 0]))
        says = probe(x).numpy()
        directions[letter] = probe.direction.float()
        for split, wanted in WORD_PART.items():  # a part with too few of its words: the letter is left out there
            scored = mine & np.isin(parts, wanted)
            positives[(letter, split)] = np.flatnonzero(scored & says) if scored.sum() >= absorbing.min_words_per_letter \
                else np.zeros(0, dtype=int)
    return WordRows(x, letters, parts, directions, positives)


# ---------------------------------------------------------------------------------------------------
# One SAE.


def score(sae, rows: dict[Optional[str], SplitRows], words: WordRows, config: Config) -> dict:
    """An SAE's scores on each split of `rows`: per task and k its probe's accuracy and rows right; per
    letter the absorption and false-negative rates and which words were absorbed."""
    absorbing = config.interp.absorption
    found = {}
    word_features = sae.encode(words.x)
    decoder = sae.tensors["W_dec"].float()
    for split, split_rows in rows.items():
        pooled = torch.stack([sae.encode(d).mean(0) for d in split_rows.documents]) if split_rows.documents \
            else torch.zeros(0)
        tokens = sae.encode(split_rows.tokens) if len(split_rows.tokens) else torch.zeros(0)
        probing = {}
        for task in split_rows.tasks:
            features = _rows(task, pooled, tokens)
            results = sparse_probing(features[task.train], torch.from_numpy(task.train_labels), features[task.test],
                                     torch.from_numpy(task.test_labels), config.interp.probing.ks)
            probing[task.name] = {str(k): {"accuracy": r["accuracy"], "latents": r["latents"],
                                           "correct": r["correct"].int().tolist()} for k, r in results.items()}
        absorbed = {}
        for letter, direction in words.directions.items():
            rows_ = words.positives[(letter, split)]
            if not len(rows_):
                continue
            train = words.parts == 0
            main = top_k_latents(word_features[train], torch.from_numpy(words.letters[train] == letter),
                                 absorbing.main_k).tolist()
            result = absorption(words.x[rows_], word_features[rows_], decoder, direction, main,
                                absorbing.min_cosine, absorbing.min_share)
            absorbed[letter] = {"rows": result["rows"], "absorption_rate": result["absorption_rate"],
                                "false_negative_rate": result["false_negative_rate"], "main": main,
                                "absorbed": result["absorbed"].int().tolist()}
        found[split or "heldout"] = {"probing": probing, "absorption": absorbed}
    return found


# ---------------------------------------------------------------------------------------------------
# Which SAEs: the matched pair per seed, chosen on the validation split.


def candidates(config: Config, site: str, layer: int, split: Optional[str]) -> pd.DataFrame:
    """The main sweep's Gated and baseline SAEs at (site, layer), with their L0 on `split` (the
    evaluation's saved rows)."""
    path = config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name) \
        / METRICS_FILE
    rows = pd.DataFrame(read_json(path, REEVALUATE)["rows"])
    keep = (rows["variant"] == MAIN_VARIANT) & rows["arch"].isin([PROPOSED, BASELINE])
    if "split" in rows and split is not None:
        keep &= rows["split"] == split
    columns = ["arch", "sae", "seed", "l0", "loss_recovered", "checkpoint", "checkpoint_id", "width"]
    return rows.loc[keep, columns].reset_index(drop=True)


def matched_target(frame: pd.DataFrame, level: Optional[float]) -> float:
    """The L0 the pair is matched at: `level`, else the geometric middle of where the two architectures'
    L0 ranges overlap (of the gap between them, if they do not)."""
    if level is not None:
        return float(level)
    ranges = [frame.loc[frame["arch"] == arch, "l0"] for arch in (PROPOSED, BASELINE)]
    if any(r.empty for r in ranges):
        return math.nan  # an architecture not trained at the site: no pair
    low, high = max(r.min() for r in ranges), min(r.max() for r in ranges)
    return float(math.sqrt(max(low, 1e-9) * max(high, 1e-9)))


def matched_pairs(frame: pd.DataFrame, level: Optional[float], max_ratio: float) -> dict:
    """Per training seed both architectures have, each one's SAE nearest the target in log L0; the pair is
    matched when their L0s are within `max_ratio` of each other."""
    target = matched_target(frame, level)
    pairs = []
    for seed in sorted(set(frame.loc[frame["arch"] == PROPOSED, "seed"]) & set(frame.loc[frame["arch"] == BASELINE, "seed"])):
        chosen = {}
        for arch in (PROPOSED, BASELINE):
            mine = frame[(frame["arch"] == arch) & (frame["seed"] == seed)]
            chosen[arch] = mine.loc[(np.log(mine["l0"].clip(lower=1e-9)) - math.log(target)).abs().idxmin()].to_dict()
        ratio = max(chosen[PROPOSED]["l0"], chosen[BASELINE]["l0"]) / max(min(chosen[PROPOSED]["l0"],
                                                                             chosen[BASELINE]["l0"]), 1e-9)
        pairs.append({"seed": int(seed), "l0_ratio": float(ratio), "matched": bool(ratio <= max_ratio),
                      **{arch: {key: chosen[arch][key] for key in ("sae", "l0", "loss_recovered", "checkpoint_id")}
                         for arch in chosen}})
    return {"target_l0": target, "rule": "given" if level is not None else "overlap_midpoint", "pairs": pairs}


# ---------------------------------------------------------------------------------------------------
# The stage's compute: every SAE's scores, saved one by one.


def identity(config: Config, checkpoint: str, split: Optional[str], code: str) -> str:
    """What a saved score is of: the checkpoint, the split, the settings, and `code` (the scoring code's
    fingerprint, computed once per run: it parses every module it names)."""
    return config_hash({"checkpoint": checkpoint, "split": split, "interp": asdict(config.interp),
                        "model": asdict(config.model), "corpus": asdict(config.corpus), "seed": config.seed,
                        "code": code})


def _saved(path, key: str) -> Optional[dict]:
    if not path.exists():
        return None
    try:
        saved = read_json(path, REEVALUATE)
    except IntegrityError as error:
        print(f"re-scoring: {error}", flush=True)
        return None
    return saved if saved.get("identity") == key else None


@dataclass
class SiteWork:
    """One site's SAEs to score: per split, the frame of those SAEs and where each one's scores go."""

    site: str
    layer: int
    wanted: dict[Optional[str], pd.DataFrame]
    pairs: dict


def plan_site(config: Config, site: str, layer: int, splits: list[Optional[str]]) -> SiteWork:
    development = splits[0]
    frame = candidates(config, site, layer, development)
    pairs = matched_pairs(frame, (config.interp.matched_l0 or {}).get(site), config.interp.max_l0_ratio)
    chosen = {pair[arch]["sae"] for pair in pairs["pairs"] for arch in (PROPOSED, BASELINE)}
    wanted = {development: frame}
    for split in splits[1:]:
        other = candidates(config, site, layer, split)
        wanted[split] = other[other["sae"].isin(chosen)].reset_index(drop=True)
    return SiteWork(site, layer, wanted, pairs)


def score_sites(config: Config, works: list[SiteWork], progress: bool = True) -> dict[tuple[str, int], dict]:
    """Every wanted SAE's scores per site, per split (from its saved file, or computed and saved), and the
    raw probe's per split: {(site, layer): {"scores": {split: {sae: scores}}, "raw": {split: ...}}}."""
    from gatedsae.evaluation.evaluate import CheckpointSAE

    found: dict[tuple[str, int], dict] = {}
    todo = []
    code = code_fingerprint(INTERP_SCORES_CODE)
    for work in works:
        folder = saved_dir(config, work.site, work.layer)
        found[(work.site, work.layer)] = {"scores": {}, "raw": {}}
        for split, frame in [*work.wanted.items(), *[(s, None) for s in work.wanted]]:
            names = ["raw"] if frame is None else list(frame["sae"])
            checkpoints = ["raw"] if frame is None else list(frame["checkpoint_id"])
            for name, checkpoint in zip(names, checkpoints):
                path = folder / (split or "heldout") / f"{name}.json"
                key = identity(config, checkpoint, split, code)
                saved = _saved(path, key)
                if saved is None:
                    todo.append((work, split, name, path, key))
                else:
                    _place(found, work, split, name, saved["scores"])
    if todo:
        rows, words = _inputs(config, works, sorted({split for _, split, *_ in todo}, key=str))
        for work, split, name, path, key in todo:
            site_key = (work.site, work.layer)
            if name == "raw":
                scores = raw_reference(rows[site_key][split])
            else:
                entry = work.wanted[split].set_index("sae").loc[name]
                sae = CheckpointSAE.load(entry["checkpoint"], "cpu")  # the evaluation's path to it on this machine
                scores = score(sae, {split: rows[site_key][split]}, words[site_key], config)[split or "heldout"]
            write_sealed_json(path, {"identity": key, "scores": scores})
            _place(found, work, split, name, scores)
            if progress:
                print(f"  {work.site}/layer{work.layer} {split or 'heldout'}/{name}", flush=True)
    return found


def _place(found: dict, work: SiteWork, split: Optional[str], name: str, scores: dict) -> None:
    site = found[(work.site, work.layer)]
    if name == "raw":
        site["raw"][split] = scores
    else:
        site["scores"].setdefault(split, {})[name] = scores


def _inputs(config: Config, works: list[SiteWork], splits: list[Optional[str]]):
    """The LM's activations for every site's tasks and words: one forward per batch for all sites."""
    from gatedsae.data.models import load_model

    loaded = load_model(config.model, config.paths, config.evaluate.device)
    tokenizer = loaded.tokenizer
    keys = [(work.site, work.layer) for work in works]
    batch, pad = config.interp.batch_sequences, tokenizer.eos_token_id
    rows: dict[tuple[str, int], dict] = {key: {} for key in keys}
    for split in splits:
        documents = split_documents(config, split)
        texts = [[tokenizer.token_text(t) for t in row] for row in documents.tokens]
        tasks, positions = build_tasks(documents, texts, config)
        activations = site_activations(loaded.model, documents.tokens, keys, batch, pad)
        for key in keys:
            per_document = [a[1:] for a in activations[key]]
            tokens = torch.stack([per_document[d][p - 1] for d, p in positions]) if len(positions) \
                else torch.zeros(0, 1)
            rows[key][split] = SplitRows(per_document, tokens, tasks)
    absorbing = config.interp.absorption
    words = first_letter_words(tokenizer, absorbing.min_word_length, absorbing.max_words)
    prompts = word_prompts(tokenizer, words, absorbing.template)
    at_word = site_activations(loaded.model, prompts, keys, batch, pad)
    word_sets = {key: word_rows(torch.stack([a[1] for a in at_word[key]]), words, config) for key in keys}
    return rows, word_sets
