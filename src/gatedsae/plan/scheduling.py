"""Estimates as scheduler resources (Snakemake / slurm `mem_mb`, `runtime`, GPUs) and as the
Markdown table of `python -m gatedsae estimate`."""

from __future__ import annotations

from gatedsae.plan.config import Config
from gatedsae.plan.estimates import GIB, SUSTAINED_FLOPS, Estimate, experiment_estimates


def job_resources(estimate: Estimate, device: str, config: Config) -> dict:
    """Scheduler resources for one job: memory with 25% + 2 GiB headroom, runtime with 50% + 15 min."""
    return {"mem_mb": int((estimate.memory_bytes * 1.25 + 2 * GIB) / 2**20),
            "runtime": int(estimate.hours(device, config.resources.sustained_tflops) * 60 * 1.5) + 15,
            "gpu": estimate.devices if device.startswith("cuda") else 0}


def markdown_table(config: Config) -> str:
    """The experiment's jobs: count, peak memory, disk and device-hours (the README's scale table)."""
    device = config.train.device
    tflops = config.resources.sustained_tflops or SUSTAINED_FLOPS['cuda' if device.startswith('cuda') else 'cpu'] / 1e12
    memory = f"{config.resources.device_memory_gib:g} GiB" if config.resources.device_memory_gib else "unbounded"
    lines = [f"**{config.experiment.name}** ({config.model.name}; layers {config.experiment.layers}; "
             f"{config.train.tokens:,} training tokens per SAE; device-hours at {tflops:g} TFLOP/s sustained; "
             f"device memory {memory})", "",
             "| job | count | peak memory (GiB) | disk (GiB, all jobs) | device-hours (all jobs) |", "|---|---|---|---|---|"]
    total_hours = total_disk = 0.0
    for estimate, count in experiment_estimates(config):
        hours, disk = estimate.hours(device, config.resources.sustained_tflops) * count, estimate.disk_bytes * count / GIB
        total_hours, total_disk = total_hours + hours, total_disk + disk
        lines.append(f"| {estimate.job} | {count} | {estimate.memory_bytes / GIB:.1f} | {disk:,.1f} | {hours:,.1f} |")
    lines.append(f"| **total** | | | **{total_disk:,.0f}** | **{total_hours:,.0f}** |")
    return "\n".join(lines)
