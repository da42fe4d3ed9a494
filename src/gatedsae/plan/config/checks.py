"""What every section's validation shares: the error type, the checks that name the offending key, and
the value sets several sections allow."""

from __future__ import annotations

import math
import re
from typing import Sequence

from gatedsae.core.errors import PipelineError


DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(PipelineError, ValueError):
    """A configuration problem, found before any compute, naming the key and the fix."""

    label = "configuration error"
    exit_code = 2


def require(condition: bool, key: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config key '{key}': {message}")


def choice(value: str, key: str, allowed: Sequence[str]) -> None:
    require(value in allowed, key, f"got {value!r}; allowed values: {', '.join(map(str, allowed))}")


# Names become folder names, log paths and command-line arguments of the pipeline's jobs, so they are
# restricted to characters no shell or path gives a meaning to.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def require_safe_name(value: str, key: str) -> None:
    require(bool(SAFE_NAME.fullmatch(str(value))), key,
             f"got {value!r}; a name becomes file paths and command-line arguments, so it may hold only letters, "
             "digits, '.', '_' and '-' (starting with a letter or digit, at most 100 characters)")


def finite(value: float, key: str) -> None:
    require(isinstance(value, (int, float)) and math.isfinite(value), key, f"got {value}; must be a finite number")


def distinct(values: Sequence, key: str) -> None:
    repeated = sorted({str(v) for v in values if list(values).count(v) > 1})
    require(not repeated, key, f"lists {', '.join(repeated)} more than once; list each once")


# A device as torch names it. Whether this machine has it is checked when a stage starts
# (plan/preflight.check_devices), since the workflow may be planned on another machine than it runs on.
DEVICE = re.compile(r"cpu|cuda(:\d+)?|mps")


def device(value: str, key: str) -> None:
    require(bool(DEVICE.fullmatch(str(value))), key, f"got {value!r}; a device is cpu, cuda, cuda:N (N the GPU's "
            "index) or mps")
