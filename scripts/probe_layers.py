"""Apply conf/verdict's `layer_rule`: place each of its sites (e.g. the attention output) at the layer
where its zero-ablation costs enough for 95% intervals of loss recovered to decide at the planned number
of evaluation windows and, where the rule sets a reach_margin, where mean-ablation recovers clearly less
than the site's lowest level (the rule and its noise model: gatedsae/plan/site_layers.py). Run on the model
before any SAE is trained; the probe reads training-split windows only (never held-out text), so the
choice is fixed without looking at what the verdict is judged on. Writes its reading as JSON.

    python scripts/probe_layers.py experiment=default          # -> results/calibration/site_layers.json

Needs the experiment's model and token windows (`python -m gatedsae prepare-model ...` and `tokenize`).
Layers are measured in the rule's order (nearest the experiment's first layer first) and the probe stops
at the first that meets it; `--all` measures every layer for the record. `--sites` probes some of the
rule's sites again and keeps the others' readings (taken under the same rule).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from gatedsae.core.atomic import write_json_atomic
from gatedsae.data.corpus import load_windows
from gatedsae.data.models import load_model
from gatedsae.evaluation.spliced import next_token_losses, window_means
from gatedsae.plan.config import load_config
from gatedsae.plan.layout import TEST
from gatedsae.plan.site_layers import (LayerAblations, choose_layer, predicted_half_width, probe_order, reaches,
                                       windows_needed)
from gatedsae.plan.sites import hook_name


@torch.no_grad()
def clean_pass(model, windows: np.ndarray, batch: int) -> list[tuple[torch.Tensor, np.ndarray, dict]]:
    """Per batch of windows: the tokens, the clean per-window CE and the residual stream entering every
    block (so each layer then reruns only from its own block on)."""
    passes = []
    for start in range(0, len(windows), batch):
        tokens = torch.from_numpy(np.asarray(windows[start:start + batch], dtype=np.int64))
        stored = {}
        hooks = [(f"blocks.{layer}.hook_resid_pre", lambda act, hook: stored.__setitem__(hook.name, act))
                 for layer in range(model.cfg.n_layers)]
        clean = window_means(next_token_losses(model.run_with_hooks(tokens, fwd_hooks=hooks), tokens))
        passes.append((tokens, clean, stored))
    return passes


@torch.no_grad()
def site_mean(model, passes: list, site: str, layer: int) -> torch.Tensor:
    """The site's mean activation at `layer` over the probe windows, every position but BOS."""
    total, count = 0.0, 0

    def accumulate(activation, hook):
        nonlocal total, count
        rows = activation[:, 1:].reshape(-1, *activation.shape[2:])
        total, count = total + rows.double().sum(0), count + rows.shape[0]

    for _, _, stored in passes:
        model.run_with_hooks(stored[f"blocks.{layer}.hook_resid_pre"], start_at_layer=layer, stop_at_layer=layer + 1,
                             fwd_hooks=[(hook_name(site, layer), accumulate)])
    return (total / count).float()


@torch.no_grad()
def ablation_cost(model, passes: list, site: str, layer: int, replacement: torch.Tensor | float = 0.0) -> np.ndarray:
    """Per window: CE with `site` of `layer` replaced by `replacement` (zero, or the site's mean) at every
    position but BOS, minus clean CE."""

    def ablate(activation, hook):
        activation = activation.clone()
        activation[:, 1:] = replacement  # BOS keeps its clean activation, as in evaluation
        return activation

    costs = []
    for tokens, clean, stored in passes:
        logits = model.run_with_hooks(stored[f"blocks.{layer}.hook_resid_pre"], start_at_layer=layer,
                                      fwd_hooks=[(hook_name(site, layer), ablate)])
        costs.append(window_means(next_token_losses(logits, tokens)) - clean)
    return np.concatenate(costs)


def measure_layer(model, passes: list, site: str, layer: int, with_mean: bool) -> LayerAblations:
    """The zero-ablation's per-window costs at one layer and, `with_mean`, the mean-ablation's mean cost."""
    cost = ablation_cost(model, passes, site, layer)
    mean_cost = float(ablation_cost(model, passes, site, layer, site_mean(model, passes, site, layer)).mean()) \
        if with_mean else None
    return LayerAblations(layer, float(cost.mean()), float(cost.std(ddof=1)), len(cost), mean_cost)


