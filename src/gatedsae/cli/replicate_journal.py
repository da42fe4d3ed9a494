"""The timing record of a `make replicate` run that survives a kill.

A run interrupted mid-way (a killed session, a full disk, a reboot) resumes where it stopped: Snakemake
reruns only unfinished jobs. Its timings must cover the work of every attempt, or the resumed attempt would
report a chapter as taking seconds because an earlier attempt did it. The journal notes when each chapter
of each attempt (an *invocation*) started and ended, written atomically as it goes. A later invocation of
the same run (same experiment, overrides, chapter and resolved configuration) continues it; at the end each chapter's wall time
and stage seconds are the sums over invocations. A chapter that an invocation did not end (it was killed)
counts up to the last job it finished, read from Snakemake's benchmark files, so the work it lost is not
counted. A run that ends removes its journal.
"""

from __future__ import annotations

import datetime as _dt
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from gatedsae.core.atomic import write_json_atomic

JOURNAL_FILE = "replicate_journal.json"

# stage_seconds(benchmarks, since, until) → seconds per rule of the jobs that finished in (since, until]
StageSeconds = Callable[[Path, float, Optional[float]], dict[str, float]]


@dataclass
class ChapterSpan:
    name: str
    started: float
    ended: Optional[float] = None  # None: the invocation was killed during the chapter


@dataclass
class Invocation:
    started: float
    code_version: str
    setup_seconds: Optional[float] = None
    chapters: list[ChapterSpan] = field(default_factory=list)


@dataclass
class Journal:
    path: Path
    run: dict  # what makes two invocations the same run: experiment, overrides, chapter, the config's hash
    invocations: list[Invocation] = field(default_factory=list)

    @classmethod
    def resume_or_start(cls, path: Path, run: dict, code_version: str, setup_seconds: Optional[float]) -> "Journal":
        """The journal of the run `run`, continued where an earlier invocation left one for the same run,
        else a new one (a different run's leftover journal is replaced)."""
        journal = cls(path, run)
        if path.exists():
            recorded = json.loads(path.read_text())
            if recorded.get("run") == run:
                journal.invocations = [Invocation(i["started"], i["code_version"], i.get("setup_seconds"),
                                                  [ChapterSpan(**c) for c in i["chapters"]])
                                       for i in recorded["invocations"]]
        journal.invocations.append(Invocation(time.time(), code_version, setup_seconds))
        journal._save()
        return journal

    @property
    def resumed(self) -> bool:
        return len(self.invocations) > 1

    def chapter_started(self, name: str) -> None:
        self.invocations[-1].chapters.append(ChapterSpan(name, time.time()))
        self._save()

    def chapter_ended(self) -> None:
        self.invocations[-1].chapters[-1].ended = time.time()
        self._save()

    def chapters(self, benchmarks: Path, stage_seconds: StageSeconds, descriptions: dict[str, str]) -> list[dict]:
        """Per chapter, in the order first run: wall seconds and stage seconds summed over the invocations."""
        merged: dict[str, dict] = {}
        for span, until in self._spans(benchmarks):
            chapter = merged.setdefault(span.name, {"name": span.name, "description": descriptions.get(span.name, ""),
                                                    "wall_seconds": 0.0, "stages": {}})
            chapter["wall_seconds"] = round(chapter["wall_seconds"] + until - span.started, 1)
            for rule, seconds in stage_seconds(benchmarks, span.started, until).items():
                chapter["stages"][rule] = round(chapter["stages"].get(rule, 0.0) + seconds, 1)
        return list(merged.values())

    def summary(self, benchmarks: Path) -> list[dict]:
        """Each invocation: when it started, its code, how long it computed, and the chapter it was killed in."""
        ends: dict[int, float] = {}
        for span, until in self._spans(benchmarks):
            ends[id(span)] = until
        rows = []
        for invocation in self.invocations:
            last = max((ends[id(span)] for span in invocation.chapters), default=invocation.started)
            killed = next((span.name for span in invocation.chapters if span.ended is None), None)
            rows.append({"started": time_text(invocation.started),
                         "code_version": invocation.code_version, "setup_seconds": invocation.setup_seconds,
                         "wall_seconds": round(last - invocation.started, 1), "interrupted_in": killed})
        return rows

    def finish(self) -> None:
        self.path.unlink(missing_ok=True)

    def _spans(self, benchmarks: Path) -> list[tuple[ChapterSpan, float]]:
        """Every chapter span with the time it counts up to: its end, or for a killed one the last job it
        finished before the next invocation began."""
        spans = []
        for number, invocation in enumerate(self.invocations):
            limit = self.invocations[number + 1].started if number + 1 < len(self.invocations) else time.time()
            for span in invocation.chapters:
                spans.append((span, span.ended if span.ended is not None
                              else _last_job_finished(benchmarks, span.started, limit)))
        return spans

    def _save(self) -> None:
        write_json_atomic(self.path, {"run": self.run, "invocations": [asdict(i) for i in self.invocations]})


def time_text(seconds: float) -> str:
    return _dt.datetime.fromtimestamp(seconds, _dt.timezone.utc).isoformat(timespec="seconds")


def _last_job_finished(benchmarks: Path, since: float, until: float) -> float:
    """When the last job that finished after `since` and before `until` finished (`since` if none did)."""
    times = [path.stat().st_mtime for path in benchmarks.rglob("*.tsv")] if benchmarks.exists() else []
    return max((t for t in times if since < t < until), default=since)
