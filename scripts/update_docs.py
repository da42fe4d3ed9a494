"""Regenerate the generated blocks of the docs: numbers that come from the code or from a benchmark's
JSON are never typed by hand. A block is

    <!-- generated: KEY -->
    ...
    <!-- end generated -->

and KEY names one of the generators below. `python scripts/update_docs.py` rewrites every block;
`--check` only reports the stale ones (tests/test_docs.py runs it that way).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.scheduling import markdown_table, resources_table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_tables import GENERATORS as BENCHMARK_GENERATORS  # noqa: E402
from train_benchmark_tables import GENERATORS as TRAIN_BENCHMARK_GENERATORS  # noqa: E402

DOCS = ("docs/paper-scale.md", "docs/reliability.md", "docs/benchmarks.md", "docs/benchmarks-training.md")
BLOCK = re.compile(r"(<!-- generated: (?P<key>[^>]+?) -->\n)(?P<body>.*?)(<!-- end generated -->)", re.DOTALL)
# The paper runs as the runbook submits them: 80 GiB GPUs, SLURM's GPU type h100.
PAPER_OVERRIDES = ["resources.device_memory_gib=80", "resources.gpu_model=h100"]


def _paper(experiment: str):
    return load_config([f"experiment={experiment}", *PAPER_OVERRIDES])


def faults_summary() -> str:
    """The fault suite's last recorded run (results/benchmarks/faults.json, written by scripts/fault_suite.py)."""
    import json

    record = json.loads((REPO_ROOT / "results" / "benchmarks" / "faults.json").read_text())
    failed = [case["case"] for case in record["cases"] if case["held"] is False]
    machine = record["machine"]
    commit = record.get("commit", "unknown")
    commit = f"`{commit[:12]}`" + (" with uncommitted changes" if commit.endswith("+changes") else "")
    snakemake_seconds = sum(case["seconds"] for case in record["cases"] if case.get("through_snakemake"))
    lines = [f"Last run ({record['when']}, commit {commit}, {machine['cpus']} CPUs"
             f"{', as root' if machine.get('root') else ''}): **{record['cases_held']} of {record['cases_tried']} cases "
             f"held**; through Snakemake {record.get('cases_through_snakemake_held', 0)} of "
             f"{record.get('cases_through_snakemake', 0)} cases, breaking {record.get('faults_through_snakemake_held', 0)} "
             f"of {record.get('faults_through_snakemake', 0)} faults before a plain rerun; {record['cases_skipped']} "
             f"skipped; {record['seconds']:.0f} s, of which {snakemake_seconds:.0f} s in the cases through Snakemake."]
    if failed:
        lines.append(f"Not held: {', '.join(f'`{name}`' for name in failed)}.")
    return "\n".join(lines)


GENERATORS = {
    "faults summary": faults_summary,
    "estimates paper_pythia_2.8b": lambda: markdown_table(_paper("paper_pythia_2.8b")),
    "estimates paper_gemma_7b": lambda: markdown_table(_paper("paper_gemma_7b")),
    "requests paper_pythia_2.8b": lambda: resources_table(_paper("paper_pythia_2.8b")),
    "requests paper_gemma_7b": lambda: resources_table(_paper("paper_gemma_7b")),
    **BENCHMARK_GENERATORS,
    **TRAIN_BENCHMARK_GENERATORS,
}


def regenerate(text: str) -> str:
    def block(match: re.Match) -> str:
        key = match.group("key")
        if key not in GENERATORS:
            raise SystemExit(f"unknown generated block {key!r}; known: {', '.join(GENERATORS)}")
        return f"{match.group(1)}{GENERATORS[key]()}\n{match.group(4)}"

    return BLOCK.sub(block, text)


def stale(paths=DOCS) -> list[str]:
    """The docs whose generated blocks differ from what the generators give now."""
    return [path for path in paths if regenerate((REPO_ROOT / path).read_text()) != (REPO_ROOT / path).read_text()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only list the docs that are out of date")
    args = parser.parse_args()
    if args.check:
        out_of_date = stale()
        for path in out_of_date:
            print(f"{path}: generated blocks out of date; run python scripts/update_docs.py")
        return 1 if out_of_date else 0
    for path in DOCS:
        (REPO_ROOT / path).write_text(regenerate((REPO_ROOT / path).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
