"""A scratch `git clone` of the repository as a newcomer gets it (with the working tree's uncommitted
changes committed in it, so the tests see the code under test), and commands run in such a clone: the
workflow tests and the cluster tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from gatedsae.plan.config import REPO_ROOT


def env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(args: list[str], cwd: Path, timeout: int = 600, wrap=None, check: bool = True,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    """`args` in `cwd` (a scratch clone runs its own code and conf/); `wrap(args, cwd)` runs them elsewhere,
    e.g. inside a local cluster's namespaces."""
    environment = env() | (extra_env or {})
    if (Path(cwd) / "src" / "gatedsae").is_dir():
        environment["PYTHONPATH"] = str(Path(cwd) / "src")
    command = wrap(args, cwd) if wrap else args
    result = subprocess.run(command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def snakemake(*args: str, cwd: Path, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "snakemake", *args], cwd, timeout, **kwargs)


def git(*args: str, cwd: Path) -> str:
    return run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd).stdout


def clone_repository(target: Path) -> Path:
    """`git clone` of this repository into `target`, the working tree's changes (staged or not)
    committed in it."""
    run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO_ROOT), str(target)], target.parent)

    def listed(*args: str) -> list[str]:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.split()

    # Staged or not: every file that differs from HEAD, and every untracked file git does not ignore.
    changed = listed("diff", "HEAD", "--name-only") + listed("ls-files", "--others", "--exclude-standard")
    deleted = set(listed("diff", "HEAD", "--name-only", "--diff-filter=D"))
    for name in changed:
        if name in deleted:
            (target / name).unlink(missing_ok=True)
        elif (REPO_ROOT / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, target / name)
    git("add", "-A", cwd=target)
    if git("status", "--porcelain", cwd=target).strip():
        git("commit", "--quiet", "-m", "working tree under test", cwd=target)
    return target
