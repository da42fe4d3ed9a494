"""Run the fault suite (tests/test_faults.py, tests/test_workflow_faults.py) and write what held to
results/benchmarks/faults.json, with the commit it ran on.

    python scripts/fault_suite.py [--out results/benchmarks/faults.json] [pytest arguments ...]

Every case is a test that breaks a run (SIGKILL, a flipped byte, a deleted or edited output, a full disk,
a hostile name, a killed Snakemake) and checks what must hold; the summary lists each one with held =
true / false (null when skipped, with the reason: e.g. no tmpfs without root), from this very run, and
whether it goes through Snakemake (a run, the fault, a plain rerun: marker `snakemake`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import subprocess

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SUITES = ("tests/test_faults.py", "tests/test_workflow_faults.py")


def commit() -> str:
    """The commit the suite ran on, '+changes' if the working tree differs from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True).stdout.strip()

    head = git("rev-parse", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


class Collector:
    """A pytest plugin keeping each case's outcome, duration and description."""

    def __init__(self) -> None:
        self.cases: dict[str, dict] = {}

    def pytest_collection_modifyitems(self, items) -> None:
        for item in items:
            doc = (getattr(item, "function", None).__doc__ or "").strip().split("\n\n")[0]
            self.cases[item.nodeid] = {"case": item.nodeid.split("::", 1)[1], "file": item.nodeid.split("::")[0],
                                       "description": " ".join(doc.split()),
                                       "through_snakemake": item.get_closest_marker("snakemake") is not None,
                                       "held": None, "seconds": 0.0}

    def pytest_runtest_logreport(self, report) -> None:
        case = self.cases.get(report.nodeid)
        if case is None:
            return
        case["seconds"] = round(case["seconds"] + report.duration, 2)
        faults = dict(report.user_properties).get("faults")
        if faults:  # the faults a Snakemake test breaks in one copy before one rerun (tests/test_workflow_faults.py)
            case["faults"] = list(faults)
        if report.failed:
            case["held"] = False
            case["failure"] = str(report.longrepr).strip().splitlines()[-1][:500] if report.longrepr else ""
        elif report.skipped:
            case["skipped"] = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        elif report.when == "call" and case["held"] is None:
            case["held"] = True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "benchmarks" / "faults.json")
    args, pytest_args = parser.parse_known_args()
    collector = Collector()
    started = time.time()
    code = pytest.main([*(str(REPO_ROOT / suite) for suite in SUITES), "-q", "-p", "no:cacheprovider", *pytest_args],
                       plugins=[collector])
    cases = list(collector.cases.values())
    summary = {
        "suite": list(SUITES),
        "command": "python scripts/fault_suite.py",
        "commit": commit(),
        "cases_tried": sum(c["held"] is not None for c in cases),
        "cases_held": sum(c["held"] is True for c in cases),
        "cases_through_snakemake": sum(c["through_snakemake"] and c["held"] is not None for c in cases),
        "cases_through_snakemake_held": sum(c["through_snakemake"] and c["held"] is True for c in cases),
        # every fault broken before a Snakemake rerun (several may share one rerun), and those that held
        "faults_through_snakemake": sum(len(c.get("faults", [])) for c in cases
                                        if c["through_snakemake"] and c["held"] is not None),
        "faults_through_snakemake_held": sum(len(c.get("faults", [])) for c in cases
                                             if c["through_snakemake"] and c["held"] is True),
        "cases_skipped": sum("skipped" in c for c in cases),
        "seconds": round(time.time() - started, 1),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
                    "root": hasattr(os, "geteuid") and os.geteuid() == 0},
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "cases": cases,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{summary['cases_held']} of {summary['cases_tried']} cases held ({summary['cases_skipped']} skipped; "
          f"{summary['cases_through_snakemake_held']} of {summary['cases_through_snakemake']} through Snakemake, with "
          f"{summary['faults_through_snakemake_held']} of {summary['faults_through_snakemake']} faults) in "
          f"{summary['seconds']} s; wrote {args.out}")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
