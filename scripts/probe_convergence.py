"""Measure the training budget at which the SAEs that carry the verdict meet conf/verdict's convergence
rule (`verdict.convergence`), on the real model: train a few SAEs of the default grid (one λ per group,
or a whole site's grid) at each budget, one seed, and read each SAE's training curve with the rule the
verdict applies (gatedsae.reporting.convergence.assess). Optionally evaluates them on the VALIDATION
split (held-out L0, FVU, loss recovered; the test split is never read here).

What the rule measures: each watched curve (L0, reconstruction loss) changes by less than
`max_relative_change` between the start and the end of the last `last_fraction` of training. The
default's learning rate is constant after its warm-up (conf/train: no decay; only short dips after the
dead-feature resamples at 25% and 50% of training, over by the last quarter), so a curve that is flat
there is flat because the SAE stopped improving at that lr, not because the lr went to zero. The file
records each budget's lr over the last quarter to show it.

    python scripts/probe_convergence.py --site resid_post --layer 15 --budgets 400,800,1600 \\
        --saes gated:4:0.03,baseline:6:0.008,baseline:4:0.008 experiment=default
    python scripts/probe_convergence.py --site attn_z --layer 3 --budgets 400 --ce-windows 64 \\
        --out results/calibration/attn_z_layer3_grid.json experiment=default   # the sweep's grid there
    python scripts/probe_convergence.py --site resid_post --layer 15 --budgets 400 --lr 0.002 \\
        --saes gated:4:0.05 --ce-windows 64 experiment=default   # another learning rate, in its own folders

    python scripts/probe_convergence.py --site resid_post --layer 15 --budgets 400 --seeds 2 --lr 0.001 \\
        --saes gated:4:0.03,gated:4:0.09 --ce-windows 64 --label "seeds 2, no gradient clip" \\
        train.max_grad_norm=null experiment=default   # a setting against the seeds' spread

Each budget trains into its own sweep folder under the data root (probe_<site>_l<layer>_<steps>, then
`_lr<value>` under --lr, `_seeds<n>` under --seeds n > 1, `_clip<value>` under train.max_grad_norm), so a
killed run resumes; the JSON is rewritten after every budget. SAEs of one architecture and width in
--saes train as one group.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from gatedsae.core.atomic import write_json_atomic
from gatedsae.plan.architectures import knob_of, knob_value
from gatedsae.plan.config import SAEGroupConfig, load_config
from gatedsae.plan.layout import VALIDATION
from gatedsae.reporting.convergence import assess
from gatedsae.training.curve_log import CURVES_FILE, read_rows

VALIDATION_READINGS = ("l0", "fvu", "loss_recovered", "gamma", "ce_clean", "ce_zero", "ce_sae")
CURVE_POINTS = 17  # the curve kept in the JSON per SAE: L0 and reconstruction at this many logged steps


def _portable(argument: str) -> str:
    """An argument as recorded: where this machine keeps its data is no setting of the probe."""
    return "paths.data=<data folder>" if argument.startswith("paths.data=") else argument


def chosen_groups(config, site: str, spec: str | None, lr: float | None = None) -> list[SAEGroupConfig]:
    """`arch:width_ratio:value,...` as one group per SAE (value: the architecture's sparsity knob, λ for the
    L1 architectures), or the sweep's own groups at `site` (its grid); each at learning rate `lr` if given,
    else its group's in the sweep."""
    if not spec:
        return [replace(g, sites=[site], lr=lr or g.lr) for g in config.sweep.groups_at(site)]
    rates = {g.arch: g.lr for g in config.sweep.groups}
    values: dict[tuple[str, float], list] = {}  # SAEs of one architecture and width train as one group
    for item in spec.split(","):
        arch, ratio, value = item.split(":")
        values.setdefault((arch, float(ratio)), []).append(int(value) if knob_of(arch) == "k" else float(value))
    return [SAEGroupConfig(arch, ratio, lr or rates.get(arch, 1e-3), sites=[site], **{knob_of(arch): knobs})
            for (arch, ratio), knobs in values.items()]


