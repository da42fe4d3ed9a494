"""Benchmark: the README's quick start on a fresh clone, as a newcomer runs it.

    python scripts/bench_quickstart.py [--keep]

Clones the repository's HEAD into a temporary folder and runs, timed, `make setup` (the environment:
.venv from requirements.lock; pip's wheel cache as this machine has it) and then the quick start,
`make run EXPERIMENT=smoke`. Records both times, the console's lines (the progress view), and the machine
(CPU, torch's capability, load average before and after: other work on a shared machine slows the run)
in results/benchmarks/quickstart.json, which the README's quick start quotes.
"""

from __future__ import annotations

import argparse
import os
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

OUT = REPO_ROOT / "results" / "benchmarks" / "quickstart.json"
QUICK_START = ["make", "run", "EXPERIMENT=smoke"]


def timed(command: list[str], cwd: Path) -> tuple[float, str, int]:
    env = {key: value for key, value in os.environ.items() if key not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    return round(time.perf_counter() - started, 1), result.stdout + result.stderr, result.returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="quickstart-"))
    clone = scratch / "gatedsae"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(clone)], check=True)
    before = machine()
    setup_seconds, _, setup_code = timed(["make", "setup"], clone)
    run_seconds, console, run_code = timed(QUICK_START, clone)
    lines = console.splitlines()
    record = {
        "benchmark": "the README's quick start on a fresh clone: `make setup`, then `make run EXPERIMENT=smoke`",
        "command": "python scripts/bench_quickstart.py", "code_version": commit, "machine": before,
        "load_average_after": list(os.getloadavg()), "niceness": os.nice(0),
        "setup_seconds": setup_seconds, "setup_exit_code": setup_code,
        "run_seconds": run_seconds, "run_exit_code": run_code,
        "total_seconds": round(setup_seconds + run_seconds, 1),
        "console_lines": len(lines),
        "progress_lines": [line for line in lines if line.startswith(("[", "started ")) or "jobs to run" in line],
        "outputs": sorted(str(p.relative_to(clone)) for p in (clone / "results" / "smoke").glob("*") if p.is_file()),
    }
    write_json_atomic(OUT, record)
    print(f"setup {setup_seconds:.0f} s, quick start {run_seconds:.0f} s ({len(lines)} console lines); wrote {OUT}")
    if args.keep:
        print(f"clone kept in {clone}")
    else:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0 if setup_code == run_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
