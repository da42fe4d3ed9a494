"""The whole configuration (`Config`: every section, and the checks that span sections) and how it is
loaded: Hydra composes conf/, `load_config` merges it onto the dataclasses, so an unknown key or a value of
the wrong type fails with the key's full name, and each section's `validate()` checks the allowed values."""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from gatedsae.plan.config.checks import ConfigError, require
from gatedsae.plan.config.corpus import CorpusConfig
from gatedsae.plan.config.experiment import ExperimentConfig, PathsConfig, ResourcesConfig
from gatedsae.plan.config.groundtruth import GroundTruthConfig
from gatedsae.plan.config.interp import InterpConfig
from gatedsae.plan.config.model import ModelConfig
from gatedsae.plan.config.precision import PrecisionConfig
from gatedsae.plan.config.stages import CacheConfig, EvaluateConfig, TrainConfig
from gatedsae.plan.config.sweep import SweepConfig
from gatedsae.plan.config.tools import BrowserConfig, StudyConfig
from gatedsae.plan.config.verdict import IntervalsConfig, VerdictConfig
from gatedsae.plan.overrides import conflicting_override, override_problem, schema_key_not_in_yaml


REPO_ROOT = Path(__file__).resolve().parents[4]  # src/gatedsae/plan/config/root.py → the checkout
CONF_DIR = REPO_ROOT / "conf"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    corpus: CorpusConfig = field(default_factory=CorpusConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    intervals: IntervalsConfig = field(default_factory=IntervalsConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    verdict: VerdictConfig = field(default_factory=VerdictConfig)
    resources: ResourcesConfig = field(default_factory=ResourcesConfig)
    browser: BrowserConfig = field(default_factory=BrowserConfig)
    study: StudyConfig = field(default_factory=StudyConfig)
    groundtruth: GroundTruthConfig = field(default_factory=GroundTruthConfig)
    interp: InterpConfig = field(default_factory=InterpConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    seed: int = 0

    def validate(self) -> None:
        for part in (self.model, self.corpus, self.cache, self.experiment, self.sweep, self.train, self.evaluate,
                     self.intervals, self.precision, self.verdict, self.resources, self.browser, self.study,
                     self.groundtruth, self.interp, self.paths):
            part.validate()
        if self.experiment.chapters:
            covered = {arch for chapter in self.experiment.chapters for arch in chapter.archs}
            missing = sorted({group.arch for group in self.sweep.groups} - covered)
            require(not missing, "experiment.chapters", f"no chapter runs the sweep's {', '.join(missing)} groups")
        for key, layer in (("browser.layer", self.browser.layer), ("study.layer", self.study.layer)):
            require(layer is None or layer in self.experiment.all_layers, key,
                     f"{layer} is not one of the experiment's layers {self.experiment.all_layers}; use one of them, "
                     "or null")
        require(not self.browser.enabled or self.browser.site in self.experiment.sites, "browser.site",
                 f"{self.browser.site!r} is not one of experiment.sites {self.experiment.sites}")
        require(all(site in self.experiment.sites for site in self.interp.sites), "interp.sites",
                 f"list sites of experiment.sites {self.experiment.sites} (or none for all of them)")
        require(all(site in self.experiment.sites for site in self.interp.matched_l0 or {}), "interp.matched_l0",
                 f"name sites of experiment.sites {self.experiment.sites}")
        require(all(site in self.experiment.sites for site in self.study.sites), "study.sites",
                 f"list sites of experiment.sites {self.experiment.sites} (or none for all of them)")
        require(not self.experiment.site_layers or self.cache.mode == "store", "experiment.site_layers",
                "stream mode trains every site of a layer together; use cache.mode=store with layers per site")
        for layer in self.experiment.all_layers:
            require(0 <= layer < self.model.n_layers, "experiment.layers",
                     f"layer {layer} does not exist in {self.model.name} (layers 0..{self.model.n_layers - 1})")
        missing = [site for site in self.experiment.sites if not self.verdict.levels_at(site)]
        require(not missing, "verdict.levels", f"no pre-registered loss-recovered level for {', '.join(missing)}: "
                "add one per site of experiment.sites (conf/verdict/default.yaml states the rule)")
        bare = [site for site in self.experiment.sites if not self.sweep.groups_at(site)]
        require(not bare, "sweep.groups", f"no group of SAEs is trained at {', '.join(bare)}: list it in a group's "
                "`sites` (or leave a group's `sites` empty for every site), or drop it from experiment.sites")
        for site in self.experiment.sites:
            for index, group in enumerate(self.sweep.groups):
                if group.trained_at(site):
                    group.validate_width(f"sweep.groups.{index}", self.model.site_width(site), site)
        require(self.experiment.context_length <= self.model.n_ctx, "experiment.context_length",
                 f"{self.experiment.context_length} exceeds {self.model.name}'s context of {self.model.n_ctx}")
        require(not self.train.site_devices or len(self.train.site_devices) == len(self.experiment.sites),
                 "train.site_devices", f"list one device per site of experiment.sites {self.experiment.sites}, "
                 "or none to put every site on train.device")

    @property
    def browser_layer(self) -> int:
        return self.experiment.layers_at(self.browser.site)[0] if self.browser.layer is None else self.browser.layer

    def study_layer_at(self, site: str) -> int:
        return self.experiment.layers_at(site)[0] if self.study.layer is None else self.study.layer

    @property
    def interp_sites(self) -> list[str]:
        return self.interp.sites or list(self.experiment.sites)

    @property
    def study_sites(self) -> list[str]:
        return self.study.sites or list(self.experiment.sites)

    def train_device(self, site: str) -> str:
        """The device that trains `site`'s SAEs."""
        if self.train.site_devices:
            return self.train.site_devices[self.experiment.sites.index(site)]
        return self.train.device

    def activation_dirs(self) -> dict[tuple[str, int], Path]:
        return {
            (site, layer): self.paths.activations_dir(self.model.name, self.corpus.name, site, layer)
            for site, layer in self.experiment.site_layer_pairs()
        }


def dataclass_from(schema: type, raw: DictConfig | dict) -> Any:
    """Merge `raw` onto the schema; re-raise OmegaConf's and our errors as one ConfigError type."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), raw)
        return OmegaConf.to_object(merged)
    except ConfigError:
        raise
    except (OmegaConfBaseException, ValueError, TypeError) as error:  # OmegaConf raises all three
        key = _list_item_key(schema, raw) or getattr(error, "full_key", None) or "?"
        first_line = str(error).splitlines()[0]
        raise ConfigError(f"config key '{key}': {first_line}. Check the spelling and type against conf/.") from None


def _list_item_key(schema: type, raw: Any, prefix: str = "") -> Optional[str]:
    """The full key of the first item of a list of dataclasses (e.g. sweep.groups) that does not fit its
    schema: OmegaConf reports such keys without their parents ('l1' for 'sweep.groups.2.l1')."""
    if not isinstance(raw, (dict, DictConfig)):
        return None
    hints = typing.get_type_hints(schema)
    for schema_field in dataclasses.fields(schema):
        value = raw.get(schema_field.name)
        hint = hints[schema_field.name]
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        key = f"{prefix}{schema_field.name}"
        if dataclasses.is_dataclass(hint) or (args and len(args) == 1 and dataclasses.is_dataclass(args[0])
                                               and typing.get_origin(hint) is not list):
            found = _list_item_key(hint if dataclasses.is_dataclass(hint) else args[0], value, f"{key}.")
            if found:
                return found
        elif typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]) and value is not None:
            for index, item in enumerate(value if isinstance(value, (list, ListConfig)) else []):
                try:
                    OmegaConf.merge(OmegaConf.structured(args[0]), item)
                except (OmegaConfBaseException, ValueError, TypeError) as error:
                    inner = getattr(error, "full_key", None)
                    return (_list_item_key(args[0], item, f"{key}.{index}.")
                            or f"{key}.{index}" + (f".{inner}" if inner else ""))
    return None


def compose(overrides: Sequence[str] = (), config_name: str = "config", conf_dir: Path = CONF_DIR) -> DictConfig:
    """Compose conf/ with Hydra's compose API (no working-directory change, no output folders)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    # a misspelt key or option, or one given twice, before Hydra sees it
    problem = override_problem(overrides, Config, conf_dir) or conflicting_override(overrides)
    if problem:
        raise ConfigError(problem)
    overrides = list(overrides)
    while True:
        GlobalHydra.instance().clear()
        try:
            with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
                return hydra_compose(config_name=config_name, overrides=overrides)
        except HydraException as error:
            # A key of the schema that no YAML file sets yet (a setting left at its default): Hydra would
            # ask for "+key=value"; the schema knows it, so it is added as such.
            index = schema_key_not_in_yaml(str(error), overrides, Config)
            if index is None:
                raise ConfigError(" ".join(str(error).split())) from None
            overrides[index] = "++" + overrides[index]


def load_config(overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> Config:
    """Compose and validate the full configuration; raises ConfigError naming the offending key. With
    `experiment.chapter` set, the sweep is cut down to what the chapters up to that one train."""
    config = dataclass_from(Config, compose(overrides, conf_dir=conf_dir))
    for index, group in enumerate(config.sweep.groups):
        note = group.upgrade_legacy_knob(f"sweep.groups.{index}")
        if note:
            print(f"note: {note}", file=sys.stderr)
    config.validate()
    return _through_chapter(config) if config.experiment.chapter else config


def _through_chapter(config: Config) -> Config:
    from dataclasses import replace

    chapters = config.experiment.chapters_through(config.experiment.chapter)
    archs = {arch for chapter in chapters for arch in chapter.archs}
    sweep = replace(config.sweep, groups=[group for group in config.sweep.groups if group.arch in archs],
                    rescale_shift=config.sweep.rescale_shift and any(chapter.rescale_shift for chapter in chapters),
                    all_tokens=config.sweep.all_tokens and any(chapter.all_tokens for chapter in chapters))
    return replace(config, sweep=sweep)


def to_dict(config: Any) -> dict:
    return asdict(config)
