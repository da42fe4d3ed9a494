"""This project's SAEs in sae-lens, beyond `SAE.load_from_disk`:

- `register_untied()`: the untied Gated ablation (Fig. 8), which has no sae-lens architecture, registered
  with sae-lens as `gated_untied`, so `SAE.load_from_disk` and `HookedSAETransformer.add_sae` take it
  too (importing `gatedsae.saes.hooked` does this);
- `token_dataset(sae)`: the pipeline's own token windows as the dataset sae-lens' `ActivationsStore`
  reads: an SAE's metadata names the pipeline's model and corpus (`smollm2-135m`, `offline_prose`), not
  a hub model or dataset, and this rebuilds the very windows it was trained and evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

UNTIED = "gated_untied"


def register_untied() -> None:
    """Register the untied Gated SAE with sae-lens (once; a second call does nothing)."""
    from sae_lens.registry import SAE_CLASS_REGISTRY, register_sae_class

    if UNTIED not in SAE_CLASS_REGISTRY:
        config_class, sae_class = _untied_classes()
        register_sae_class(UNTIED, sae_class, config_class)


def _untied_classes():
    from sae_lens.saes.sae import SAE, SAEConfig
    from torch import nn

    @dataclass
    class GatedUntiedSAEConfig(SAEConfig):
        """A Gated SAE whose magnitude path has its own encoder (W_mag) instead of W_enc · exp(r_mag)."""

        @classmethod
        def architecture(cls) -> str:
            return UNTIED

    class GatedUntiedSAE(SAE[GatedUntiedSAEConfig]):
        """Inference only: f(x) = 1[(x − b_dec) W_enc + b_gate > 0] · relu((x − b_dec) W_mag + b_mag)."""

        def __init__(self, cfg: GatedUntiedSAEConfig, use_error_term: bool = False):
            super().__init__(cfg, use_error_term)
            self.b_enc = None

        def initialize_weights(self) -> None:
            super().initialize_weights()
            zeros = lambda: nn.Parameter(torch.zeros(self.cfg.d_sae, dtype=self.dtype, device=self.device))  # noqa: E731
            self.b_gate, self.b_mag = zeros(), zeros()
            self.W_mag = nn.Parameter(self.W_enc.data.clone())

        def encode(self, x: torch.Tensor) -> torch.Tensor:
            sae_in = self.process_sae_in(x)
            active = (sae_in @ self.W_enc + self.b_gate > 0).to(self.dtype)
            magnitude = self.activation_fn(self.hook_sae_acts_pre(sae_in @ self.W_mag + self.b_mag))
            return self.hook_sae_acts_post(active * magnitude)

        def decode(self, feature_acts: torch.Tensor) -> torch.Tensor:
            out = self.hook_sae_recons(feature_acts @ self.W_dec + self.b_dec)
            out = self.run_time_activation_norm_fn_out(out)
            return self.reshape_fn_out(out, self.d_head)

    return GatedUntiedSAEConfig, GatedUntiedSAE


def token_dataset(sae, split: str = "heldout", data: str | Path = "data"):
    """A `datasets.Dataset` of the pipeline's token windows (`input_ids`, BOS first, the SAE's context
    size) for the model and corpus an SAE's metadata names: pass it to `ActivationsStore.from_sae(model,
    sae, dataset=token_dataset(sae))`. `split`: "heldout" (never trained on) or "train"."""
    from datasets import Dataset

    from gatedsae.data.corpus import load_windows
    from gatedsae.plan.config import PathsConfig

    metadata = sae.cfg.metadata
    folder = PathsConfig(data=str(data)).tokens_dir(metadata.model_name, metadata.dataset_path)
    if not folder.exists():
        raise FileNotFoundError(f"{folder} not found: the SAE's model ({metadata.model_name}) and corpus "
                                f"({metadata.dataset_path}) have not been tokenized under {data}/; run the "
                                "pipeline's tokenize stage first, or pass data= the data folder that holds them")
    windows = np.asarray(load_windows(folder, split))
    if windows.shape[1] != metadata.context_size:
        raise ValueError(f"{folder} holds windows of {windows.shape[1]} tokens, the SAE was trained on "
                         f"{metadata.context_size}")
    return Dataset.from_dict({"input_ids": windows.tolist()})
