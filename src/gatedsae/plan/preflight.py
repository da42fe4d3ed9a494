"""Checks before compute: the memory a job needs against what its device has, the disk against what
is left to write; a job that cannot fit stops with a message naming what to change."""

from __future__ import annotations

from gatedsae.core.errors import PipelineError
from gatedsae.plan.config import Config
from gatedsae.plan.estimates import GIB, Estimate, size_text


class ResourceError(PipelineError):
    """A job cannot fit the device (or the disk); the message names what to change."""

    label = "resource error"
    exit_code = 3


# --- checks and reports --------------------------------------------------------------------------------


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


def check_memory(estimate: Estimate, device: str, fix: str, available: float) -> None:
    """Print the estimate; raise ResourceError (before any compute) when it exceeds `available`."""
    parts = ", ".join(f"{k} {size_text(v)}" for k, v in (estimate.breakdown or {}).items())
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
