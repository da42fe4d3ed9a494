"""The tables of docs/benchmarks-training.md, rendered from results/benchmarks/train.json (scripts/bench_train.py),
train_crossover.json (scripts/bench_crossover.py) and train_precision.json (scripts/check_train_precision.py) by
scripts/update_docs.py."""

from __future__ import annotations

from benchmark_tables import _read, _spread, machine_line

from gatedsae.plan.architectures import PROPOSED, label

PRECISIONS = ("float32", "bfloat16")
NAMES = {PROPOSED: label(PROPOSED), f"{PROPOSED}_group_of_6": "six Gated λ in one group"}


PREDATES = ("This file predates the float32 / bf16 runs of `scripts/bench_train.py` and has not been measured "
            "again: it holds no bf16 training figure.")


def _predates(data: dict) -> bool:
    return "step_breakdown_gated_sparse" not in data


def _head(*columns: str) -> list[str]:
    """A Markdown table's header row and separator."""
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def _kinds(data: dict):
    for case, kinds in data["results"].items():
        for kind, entry in kinds.items():
            yield case, NAMES.get(kind, kind), entry


def train_speed_table() -> str:
    data = _read("train.json")
    if _predates(data):
        return machine_line("train.json") + "\n\n" + PREDATES
    intro = (f"{data['data'].split(':')[0]} activations, d = {data['d']}, batch {data['batch_size']:,}, "
             f"{data['steps_per_run']} timed steps per run, {data['rounds']} interleaved rounds: medians (min–max) "
             "over the rounds; tokens/s per SAE.")
    lines = [machine_line("train.json"), "", intro, "",
             *_head("SAE (width)", "encoder product", "ours, steps on the support", "ours, dense", "sae-lens (float32)",
                    "**ours on the support / sae-lens**", "encoder matmul alone (GFLOP/s)",
                    "its share of a step on the support")]
    for case, name, entry in _kinds(data):
        for precision in PRECISIONS:
            figures = entry[precision]
            speed = figures["sae_tokens_per_s"]
            peer = entry.get("sae_lens_tokens_per_s")
            ratio = entry.get("ratio_vs_sae_lens", {}).get(f"sparse_{precision}")
            peer_text = f"{peer['median']:,.0f}" if peer else "—"
            ratio_text = f"**{_spread(ratio)}**" if ratio else "—"
            lines.append(f"| {name}, {entry['width']:,} ({case.replace('_', ' ')}) | {precision} "
                         f"| {speed['sparse']['median']:,.0f} | {speed['dense']['median']:,.0f} "
                         f"| {peer_text} | {ratio_text} | {figures['encoder_matmul_gflops']:.0f} "
                         f"| {100 * figures['encoder_matmul_share_of_sparse_step']['median']:.0f}% |")
    lines += ["", *_head("SAE (width)", "bf16 / float32, steps on the support", "bf16 / float32, dense steps")]
    lines += [f"| {name}, {entry['width']:,} | {_spread(entry['bf16_over_fp32']['sparse'])}× "
              f"| {_spread(entry['bf16_over_fp32']['dense'])}× |" for _, name, entry in _kinds(data)]
    return "\n".join(lines)


