"""The architecture registry: everything the pipeline knows about an SAE architecture, in one torch-free
record per architecture. Configuration, checkpoints, resource estimates, tables and figures read it; the
torch module that implements an architecture is imported only when an SAE is built (`sae_class`).

Adding an architecture: its module under `gatedsae/saes/` (a `BatchedSAE` subclass), one `register(...)`
below, and a sweep group using it in `conf/sweep/`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Mapping, Optional

# Tensor shapes of a sae-lens checkpoint, in terms of its cfg.json's d_in and d_sae.
ENCODER, DECODER, INPUT, FEATURE = ("d_in", "d_sae"), ("d_sae", "d_in"), ("d_in",), ("d_sae",)
SAELENS_TENSORS = {
    "standard": {"W_enc": ENCODER, "b_enc": FEATURE, "W_dec": DECODER, "b_dec": INPUT},
    "gated": {"W_enc": ENCODER, "b_gate": FEATURE, "r_mag": FEATURE, "b_mag": FEATURE, "W_dec": DECODER,
              "b_dec": INPUT},
    "gated_untied": {"W_enc": ENCODER, "W_mag": ENCODER, "b_gate": FEATURE, "b_mag": FEATURE, "W_dec": DECODER,
                     "b_dec": INPUT},
    "jumprelu": {"W_enc": ENCODER, "b_enc": FEATURE, "threshold": FEATURE, "W_dec": DECODER, "b_dec": INPUT},
    "topk": {"W_enc": ENCODER, "b_enc": FEATURE, "W_dec": DECODER, "b_dec": INPUT},
}

# Which axis of a batched module's tensor indexes the features: [n, d, width] encoders, [n, width, d]
# decoders, [n, width] biases. Resampling re-initialises these slices of a dead feature.
ENCODER_AXIS, DECODER_AXIS, FEATURE_AXIS = 2, 1, 1



@dataclass(frozen=True)
class Knob:
    """A grid's sparsity knob, named as its architecture's paper names it: the key in conf/, checkpoint
    records and metrics rows, and the symbol in tables and figures."""

    symbol: str
    meaning: str
    penalty: bool  # a coefficient of a penalty in the loss (converted by l1_units), or a count (k)


KNOBS = {
    "l1": Knob("λ", "the L1 penalty's coefficient", penalty=True),                 # baseline, Gated
    "l0_coefficient": Knob("λ_L0", "the L0 penalty's coefficient", penalty=True),  # JumpReLU
    "k": Knob("k", "features kept per token", penalty=False),                      # TopK
}
# Before each knob had its own key, every penalty's coefficient was recorded as "l1": checkpoints, grid
# indexes and metrics rows written then still read through `knob_value`.
LEGACY_KNOB = "l1"


@dataclass(frozen=True)
class Architecture:
    """What the pipeline knows about one architecture."""

    name: str                      # the name in conf/ and in checkpoints
    label: str                     # legends and tables
    colour: str                    # figures
    marker: str                    # figures
    module: str                    # "package.module:Class", the BatchedSAE subclass
    saelens: str                   # the sae-lens architecture its checkpoints are written as
    # Matmul FLOPs per token and per (d × width) of one training step (forward + backward, no input grad).
    train_flops_per_dw: int
    feature_axes: dict[str, int] = field(default_factory=dict)  # trainable tensor → its feature axis
    encoders: int = 1              # [d, width] encoder matrices (memory estimates)
    knob: str = "l1"               # the grid's sparsity knob (a key of KNOBS)
    role: str = "main"             # a key of ROLES: which question of the study the architecture answers
    versus: str = ""               # what comparisons.csv and the verdict measure it against ("": the question's own pair)
    wraps: str = ""                # the trained architecture it is built on (rescale-and-shift: a frozen baseline)
    saelens_loadable: bool = True  # whether sae-lens can load the checkpoint
    saelens_cfg_fields: tuple[str, ...] = ()  # its own fields in cfg.json (BatchedSAE.saelens_cfg_extra)
    resamples: bool = True         # dead features are resampled (Bricken et al.) during training
    sparse_steps: bool = False     # `train.sparse` may take steps on the support only (sparse_step.py)

    @property
    def knob_symbol(self) -> str:
        return KNOBS[self.knob].symbol


ARCHITECTURES: dict[str, Architecture] = {}

# The replication's question, the paper's: does the proposed architecture beat the baseline it improves on?
# The headline, the frontiers, the verdict, the figures and the study compare these two; they name them
# through these constants, never by literal (docs/architecture.md).
PROPOSED, BASELINE = "gated", "baseline"
ROLES = {  # role → what it answers
    "main": "the question itself: the proposed architecture against the baseline (Fig. 1, the tables)",
    "ablation": "Fig. 8: is the proposed architecture's every part needed? (each ablation against it)",
    "rescale_shift": "Fig. 9: does fixing the baseline's shrinkage alone close the gap?",
    "successor": "beyond the paper: later architectures against the proposed one",
}


def register(architecture: Architecture) -> Architecture:
    if architecture.name in ARCHITECTURES:
        raise ValueError(f"architecture {architecture.name!r} is registered twice")
    if architecture.knob not in KNOBS:
        raise ValueError(f"architecture {architecture.name!r}: unknown knob {architecture.knob!r}; use one of {list(KNOBS)}")
    if architecture.role not in ROLES:
        raise ValueError(f"architecture {architecture.name!r}: unknown role {architecture.role!r}; use one of {list(ROLES)}")
    if architecture.saelens not in SAELENS_TENSORS:
        raise ValueError(f"architecture {architecture.name!r}: no tensor layout for sae-lens {architecture.saelens!r}")
    ARCHITECTURES[architecture.name] = architecture
    return architecture


def architecture(name: str) -> Architecture:
    try:
        return ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown SAE architecture {name!r}; known architectures: {', '.join(ARCHITECTURES)}") from None


def sae_class(name: str) -> type:
    """The torch module implementing `name` (imports torch)."""
    module, _, attribute = architecture(name).module.partition(":")
    return getattr(importlib.import_module(module), attribute)


def by_saelens(saelens: str) -> Optional[Architecture]:
    """The first architecture written as sae-lens `saelens` (they all read back alike)."""
    return next((a for a in ARCHITECTURES.values() if a.saelens == saelens), None)


def knob_of(name: str) -> str:
    """The architecture's sparsity knob ("l1" when unknown: older rows and checkpoints)."""
    return ARCHITECTURES[name].knob if name in ARCHITECTURES else "l1"


