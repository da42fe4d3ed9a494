"""The published reference run: a copy of one finished experiment's results and figures under
`reference/<experiment>/`, with its provenance.

The pipeline never reads or writes `reference/` as its own output, so a fresh clone computes everything
itself (Snakemake sees no finished outputs); the README and the verdict compare against this copy.

    python -m gatedsae publish-reference experiment=default
"""

from __future__ import annotations

import datetime as _dt
import platform
import shutil
from pathlib import Path

from gatedsae.core.atomic import atomic_directory, write_json_atomic
from gatedsae.plan.config import REPO_ROOT, Config

REFERENCE_ROOT = REPO_ROOT / "reference"
PROVENANCE = "provenance.json"
# What a reference keeps of the results folder: small, text or self-contained files.
RESULT_FILES = ("metrics.csv", "pareto.csv", "headline.csv", "levels.csv", "comparisons.csv", "ratio_curve.csv",
                "summary.json", "densities.json",
                "report.html", "verdict.json", "verdict.md", "replicate.json", "curves.csv", "tables")


def reference_dir(experiment: str) -> Path:
    return REFERENCE_ROOT / experiment


def publish(config: Config, root: Path = REFERENCE_ROOT) -> Path:
    """Copy the experiment's finished results and figures into `root/<experiment>/` (replacing an older
    copy) and record where they came from."""
    from gatedsae.core.codehash import code_version

    results, figures = config.experiment.results, config.experiment.figures
    missing = [name for name in ("metrics.csv", "headline.csv") if not (results / name).exists()]
    if missing or not (figures / "figures.json").exists():
        raise FileNotFoundError(f"experiment '{config.experiment.name}' has not finished (missing "
                                f"{', '.join(missing) or figures / 'figures.json'}); run it first")
    target = root / config.experiment.name
    with atomic_directory(target) as staging:  # swapped in whole: a reader never sees a half-copied reference
        for name in RESULT_FILES:
            source = results / name
            if source.is_dir():
                shutil.copytree(source, staging / name)
            elif source.exists():
                shutil.copy2(source, staging / name)
        shutil.copytree(figures, staging / "figures", ignore=shutil.ignore_patterns(".*"))
        write_json_atomic(staging / PROVENANCE, {
            "experiment": config.experiment.name, "code_version": code_version(),
            "published": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
        })
    return target
