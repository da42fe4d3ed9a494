"""The grid trainer: a grid equals its SAEs trained alone, resume after SIGKILL, NaN stop, checkpoints."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import TRAINED, copy_data, smoke_config

from gatedsae.activations.store import ActivationStore
from gatedsae.plan.architectures import SAELENS_TENSORS, architecture
from gatedsae.plan.config import ConfigError, SAEGroupConfig, SweepConfig, load_config
from gatedsae.plan.grid import GRID_INDEX, grid_specs, read_grid_index
from gatedsae.saes.checkpoints import decode_raw, encode_raw, read_checkpoint
from gatedsae.training.stages import train_grid
from gatedsae.training.trainer import STATE_FILE, GridTrainer, NonFiniteLossError, lr_factor

SITE, LAYER = "resid_post", 1


def _trainer(config, out_dir, sweep=None, seed=None, **train):
    """A trainer of the sweep (every seed), or with `seed` given only that seed's SAEs (None: train.seed's)."""
    config = replace(config, sweep=sweep or config.sweep, train=replace(config.train, **train))
    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "train")
    specs = None
    if sweep is not None:
        specs = [s for s in grid_specs(config, store.d, SITE) if s.seed == seed]
    return GridTrainer(config, store, out_dir, specs=specs)


def _params(trainer, spec):
    module = trainer.modules[spec.group]
    return {name: p[spec.index].detach().clone() for name, p in module.named_parameters()}


def _kill_features(trainer, count=5):
    """Make the first `count` features of every SAE dead (their gate never opens), so resampling runs."""
    with torch.no_grad():
        for module in trainer.modules:
            bias = module.b_gate if hasattr(module, "b_gate") else module.b_enc
            bias[:, :count] = -1e4


@pytest.mark.parametrize("sparse", ["auto", "always"])
def test_an_sae_trained_in_a_grid_equals_it_trained_alone(smoke_cache, tmp_path, sparse):
    grid = _trainer(smoke_cache, tmp_path / "grid", sparse=sparse)
    _kill_features(grid)
    grid.run(progress=False)
    assert {r["sae"] for r in grid.resampled} == {s.name for s in grid.specs}, "resampling must run for every SAE"
    for spec in grid.specs:
        alone_sweep = SweepConfig("alone", [SAEGroupConfig(spec.arch, smoke_cache.sweep.groups[spec.group].width_ratio,
                                                           spec.lr, [spec.value])])
        alone = _trainer(smoke_cache, tmp_path / f"alone-{spec.name}", sweep=alone_sweep, seed=spec.seed, sparse=sparse)
        _kill_features(alone)
        alone.run(progress=False)
        expected = _params(alone, alone.specs[0])
        for name, value in _params(grid, spec).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=f"{spec.name}.{name}")


def test_training_on_the_support_equals_dense_training(smoke_cache, tmp_path):
    """Every group of the smoke grid (Gated, baseline, untied), with resampling on the way, trained with
    sparse steps only and with dense steps only: the same SAEs up to float rounding."""
    runs = {}
    for sparse in ("always", "never"):
        trainer = _trainer(smoke_cache, tmp_path / sparse, sparse=sparse)
        _kill_features(trainer)
        trainer.run(progress=False)
        assert trainer.resampled and trainer.sparse_steps == [trainer.steps if sparse == "always" else 0] * 3
        runs[sparse] = trainer
    for spec in runs["never"].specs:
        expected = _params(runs["never"], spec)
        for name, value in _params(runs["always"], spec).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=f"{spec.name}.{name}")


def test_auto_steps_densely_on_a_dense_code_and_sparsely_on_a_sparse_one(smoke_cache, tmp_path):
    no_resampling = [0.9]  # it would reopen the closed features
    trainer = _trainer(smoke_cache, tmp_path / "auto", sparse="auto", sparse_max_density=0.15,
                       resample_at=no_resampling)
    with torch.no_grad():  # the Gated group: 4 features of each SAE can open, so L0 / width ≤ 4 / width
        trainer.modules[0].b_gate[:, 4:] = -1e4
    trainer.run(progress=False, stop_after=10)
    densities = {g: max(trainer.last_losses[s.name]["l0"] / s.width for s in trainer.specs if s.group == g)
                 for g in range(len(trainer.modules))}
    assert densities[0] <= 4 / trainer.specs[0].width and densities[1] > 0.15, densities
    assert trainer.sparse_steps[0] == 9  # every step after the first (no L0 measured before it)
    assert trainer.sparse_steps[1] == 0  # the baseline's code stays dense: dense steps
    reference = _trainer(smoke_cache, tmp_path / "dense", sparse="never", resample_at=no_resampling)
    with torch.no_grad():
        reference.modules[0].b_gate[:, 4:] = -1e4
    reference.run(progress=False, stop_after=10)
    for spec in reference.specs:
        expected = _params(reference, spec)
        for name, value in _params(trainer, spec).items():
            torch.testing.assert_close(value, expected[name], rtol=1e-4, atol=1e-5, msg=f"{spec.name}.{name}")


def test_resampling_reinitialises_only_dead_features(smoke_cache, tmp_path):
    trainer = _trainer(smoke_cache, tmp_path)
    trainer.run(progress=False, stop_after=4)
    _kill_features(trainer, count=3)
    for idle in trainer.idle_steps:
        idle[:, :3] = trainer.train.resample_window_steps
    before = [{k: p.detach().clone() for k, p in m.named_parameters()} for m in trainer.modules]
    x = next(iter(trainer.store.batches(128, seed=5))) * trainer.scale
    trainer._resample_dead(x)
    for module, optimizer, old in zip(trainer.modules, trainer.optimizers, before):
        new = dict(module.named_parameters())
        assert not torch.equal(new["W_dec"][:, :3], old["W_dec"][:, :3])
        assert torch.equal(new["W_dec"][:, 3:], old["W_dec"][:, 3:]), "alive features must not move"
        torch.testing.assert_close(new["W_dec"].norm(dim=-1), torch.ones(module.n, module.width))
        bias = new["b_gate"] if "b_gate" in new else new["b_enc"]
        assert (bias[:, :3] == 0).all()
        assert (optimizer.state[new["W_dec"]]["exp_avg_sq"][:, :3] == 0).all()
        assert (optimizer.state[new["W_dec"]]["exp_avg_sq"][:, 3:] != 0).any()
    assert len(trainer.resampled) == len(trainer.specs)


def test_resampling_gives_each_dead_feature_its_own_input_while_the_batch_has_rows(smoke_cache, tmp_path):
    # one massive row takes nearly all the ∝ loss² mass: drawn with replacement, every dead feature would
    # get its direction (and fire together); without replacement only one does
    trainer = _trainer(smoke_cache, tmp_path)
    trainer.run(progress=False, stop_after=4)
    dead = 6
    for idle in trainer.idle_steps:
        idle[:, :dead] = trainer.train.resample_window_steps
    x = next(iter(trainer.store.batches(32, seed=5))) * trainer.scale
    x[7] *= 1000.0
    trainer._resample_dead(x)
    for module in trainer.modules:
        rows = module.W_dec[:, :dead].detach()  # [n, dead, d]
        for i in range(module.n):
            cosine = rows[i] @ rows[i].T
            assert (cosine.triu(1) < 0.9999).all(), "two dead features were given the same input"
    from gatedsae.saes.base import _draw_rows
    generator = torch.Generator().manual_seed(0)
    picks = _draw_rows(torch.tensor([0.0, 0.5, 0.3, 0.2]), 5, generator)
    assert len(picks) == 5 and set(picks[:3].tolist()) == {1, 2, 3} and 0 not in picks.tolist()


def test_gradient_clipping_is_per_sae_and_only_above_the_limit(smoke_cache, tmp_path):
    from gatedsae.training.optimizer import clip_grad_norm_per_sae_

    module = _trainer(smoke_cache, tmp_path).modules[0]
    for param in module.trainable_parameters():
        param.grad = torch.ones_like(param)
    module.trainable_parameters()[0].grad[0] *= 100.0  # SAE 0's gradient far larger than SAE 1's
    before = [p.grad.clone() for p in module.trainable_parameters()]
    norms = clip_grad_norm_per_sae_(module, max_norm=float(norms_of(before)[1]) * 1.5)
    assert torch.allclose(norms, norms_of(before))
    after = norms_of([p.grad for p in module.trainable_parameters()])
    torch.testing.assert_close(after[0], norms[1] * 1.5)  # clipped to the limit
    for old, new in zip(before, module.trainable_parameters()):
        assert torch.equal(new.grad[1], old[1])  # under the limit: untouched
        torch.testing.assert_close(new.grad[0], old[0] * (after[0] / norms[0]))  # one factor for all of SAE 0


def norms_of(grads):
    return sum(g.pow(2).flatten(1).sum(1) for g in grads).sqrt()


def test_decoder_rows_stay_unit_norm_and_loss_falls(smoke_cache, tmp_path):
    trainer = _trainer(smoke_cache, tmp_path)
    x = next(iter(trainer.store.batches(256, seed=123))) * trainer.scale
    with torch.no_grad():
        before = [m(x).reconstruction for m in trainer.modules]
    trainer.run(progress=False)
    with torch.no_grad():
        after = [m(x).reconstruction for m in trainer.modules]
    for module, b, a in zip(trainer.modules, before, after):
        norms = module.W_dec.norm(dim=-1)
        torch.testing.assert_close(norms, torch.ones_like(norms))
        assert (a < b).all()


def test_a_site_trains_for_its_own_budget(smoke_cache, tmp_path):
    """train.site_tokens: the trainer at a site with a budget of its own trains that many steps (its
    resamples placed within them); at a site without one, train.tokens applies."""
    batch = smoke_cache.train.batch_size
    own = _trainer(smoke_cache, tmp_path / "own", site_tokens={SITE: 5 * batch})
    other = _trainer(smoke_cache, tmp_path / "other", site_tokens={"attn_z": 5 * batch})
    assert own.steps == 5 and own.train.site_tokens == {}
    assert other.steps == smoke_cache.train.steps != 5
    assert own.resample_steps == sorted({int(f * 5) for f in smoke_cache.train.resample_at})
    own.run(progress=False)
    assert own.step == 5


def test_lr_schedule_warms_up_and_recovers_after_resampling():
    train = load_config(["experiment=smoke"]).train
    factors = [lr_factor(step, train, [10]) for step in range(20)]
    assert factors[0] == pytest.approx(1 / train.lr_warmup_steps)
    assert factors[5] == 1.0
    assert factors[10] == pytest.approx(train.resample_lr_factor)
    assert factors[10] < factors[12] < factors[13] and factors[10 + train.resample_recovery_steps] == 1.0


@pytest.mark.parametrize("sparse", ["auto", "always"])
def test_resume_continues_to_the_same_parameters(smoke_cache, tmp_path, sparse):
    reference = _trainer(smoke_cache, tmp_path / "reference", sparse=sparse)
    reference.run(progress=False)
    first = _trainer(smoke_cache, tmp_path / "resumed", sparse=sparse)
    first.run(progress=False, stop_after=12)  # saved at step 8; steps 9-12 are lost with the "kill"
    resumed = _trainer(smoke_cache, tmp_path / "resumed", sparse=sparse)
    resumed.run(progress=False)
    assert resumed.step == reference.step
    for spec in reference.specs:
        for name, value in _params(resumed, spec).items():
            assert torch.equal(value, _params(reference, spec)[name]), f"{spec.name}.{name}"


@pytest.mark.slow
def test_train_cli_resumes_after_sigkill(smoke_cache, tmp_path):
    overrides = ["train.tokens=16384", "train.checkpoint_every_steps=4"]
    copy_data(smoke_cache, tmp_path, ("activations",))
    command = [sys.executable, "-m", "gatedsae", "train", "experiment=smoke", f"paths.data={tmp_path}",
               f"--site={SITE}", f"--layer={LAYER}", *overrides]
    out_dir = smoke_config(tmp_path, *overrides).paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke")
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        if (out_dir / STATE_FILE).exists():
            state = torch.load(out_dir / STATE_FILE, weights_only=False)
            if state["step"] >= 8:
                os.killpg(process.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not (out_dir / "grid.json").exists()
    subprocess.run(command, check=True, capture_output=True)

    config = copy_data(smoke_cache, tmp_path / "uninterrupted", ("activations",), *overrides)
    train_grid(config, SITE, LAYER, progress=False)
    reference_dir = config.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke")
    for entry in read_grid_index(out_dir / "grid.json"):
        _, resumed, _ = read_checkpoint(out_dir / entry["sae"])
        _, expected, _ = read_checkpoint(reference_dir / entry["sae"])
        for name in expected:
            assert torch.equal(resumed[name], expected[name]), f"{entry['sae']}.{name}"


def test_nan_loss_stops_naming_the_sae_and_keeps_the_last_good_state(smoke_cache, tmp_path):
    trainer = _trainer(smoke_cache, tmp_path)
    trainer.run(progress=False, stop_after=8)
    saved = (tmp_path / STATE_FILE).read_bytes()
    trainer.base_lrs[1] = 1e30  # the baseline group diverges on the next step
    with pytest.raises(NonFiniteLossError, match=next(s for s in trainer.specs if s.group == 1).name) as error:
        trainer.run(progress=False)
    assert "at step 9" in str(error.value) and "(step 8)" in str(error.value)
    assert (tmp_path / STATE_FILE).read_bytes() == saved


def test_bad_sweep_config_is_rejected_before_compute():
    with pytest.raises(ConfigError, match=r"sweep.groups.0.arch"):
        load_config(["experiment=smoke", "sweep.groups.0.arch=relu_softplus"])
    with pytest.raises(ConfigError, match=r"sweep.groups.1.l1"):
        load_config(["experiment=smoke", "sweep.groups.1.l1=[]"])
    with pytest.raises(ConfigError, match=r"train.buffer_rows"):
        load_config(["experiment=smoke", "train.buffer_rows=8"])
    with pytest.raises(ConfigError, match=r"train.sparse"):
        load_config(["experiment=smoke", "train.sparse=fast"])
    with pytest.raises(ConfigError, match=r"train.sparse_max_density"):
        load_config(["experiment=smoke", "train.sparse_max_density=0"])
    with pytest.raises(ConfigError, match=r"train.sparse.*autocast"):
        load_config(["experiment=smoke", "train.sparse=always", "train.autocast_bf16=true"])


@pytest.fixture(scope="module")
def smoke_grid(smoke_trained, tmp_path_factory):
    """A copy of the session's trained smoke sweep: (config, the residual-stream grid index)."""
    config = copy_data(smoke_trained, tmp_path_factory.mktemp("grid"), TRAINED)
    index = config.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke") / GRID_INDEX
    return config, {**json.loads(index.read_text()), "saes": read_grid_index(index)}