def train_profile_table() -> str:
    data = _read("train.json")
    if _predates(data):
        return PREDATES
    target = data["targets"]["encoder_matmul_share"]
    profiles = data["step_breakdown_gated_sparse"]
    categories = list(dict.fromkeys(name for p in profiles.values() for name in p["ms_per_step"]))
    lines = _head("Gated width", "encoder product", "step (ms, profiled)", *categories, "Python and unattributed")
    for profile in profiles.values():
        shares = [f"{100 * profile['shares'][name]:.0f}%" if name in profile["shares"] else "—"
                  for name in categories]
        rest = profile["python_and_unattributed_ms"] / profile["step_ms_profiled"]
        lines.append(f"| {profile['width']:,} | {profile['precision']} | {profile['step_ms_profiled']:.1f} | "
                     + " | ".join(shares) + f" | {100 * rest:.0f}% |")
    shares = {(entry["width"], precision): entry[precision]["encoder_matmul_share_of_sparse_step"]["median"]
              for _, name, entry in _kinds(data) if name == "Gated" for precision in PRECISIONS}
    met = [f"{width:,} {precision}" for (width, precision), share in shares.items() if share >= target]
    missed = [f"{width:,} {precision} ({100 * share:.0f}%)" for (width, precision), share in shares.items()
              if share < target]
    lines += ["", f"Target: the encoder matmul ≥ {100 * target:.0f}% of a Gated step on the support (timed alone, "
              "against the timed step): " + (f"**met** at {', '.join(met)}" if met else "")
              + ("; " if met and missed else "") + (f"**not met** at {', '.join(missed)}" if missed else "") + "."]
    return "\n".join(lines)


def train_precision_table() -> str:
    data = _read("train_precision.json")
    worst = data["worst"]
    lines = [machine_line("train_precision.json"), "",
             f"{data['model']} {data['site']} layer {data['layer']}, {data['steps']} steps of {data['batch_size']:,}, "
             f"seeds {', '.join(map(str, data['seeds']))}; held-out FVU and L0 on {data['heldout_tokens']:,} "
             "tokens.", "",
             *_head("SAE", "FVU float32", "FVU bf16", "\\|ΔFVU\\| / FVU", "L0 float32", "L0 bf16", "\\|ΔL0\\| / L0")]
    for name, sae in data["saes"].items():
        lines.append(f"| {name} | {sae['fvu_float32']:.4f} | {sae['fvu_bfloat16']:.4f} | {100 * sae['fvu_rel']:.2f}% "
                     f"| {sae['l0_float32']:.1f} | {sae['l0_bfloat16']:.1f} | {100 * sae['l0_rel']:.2f}% |")
    lines += ["", f"Worst: FVU {100 * worst['fvu_rel']['value']:.2f}% "
              f"(tolerance {100 * worst['fvu_rel']['tolerance']:g}%), "
              f"L0 {100 * worst['l0_rel']['value']:.2f}% (tolerance {100 * worst['l0_rel']['tolerance']:g}%): "
              f"**{'passed' if data['passed'] else 'failed'}**."]
    return "\n".join(lines)


def train_crossover_table() -> str:
    data = _read("train.json")
    lines = _head("SAE (width)", "densities measured (L0 / width)", "dense steps faster above")
    for name, entry in data["sparse_crossover"].items():
        arch, width = name.split("_w")
        points = entry["points"]
        cross = entry["crossover_density"]
        above = "not within them" if cross is None else f"{cross:.2f}"
        lines.append(f"| {NAMES.get(arch, arch)}, {int(width):,} "
                     f"| {points[0]['density']:.2f}–{points[-1]['density']:.2f} | {above} |")
    sweep = data["sparse_l0_sweep_paper_regime_gated"]
    lines += ["", f"`train.sparse_max_density` = {data['train_sparse_max_density']:g} (float32 runs). Tokens/s on the "
              "support across L0, Gated 4 × d, float32: " + ", ".join(
                  f"{run['tokens_per_s']:,.0f} at L0 {run['l0_last_step']:.0f}" for run in sweep.values()) + "."]
    return "\n".join(lines)


