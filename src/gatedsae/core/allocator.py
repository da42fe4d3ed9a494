"""Keep freed tensor memory inside the process (glibc's malloc), so that each training step or LM batch
does not fault its large tensors into memory again.

glibc serves an allocation above its mmap threshold with a fresh mapping and unmaps it on free; the
threshold adapts to freed sizes but never above 32 MiB. A training step allocates tensors of [SAEs,
batch, width] (36 MiB for four SAEs 2,304 wide on a batch of 1,024; the default's groups hold twelve),
and the evaluation's logits are larger, so every step maps them anew and touches every 4 KiB page for the first time: one
minor page fault each, hundreds of thousands per step, paid in kernel time. Raising the mmap threshold
and the trim threshold (the free memory at the top of the heap that malloc keeps rather than returning)
serves them from the heap instead, where freed memory is reused. Results cannot change: the same
arithmetic runs on memory from another place (both give torch its 64-byte alignment). The cost is
memory: the process keeps up to the trim threshold of freed memory instead of returning it at once, and
the heap fragments where separate mappings did not, so peak resident memory rises somewhat
(`scripts/bench_allocator.py` measures both the time and the peak; docs/benchmarks.md).

`resources.retain_freed_mib` sets both thresholds (0 leaves glibc's defaults); every CLI stage applies
it before its first large allocation. Elsewhere than Linux with glibc this does nothing and says so.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from dataclasses import asdict, dataclass

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MAX_MIB = (2**31 - 1) >> 20  # mallopt takes a C int


@dataclass(frozen=True)
class AllocatorSetting:
    """What `retain_freed_memory` did, for a benchmark's or a log's record."""

    retain_freed_mib: int
    applied: bool
    reason: str

    def as_dict(self) -> dict:
        return asdict(self)


def _libc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def retain_freed_memory(mib: int) -> AllocatorSetting:
    """Serve allocations of up to `mib` MiB from the heap and keep up to `mib` MiB of freed memory (0:
    glibc's defaults, untouched)."""
    if mib <= 0:
        return AllocatorSetting(0, False, "resources.retain_freed_mib is 0: glibc's default thresholds")
    mib = min(int(mib), MAX_MIB)
    libc = _libc()
    if libc is None:
        return AllocatorSetting(mib, False, f"not glibc ({platform.system()} {platform.libc_ver()[0] or ''}): "
                                            "the system allocator's defaults")
    limit = mib << 20
    if not (libc.mallopt(M_MMAP_THRESHOLD, limit) and libc.mallopt(M_TRIM_THRESHOLD, limit)):
        return AllocatorSetting(mib, False, "glibc's mallopt refused the thresholds: its defaults stay")
    return AllocatorSetting(mib, True, f"glibc mmap and trim thresholds set to {mib} MiB")