def test_checkpoints_are_saelens_layout_and_work_on_raw_activations(smoke_grid):
    config, index = smoke_grid
    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout")
    raw = store.shard(0).float()[:64]
    trainer = _trainer(config, config.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke"))
    assert trainer.try_resume()
    for entry in index["saes"]:
        cfg, tensors, record = read_checkpoint(entry["path"])
        spec = next(s for s in trainer.specs if s.name == entry["sae"])
        assert cfg["architecture"] == architecture(spec.arch).saelens
        assert (cfg["d_in"], cfg["d_sae"]) == (store.d, spec.width)
        assert tensors["W_enc"].shape == (store.d, spec.width) and tensors["W_dec"].shape == (spec.width, store.d)
        assert set(tensors) == set(SAELENS_TENSORS[cfg["architecture"]])
        assert record["l1"] == spec.value and record["steps"] == trainer.steps and record["activation_store"]
        module = trainer.modules[spec.group]
        with torch.no_grad():
            scaled = raw * trainer.scale
            features = module.encode(scaled)[spec.index]
            recon = module.decode(module.encode(scaled))[spec.index] / trainer.scale
        torch.testing.assert_close(encode_raw(cfg, tensors, raw), features, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(decode_raw(tensors, encode_raw(cfg, tensors, raw)), recon, rtol=1e-4, atol=1e-4)


def test_sae_lens_loads_the_checkpoints_and_computes_the_same_features(smoke_grid):
    sae_lens = pytest.importorskip("sae_lens")
    config, index = smoke_grid
    raw = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout").shard(0).float()[:64]
    loadable = [entry for entry in index["saes"] if architecture(entry["arch"]).saelens_loadable]
    assert len(loadable) >= 4
    for entry in loadable:
        cfg, tensors, _ = read_checkpoint(entry["path"])
        sae = sae_lens.SAE.load_from_disk(entry["path"], device="cpu")
        assert sae.cfg.architecture() == cfg["architecture"]
        with torch.no_grad():
            torch.testing.assert_close(sae.encode(raw), encode_raw(cfg, tensors, raw), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(sae(raw), decode_raw(tensors, encode_raw(cfg, tensors, raw)), rtol=1e-4,
                                       atol=1e-4)


def test_rescale_shift_trains_only_rmag_and_bmag_on_the_frozen_baselines(smoke_grid):
    from gatedsae.training.stages import train_rescale_shift

    config, index = smoke_grid
    shifted = read_grid_index(train_rescale_shift(config, SITE, LAYER, progress=False))
    baselines = {(e["l1"], e.get("seed")): e for e in index["saes"] if e["arch"] == "baseline"}
    assert len({seed for _, seed in baselines}) == config.train.seeds > 1  # one per baseline and seed
    assert sorted((e["l1"], e.get("seed") or 0) for e in shifted) == sorted((l1, seed or 0) for l1, seed in baselines)
    raw = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "heldout").shard(0).float()
    for entry in shifted:
        cfg, tensors, record = read_checkpoint(entry["path"])
        base_cfg, base, base_record = read_checkpoint(baselines[(entry["l1"], entry.get("seed"))]["path"])
        assert record["seed"] == base_record["seed"]
        assert cfg["architecture"] == "gated" and record["arch"] == "baseline_rescale_shift"
        for ours, theirs in (("W_enc", "W_enc"), ("b_gate", "b_enc"), ("W_dec", "W_dec"), ("b_dec", "b_dec")):
            # read back from the baseline's checkpoint: equal up to the rounding of unscaling and rescaling
            torch.testing.assert_close(tensors[ours], base[theirs], rtol=1e-6, atol=0,
                                       msg=f"{ours} must stay the trained baseline's")
        assert not torch.equal(tensors["r_mag"], torch.zeros_like(tensors["r_mag"]))
        # Same features fire (the gate is the baseline's), magnitudes change, and reconstruction improves.
        new = encode_raw(cfg, tensors, raw)
        old = encode_raw(base_cfg, base, raw)
        assert torch.equal(new > 0, old > 0) or ((new > 0) & ~(old > 0)).sum() == 0
        error_new = ((decode_raw(tensors, new) - raw) ** 2).sum(-1).mean()
        error_old = ((decode_raw(base, old) - raw) ** 2).sum(-1).mean()
        assert error_new < error_old


def test_adding_one_l1_trains_only_the_new_sae(smoke_cache, smoke_trained, tmp_path, capsys):
    """Grids are incremental: SAEs with a finished checkpoint for the same settings are kept, and the
    new one equals the same SAE trained with the whole grown grid from scratch."""
    from gatedsae.saes.checkpoints import WEIGHTS_FILE
    from gatedsae.training.stages import train_rescale_shift

    def weights(index: Path) -> dict[str, bytes]:
        return {e["sae"]: Path(e["path"], WEIGHTS_FILE).read_bytes() for e in read_grid_index(index)}

    first = copy_data(smoke_trained, tmp_path / "grown", TRAINED)  # the session's grid, already trained
    before = weights(train_grid(first, SITE, LAYER, progress=False))
    shifted_before = weights(train_rescale_shift(first, SITE, LAYER, progress=False))
    capsys.readouterr()

    grow = "sweep.groups.1.l1=[0.01,0.03,0.1]"  # one more baseline λ
    grown = smoke_config(tmp_path / "grown", grow)
    after = weights(train_grid(grown, SITE, LAYER, progress=False))
    shifted_after = weights(train_rescale_shift(grown, SITE, LAYER, progress=False))
    out = capsys.readouterr().out
    seeds = grown.train.seeds  # the new λ is trained once per seed
    assert f"{len(before)} of {len(before) + seeds} SAEs already trained; training {seeds}" in out
    assert f"{len(shifted_before)} of {len(shifted_before) + seeds} rescale-and-shift SAEs already trained" in out
    new, *others = sorted(set(after) - set(before))
    assert len(others) == seeds - 1 and all(name == f"{new}_seed{s}" for name, s in zip(others, range(1, seeds)))
    assert all(after[name] == before[name] for name in before), "finished SAEs are not retrained"
    assert all(shifted_after[name] == shifted_before[name] for name in shifted_before)

    scratch = copy_data(smoke_cache, tmp_path / "scratch", ("activations",), grow)
    train_grid(scratch, SITE, LAYER, progress=False)
    _, expected, _ = read_checkpoint(scratch.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke") / new)
    _, incremental, _ = read_checkpoint(grown.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke") / new)
    for name in expected:
        torch.testing.assert_close(incremental[name], expected[name], rtol=1e-5, atol=1e-6)


def test_another_sweep_adopts_the_saes_already_trained_with_the_same_key(smoke_trained, tmp_path, capsys):
    """An experiment sharing the activation store (another sweep's folder at the same site and layer)
    copies the SAEs the first already trained, curves included, and trains only the others."""
    from gatedsae.saes.checkpoints import WEIGHTS_FILE
    from gatedsae.training.curve_log import CURVES_FILE, read_rows

    first = copy_data(smoke_trained, tmp_path / "shared", TRAINED)
    source = first.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke")
    trained = {e["sae"]: e for e in read_grid_index(source / GRID_INDEX)}
    other = smoke_config(tmp_path / "shared", "sweep.name=other", "sweep.groups.1.l1=[0.01,0.03,0.1]")
    capsys.readouterr()
    index = train_grid(other, SITE, LAYER, progress=False)
    out = capsys.readouterr().out
    entries = {e["sae"]: e for e in read_grid_index(index)}
    adopted = [name for name in entries if name in trained]
    new = sorted(set(entries) - set(trained))
    assert adopted and len(new) == other.train.seeds
    assert f"{len(adopted)} of {len(entries)} SAEs already trained; training {len(new)}" in out
    assert all(f"{name}: adopted from smoke (same training key)" in out for name in adopted)
    for name in adopted:
        assert Path(entries[name]["path"]).parent == index.parent  # a copy in its own folder, not a link to smoke's
        assert Path(entries[name]["path"], WEIGHTS_FILE).read_bytes() == Path(trained[name]["path"], WEIGHTS_FILE).read_bytes()
    curves = {row["sae"]: [] for row in read_rows(index.parent / CURVES_FILE)}
    for row in read_rows(index.parent / CURVES_FILE):
        curves[row["sae"]].append(row)
    for name in adopted:
        assert curves[name] == [row for row in read_rows(source / CURVES_FILE) if row["sae"] == name]
    assert set(curves) == set(entries)  # the new SAEs' curves beside the adopted ones'


@pytest.mark.parametrize("units", ["paper_per_dim", "paper_per_dim_energy"])
def test_paper_l1_units_give_the_papers_loss_up_to_a_constant(units):
    """Our loss on scaled activations with the converted λ is the paper's loss times a constant, so
    both have the same minimiser."""
    generator = torch.Generator().manual_seed(0)
    d, width, l1 = 8, 16, 3e-3
    x = torch.randn(64, d, generator=generator) * 5.0
    energy = float((x**2).sum(-1).mean())
    scale = 1 / energy**0.5
    group = SAEGroupConfig("baseline", 2.0, 1e-3, [l1], l1_units=units)
    internal = group.internal_l1(l1, d, scale, energy)
    ratios = []
    for seed in range(3):  # three different SAEs: the ratio of the losses must not change
        g = torch.Generator().manual_seed(seed)
        W_enc, W_dec = torch.randn(d, width, generator=g), torch.randn(width, d, generator=g)
        f = torch.relu(x @ W_enc)
        error, l1_norm = ((f @ W_dec - x) ** 2).sum(-1).mean(), f.sum(-1).mean()
        ours = scale**2 * error + internal * scale * l1_norm  # x, x̂ and f all scale with s
        paper = error / d / (energy if units == "paper_per_dim_energy" else 1.0) + l1 * l1_norm
        ratios.append(float(ours / paper))
    assert ratios == pytest.approx([ratios[0]] * 3, rel=1e-5)


def test_every_sae_is_trained_with_each_seed_and_the_first_keeps_its_key(smoke_trained):
    """train.seeds: each knob value is trained once per seed, as extra members of the batched grid; the
    records carry the seed; the run's own seed keeps the training key (and name) a one-seed run gives it,
    so adding seeds retrains nothing already trained; the seeds start from different weights and end apart."""
    from dataclasses import replace

    from gatedsae.plan.identity import training_key

    config = smoke_trained
    assert config.train.seeds == 2
    index = config.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke") / GRID_INDEX
    entries = read_grid_index(index)
    one_seed = replace(config, train=replace(config.train, seeds=1))
    for spec in grid_specs(one_seed, config.model.site_width(SITE), SITE):
        runs = [e for e in entries if e["arch"] == spec.arch and e["l1"] == spec.value]
        records = [read_checkpoint(e["path"])[2] for e in runs]
        assert sorted(r["seed"] for r in records) == config.train.seed_values
        first = next(r for r in records if r["seed"] == config.train.seed)
        assert first["sae"] == spec.name and first["training_key"] == training_key(one_seed, SITE, spec)
        weights = [read_checkpoint(e["path"])[1]["W_dec"] for e in runs]
        assert not torch.equal(weights[0], weights[1])


def test_bf16_training_reruns_bit_identically_and_is_never_resumed_in_float32(smoke_cache, tmp_path):
    """precision.train=bfloat16 puts every group's encoder product in bf16 (saes/encoder_product.py); a rerun
    on the same machine gives the same weights bit for bit; the state it saved names its precision, so a
    float32 trainer of the same grid starts over rather than mixing precisions, and ends elsewhere."""
    bf16 = replace(smoke_cache, precision=replace(smoke_cache.precision, train="bfloat16"))
    first = _trainer(bf16, tmp_path / "bf16")
    assert first.precision.bf16 and all(module.encoder_bf16 for module in first.modules)
    first.run(progress=False)
    again = _trainer(bf16, tmp_path / "again")
    again.run(progress=False)
    fp32 = _trainer(smoke_cache, tmp_path / "bf16")  # the bf16 run's folder, its saved state in it
    assert not fp32.precision.bf16 and not any(module.encoder_bf16 for module in fp32.modules)
    assert not fp32.try_resume() and fp32.step == 0
    fp32.run(progress=False)
    for spec in first.specs:
        for name, value in _params(first, spec).items():
            assert torch.equal(value, _params(again, spec)[name]), f"{spec.name}.{name}: a rerun must be identical"
        assert any(not torch.equal(value, _params(fp32, spec)[name]) for name, value in _params(first, spec).items())


def test_a_grid_trained_in_bf16_records_it_and_is_retrained_in_float32(smoke_cache, tmp_path, capsys):
    """The resolved training precision is part of each checkpoint's training key (bfloat16 only: float32
    keys are unchanged) and of its record's provenance: a machine that resolves precision.train=auto to
    float32 retrains the grid rather than reusing bf16 checkpoints next to float32 ones."""
    from gatedsae.plan.identity import training_key

    config = copy_data(smoke_cache, tmp_path, ("text", "tokens", "activations"), "precision.train=bfloat16")
    index = train_grid(config, SITE, LAYER, progress=False)
    fp32 = replace(config, precision=replace(config.precision, train="float32"))
    d = config.model.site_width(SITE)
    for entry, spec in zip(read_grid_index(index), grid_specs(config, d, SITE)):
        record = read_checkpoint(entry["path"])[2]
        assert record["precision"]["dtype"] == "bfloat16" and record["precision"]["setting"] == "bfloat16"
        assert record["training_key"] == training_key(config, SITE, spec) != training_key(fp32, SITE, spec)
    capsys.readouterr()
    train_grid(fp32, SITE, LAYER, progress=False)
    specs = grid_specs(config, d, SITE)
    assert f"0 of {len(specs)} SAEs already trained" in capsys.readouterr().out
    assert {read_checkpoint(e["path"])[2]["precision"]["dtype"] for e in read_grid_index(index)} == {"float32"}
