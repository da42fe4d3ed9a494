"""JSON records that carry their own sha256, and the one reader of every JSON file a number depends on.

A sealed record (a grid index, a training record, a grid's evaluation, a tokens manifest, an outputs
record) holds `content_sha256`: the sha256 of its other keys in canonical form. Written atomically, so a
killed writer leaves the old file or the new one; the seal catches what atomicity cannot (a flipped bit,
a hand edit, a truncated copy). `read_json` parses any of them so that a broken file is one line naming
it and the command that rebuilds it, never a traceback. Records written before seals existed have none
and are read as they are (their readers still check their structure).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Optional

from gatedsae.core.atomic import write_json_atomic
from gatedsae.core.errors import IntegrityError

SEAL = "content_sha256"
REBUILD = "Run the pipeline again (make run, or Snakemake): it rebuilds it."
REEVALUATE = ("Run the pipeline again (make run, or `python -m gatedsae evaluate --site=S --layer=L …`): it "
              "re-evaluates it.")


def _normalized(payload: dict) -> dict:
    """`payload` as it reads back from JSON (tuples as lists, keys as strings), without its seal."""
    return json.loads(json.dumps({key: value for key, value in payload.items() if key != SEAL}))


def content_sha256(payload: dict) -> str:
    canonical = json.dumps(_normalized(payload), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def sealed(payload: dict) -> dict:
    plain = _normalized(payload)
    return {**plain, SEAL: content_sha256(plain)}


def write_sealed_json(target: str | os.PathLike, payload: dict) -> None:
    write_json_atomic(target, sealed(payload))


def seal_problem(data: dict) -> Optional[str]:
    """Why a parsed record is not what was written (None when its seal holds, or it has none)."""
    if SEAL not in data:
        return None
    if data[SEAL] != content_sha256(data):
        return "does not match the sha256 it was written with: it is corrupt or was edited"
    return None


def read_json(path: str | os.PathLike, repair: str, kind: type = dict) -> Any:
    """The parsed content of `path`, its seal checked if it has one; IntegrityError naming the file and
    `repair` (the command that rebuilds it) when it is missing, truncated, not JSON, not a `kind`, or
    does not match its seal."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise IntegrityError(f"{path} is missing. {repair}") from None
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise IntegrityError(f"{path} is not valid JSON ({type(error).__name__}: {error}): it is truncated or "
                             f"corrupt. {repair}") from None
    if not isinstance(data, kind):
        raise IntegrityError(f"{path} holds a JSON {type(data).__name__}, not a {kind.__name__}: it is corrupt. {repair}")
    problem = seal_problem(data) if isinstance(data, dict) else None
    if problem is not None:
        raise IntegrityError(f"{path} {problem}. {repair}")
    return data
