"""The ground-truth benchmark as a plan (torch-free): whether an experiment runs it, where its files go,
and the configuration each seed's run trains with — the experiment's own, with the synthetic activations
in the place of the model and conf/groundtruth's sweep and training settings, so the pipeline's store,
trainer and checkpoints serve it unchanged."""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

from gatedsae.plan.config import Config, CorpusConfig, ModelConfig, PathsConfig
from gatedsae.plan.identity import config_hash

GROUNDTRUTH_DIR = "groundtruth"  # under the results folder, the figures folder and the data root
OUTPUTS = {"rows": "rows.csv", "summary": "summary.json", "claims": "claims.json"}  # under results/<exp>/groundtruth/
FIGURES = {"recovery": "recovery_vs_l0", "magnitude": "magnitude_ratio_vs_lambda", "frontier": "l0_vs_fvu"}
SYNTHETIC = "synthetic"  # the model's and the corpus's name in the synthetic runs' data layout


def runs(config: Config) -> bool:
    """Whether the experiment (through its chapter, if one is set) includes the ground-truth benchmark: a
    chapter marked `groundtruth: true` up to it, or, in an experiment without chapters, groundtruth.enabled."""
    if not config.groundtruth.enabled:
        return False
    chapters = config.experiment.chapters
    if not chapters:
        return True
    through = config.experiment.chapters_through(config.experiment.chapter) if config.experiment.chapter else chapters
    return any(chapter.groundtruth for chapter in through)


def results_dir(config: Config) -> Path:
    return config.experiment.results / GROUNDTRUTH_DIR


def figures_dir(config: Config) -> Path:
    return config.experiment.figures / GROUNDTRUTH_DIR


def outputs(config: Config) -> dict[str, str]:
    return {key: str(results_dir(config) / name) for key, name in OUTPUTS.items()}


def data_dir(config: Config, seed: int) -> Path:
    """One seed's store and checkpoints: a folder per generator setting, so changing the generator never
    overwrites another setting's runs."""
    generator = config_hash(asdict(config.groundtruth.generator))
    return config.paths.root / GROUNDTRUTH_DIR / generator / f"seed{seed}"


def seed_config(config: Config, seed: int) -> Config:
    """The configuration a seed's run trains with: the synthetic data as the model (d = generator.d, one
    site, one layer), conf/groundtruth's sweep, train.* with groundtruth.train's values and the seed, and
    every row kept (no massive activations to leave out); one training seed per run (its seeds are runs)."""
    truth = config.groundtruth
    d = truth.generator.d
    model = ModelConfig(name=SYNTHETIC, source="random", n_layers=1, d_model=d, n_heads=1, d_head=d, d_mlp=d,
                        d_vocab=1, n_ctx=2, seed=seed)
    train = replace(config.train, **asdict(truth.train), seed=seed, seeds=1, max_norm_ratio=None,
                    statistics_tokens=None, site_devices=[], site_tokens={})
    experiment = replace(config.experiment, layers=[0], site_layers={}, sites=["resid_post"], chapters=[], chapter="",
                         context_length=2)
    return replace(config, model=model, corpus=CorpusConfig(name=SYNTHETIC, kind="hub", hub_dataset=SYNTHETIC),
                   sweep=truth.sweep, train=train, experiment=experiment, seed=seed,
                   cache=replace(config.cache, mode="store", dtype="float32"),
                   paths=PathsConfig(data=str(data_dir(config, seed))))
