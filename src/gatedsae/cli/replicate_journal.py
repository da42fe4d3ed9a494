"""The timing record of a `make replicate` run that survives a kill.

A run interrupted mid-way (a killed session, a full disk, a reboot) resumes where it stopped: Snakemake
reruns only unfinished jobs. Its timings must cover the work of every attempt, or the resumed attempt would
report a chapter as taking seconds because an earlier attempt did it. The journal notes when each chapter
of each attempt (an *invocation*) started and ended, written atomically as it goes. A later invocation of
the same run (same experiment, overrides, chapter and resolved configuration) continues it; at the end each
chapter's wall time and stage seconds are the sums over invocations. A run that ends removes its journal.

A chapter that an invocation did not end (it was killed) is closed when the next invocation starts, at its
last sign of life: the last write to its logs (a running job's progress goes there) or to Snakemake's
benchmark files, read before the resumed jobs rewrite them. Its wall time so includes the killed job's
part, which the stages resume from (training state, cached shards, evaluated SAEs) rather than redo; its
stage seconds count the jobs that finished.

A chapter's stage seconds are read from the benchmark files as soon as it closes, never at the end of the
run: a later chapter (or invocation) reruns the same rules where their parameters differ, in seconds, and
each rerun rewrites its benchmark file.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.precision import cpu_summary

JOURNAL_FILE = "replicate_journal.json"


@dataclass
class ChapterSpan:
    name: str
    started: float
    ended: Optional[float] = None  # None while it runs (or was killed and not yet closed)
    logs: Optional[str] = None     # the chapter's log folder: where a killed chapter's last sign of life is
    killed: bool = False
    stages: dict[str, float] = field(default_factory=dict)  # seconds per rule of its finished jobs
    # the same, per site for the rules that run per site (the forecast calibrates each site on its own)
    site_stages: dict[str, dict[str, float]] = field(default_factory=dict)


@dataclass
class Invocation:
    started: float
    code_version: str
    setup_seconds: Optional[float] = None
    chapters: list[ChapterSpan] = field(default_factory=list)
    # the CPU it ran on (core/precision.cpu_summary): a run resumed on another kind of machine is timed
    # partly there, and its auto precision may differ ({} in journals written before it was recorded)
    machine: dict = field(default_factory=dict)


@dataclass
class Journal:
    path: Path
    run: dict  # what makes two invocations the same run: experiment, overrides, chapter, the config's hash
    benchmarks: Path  # Snakemake's benchmark files: each job's seconds
    invocations: list[Invocation] = field(default_factory=list)

    @classmethod
    def resume_or_start(cls, path: Path, run: dict, code_version: str, setup_seconds: Optional[float],
                        benchmarks: Path) -> "Journal":
        """The journal of the run `run`, continued where an earlier invocation left one for the same run
        (its killed chapter closed at its last sign of life), else a new one (a different run's leftover
        journal is replaced)."""
        journal = cls(path, run, benchmarks)
        now = time.time()
        if path.exists():
            recorded = json.loads(path.read_text())
            if recorded.get("run") == run:
                journal.invocations = [Invocation(i["started"], i["code_version"], i.get("setup_seconds"),
                                                  [ChapterSpan(**c) for c in i["chapters"]], i.get("machine", {}))
                                       for i in recorded["invocations"]]
        for span in (span for invocation in journal.invocations for span in invocation.chapters):
            if span.ended is None:
                folders = [benchmarks] + ([Path(span.logs)] if span.logs else [])
                span.ended, span.killed = last_write(folders, span.started, now), True
                span.stages, span.site_stages = stage_seconds(benchmarks, span.started, span.ended)
        journal.invocations.append(Invocation(now, code_version, setup_seconds, machine=cpu_summary()))
        journal._save()
        return journal

    @property
    def resumed(self) -> bool:
        return len(self.invocations) > 1

    def chapter_started(self, name: str, logs: Optional[Path] = None) -> None:
        self.invocations[-1].chapters.append(ChapterSpan(name, time.time(), logs=str(logs) if logs else None))
        self._save()

    def chapter_ended(self) -> None:
        span = self.invocations[-1].chapters[-1]
        span.ended = time.time()
        span.stages, span.site_stages = stage_seconds(self.benchmarks, span.started, span.ended)
        self._save()

    def chapters(self, descriptions: dict[str, str]) -> list[dict]:
        """Per chapter, in the order first run: wall seconds and stage seconds summed over the invocations."""
        merged: dict[str, dict] = {}
        for span in self._spans():
            chapter = merged.setdefault(span.name, {"name": span.name, "description": descriptions.get(span.name, ""),
                                                    "wall_seconds": 0.0, "stages": {}, "site_stages": {}})
            chapter["wall_seconds"] = round(chapter["wall_seconds"] + span.ended - span.started, 1)
            _add(chapter["stages"], span.stages)
            for rule, sites in span.site_stages.items():
                _add(chapter["site_stages"].setdefault(rule, {}), sites)
        return list(merged.values())

    def summary(self) -> list[dict]:
        """Each invocation: when it started, its code and machine, how long it ran, and the chapter it was
        killed in."""
        return [{"started": time_text(invocation.started), "code_version": invocation.code_version,
                 "machine": invocation.machine or None, "setup_seconds": invocation.setup_seconds,
                 "wall_seconds": round(max((span.ended for span in invocation.chapters), default=invocation.started)
                                       - invocation.started, 1),
                 "interrupted_in": next((span.name for span in invocation.chapters if span.killed), None)}
                for invocation in self.invocations]

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def _spans(self) -> list[ChapterSpan]:
        return [span for invocation in self.invocations for span in invocation.chapters if span.ended is not None]

    def _save(self) -> None:
        write_json_atomic(self.path, {"run": self.run, "invocations": [asdict(i) for i in self.invocations]})


def time_text(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")


def _add(totals: dict[str, float], seconds: dict[str, float]) -> None:
    for key, value in seconds.items():
        totals[key] = round(totals.get(key, 0.0) + value, 1)


def stage_seconds(benchmarks: Path, since: float, until: float) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    """Seconds per rule of the jobs that finished in (since, until], and per rule and site for the rules
    that run per site, from Snakemake's benchmark files (benchmarks/<experiment>/<rule>/...tsv, one per job,
    .../<model>/<corpus>/<site>/layer<L>/<sweep>.tsv for a site's; its last row is the job's latest run)."""
    seconds: dict[str, float] = {}
    by_site: dict[str, dict[str, float]] = {}
    for path in sorted(benchmarks.rglob("*.tsv")) if benchmarks.exists() else []:
        if not since < path.stat().st_mtime <= until:
            continue
        with open(path) as handle:
            rows = list(csv.DictReader(handle, delimiter="\t"))
        if rows:
            parts = path.relative_to(benchmarks).parts
            job = {parts[0]: float(rows[-1]["s"])}
            _add(seconds, job)
            if len(parts) == 6 and parts[4].startswith("layer"):
                _add(by_site.setdefault(parts[0], {}), {parts[3]: job[parts[0]]})
    return seconds, by_site


def last_write(folders: list[Path], since: float, until: float) -> float:
    """The last write to a file under `folders` after `since` and before `until` (`since` if none)."""
    times = [path.stat().st_mtime for folder in folders if folder.exists() for path in folder.rglob("*")
             if path.is_file()]
    return max((t for t in times if since < t < until), default=since)
