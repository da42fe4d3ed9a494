"""Nothing trusted blindly: every file that feeds a number, checked against what recorded it when written.

Snakemake decides what to run from file times, never from contents, and a job's output it believes
finished is never looked at again: a corrupt grid index, an edited training record, flipped bits in
the held-out tokens or a deleted figure would go unnoticed, or break a later job on every run. So each
run checks, before Snakemake builds its DAG (`repair`, called by the Snakefile):

| file | recorded in | rebuilt by (the output removed) |
|---|---|---|
| tokens `train.npy`, `heldout.npy` | their sha256 in the sealed tokens manifest | tokenize (the tokens manifest) |
| a store's `manifest.json` | parses | cache (the manifest; rebuilt from the journal) |
| `grid.json` (and each variant's: rescale-and-shift, every token) | its seal | train / rescale_shift / train_all_tokens (the index) |
| each SAE's `training.json`, checkpoint files | its seal (the record holds the weights' and cfg.json's sha256, checked on every load) | train / rescale_shift (the index; only that SAE is retrained) |
| a grid's evaluation `metrics.json`, each SAE's saved result | their seals | evaluate (it; only that SAE re-evaluated) |
| aggregate, curves, figures, verdict and report outputs (metrics.csv, tables/, every PNG and PDF, ...) | sha256 of each in `<results>/.outputs/<stage>.json`, written when the stage ends | that stage (its first output) |

A damaged file is named in one line, with what rebuilds it; the output Snakemake watches is removed, so
this very run rebuilds it and everything that depends on it. `python -m gatedsae verify` lists the same
problems (and hashes every shard and checkpoint too) without changing anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from gatedsae.core.atomic import sha256_file
from gatedsae.core.errors import IntegrityError
from gatedsae.core.sealed import read_json, write_sealed_json
from gatedsae.plan.grid import VARIANT_STAGES, grid_indexes
from gatedsae.plan.layout import (
    AGGREGATE_OUTPUTS,
    CURVES_FILE,
    FIGURES_INDEX,
    MANIFEST,
    METRICS_FILE,
    REPORT_FILE,
    SPLIT_OUTPUTS,
    SPLITS,
    TEST,
    TOKEN_HASHES,
    TRAINING_RECORD,
    VERDICT_OUTPUTS,
    split_results,
    splits_heldout,
)

if TYPE_CHECKING:
    from gatedsae.plan.config import Config

OUTPUTS_RECORDS = ".outputs"  # under the experiment's results folder: <stage>.json, each output's sha256


@dataclass(frozen=True)
class Damage:
    file: Path      # the file at fault
    problem: str    # what is wrong with it
    rebuild: Path   # the output Snakemake watches: removed, the rule that owns it runs again
    rule: str       # that rule

    def line(self, dry_run: bool) -> str:
        if dry_run:
            return f"{self.file} {self.problem}: a run rebuilds it (rule {self.rule})"
        removed = f"removed {self.rebuild}, so " if self.rebuild.exists() else ""
        return f"{self.file} {self.problem}: {removed}this run rebuilds it (rule {self.rule})"


# --- the outputs of the reporting stages ---------------------------------------------------------------


def stage_outputs(config: Config, stage: str) -> Optional[tuple[Path, list[Path]]]:
    """(the output Snakemake watches, every file the stage writes) of a stage whose outputs are recorded;
    None for the other stages (their files are checked where they are read)."""
    results, figures = config.experiment.results, config.experiment.figures
    if stage == "aggregate":
        files = [results / name for name in AGGREGATE_OUTPUTS.values()]
        if splits_heldout(config):  # and the test split's readings, in their own folder
            files += [split_results(config, TEST) / AGGREGATE_OUTPUTS[key] for key in SPLIT_OUTPUTS]
    elif stage == "verdict":
        files = [results / name for name in VERDICT_OUTPUTS.values()]
    elif stage == "curves":
        files = [results / CURVES_FILE]
    elif stage == "report":
        files = [results / REPORT_FILE]
    elif stage == "interp":  # the verdict reads its summary on the test split
        from gatedsae.plan.interp import outputs

        files = [Path(path) for path in outputs(config).values()]
    elif stage == "figures":
        index = figures / FIGURES_INDEX
        listed = read_json(index, "Run `python -m gatedsae figures` again.").get("files", [])
        return index, [index, *(Path(name) for name in listed)]
    else:
        return None
    return files[0], files


RECORDED_STAGES = ("aggregate", "curves", "figures", "verdict", "report", "interp")


def outputs_record(config: Config, stage: str) -> Path:
    return config.experiment.results / OUTPUTS_RECORDS / f"{stage}.json"


def record_outputs(config: Config, stage: str) -> Optional[Path]:
    """After `stage` wrote its outputs: the sha256 of each, which every later run checks."""
    found = stage_outputs(config, stage)
    if found is None:
        return None
    _, files = found
    record = outputs_record(config, stage)
    write_sealed_json(record, {"stage": stage, "files": {str(path): sha256_file(path) for path in files
                                                         if path.is_file()}})
    return record


def _outputs_damage(config: Config, stage: str) -> list[Damage]:
    record_path = outputs_record(config, stage)
    if not record_path.exists():
        return []  # never recorded (written before records existed, or the stage has not run)
    rule = stage
    try:
        marker, _ = stage_outputs(config, stage)
    except IntegrityError as error:  # figures.json itself unreadable
        marker = config.experiment.figures / FIGURES_INDEX
        return [Damage(marker, _problem(error, marker), marker, rule)]
    try:
        record = read_json(record_path, "")
    except IntegrityError as error:
        return [Damage(record_path, _problem(error, record_path), marker, rule)]
    found = []
    for name, expected in record.get("files", {}).items():
        path = Path(name)
        if not path.is_file():
            found.append(Damage(path, "is missing", marker, rule))
        elif sha256_file(path) != expected:
            found.append(Damage(path, f"does not match the sha256 recorded in {record_path} when {stage} wrote it: it "
                                      "is corrupt or was changed", marker, rule))
    return found


def _problem(error: IntegrityError, path: Path) -> str:
    """An IntegrityError's message as the problem of `path` (its leading path and repair advice dropped)."""
    text = str(error).split(". ")[0] if str(error).startswith(str(path)) else str(error)
    return text.removeprefix(str(path)).strip() or "is unreadable"