def recorded_command(arguments: list[str]) -> str:
    """The command, less what only places files (`--out`, `paths.*`): the same reading wherever data lives."""
    kept, skip = [], False
    for argument in arguments:
        if skip:
            skip = False
        elif argument == "--out":
            skip = True
        elif not (argument.startswith("--out=") or argument.startswith("paths.")):
            kept.append(argument)
    return " ".join(["python", "scripts/probe_layers.py", *kept])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--all", action="store_true", help="measure every layer, not only up to the rule's choice")
    parser.add_argument("--sites", help="comma-separated: probe only these of the rule's sites and keep the "
                        "other sites' readings of --out (which must share the rule, model and probe windows)")
    parser.add_argument("--batch", type=int, default=8, help="windows per forward")
    parser.add_argument("--out", default="results/calibration/site_layers.json")
    args, overrides = parser.parse_known_args()
    config = load_config(overrides)
    rule = config.verdict.layer_rule
    if not rule.sites:
        sys.exit("verdict.layer_rule.sites is empty: no site to place")
    probed = args.sites.split(",") if args.sites else list(rule.sites)
    if not set(probed) <= set(rule.sites):
        sys.exit(f"--sites {args.sites}: the rule's sites are {rule.sites} (verdict.layer_rule.sites)")
    header = {
        "what": "conf/verdict layer_rule applied to the model (gatedsae/plan/site_layers.py)",
        "model": config.model.name, "corpus": config.corpus.name, "anchor_layer": config.experiment.layers[0],
        "probe_split": "train", "probe_windows": rule.probe_windows,
        "context_length": config.experiment.context_length, "confidence": config.intervals.level,
        "rule": {"sites": rule.sites, "max_half_width": rule.max_half_width, "noise_floor": rule.noise_floor,
                 **({"reach_margin": rule.reach_margin} if rule.reach_margin is not None else {})},
    }
    readings = kept_readings(Path(args.out), header, [site for site in rule.sites if site not in probed])
    if config.evaluate.threads > 0:
        torch.set_num_threads(config.evaluate.threads)
    model = load_model(config.model, config.paths, "cpu").model
    windows = load_windows(config.paths.tokens_dir(config.model.name, config.corpus.name), "train")
    passes = clean_pass(model, windows[: rule.probe_windows], args.batch)
    anchor, confidence = config.experiment.layers[0], config.intervals.level
    for site in probed:
        started = time.time()
        level, planned = min(config.verdict.levels_at(site)), config.evaluate.windows_of(TEST, site)
        width = lambda m: predicted_half_width(m, level, planned, rule.noise_floor, confidence)  # noqa: E731
        measured: list[LayerAblations] = []
        for layer in probe_order(config.model.n_layers, anchor):
            measured.append(measure_layer(model, passes, site, layer, with_mean=rule.reach_margin is not None))
            found = measured[-1]
            reached = reaches(found, level, rule.reach_margin)
            print(f"{site} layer {layer}: zero-ablation costs {found.cost:.4f} nat (SD {found.sd:.4f}); predicted "
                  f"half-width {width(found):.4f}" + ("" if found.mean_cost is None else
                  f"; mean-ablation recovers {found.mean_ablation_recovered:.4f}"), flush=True)
            if not args.all and reached and width(found) <= rule.max_half_width:
                break
        layer, met = choose_layer(measured, anchor, level, planned, rule.max_half_width, rule.noise_floor, confidence,
                                  rule.reach_margin)
        readings[site] = {
            "layer": layer, "meets_rule": met, "level": level, "planned_windows": planned,
            "max_half_width": rule.max_half_width, "noise_floor": rule.noise_floor,
            "layers": [layer_record(m, level, planned, rule, confidence) for m in sorted(measured, key=lambda m: m.layer)],
            "command": recorded_command(sys.argv[1:]), "seconds": round(time.time() - started, 1),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
        }
        print(f"{site}: layer {layer} ({'meets' if met else 'does NOT meet'} the rule)", flush=True)
    write_json_atomic(args.out, {**header, "sites": {site: readings[site] for site in rule.sites}})
    print(f"wrote {args.out}")


def layer_record(measured: LayerAblations, level: float, planned: int, rule, confidence: float) -> dict:
    """One layer's measurements and what the rule makes of them."""
    record = {"layer": measured.layer, "zero_ablation_cost": measured.cost, "sd": measured.sd,
              "windows": measured.windows,
              "predicted_half_width": predicted_half_width(measured, level, planned, rule.noise_floor, confidence),
              "windows_needed": windows_needed(measured, level, rule.max_half_width, rule.noise_floor, confidence)}
    if measured.mean_cost is not None:
        record |= {"mean_ablation_cost": measured.mean_cost,
                   "mean_ablation_recovered": measured.mean_ablation_recovered,
                   "reaches_level": reaches(measured, level, rule.reach_margin)}
    return record


def kept_readings(path: Path, header: dict, sites: list[str]) -> dict:
    """The earlier readings of `sites` in `path`, which must have been taken under the same header (rule,
    model, anchor, probe windows): a site probed under another rule is probed again, never mixed in."""
    if not sites:
        return {}
    earlier = json.loads(path.read_text()) if path.exists() else {}
    differs = [key for key, value in header.items() if key != "rule" and earlier.get(key) != value]
    rule = earlier.get("rule", {})
    if any(rule.get(key) != header["rule"].get(key) for key in ("max_half_width", "noise_floor", "reach_margin")):
        differs.append("rule")
    missing = [site for site in sites if site not in earlier.get("sites", {})]
    if differs or missing:
        sys.exit(f"{path}: cannot keep the readings of {', '.join(sites)} "
                 f"({'no reading of ' + ', '.join(missing) if missing else 'taken with other ' + ', '.join(differs)}): "
                 "probe every site (leave out --sites)")
    return {site: earlier["sites"][site] for site in sites}


if __name__ == "__main__":
    main()
