"""Run Snakemake so that a killed run never blocks the next one and two live runs never share outputs.

    python -m gatedsae.cli.runlock [snakemake arguments ...]     (what `make run` and `make replicate` call)
    python -m gatedsae.cli.runlock --unlock-only                 (remove a stale lock, run nothing)

Snakemake locks its working directory while it runs and leaves the lock behind when it is killed
(SIGKILL, OOM killer, power loss); the next run then stops and asks for `snakemake --unlock`, and
unlocking by hand while another run is alive lets two runs write the same outputs. This wrapper holds
its own lock for as long as Snakemake runs: an exclusive flock on `.snakemake/gatedsae-run.lock`
(recording its PID and command), passed to Snakemake so it lasts while either lives, and released by
the kernel when both are gone, however they died. Before starting Snakemake it checks, in order:

1. another wrapped run holds the flock: refuse, naming its PID and command;
2. a process of another run is alive in this directory (a Snakemake started without the wrapper, or a
   job of a killed run still working; found in /proc): refuse, naming it;
3. Snakemake's lock is there although no run is alive: it is stale; remove it (what
   `snakemake --unlock` does), say so, and run.

It also clears Snakemake's metadata records that Snakemake itself cannot read (a crash or a disk error
mid-write, bytes that are not JSON): Snakemake would stop every run with a traceback naming no file.
Each is removed with one line naming it and the output it described (the Snakefile does the same for
runs started without the wrapper).
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

LOCK_NAME = "gatedsae-run.lock"


class RunLockError(RuntimeError):
    """Another live run works in this directory; the message names it."""


def workdir(args: list[str]) -> Path:
    """Snakemake's working directory: --directory / -d if given, else the current one."""
    for i, arg in enumerate(args):
        if arg in ("--directory", "-d") and i + 1 < len(args):
            return Path(args[i + 1]).resolve()
        if arg.startswith("--directory="):
            return Path(arg.split("=", 1)[1]).resolve()
    return Path.cwd().resolve()


