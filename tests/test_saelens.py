"""Our checkpoints in sae-lens 6.x: complete metadata, and an SAE attached to a HookedSAETransformer of
the same model gives the spliced loss our evaluation computes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED, copy_data

from gatedsae.data.corpus import load_windows
from gatedsae.evaluation.evaluate import CheckpointSAE
from gatedsae.evaluation.spliced import SplicedLM
from gatedsae.plan.architectures import architecture
from gatedsae.plan.grid import GRID_INDEX, read_grid_index
from gatedsae.plan.sites import hook_name
from gatedsae.saes.checkpoints import SAELENS_FORMAT_VERSION, read_checkpoint

sae_lens = pytest.importorskip("sae_lens")

SITES = ("resid_post", "mlp_out", "attn_z")
LAYER = 1


@pytest.fixture(scope="module")
def smoke_grids(smoke_trained, tmp_path_factory):
    """A copy of the session's trained smoke sweep: (config, {site: grid index})."""
    config = copy_data(smoke_trained, tmp_path_factory.mktemp("saelens"), TRAINED)
    grid = lambda site: config.paths.checkpoints_dir("tiny", "tiny", site, LAYER, "smoke") / GRID_INDEX  # noqa: E731
    return config, {site: read_grid_index(grid(site)) for site in SITES}


def _loadable(entries: list[dict]) -> list[dict]:
    return [entry for entry in entries if architecture(entry["arch"]).saelens_loadable]


def test_sae_lens_reads_the_complete_metadata(smoke_grids):
    config, grids = smoke_grids
    for site, index in grids.items():
        for entry in _loadable(index):
            metadata = sae_lens.SAE.load_from_disk(entry["path"], device="cpu").cfg.metadata
            assert metadata.sae_lens_version == SAELENS_FORMAT_VERSION
            assert metadata.model_name == config.model.name == "tiny"
            assert metadata.hook_name == hook_name(site, LAYER)
            assert metadata.context_size == config.experiment.context_length
            assert metadata.prepend_bos is True and list(metadata.seqpos_slice) == [1, None]
            assert metadata.hook_head_index is None and metadata.dataset_path == config.corpus.name
            assert metadata.model_from_pretrained_kwargs == {}
            assert metadata.model_weights["source"] == "random"


@pytest.mark.parametrize("site", SITES)
def test_an_attached_sae_gives_our_spliced_loss(smoke_grids, tiny_model, site):
    """HookedSAETransformer + add_sae (BOS left clean, as in training) = SplicedLM with our reconstruction,
    token by token, for every loadable SAE of the site."""
    from gatedsae.saes.hooked import as_hooked_sae_transformer

    config, grids = smoke_grids
    tokens_dir = config.paths.tokens_dir("tiny", "tiny")
    tokens = torch.from_numpy(np.asarray(load_windows(tokens_dir, "heldout")[:4], dtype=np.int64))
    bos = int(tokens[0, 0])
    assert (tokens[:, 0] == bos).all() and not (tokens[:, 1:] == bos).any()  # BOS only at position 0
    model = as_hooked_sae_transformer(tiny_model.model)
    spliced = SplicedLM(tiny_model.model, site, LAYER)
    prefix = spliced.prefix(tokens)
    torch.testing.assert_close(model(tokens, return_type="loss", loss_per_token=True)[:, 1:],
                               spliced.token_losses(prefix, None))  # the two models agree, clean
    for entry in _loadable(grids[site]):
        ours = CheckpointSAE.load(entry["path"])
        flat = prefix.activation.reshape(-1, prefix.activation.shape[-1]).float()
        expected = spliced.token_losses(prefix, ours.decode(ours.encode(flat)).reshape(prefix.activation.shape))
        sae = sae_lens.SAE.load_from_disk(entry["path"], device="cpu")
        model.add_sae(sae, exclude_special_tokens=[bos])
        try:
            assert hook_name(site, LAYER) in model.acts_to_saes, "add_sae skipped the SAE (hook not found)"
            with torch.no_grad():
                theirs = model(tokens, return_type="loss", loss_per_token=True)[:, 1:]
        finally:
            model.reset_saes()
        torch.testing.assert_close(theirs, expected, rtol=1e-5, atol=1e-5, msg=entry["sae"])
        assert not torch.allclose(expected, spliced.token_losses(prefix, None)), "the SAE must change the loss"


