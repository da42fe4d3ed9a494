"""Atomic file output: a killed job never leaves a half-written file that looks finished."""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from gatedsae.core.errors import PipelineError, StorageError

_UMASK = os.umask(0)
os.umask(_UMASK)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}
_DENIED = {errno.EACCES, errno.EPERM, errno.EROFS}
# Below this much free space a failed write is put down to a full disk: torch and numpy report a short
# write as "unexpected pos" / "requested and written" without the errno.
_NEARLY_FULL_BYTES = 1 << 20


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only if the block succeeds.
    A full disk or a permission problem is re-raised as StorageError naming `target` (the old file, if
    any, is left as it was)."""
    target = Path(target)
    with storage_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(target)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with storage_errors(target):  # the partial file still exists here, so the free space is telling
            os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give outputs the usual permissions
            yield tmp
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(target: Path) -> None:
    """Temporary files of `target` that an earlier writer left when it was killed (SIGKILL skips the
    clean-up below); only one writer writes a given target at a time (the run lock)."""
    pattern = os.path.join(glob.escape(str(target.parent)), f".{glob.escape(target.name)}.*.tmp")
    for stale in glob.glob(pattern):
        Path(stale).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, staging_name: Optional[str] = None) -> Iterator[Path]:
    """Yield an empty staging folder beside `target`; swap it in whole for `target` only if the block
    succeeds (a reader never sees a half-written folder), else remove it and leave `target` as it was.
    On Linux the swap is one atomic exchange (renameat2): at every instant `target` is the old folder or
    the new one, whenever the process is killed. Elsewhere it is two renames; a kill between them leaves
    the old folder as `.<name>.old`, which the next call (or `restore_directory`) puts back first."""
    target = Path(target)
    restore_directory(target)
    staging = target.with_name(staging_name or f".{target.name}.staging")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with storage_errors(staging):
            staging.mkdir(parents=True)
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if target.exists() and _exchange(staging, target):
        shutil.rmtree(staging, ignore_errors=True)  # now the old folder
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def restore_directory(target: Path) -> None:
    """Put back the old folder that a swap killed between its two renames left as `.<name>.old`."""
    old = Path(target).with_name(f".{Path(target).name}.old")
    if old.is_dir() and not Path(target).exists():
        old.rename(target)


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):  # a libc without it (glibc < 2.28, musl)
        return False
    at_fdcwd = -100
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0


@contextlib.contextmanager
def storage_errors(target: str | os.PathLike) -> Iterator[None]:
    """Re-raise a failed write as StorageError naming `target`, the free space and the fix."""
    try:
        yield
    except PipelineError:  # already says what went wrong
        raise
    except Exception as error:
        problem = _storage_problem(error, Path(target))
        if problem is None:
            raise
        raise StorageError(problem) from error


def _storage_problem(error: BaseException, target: Path) -> Optional[str]:
    chain, cause = [], error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    codes = {getattr(e, "errno", None) for e in chain}
    text = " ".join(str(e) for e in chain)
    free, total, mount = disk_space(target)
    if codes & _DENIED:
        return (f"{target}: permission denied ({text}). Make {_existing(target)} writable (or point paths.data at a "
                "writable folder), then run the same command again: finished work is kept.")
    full = (codes & _DISK_FULL or "No space left on device" in text or "os error 28" in text
            or (isinstance(error, (OSError, RuntimeError)) and free < _NEARLY_FULL_BYTES))
    if full:
        return (f"{target}: the disk is full ({format_bytes(free)} free of {format_bytes(total)} on {mount}). "
                "Free some space (or point paths.data at a larger disk), then run the same command again: "
                "finished work is kept.")
    return None


def disk_space(path: str | os.PathLike) -> tuple[int, int, Path]:
    """(free bytes for this user, total bytes, mount point) of the file system holding `path`."""
    existing = _existing(Path(path))
    usage = shutil.disk_usage(existing)
    mount = existing.resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    return usage.free, usage.total, mount


def _existing(path: Path) -> Path:
    """`path` or its nearest existing ancestor."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def write_json_atomic(target: str | os.PathLike, data: Any) -> None:
    write_text_atomic(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def sha256_file(path: str | os.PathLike, chunk_bytes: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()
