"""Benchmark: a refactor measured against the code before it, each side a fresh clone at its commit.

    python scripts/bench_refactor.py identity [--before COMMIT] [--after COMMIT]
    python scripts/bench_refactor.py suite [--before COMMIT] [--after COMMIT] [-- PYTEST ARGS]

`identity` runs the smoke experiment (Snakemake, profiles/local, 2 cores) in a clone at each commit, one
after the other, and compares the two runs with scripts/compare_runs.py: activation shards, SAE weights
and sae-lens configs byte for byte, the tables value for value. Writes results/benchmarks/refactor_identity.json.

`suite` runs the test suite (`python -m pytest -m "not cluster"`, or the given pytest arguments) in a
clone at each commit, one after the other, and records each run's wall time and CPU time (user + sys of
pytest and everything it started), its outcome line, and the machine's load average around it; on a
machine shared with other work the CPU time is the fairer figure. Writes results/benchmarks/suite.json.

Both run the clones with this interpreter (its installed packages) and each clone's own src/ and conf/.
The default `before` is the commit preceding the naming refactor (issue 21), `after` this checkout's HEAD.
"""

from __future__ import annotations

import argparse
import os
import resource
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

BEFORE = "8f34f61"  # main before the naming refactor (issue 21) began
OUT = REPO_ROOT / "results" / "benchmarks"
SMOKE = ["-m", "snakemake", "--profile", "profiles/local", "--cores", "2", "--config", "experiment=smoke"]
SUITE = ["-m", "pytest", "-m", "not cluster", "-q", "-p", "no:cacheprovider"]


def commit_of(ref: str) -> str:
    return subprocess.run(["git", "rev-parse", "--short", ref], cwd=REPO_ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def clone_at(commit: str, target: Path) -> Path:
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(target)], check=True)
    subprocess.run(["git", "checkout", "--quiet", commit], cwd=target, check=True)
    return target


def run_in(clone: Path, args: list[str]) -> dict:
    """`python ARGS` in the clone: wall and CPU seconds (children's user + sys), exit code, output's tail."""
    env = dict(os.environ, PYTHONPATH=str(clone / "src"), DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    load_before = os.getloadavg()
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, *args], cwd=clone, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    output = (result.stdout + result.stderr).strip().splitlines()
    return {"wall_s": round(wall, 1), "user_s": round(after.ru_utime - used.ru_utime, 1),
            "sys_s": round(after.ru_stime - used.ru_stime, 1),
            "cpu_s": round(after.ru_utime - used.ru_utime + after.ru_stime - used.ru_stime, 1),
            "exit_code": result.returncode, "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()], "last_line": output[-1] if output else "",
            "tail": output[-40:] if result.returncode else []}


def identity(before: str, after: str, scratch: Path) -> int:
    runs = {}
    for side, commit in (("before", before), ("after", after)):
        clone = clone_at(commit, scratch / side)
        runs[side] = run_in(clone, SMOKE)
        print(f"{side} ({commit}): smoke run {runs[side]['wall_s']:.0f} s, exit {runs[side]['exit_code']}", flush=True)
        if runs[side]["exit_code"]:
            print("\n".join(runs[side]["tail"]), file=sys.stderr)
            return 1
    note = (f"experiment=smoke run by Snakemake ({' '.join(['python', *SMOKE])}) in a fresh clone at commit "
            f"{before} (before the naming refactor, issue 21) and at commit {after} (after it); a: before, b: after. "
            f"Columns only one side has are listed, not compared. By scripts/bench_refactor.py identity.")
    out = OUT / "refactor_identity.json"
    compared = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare_runs.py"),
                               str(scratch / "before" / "data"), str(scratch / "before" / "results" / "smoke"),
                               str(scratch / "after" / "data"), str(scratch / "after" / "results" / "smoke"),
                               "--out", str(out), "--note", note], capture_output=True, text=True)
    print(compared.stdout[-2000:], compared.stderr[-2000:])
    return compared.returncode


def without_unknown_markers(args: list[str], clone: Path) -> list[str]:
    """`-m "not cluster"` dropped where the clone has no cluster tests (pytest refuses an unknown marker)."""
    if "not cluster" in args and '"cluster:' not in (clone / "pyproject.toml").read_text():
        at = args.index("not cluster")
        return args[:at - 1] + args[at + 1:]
    return args


def suite(before: str, after: str, scratch: Path, pytest_args: list[str]) -> int:
    args = ["-m", "pytest", *pytest_args] if pytest_args else SUITE
    record = {"benchmark": "the test suite on a fresh clone before and after the naming refactor (issue 21), "
                           "run one after the other on this machine",
              "command": f"python scripts/bench_refactor.py suite --before {before} --after {after}"
                         + (f" -- {' '.join(pytest_args)}" if pytest_args else ""),
              "pytest": " ".join(["python", *args]), "machine": machine(), "niceness": os.nice(0), "runs": {}}
    for side, commit in (("before", before), ("after", after)):
        clone = clone_at(commit, scratch / side)
        record["runs"][side] = {"commit": commit, **run_in(clone, without_unknown_markers(args, clone))}
        print(f"{side} ({commit}): {record['runs'][side]['last_line']}", flush=True)
    b, a = record["runs"]["before"], record["runs"]["after"]
    record["after_over_before"] = {"cpu": round(a["cpu_s"] / b["cpu_s"], 3), "wall": round(a["wall_s"] / b["wall_s"], 3)}
    write_json_atomic(OUT / "suite.json", record)
    print(f"after / before: CPU {record['after_over_before']['cpu']}, wall {record['after_over_before']['wall']}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=("identity", "suite"))
    parser.add_argument("--before", default=BEFORE)
    parser.add_argument("--after", default="HEAD")
    argv = sys.argv[1:]
    ours, pytest_args = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    args = parser.parse_args(ours)
    args.pytest_args = pytest_args  # after --: pytest's arguments (suite; default: the whole suite)
    before, after = commit_of(args.before), commit_of(args.after)
    scratch = Path(tempfile.mkdtemp(prefix="bench-refactor-"))
    try:
        if args.what == "identity":
            return identity(before, after, scratch)
        return suite(before, after, scratch, args.pytest_args)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
