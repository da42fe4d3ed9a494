"""Synthetic activations with known features (the ground-truth benchmark, conf/groundtruth): n unit
directions in d dimensions (n > d, so the features are in superposition), each firing with its stated
probability and a magnitude from the stated law, optionally in correlated groups, plus Gaussian noise.

Every shard is generated from its own seed (the run's seed, the split and the shard's index), so a shard
is the same whenever it is generated: the held-out codes the metrics compare against are regenerated
instead of stored, and the store is written through `StoreWriter`, journaled and resumable like the
cache stage's."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import torch

from gatedsae.activations.store import FORMAT_VERSION, SplitRecord, StoreManifest, StoreWriter
from gatedsae.plan.config import GeneratorConfig
from gatedsae.plan.identity import config_hash
from gatedsae.plan.layout import SPLITS

SITE, LAYER = "resid_post", 0  # the synthetic store's place in the pipeline's layout (it has one "site")


def _seed(*parts) -> int:
    return int(hashlib.sha256(repr(parts).encode()).hexdigest()[:15], 16)


class SyntheticFeatures:
    """The true features of one seed: their directions, firing probabilities and magnitude law."""

    def __init__(self, config: GeneratorConfig, seed: int):
        self.config, self.seed = config, seed
        generator = torch.Generator().manual_seed(_seed("dictionary", seed))
        directions = torch.randn(config.n_features, config.d, generator=generator, dtype=torch.float64)
        self.directions = (directions / directions.norm(dim=1, keepdim=True)).float()  # [n, d], unit rows
        first, last = config.firing_probability
        self.probabilities = torch.logspace(torch.log10(torch.tensor(first)), torch.log10(torch.tensor(last)),
                                            config.n_features, dtype=torch.float64).float()
        grouped = config.correlation.groups * config.correlation.size
        self.probabilities[:grouped] = config.correlation.active * config.correlation.within

    @property
    def expected_l0(self) -> float:
        """The true L0: the expected number of firing features per row."""
        return float(self.probabilities.sum())

    def magnitudes(self, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
        law = self.config.magnitude
        if law.law == "constant":
            return torch.full(shape, law.mean)
        if law.law == "uniform":
            return law.mean - law.spread + 2 * law.spread * torch.rand(shape, generator=generator)
        if law.law == "exponential":
            return -law.mean * torch.log1p(-torch.rand(shape, generator=generator))
        # lognormal with mean `mean`: exp(N(log mean − σ²/2, σ))
        return torch.exp(torch.log(torch.tensor(law.mean)) - law.spread**2 / 2
                         + law.spread * torch.randn(shape, generator=generator))

    def sample(self, rows: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes [rows, n], activations [rows, d]): codes are the true magnitudes, 0 where a feature is off."""
        generator = torch.Generator().manual_seed(seed)
        n, correlation = self.config.n_features, self.config.correlation
        fires = torch.rand(rows, n, generator=generator) < self.probabilities
        if correlation.groups:
            grouped = correlation.groups * correlation.size
            active = torch.rand(rows, correlation.groups, generator=generator) < correlation.active
            members = torch.rand(rows, grouped, generator=generator) < correlation.within
            fires[:, :grouped] = active.repeat_interleave(correlation.size, dim=1) & members
        codes = torch.where(fires, self.magnitudes((rows, n), generator), torch.zeros(()))
        x = codes @ self.directions
        if self.config.noise:
            x = x + self.config.noise * torch.randn(rows, self.config.d, generator=generator)
        return codes, x

    def split_rows(self, split: str) -> int:
        return self.config.train_rows if split == "train" else self.config.heldout_rows

    def shards(self, split: str) -> list[int]:
        """Rows of each shard of `split`."""
        total, size = self.split_rows(split), self.config.shard_rows
        return [min(size, total - start) for start in range(0, total, size)]

    def shard(self, split: str, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shard `index` of `split`: (codes, activations), the same every time."""
        return self.sample(self.shards(split)[index], _seed("shard", self.seed, split, index))


def store_identity(config: GeneratorConfig, seed: int) -> str:
    """The synthetic store's identity: the generator's settings and the seed."""
    return config_hash({"generator": asdict(config), "seed": seed})


def write_store(directory: Path, config: GeneratorConfig, seed: int) -> Path:
    """The synthetic activations of `seed` as an activation store (both splits, float32), resuming a killed
    run at its first unfinished shard; returns the manifest's path."""
    features = SyntheticFeatures(config, seed)
    manifest = StoreManifest(
        format_version=FORMAT_VERSION, model="synthetic", site=SITE, layer=LAYER, hook_name="synthetic",
        model_provenance={"source": "synthetic", "generator": asdict(config), "seed": seed}, d=config.d,
        dtype="float32", context_length=2, positions_per_window=1, windows_per_shard=config.shard_rows,
        corpus="synthetic", bos_token_id=-1, seed=seed, config_hash=store_identity(config, seed),
        outlier_norm_ratio=50.0, splits={split: SplitRecord() for split in SPLITS})
    directory.mkdir(parents=True, exist_ok=True)
    writer = StoreWriter.open(directory, manifest)
    if (directory / "manifest.json").exists():
        return directory / "manifest.json"
    for split in SPLITS:
        for index in range(writer.finished_shards(split), len(features.shards(split))):
            _, rows = features.shard(split, index)
            writer.write_shard(split, index, rows, windows=len(rows), outlier_ratio=manifest.outlier_norm_ratio)
    return writer.close()
