"""Where each λ of a grid lands on the validation split: the evidence a grid of conf/sweep is chosen from.

Reads metrics rows (a run's metrics.csv, and/or `python -m gatedsae evaluate-checkpoint` JSON rows),
keeps the validation split only (the verdict's test split is never read here), and writes per
(site, layer, variant, arch, width, λ) the mean L0, loss recovered, FVU and γ over the seeds found:

    python scripts/grid_readings.py --metrics RUN/results/default/metrics.csv \
        --rows pilot/*.json --note "what the rows are" --out results/calibration/grid_validation.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
from collections import defaultdict
from pathlib import Path

from gatedsae.core.atomic import write_json_atomic
from gatedsae.plan.architectures import KNOBS, knob_of, knob_value

KEY = ("site", "layer", "variant", "arch", "width")  # and the architecture's own sparsity knob (λ, λ_L0, k)
READINGS = ("l0", "loss_recovered", "fvu", "gamma")


def _rows(metrics: list[Path], rows: list[Path], skip_variants: list[str]) -> list[dict]:
    found = [row for path in metrics for row in csv.DictReader(path.open()) if row["variant"] not in skip_variants]
    for path in rows:
        loaded = json.loads(path.read_text())
        found += [_placed(row) for row in (loaded if isinstance(loaded, list) else [loaded])]
    return [row for row in found if row.get("split") == "validation"]


def _placed(row: dict) -> dict:
    """An evaluate-checkpoint row with the site, layer and variant its checkpoint's folder names
    (<site>/layer<L>/<sweep>[/<variant>]/<sae>)."""
    parts = Path(row["checkpoint"]).parts
    at = next(i for i, part in enumerate(parts) if part.startswith("layer") and part[5:].isdigit())
    variant = parts[at + 2] if len(parts) > at + 3 else "sweep"
    return {"site": parts[at - 1], "layer": int(parts[at][5:]), "variant": variant, **row}


def _setting(row: dict) -> tuple[str, str]:
    """The row's sparsity setting: its architecture's knob (λ, λ_L0 or k) and its value (an empty CSV cell
    counts as missing, so a row written before the knob had its own column still reads)."""
    return knob_of(row["arch"]), str(knob_value(row["arch"], {k: v for k, v in row.items() if v != ""}))


def readings(rows: list[dict]) -> list[dict]:
    """Mean readings per grid point, sorted by site, variant, architecture, width and sparsity setting."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[(*(str(row[k]) for k in KEY), *_setting(row))].append(row)
    out = []
    for (*key, knob, value), members in groups.items():
        entry = dict(zip(KEY, key))
        entry.update(layer=int(entry["layer"]), width=int(entry["width"]), seeds=len(members))
        entry[knob] = float(value) if KNOBS[knob].penalty else int(float(value))  # k counts features
        entry.update({name: round(statistics.fmean(float(m[name]) for m in members), 4) for name in READINGS})
        out.append(entry)
    return sorted(out, key=lambda e: (e["site"], e["variant"], e["arch"], e["width"], e[knob_of(e["arch"])]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, nargs="*", default=[], help="metrics.csv files of runs")
    parser.add_argument("--rows", type=Path, nargs="*", default=[], help="evaluate-checkpoint JSON rows")
    parser.add_argument("--skip-variant", nargs="*", default=[], help="variants of the metrics files left out")
    parser.add_argument("--note", required=True, help="where the rows come from (commit, budget, seeds)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    write_json_atomic(args.out, {
        "what": "mean held-out readings per grid point on the validation split (the test split is not read)",
        "note": args.note, "written_at_commit": commit,
        "command": " ".join(["python scripts/grid_readings.py"] + [
            f"--{flag} " + " ".join(map(str, values)) for flag, values in
            (("metrics", args.metrics), ("rows", args.rows), ("skip-variant", args.skip_variant)) if values]),
        "points": readings(_rows(args.metrics, args.rows, args.skip_variant))})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
