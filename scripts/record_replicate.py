"""Record a cold `make replicate` as the replication benchmark: results/benchmarks/replicate.json.

    git clone <repo> /tmp/cold && cd /tmp/cold && /usr/bin/time -v -o /tmp/cold_time.txt make replicate
    python scripts/record_replicate.py --clone /tmp/cold --time /tmp/cold_time.txt --how-measured "..."

Reads what the run wrote itself (results/<experiment>/replicate.json: the install's seconds, each chapter
with its stages' seconds; verdict.json's summary) and /usr/bin/time's report (the whole command's wall
time, peak memory), and adds the machine, the clone's commit and the budgets the README states.
scripts/plan_replicate.py calibrates its forecasts on this file.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from gatedsae.core.atomic import write_json_atomic  # noqa: E402
from gatedsae.core.precision import machine  # noqa: E402

OUT = REPO_ROOT / "results" / "benchmarks" / "replicate.json"
HEADLINE_BUDGET_SECONDS = 3600
WHOLE_BUDGET_SECONDS = 7200


def time_report(path: Path) -> dict:
    """Wall seconds and peak resident memory from `/usr/bin/time -v`'s report."""
    text = path.read_text()
    clock = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    if clock is None:
        raise SystemExit(f"{path} is not a `/usr/bin/time -v` report (no wall clock line)")
    seconds = 0.0
    for part in clock.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    status = re.search(r"Exit status: (\d+)", text)
    return {"wall_seconds": round(seconds, 1), "max_rss_gib": round(int(rss.group(1)) / 2**20, 2) if rss else None,
            "exit_status": int(status.group(1)) if status else None}


def verdict_summary(verdict: dict) -> str:
    counts = ", ".join(f"{n} {status}" for status, n in verdict["summary"].items() if n)
    return f"{sum(verdict['summary'].values())} claims: {counts}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clone", required=True, type=Path, help="the fresh clone `make replicate` ran in")
    parser.add_argument("--time", required=True, type=Path, help="/usr/bin/time -v's report (-o FILE)")
    parser.add_argument("--how-measured", required=True, help="the conditions: what else ran, the pip cache, ...")
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    results = args.clone / "results" / args.experiment
    run = json.loads((results / "replicate.json").read_text())
    timed = time_report(args.time)
    if timed["exit_status"] not in (0, None):
        raise SystemExit(f"the run failed (exit status {timed['exit_status']}): nothing to record")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=args.clone, capture_output=True, text=True,
                            check=True).stdout.strip()
    setup = run.get("setup_seconds") or 0.0
    headline = run["chapters"][0]["wall_seconds"] + setup
    # A run killed and resumed: /usr/bin/time saw only the last invocation, so the whole run's time is the
    # sum the run's journal kept of every invocation (the install, each chapter up to its last sign of life)
    resumed = "invocations" in run
    wall = run["wall_seconds_with_setup"] if resumed else timed["wall_seconds"]
    write_json_atomic(args.out, {
        "benchmark": f"the {args.experiment} replication, cold, from a fresh clone: `make replicate` "
                     f"(conf/experiment/{args.experiment}.yaml at the commit below)",
        "machine": machine(),
        "command": "git clone <repo> /tmp/cold && cd /tmp/cold && /usr/bin/time -v make replicate",
        "code_version": commit[:7], "code_commit": commit,
        "how_measured": args.how_measured,
        "wall_seconds": wall,
        "wall_seconds_note": ("make replicate as a whole (install, every chapter), summed over its invocations: it was "
                              "killed and resumed (`invocations`); a killed chapter counts up to its last write to its logs"
                              if resumed else
                              "make replicate as a whole (install, every chapter, the verdict printed), from /usr/bin/time"),
        "max_rss_gib": timed["max_rss_gib"],
        "setup_seconds": setup,
        "chapters": run["chapters"],
        **({"invocations": run["invocations"], "last_invocation_wall_seconds": timed["wall_seconds"]} if resumed else {}),
        "replicate_wall_seconds": run["wall_seconds"],
        "targets": {"headline_chapter_with_install_seconds": round(headline, 1),
                    "headline_budget_seconds": HEADLINE_BUDGET_SECONDS,
                    "whole_with_install_seconds": wall, "whole_budget_seconds": WHOLE_BUDGET_SECONDS,
                    "whole_within_budget": wall <= WHOLE_BUDGET_SECONDS},
        "verdict": verdict_summary(json.loads((results / "verdict.json").read_text())),
    })
    print(f"wrote {args.out}: {wall / 60:.1f} min" + (f" over {len(run['invocations'])} invocations" if resumed else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
