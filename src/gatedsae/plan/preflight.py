"""Checks before compute: every size the user sets against what it will cost (each job's device-hours,
the bootstraps' memory), the devices a stage computes on against this machine, the data folder against
being writable, the memory a job needs against what its device has, the disk against what is left to
write. A job that cannot run stops with one message naming the key to change.

`check_plan` runs when the workflow is read (the Snakefile) and before every stage, so a size that
cannot work stops the whole run before its first job, not hours later in the job that needs it.
"""

from __future__ import annotations

import os
from pathlib import Path

from gatedsae.core.errors import PipelineError, StorageError
from gatedsae.plan.config import Config, ConfigError
from gatedsae.plan.estimates import (GIB, Estimate, aggregate_estimate, experiment_estimates, size_text,
                                     study_analysis_estimate)


class ResourceError(PipelineError):
    """A job cannot fit the device (or the disk); the message names what to change."""

    label = "resource error"
    exit_code = 3


# --- before the workflow and before every stage --------------------------------------------------------

# What to lower when an estimate is too large, by job.
_LOWER = {"cache": "cache.train_tokens or cache.heldout_tokens",
          "train_all_tokens": "train.tokens (or set sweep.all_tokens=false)",  # before its prefix "train"
          "train": "train.tokens (or the sweep's groups)", "rescale_shift": "train.tokens",
          "evaluate": "evaluate.ce_windows or evaluate.heldout_tokens", "aggregate": "intervals.resamples",
          "study_analysis": "study.bootstrap"}


def _lower(job: str) -> str:
    return next((keys for prefix, keys in _LOWER.items() if job.startswith(prefix)), "the sizes in the configuration")


def check_plan(config: Config) -> None:
    """Every job's estimated device-hours against resources.max_job_hours, and the bootstraps' memory
    against this machine's, before anything runs."""
    limit = config.resources.max_job_hours
    for estimate, _ in experiment_estimates(config):
        hours = estimate.hours(config.train.device, config.resources.sustained_tflops)
        if hours > limit:
            raise ResourceError(f"{estimate.job} would take an estimated {hours:,.3g} device-hours, more than "
                                f"resources.max_job_hours={limit:g}; lower {_lower(estimate.job)} (or raise "
                                "resources.max_job_hours if the run really is that long)")
    bootstraps = [aggregate_estimate(config)] + ([study_analysis_estimate(config)] if config.study.enabled else [])
    for estimate in bootstraps:
        check_memory(estimate, "cpu", f"lower {_lower(estimate.job)}", host_memory(config), quiet=True)


def check_devices(config: Config, keys: tuple[str, ...]) -> None:
    """Each device named by `keys` ('train.device', 'train.site_devices', ...) exists on this machine."""
    for key in keys:
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        for index, device in enumerate(value) if isinstance(value, list) else [(None, value)]:
            problem = device_problem(device)
            if problem is not None:
                raise ConfigError(f"config key '{key}{'' if index is None else f'.{index}'}': {problem}")


def device_problem(device: str) -> str | None:
    """Why `device` cannot be used on this machine, or None."""
    kind, _, index = device.partition(":")
    if kind == "cpu":
        return None
    import torch

    if kind == "mps":
        return None if torch.backends.mps.is_available() else "mps is not available on this machine; use cpu"
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        build = "a CPU-only build of torch" if torch.version.cuda is None else f"torch built for CUDA {torch.version.cuda}"
        return f"{device!r}: this machine has no CUDA device ({build}); use cpu"
    if index and int(index) >= count:
        return f"{device!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}; use one of them"
    return None


def check_data_folder(config: Config) -> None:
    """paths.data is a folder this process can write (created if missing)."""
    root = Path(config.paths.root)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise StorageError(f"paths.data={root} cannot be created ({error.strerror}); point paths.data at a "
                           "writable folder") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise StorageError(f"paths.data={root} is not writable by this user; make it writable or point paths.data "
                           "at another folder")


def before_stage(config: Config, devices: tuple[str, ...] = (), writes_data: bool = False,
                 plan: bool = True) -> None:
    """What `python -m gatedsae <stage>` checks before it starts (see the module's docstring)."""
    if plan:
        check_plan(config)
    check_devices(config, devices)
    if writes_data:
        check_data_folder(config)


# --- memory and disk -----------------------------------------------------------------------------------


def available_memory(device: str, config: Config | None = None) -> float:
    """Bytes a job may use: resources.device_memory_gib if set, else the GPU's total memory or the RAM
    the OS reports available."""
    if config is not None and config.resources.device_memory_gib:
        return config.resources.device_memory_gib * GIB
    if device.startswith("cuda"):
        import torch

        return float(torch.cuda.get_device_properties(torch.device(device)).total_memory)
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float("inf")


def host_memory(config: Config) -> float:
    """Bytes this machine has in all (resources.device_memory_gib if set): what a job planned here may use."""
    if config.resources.device_memory_gib:
        return config.resources.device_memory_gib * GIB
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return float("inf")


def check_memory(estimate: Estimate, device: str, fix: str, available: float, quiet: bool = False) -> None:
    """Print the estimate (unless `quiet`); raise ResourceError (before any compute) when it exceeds
    `available`."""
    parts = ", ".join(f"{k} {size_text(v)}" for k, v in (estimate.breakdown or {}).items())
    if not quiet:
        print(f"{estimate.job}: estimated peak memory {size_text(estimate.memory_bytes)}"
              + (f" ({parts})" if parts else "") + f" on {device} with {size_text(available)}", flush=True)
    if estimate.memory_bytes > available:
        raise ResourceError(f"{estimate.job} needs about {estimate.memory_bytes / GIB:.1f} GiB but {device} has "
                            f"{available / GIB:.1f} GiB; {fix}")


def check_disk(estimate: Estimate, directory, written: float, fix: str) -> None:
    """Print the disk estimate; raise ResourceError (before any compute) when what is left to write (the
    estimate less the `written` bytes a resumed run keeps) exceeds the free space where it goes."""
    from gatedsae.core.atomic import disk_space, format_bytes

    free, _, mount = disk_space(directory)
    needed = max(estimate.disk_bytes - written, 0.0)
    print(f"{estimate.job}: estimated disk {format_bytes(estimate.disk_bytes)} ({format_bytes(needed)} still to "
          f"write) in {directory}, {format_bytes(free)} free on {mount}", flush=True)
    if needed > free:
        raise ResourceError(f"{estimate.job} needs about {format_bytes(needed)} more in {directory} but only "
                            f"{format_bytes(free)} is free on {mount}; {fix}")
