"""The successors end to end on the tiny model: JumpReLU and TopK train in a grid beside Gated and the
baseline, their checkpoints load in sae-lens and compute our features, they are evaluated, and the
aggregate puts them in metrics.csv, the matched comparisons and the successors' figure."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
import torch
from conftest import copy_data

from gatedsae.activations.store import ActivationStore
from gatedsae.evaluation.evaluate import evaluate_grid
from gatedsae.plan.architectures import architecture
from gatedsae.plan.config import SAEGroupConfig
from gatedsae.plan.grid import read_grid_index
from gatedsae.reporting.figures import ablations
from gatedsae.reporting.tables import aggregate
from gatedsae.saes.checkpoints import decode_raw, encode_raw, read_checkpoint
from gatedsae.training.stages import train_grid

SITE, LAYER = "resid_post", 1
GROUPS = [
    SAEGroupConfig(arch="baseline", width_ratio=2.0, lr=3e-3, l1=[0.01, 0.1]),
    SAEGroupConfig(arch="gated", width_ratio=2.0, lr=3e-3, l1=[0.01, 0.1]),
    SAEGroupConfig(arch="jumprelu", width_ratio=2.0, lr=3e-3, l0_coefficient=[0.001, 0.01]),
    SAEGroupConfig(arch="topk", width_ratio=2.0, lr=3e-3, k=[2, 8]),
]


@pytest.fixture(scope="module")
def successors(smoke_cache, tiny_model, tmp_path_factory):
    data = tmp_path_factory.mktemp("successors")
    config = copy_data(smoke_cache, data, ("text", "tokens", "activations"), "sweep.name=successors",
                       "sweep.rescale_shift=false")
    config = replace(config, sweep=replace(config.sweep, groups=GROUPS),
                     experiment=replace(config.experiment, results_dir=str(data / "results"), chapters=[]))
    config.validate()
    index = read_grid_index(train_grid(config, SITE, LAYER, progress=False))
    outputs = aggregate([evaluate_grid(config, SITE, LAYER, progress=False, loaded=tiny_model)],
                        config.experiment.results, split="validation")  # development's tables, as the stage writes them
    return config, index, outputs


def test_checkpoints_load_in_sae_lens_and_compute_our_features(successors):
    sae_lens = pytest.importorskip("sae_lens")
    config, index, _ = successors
    raw = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout").shard(0).float()[:64]
    assert {entry["arch"] for entry in index} == {"baseline", "gated", "jumprelu", "topk"}
    for entry in index:
        if entry["arch"] not in ("jumprelu", "topk"):
            continue
        cfg, tensors, record = read_checkpoint(entry["path"])
        assert cfg["architecture"] == architecture(entry["arch"]).saelens
        knob = architecture(entry["arch"]).knob
        assert record[knob] == entry[knob] and knob in entry["sae"]
        sae = sae_lens.SAE.load_from_disk(entry["path"], device="cpu")
        assert type(sae).__name__ == {"jumprelu": "JumpReLUSAE", "topk": "TopKSAE"}[entry["arch"]]
        with torch.no_grad():
            ours = encode_raw(cfg, tensors, raw)
            torch.testing.assert_close(sae.encode(raw), ours, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sae.decode(ours), decode_raw(tensors, ours), rtol=1e-4, atol=1e-4)
        if entry["arch"] == "topk":
            assert cfg["k"] == entry["k"] and int((ours > 0).sum(-1).max()) <= entry["k"]


def test_they_are_evaluated_and_reported_beside_gated(successors, tmp_path):
    _, _, outputs = successors
    metrics = pd.read_csv(outputs["metrics"])
    seeds = metrics["seed"].nunique()
    assert seeds == 2  # every SAE trained with each of smoke's seeds
    topk = metrics[metrics["arch"] == "topk"].sort_values(["k", "seed"])
    assert list(topk["k"]) == [2] * seeds + [8] * seeds and topk["l1"].isna().all() and topk["l0_coefficient"].isna().all()
    assert (topk["l0"] <= topk["k"] + 1e-6).all() and topk["l0"].iloc[0] < topk["l0"].iloc[-1]
    jumprelu = metrics[metrics["arch"] == "jumprelu"]
    assert len(jumprelu) == 2 * seeds and jumprelu["loss_recovered"].notna().all() and jumprelu["l1"].isna().all()
    assert sorted(set(jumprelu["l0_coefficient"])) == [0.001, 0.01]
    comparisons = pd.read_csv(outputs["comparisons"])
    assert {("jumprelu", "gated"), ("topk", "gated")} <= set(zip(comparisons["arch"], comparisons["versus"]))
    table = outputs["markdown"].read_text()
    assert "TopK" in table and "k = 8" in table and "JumpReLU" in table
    stems = [stem for stem, _ in ablations.figures(metrics.assign(pareto=True))]
    assert "successors_pareto" in stems