def curve_summary(curve: pd.DataFrame, last_fraction: float) -> dict:
    """The logged curve, thinned, and the lr over the rule's last part of training."""
    curve = curve.sort_values("step")
    pick = curve.iloc[[round(i * (len(curve) - 1) / (CURVE_POINTS - 1)) for i in range(CURVE_POINTS)]]
    last = curve[curve["step"] >= (1 - last_fraction) * curve["step"].max()]
    lr = pd.to_numeric(last["lr"])
    return {"steps": pick["step"].astype(int).tolist(),
            "l0": [round(float(v), 3) for v in pd.to_numeric(pick["l0"])],
            "reconstruction": [round(float(v), 5) for v in pd.to_numeric(pick["reconstruction"])],
            "lr_last_part": [float(lr.min()), float(lr.max())]}


def training_rows_reading(config, site: str, layer: int, saes, rows: int) -> list[dict]:
    """L0 and FVU of `saes` on the first `rows` rows of the training split (rows every budget trained on,
    longer budgets several times): beside the validation split's, the gap that repeated passes would open."""
    from gatedsae.activations.store import ActivationStore
    from gatedsae.evaluation.reconstruction import reconstruction_metrics

    store = ActivationStore(config.paths.activations_dir(config.model.name, config.corpus.name, site, layer), "train")
    found = reconstruction_metrics(saes, store, rows, config.evaluate.batch_rows, config.evaluate.device)
    return [{"l0": round(float(r.metrics["l0"]), 5), "fvu": round(float(r.metrics["fvu"]), 5)} for r in found]


def probe_budget(base, site: str, layer: int, groups, steps: int, ce_windows: int, training_rows: int = 0,
                 folder_tag: str = "", seeds: int = 1) -> dict:
    from gatedsae.evaluation.evaluate import CheckpointSAE, evaluate_saes
    from gatedsae.plan.grid import read_grid_index
    from gatedsae.saes.checkpoints import RECORD_FILE
    from gatedsae.training.stages import train_grid

    # `folder_tag` keeps probes that differ in a setting of their own (a learning rate, seeds) in their own folders
    sweep = replace(base.sweep, name=f"probe_{site}_l{layer}_{steps}{folder_tag}", groups=groups, rescale_shift=False,
                    all_tokens=False)
    config = replace(base, sweep=sweep, train=replace(base.train.every_site(steps * base.train.batch_size), seeds=seeds))
    started = time.time()
    index = train_grid(config, site, layer, progress=False)
    trained = time.time() - started
    entries = read_grid_index(index)
    # written by this run, else kept or adopted (a copy keeps its record's time)
    trained_now = sum((Path(e["path"]) / RECORD_FILE).stat().st_mtime >= started for e in entries)
    loaded = [CheckpointSAE.load(e["path"]) for e in entries] if ce_windows or training_rows else []
    curves = pd.DataFrame(read_rows(index.parent / CURVES_FILE)).assign(site=site, layer=layer, variant="main")
    saes = assessed(curves[curves["sae"].isin([e["sae"] for e in entries])], base.verdict.convergence)
    evaluated = None
    if ce_windows:
        started_eval = time.time()
        # the validation split's own window count (evaluate.validation_ce_windows) would otherwise win
        windows = replace(config.evaluate, ce_windows=ce_windows, validation_ce_windows=ce_windows)
        rows = evaluate_saes(replace(config, evaluate=windows), site, layer, loaded, split=VALIDATION)
        for row in rows:
            saes[row["sae"]]["validation"] = {**{k: round(float(row[k]), 5) for k in VALIDATION_READINGS},
                                              "ce_windows": int(row["ce_windows"])}  # as read
        evaluated = round(time.time() - started_eval, 1)
    if training_rows:
        for entry, reading in zip(entries, training_rows_reading(config, site, layer, loaded, training_rows)):
            saes[entry["sae"]]["training_rows"] = {**reading, "rows": training_rows}
    return {"steps": steps, "tokens": steps * base.train.batch_size,
            "train_seconds": round(trained, 1) if trained_now else None,
            "trained_now": trained_now,  # how many SAEs: `training_time` adds their time to the kept ones'
            "evaluate_seconds": evaluated, "all_converged": all(s["converged"] for s in saes.values()),
            "saes": saes}


