"""Benchmark: what the machine's precision buys a whole replication, cold, end to end.

    python scripts/bench_speed.py [--settings "train.seeds=1"] [--experiment default] [--chapter headline] [--keep]

Clones the repository twice (HEAD), one after the other, and in each runs what `make replicate` runs, timed:
the environment install (scripts/setup.sh) and then every chapter of the experiment
(`python -m gatedsae replicate experiment=E SETTINGS ...`; not through `dvc repro`, which takes no overrides),
or, with --chapter, the chapters up to that one (the headline chapter alone holds every stage whose precision
the machine chooses: the cache, the training and the spliced evaluation).
The first run leaves the precision to the machine (conf/precision: `auto`), the second forces float32 at
every stage. Both wall times, their ratio (float32 / auto), the machine (CPU capability and flags) and what
each stage resolved to are recorded; then the two verdicts are compared claim by claim: a statistic agrees
when the runs differ by less than the auto run's 95% interval half-width (conf/precision's gate for the
verdict) and the claim's status is the same. Writes results/benchmarks/speed.json.

Run it alone: the two runs share the machine with nothing else, or their ratio says little.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "src"))

from gatedsae.core.atomic import write_json_atomic  # noqa: E402
from gatedsae.core.precision import machine  # noqa: E402
from gatedsae.reporting.claims import load_claims  # noqa: E402

OUT = REPO_ROOT / "results" / "benchmarks" / "speed.json"
FLOAT32 = ["precision.cache=float32", "precision.train=float32", "precision.evaluate=float32"]
TARGET_RATIO = 1.8
TARGET_AUTO_SECONDS = 40 * 60
# The wall-time target holds at the default's size with one training seed; settings that do less work
# still give a ratio, but say nothing about it
WALL_TARGET_SETTINGS = ["train.seeds=1"]


def timed(command: list[str], cwd: Path, log: Path, env: dict | None = None) -> float:
    started = time.perf_counter()
    with log.open("w") as out:
        result = subprocess.run(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise SystemExit(f"{shlex.join(command)} failed in {cwd} (exit {result.returncode}); see {log}")
    return time.perf_counter() - started


STAGES, DTYPES = {"cache", "train", "evaluate"}, {"float32", "bfloat16"}


def resolved_precisions(data: Path) -> dict[str, dict[str, int]]:
    """Per stage, how many of the run's records (store manifests, checkpoints, evaluations) computed in each
    dtype: what `auto` resolved to on this machine. Only precision records count (a tokenizer's vocabulary
    also has the keys "stage" and "dtype")."""
    counts: dict[str, dict[str, int]] = {}

    def visit(node) -> None:
        if isinstance(node, dict):
            if node.get("stage") in STAGES and node.get("dtype") in DTYPES:
                stage = counts.setdefault(node["stage"], {})
                stage[node["dtype"]] = stage.get(node["dtype"], 0) + 1
            for value in node.values():
                visit(value)
        elif isinstance(node, list):
            for value in node:
                visit(value)

    for path in data.rglob("*.json"):
        try:
            visit(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue
    return counts


def cold_run(into: Path, commit: str, experiment: str, overrides: list[str], chapter: str | None) -> dict:
    """A fresh clone at `commit`, its install, its replication; the seconds of each and the run's own records.
    Both runs check out the commit read at the start, so a commit made while the first run works does not
    reach the second."""
    subprocess.run(["git", "clone", "--quiet", str(REPO_ROOT), str(into)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=into, check=True)
    setup = timed(["bash", "scripts/setup.sh"], into, into / "setup.log")
    env = {**os.environ, "GATEDSAE_SETUP_SECONDS": str(round(setup))}
    command = [str(into / ".venv" / "bin" / "python"), "-m", "gatedsae", "replicate", f"experiment={experiment}",
               *overrides, *([f"--chapter={chapter}"] if chapter else [])]
    replicate = timed(command, into, into / "replicate.log", env)
    results = into / "results" / experiment
    return {"setup_seconds": round(setup, 1), "replicate_seconds": round(replicate, 1),
            "wall_seconds": round(setup + replicate, 1), "command": shlex.join(command[1:]),
            "chapters": json.loads((results / "replicate.json").read_text()).get("chapters", []),
            "precision": resolved_precisions(into / "data"),
            "verdict": json.loads((results / "verdict.json").read_text())}


def agreement(auto: dict, float32: dict) -> dict:
    """Claim by claim, whether the float32 run's statistic lies within the auto run's interval half-width of
    the auto run's and both end with the same status."""
    theirs = {c.id: c for c in load_claims(float32["claims"])}
    rows = []
    for claim in load_claims(auto["claims"]):
        other = theirs.get(claim.id)
        finite = other is not None and all(isinstance(x, (int, float)) and math.isfinite(x) for x in
                                           (claim.value, claim.ci_low, claim.ci_high, other.value))
        half_width = (claim.ci_high - claim.ci_low) / 2 if finite else None
        difference = other.value - claim.value if finite else None
        rows.append({"id": claim.id, "auto": claim.value, "float32": other.value if other else None,
                     "difference": difference, "auto_half_width": half_width,
                     "within_interval": bool(finite and abs(difference) < half_width),
                     "status_auto": claim.status, "status_float32": other.status if other else None,
                     "same_status": bool(other and other.status == claim.status)})
    compared = [r for r in rows if r["auto_half_width"] is not None]
    return {"claims": rows, "compared": len(compared),
            "within_interval": sum(r["within_interval"] for r in compared),
            "same_status": sum(r["same_status"] for r in rows), "of": len(rows)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="default")
    parser.add_argument("--settings", default="train.seeds=1",
                        help="overrides both runs share (default: one training seed, the default's size when the "
                             "speed target was set)")
    parser.add_argument("--chapter", default=None,
                        help="time the chapters up to this one only (default: every chapter)")
    parser.add_argument("--keep", action="store_true", help="keep the clones (their paths are printed)")
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args()
    settings = shlex.split(args.settings)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    scratch = Path(tempfile.mkdtemp(prefix="speed-"))
    load_before = os.getloadavg()
    runs = {}
    for name, overrides in (("auto", settings), ("float32", settings + FLOAT32)):
        print(f"cold run {name}: {shlex.join(overrides)}", flush=True)
        runs[name] = cold_run(scratch / name, commit, args.experiment, overrides, args.chapter)
        print(f"  {runs[name]['wall_seconds']:.0f} s", flush=True)
    ratio = runs["float32"]["wall_seconds"] / runs["auto"]["wall_seconds"]
    write_json_atomic(args.out, {
        "benchmark": "the replication cold from a fresh clone, twice in a row on the same machine: precision chosen "
                     "by the machine (auto), then float32 everywhere",
        "command": f"python scripts/bench_speed.py --experiment {args.experiment} --settings {shlex.quote(args.settings)}"
                   + (f" --chapter {args.chapter}" if args.chapter else ""),
        "code_version": commit, "experiment": args.experiment, "chapter": args.chapter, "settings": settings,
        "machine": {**machine(), "load_average_before": [round(x, 2) for x in load_before],
                    "load_average_after": [round(x, 2) for x in os.getloadavg()]},
        "runs": {name: {k: v for k, v in run.items() if k != "verdict"} for name, run in runs.items()},
        "ratio_float32_over_auto": round(ratio, 3),
        "targets": {"ratio": TARGET_RATIO, "ratio_met": ratio >= TARGET_RATIO,
                    "auto_wall_seconds": TARGET_AUTO_SECONDS, "auto_wall_settings": WALL_TARGET_SETTINGS,
                    "auto_wall_met": runs["auto"]["wall_seconds"] <= TARGET_AUTO_SECONDS
                    if settings == WALL_TARGET_SETTINGS else None},
        "verdicts": agreement(runs["auto"]["verdict"], runs["float32"]["verdict"]),
    })
    print(f"wrote {args.out}: float32 / auto = {ratio:.2f}" + (f"; clones kept under {scratch}" if args.keep else ""))
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
