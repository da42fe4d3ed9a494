"""Why a cluster job failed, in the project's terms. The SLURM executor reports a job killed for its
memory as a failed SLURM job ('FAILED' or 'OUT_OF_MEMORY') and points at SLURM's log of the job; this
reads that log and says which rule ran out of memory and which setting to raise (the Snakefile's
`onerror` prints it at the end of a failed run)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from gatedsae.plan.sites import SITES

# What slurmstepd writes when a job goes over its --mem: polled accounting (jobacct_gather with
# OverMemoryKill) or the cgroup OOM killer.
EXCEEDED = re.compile(r"exceeded (?:job )?memory limit(?: \((\d+) > (\d+)\))?", re.IGNORECASE)
OOM_MARKERS = ("oom_kill event", "oom-kill", "out_of_memory", "out of memory")
ERROR_BLOCK = re.compile(r"^Error in rule (\w+):\n((?:[ \t]+.*\n?)*)", re.MULTILINE)
SLURM_LOG = re.compile(r"(/\S*slurm_logs/\S+?\.log)")


@dataclass
class MemoryFailure:
    rule: str
    site: str | None  # the job's site wildcard, for rules sized per site
    slurm_log: Path
    limit_mb: int | None  # the job's --mem when SLURM's message gives it

    def advice(self, requested_mb: int) -> str:
        limit = self.limit_mb or requested_mb
        suggestion = max(2 * limit, requested_mb)  # at least the estimate's request, which may have been overridden
        asked = f" (--mem {limit} MB)" if self.limit_mb else ""
        return (f"rule {self.rule} ran out of memory: SLURM killed the job at its memory request{asked}, see "
                f"{self.slurm_log}. Raise the rule's mem_mb: `--set-resources {self.rule}:mem_mb={suggestion}` on "
                f"the command line, or under set-resources in your profile (the estimates ask for "
                f"{requested_mb} MB: gatedsae.plan.scheduling).")


def memory_failures(snakemake_log: str) -> list[MemoryFailure]:
    """Jobs of a Snakemake log (its text) that SLURM killed for their memory."""
    found = []
    for rule, block in ERROR_BLOCK.findall(snakemake_log):
        if "SLURM" not in block:
            continue
        for path in dict.fromkeys(SLURM_LOG.findall(block)):
            text = _read(Path(path))
            match = EXCEEDED.search(text)
            if match or any(marker in text.lower() for marker in OOM_MARKERS) or "OUT_OF_MEMORY" in block:
                limit = int(match.group(2)) // 2**20 if match and match.group(2) else None
                found.append(MemoryFailure(rule, _site(Path(path)), Path(path), limit))
    return found


def _site(slurm_log: Path) -> str | None:
    """The site of a job sized per site: its wildcards name SLURM's log folder (model_corpus_site_layer_sweep)."""
    wildcards = f"_{slurm_log.parent.name}_"
    return next((site for site in SITES if f"_{site}_" in wildcards), None)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
