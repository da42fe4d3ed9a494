"""Benchmark: where a replication's time goes besides computing, before and after a change that cuts it.

    python scripts/bench_overhead.py --before REF [--after HEAD] [--repeats 5] [--keep]

Clones the repository twice (at REF and at --after) and, in each, runs the smoke experiment's replication
(`python -m gatedsae replicate experiment=smoke`: every chapter through Snakemake, on the tiny model, so
almost all of it is fixed cost: start-ups, imports, configuration, checks, reporting), before's then
after's. Then, on those finished runs, each light job alone (the evaluation with every saved result reused,
aggregate, curves, figures, verdict, report; a dry run of Snakemake's DAG; the package's import), before's
and after's interleaved in each of --repeats rounds. Times are CPU seconds (user + system) of the process
and its children, which a loaded machine disturbs far less than wall seconds (recorded too); ratios are
after / before within the same round. Each side's job times in its replication come from Snakemake's log.
Writes results/benchmarks/overhead.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from gatedsae.core.atomic import write_json_atomic  # noqa: E402
from gatedsae.core.precision import machine  # noqa: E402

OUT = REPO_ROOT / "results" / "benchmarks" / "overhead.json"
EXPERIMENT = "experiment=smoke"
REPLICATE = ["-m", "gatedsae", "replicate", EXPERIMENT]
# The light jobs, each as the Snakefile runs it, and what the DAG costs; on finished runs.
ITEMS = {
    "import gatedsae.cli.main": ["-c", "import gatedsae.cli.main"],
    "evaluate (every saved result reused)": ["-m", "gatedsae", "evaluate", EXPERIMENT, "--site=resid_post", "--layer=1"],
    "aggregate": ["-m", "gatedsae", "aggregate", EXPERIMENT],
    "curves": ["-m", "gatedsae", "curves", EXPERIMENT],
    "figures": ["-m", "gatedsae", "figures", EXPERIMENT],
    "verdict": ["-m", "gatedsae", "verdict", EXPERIMENT],
    "report": ["-m", "gatedsae", "report", EXPERIMENT],
    "snakemake dry run (DAG of the whole experiment)": ["-m", "snakemake", "-n", "--profile", "profiles/local",
                                                        "--config", EXPERIMENT],
}
REPORTING = ("aggregate", "curves", "figures", "verdict", "report")  # what after runs once, not once per chapter


def clone(ref: str, into: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(into)], check=True)
    subprocess.run(["git", "checkout", "--quiet", ref], cwd=into, check=True)
    (into / ".venv").symlink_to(REPO_ROOT / ".venv")
    return into


def measured(arguments: list[str], cwd: Path) -> dict:
    """Wall and CPU seconds (user + system, its children included) of `python arguments` in `cwd`, with
    that checkout's package."""
    env = {**os.environ, "PYTHONPATH": str(cwd / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([str(cwd / ".venv" / "bin" / "python"), *arguments], cwd=cwd, env=env,
                            capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(arguments)} failed in {cwd}:\n{(result.stdout + result.stderr)[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": round(wall, 2), "cpu": round(cpu, 2)}


STAMP = re.compile(r"\[(\w{3} \w{3}\s+\d+ [\d:]+ \d{4})\]")


def job_seconds(logs: Path) -> dict[str, dict]:
    """Per rule: jobs and wall seconds summed over the chapters, from each chapter's snakemake.log."""
    seconds, jobs = defaultdict(float), defaultdict(int)
    for log in sorted(logs.glob("*/snakemake.log")):
        lines, stamp, started = log.read_text().splitlines(), None, {}
        for i, line in enumerate(lines):
            if match := STAMP.match(line):
                stamp = datetime.datetime.strptime(match.group(1), "%a %b %d %H:%M:%S %Y")
            elif match := re.match(r"\s*localrule (\w+):", line):
                job = next(re.search(r"jobid: (\d+)", x).group(1) for x in lines[i:i + 12] if "jobid:" in x)
                started[job] = (match.group(1), stamp)
            elif match := re.match(r"Finished jobid: (\d+)", line):
                rule, start = started[match.group(1)]
                seconds[rule] += (stamp - start).total_seconds()
                jobs[rule] += 1
    return {rule: {"jobs": jobs[rule], "wall_seconds": seconds[rule]} for rule in sorted(seconds) if rule != "all"}


def summary(before: list[float], after: list[float]) -> dict:
    ratios = [a / b for a, b in zip(after, before) if b > 0]
    return {"before": before, "after": after, "before_median": round(statistics.median(before), 2),
            "after_median": round(statistics.median(after), 2),
            "ratio_after_over_before": {"median": round(statistics.median(ratios), 3), "min": round(min(ratios), 3),
                                        "max": round(max(ratios), 3)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", required=True, help="the commit before the change")
    parser.add_argument("--after", default="HEAD")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", action="store_true", help="keep the clones (their paths are printed)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    refs = {side: subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, capture_output=True, text=True,
                                 check=True).stdout.strip() for side, ref in (("before", args.before), ("after", args.after))}
    scratch = Path(tempfile.mkdtemp(prefix="overhead-"))
    dirs = {side: clone(ref, scratch / side) for side, ref in refs.items()}
    load_before = os.getloadavg()
    replications = {}
    for side, cwd in dirs.items():
        print(f"replicating {EXPERIMENT} at {refs[side]} ({side})", flush=True)
        replications[side] = {**measured(REPLICATE, cwd), "jobs": job_seconds(cwd / "logs" / "smoke")}
    compared = scratch / "compare_runs.json"  # the change must leave every result as it was
    subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare_runs.py"),
                    *(str(dirs[side] / folder) for side in dirs for folder in ("data", "results/smoke")),
                    "--out", str(compared)], capture_output=True)
    identical = json.loads(compared.read_text())["identical"]
    items = {name: {"before": [], "after": []} for name in ITEMS}
    walls = {name: {"before": [], "after": []} for name in ITEMS}
    for round_ in range(args.repeats):
        for name, arguments in ITEMS.items():
            for side in (("before", "after") if round_ % 2 == 0 else ("after", "before")):  # alternate who goes first
                result = measured(arguments, dirs[side])
                items[name][side].append(result["cpu"])
                walls[name][side].append(result["wall"])
        print(f"round {round_ + 1} of {args.repeats} done", flush=True)
    chapters = len(re.findall(r"^\s+- name:", (dirs["after"] / "conf/experiment/smoke.yaml").read_text(), re.M))
    reporting_cpu = sum(statistics.median(items[name]["before"]) for name in REPORTING)
    write_json_atomic(args.out, {
        "what": "the fixed costs of a replication (start-ups, imports, checks, reporting), before and after cutting "
                "them; the smoke experiment's replication, whose compute is tiny, so nearly all of it is such cost",
        "command": f"python scripts/bench_overhead.py --before {args.before} --after {args.after} --repeats {args.repeats}",
        "before": refs["before"], "after": refs["after"],
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "how_measured": "each side in its own clone; CPU seconds = user + system of the process and its children "
                        "(resource.getrusage); the machine is shared, so wall seconds are noisy and recorded only beside "
                        "them; per item, before's and after's runs alternate within each round and the ratio is taken "
                        "within a round",
        "replication": {side: {"wall_seconds": r["wall"], "cpu_seconds": r["cpu"], "jobs": r["jobs"]}
                        for side, r in replications.items()}
                       | {"cpu_ratio_after_over_before": round(replications["after"]["cpu"] / replications["before"]["cpu"], 3),
                          "wall_ratio_after_over_before": round(replications["after"]["wall"] / replications["before"]["wall"], 3)},
        "results_identical": {"by": "scripts/compare_runs.py on the two replications (activation shards, SAE weights "
                                    "and configs byte for byte; metrics and summary tables value for value)",
                              "identical": identical},
        "items_cpu_seconds": {name: summary(values["before"], values["after"]) for name, values in items.items()},
        "items_wall_seconds": {name: {side: values for side, values in walls[name].items()} for name in ITEMS},
        "reporting_per_chapter": {
            "jobs": list(REPORTING), "cpu_seconds_before": round(reporting_cpu, 2),
            "note": f"before, every one of the {chapters} chapters ran these; after, only the last chapter of a "
                    f"replicate run does, so a run of {chapters} chapters saves about {chapters - 1} times this CPU time "
                    "(the smoke experiment's sizes: the default's aggregate and figures read more SAEs and cost more)"},
    })
    print(f"wrote {args.out}")
    if args.keep:
        print(f"clones kept under {scratch}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