def knob_value(name: str, values: Mapping):
    """An SAE's knob value, read from its record, grid entry or metrics row (one written before the knob had
    its own key holds it under LEGACY_KNOB)."""
    knob = knob_of(name)
    value = values.get(knob)
    if (value is None or value != value) and KNOBS[knob].penalty:  # missing, or NaN in a table's empty cell
        value = values.get(LEGACY_KNOB)
    return value


def knob_fields(name: str, values: Mapping) -> dict:
    """{knob: value} of an SAE, as recorded in checkpoints, grid indexes and metrics rows."""
    knob = knob_of(name)
    value = knob_value(name, values)
    return {knob: int(value) if knob == "k" and value is not None else value}


def knob_text(name: str, values: Mapping) -> str:
    """"λ = 0.02", "λ_L0 = 0.001" or "k = 32": an SAE's knob, read from its record, grid entry or row."""
    return f"{KNOBS[knob_of(name)].symbol} = {float(knob_value(name, values)):g}"


def label(name: str) -> str:
    return ARCHITECTURES[name].label if name in ARCHITECTURES else name


def names(role: Optional[str] = None) -> list[str]:
    """Registered architectures, in registration order (those of one role when given)."""
    return [a.name for a in ARCHITECTURES.values() if role is None or a.role == role]


