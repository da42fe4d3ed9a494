"""The tables of docs/benchmarks.md, rendered from the benchmark JSON files (results/benchmarks/), so that
every number and every statement about a machine there is what the cited file records."""

from __future__ import annotations

import json

from gatedsae.plan.config import REPO_ROOT

BENCHMARKS = REPO_ROOT / "results" / "benchmarks"
TARGET_SPEEDUP = 2.0  # the evaluation's target per SAE against the previous path (issue: ≥ 2×)


def _read(name: str) -> dict:
    return json.loads((BENCHMARKS / name).read_text())


def _spread(summary: dict, digits: int = 2) -> str:
    return f"{summary['median']:.{digits}f} ({summary['min']:.{digits}f}–{summary['max']:.{digits}f})"


def machine_line(name: str, load_key: str = "load_average", load_label: str = "load average") -> str:
    """One line: the machine the file records (its load average as `load_key` holds it)."""
    data = _read(name)
    m = data["machine"]
    load = ", ".join(f"{value:.1f}" for value in m.get(load_key, data.get(load_key, [])))
    native = {True: "yes", False: "no"}.get(m.get("native_bf16"), "not recorded")
    return (f"`results/benchmarks/{name}`, measured on: {m.get('cpu')} ({m.get('cores')} cores, torch "
            f"{m.get('torch')} running its {m.get('torch_cpu_capability')} kernels, CPU flags "
            f"{', '.join(m.get('cpu_features', [])) or 'none recorded'}; native bf16: {native}), "
            f"{m.get('threads')} threads, {load_label} {load or 'not recorded'}; command "
            f"`{data['command'].split('/')[-1] if 'command' in data else '?'}`.")


def _eval_predates(data: dict) -> bool:
    return not data["sites"] or "speedup_same_precision" not in data["sites"][0]


PREDATES_EVAL = ("This file predates the runs of `scripts/bench_eval.py` that compare the per-SAE path with the one "
                 "before `evaluation/lean_blocks.py` in float32 and bf16, and has not been measured again.")