def assessed(curves: pd.DataFrame, rule) -> dict:
    """Per SAE of `curves` (one site and layer): the rule's verdict, each metric's change, the curve."""
    curves = curves.copy()
    for column in ("l0", "reconstruction", "lr"):
        curves[column] = pd.to_numeric(curves[column])
    verdicts = assess(curves, rule).set_index("sae")
    saes = {}
    for name, curve in curves.groupby("sae", sort=True):
        row = verdicts.loc[name]
        arch = curve["arch"].iloc[0]
        saes[name] = {"arch": arch, knob_of(arch): float(knob_value(arch, curve.iloc[0])),
                      "converged": None if pd.isna(row["converged"]) else bool(row["converged"]),
                      **{f"{m}_change": round(float(row[f"{m}_change"]), 4) for m in rule.metrics},
                      **{f"{m}_noise": None if pd.isna(row[f"{m}_noise"]) else round(float(row[f"{m}_noise"]), 4)
                         for m in rule.metrics},
                      "note": row["note"], "curve": curve_summary(curve, rule.last_fraction)}
    return saes


def recorded_run(path: Path, site: str, layer: int, rule) -> dict:
    """An earlier run's curves (its curves.csv) at one site and layer, as one budget (its last step)."""
    curves = pd.read_csv(path)
    curves = curves[(curves["site"] == site) & (curves["layer"] == layer)
                    & curves["variant"].isin(["sweep", "main"])]  # the sweep's SAEs, not Fig. 9's variant
    if curves.empty:
        raise SystemExit(f"{path} holds no curve of the sweep at {site} layer {layer}")
    saes = assessed(curves.assign(variant="main"), rule)
    steps = int(curves["step"].max())
    return {"steps": steps, "tokens": int(curves["tokens"].max()), "train_seconds": None, "evaluate_seconds": None,
            "all_converged": all(s["converged"] for s in saes.values()), "saes": saes}


