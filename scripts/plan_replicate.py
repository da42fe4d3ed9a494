"""Size the default experiment against the replication's time budget: predict the wall time of a cold
`make replicate` for candidate configurations from the project's estimates (gatedsae.plan.estimates),
calibrated on the measured cold run (results/benchmarks/replicate.json) of the configuration it measured
(conf/ at the commit that run used). Writes results/benchmarks/replicate_plan.json: the calibration, and
per candidate its predicted time by part and whether it fits the budget.

    python scripts/plan_replicate.py            # the candidates below
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

import yaml

from gatedsae.core.atomic import write_json_atomic
from gatedsae.plan.architectures import PROPOSED
from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.forecast import calibrate, replicate_seconds, with_speedups

# conf/ as the measured run used it, for a record that does not name its commit (the first one)
FIRST_MEASURED_COMMIT = "7ff5b3f0c593f4db1b6032973183bfd9525652bc"
# settings removed from conf/ since that commit, per config group (file conf/<group>/default.yaml)
REMOVED_SINCE = {"precision": ["gate.encoder_rel_error"]}
SPEEDUP_SOURCES = ("results/benchmarks/eval.json", "results/benchmarks/train.json")
# The change each benchmarked speed-up measures, by the commit that brought it: the per-SAE path in
# evaluation/lean_blocks.py against the one before it, and the encoder's product in bf16 against float32.
# A calibrating run whose code already holds a change ran at its speed: a benchmark measured again (on
# another machine, say) is no speed-up since that run.
SPEEDUP_CHANGES = {"evaluate": "6aad78d", "train": "f33e2c0"}
BUDGET_SECONDS = 7200  # `make replicate` cold on 2 CPU cores, install included
# (name, overrides on experiment=default, training seeds): what the default could be
LONGER = ["train.tokens=1638400", "cache.train_tokens=1700000"]  # 1,600 steps of 1,024, under one pass
RESID_ONLY = ["experiment.sites=[resid_post]", "sweep.all_tokens=false"]
# At 400 steps no residual-stream SAE of the reference run meets verdict.convergence
# (results/calibration/convergence.json): longer training, with or without a larger cache (one pass, or
# repeated passes over the default's 420k tokens)
CANDIDATES = [
    ("the default as configured, 1 seed", [], 1),
    ("the default as configured, 3 seeds", [], 3),
    ("3 seeds, the attention output at 400 steps like the other sites", ["~train.site_tokens"], 3),
    ("3 seeds, the MLP output at 3,200 steps too", ["train.site_tokens={attn_z:3276800,mlp_out:3276800}"], 3),
    ("3 seeds, every site at 3,200 steps", ["train.tokens=3276800", "~train.site_tokens"], 3),
    ("3 seeds, 1,600 steps where not 3,200, one pass over a larger cache", LONGER, 3),
    ("3 seeds, 800 steps where not 3,200 (2 passes over the cache)", ["train.tokens=819200"], 3),
    ("3 seeds, 1,600 steps where not 3,200 (4 passes over the cache)", ["train.tokens=1638400"], 3),
    ("3 seeds, 32 held-out windows", ["evaluate.ce_windows=32"], 3),
    ("3 seeds, without the attention output", ["experiment.sites=[resid_post,mlp_out]"], 3),
    ("3 seeds, the residual stream only", ["experiment.sites=[resid_post]"], 3),
    ("3 seeds, the residual stream only, no every-token run", RESID_ONLY, 3),
    ("3 seeds, the residual stream only, no every-token run, 800 steps", [*RESID_ONLY, "train.tokens=819200"], 3),
]


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True)


def measured_commit(measured: dict) -> str:
    return measured.get("code_commit", FIRST_MEASURED_COMMIT)


def unchanged_since(commit: str, *paths: str) -> bool:
    """Whether `paths` are at `commit` as they are now (committed), lines that are only a comment or
    blank aside: a reworded comment in conf/ changes nothing a run computes."""
    return git("diff", "--quiet", "-G", r"^[[:space:]]*[^#[:space:]]", commit, "HEAD", "--", *paths).returncode == 0


def in_history(change: str, commit: str) -> bool:
    """Whether `change` is `commit` or one of its ancestors."""
    return git("merge-base", "--is-ancestor", change, commit).returncode == 0


def speedups_since(commit: str) -> dict | None:
    """The measured speed-ups of the changes the run at `commit` did not have yet; None when there are none
    (each kind missing from the result counts as 1×)."""
    if unchanged_since(commit, *SPEEDUP_SOURCES):
        return None
    new = [kind for kind, change in SPEEDUP_CHANGES.items() if not in_history(change, commit)]
    if not new:
        return None
    measured = measured_speedups()
    return {kind: measured[kind] if kind in new else 1.0 for kind in SPEEDUP_CHANGES} | {"sources": measured["sources"]}


def measured_speedups() -> dict:
    """What the component benchmarks measure each change in SPEEDUP_CHANGES to save (each a ratio within
    one run): evaluation per SAE per window, each path in the precision its gate picks, at the slowest
    site (results/benchmarks/eval.json); a Gated step on the support at the default's width, bf16 encoder
    product against float32 (train.json). `speedups_since` applies them to a run without the change."""
    bench = REPO_ROOT / "results" / "benchmarks"
    evaluation = json.loads((bench / "eval.json").read_text())
    training = json.loads((bench / "train.json").read_text())["results"]["paper_regime"][PROPOSED]["ratio_vs_sae_lens"]
    return {"evaluate": min(site["speedup_vs_previous"]["median"] for site in evaluation["sites"]),
            "train": training["sparse_bfloat16"]["median"] / training["sparse_float32"]["median"],
            "sources": list(SPEEDUP_SOURCES)}


def candidate(name: str, overrides: list[str], seeds: int, parts: dict, speedups: dict | None = None) -> dict:
    if speedups:
        parts = with_speedups(parts, speedups)
    print(f"{parts['total'] / 60:6.1f} min  {'fits' if parts['total'] <= BUDGET_SECONDS else 'over'}  {name}")
    return {"name": name, "overrides": overrides, "seeds": seeds, "seconds": {k: round(v, 1) for k, v in parts.items()},
            "fits": parts["total"] <= BUDGET_SECONDS} | ({"speedups_applied": speedups} if speedups else {})


def measured_config(commit: str, chapters: list[str]):
    """The configuration the benchmark measured: experiment=default composed from conf/ at `commit`."""
    archive = subprocess.run(["git", "archive", commit, "conf"], cwd=REPO_ROOT, check=True, capture_output=True).stdout
    scratch = Path(tempfile.mkdtemp())
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(scratch)
    for group, keys in REMOVED_SINCE.items():  # settings the schema no longer has (and would refuse)
        path = scratch / "conf" / group / "default.yaml"
        data = yaml.safe_load(path.read_text())
        for key in keys:
            *parents, leaf = key.split(".")
            node = data
            for parent in parents:
                node = node.get(parent, {})
            node.pop(leaf, None)
        path.write_text(yaml.safe_dump(data))
    # sections added since that commit are at their defaults, switched off where they add work the run did not do
    extra = [] if "groundtruth" in chapters else ["++groundtruth.enabled=false"]
    return load_config(["experiment=default", *extra], conf_dir=scratch / "conf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="results/benchmarks/replicate_plan.json")
    args = parser.parse_args()
    measured = json.loads((REPO_ROOT / "results" / "benchmarks" / "replicate.json").read_text())
    commit = measured_commit(measured)
    old = measured_config(commit, [chapter["name"] for chapter in measured["chapters"]])
    calibration = calibrate(measured, old)
    check = replicate_seconds(old, calibration)
    # the component benchmarks' speed-ups only where the measured run predates the changes they measure
    speedups = speedups_since(commit)
    candidates = []
    for name, overrides, seeds in CANDIDATES:
        parts = replicate_seconds(load_config(["experiment=default", *overrides]), calibration, seeds=seeds)
        candidates.append(candidate(name, overrides, seeds, parts))
        if speedups and not overrides and seeds > 1:  # the default as configured, at the speed measured since
            candidates.append(candidate(f"{name}, at the evaluation ({speedups['evaluate']:.2f}x) and training "
                                        f"({speedups['train']:.2f}x) speed-ups benchmarked since", overrides, seeds,
                                        parts, speedups))
    write_json_atomic(args.out, {
        "what": "predicted wall time of a cold `make replicate` (install included) on the benchmark's machine",
        "command": "python scripts/plan_replicate.py",
        "calibrated_on": {"benchmark": "results/benchmarks/replicate.json", "conf_commit": commit,
                          "measured_seconds": measured["wall_seconds"],
                          "predicted_seconds_of_the_measured_configuration": round(check["total"], 1),
                          # the default as configured now is the very configuration that was timed
                          "conf_unchanged_since": unchanged_since(commit, "conf")},
        "calibration": calibration.to_dict(), "budget_seconds": BUDGET_SECONDS, "candidates": candidates,
        "assumptions": "stage time proportional to its estimated FLOPs, at the ratio the calibrating cold run measured "
                       "for each stage kind, and for each site where it timed the sites apart (in the precision that "
                       "run chose on its machine); each chapter adds that "
                       "run's mean overhead (jobs without a timed stage: reporting, the feature browser); the stages "
                       "the estimates do not size (ground truth, interpretability measures) count as that run measured "
                       "them, whatever the candidate; seeds multiply training and the per-SAE part of evaluation. "
                       "A candidate with speedups_applied divides its evaluation and training by the component "
                       "benchmarks' ratios measured since the calibrating run (measured_speedups). Every candidate "
                       "but the timed configuration is a prediction, not a timed run",
    })
    print(f"wrote {args.out} (the measured configuration: {check['total'] / 60:.1f} min predicted, "
          f"{measured['wall_seconds'] / 60:.1f} min measured)")


if __name__ == "__main__":
    main()
