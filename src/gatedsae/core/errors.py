"""Expected failures and the one error boundary of the command line.

Every expected failure (bad input, missing or corrupt data, a full disk, a job too large for the device)
is a `PipelineError` whose message names the file (or key) and the fix; its class gives the exit code.
`guarded` runs a stage so that whatever stops it, expected or not, is one line on stderr with that code;
the traceback only with `--debug` (or GATEDSAE_DEBUG=1).

| code | class | raised as |
|---|---|---|
| 2 | configuration: a key, a value, an option, a device | `ConfigError` (plan/config.py) |
| 3 | resources: memory, time, disk, found before compute | `ResourceError` (plan/preflight.py), `MemoryError` |
| 4 | data: an input missing, corrupt or malformed | `IntegrityError`, `InputError`, `FileNotFoundError` |
| 5 | cannot write: disk full, permission, read-only | `StorageError`, another `OSError` |
| 6 | run lock: another run works in the directory | (cli/runlock.py) |
| 1 | another expected failure (a download, a failed chapter) | `PipelineError` |
| 70 | a bug: the line says where; `--debug` shows the traceback | anything else |
| 130 | interrupted (Ctrl-C) | `KeyboardInterrupt` |

A new class of failure is a `PipelineError` subclass with its `label` and `exit_code`; nothing else
changes.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Callable

BUG = 70  # EX_SOFTWARE (sysexits.h)
INTERRUPTED = 130


class PipelineError(RuntimeError):
    """An expected failure whose message names the problem and the fix."""

    label = "error"  # how the command line introduces the message
    exit_code = 1


class IntegrityError(PipelineError):
    """A file on disk is corrupt, truncated, or disagrees with what recorded it."""

    label = "corrupt or inconsistent data"
    exit_code = 4


class InputError(PipelineError):
    """A file the user gave (a rater's ratings, a checkpoint to evaluate) is missing or malformed."""

    label = "bad input file"
    exit_code = 4


class StorageError(PipelineError):
    """A file could not be written: the disk is full or the path is not writable."""

    label = "cannot write"
    exit_code = 5


# ---------------------------------------------------------------------------------------------------
# The boundary.


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("GATEDSAE_DEBUG", "") not in ("", "0")


def classify(error: BaseException) -> tuple[str, int]:
    """(how the line begins, exit code) of a failure."""
    if isinstance(error, PipelineError):
        return error.label, error.exit_code
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", INTERRUPTED
    if isinstance(error, MemoryError):  # numpy's ArrayMemoryError too
        return "out of memory", 3
    if isinstance(error, (FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return "missing input", 4
    if isinstance(error, OSError):
        return "cannot read or write", 5
    return "internal error", BUG


def failure_line(error: BaseException) -> str:
    """The one line: the error's own message, and for a bug where it happened and what to do."""
    label, code = classify(error)
    if code == BUG:
        frame = traceback.extract_tb(error.__traceback__)[-1] if error.__traceback__ else None
        where = f" at {Path(frame.filename).name}:{frame.lineno}" if frame else ""
        text = str(error).split("\n")[0]
        return (f"{label}: {type(error).__name__}: {text}{where}. This is a bug: run the same command with --debug "
                "for the traceback, and report it with that output")
    text = str(error)
    if isinstance(error, MemoryError) and not isinstance(error, PipelineError):
        text = f"{text or 'an allocation failed'}; lower the size named in the configuration (or free memory)"
    return f"{label}: {text}"


def guarded(run: Callable[[], None], debug: bool = False) -> int:
    """Run `run`; 0, or the failure's exit code after printing its one line (and the traceback if `debug`)."""
    try:
        run()
    except (Exception, KeyboardInterrupt) as error:
        if debug:
            traceback.print_exc()
        print(failure_line(error), file=sys.stderr, flush=True)
        return classify(error)[1]
    return 0
