"""How often the verdict's 95% intervals cover the truth, measured on simulated runs whose seed and window
variation is known (the generator of tests/test_intervals.py), against two simpler intervals:

- two-level (the verdict's): window resamples + se_seed · t_{S−1} (evaluation/intervals.py);
- naive two-level percentile: each resample draws seeds, then windows; the percentile interval of those;
- Welch–Satterthwaite: θ ± t_ν · √(V_windows + V_seeds), ν from the two variances.

    python scripts/interval_coverage.py [--runs 1000] [--out results/benchmarks/interval_coverage.json]

docs/verdict.md quotes the JSON through a generated block (python -m gatedsae render-docs).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
import time
from pathlib import Path

import numpy as np
from scipy import stats

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from test_intervals import KEY, loss_recovered_of, simulated_frame  # noqa: E402

from gatedsae.core.atomic import write_json_atomic  # noqa: E402
from gatedsae.core.precision import machine  # noqa: E402
from gatedsae.evaluation.intervals import Bootstrap  # noqa: E402
from gatedsae.plan.config import IntervalsConfig  # noqa: E402

SCENARIOS = {  # name: (seeds, windows, seed sd, shared seed sd, window sd, noise sd, configurations)
    "seeds dominate": (3, 32, 0.010, 0.0, 0.004, 0.002, 1),
    "windows dominate": (3, 32, 0.0005, 0.0, 0.02, 0.002, 1),
    "both": (3, 32, 0.004, 0.0, 0.02, 0.002, 1),
    "both, 5 seeds": (5, 32, 0.004, 0.0, 0.02, 0.002, 1),
    "paired difference, shared seed effect": (3, 32, 0.002, 0.01, 0.005, 0.002, 2),
}
# Each simulated configuration's true loss recovered; the second is the paired comparison's other side.
# The names only label the simulated frame's `arch` column.
TRUTH = {"simulated": 0.9, "simulated_other": 0.895}
FIRST, SECOND = TRUTH
RESAMPLES = 400


def _difference(a, b):
    return {"loss_recovered": float(a.loss_recovered[0] - b.loss_recovered[0])}


def _alternatives(boot: Bootstrap, masks, compute, seeds: int, rng: np.random.Generator) -> dict[str, tuple]:
    """The naive two-level percentile interval and the Welch–Satterthwaite one, from the same bootstrap."""
    grid = boot.grids[KEY]
    design = grid.design
    selections = [np.unique(design.config[mask]) for mask in masks]

    def value(metrics):
        from gatedsae.evaluation.frontiers import Sweep

        return compute(*[Sweep(*(metrics[m][c] for m in ("l0", "loss_recovered", "gamma"))) for c in selections])[
            "loss_recovered"]

    def configured(weights, metrics):
        averaging = design.averaging(weights).T
        return {m: metrics[m] @ averaging for m in ("l0", "loss_recovered", "gamma")}

    draws = rng.multinomial(seeds, np.full(seeds, 1 / seeds), size=RESAMPLES)
    joint = [value(configured(w, {m: grid.windows[m][b] for m in grid.windows})) for b, w in enumerate(draws)]
    naive = (np.quantile(joint, 0.025), np.quantile(joint, 0.975))
    theta = value(configured(np.ones(seeds), grid.point))
    windows = [value(configured(np.ones(seeds), {m: grid.windows[m][b] for m in grid.windows})) for b in range(RESAMPLES)]
    per_seed = [value(configured(design.single(s), grid.point)) for s in range(seeds)]
    v_windows, v_seeds = np.var(windows, ddof=1), np.var(per_seed, ddof=1) / seeds
    df = (seeds - 1) * ((v_windows + v_seeds) / v_seeds) ** 2
    half = stats.t.ppf(0.975, df) * np.sqrt(v_windows + v_seeds)
    return {"naive two-level percentile": naive, "Welch–Satterthwaite": (theta - half, theta + half)}


def run(name: str, runs: int, rng: np.random.Generator) -> dict:
    seeds, windows, seed_sd, shared_sd, window_sd, noise_sd, configs = SCENARIOS[name]
    truth = {arch: TRUTH[arch] for arch in list(TRUTH)[:configs]}
    target = truth[FIRST] - truth.get(SECOND, 0.0) if configs == 2 else truth[FIRST]
    covered: dict[str, list[bool]] = {}
    widths: dict[str, list[float]] = {}
    for _ in range(runs):
        frame = simulated_frame(rng, truth, seeds, windows, seed_sd, shared_sd, window_sd, noise_sd)
        boot = Bootstrap(frame, IntervalsConfig(resamples=RESAMPLES, seed=int(rng.integers(1 << 30))))
        masks = [(frame["arch"] == arch).to_numpy() for arch in truth]
        compute = _difference if configs == 2 else loss_recovered_of(FIRST)
        found = boot.estimate(KEY, masks, compute)["loss_recovered"]
        intervals = {"two-level (the verdict's)": (found.ci_low, found.ci_high),
                     **_alternatives(boot, masks, compute, seeds, rng)}
        for method, (low, high) in intervals.items():
            covered.setdefault(method, []).append(bool(low <= target <= high))
            widths.setdefault(method, []).append(float(high - low))
    return {"seeds": seeds, "windows": windows, "seed_sd": seed_sd, "shared_seed_sd": shared_sd,
            "window_sd": window_sd, "noise_sd": noise_sd, "runs": runs,
            "coverage": {m: float(np.mean(c)) for m, c in covered.items()},
            "median_width": {m: float(np.median(w)) for m, w in widths.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "benchmarks" / "interval_coverage.json")
    args = parser.parse_args()
    rng = np.random.default_rng(2024)
    started = time.time()
    results = {}
    for name in SCENARIOS:
        results[name] = run(name, args.runs, rng)
        print(name, results[name]["coverage"], flush=True)
    write_json_atomic(args.out, {
        "what": "coverage of 95% intervals over simulated runs with known seed and window variation",
        "command": " ".join(["python", *sys.argv]), "resamples": RESAMPLES, "scenarios": results,
        "seconds": round(time.time() - started, 1), "machine": machine(),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
