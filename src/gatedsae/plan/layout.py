"""File names and folders shared by the stages and the Snakefile (kept free of heavy imports)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gatedsae.plan.config import Config

SPLITS = ("train", "heldout")     # the corpus's, the token windows' and the activation stores' splits
# The held-out documents' two parts (corpus.test_fraction): development reads validation, the verdict test.
VALIDATION, TEST = "validation", "test"
HELDOUT_SPLITS = (VALIDATION, TEST)
HELDOUT_SPLIT_FILE = "heldout_split.npy"  # beside heldout.npy: each held-out window's part (0 validation, 1 test)
MODEL_MARKER = "prepared.json"    # written last by prepare_model: the model loads offline
MANIFEST = "manifest.json"        # written last by each stage: its output is complete
METRICS_FILE = "metrics.json"     # a grid's evaluation (written last: the evaluate stage's output)
STORE_PROGRESS = "progress.json"  # the activation writer's journal (resume point)
DOCUMENTS = "documents.jsonl"

# What the aggregate stage writes under the experiment's results folder, by key.
AGGREGATE_OUTPUTS = {"metrics": "metrics.csv", "pareto": "pareto.csv", "headline": "headline.csv",
                     "levels": "levels.csv", "comparisons": "comparisons.csv", "ratio_curve": "ratio_curve.csv",
                     "summary": "summary.json", "densities": "densities.json",
                     "markdown": "tables/metrics.md", "latex": "tables/metrics.tex"}
CURVES_FILE, REPORT_FILE = "curves.csv", "report.html"  # the curves and report stages' outputs there
FIGURES_INDEX = "figures.json"  # under the experiment's figures folder: every figure and caption, written last
TOKEN_HASHES = "sha256"  # key of the tokens manifest: {split: sha256 of <split>.npy}
TRAINING_RECORD = "training.json"  # in each SAE's checkpoint folder: what trained it, the files' sha256, sealed
# The aggregate's readings of the test split (all the verdict reads of it), in their own folder.
SPLIT_OUTPUTS = ("metrics", "headline", "levels", "comparisons")
VERDICT_OUTPUTS = {"verdict_json": "verdict.json", "verdict_markdown": "verdict.md"}  # what the verdict stage writes there

BROWSER_DIR = "browser"  # the feature browser, under the experiment's results folder
STUDY_DIR = "study"      # the blinded rating study, likewise
PAGE_FILE, KEY_FILE = "rating.html", "key.json"
ANALYSIS_FILE, ANALYSIS_MARKDOWN = "analysis.json", "analysis.md"


def browser_dir(config: Config) -> Path:
    return config.experiment.results / BROWSER_DIR / config.browser.site / f"layer{config.browser_layer}"


def study_dir(config: Config) -> Path:
    return config.experiment.results / STUDY_DIR


def splits_heldout(config: Config) -> bool:
    """Whether the experiment splits its held-out documents into validation and test (corpus.test_fraction)."""
    return config.corpus.test_fraction is not None


def development_split(config: Config) -> str | None:
    """The held-out split every development stage reads (figures, tables, report, tuning): validation, or
    None in a run that does not split its held-out documents (then every held-out row)."""
    return VALIDATION if splits_heldout(config) else None


def split_results(config: Config, split: str) -> Path:
    """Where the aggregate's readings of a held-out split lie: the test split's in a folder of its own,
    which only the verdict reads; the development split's (validation, or the whole held-out set of a run
    that does not split it) in the results folder itself, where every development stage reads them."""
    results = config.experiment.results
    return results / TEST if splits_heldout(config) and split == TEST else results
