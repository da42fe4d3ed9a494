"""Benchmark: the ground-truth chapter's cost, from scratch (a fresh data folder: every store generated,
every SAE trained and scored), as one `python -m gatedsae groundtruth` run.

    python scripts/bench_groundtruth.py [--out DIR] [hydra overrides...]   (default: experiment=default)

Records wall time, the CPU seconds the run used (user + system, from the kernel's accounting of the
child; on a machine other jobs load, CPU seconds say more than wall time), the load average before and
after, peak memory, the machine, and the run's claims; writes results/benchmarks/groundtruth.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks" / "groundtruth.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="", help="scratch folder (default: a temporary one)")
    args, overrides = parser.parse_known_args()
    overrides = overrides or ["experiment=default"]
    scratch = Path(args.out or tempfile.mkdtemp(prefix="bench_groundtruth_"))
    command = [sys.executable, "-m", "gatedsae", "groundtruth", *overrides, f"paths.data={scratch / 'data'}",
               f"experiment.results_dir={scratch / 'results'}", f"experiment.figures_dir={scratch / 'figures'}"]
    load_before, started = os.getloadavg(), time.time()
    subprocess.run(command, check=True, cwd=REPO)
    wall, usage = time.time() - started, resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = json.loads((scratch / "results" / "groundtruth" / "summary.json").read_text())
    record = {
        "command": " ".join(command[1:]), "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                      "processor": platform.processor()},
        "wall_seconds": round(wall, 1), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "seeds": summary["seeds"], "saes_per_seed": len(summary["saes"]),
        "claims": {claim["id"]: claim["status"] for claim in summary["claims"]},
        "results": str(scratch / "results" / "groundtruth"),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
