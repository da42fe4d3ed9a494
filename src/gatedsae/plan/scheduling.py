"""Estimates as scheduler resources for every rule (Snakemake's `mem_mb`, `runtime`, `cpus_per_task`,
`gpu`, `gpu_model`, which the SLURM executor turns into `sbatch --mem/--time/--cpus-per-task/--gpus`),
and as the Markdown tables of `python -m gatedsae estimate` (docs/paper-scale.md holds them at paper scale)."""

from __future__ import annotations

from gatedsae.plan.config import Config
from gatedsae.plan.estimates import (
    COMPUTE_RULES,
    GIB,
    SUSTAINED_FLOPS,
    Estimate,
    dag_jobs,
    experiment_estimates,
    rule_estimate,
)


def job_resources(estimate: Estimate, device: str, config: Config) -> dict:
    """Scheduler resources for one job: memory with 25% + 2 GiB headroom (the process itself: Python,
    torch), runtime with 50% + 15 min."""
    return {"mem_mb": int((estimate.memory_bytes * 1.25 + 2 * GIB) / 2**20),
            "runtime": int(estimate.hours(device, config.resources.sustained_tflops) * 60 * 1.5) + 15,
            "gpu": estimate.devices if device.startswith("cuda") else 0}


def rule_device(config: Config, rule: str) -> str:
    """Where a rule's stage computes (the rules not listed compute on the CPU, if at all)."""
    devices = {"cache": config.cache.device, "train": config.train.device, "rescale_shift": config.train.device,
               "train_all_tokens": config.train.device,
               "evaluate": config.evaluate.device, "browse": config.evaluate.device, "study": config.evaluate.device,
               "interp": config.evaluate.device}
    return devices.get(rule, "cpu")


def rule_resources(config: Config, rule: str, site: str | None = None) -> dict:
    """What one job of `rule` asks the scheduler for: its estimate's memory, time and GPUs (rules that
    only read and write files: resources.light_job_mem_mb), and resources.job_cpus CPUs for the jobs
    that cache, train or evaluate (their torch threads), one for the others."""
    estimate = rule_estimate(config, rule, site)
    resources = job_resources(estimate or Estimate(rule, 0.0, 0.0), rule_device(config, rule), config)
    if estimate is None:
        resources["mem_mb"] = config.resources.light_job_mem_mb
    resources["cpus_per_task"] = config.resources.job_cpus if rule in COMPUTE_RULES else 1
    if resources["gpu"] and config.resources.gpu_model:
        resources["gpu_model"] = config.resources.gpu_model
    return resources


def markdown_table(config: Config) -> str:
    """The experiment's jobs: count, peak memory, disk and device-hours (the README's scale table)."""
    device = config.train.device
    tflops = config.resources.sustained_tflops or SUSTAINED_FLOPS['cuda' if device.startswith('cuda') else 'cpu'] / 1e12
    memory = f"{config.resources.device_memory_gib:g} GiB" if config.resources.device_memory_gib else "unbounded"
    lines = [f"**{config.experiment.name}** ({config.model.name}; layers {config.experiment.layers}; "
             f"{config.train.tokens:,} training tokens per SAE"
             + "".join(f", {site} {tokens:,}" for site, tokens in config.train.site_tokens.items())
             + f"; device-hours at {tflops:g} TFLOP/s sustained; "
             f"device memory {memory})", "",
             "| job | count | peak memory (GiB) | disk (GiB, all jobs) | device-hours (all jobs) |", "|---|---|---|---|---|"]
    total_hours = total_disk = 0.0
    for estimate, count in experiment_estimates(config):
        hours, disk = estimate.hours(device, config.resources.sustained_tflops) * count, estimate.disk_bytes * count / GIB
        total_hours, total_disk = total_hours + hours, total_disk + disk
        lines.append(f"| {estimate.job} | {count} | {estimate.memory_bytes / GIB:.1f} | {disk:,.1f} | {hours:,.1f} |")
    lines.append(f"| **total** | | | **{total_disk:,.0f}** | **{total_hours:,.0f}** |")
    return "\n".join(lines)


def resources_table(config: Config) -> str:
    """What each job of the experiment asks the scheduler for (sbatch flags through profiles/slurm)."""
    lines = ["| rule | jobs | --mem | --time | --cpus-per-task | --gpus |", "|---|---|---|---|---|---|"]
    for rule, site, count in dag_jobs(config):
        r = rule_resources(config, rule, site)
        gpus = (f"{r['gpu_model']}:{r['gpu']}" if "gpu_model" in r else str(r["gpu"])) if r["gpu"] else ""
        time = f"{r['runtime'] // 60}:{r['runtime'] % 60:02d}:00"
        lines.append(f"| {rule}{f'[{site}]' if site else ''} | {count} | {r['mem_mb'] / 1024:,.1f} GiB | {time} | "
                     f"{r['cpus_per_task']} | {gpus} |")
    return "\n".join(lines)
