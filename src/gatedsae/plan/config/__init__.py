"""Typed configuration: the schema behind conf/ (Hydra), validated before any compute.

One module per concern, each holding its sections' dataclasses and their `validate()`:

    checks      ConfigError, the key-naming checks, value sets shared by sections
    model       model (conf/model/) and the registry packages it comes in
    corpus      corpus (conf/corpus/)
    experiment  experiment (conf/experiment/), paths, resources
    sweep       sweep (conf/sweep/): the SAE groups and their sparsity knobs
    stages      cache, train, evaluate (conf/cache/, conf/train/, conf/evaluate/)
    precision   precision (conf/precision/): each stage's compute precision and the bf16 fidelity gate
    verdict     intervals, verdict (conf/intervals/, conf/verdict/)
    tools       browser, study (conf/browser/, conf/study/)
    groundtruth groundtruth (conf/groundtruth/): the synthetic benchmark with known features
    interp      interp (conf/interp/): sparse probing and absorption on the real SAEs
    root        Config (all sections, the checks across them) and load_config

Import from here (`from gatedsae.plan.config import Config, load_config`); which settings identify a run
is not configuration but a rule over it: gatedsae.plan.identity.
"""

from gatedsae.plan.config.checks import DTYPES, SAFE_NAME, ConfigError, require_safe_name
from gatedsae.plan.config.corpus import CorpusConfig, SourceConfig
from gatedsae.plan.config.experiment import STAGES, ChapterConfig, ExperimentConfig, PathsConfig, ResourcesConfig
from gatedsae.plan.config.groundtruth import (
    GeneratorConfig,
    GroundTruthConfig,
    GroundTruthTrainConfig,
    GroundTruthVerdictConfig,
)
from gatedsae.plan.config.interp import AbsorptionConfig, InterpConfig, ProbingConfig
from gatedsae.plan.config.model import ModelConfig, PackageConfig
from gatedsae.plan.config.precision import (CachePrecisionCheckConfig, FidelityGateConfig, PrecisionConfig,
                                            TrainPrecisionCheckConfig)
from gatedsae.plan.config.root import CONF_DIR, REPO_ROOT, Config, compose, dataclass_from, load_config, to_dict
from gatedsae.plan.config.stages import SPARSE_MAX_DENSITY, CacheConfig, EvaluateConfig, TrainConfig
from gatedsae.plan.config.sweep import L1_UNITS, SAEGroupConfig, SweepConfig
from gatedsae.plan.config.tools import BrowserConfig, StudyConfig
from gatedsae.plan.config.verdict import (ConvergenceConfig, IntervalsConfig, LayerRuleConfig, PaperMatchedL0,
                                          VerdictConfig)

__all__ = [
    "CONF_DIR", "DTYPES", "L1_UNITS", "REPO_ROOT", "SAFE_NAME", "SPARSE_MAX_DENSITY", "STAGES",
    "BrowserConfig", "CacheConfig", "ChapterConfig", "Config", "ConfigError", "ConvergenceConfig", "CorpusConfig",
    "CachePrecisionCheckConfig", "EvaluateConfig",
    "ExperimentConfig", "FidelityGateConfig", "GeneratorConfig", "GroundTruthConfig", "GroundTruthTrainConfig",
    "GroundTruthVerdictConfig", "AbsorptionConfig", "InterpConfig", "ProbingConfig", "IntervalsConfig", "LayerRuleConfig", "ModelConfig", "PackageConfig",
    "PaperMatchedL0", "PathsConfig", "PrecisionConfig",
    "ResourcesConfig", "SAEGroupConfig", "SourceConfig", "StudyConfig", "SweepConfig", "TrainConfig",
    "TrainPrecisionCheckConfig",
    "VerdictConfig", "compose", "dataclass_from", "load_config", "require_safe_name", "to_dict",
]
