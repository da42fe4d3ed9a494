"""`make replicate`: run an experiment chapter by chapter through Snakemake, time every chapter and
stage, and print the verdict at the end.

Each chapter is one Snakemake run of the experiment cut down to the chapters so far
(`experiment.chapter=<name>`); grids are incremental, so a later chapter trains and evaluates only the
SAEs it adds, and the last chapter's outputs are those of the whole experiment. Every chapter but the
last stops after evaluation (`experiment.through=evaluate`): the tables, figures, verdict and report are
made once, by the last chapter, from every SAE. The timings go to
`results/<experiment>/replicate.json` (a pipeline output, versioned by DVC with the results); `make
replicate` prints the verdict after it. A run killed mid-way resumes when run again, and its timings then
add up the work of every invocation (cli/replicate_journal.py).

    python -m gatedsae replicate experiment=default            # every chapter
    python -m gatedsae replicate experiment=default --chapter=headline   # up to that chapter
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Optional

from gatedsae.cli.replicate_journal import JOURNAL_FILE, Journal
from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.codehash import code_version
from gatedsae.core.errors import PipelineError
from gatedsae.core.precision import cpu_summary
from gatedsae.plan.chapters import chapter_names, chapters_to_run
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.identity import config_hash

TIMINGS_FILE = "replicate.json"
SNAKEMAKE_LOG = "snakemake.log"  # all Snakemake says during a chapter, beside its jobs' logs
PROFILE = "profiles/local"


def snakemake_command(experiment: str, overrides: list[str], extra: tuple[str, ...] = (),
                      progress_log: Optional[Path] = None) -> list[str]:
    """Snakemake through the run lock (`runlock`): a killed run's stale lock is cleared, a live run never
    shared; with `progress_log`, Snakemake's output goes there and the console gets one line per job."""
    progress = [f"--progress-log={progress_log}"] if progress_log is not None else []
    command = [sys.executable, "-m", "gatedsae.cli.runlock", *progress, "--profile", PROFILE, *extra, "--config",
               f"experiment={experiment}"]
    if overrides:
        command.append("overrides=" + " ".join(overrides))
    return command


def overrides_of_chapter(overrides: list[str], name: str, last: bool, through: str) -> list[str]:
    """A chapter's overrides: the run's, its name, and for every chapter but the run's last one a stop after
    evaluation. The last chapter's aggregate, curves, figures, verdict and report cover every SAE of the
    chapters before it, so reporting after each of those would only be redone (the per-chapter overhead of
    results/benchmarks/overhead.json); the chapters' training and evaluation are the same either way."""
    stop_early = not last and through == "report"
    kept = [o for o in overrides if not (stop_early and o.startswith("experiment.through="))]
    return kept + ([f"experiment.chapter={name}"] if name else []) + (["experiment.through=evaluate"] if stop_early else [])


def replicate(config: Config, overrides: list[str], chapter: Optional[str] = None) -> Path:
    """Run the chapters of `config`'s experiment up to `chapter` (all of them by default), never fewer than
    the published results already hold (plan/chapters.py)."""
    experiment = config.experiment
    names = chapter_names(config)
    if chapter is not None and chapter not in names:
        raise ConfigError(f"--chapter={chapter!r}: experiment '{experiment.name}' has chapters {names or 'none'}")
    run = chapters_to_run(config, chapter) if names else [""]
    skipped = [name for name in (names[: names.index(chapter) + 1] if chapter else names) if name not in run]
    if skipped or (chapter and run[-1] != chapter):
        print(f"{experiment.results}/ already holds the chapters through '{run[-1]}': running "
              f"{', '.join(run)} so that they stay in the published results (only what changed reruns)", flush=True)
    overrides = [o for o in overrides if not o.startswith(("experiment=", "experiment.chapter="))]
    benchmarks = Path("benchmarks") / experiment.name
    setup_seconds = _setup_seconds()
    journal = Journal.resume_or_start(Path("logs") / experiment.name / JOURNAL_FILE,
                                      {"experiment": experiment.name, "overrides": overrides, "chapter": chapter,
                                       "config": config_hash(config)},
                                      code_version(), setup_seconds, benchmarks)
    if journal.resumed:
        print(f"resuming the run an earlier invocation left unfinished ({len(journal.invocations) - 1} before this "
              "one): finished jobs are kept, and the timings add up every invocation's work", flush=True)
    timings = {"experiment": experiment.name, "overrides": overrides, "chapter": chapter, "chapters_run": run,
               "command": " ".join(shlex.quote(a) for a in [sys.executable, "-m", "gatedsae", "replicate",
                                                             f"experiment={experiment.name}", *overrides,
                                                             *([f"--chapter={chapter}"] if chapter else [])]),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                           "python": platform.python_version(), **cpu_summary()},
               "setup_seconds": setup_seconds, "chapters": []}
    descriptions = {c.name: c.description for c in experiment.chapters}
    for number, name in enumerate(run, 1):
        described = descriptions.get(name, "")
        title = f"chapter {number} of {len(run)}: {name}" if name else f"experiment {experiment.name}"
        print(f"\n=== {title}" + (f" ({described})" if described else ""), flush=True)
        chapter_overrides = overrides_of_chapter(overrides, name, last=number == len(run),
                                                 through=experiment.through)
        logs = Path("logs") / experiment.name / name
        journal.chapter_started(name or experiment.name, logs)
        result = subprocess.run(snakemake_command(experiment.name, chapter_overrides,
                                                  progress_log=logs / SNAKEMAKE_LOG))
        if result.returncode != 0:
            raise PipelineError(f"chapter {name or experiment.name} failed (Snakemake exit code {result.returncode}); "
                               f"its logs are under {logs}/ ({SNAKEMAKE_LOG}: all Snakemake said). Fix the cause and "
                               "run the same command again: finished work is kept.")
        journal.chapter_ended()
    timings["chapters"] = journal.chapters(descriptions)
    timings["wall_seconds"] = round(sum(c["wall_seconds"] for c in timings["chapters"]), 1)
    if journal.resumed:  # each invocation's install and chapters, the killed ones up to their last sign of life
        timings["invocations"] = journal.summary()
        setups = [i["setup_seconds"] for i in timings["invocations"] if i["setup_seconds"] is not None]
        timings["setup_seconds"] = round(sum(setups), 1) if setups else None
    if timings["setup_seconds"] is not None:
        timings["wall_seconds_with_setup"] = round(timings["wall_seconds"] + timings["setup_seconds"], 1)
    out = experiment.results / TIMINGS_FILE
    write_json_atomic(out, timings)
    journal.finish()
    _print_summary(timings, experiment.results)
    return out


def _setup_seconds() -> float | None:
    """The environment install's duration, measured by the Makefile (GATEDSAE_SETUP_SECONDS)."""
    value = os.environ.get("GATEDSAE_SETUP_SECONDS")
    try:
        return round(float(value), 1) if value else None
    except ValueError:
        return None


def _print_summary(timings: dict, results: Path) -> None:
    print("\n=== run time")
    elapsed = 0.0
    for chapter in timings["chapters"]:
        elapsed += chapter["wall_seconds"]
        print(f"  {chapter['name']:<16} {chapter['wall_seconds'] / 60:6.1f} min   (cumulative {elapsed / 60:.1f} min)")
    verdict = results / "verdict.md"
    if verdict.exists():
        print(f"\nverdict: {verdict}")
