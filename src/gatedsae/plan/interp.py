"""The automatic interpretability measures as a plan (torch-free): whether an experiment runs them, where
their files go. They read the evaluations (each SAE's L0 on the validation split picks the matched pair),
so they run with the report, as part of the chapter that trains Gated and the baseline (the headline)."""

from __future__ import annotations

from pathlib import Path

from gatedsae.plan.architectures import BASELINE, PROPOSED
from gatedsae.plan.config import Config
from gatedsae.plan.layout import TEST, splits_heldout

INTERP_DIR = "interp"  # under the results folder (and its test folder), the figures folder, the data root
# Under results/<experiment>/interp/: every SAE's scores (rows), the development split's comparison (summary);
# the test split's comparison under results/<experiment>/test/interp/, which only the verdict reads.
OUTPUTS = {"rows": "rows.csv", "summary": "summary.json"}
FIGURE = "probing_accuracy_vs_l0"


def runs(config: Config) -> bool:
    """Whether the experiment, through its chapter, runs the measures: interp.enabled, through the report,
    and Gated and the baseline trained (a chapter naming both, or an experiment without chapters)."""
    if not config.interp.enabled or config.experiment.through != "report":
        return False
    chapters = config.experiment.chapters
    if not chapters:
        return True
    through = config.experiment.chapters_through(config.experiment.chapter) if config.experiment.chapter else chapters
    archs = {arch for chapter in through for arch in chapter.archs}
    return {PROPOSED, BASELINE} <= archs


def results_dir(config: Config) -> Path:
    return config.experiment.results / INTERP_DIR


def outputs(config: Config) -> dict[str, str]:
    """The stage's files: rows, the development split's summary, and the test split's where it has one."""
    found = {key: str(results_dir(config) / name) for key, name in OUTPUTS.items()}
    if splits_heldout(config):
        found["test_summary"] = str(config.experiment.results / TEST / INTERP_DIR / OUTPUTS["summary"])
    return found


def verdict_summary(config: Config) -> str:
    """The summary the verdict reads: the test split's where the held-out documents are split."""
    files = outputs(config)
    return files["test_summary"] if config.verdict.split == TEST and "test_summary" in files else files["summary"]


def figures_dir(config: Config) -> Path:
    return config.experiment.figures


def saved_dir(config: Config, site: str, layer: int) -> Path:
    """Each SAE's saved scores (keyed by its checkpoint, the settings and the code), so a rerun after more
    SAEs were trained (a later chapter) scores only the new ones."""
    return config.paths.root / INTERP_DIR / config.model.name / config.corpus.name / site / f"layer{layer}"