def training_time(earlier: dict, measured: dict) -> float | None:
    """A budget's training time when a rerun kept some of its checkpoints: the earlier runs' time, plus this
    run's when it trained the SAEs the grid lacked (`train_runs` lists each run's SAEs and seconds)."""
    runs = list(earlier.get("train_runs") or ([{"saes": len(earlier["saes"]), "seconds": earlier["train_seconds"]}]
                                              if earlier.get("train_seconds") is not None else []))
    trained_now = measured.pop("trained_now", 0)
    if measured["train_seconds"] is not None:
        kept = len(measured["saes"]) - trained_now
        runs = (runs if kept else []) + [{"saes": trained_now, "seconds": measured["train_seconds"]}]
    if not runs:
        return None
    if len(runs) > 1:
        measured["train_runs"] = runs
    return round(sum(run["seconds"] for run in runs), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--site", required=True)
    parser.add_argument("--layer", type=int, required=True)
    parser.add_argument("--budgets", required=True, help="comma-separated training steps, e.g. 400,800,1600")
    parser.add_argument("--saes", default=None, help="arch:width_ratio:value,... (value: the architecture's sparsity knob; "
                        "default: the sweep's grid at --site)")
    parser.add_argument("--ce-windows", type=int, default=0, help="validation windows for loss recovered (0: none)")
    parser.add_argument("--training-rows", type=int, default=0, help="also read L0 and FVU on this many rows of the "
                        "training split, to compare with the validation split's (0: not read)")
    parser.add_argument("--from-curves", default=None, help="read an earlier run's curves.csv (e.g. "
                        "reference/default/curves.csv) instead of training; --budgets is ignored")
    parser.add_argument("--lr", type=float, default=None, help="train every probed SAE at this learning rate "
                        "(default: its group's in the sweep); the probe gets its own folders and, without --label, "
                        "the label 'lr <value>'")
    parser.add_argument("--seeds", type=int, default=1, help="train every probed SAE with this many seeds (as the "
                        "sweep's train.seeds), to tell a setting's effect from the seeds' spread; more than one gets "
                        "folders of its own")
    parser.add_argument("--label", default=None, help="tells this probe apart from earlier ones of the same site and "
                        "layer under other settings (e.g. another store): its key becomes '<site>/layer<L> (<label>)'")
    parser.add_argument("--out", default="results/calibration/convergence.json")
    args, overrides = parser.parse_known_args()

    base = load_config(overrides)
    if args.lr is not None and not args.lr > 0:
        raise SystemExit(f"--lr must be a positive learning rate, not {args.lr}")
    if args.seeds < 1:
        raise SystemExit(f"--seeds must be at least 1, not {args.seeds}")
    groups = chosen_groups(base, args.site, args.saes, args.lr)
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.exists() else {}
    label = args.from_curves or args.label or (f"lr {args.lr:g}" if args.lr else None)
    clip = base.train.max_grad_norm  # clipped and unclipped probes keep checkpoints of their own
    folder_tag = ((f"_lr{args.lr:g}" if args.lr else "") + (f"_seeds{args.seeds}" if args.seeds > 1 else "")
                  + (f"_clip{clip:g}" if clip else ""))
    key = f"{args.site}/layer{args.layer}" + (f" ({label})" if label else "")
    result.update({
        "what": "training budget against conf/verdict's convergence rule (scripts/probe_convergence.py)",
        "model": base.model.name, "corpus": base.corpus.name,
        "rule": base.verdict.convergence.__dict__,
        "train": {"batch_size": base.train.batch_size, "lr_warmup_steps": base.train.lr_warmup_steps,
                  "lr_schedule": "constant after warm-up; dips after the resamples",
                  "resample_at": base.train.resample_at, "resample_recovery_steps": base.train.resample_recovery_steps,
                  "cache_train_tokens": base.cache.train_tokens, "seed": base.train.seed},
        "machine": {"platform": platform.platform(), "threads": torch.get_num_threads()},
    })
    sites = result.setdefault("sites", {})
    previous = sites.get(key, {}).get("budgets", [])  # budgets measured before, kept unless measured again
    entry = sites[key] = {"command": " ".join(["python", *map(_portable, sys.argv)]),
                          "overrides": [_portable(o) for o in overrides],
                          "groups": None if args.from_curves else
                          [{"arch": g.arch, "width_ratio": g.width_ratio, "lr": g.lr, g.knob: getattr(g, g.knob)} for g in groups],
                          "validation_ce_windows": args.ce_windows, "max_grad_norm": clip, "budgets": previous,
                          **({"lr": args.lr} if args.lr else {}),  # docs/verdict.md gives these a table of their own
                          **({"seeds": args.seeds} if args.seeds > 1 else {})}  # ... and these another
    budgets = [None] if args.from_curves else [int(s) for s in args.budgets.split(",")]
    for steps in budgets:
        measured = (recorded_run(Path(args.from_curves), args.site, args.layer, base.verdict.convergence)
                    if args.from_curves else probe_budget(base, args.site, args.layer, groups, steps, args.ce_windows,
                                                        args.training_rows, folder_tag, args.seeds))
        steps = measured["steps"]
        earlier = next((b for b in entry["budgets"] if b["steps"] == steps), {})
        measured["train_seconds"] = training_time(earlier, measured)
        entry["budgets"] = sorted([b for b in entry["budgets"] if b["steps"] != steps] + [measured],
                                  key=lambda b: b["steps"])
        met = [b["steps"] for b in entry["budgets"] if b["all_converged"]]
        entry["smallest_budget_meeting_rule"] = min(met) if met else None
        write_json_atomic(out, result)
        for name, sae in measured["saes"].items():
            extra = sae.get("validation", {})
            print(f"{steps:5d} steps {name:40s} converged={sae['converged']!s:5s} "
                  + " ".join(f"{m} {100 * sae[f'{m}_change']:.1f}%" for m in base.verdict.convergence.metrics)
                  + (f"  val L0 {extra['l0']:.1f} LR {extra['loss_recovered']:.4f} FVU {extra['fvu']:.4f}" if extra else "")
                  + (f"  training rows FVU {sae['training_rows']['fvu']:.4f}" if "training_rows" in sae else ""), flush=True)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