def crossover_by_precision_table() -> str:
    """Per default width, the density above which dense steps win, in each precision the trainer runs in."""
    data = _read("train_crossover.json")
    precisions = list(data["crossover"])
    lines = _head("SAE (width)", *(f"dense steps faster above ({precision} encoder)" for precision in precisions),
                  *(f"dense / support step time at density 0.2 ({precision})" for precision in precisions))
    for name in data["crossover"][precisions[0]]:
        arch, width = name.split("_w")
        entries = [data["crossover"][precision][name] for precision in precisions]
        cells = ["not within them" if e["crossover_density"] is None else f"{e['crossover_density']:.3f}" for e in entries]
        at_02 = [min(e["points"], key=lambda point: abs(point["density"] - 0.2)) for e in entries]
        cells += [f"{point['dense_s'] / point['sparse_s']:.2f}" for point in at_02]
        lines.append(f"| {NAMES.get(arch, arch)}, {int(width):,} | " + " | ".join(cells) + " |")
    lowest = ", ".join(f"{precision} " + ("none within the densities" if value is None else f"{value:.3f}")
                       for precision, value in data["crossover_min"].items())
    lines += ["", f"Lowest crossover: {lowest}; `train.sparse_max_density` configured when measured: "
              f"{data['train_sparse_max_density']:g}. {machine_line('train_crossover.json')}"]
    if "training" in data:
        lines += ["", _training_check(data["training"])]
    return "\n".join(lines)


def _training_check(training: dict) -> str:
    """One sentence per group: its first steps' wall time at each threshold, in one run each."""
    parts = []
    for name, entry in training["groups"].items():
        arch, width = name.split("_w")
        runs = "; ".join(f"{run['seconds']:.0f} s at {run['threshold']:g} ({run['sparse_steps']} steps on the "
                         f"support, density {run['mean_density_last_step']:.3f} at the last)" for run in entry["runs"])
        first, last = entry["runs"][0]["threshold"], entry["runs"][-1]["threshold"]
        parts.append(f"{NAMES.get(arch, arch)} {int(width):,} wide, {entry['saes']} SAEs: {runs}; time at {first:g} / "
                     f"time at {last:g}: {entry['seconds_ratio_first_over_last']:.2f}")
    return (f"In training ({training['precision']} encoder), the first {training['steps']} steps of each group from a "
            "fresh start, one run per threshold: " + ". ".join(parts) + ".")


def train_step_table() -> str:
    """scripts/bench_step.py: a change to the training step against the commit before it, in one run."""
    data = _read("step.json")
    group, same = data["group"], data["same_training"]
    rounds = len(data["speedup_cpu_time"]["each"])
    lines = [machine_line("step.json"), "",
             f"One {label(group['arch'])} group of {group['saes']} SAEs ({group['width_ratio']:g} × d wide, λ "
             f"{group['l1'].replace(',', ', ')}, {group['seeds']} seeds each), L0 ≈ {group['l0']:g} per row, "
             f"{group['precision']}, {group['steps']} timed steps per run, {rounds} interleaved rounds: medians "
             "(min–max) over the rounds.", "",
             *_head("code", "ms per step, CPU time", "ms per step, wall time")]
    for side in ("before", "after"):
        cpu, wall = (data[side][key] for key in ("cpu_seconds_per_step", "seconds_per_step"))
        lines.append(f"| {side}: {data['code'][side]} | {_ms(cpu)} | {_ms(wall)} |")
    bits = ("the two train to the same bits" if same["identical_bits"] else "the two do not train to the same bits: "
            f"the largest relative difference in any parameter after {group['steps']} steps from a fresh start is "
            f"{same['largest_relative_difference']:.1e}")
    return "\n".join(lines + ["", f"Before / after, CPU time per step, per round: **{_spread(data['speedup_cpu_time'])}×**; "
                                  f"{bits}."])


def _ms(summary: dict) -> str:
    return f"{1000 * summary['median']:.0f} ({1000 * summary['min']:.0f}–{1000 * summary['max']:.0f})"


GENERATORS = {
    "benchmarks train step": train_step_table,
    "benchmarks train crossover": train_crossover_table,
    "benchmarks train crossover by precision": crossover_by_precision_table,
    "benchmarks train speed": train_speed_table,
    "benchmarks train profile": train_profile_table,
    "benchmarks train precision": train_precision_table,
}