def test_checkpoint_cfg_has_no_private_keys_sae_lens_ignores(smoke_grids):
    """Everything in cfg.json is either an sae-lens config field or its metadata (nothing silently lost)."""
    _, grids = smoke_grids
    cfg, _, _ = read_checkpoint(_loadable(grids["resid_post"])[0]["path"])
    sae = sae_lens.SAE.load_from_disk(_loadable(grids["resid_post"])[0]["path"], device="cpu")
    written = sae.cfg.to_dict()
    assert set(cfg) <= set(written), set(cfg) - set(written)
    assert cfg["metadata"].items() <= written["metadata"].items()


def test_an_older_checkpoint_is_upgraded_in_place_without_touching_its_weights(smoke_grids, tmp_path):
    from gatedsae.cli.main import main
    from gatedsae.saes.checkpoints import CFG_FILE, checkpoint_id

    config, grids = smoke_grids
    entry = _loadable(grids["mlp_out"])[0]
    # a copy of the trained data, whose one checkpoint gets the old format
    data = copy_data(config, tmp_path / "data", ("tokens", "activations", "checkpoints")).paths.root
    old = data / Path(entry["path"]).relative_to(config.paths.root)
    cfg = json.loads((old / CFG_FILE).read_text())
    cfg["meta"] = {k: cfg["metadata"][k] for k in ("model_name", "hook_name", "context_size")}
    del cfg["metadata"]  # the format before sae-lens metadata
    (old / CFG_FILE).write_text(json.dumps(cfg))
    assert sae_lens.SAE.load_from_disk(old).cfg.metadata.hook_name is None  # what the upgrade fixes
    identity = checkpoint_id(old)
    assert main(["upgrade-checkpoints", "experiment=smoke", f"paths.data={data}"]) == 0
    assert json.loads((old / CFG_FILE).read_text()) == json.loads((Path(entry["path"]) / CFG_FILE).read_text())
    assert sae_lens.SAE.load_from_disk(old).cfg.metadata.hook_name == hook_name("mlp_out", LAYER)
    assert checkpoint_id(old) == identity
    read_checkpoint(old)  # its recorded hashes follow the rewritten cfg.json


