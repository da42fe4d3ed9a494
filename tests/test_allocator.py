"""Freed memory kept in the process (resources.retain_freed_mib, core/allocator.py): large tensors are no
longer faulted in again at each allocation, the setting is validated, and the heavy stages apply it."""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import replace

import pytest

from gatedsae.core import allocator
from gatedsae.plan.config import ConfigError, load_config

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# 64 MiB tensors, above the 32 MiB that glibc's adaptive mmap threshold can reach: with its defaults
# each one is a fresh mapping whose 16,384 pages fault in when filled. Kept memory is reused once the
# heap has grown past the alignment slack torch's allocations leave between freed chunks (a few
# allocations), so the last ten of twenty are counted.
FAULTS_PER_ALLOCATION = """
import resource, sys, torch
from gatedsae.core.allocator import retain_freed_memory
setting = retain_freed_memory(int(sys.argv[1]))
torch.set_num_threads(1)
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    torch.ones(16 << 20)
before = faults()
for _ in range(10):
    torch.ones(16 << 20)
print((faults() - before) / 10, setting.applied)
"""


def faults_per_allocation(mib: int) -> tuple[float, bool]:
    done = subprocess.run([sys.executable, "-c", FAULTS_PER_ALLOCATION, str(mib)], capture_output=True, text=True,
                          check=True)
    faults, applied = done.stdout.split()
    return float(faults), applied == "True"


@pytest.mark.skipif(not GLIBC, reason="the thresholds are glibc's")
def test_retained_memory_is_reused_instead_of_faulted_in_again():
    default_faults, default_applied = faults_per_allocation(0)
    retained_faults, retained_applied = faults_per_allocation(1024)
    assert not default_applied and retained_applied
    assert default_faults > 8000, "with glibc's defaults each 64 MiB tensor is a fresh mapping (16,384 pages)"
    assert retained_faults < default_faults / 20


def test_the_setting_says_what_it_did(monkeypatch):
    assert not allocator.retain_freed_memory(0).applied
    monkeypatch.setattr(allocator.platform, "libc_ver", lambda: ("", ""))
    elsewhere = allocator.retain_freed_memory(256)
    assert not elsewhere.applied and "not glibc" in elsewhere.reason


def test_an_invalid_setting_is_refused_naming_the_key():
    assert load_config(["experiment=smoke"]).resources.retain_freed_mib == 1024
    for bad in ("-1", str(allocator.MAX_MIB + 1)):
        with pytest.raises(ConfigError, match="resources.retain_freed_mib"):
            load_config(["experiment=smoke", f"resources.retain_freed_mib={bad}"])


def test_training_applies_the_configured_setting(smoke_cache, tmp_path, monkeypatch):
    from gatedsae.activations.store import ActivationStore
    from gatedsae.training import trainer as trainer_module

    applied = []
    monkeypatch.setattr(trainer_module, "retain_freed_memory", applied.append)
    config = replace(smoke_cache, resources=replace(smoke_cache.resources, retain_freed_mib=300))
    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", "resid_post", 1), "train")
    trainer_module.GridTrainer(config, store, tmp_path / "grid").start()
    assert applied == [300]
