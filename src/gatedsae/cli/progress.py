"""Snakemake's console output, condensed: one line per finished job with the run's progress and an ETA,
everything Snakemake says kept in a log file, and whatever is not routine (errors, warnings, the
verdict) shown as it comes.

    [ 5/19  26%] train resid_post layer1 · 34 s · elapsed 1:25 · ETA 3:40

Snakemake prints a block per job (`rule X:` with its log, jobid and wildcards), `Finished jobid: N` and
`K of M steps (P%) done`; its `Job stats` table at the start counts the jobs of each rule. The ETA is
the jobs not yet finished priced by `plan.eta.Predictor` (the project's estimates, calibrated on the
jobs that finished).
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, TextIO

from gatedsae.plan.eta import TARGET_RULES, Predictor

JOB_START = re.compile(r"^(?:local)?(?:rule|checkpoint) (\w+):$")
JOB_FIELD = re.compile(r"^    (\w+): (.*)$")
FINISHED = re.compile(r"^Finished jobid: (\d+) \(Rule: (\w+)\)")
STEPS = re.compile(r"^(\d+) of (\d+) steps \((\d+)%\) done")
STATS_ROW = re.compile(r"^(\w+)\s+(\d+)$")
# Routine lines: the header, scheduling chatter, job blocks and their timestamps.
ROUTINE = re.compile(r"^(Using profile|Assuming unrestricted|SNAKEMAKE|=+$|  \w[\w ()]*: |Building DAG|Using shell|"
                     r"Provided cores|Rules claiming|Job stats|job +count|-+ +-+|Select jobs|Execute \d+ jobs|"
                     r"\[\w{3} \w{3} +\d+ [\d:]+ \d{4}\]|Shell command:|Complete log|Elapsed time|"
                     r"Removing temporary|Touching output|Your conda installation|Conda environments)")
LONG_JOB_SECONDS = 60.0  # a job expected to run longer gets a line (with its log) when it starts


def clock(seconds: float) -> str:
    seconds = int(round(max(seconds, 0)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@dataclass
class Job:
    rule: str
    wildcards: dict[str, str]
    log: Optional[str]
    started: float

    @property
    def site(self) -> Optional[str]:
        return self.wildcards.get("site")

    def describe(self) -> str:
        shown = [self.wildcards[k] for k in ("site",) if k in self.wildcards]
        shown += [f"layer{self.wildcards['layer']}"] if "layer" in self.wildcards else []
        return " ".join([self.rule, *shown])


@dataclass
class Progress:
    """Reads Snakemake's log lines (`feed`) and writes the condensed view to `out`."""

    predictor: Predictor
    out: TextIO = sys.stdout
    label: str = ""        # e.g. "chapter 1/3 headline", shown before each line
    clock_start: float = field(default_factory=time.time)
    counts: dict[str, int] = field(default_factory=dict)   # rule → jobs planned (Job stats)
    started: dict[str, int] = field(default_factory=dict)  # rule → jobs started
    running: dict[str, Job] = field(default_factory=dict)  # jobid → job
    done: int = 0
    total: int = 0
    _block: Optional[tuple[str, dict]] = None
    _in_stats: bool = False
    _finished: Optional[Job] = None
    _passing: bool = False  # inside an error report: show every line until the next job event

    def feed(self, line: str, now: Optional[float] = None) -> None:
        now = time.time() if now is None else now
        line = line.rstrip("\n")
        if self._block is not None:
            found = JOB_FIELD.match(line)
            if found:
                self._block[1][found.group(1)] = found.group(2)
                return
            self._start_job(*self._block, now)
            self._block = None
        if self._stats(line):
            return
        started = JOB_START.match(line)
        if started:
            self._passing = False
            self._block = (started.group(1), {})
            return
        finished = FINISHED.match(line)
        if finished:
            self._finish(finished.group(1), finished.group(2), now)
            return
        steps = STEPS.match(line)
        if steps:
            self.done, self.total = int(steps.group(1)), int(steps.group(2))
            if self._finished is not None:
                self._report(self._finished, now)
                self._finished = None
            return
        if line.startswith(("Error in rule", "Error executing rule", "RuleException", "WorkflowError", "Exiting because")):
            self._passing = True
        if self._passing or (line.strip() and not ROUTINE.match(line)):
            self._say(line)

    def _stats(self, line: str) -> bool:
        """The Job stats table: rule counts, and the opening line of the run."""
        if line.startswith("Job stats:"):
            self._in_stats = True
            return True
        if not self._in_stats:
            return False
        row = STATS_ROW.match(line.strip())
        if row and row.group(1) == "total":
            self._in_stats = False
            self.total = int(row.group(2))
            self._say(f"{self.total} jobs to run, about {clock(self.remaining_seconds(time.time()))} by the project's "
                      "estimates (refined as jobs finish)")
        elif row:
            self.counts[row.group(1)] = int(row.group(2))
        return True

    def _start_job(self, rule: str, fields: dict, now: float) -> None:
        wildcards = dict(part.split("=", 1) for part in fields.get("wildcards", "").split(", ") if "=" in part)
        job = Job(rule, wildcards, fields.get("log"), now)
        self.running[fields.get("jobid", f"?{len(self.running)}")] = job
        self.started[rule] = self.started.get(rule, 0) + 1
        expected = self.predictor.seconds(rule, job.site)
        if expected >= LONG_JOB_SECONDS and job.log:
            self._say(f"started {job.describe()} (about {clock(expected)}): tail -f {job.log}")

    def _finish(self, jobid: str, rule: str, now: float) -> None:
        job = self.running.pop(jobid, None) or Job(rule, {}, None, now)
        self.predictor.observe(job.rule, job.site, now - job.started)
        self._finished = job

    def remaining_seconds(self, now: float) -> float:
        """The jobs not started (by rule, at the mean of their sites) and the time left of those running."""
        pending = sum(max(count - self.started.get(rule, 0), 0) * self.predictor.seconds(rule)
                      for rule, count in self.counts.items())
        running = sum(max(self.predictor.seconds(job.rule, job.site) - (now - job.started), 0.0)
                      for job in self.running.values())
        return pending + running

    def _report(self, job: Job, now: float) -> None:
        width = len(str(self.total))
        head = f"[{self.done:>{width}}/{self.total} {100 * self.done // max(self.total, 1):3d}%]"
        if job.rule in TARGET_RULES:  # the last step: the run is complete
            if self.done == self.total:
                self._say(f"{head} all done in {clock(now - self.clock_start)}")
            return
        self._say(f"{head} {job.describe()} · {clock(now - job.started)} · elapsed {clock(now - self.clock_start)} · "
                  f"ETA {clock(self.remaining_seconds(now))}")

    def _say(self, text: str) -> None:
        print(f"{self.label}{text}" if self.label and text.strip() else text, file=self.out, flush=True)


def run_snakemake(command: list[str], log_path: Path, progress: Progress, pass_fds: tuple = ()) -> int:
    """Run `command` (Snakemake), copying all its output to `log_path` and showing `progress`'s view.
    Its standard output (what the workflow itself prints, e.g. the verdict) is shown whole."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                                   pass_fds=pass_fds)
        lock = threading.Lock()

        def copy_stdout():
            for line in process.stdout:
                with lock:
                    log.write(line)
                    log.flush()
                    print(line, end="", flush=True)

        reader = threading.Thread(target=copy_stdout, daemon=True)
        reader.start()
        for line in process.stderr:
            with lock:
                log.write(line)
                log.flush()
                progress.feed(line)
        reader.join()
        return process.wait()


def experiment_of(snakemake_args: list[str]) -> tuple[str, list[str]]:
    """(experiment, overrides) from Snakemake's `--config experiment=X overrides="..."` arguments."""
    values: dict[str, str] = {}
    if "--config" in snakemake_args:
        for item in snakemake_args[snakemake_args.index("--config") + 1:]:
            if item.startswith("-"):
                break
            key, _, value = item.partition("=")
            values[key] = value
    return values.get("experiment", "default"), values.get("overrides", "").split()
