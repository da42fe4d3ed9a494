"""What would decide each INCONCLUSIVE claim of a published verdict: the training seeds (held-out windows
held) or the held-out windows (seeds held) at which its interval, projected with its estimate fixed,
clears the claim's threshold (gatedsae.reporting.decidability says how, and what it assumes).

    python scripts/to_decide.py --verdict reference/default/verdict.json --out results/calibration/to_decide.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.codehash import code_version
from gatedsae.reporting.decidability import DATA_FACTORS, MAX_SEEDS, WINDOW_FACTORS, plan_verdict


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verdict", type=Path, required=True, help="a published run's verdict.json")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    verdict = json.loads(args.verdict.read_text())
    plans = plan_verdict(verdict)
    seeds = sorted({plan["seeds"] for plan in plans})
    write_json_atomic(args.out, {
        "what": "the seeds or held-out windows at which each INCONCLUSIVE claim's interval, projected with its "
                "estimate and spreads fixed, would clear its threshold: an extrapolation, not a forecast",
        "command": f"python scripts/to_decide.py --verdict {args.verdict} --out {args.out}",
        "written_at_commit": code_version(), "verdict": str(args.verdict), "split": verdict.get("split"),
        "seeds": ", ".join(map(str, seeds)), "max_seeds": MAX_SEEDS, "window_factors": list(WINDOW_FACTORS),
        "data_factors": list(DATA_FACTORS),
        "plans": plans})
    for plan in plans:
        print(f"{plan['id']}: {plan['measured']} vs {plan['threshold']}: seeds {plan['seeds_needed']} "
              f"({plan['decided_by_seeds']}), windows ×{plan['window_factor_needed']} ({plan['decided_by_windows']}), both ×{plan['data_factor_needed']} ({plan['decided_by_data']})"
              + (f" [{plan['why_not']}]" if plan["why_not"] else ""))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
