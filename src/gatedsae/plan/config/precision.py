"""precision (conf/precision/): the precision each stage computes its matmuls in, and the fidelity gate
that bf16 passes before a stage uses it. Choosing and recording it: gatedsae.core.precision."""

from __future__ import annotations

from dataclasses import dataclass, field

from gatedsae.core.precision import SETTINGS
from gatedsae.plan.config.checks import choice, finite, require


@dataclass
class FidelityGateConfig:
    """What bf16 must reproduce before a stage uses it (under `auto`): each stage compares bf16 with float32
    on a little of its own data when it starts, and keeps float32 if a difference exceeds its tolerance."""

    windows: int = 8                     # held-out windows the LM stages check on (cache, evaluate)
    ce_nats: float = 0.002               # evaluate: |ΔCE| per token, clean and spliced
    activation_rel_error: float = 0.01   # cache: ||a_bf16 − a_fp32|| / ||a_fp32|| at every site

    def validate(self) -> None:
        require(self.windows > 0, "precision.gate.windows", "must be a positive integer")
        _positive(self, "precision.gate", ("ce_nats", "activation_rel_error"))


@dataclass
class TrainPrecisionCheckConfig:
    """How close bf16 training (precision.train) must come to float32 training of the same SAEs (same
    seeds, same batches): relative changes of each SAE's held-out FVU and L0 (training/precision_check.py;
    checked on the tiny model by the tests and on the embedded model by scripts/check_train_precision.py)."""

    fvu_rel: float = 0.02  # |FVU_bf16 / FVU_fp32 − 1|
    l0_rel: float = 0.05   # |L0_bf16 / L0_fp32 − 1|

    def validate(self) -> None:
        _positive(self, "precision.train_check", ("fvu_rel", "l0_rel"))


@dataclass
class CachePrecisionCheckConfig:
    """How close SAEs trained on a bf16 forward's cache must come to the same SAEs (same seeds, same
    batches) trained on a float32 forward's cache, measured against what a training seed alone changes
    (training/precision_check.py; checked on the tiny model by the tests and on the embedded model by
    scripts/check_cache_precision.py). One training run can move far on a tiny perturbation of its data
    (a feature that dies in one run and not in the other), so a fixed tolerance per SAE would judge that
    chance, not the cache: the check compares typical changes instead."""

    # Over the check's SAEs at every site: the median of |FVU_bf16 cache / FVU_fp32 cache − 1| at most
    # this × the median of |FVU_seed b / FVU_seed a − 1| (both on the float32 cache); the same for L0.
    seed_ratio: float = 1.0

    def validate(self) -> None:
        _positive(self, "precision.cache_check", ("seed_ratio",))


def _positive(section, prefix: str, keys: tuple[str, ...]) -> None:
    for key in keys:
        finite(getattr(section, key), f"{prefix}.{key}")
        require(getattr(section, key) > 0, f"{prefix}.{key}", "must be positive")


@dataclass
class PrecisionConfig:
    """The precision each stage computes its matmuls in: auto (bfloat16 where the device has native bf16
    matmuls and the stage's fidelity gate passes, float32 elsewhere) | float32 | bfloat16. Each artifact
    records it in its provenance; training's resolved precision also enters its checkpoints' training keys
    (plan/identity.py says why)."""

    cache: str = "auto"     # the LM forward that caches activations
    train: str = "auto"     # the SAE encoder's product (master weights, Adam state and the rest stay float32)
    evaluate: str = "auto"  # the spliced evaluation's clean and per-SAE remainders (prefix, zero-ablation: float32)
    cache_float32_positions: int = 8  # under a bf16 cache, the first positions after BOS computed again in float32
    evaluate_float32_positions: int = 4  # under a bf16 evaluation, the CE of the first predictions again in float32
    gate: FidelityGateConfig = field(default_factory=FidelityGateConfig)
    train_check: TrainPrecisionCheckConfig = field(default_factory=TrainPrecisionCheckConfig)
    cache_check: CachePrecisionCheckConfig = field(default_factory=CachePrecisionCheckConfig)

    def validate(self) -> None:
        for stage in ("cache", "train", "evaluate"):
            choice(getattr(self, stage), f"precision.{stage}", SETTINGS)
        for name in ("cache_float32_positions", "evaluate_float32_positions"):
            require(isinstance(getattr(self, name), int) and getattr(self, name) >= 0,
                    f"precision.{name}", "must be a non-negative integer")
        self.gate.validate()
        self.train_check.validate()
        self.cache_check.validate()
