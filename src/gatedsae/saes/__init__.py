"""Sparse autoencoders: one module per architecture, all `BatchedSAE`s (see `base.py`); the registry in
`gatedsae.plan.architectures` names them. Checkpoints (sae-lens layout) in `checkpoints.py`."""

from gatedsae.saes.base import BatchedSAE, LossTerms, load_slice_state, make_sae, slice_state
from gatedsae.saes.baseline import BaselineSAE
from gatedsae.saes.gated import GatedNoRmagSAE, GatedSAE, GatedUnfrozenDecoderSAE, GatedUntiedSAE, to_jumprelu
from gatedsae.saes.jumprelu import JumpReLUSAE
from gatedsae.saes.jumprelu_form import jumprelu_encode
from gatedsae.saes.rescale_shift import RescaleShiftSAE
from gatedsae.saes.topk import TopKSAE

__all__ = [
    "BaselineSAE", "BatchedSAE", "GatedNoRmagSAE", "GatedSAE", "GatedUnfrozenDecoderSAE", "GatedUntiedSAE",
    "JumpReLUSAE", "LossTerms", "RescaleShiftSAE", "TopKSAE", "jumprelu_encode", "load_slice_state", "make_sae",
    "slice_state", "to_jumprelu",
]