def eval_speed_table() -> str:
    data = _read("eval.json")
    if _eval_predates(data):
        return machine_line("eval.json") + "\n\n" + PREDATES_EVAL
    lines = [machine_line("eval.json"), "",
             f"Seconds per SAE per CE window ({data['windows']} windows of {data['context_length']} tokens in batches "
             f"of {data['batch_windows']}, {data['repeats']} repetitions: medians; ratios are median (min–max) of "
             "the ratios taken inside each repetition)"
             + (f"; every path in a process that keeps freed memory as a pipeline stage does ({data['allocator']['reason']})"
                if data.get("allocator", {}).get("applied") else "") + ".", "",
             "| site, layer | full forward fp32 | full forward bf16 | previous fp32 | ours fp32 | previous bf16 "
             "| ours bf16 | previous / ours, fp32 | previous / ours, bf16 | ours / full, fp32 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for site in data["sites"]:
        seconds = {name: s["median"] for name, s in site["seconds_per_sae_per_window"].items()}
        same = site["speedup_same_precision"]
        lines.append(
            f"| {site['site']}, {site['layer']} | {seconds['full_float32']:.2f} | {seconds['full_bfloat16']:.2f} "
            f"| {seconds['previous_float32']:.2f} | {seconds['ours_float32']:.2f} | {seconds['previous_bfloat16']:.2f} "
            f"| {seconds['ours_bfloat16']:.2f} | {_spread(same['float32'])}× | {_spread(same['bfloat16'])}× "
            f"| {_spread(site['ours_vs_full_forward']['float32'])} |")
    lines += ["", "| site | precision chosen by the gate: before → now | **speedup vs previous**, each in its "
              "automatic precision | ours, fp32 / bf16 |", "|---|---|---|---|"]
    for site in data["sites"]:
        lines.append(f"| {site['site']} | {site['previous_auto_precision']} → {site['auto_precision']} "
                     f"| **{_spread(site['speedup_vs_previous'])}×** | {_spread(site['bf16_vs_float32_ours'])}× |")
    for label, key in (("in the same precision (float32)", None), ("each in its automatic precision", "auto")):
        ratios = {site["site"]: (site["speedup_vs_previous"] if key else site["speedup_same_precision"]["float32"])["median"]
                  for site in data["sites"]}
        met = [name for name, ratio in ratios.items() if ratio >= TARGET_SPEEDUP]
        missed = [name for name in ratios if name not in met]
        lines += ["", f"Target, evaluation ≥ {TARGET_SPEEDUP:g}× faster per SAE than the previous path {label} (median): "
                  + (f"**met** at {', '.join(met)}" if met else "") + ("; " if met and missed else "")
                  + (f"**not met** at {', '.join(missed)}" if missed else "") + "."]
    lines += ["", "Float32 results, ours against the previous path on the timed windows (the change must not move "
              "them): largest per-token CE difference "
              + ", ".join(f"{site['site']} {site['float32_agreement']['max_abs_per_token_nats']:.1e}" for site in data["sites"])
              + " nat; mean CE difference "
              + ", ".join(f"{site['site']} {site['float32_agreement']['abs_mean_difference_nats']:.1e}" for site in data["sites"])
              + " nat."]
    return "\n".join(lines)


def eval_fidelity_table() -> str:
    data = _read("eval.json")
    if _eval_predates(data):
        return PREDATES_EVAL
    plain = all("abs_difference_nats_bf16_logits" in site["fidelity"] for site in data["sites"])
    lines = ["| site, layer | windows | stand-in FVU | \\|ΔCE\\| clean | \\|ΔCE\\| zero-ablated | \\|ΔCE\\| spliced "
             + ("| \\|ΔCE\\| clean, zero-ablated, spliced, the previous path's bf16 (every logit and position) " if plain else "")
             + "| tolerance | the evaluation's gate (clean and spliced, 8 windows) |",
             "|---|---|---|---|---|---|" + ("---|" if plain else "") + "---|---|"]
    for site in data["sites"]:
        f = site["fidelity"]
        d = f["abs_difference_nats"]
        gate = f["gate"]
        verdict = f"passed: {gate['dtype']}" if gate.get("gate", {}).get("passed") else f"failed: {gate['reason']}"
        every = f["abs_difference_nats_bf16_logits"] if plain else {}
        lines.append(f"| {site['site']}, {site['layer']} | {f['windows']} | {f['stand_in_fvu']:.3f} | {d['clean']:.4f} | {d['zero']:.4f} "
                     f"| {d['spliced']:.4f} "
                     + (f"| {every['clean']:.4f}, {every['zero']:.4f}, {every['spliced']:.4f} " if plain else "")
                     + f"| {f['tolerance_nats']} | {verdict} |")
    return "\n".join(lines)


def _cached_to(data: dict) -> int:
    """The number of layers a cache benchmark's forward ran through."""
    return max(layer for _, layer in data["site_layers"]) + 1 if "site_layers" in data else max(data["layers"]) + 1


def _cached_sites(data: dict) -> str:
    if "site_layers" in data:
        return ", ".join(f"{site} (layer {layer})" for site, layer in data["site_layers"])
    return ", ".join(data["sites"])


def cache_table() -> str:
    data = _read("cache.json")
    if "auto" not in data:  # written before the precision runs existed
        return (machine_line("cache.json") + "\n\nThis file predates the float32 / automatic-precision runs of "
                "`scripts/bench_cache.py` and has not been measured again: it holds no bf16 caching figure, and "
                "its float32 figures are those of the machine above.")
    lines = [machine_line("cache.json"), "",
             f"SmolLM2 to layer {_cached_to(data)}, sites {_cached_sites(data)}, batch "
             f"{data['batch_sequences']} × {data['context_length']}, {data['float32']['tokens']:,} tokens per run, "
             f"{data['repeats']} repetitions (float32 and automatic runs one after the other in each).", "",
             "| precision | bare forward (tokens/s) | caching (tokens/s) | caching overhead (target ≤ 10%) |",
             "|---|---|---|---|"]
    for setting in ("float32", "auto"):
        figures = data[setting]
        lines.append(f"| {setting} → {figures['precision']['dtype']} | {figures['bare_tokens_per_s']:.0f} "
                     f"| {figures['cached_tokens_per_s']:.0f} | {100 * figures['caching_overhead']:.1f}% |")
    gate = data["auto"]["precision"].get("gate") or {}
    errors = ", ".join(f"{name.replace('_rel_error', '')} {entry['value']:.4f}" for name, entry in gate.items()
                       if isinstance(entry, dict))
    both_float32 = data["auto"]["precision"]["dtype"] == "float32"
    ratio = (f"auto kept float32, so the two runs computed the same thing: their wall-time ratio, "
             f"{_spread(data['auto_speedup'])}, measures only the shared machine's noise" if both_float32 else
             f"**auto vs float32, whole cache run: {_spread(data['auto_speedup'])}×**")
    positions = data.get("cache_float32_positions", 0)
    if not both_float32 and positions:
        ratio += (f". The automatic run's overhead over its bare bf16 forward includes recomputing the first "
                  f"{positions} positions of every window in float32 (`precision.cache_float32_positions`) and the "
                  "start-up gate, which the bare forward does not do")
    lines += ["", f"{ratio}. The gate "
              f"({'passed' if gate.get('passed') else 'failed'}; tolerance "
              f"{next((e['tolerance'] for e in gate.values() if isinstance(e, dict)), '?')}): relative error of the "
              f"cached activations SAEs train on, {errors or 'not run'}; over every row, massive ones included: "
              + (", ".join(f"{k.replace('_rel_error_all_rows', '')} {v:.3f}" for k, v in gate.items()
                           if k.endswith("_all_rows")) or "not run") + "."]
    return "\n".join(lines)


# The cache's end-to-end checks in the order they ran: bf16 as is (a fixed tolerance per SAE), with the first
# positions recomputed in float32 (the same tolerance), then judged against another training seed.
CACHE_CHECKS = ("cache_precision_without_recompute.json", "cache_precision_fixed_tolerance.json", "cache_precision.json")


def _changes(site: dict, run: str) -> list[dict]:
    """Each SAE's relative changes of FVU and L0 by the bf16 cache (`run` "cache") or by another seed ("seed"),
    in either of the files' formats (the fixed-tolerance checks ran no seed)."""
    saes = site["saes"].values()
    if run == "cache":
        return [sae.get("cache") or {"fvu": sae["fvu_rel"], "l0": sae["l0_rel"]} for sae in saes]
    return [sae["seed"] for sae in saes if "seed" in sae]


def _worst_median(changes: list[dict], key: str) -> str:
    import statistics

    values = [change[key] for change in changes]
    return f"{max(values):.4f} / {statistics.median(values):.4f}" if values else "not run"


def cache_precision_table() -> str:
    """The cache's end-to-end precision checks (scripts/check_cache_precision.py): one row per site and run."""
    runs = [(name, _read(name)) for name in CACHE_CHECKS if (BENCHMARKS / name).exists()]
    latest = runs[-1][1]
    lines = [machine_line(name) for name, _ in runs] + [
        "", f"SmolLM2 at the default's sites; each way, {latest['train_rows']:,} cached training rows, "
        f"{latest['steps']} steps of {latest['batch_size']:,} rows per SAE (seeds {latest['seeds']}), read on "
        f"{latest['heldout_tokens']:,} held-out rows of the float32 cache. Relative changes from the SAEs trained "
        "on the float32 cache, worst / median over the site's SAEs.", "",
        "| file | site, layer | first positions in float32 | activations' relative error | rows' relative error, "
        "median / 99th percentile / max | \\|ΔFVU\\|/FVU by the bf16 cache | by another seed | \\|ΔL0\\|/L0 by the bf16 "
        "cache | by another seed |", "|---|---|---|---|---|---|---|---|---|"]
    for name, data in runs:
        positions = data.get("cache_float32_positions", 0)
        for site in data["sites"].values():
            a = site["activations"]
            cache, seed = _changes(site, "cache"), _changes(site, "seed")
            lines.append(f"| {name.removesuffix('.json')} | {site['site']}, {site['layer']} | {positions or 'none'} "
                         f"| {a['rel_error']:.4f} | {a['row_rel_error_p50']:.4f} / {a['row_rel_error_p99']:.4f} / "
                         f"{a['row_rel_error_max']:.3f} | {_worst_median(cache, 'fvu')} | {_worst_median(seed, 'fvu')} "
                         f"| {_worst_median(cache, 'l0')} | {_worst_median(seed, 'l0')} |")
    shares = latest.get("first_positions")
    if shares:
        first = next(iter(shares.values()))
        lines += ["", f"On the first {first['windows']} held-out windows, of a plain bf16 forward's squared difference from "
                  f"float32 over the rows SAEs train on, positions 1–{first['float32_positions']} hold "
                  "(their share of the rows in brackets): " + "; ".join(
                      f"{name} {entry['share_of_squared_difference_in_those_positions']:.0%} "
                      f"({entry['share_of_rows']:.1%})" for name, entry in shares.items()) + "."]
    verdict = latest.get("verdict")
    if verdict:
        lines += ["", f"The check (`precision.cache_check`, seed_ratio {verdict['seed_ratio']}), over all "
                  f"{verdict['saes']} SAEs: " + "; ".join(
                      f"median {key.upper()} change by the bf16 cache {verdict[key]['median_change_by_cache']:.4f}, "
                      f"by another seed {verdict[key]['median_change_by_seed']:.4f}" for key in ("fvu", "l0"))
                  + f": **{'passed' if verdict['passed'] else 'failed'}**, so `precision.cache=auto` "
                  + ("may use bf16 where the start-up gate passes." if verdict["passed"] else "keeps float32.")]
    return "\n".join(lines)


TIMED_STAGES = ("cache", "train", "train_all_tokens", "evaluate")  # the stages whose precision the machine chooses


def _stage_seconds(run: dict) -> dict[str, float]:
    totals: dict[str, float] = {}
    for chapter in run["chapters"]:
        for stage, seconds in chapter["stages"].items():
            totals[stage] = totals.get(stage, 0.0) + seconds
    return totals


def _resolved(run: dict) -> str:
    return "; ".join(f"{stage} " + ", ".join(f"{dtype} ×{count}" for dtype, count in sorted(dtypes.items()))
                     for stage, dtypes in sorted(run["precision"].items())) or "not recorded"


def speed_table() -> str:
    if not (BENCHMARKS / "speed.json").exists():
        return ("`results/benchmarks/speed.json` (the replication timed cold twice, automatic precision against "
                "float32) has not been written yet: `python scripts/bench_speed.py` runs it, and needs the machine "
                "to itself for both cold runs.")
    data = _read("speed.json")
    runs, targets, verdicts = data["runs"], data["targets"], data["verdicts"]
    stages = {name: _stage_seconds(run) for name, run in runs.items()}
    recorded = data["machine"]
    scope = f"the chapters through `{data['chapter']}`" if data.get("chapter") else "every chapter"
    lines = [machine_line("speed.json", "load_average_before", "load average before"), "",
             f"Two cold runs of experiment `{data['experiment']}` ({scope}, settings "
             f"`{' '.join(data['settings']) or 'none'}`), one after the other at code version {data['code_version']}: "
             "each a fresh clone, its install (`scripts/setup.sh`) and `python -m gatedsae replicate`; the first "
             "leaves the precision to the machine, the second forces float32 at every stage. The last column counts "
             "the run's precision records (store manifests, checkpoints, evaluations) by the dtype they computed in; "
             "under auto a stage keeps float32 where its fidelity gate failed, and each record says why. The whole "
             "run also counts the reporting jobs and the workflow's own time, which no stage column holds. "
             "Load average after: "
             + ", ".join(f"{x:.1f}" for x in recorded.get("load_average_after", [])) + ".", "",
             "| run | install (min) | " + " | ".join(f"{stage} (min)" for stage in TIMED_STAGES)
             + " | other stages (min) | whole run (min) | records computed in |",
             "|---|---|" + "---|" * len(TIMED_STAGES) + "---|---|---|"]
    for name, run in runs.items():
        stages[name]["other"] = sum(v for k, v in stages[name].items() if k not in TIMED_STAGES)
        lines.append(f"| {name} | {run['setup_seconds'] / 60:.1f} | "
                     + " | ".join(f"{stages[name].get(stage, 0.0) / 60:.1f}" for stage in (*TIMED_STAGES, "other"))
                     + f" | {run['wall_seconds'] / 60:.1f} | {_resolved(run)} |")
    lines.append("| float32 / auto | | " + " | ".join(
        f"{stages['float32'].get(stage, 0.0) / stages['auto'][stage]:.2f}×" if stages["auto"].get(stage) else "–"
        for stage in (*TIMED_STAGES, "other")) + f" | **{data['ratio_float32_over_auto']:.2f}×** | |")
    wall = targets["auto_wall_met"]
    wall_verdict = (f"**{'met' if wall else 'not met'}**" if wall is not None else
                    f"not judged at these settings (it is set at `{' '.join(targets.get('auto_wall_settings', []))}`, "
                    "the default's size with one seed)")
    lines += ["", f"Target float32 / auto ≥ {targets['ratio']:g}×: **{'met' if targets['ratio_met'] else 'not met'}**. "
              f"Target automatic run ≤ {targets['auto_wall_seconds'] / 60:.0f} min: {wall_verdict} "
              f"({runs['auto']['wall_seconds'] / 60:.1f} min).",
              "", f"The two verdicts: {verdicts['within_interval']} of {verdicts['compared']} statistics with an "
              "interval differ by less than the automatic run's 95% half-width; "
              f"{verdicts['same_status']} of {verdicts['of']} claims end with the same status."]
    differing = [row for row in verdicts["claims"] if row["auto_half_width"] is not None and not row["within_interval"]]
    if differing:
        lines[-1] += " Outside the half-width: " + "; ".join(
            f"`{row['id']}` {row['auto']:.3f} → {row['float32']:.3f} (half-width {row['auto_half_width']:.3f})"
            for row in differing) + "."
    if data.get("precision_recount"):
        lines += ["", f"Precision counts: {data['precision_recount']}."]
    return "\n".join(lines)


PART_NAMES = {"full_forward": "a plain full forward and its CE", "spliced": "the per-SAE spliced path at",
              "previous": "the per-SAE path before lean blocks (e7a5009) at"}


def _part_label(leg: str, part: str, saes: dict) -> str:
    """'Gated, 2,304 wide, 12 SAEs: steps on the support' or 'the per-SAE spliced path at resid_post, layer 15'."""
    if leg == "train":
        group, path = part.rsplit("_", 1)
        arch, width = group.rsplit("_w", 1)
        return (f"{arch}, {int(width):,} wide, {saes.get(f'{group}_saes', '?')} SAEs: "
                f"{'steps on the support' if path == 'support' else 'dense steps'}")
    for prefix in ("spliced", "previous"):
        if part.startswith(f"{prefix}_"):
            site, layer = part[len(prefix) + 1:].rsplit("_layer", 1)
            return f"{PART_NAMES[prefix]} {site}, layer {layer}"
    return PART_NAMES.get(part, part)


def allocator_table() -> str:
    data = _read("allocator.json")
    default, retained = (str(mib) for mib in data["settings"])
    lines = [machine_line("allocator.json", "load_average_before", "load average before"), "",
             f"{data['rounds']} rounds, each leg a fresh process; training: {data['steps']} timed steps per group and "
             f"path (seconds per step of the whole group), evaluation: {data['windows']} held-out windows (seconds per "
             "SAE per window), float32. Medians; the speedup is the median (min–max) of the ratios inside each round.", "",
             f"| stage, part | seconds, glibc's defaults | seconds, {retained} MiB kept | **speedup** "
             "| minor page faults: defaults → kept | kernel CPU seconds: defaults → kept |",
             "|---|---|---|---|---|---|"]
    for leg, result in data["results"].items():
        for part, figures in result["parts"].items():
            seconds = {k: v["median"] for k, v in figures["seconds"].items()}
            faults = {k: v["median"] for k, v in figures["minor_faults"].items()}
            kernel = {k: v["median"] for k, v in figures["kernel_seconds"].items()}
            lines.append(f"| {leg}: {_part_label(leg, part, result.get('saes', {}))} | {seconds[default]:.3f} "
                         f"| {seconds[retained]:.3f} | **{_spread(figures['speedup'])}×** "
                         f"| {faults[default]:,.0f} → {faults[retained]:,.0f} "
                         f"| {kernel[default]:.3f} → {kernel[retained]:.3f} |")
    lines += [""] + [
        f"{leg}: peak resident memory {result['max_rss_gib'][default]['median']:.2f} GiB with glibc's defaults, "
        f"{result['max_rss_gib'][retained]['median']:.2f} GiB with {retained} MiB kept; what the two settings computed: "
        f"{'the same bits' if result['identical'] else '**different bits**'} "
        f"({result['allocator'][retained]['reason']})." for leg, result in data["results"].items()]
    then_over_now = data["results"].get("evaluate", {}).get("previous_then_over_ours_now")
    if then_over_now:
        met = [site for site, ratio in then_over_now.items() if ratio["median"] >= TARGET_SPEEDUP]
        lines += ["", "The per-SAE evaluation in float32 against the path before lean blocks as it ran (glibc's "
                  "defaults), ours as it runs now (memory kept), each pair in one round: " + "; ".join(
                      f"{site.replace('_layer', ', layer ')} {_spread(ratio)}×" for site, ratio in then_over_now.items())
                  + f". Target ≥ {TARGET_SPEEDUP:g}× (median): " + (f"**met** at {', '.join(met)}" if met else "**not met**")
                  + (f"; **not met** at {', '.join(s for s in then_over_now if s not in met)}"
                     if met and len(met) < len(then_over_now) else "") + "."]
    return "\n".join(lines)


GENERATORS = {
    "benchmarks allocator": allocator_table,
    "benchmarks speed": speed_table,
    "benchmarks eval speed": eval_speed_table,
    "benchmarks eval fidelity": eval_fidelity_table,
    "benchmarks cache": cache_table,
    "benchmarks cache precision": cache_precision_table,
}
