"""The training stages: train a site's grid (or a layer's sites in lockstep) from its activations and
export every SAE as a checkpoint; Fig. 9's rescale-and-shift on the frozen baselines. An SAE trained in
a grid is the SAE trained alone (same seed, same batches, same code), so a grid only trains the SAEs
that have no finished checkpoint for the same settings: adding one λ to a sweep trains one SAE, and an
SAE another grid at the same site and layer already trained (another experiment sharing the activation
store) is copied from there."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Optional

from gatedsae.activations.store import ShardedActivations
from gatedsae.plan.architectures import KNOBS, architecture
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.identity import rescale_shift_extra, training_key
from gatedsae.plan.grid import (
    ALL_TOKENS_DIR,
    GRID_INDEX,
    MAIN_VARIANT,
    RESCALE_SHIFT_DIR,
    SAESpec,
    all_tokens_config,
    grid_dir,
    grid_specs,
    read_grid_index,
    sae_seed,
    same_sae_elsewhere,
    write_grid_index,
)
from gatedsae.saes.rescale_shift import RescaleShiftSAE
from gatedsae.training.trainer import GridTrainer, train_lockstep

WRAPPED = architecture(RescaleShiftSAE.arch).wraps  # Fig. 9 rescales and shifts trained baselines


def _finished(directory: Path, key: str, quiet: bool = False) -> bool:
    """Whether `directory` holds this SAE trained with these settings, intact: a corrupt or incomplete
    checkpoint counts as not finished, so it is retrained (saying why, unless `quiet`)."""
    from gatedsae.saes.checkpoints import RECORD_FILE, CheckpointError, verify_checkpoint

    record = directory / RECORD_FILE
    try:
        if json.loads(record.read_text()).get("training_key") != key:
            return False
        verify_checkpoint(directory)
    except (OSError, ValueError, CheckpointError) as error:
        if directory.exists() and not quiet:
            print(f"retraining {directory.name}: {getattr(error, 'problem', None) or f'{record} is unreadable'}",
                  flush=True)
        return False
    return True


def _adopted(directory: Path, key: str, layer_dir: Path) -> bool:
    """Copy into `directory` the same SAE finished in another grid under `layer_dir` (this site and
    layer's checkpoints: another sweep's folder, or a variant's), with its training curve; whether there
    was one. The training key holds everything the weights depend on, so training it again would give
    the same bits."""
    import shutil

    from gatedsae.training.curve_log import CURVES_FILE, copy_curve

    for found in same_sae_elsewhere(directory.name, layer_dir):
        if found == directory or not _finished(found, key, quiet=True):
            continue
        staging = directory.with_name(directory.name + ".adopting")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(found, staging)
        shutil.rmtree(directory, ignore_errors=True)
        staging.rename(directory)  # whole or not at all: a kill leaves no half-copied checkpoint
        copy_curve(found.parent / CURVES_FILE, directory.parent / CURVES_FILE, directory.name)
        print(f"{directory.name}: adopted from {found.parent.relative_to(layer_dir)} (same training key)", flush=True)
        return True
    return False


def _device_share(config: Config, site: str, sites: list[str]) -> float:
    """Memory `site`'s SAEs may use when `sites` train together: its device's, less the LM when streaming
    puts it there, split evenly between the sites on that device."""
    from gatedsae.plan.estimates import stream_model_memory
    from gatedsae.plan.preflight import available_memory

    device = config.train_device(site)
    lm = stream_model_memory(config) if config.cache.mode == "stream" and device == config.cache.device else 0.0
    sharing = sum(config.train_device(other) == device for other in sites)
    return max(available_memory(device, config) - lm, 0.0) / sharing


def _on_device(config: Config, site: str) -> Config:
    from dataclasses import replace

    return replace(config, train=replace(config.train, device=config.train_device(site)))


def train_grid(config: Config, site: str, layer: int, progress: bool = True) -> Path:
    """Train the sweep's SAEs at (site, layer) that are not trained yet (see `train_layer`)."""
    return train_layer(config, layer, [site], progress)[0]


def train_layer(config: Config, layer: int, sites: Optional[list[str]] = None, progress: bool = True,
                variant: str = MAIN_VARIANT) -> list[Path]:
    """Train the SAEs of the sweep at each site of `layer` that are not trained yet; write one checkpoint
    per SAE, then each site's `grid.json` (every SAE of the sweep) last. The sites' grids step in
    lockstep, so in stream mode one LM forward per shard feeds them all; when the device cannot hold
    every missing SAE at once they train in passes over the data, each pass exported when it ends.
    `variant` names the folder the grid is written to (the sweep's, or a variant's such as all_tokens)."""
    from gatedsae.activations.stream import training_activations
    from gatedsae.plan.estimates import plan_passes, train_estimate, train_pass_memory
    from gatedsae.plan.preflight import check_memory

    sites = list(config.experiment.sites if sites is None else sites)
    specs, keys, passes = {}, {}, {}
    for site in sites:
        share = _device_share(config, site, sites)
        specs[site] = grid_specs(config, config.model.site_width(site), site)
        keys[site] = {spec.name: training_key(config, site, spec) for spec in specs[site]}
        here = grid_dir(config, site, layer, variant)
        missing = [spec for spec in specs[site] if not _finished(here / spec.name, keys[site][spec.name])]
        others = grid_dir(config, site, layer).parent  # every sweep's grids at this site and layer
        missing = [spec for spec in missing if not _adopted(here / spec.name, keys[site][spec.name], others)]
        passes[site] = plan_passes(missing, train_pass_memory(config, site), share)
        for chunk in passes[site]:  # before any compute: every pass must fit (a single SAE may not)
            check_memory(train_estimate(config, site, chunk), config.train_device(site),
                         "lower train.batch_size or train.buffer_rows, or use narrower SAEs", share)
        in_passes = f" in {len(passes[site])} passes over the data (device memory)" if len(passes[site]) > 1 else ""
        print(f"{site}: {len(specs[site]) - len(missing)} of {len(specs[site])} SAEs already trained; "
              f"training {len(missing)}{in_passes}", flush=True)
    training = [site for site in sites if passes[site]]
    if training:
        splits = training_activations(config, [(site, layer) for site in training])
        for round_ in range(max(len(passes[site]) for site in training)):
            trainers = {site: GridTrainer(_on_device(config, site), splits[(site, layer)],
                                          grid_dir(config, site, layer, variant), specs=passes[site][round_])
                        for site in training if round_ < len(passes[site])}
            train_lockstep(list(trainers.values()), progress)
            for site, trainer in trainers.items():
                export_checkpoints(trainer, site, layer, grid_dir(config, site, layer, variant), keys[site])
    return [write_grid_index(grid_dir(config, site, layer, variant), site, layer, config.sweep.name, specs[site],
                             config.paths.root) for site in sites]


def train_all_tokens(config: Config, site: str, layer: int, progress: bool = True) -> Path:
    """The paper's treatment of massive activations as its own run: the sweep's Gated and baseline SAEs at
    (site, layer) trained on every non-BOS row (plan/grid.all_tokens_config), in the `all_tokens` folder."""
    if not config.sweep.all_tokens_at(site):
        raise ConfigError(f"the every-token run is not configured at {site}: set sweep.all_tokens=true (and "
                          f"{site} in sweep.all_tokens_sites, or leave it empty) with Gated and baseline groups there")
    return train_layer(all_tokens_config(config), layer, [site], progress, variant=ALL_TOKENS_DIR)[0]


def train_rescale_shift(config: Config, site: str, layer: int, progress: bool = True) -> Path:
    """Fig. 9: freeze each trained baseline of the grid and learn only a per-feature rescale and shift
    on top (the baselines are read back from their checkpoints)."""
    from gatedsae.activations.stream import training_activations
    from gatedsae.plan.estimates import Estimate, plan_passes, rescale_shift_memory
    from gatedsae.plan.preflight import check_memory
    from gatedsae.saes.checkpoints import checkpoint_id

    grid, d = grid_dir(config, site, layer), config.model.site_width(site)
    index = grid / GRID_INDEX
    if not index.exists():
        raise FileNotFoundError(f"{index} does not exist; run the train stage first")
    lrs = {(g.width(d), l1): g.lr for g in config.sweep.variant_groups_at(site) if g.arch == WRAPPED for l1 in g.values}
    baselines = [entry for entry in read_grid_index(index) if entry["arch"] == WRAPPED
                 and (entry["width"], entry["l1"]) in lrs]
    if not baselines:
        raise ConfigError(f"sweep '{config.sweep.name}' has no baseline group to rescale and shift")
    out_dir = grid / RESCALE_SHIFT_DIR
    wrapped = [SAESpec(0, 0, RescaleShiftSAE.arch, e["width"], e["l1"], lrs[(e["width"], e["l1"])], seed=e.get("seed"))
               for e in baselines]
    keys = {spec.name: training_key(config, site, spec, extra=checkpoint_id(entry["path"]))
            for spec, entry in zip(wrapped, baselines)}
    todo = [(spec, entry) for spec, entry in zip(wrapped, baselines) if not _finished(out_dir / spec.name, keys[spec.name])]
    print(f"{len(wrapped) - len(todo)} of {len(wrapped)} rescale-and-shift SAEs already trained", flush=True)
    config = _on_device(config, site)
    available = _device_share(config, site, [site])
    memory = lambda chunk: rescale_shift_memory(config, d, [spec.width for spec, _ in chunk])  # noqa: E731
    passes = plan_passes(todo, memory, available)
    for chunk in passes:  # before any compute
        check_memory(Estimate(f"rescale_shift[{site}]", memory(chunk), 0.0), config.train.device,
                     "lower train.batch_size or train.buffer_rows, or set sweep.rescale_shift=false", available)
    if passes:
        split = training_activations(config, [(site, layer)])[(site, layer)]
        for chunk in passes:
            _train_rescale_shift_pass(config, split, site, layer, out_dir, chunk, keys, progress)
    return write_grid_index(out_dir, site, layer, config.sweep.name, wrapped, config.paths.root)


def _train_rescale_shift_pass(config: Config, store: ShardedActivations, site: str, layer: int, out_dir: Path,
                              todo: list, keys: dict[str, str], progress: bool) -> None:
    from gatedsae.saes.checkpoints import baseline_from_checkpoints

    modules, specs, group_lrs = [], [], []
    for width, lr in sorted({(spec.width, spec.lr) for spec, _ in todo}):
        members = [(spec, entry) for spec, entry in todo if (spec.width, spec.lr) == (width, lr)]
        baseline = baseline_from_checkpoints([entry["path"] for _, entry in members],
                                             seeds=[sae_seed(spec.training_seed(config.train.seed), WRAPPED, width,
                                                             spec.value) for spec, _ in members])
        specs += [SAESpec(len(modules), i, spec.arch, width, spec.value, lr, seed=spec.seed)
                  for i, (spec, _) in enumerate(members)]
        modules.append(RescaleShiftSAE.from_baseline(baseline))
        group_lrs.append(lr)
    extra = rescale_shift_extra([keys[spec.name] for spec, _ in todo])
    trainer = GridTrainer(config, store, out_dir, grid=(modules, specs, group_lrs), identity_extra=extra)
    trained_scale = json.loads(Path(todo[0][1]["path"], "training.json").read_text())["activation_scale"]
    if not math.isclose(trainer.scale, trained_scale, rel_tol=1e-6):
        raise RuntimeError(f"the activation store of {site} layer {layer} changed since its baselines were "
                           "trained; re-run the train stage")
    trainer.run(progress=progress)
    export_checkpoints(trainer, site, layer, out_dir, keys)


def export_checkpoints(trainer: GridTrainer, site: str, layer: int, out_dir: Path, keys: dict[str, str]) -> None:
    """One checkpoint per SAE of a trained grid, each with its training record."""
    from gatedsae.core.codehash import code_version
    from gatedsae.saes.checkpoints import saelens_meta, write_checkpoint

    config, store = trainer.config, trainer.store
    meta = saelens_meta(config, site, layer)
    version = code_version()
    for spec in trainer.specs:
        record = {
            "sae": spec.name, "arch": spec.arch, "width": spec.width, **spec.knob_fields, "lr": spec.lr,
            **({f"{spec.knob}_in_training_loss": float(trainer.modules[spec.group].sparsity_coefficient[spec.index])}
               if KNOBS[spec.knob].penalty else {}),
            "training_key": keys[spec.name],
            "site": site, "layer": layer, "d": store.d, "steps": trainer.step,
            "tokens": trainer.step * config.train.batch_size, "seed": spec.training_seed(config.train.seed),
            "activation_scale": trainer.scale, "final_losses": trainer.last_losses[spec.name],
            "max_norm_ratio": config.train.max_norm_ratio,
            "massive_norm_threshold": trainer.massive_norm_threshold,
            "rows_excluded_as_outliers": trainer.data_statistics["excluded"],
            "rows_per_epoch": trainer.data_statistics["rows"],
            "resampled": [r for r in trainer.resampled if r["sae"] == spec.name],
            "alive_fraction": float(trainer.fired_ever[spec.group][spec.index].float().mean()),
            "train_config": asdict(config.train.at_site(site)), "code_version": version,
            "precision": trainer.precision.provenance(),  # its dtype is in training_key when bfloat16
            "activation_store": store.provenance(),
        }
        write_checkpoint(out_dir / spec.name, trainer.modules[spec.group], spec.index, trainer.scale, meta, record)