def versus(name: str) -> str:
    """What an architecture is measured against in comparisons.csv and the verdict (its record's `versus`)."""
    return ARCHITECTURES[name].versus


def rescale_shift_base() -> str:
    """The architecture Fig. 9's rescale-and-shift is trained on top of (its record's `wraps`)."""
    return ARCHITECTURES[only("rescale_shift")].wraps


def only(role: str) -> str:
    """The one architecture of `role` (rescale-and-shift has one)."""
    found = names(role)
    if len(found) != 1:
        raise ValueError(f"role {role!r} has {len(found)} architectures ({found}); expected exactly one")
    return found[0]


_GATED_AXES = {"W_gate": ENCODER_AXIS, "W_dec": DECODER_AXIS, "b_gate": FEATURE_AXIS, "b_mag": FEATURE_AXIS,
               "r_mag": FEATURE_AXIS}
_ENCODER_AXES = {"W_enc": ENCODER_AXIS, "W_dec": DECODER_AXIS, "b_enc": FEATURE_AXIS}

register(Architecture(
    name="gated", label="Gated", colour="#1f77b4", marker="o", module="gatedsae.saes.gated:GatedSAE",
    saelens="gated", train_flops_per_dw=14, feature_axes=_GATED_AXES, sparse_steps=True))
register(Architecture(
    name="baseline", label="Baseline", colour="#d62728", marker="s", module="gatedsae.saes.baseline:BaselineSAE",
    saelens="standard", train_flops_per_dw=10, feature_axes=_ENCODER_AXES, sparse_steps=True))
register(Architecture(
    name="gated_unfrozen_decoder", label="Gated, unfrozen decoder", colour="#9467bd", marker="^",
    module="gatedsae.saes.gated:GatedUnfrozenDecoderSAE", saelens="gated", train_flops_per_dw=14,
    feature_axes=_GATED_AXES, role="ablation", versus="gated", sparse_steps=True))
register(Architecture(
    name="gated_no_rmag", label="Gated, no r_mag", colour="#2ca02c", marker="v",
    module="gatedsae.saes.gated:GatedNoRmagSAE", saelens="gated", train_flops_per_dw=14, feature_axes=_GATED_AXES,
    role="ablation", versus="gated", sparse_steps=True))
register(Architecture(
    name="gated_untied", label="Gated, untied encoders", colour="#ff7f0e", marker="D",
    module="gatedsae.saes.gated:GatedUntiedSAE", saelens="gated_untied", train_flops_per_dw=18,
    feature_axes={**{k: v for k, v in _GATED_AXES.items() if k != "r_mag"}, "W_mag": ENCODER_AXIS}, encoders=2,
    role="ablation", versus="gated", saelens_loadable=False, sparse_steps=True))
register(Architecture(
    name="baseline_rescale_shift", label="Baseline + rescale & shift", colour="#8c564b", marker="P",
    module="gatedsae.saes.rescale_shift:RescaleShiftSAE", saelens="gated", train_flops_per_dw=6,
    feature_axes={**_ENCODER_AXES, "b_mag": FEATURE_AXIS, "r_mag": FEATURE_AXIS}, role="rescale_shift",
    versus="baseline", wraps="baseline", sparse_steps=True))
register(Architecture(
    name="jumprelu", label="JumpReLU", colour="#17becf", marker="X", module="gatedsae.saes.jumprelu:JumpReLUSAE",
    saelens="jumprelu", train_flops_per_dw=10, feature_axes={**_ENCODER_AXES, "threshold": FEATURE_AXIS},
    knob="l0_coefficient", role="successor", versus="gated"))
register(Architecture(
    name="topk", label="TopK", colour="#e377c2", marker="*", module="gatedsae.saes.topk:TopKSAE", saelens="topk",
    train_flops_per_dw=10, feature_axes=_ENCODER_AXES, knob="k", role="successor", versus="gated",
    saelens_cfg_fields=("k", "rescale_acts_by_decoder_norm"), resamples=False))  # AuxK keeps latents alive
