"""`corpus` (conf/corpus/): where the documents come from and how they split into train and held-out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.config.checks import choice, require, require_safe_name
from gatedsae.plan.config.model import PackageConfig


@dataclass
class SourceConfig:
    """One corpus source: a registry package and the extractor that reads its documents."""

    name: str = ""
    extractor: str = ""
    package: Optional[PackageConfig] = None
    path: Optional[str] = None  # for the `text_files` extractor: a folder of .txt files in the repo
    licence: str = ""


@dataclass
class CorpusConfig:
    name: str = ""
    kind: str = "packages"  # packages | hub
    sources: list[SourceConfig] = field(default_factory=list)
    hub_dataset: Optional[str] = None
    hub_split: str = "train"
    hub_text_field: str = "text"
    hub_max_documents: Optional[int] = None
    heldout_fraction: float = 0.05
    split_seed: int = 0
    # The held-out documents split again, by a seeded hash of their id: this fraction is the test split the
    # published verdict reads, the rest the validation split every development stage reads. null: not split.
    test_fraction: Optional[float] = None

    def validate(self) -> None:
        require_safe_name(self.name, "corpus.name")
        choice(self.kind, "corpus.kind", ("packages", "hub"))
        require(0.05 <= self.heldout_fraction < 0.5, "corpus.heldout_fraction",
                 f"got {self.heldout_fraction}; use a value in [0.05, 0.5) (at least 5% is held out)")
        require(self.test_fraction is None or 0 < self.test_fraction < 1, "corpus.test_fraction",
                 f"got {self.test_fraction}; use a fraction of the held-out documents in (0, 1), or null not to split")
        if self.kind == "packages":
            require(bool(self.sources), "corpus.sources", "a packages corpus needs at least one source")
            for index, source in enumerate(self.sources):
                if source.package is not None:
                    source.package.validate(f"corpus.sources.{index}.package")
        else:
            require(bool(self.hub_dataset), "corpus.hub_dataset", "a hub corpus needs a dataset id")
