"""Expected failures: bad input, missing or corrupt data, a full disk, a job too large for the device.

Each one's message names the file (or key) and the fix. `python -m gatedsae <stage>` prints such an
error as one line and exits non-zero; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PipelineError(RuntimeError):
    """An expected failure whose message names the problem and the fix."""

    label = "error"  # how the command line introduces the message
    exit_code = 1


class IntegrityError(PipelineError):
    """A file on disk is corrupt, truncated, or disagrees with what recorded it."""

    label = "corrupt or inconsistent data"
    exit_code = 4


class StorageError(PipelineError):
    """A file could not be written: the disk is full or the path is not writable."""

    label = "cannot write"
    exit_code = 5