# --- the data files ---------------------------------------------------------------------------------------


RETOKENIZE = ("Run the pipeline again (make run, or Snakemake): it tokenizes the corpus again (or `python -m gatedsae "
              "tokenize …`).")


def tokens_problem(tokens_dir: Path, splits=SPLITS) -> Optional[str]:
    """Why the tokens of `tokens_dir` differ from what tokenize wrote (None if they match, or were tokenized
    before hashes were recorded); IntegrityError if the tokens manifest itself is damaged."""
    manifest = read_json(tokens_dir / MANIFEST, RETOKENIZE)
    hashes = manifest.get(TOKEN_HASHES) or {}
    for split, expected in ((split, hashes[split]) for split in splits if split in hashes):
        path = tokens_dir / f"{split}.npy"
        if not path.is_file():
            return f"{path} is missing"
        if sha256_file(path) != expected:
            return f"{path} does not match the sha256 recorded in {tokens_dir / MANIFEST}: it is corrupt or was changed"
    return None


def _tokens_damage(config: Config) -> list[Damage]:
    tokens_dir = config.paths.tokens_dir(config.model.name, config.corpus.name)
    manifest = tokens_dir / MANIFEST
    if not manifest.exists():
        return []
    try:
        problem = tokens_problem(tokens_dir)
    except IntegrityError as error:
        return [Damage(manifest, _problem(error, manifest), manifest, "tokenize")]
    if problem is None:
        return []
    path = Path(problem.split(" ")[0])
    return [Damage(path, problem.removeprefix(str(path)).strip(), manifest, "tokenize")]


def _store_damage(config: Config) -> list[Damage]:
    found = []
    for directory in config.activation_dirs().values():
        manifest = directory / MANIFEST
        if manifest.exists():
            try:
                data = read_json(manifest, "")
                if not isinstance(data.get("splits"), dict):
                    raise IntegrityError(f"{manifest} lacks its splits")
            except IntegrityError as error:
                found.append(Damage(manifest, _problem(error, manifest), manifest, "cache"))
    return found


def grid_problems(index: Path) -> list[tuple[Path, str]]:
    """(file, problem) of each damaged file a grid index stands for: the index itself, or each SAE's training
    record (sealed) or checkpoint file (missing or empty). The weights' sha256 is checked where they are
    loaded, and by `verify`."""
    try:
        entries = read_json(index, "").get("saes")
        if not isinstance(entries, list):
            raise IntegrityError(f"{index} lacks its list of SAEs")
    except IntegrityError as error:
        return [(index, _problem(error, index))]
    found = []
    for entry in entries:
        directory = index.parent / str(entry.get("sae", ""))
        if not directory.is_dir():
            found.append((directory, "is missing"))
            continue
        files = [directory / name for name in (TRAINING_RECORD, "cfg.json", "sae_weights.safetensors")]
        absent = [path for path in files if not path.is_file() or path.stat().st_size == 0]
        if absent:
            found += [(path, "is missing" if not path.is_file() else "is empty") for path in absent]
            continue
        try:
            read_json(directory / TRAINING_RECORD, "")
        except IntegrityError as error:
            found.append((directory / TRAINING_RECORD, _problem(error, directory / TRAINING_RECORD)))
    return found


def _grid_damage(config: Config) -> list[Damage]:
    found = []
    for site, layer in config.experiment.site_layer_pairs():
        for variant, index in grid_indexes(config, site, layer).items():
            rule = VARIANT_STAGES[variant].replace("-", "_")  # the Snakemake rule runs the stage of that name
            if index.exists():
                found += [Damage(path, problem, index, rule) for path, problem in grid_problems(index)]
    return found


def _evaluation_damage(config: Config) -> list[Damage]:
    """A grid's evaluation and each SAE's saved result beside it (`<variant>/<sae>.json`), by their seals."""
    found = []
    for site, layer in config.experiment.site_layer_pairs():
        folder = config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
        path = folder / METRICS_FILE
        for record in [path, *sorted(folder.glob("*/*.json"))]:
            if not record.exists():
                continue
            try:
                data = read_json(record, "")
                if record == path and not isinstance(data.get("rows"), list):
                    raise IntegrityError(f"{path} lacks its rows")
            except IntegrityError as error:
                found.append(Damage(record, _problem(error, record), path, "evaluate"))
    return found


def damage(config: Config) -> list[Damage]:
    """Every damaged file of the experiment, in the order of the DAG."""
    found = _tokens_damage(config) + _store_damage(config) + _grid_damage(config) + _evaluation_damage(config)
    for stage in RECORDED_STAGES:
        found += _outputs_damage(config, stage)
    return found


def repair(config: Config, dry_run: bool = False) -> list[str]:
    """Remove the output that owns each damaged file, so Snakemake rebuilds it; one line each."""
    lines = []
    for found in damage(config):
        lines.append(found.line(dry_run))
        if not dry_run:
            found.rebuild.unlink(missing_ok=True)
    return lines


