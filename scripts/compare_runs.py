"""Compare two runs of one experiment, e.g. before and after a code change that must not change results:
activation shards, SAE weights and sae-lens configs byte for byte, then the per-SAE metrics and the
summary tables value for value (columns only one run has are listed, not compared).

    python scripts/compare_runs.py DATA_A RESULTS_A DATA_B RESULTS_B [--out FILE.json] [--note TEXT]

Exits 1 when anything present in both differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

import pandas as pd

ARTIFACTS = {"activation shards": "activations/**/*.npy", "SAE weights": "checkpoints/**/sae_weights.safetensors",
             "sae-lens configs": "checkpoints/**/cfg.json"}
TABLES = ("metrics.csv", "headline.csv", "comparisons.csv", "pareto.csv",  # the validation split (or all held-out)
          "test/metrics.csv", "test/headline.csv", "test/comparisons.csv")  # the test split, where split
ROW_KEY = ["model", "site", "layer", "split", "arch", "variant", "sae"]  # the sae name includes its seed
NOT_RESULTS = {"checkpoint"}  # where a run happened to live


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare_artifacts(a: Path, b: Path) -> dict:
    report = {}
    for kind, pattern in ARTIFACTS.items():
        left = {str(p.relative_to(a)): _sha256(p) for p in sorted(a.glob(pattern))}
        right = {str(p.relative_to(b)): _sha256(p) for p in sorted(b.glob(pattern))}
        report[kind] = {"a": len(left), "b": len(right), "identical": sum(left[k] == right.get(k) for k in left),
                        "differ_or_missing": sorted(k for k in left if left[k] != right.get(k))}
    return report


def compare_table(a: Path, b: Path) -> dict:
    left, right = pd.read_csv(a), pd.read_csv(b)
    shared = [c for c in left.columns if c in right.columns and c not in NOT_RESULTS]
    result = {"rows": [len(left), len(right)], "only_a": sorted(set(left.columns) - set(right.columns)),
              "only_b": sorted(set(right.columns) - set(left.columns))}
    key = [c for c in ROW_KEY if c in shared]
    if key:
        left, right = left.sort_values(key).reset_index(drop=True), right.sort_values(key).reset_index(drop=True)
    same = len(left) == len(right) and left[shared].equals(right[shared])
    result["shared_columns_identical"] = bool(same)
    if not same and len(left) == len(right):
        result["differing_columns"] = [c for c in shared if not left[c].equals(right[c])]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("data_a", "results_a", "data_b", "results_b"):
        parser.add_argument(name, type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    report = {"note": args.note, "command": " ".join(sys.argv), "machine": platform.platform(),
              "artifacts": compare_artifacts(args.data_a, args.data_b),
              "tables": {name: compare_table(args.results_a / name, args.results_b / name)
                         for name in TABLES if (args.results_a / name).exists() and (args.results_b / name).exists()}}
    same = (all(not r["differ_or_missing"] and r["a"] == r["b"] for r in report["artifacts"].values())
            and all(t["shared_columns_identical"] for t in report["tables"].values()))
    report["identical"] = same
    text = json.dumps(report, indent=2) + "\n"
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    print(text, end="")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
