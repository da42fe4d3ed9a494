"""File names and folders shared by the stages and the Snakefile (kept free of heavy imports)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gatedsae.plan.config import Config

SPLITS = ("train", "heldout")     # the corpus's, the token windows' and the activation stores' splits
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
VERDICT_OUTPUTS = {"verdict_json": "verdict.json", "verdict_markdown": "verdict.md"}  # what the verdict stage writes there

BROWSER_DIR = "browser"  # the feature browser, under the experiment's results folder
STUDY_DIR = "study"      # the blinded rating study, likewise
PAGE_FILE, KEY_FILE = "rating.html", "key.json"
ANALYSIS_FILE, ANALYSIS_MARKDOWN = "analysis.json", "analysis.md"


def browser_dir(config: Config) -> Path:
    return config.experiment.results / BROWSER_DIR / config.browser.site / f"layer{config.browser_layer}"


def study_dir(config: Config) -> Path:
    return config.experiment.results / STUDY_DIR
