"""Chapters never shrink the published results.

A chapter run (`experiment.chapter=<name>`) trains, evaluates and reports the sweep cut down to the
chapters up to that one. After a run that went further, such a run would rewrite `metrics.csv`, the
verdict and the report with fewer SAEs. So: `replicate --chapter=C` runs through the furthest chapter
the results already hold (incremental: only what changed reruns), and a Snakemake run whose chapter
stops short of them is refused before any compute, saying how to run it instead.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Optional

from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.grid import ALL_TOKENS_VARIANT, RESCALE_SHIFT_VARIANT
from gatedsae.plan.groundtruth import outputs
from gatedsae.plan.layout import AGGREGATE_OUTPUTS


def chapter_names(config: Config) -> list[str]:
    return [chapter.name for chapter in config.experiment.chapters]


def published_chapter(config: Config) -> Optional[str]:
    """The furthest chapter whose SAEs the experiment's metrics.csv holds, or whose ground-truth benchmark
    its results hold (None: no results, or an experiment without chapters)."""
    path = config.experiment.results / AGGREGATE_OUTPUTS["metrics"]
    if not config.experiment.chapters or not path.exists():
        return None
    with open(path, newline="") as handle:
        rows = [(row.get("arch", ""), row.get("variant", "")) for row in csv.DictReader(handle)]
    archs, variants = {arch for arch, _ in rows}, {variant for _, variant in rows}
    furthest = None
    benchmark = Path(outputs(config)["summary"]).exists()
    for chapter in config.experiment.chapters:
        if (archs & set(chapter.archs) or (chapter.rescale_shift and RESCALE_SHIFT_VARIANT in variants)
                or (chapter.all_tokens and ALL_TOKENS_VARIANT in variants) or (chapter.groundtruth and benchmark)):
            furthest = chapter.name
    return furthest


def chapters_to_run(config: Config, chapter: Optional[str]) -> list[str]:
    """The chapters `replicate --chapter=chapter` runs, in order: those up to `chapter` (all when None),
    less those the published results already go beyond, and at least through the published one."""
    names = chapter_names(config)
    wanted = names[: names.index(chapter) + 1] if chapter else names
    published = published_chapter(config)
    if published is None:
        return wanted
    kept = [name for name in wanted if names.index(name) >= names.index(published)]
    return kept or [published]


def require_no_shrink(config: Config) -> None:
    """Refuse a run through a chapter that stops short of the published results (before any compute)."""
    chapter = config.experiment.chapter
    published = published_chapter(config) if chapter else None
    names = chapter_names(config)
    if published and names.index(published) > names.index(chapter):
        results = config.experiment.results
        raise ConfigError(
            f"{results / AGGREGATE_OUTPUTS['metrics']} holds the SAEs of chapter '{published}'; a run through "
            f"'{chapter}' alone would drop them from the published results. Run `python -m gatedsae replicate "
            f"experiment={config.experiment.name} --chapter={chapter}` (it keeps them: it runs through '{published}', "
            "and only what changed reruns), or send this run elsewhere with experiment.results_dir=... "
            "experiment.figures_dir=...")