def test_the_untied_ablation_loads_in_sae_lens_once_gatedsae_registers_it(smoke_grids):
    """Plain sae-lens does not know `gated_untied` (KeyError); importing gatedsae.saes.hooked registers it, and
    the loaded SAE computes what our checkpoint reader computes."""
    import subprocess
    import sys

    _, grids = smoke_grids
    entry = next(e for e in grids["resid_post"] if e["arch"] == "gated_untied")
    plain = subprocess.run([sys.executable, "-c", f"from sae_lens import SAE; SAE.load_from_disk({str(entry['path'])!r})"],
                           capture_output=True, text=True)
    assert plain.returncode != 0 and "KeyError: 'gated_untied'" in plain.stderr  # what the docs warn about
    import gatedsae.saes.hooked  # noqa: F401  (registers gated_untied)

    sae = sae_lens.SAE.load_from_disk(entry["path"], device="cpu")
    ours = CheckpointSAE.load(entry["path"])
    x = torch.randn(64, ours.cfg["d_in"]) * 3
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(sae.encode(x)), ours.reconstruct(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("site", ["resid_post", "attn_z"])
def test_sae_lens_activation_store_rebuilds_the_pipelines_data(smoke_grids, site):
    """token_dataset(sae) + ActivationsStore.from_sae: the windows the SAE was evaluated on, and from them the
    very activations the pipeline cached (BOS left out, as the metadata's seqpos_slice says)."""
    from gatedsae.activations.store import ActivationStore
    from gatedsae.saes.hooked import load_hooked_sae_transformer, token_dataset

    config, grids = smoke_grids
    sae = sae_lens.SAE.load_from_disk(_loadable(grids[site])[0]["path"], device="cpu")
    model, _ = load_hooked_sae_transformer(sae.cfg.metadata.model_name, data=str(config.paths.root))
    store = sae_lens.ActivationsStore.from_sae(model, sae, dataset=token_dataset(sae, data=config.paths.root),
                                               streaming=False, store_batch_size_prompts=4)
    tokens = store.get_batch_tokens(4)
    windows = np.asarray(load_windows(config.paths.tokens_dir("tiny", "tiny"), "heldout")[:4], dtype=np.int64)
    assert torch.equal(tokens, torch.from_numpy(windows))
    theirs = store.get_activations(tokens).reshape(-1, sae.cfg.d_in)
    cached = ActivationStore(config.paths.activations_dir("tiny", "tiny", site, LAYER), "heldout")
    torch.testing.assert_close(theirs, cached.rows(0, None, torch.float32)[: len(theirs)], rtol=1e-5, atol=1e-5)


def test_a_hub_export_loads_with_sae_lens_from_pretrained_without_network(smoke_grids, tmp_path):
    """export-hub's folder, placed as the Hugging Face cache holds a downloaded repository, loads through sae-lens'
    pretrained loader offline: weights equal to the checkpoint's, sparsity the held-out firing frequency."""
    import os
    import subprocess
    import sys

    from gatedsae.cli.main import main
    from gatedsae.reporting.browser import development_windows, heldout_shards, scan

    config, grids = smoke_grids
    out = tmp_path / "hub"
    assert main(["export-hub", "experiment=smoke", f"paths.data={config.paths.root}", "--repo=someone/smoke-saes",
                 f"--out={out}", f"experiment.results_dir={tmp_path / 'results'}", "sweep.rescale_shift=false"]) == 0
    exported = sorted(str(p.parent.relative_to(out)) for p in out.rglob("cfg.json"))
    loadable = sorted(f"{hook_name(site, LAYER)}/{e['sae']}" for site, index in grids.items() for e in _loadable(index))
    assert exported == loadable and "gated_untied" in (out / "README.md").read_text()  # named, left out
    snapshot = tmp_path / "cache" / "models--someone--smoke-saes" / "snapshots" / ("0" * 40)
    shutil.copytree(out, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    sae_id = next(i for i in exported if i.startswith(hook_name("attn_z", LAYER)))
    script = ("import json, sys, torch\nfrom sae_lens import SAE\n"
              f"sae, cfg, sparsity = SAE.from_pretrained_with_cfg_and_sparsity('someone/smoke-saes', {sae_id!r})\n"
              "json.dump({'W_dec': sae.W_dec.tolist(), 'hook': sae.cfg.metadata.hook_name, "
              "'sparsity': sparsity.tolist()}, sys.stdout)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path)}
    loaded = json.loads(subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True,
                                       check=True).stdout)
    checkpoint = next(e for e in grids["attn_z"] if sae_id.endswith("/" + e["sae"]))
    ours = CheckpointSAE.load(checkpoint["path"])
    torch.testing.assert_close(torch.tensor(loaded["W_dec"]), ours.tensors["W_dec"])
    assert loaded["hook"] == hook_name("attn_z", LAYER)
    from gatedsae.activations.store import ActivationStore

    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", "attn_z", LAYER), "heldout")
    development = development_windows(config)  # the validation split's windows: densities never read the test's
    assert development is not None and development.any() and not development.all()
    scanned = scan(ours, heldout_shards(store, None, ours.massive_norm_threshold, development), 1024)
    torch.testing.assert_close(torch.tensor(loaded["sparsity"]), torch.log10(scanned.fired.double() / scanned.rows).float())
