"""`interp` (conf/interp/): the automatic interpretability measures on the real SAEs (after SAEBench's
definitions; docs/method.md#automatic-interpretability): k-sparse probing on labels the offline corpus
carries (each held-out document's source, token classes read off the text) and feature absorption on the
first-letter task built from the tokenizer's vocabulary. Gated and the baseline are compared at matched
L0 by the rule below, fixed before the run; the verdict reports it as a proxy for the paper's third
claim, never as the claim itself (the human study stays its test)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.config.checks import distinct, finite, require

# Token-level classes derivable from a token's own text (evaluation/interp_data.py defines each).
TOKEN_CLASSES = ("digit", "punctuation", "capitalised", "space_led", "vowel_led")


@dataclass
class ProbingConfig:
    """Sparse probing: per binary task, the k latents whose mean activation differs most between the
    classes on the probe-training rows, a logistic regression on those k, its accuracy on the other rows;
    the same probe on every dimension of the raw activations is the reference."""

    ks: list[int] = field(default_factory=lambda: [1, 2, 5])
    # Source tasks (one source against the others, classes balanced): per held-out split, each source's
    # first documents (in the corpus's order), cut to their first tokens; a document's row is the mean over
    # its tokens (of the latents, or of the raw activations), as SAEBench's.
    documents_per_source: int = 48
    tokens_per_document: int = 64
    min_documents_per_class: int = 8  # a source with fewer, in either part, is no task
    # Token tasks (one class against every other token): token positions of the same documents, sampled.
    token_classes: list[str] = field(default_factory=lambda: list(TOKEN_CLASSES))
    token_rows: int = 3000
    min_rows_per_class: int = 20
    # Rows of probe-training (latent choice and fit) vs accuracy, split by a seeded hash of each document.
    train_fraction: float = 0.6

    def validate(self, key: str) -> None:
        require(bool(self.ks) and all(k >= 1 for k in self.ks), f"{key}.ks", "list positive k, e.g. [1, 2, 5]")
        distinct(self.ks, f"{key}.ks")
        for name in ("documents_per_source", "tokens_per_document", "min_documents_per_class", "token_rows",
                     "min_rows_per_class"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be positive")
        unknown = sorted(set(self.token_classes) - set(TOKEN_CLASSES))
        require(not unknown, f"{key}.token_classes", f"unknown {unknown}; choose among {list(TOKEN_CLASSES)}")
        finite(self.train_fraction, f"{key}.train_fraction")
        require(0 < self.train_fraction < 1, f"{key}.train_fraction", "a fraction in (0, 1), e.g. 0.6")


@dataclass
class AbsorptionConfig:
    """Feature absorption on the first-letter task (Chanin et al. 2024; SAEBench's absorption): vocabulary
    tokens that are a word (letters only, a leading space allowed), each read at its own position in the
    prompt `template`; a probe on the raw activations per first letter gives the feature's direction; an
    SAE's main latents for a letter are the `main_k` a sparse probe picks; on the words of that letter the
    probe gets right, a word is absorbed when no main latent fires and another latent carries the feature
    (cosine with the probe ≥ min_cosine, contribution along it ≥ min_share of the word's projection)."""

    template: str = "{word} has the first letter:"
    min_word_length: int = 2
    max_words: int = 1500  # the vocabulary's first such tokens, by id
    main_k: int = 1
    min_cosine: float = 0.025
    min_share: float = 0.4
    min_words_per_letter: int = 10  # in probe-training, and in the part scored; fewer: the letter is left out (there)
    train_fraction: float = 0.5  # the rest split in half: validation and test

    def validate(self, key: str) -> None:
        require(self.template.count("{word}") == 1 and self.template.startswith("{word}"), f"{key}.template",
                "start with {word} once (the word's activation is read at its own position), e.g. "
                "'{word} has the first letter:'")
        for name in ("min_word_length", "max_words", "main_k", "min_words_per_letter"):
            require(getattr(self, name) >= 1, f"{key}.{name}", "must be positive")
        for name in ("min_cosine", "min_share", "train_fraction"):
            finite(getattr(self, name), f"{key}.{name}")
        require(0 < self.train_fraction < 1, f"{key}.train_fraction", "a fraction in (0, 1)")
        require(-1 < self.min_cosine < 1 and self.min_share > 0, key, "min_cosine in (−1, 1), min_share > 0")


@dataclass
class InterpConfig:
    """The stage: which sites, the matched-L0 rule, the interval, and the two measures."""

    enabled: bool = True
    sites: list[str] = field(default_factory=list)  # none: every site of the experiment (at its layer)
    # The pair compared at each site, per training seed: for Gated and for the baseline, the SAE of the main
    # sweep whose L0 on the validation split is nearest (in log L0) to this level. null: the geometric
    # middle of the two architectures' overlapping L0 ranges there (pooled over seeds).
    matched_l0: Optional[dict[str, float]] = None
    # A pair whose L0s differ by more than this ratio is not matched: its comparison is NOT MEASURED.
    max_l0_ratio: float = 1.5
    confidence: float = 0.95
    bootstrap: int = 1000  # resamples of training seeds and of examples (documents, tokens, words)
    batch_sequences: int = 16  # prompts per LM forward
    probing: ProbingConfig = field(default_factory=ProbingConfig)
    absorption: AbsorptionConfig = field(default_factory=AbsorptionConfig)

    def validate(self) -> None:
        key = "interp"
        distinct(self.sites, f"{key}.sites")
        for site, level in (self.matched_l0 or {}).items():
            finite(level, f"{key}.matched_l0.{site}")
            require(level > 0, f"{key}.matched_l0.{site}", "an L0 level is positive")
        finite(self.max_l0_ratio, f"{key}.max_l0_ratio")
        require(self.max_l0_ratio >= 1, f"{key}.max_l0_ratio", "a ratio ≥ 1, e.g. 1.5")
        require(0.5 < self.confidence < 1, f"{key}.confidence", f"got {self.confidence}; e.g. 0.95")
        require(self.bootstrap >= 100, f"{key}.bootstrap", "at least 100 resamples")
        require(self.batch_sequences >= 1, f"{key}.batch_sequences", "must be positive")
        self.probing.validate(f"{key}.probing")
        self.absorption.validate(f"{key}.absorption")
