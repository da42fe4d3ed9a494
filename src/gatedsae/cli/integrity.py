"""`python -m gatedsae verify`: every file of an experiment that feeds a number checked against what
recorded it (the tokens' sha256 in their manifest; the seals of grid indexes, training records and
evaluations; each reported output's sha256, plan/health.py; every activation shard's size and sha256
from the store's manifest; sha256 of the weights and cfg.json from each training record, cfg.json against
the tensors), each problem listed with the command that repairs it. Readers make the same checks as they go; this finds everything at once, e.g. after a copy.
"""

from __future__ import annotations

from pathlib import Path

from gatedsae.core.errors import IntegrityError
from gatedsae.plan.config import Config


def verify_experiment(config: Config, overrides: str = "") -> str:
    """A summary of what was checked; raises IntegrityError listing every problem and its repair."""
    from gatedsae.activations.store import ActivationStore, StoreManifest
    from gatedsae.plan.grid import VARIANT_STAGES, grid_indexes, read_grid_index
    from gatedsae.plan.layout import MANIFEST, STORE_PROGRESS
    from gatedsae.saes.checkpoints import CheckpointError, verify_checkpoint

    def command(stage: str, site: str = "", layer: int | None = None) -> str:
        target = f" --site={site} --layer={layer}" if site else ""
        return f"python -m gatedsae {stage}{target} {overrides}".rstrip()

    from gatedsae.plan.health import damage

    damaged = damage(config)  # tokens, indexes, training records, evaluations, reported outputs
    problems = [f"{found.file} {found.problem}: `make run` (or Snakemake) rebuilds it (rule {found.rule})"
                for found in damaged]
    skip = {found.rebuild for found in damaged}
    shards = checkpoints = 0
    for (site, layer), directory in config.activation_dirs().items():
        if not (directory / MANIFEST).exists():
            if (directory / STORE_PROGRESS).exists():
                problems.append(f"{directory / MANIFEST} is missing (its journal is there): `{command('cache')}` "
                                "rebuilds it, recomputing only missing or corrupt shards")
            continue
        if directory / MANIFEST in skip:  # unreadable: listed above
            continue
        try:
            manifest = StoreManifest.read(directory / MANIFEST)
        except (OSError, ValueError, TypeError, KeyError, IntegrityError) as error:
            problems.append(f"{directory / MANIFEST} is unreadable ({type(error).__name__}): `{command('cache')}`")
            continue
        for split in manifest.splits:
            if not manifest.splits[split].shards:
                continue
            for record in ActivationStore(directory, split, verify=False).records:
                shards += 1
                problem = record.problem(directory)
                if problem is not None:
                    problems.append(f"{problem}: `{command('cache')}` recomputes it")
        for variant, index in grid_indexes(config, site, layer).items():
            if not index.exists() or index in skip:
                continue
            stage = VARIANT_STAGES[variant]
            for entry in read_grid_index(index):
                checkpoints += 1
                try:
                    verify_checkpoint(Path(entry["path"]))
                except CheckpointError as error:
                    problems.append(f"{error.problem} `{command(stage, site, layer)}` retrains it")
    if problems:
        raise IntegrityError(f"{len(problems)} problem(s) found:\n  " + "\n  ".join(problems)
                             + "\nThen run the pipeline again (make run / snakemake): it redoes what depends on them.")
    return f"verified the tokens, indexes, records, evaluations and reported outputs, {shards} activation shards " \
           f"and {checkpoints} SAE checkpoints of experiment " \
           f"'{config.experiment.name}' under {config.paths.root}: all intact"


def upgrade_checkpoints(config: Config) -> tuple[int, int]:
    """Rewrite every trained checkpoint's cfg.json of the experiment in the current sae-lens format:
    (how many were rewritten, how many were already current)."""
    from gatedsae.plan.grid import grid_indexes, read_grid_index
    from gatedsae.saes.checkpoints import upgrade_saelens_cfg

    rewritten = kept = 0
    for site, layer in config.experiment.site_layer_pairs():
        for index in grid_indexes(config, site, layer).values():
            if index.exists():
                for entry in read_grid_index(index):
                    if upgrade_saelens_cfg(entry["path"], config):
                        rewritten += 1
                    else:
                        kept += 1
    return rewritten, kept
