"""A `make replicate` run killed mid-way and resumed reports the work of every invocation
(cli/replicate_journal.py): each chapter's wall time and stage seconds summed over invocations, the killed
chapter's wall time counted up to its last write to its logs, the journal gone once the run ends."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from gatedsae.cli import replicate, replicate_journal
from gatedsae.plan.config import load_config


class Clock:
    def __init__(self, now: float):
        self.now = now

    def time(self) -> float:
        return self.now


def _job(rule: str, name: str, seconds: float, finished: float) -> None:
    """A Snakemake benchmark file of a job that took `seconds` and finished at `finished`."""
    path = Path("benchmarks") / "smoke" / rule / f"{name}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"s\th:m:s\n{seconds}\t0:00:00\n")
    os.utime(path, (finished, finished))


def _runner(clock: Clock, script: list):
    """A stand-in for Snakemake: each chapter's run takes the next step of `script`: jobs to finish, seconds
    to advance (a running job writes its log until then), and whether the invocation is killed at its end."""
    def run(command):
        jobs, advance, killed = script.pop(0)
        start = clock.now
        for rule, name, seconds, offset in jobs:
            _job(rule, name, seconds, start + offset)
        clock.now = start + advance
        chapter = command[-1].split("experiment.chapter=")[1].split()[0]
        log = Path("logs") / "smoke" / chapter / "train" / "job.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("step 10/40\n")
        os.utime(log, (clock.now - 1, clock.now - 1))  # its last progress line, a second before the end
        if killed:
            raise KeyboardInterrupt  # the session ends, the machine goes away
        return SimpleNamespace(returncode=0)
    return run


@pytest.fixture
def run_in(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    clock = Clock(1_000_000.0)
    monkeypatch.setattr(replicate_journal, "time", clock)
    monkeypatch.setattr(replicate, "code_version", lambda: "abc1234")
    config = load_config(["experiment=smoke"])
    config = replace(config, experiment=replace(config.experiment, results_dir=str(tmp_path / "results")))

    def invoke(script: list, chapter=None):
        monkeypatch.setattr(replicate, "subprocess", SimpleNamespace(run=_runner(clock, script)))
        return replicate.replicate(config, [], chapter)
    return clock, invoke, config


def test_a_killed_run_resumed_reports_every_invocations_work(run_in):
    clock, invoke, config = run_in
    # First invocation: the headline chapter finishes a 100 s job, then is killed 50 s into the next one,
    # whose log shows it alive until 149 s (its saved state is resumed from: its time counts).
    with pytest.raises(KeyboardInterrupt):
        invoke([([("train", "a", 100.0, 100.0)], 150.0, True)])
    journal = Path("logs") / "smoke" / replicate_journal.JOURNAL_FILE
    assert journal.exists()
    clock.now += 3600  # the next session
    resumed_at = clock.now
    # Second invocation: the headline's remaining job (resumed), then the other chapters.
    remaining = [([("train", "b", 60.0, 60.0), ("evaluate", "a", 20.0, 80.0)], 80.0, False),
                 ([("rescale_shift", "a", 5.0, 5.0)], 5.0, False), ([], 1.0, False), ([], 2.0, False)]
    out = invoke(remaining)
    timings = json.loads(out.read_text())
    headline = timings["chapters"][0]
    assert headline["name"] == "headline"
    assert headline["wall_seconds"] == 149.0 + 80.0  # killed at 150 s, counted to its log's last write
    assert headline["stages"] == {"train": 160.0, "evaluate": 20.0}  # finished jobs only
    assert [c["wall_seconds"] for c in timings["chapters"][1:]] == [5.0, 1.0, 2.0]
    assert timings["wall_seconds"] == 237.0
    first, second = timings["invocations"]
    assert first["interrupted_in"] == "headline" and first["wall_seconds"] == 149.0
    assert second["interrupted_in"] is None and second["wall_seconds"] == 88.0
    assert second["started"] == replicate_journal.time_text(resumed_at)
    assert first["machine"] == second["machine"] == replicate_journal.cpu_summary()  # each part's CPU
    assert timings["machine"]["cpu_features"] == replicate_journal.cpu_summary()["cpu_features"]
    assert not journal.exists(), "a finished run leaves no journal"


def test_a_run_in_one_piece_has_no_invocations_list(run_in):
    clock, invoke, _ = run_in
    timings = json.loads(invoke([([("train", "a", 10.0, 10.0)], 10.0, False)] + [([], 1.0, False)] * 3)
                         .read_text())
    assert "invocations" not in timings
    assert [c["wall_seconds"] for c in timings["chapters"]] == [10.0, 1.0, 1.0, 1.0]
    assert timings["chapters"][0]["stages"] == {"train": 10.0}


def test_another_runs_leftover_journal_is_not_continued(run_in):
    clock, invoke, _ = run_in
    with pytest.raises(KeyboardInterrupt):
        invoke([([("train", "a", 100.0, 100.0)], 150.0, True)], chapter="headline")
    clock.now += 3600
    # a run of every chapter is not the killed run of the headline alone: its timings start afresh
    timings = json.loads(invoke([([], 3.0, False)] + [([], 1.0, False)] * 3).read_text())
    assert "invocations" not in timings
    assert timings["chapters"][0]["wall_seconds"] == 3.0 and timings["chapters"][0]["stages"] == {}


def test_a_journal_left_under_another_configuration_is_not_continued(run_in, monkeypatch):
    """conf/ changed since the killed invocation (its jobs rerun): its work is no part of this run's."""
    clock, invoke, _ = run_in
    with pytest.raises(KeyboardInterrupt):
        invoke([([("train", "a", 100.0, 100.0)], 150.0, True)])
    clock.now += 3600
    monkeypatch.setattr(replicate, "config_hash", lambda config: "another configuration")
    timings = json.loads(invoke([([], 3.0, False)] + [([], 1.0, False)] * 3).read_text())
    assert "invocations" not in timings and timings["chapters"][0]["stages"] == {}


