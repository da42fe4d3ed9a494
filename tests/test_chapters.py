"""Chapters never shrink the published results: which chapter the results hold, which chapters a
`replicate --chapter=C` runs, and the refusal of a Snakemake run that would drop later chapters' SAEs."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest

from gatedsae.plan.chapters import chapters_to_run, published_chapter, require_no_shrink
from gatedsae.plan.config import ConfigError, load_config

HEADLINE = [("gated", "sweep"), ("baseline", "sweep")]
RESCALE = HEADLINE + [("baseline_rescale_shift", "rescale_shift")]
ABLATIONS = RESCALE + [("gated_untied", "sweep")]


def _config(tmp_path, rows, *overrides):
    config = load_config(["experiment=smoke", *overrides])
    config = replace(config, experiment=replace(config.experiment, results_dir=str(tmp_path)))
    if rows is not None:
        pd.DataFrame([{"arch": arch, "variant": variant, "l0": 1.0} for arch, variant in rows]).to_csv(
            tmp_path / "metrics.csv", index=False)
    return config


@pytest.mark.parametrize("rows, published", [(None, None), (HEADLINE, "headline"), (RESCALE, "rescale_shift"),
                                             (ABLATIONS, "ablations")])
def test_the_published_chapter_is_read_from_metrics_csv(tmp_path, rows, published):
    assert published_chapter(_config(tmp_path, rows)) == published


@pytest.mark.parametrize("rows, chapter, run", [
    (None, None, ["headline", "rescale_shift", "ablations", "groundtruth"]),  # a cold run: every chapter in turn
    (None, "headline", ["headline"]),
    (HEADLINE, None, ["headline", "rescale_shift", "ablations", "groundtruth"]),
    (RESCALE, None, ["rescale_shift", "ablations", "groundtruth"]),  # nothing runs short of what is published
    (ABLATIONS, "headline", ["ablations"]),                          # a chapter after a full run: kept whole
    (ABLATIONS, "rescale_shift", ["ablations"]),
    (RESCALE, "ablations", ["rescale_shift", "ablations"]),
])
def test_a_chapter_runs_at_least_through_what_is_published(tmp_path, rows, chapter, run):
    assert chapters_to_run(_config(tmp_path, rows), chapter) == run


def test_the_ground_truth_chapter_is_published_by_its_summary(tmp_path):
    config = _config(tmp_path, ABLATIONS)
    (tmp_path / "groundtruth").mkdir()
    (tmp_path / "groundtruth" / "summary.json").write_text("{}")
    assert published_chapter(config) == "groundtruth"
    assert chapters_to_run(config, "headline") == ["groundtruth"]


def test_a_snakemake_run_short_of_the_published_chapters_is_refused_before_compute(tmp_path):
    with pytest.raises(ConfigError, match=r"holds the SAEs of chapter 'ablations'.*--chapter=headline"):
        require_no_shrink(_config(tmp_path, ABLATIONS, "experiment.chapter=headline"))
    require_no_shrink(_config(tmp_path, ABLATIONS, "experiment.chapter=ablations"))
    require_no_shrink(_config(tmp_path, ABLATIONS))  # the whole experiment
    require_no_shrink(_config(tmp_path, HEADLINE, "experiment.chapter=rescale_shift"))  # a cold run's next chapter



@pytest.mark.parametrize("overrides, chapter, stops", [
    ([], None, ["evaluate", "evaluate", "evaluate", None]),  # tables, figures, verdict, report once, at the end
    ([], "rescale_shift", ["evaluate", None]),
    (["experiment.through=report"], None, ["evaluate", "evaluate", "evaluate", None]),
    (["experiment.through=train"], None, [None] * 4),  # a run asked to stop earlier stops there throughout
])
def test_only_the_last_chapter_of_a_replicate_run_reports(tmp_path, monkeypatch, overrides, chapter, stops):
    from types import SimpleNamespace

    from gatedsae.cli import replicate

    commands = []  # each chapter's Snakemake command, not run
    monkeypatch.setattr(replicate, "subprocess", SimpleNamespace(run=lambda command: commands.append(command)
                                                                 or SimpleNamespace(returncode=0)))
    monkeypatch.chdir(tmp_path)
    config = _config(tmp_path, None, *overrides)
    replicate.replicate(config, overrides, chapter)
    chapters = chapters_to_run(config, chapter)
    assert [command[-1].removeprefix("overrides=").split() for command in commands] == [
        [o for o in overrides if stop is None] + [f"experiment.chapter={name}"]
        + ([f"experiment.through={stop}"] if stop else []) for name, stop in zip(chapters, stops)]
