"""How far SAEs trained again move from a published run's: each SAE of one or more probes
(`scripts/probe_convergence.py`, read on the validation split) against the published run's seed-0 row of the
same SAE read on the same validation windows, beside the spread of the published run's training seeds.

A retrained SAE can differ from the published one with the same settings, seed and batches when the
float arithmetic differs: another machine's kernels, or a code change that sums in another order. This
measures how much, in units of what the verdict's intervals already include (the seeds' spread):

    python scripts/retrain_drift.py --metrics reference/default/metrics.csv \\
        --probe "the published runs' code=/tmp/old/drift.json" --probe "the current code=/tmp/new/drift.json" \\
        --note "how the probes ran" --out results/calibration/retrain_drift.json
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.codehash import code_version
from gatedsae.reporting.probe_tables import SEED_SUFFIX

READINGS = ("l0", "loss_recovered", "fvu")


def published_rows(metrics: Path) -> dict[str, dict]:
    """The published run's validation rows of its main sweep, by SAE name (seeds carry `_seed<k>`)."""
    rows = csv.DictReader(metrics.open())
    return {row["sae"]: row for row in rows if row["split"] == "validation" and row["variant"] == "sweep"}


def probe_readings(probe: dict) -> dict[str, dict]:
    """{SAE name: its validation readings} at the probe's last budget, every site it probed."""
    found = {}
    for site in probe["sites"].values():
        for name, sae in site["budgets"][-1]["saes"].items():
            found[name] = sae["validation"]
    return found


def _check_same_windows(name: str, published: dict, retrained: dict) -> None:
    same = (int(published["ce_windows"]) == int(retrained["ce_windows"])
            and abs(float(published["ce_clean"]) - float(retrained["ce_clean"])) < 1e-4)
    if not same:
        raise SystemExit(f"{name}: the probe read other validation windows than the published run "
                         f"({retrained['ce_windows']} windows, clean CE {retrained['ce_clean']} against "
                         f"{published['ce_windows']}, {published['ce_clean']}): rerun the probe with "
                         f"--ce-windows {published['ce_windows']}")


def _code_version(row: dict) -> str | None:
    """The code version that trained the published SAE, from its checkpoint's training record where the
    checkpoint is at hand (each SAE records its own: a run resumed or extended over commits mixes them)."""
    if not row.get("checkpoint"):
        return None
    record = Path(row["checkpoint"]) / "training.json"
    return json.loads(record.read_text()).get("code_version") if record.is_file() else None


def drift(published: dict[str, dict], probes: dict[str, dict[str, dict]]) -> list[dict]:
    """Per SAE: the published seed-0 readings, the spread over its published seeds, and each probe's
    readings with their difference from the published ones (also in seed SDs)."""
    names = sorted(set().union(*(set(readings) for readings in probes.values())))
    out = []
    for name in names:
        if name not in published:
            raise SystemExit(f"{name}: no validation row of that SAE in the published metrics")
        seeds = [row for sae, row in published.items() if SEED_SUFFIX.sub("", sae) == name]
        entry = {"sae": name, "arch": published[name]["arch"], "seeds": len(seeds),
                 "published_code_version": _code_version(published[name]),
                 "published": {k: float(published[name][k]) for k in READINGS},
                 "seed_sd": {k: statistics.stdev(float(r[k]) for r in seeds) if len(seeds) > 1 else None
                             for k in READINGS},
                 "retrained": {}}
        for label, readings in probes.items():
            if name not in readings:
                continue
            _check_same_windows(name, published[name], readings[name])
            mine = {k: float(readings[name][k]) for k in READINGS}
            difference = {k: mine[k] - entry["published"][k] for k in READINGS}
            entry["retrained"][label] = {
                **mine, "difference": difference,
                # the same to the digits both files keep (the probe rounds to 5 decimals, metrics.csv to 6 figures)
                "identical": all(abs(difference[k]) <= 1e-5 * max(1.0, abs(entry["published"][k])) for k in READINGS),
                "in_seed_sds": {k: (abs(difference[k]) / entry["seed_sd"][k] if entry["seed_sd"][k] else None)
                                for k in READINGS}}
        out.append(entry)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", type=Path, required=True, help="the published run's metrics.csv")
    parser.add_argument("--probe", action="append", required=True, metavar="LABEL=PATH",
                        help="a probe_convergence.py JSON of the same SAEs, and what trained it")
    parser.add_argument("--note", default="", help="how the probes were run (which checkout, which data folder)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    probes, commands = {}, {}
    for item in args.probe:
        label, _, path = item.partition("=")
        if not path:
            raise SystemExit(f"--probe takes LABEL=PATH, not {item!r}")
        loaded = json.loads(Path(path).read_text())
        probes[label] = probe_readings(loaded)
        commands[label] = [site["command"] for site in loaded["sites"].values()]
    write_json_atomic(args.out, {
        "what": "SAEs trained again against the published run's, on the same validation windows, beside the "
                "spread of its training seeds",
        "published": str(args.metrics), "written_at_commit": code_version(), "note": args.note,
        "command": "python scripts/retrain_drift.py " + " ".join(
            [f"--metrics {args.metrics}"] + [f"--probe '{label}=<probe JSON>'" for label in probes]
            + [f"--out {args.out}"]),
        "probes": commands, "saes": drift(published_rows(args.metrics), probes)})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