def test_a_chapter_keeps_its_stage_seconds_when_a_later_chapter_reruns_the_same_job(run_in):
    """The next chapter's parameters differ, so Snakemake reruns the headline's jobs there (seconds each, the
    work is resumed) and rewrites their benchmark files: the headline's own seconds must survive that."""
    clock, invoke, _ = run_in
    script = [([("train", "a", 100.0, 100.0), ("evaluate", "a", 30.0, 130.0)], 130.0, False),
              ([("train", "a", 2.0, 2.0), ("rescale_shift", "a", 5.0, 7.0)], 7.0, False),
              ([("train", "a", 2.0, 2.0)], 2.0, False), ([], 1.0, False)]
    timings = json.loads(invoke(script).read_text())
    assert [c["stages"] for c in timings["chapters"]] == [
        {"train": 100.0, "evaluate": 30.0}, {"train": 2.0, "rescale_shift": 5.0}, {"train": 2.0}, {}]


def test_a_sites_jobs_are_timed_per_site_as_well(run_in):
    """The forecast calibrates each site on its own (its SAEs' sparsity sets their cost): a chapter records
    the seconds of each per-site rule per site too, summed over the site's layers and over invocations."""
    clock, invoke, _ = run_in
    with pytest.raises(KeyboardInterrupt):
        invoke([([("cache", "m/c", 5.0, 5.0), ("train", "m/c/resid_post/layer1/default", 100.0, 105.0),
                  ("train", "m/c/attn_z/layer1/default", 20.0, 125.0)], 130.0, True)])
    clock.now += 3600
    headline = [([("train", "m/c/attn_z/layer2/default", 7.0, 7.0),
                  ("evaluate", "m/c/attn_z/layer1/default", 3.0, 10.0)], 10.0, False)]
    timings = json.loads(invoke(headline + [([], 1.0, False)] * 3).read_text())
    chapter = timings["chapters"][0]
    assert chapter["stages"] == {"cache": 5.0, "train": 127.0, "evaluate": 3.0}
    assert chapter["site_stages"] == {"train": {"resid_post": 100.0, "attn_z": 27.0}, "evaluate": {"attn_z": 3.0}}


def test_a_journal_written_before_machines_were_recorded_is_continued(run_in):
    """An invocation killed by an older version (no `machine` in its journal) is resumed, not restarted."""
    clock, invoke, _ = run_in
    with pytest.raises(KeyboardInterrupt):
        invoke([([("train", "a", 100.0, 100.0)], 150.0, True)])
    journal = Path("logs") / "smoke" / replicate_journal.JOURNAL_FILE
    recorded = json.loads(journal.read_text())
    for invocation in recorded["invocations"]:
        del invocation["machine"]
    journal.write_text(json.dumps(recorded))
    clock.now += 3600
    timings = json.loads(invoke([([("train", "b", 60.0, 60.0)], 60.0, False)] + [([], 1.0, False)] * 3).read_text())
    first, second = timings["invocations"]
    assert first["machine"] is None and second["machine"]["cores"] == os.cpu_count()
    assert timings["chapters"][0]["stages"] == {"train": 160.0}