def acquire(directory: Path, command: list[str]) -> int:
    """Take the run lock of `directory` (a file descriptor holding the flock) or raise RunLockError."""
    metadata = directory / ".snakemake"
    metadata.mkdir(parents=True, exist_ok=True)
    fd = os.open(metadata / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        alive = live_processes(directory)
        working = f"; still working here: {'; '.join(alive)}" if alive else ""
        raise RunLockError(f"another run holds {directory} ({holder}{working}). Wait for it to finish, or stop it "
                           "(its jobs too), then run again. Never run `snakemake --unlock` while it lives.") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n".encode(), 0)
    return fd


def live_processes(directory: Path) -> list[str]:
    """Snakemake or pipeline-stage processes (other than this one and the processes that started it, such
    as `python -m gatedsae replicate`) whose working directory is `directory`, as 'PID: command'. Linux
    only (/proc); elsewhere an empty list."""
    found, ours = [], _ancestors()
    for entry in Path("/proc").glob("[0-9]*"):
        if int(entry.name) in ours:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if not _is_pipeline(argv) or Path(os.readlink(entry / "cwd")).resolve() != directory:
                continue
        except OSError:  # gone meanwhile, or not ours to read
            continue
        found.append(f"{entry.name}: {' '.join(a for a in argv if a)}")
    return found


def _ancestors() -> set[int]:
    """This process and every process above it (Linux /proc; just this one elsewhere)."""
    pids, pid = {os.getpid()}, os.getppid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # the field after the state: the parent's PID
        except (OSError, ValueError, IndexError):
            break
    return pids


_SHELL_PIPELINE = re.compile(r"(^|[\s/])(snakemake|-m\s+(snakemake|gatedsae))(\s|$)")


def _is_pipeline(argv: list[str]) -> bool:
    if "gatedsae.cli.runlock" in argv:
        return False  # a wrapper: its flock speaks for it (and it may be the one asking)
    names = [Path(a).name for a in argv[:3]]
    modules = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-m"]
    scripts = [a for a in argv if " " in a and "gatedsae.cli.runlock" not in a]  # `sh -c "..."` running a job
    return ("snakemake" in names or "snakemake" in modules or "gatedsae" in modules
            or any(_SHELL_PIPELINE.search(script) for script in scripts))


def holder(directory: Path) -> Optional[str]:
    """Who holds the run lock of `directory` (as recorded), or None when it is free."""
    try:
        fd = os.open(directory / ".snakemake" / LOCK_NAME, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return None
    except BlockingIOError:
        return os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown"
    finally:
        os.close(fd)  # releases the lock if this call took it


def stale_snakemake_locks(directory: Path) -> list[Path]:
    return sorted((directory / ".snakemake" / "locks").glob("*.lock"))


def prepare(directory: Path, command: list[str]) -> int:
    """Take the run lock and clear a stale Snakemake lock; returns the lock's descriptor."""
    fd = acquire(directory, command)
    alive = live_processes(directory)
    if alive:
        os.close(fd)
        raise RunLockError(f"a run not started through this wrapper is still working in {directory}: "
                           + "; ".join(alive) + ". Wait for it (or stop it), then run again.")
    stale = stale_snakemake_locks(directory)
    if stale:
        for lock in stale:
            lock.unlink(missing_ok=True)
        print(f"removed Snakemake's stale lock ({len(stale)} files in {directory / '.snakemake' / 'locks'}): the run "
              "that held it is gone and no other run is alive here", file=sys.stderr, flush=True)
    for line in clear_corrupt_metadata(directory):
        print(line, file=sys.stderr, flush=True)
    return fd


def clear_corrupt_metadata(directory: Path) -> list[str]:
    """Remove every record of `directory`/.snakemake/metadata that Snakemake could not read; one line each,
    naming the record and the output it was about. A removed record only loses what Snakemake kept on
    that output (its params, inputs and code when it was made): it is judged by its file times alone,
    and the health check (plan/health.py) still checks its contents."""
    import json

    lines = []
    for record in sorted(p for p in (directory / ".snakemake" / "metadata").rglob("*") if p.is_file()):
        try:
            data = json.loads(record.read_bytes().decode("utf-8"))
            _validate_record(data)
            continue
        except Exception as error:  # any way Snakemake's own reader would fail
            problem = f"{type(error).__name__}: {str(error)[:120]}"
        record.unlink(missing_ok=True)
        lines.append(f"removed Snakemake's corrupt metadata record {record} (for {_record_subject(record)}; {problem}): "
                     "Snakemake could not read it")
    return lines


def _validate_record(data) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"a JSON {type(data).__name__}, not an object")
    try:
        from snakemake.persistence import MetadataRecord
    except ImportError:  # another Snakemake release: parsing as JSON is the check
        return
    MetadataRecord.model_validate(data)


def _record_subject(record: Path) -> str:
    """The output file a metadata record describes (its name is the path in URL-safe base64, split in parts
    of at most NAME_MAX characters, all but the last led by '@')."""
    import base64

    root = next(parent for parent in record.parents if parent.name == "metadata")
    encoded = "".join(part.lstrip("@") for part in record.relative_to(root).parts)
    try:
        return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return "an unknown output"


def main(argv: Optional[list[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    unlock_only = args[:1] == ["--unlock-only"]
    args = args[1:] if unlock_only else args
    progress_log = None  # --progress-log=PATH: Snakemake's output to PATH, one line per job on the console
    if args and args[0].startswith("--progress-log="):
        progress_log, args = Path(args[0].split("=", 1)[1]), args[1:]
    command = [sys.executable, "-m", "snakemake", *args]
    try:
        fd = prepare(workdir(args), command)
    except RunLockError as error:
        print(f"run lock: {error}", file=sys.stderr)
        return 6
    if unlock_only:
        os.close(fd)
        return 0
    try:  # the child inherits the flock: it holds while Snakemake lives, even if this process is killed
        if progress_log is not None:
            return _with_progress(command, progress_log, fd)
        return subprocess.run(command, pass_fds=(fd,)).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        os.close(fd)


def _with_progress(command: list[str], log: Path, fd: int) -> int:
    from gatedsae.cli.progress import Progress, experiment_of, run_snakemake
    from gatedsae.plan.config import ConfigError, load_config
    from gatedsae.plan.eta import Predictor, measured_ratios, measured_site_ratios

    experiment, overrides = experiment_of(command)
    try:
        predictor = Predictor(load_config([f"experiment={experiment}", *overrides]), prior=measured_ratios(),
                              site_prior=measured_site_ratios())
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    print(f"Snakemake's full output: tail -f {log}\n"
          f"each job's own log (progress bars: tokens/s, loss, L0): {log.parent}/<rule>/..., named as long jobs "
          "start", flush=True)
    code = run_snakemake(command, log, Progress(predictor), pass_fds=(fd,))
    if code != 0:
        print(f"Snakemake stopped (exit code {code}); what it said is above and in {log}", flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
