"""Command-line overrides checked against conf/ and the schema before Hydra sees them, so a mistake gets a
message about the mistake: a misspelt key gets "did you mean", a bare word gets the override it probably
meant, an unknown experiment (or model, corpus, ...) lists the files that exist. Hydra's own messages for
these ("use +key=value", "missing EQUAL at '<EOF>'") point the wrong way."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Optional, Sequence

from gatedsae.plan.schema_doc import known_keys, resolve_key

HELP = "`python -m gatedsae config` prints every key and its value; `python -m gatedsae <stage> --help` lists them"


def groups(conf_dir: Path) -> dict[str, list[str]]:
    """{config group: its options}: the folders of conf/ and the YAML files in each."""
    return {folder.name: sorted(path.stem for path in folder.glob("*.yaml"))
            for folder in sorted(Path(conf_dir).iterdir()) if folder.is_dir()}


def suggestions(word: str, candidates: Sequence[str], count: int = 3) -> list[str]:
    """Candidates close to `word`, best first: by the whole string, then by its last dotted part."""
    close = difflib.get_close_matches(word, candidates, n=count, cutoff=0.6)
    tail = word.rsplit(".", 1)[-1]
    by_tail = [c for c in candidates if difflib.get_close_matches(tail, [c.rsplit(".", 1)[-1]], cutoff=0.8)]
    return list(dict.fromkeys(close + sorted(by_tail, key=len)))[:count]


def _did_you_mean(options: list[str]) -> str:
    return f"; did you mean {' or '.join(options)}?" if options else ""


def override_problem(overrides: Sequence[str], schema: type, conf_dir: Path) -> Optional[str]:
    """What is wrong with the first override that names no group option or schema key (None: nothing)."""
    available = groups(conf_dir)
    for override in overrides:
        if override.startswith(("+", "~", "hydra.")):  # Hydra's own syntax: left to Hydra
            continue
        if "=" not in override:
            return bare_word(override, schema, available)
        key, value = (part.strip() for part in override.split("=", 1))
        if key in available:
            options = available[key]
            if value not in options:
                return (f"{key}={value}: conf/{key}/{value}.yaml does not exist{_did_you_mean(suggestions(value, options))} "
                        f"({key} is one of: {', '.join(options)})")
            continue
        if resolve_key(schema, key) is not None:
            options = suggestions(key, known_keys(schema))
            return (f"config key '{key}' does not exist{_did_you_mean([o + '=' + value for o in options])} "
                    f"({HELP})")
    return None


def bare_word(word: str, schema: type, available: dict[str, list[str]]) -> str:
    """The message for an argument that is not key=value."""
    owners = [group for group, options in available.items() if word in options]
    if owners:
        guess = " or ".join(f"{group}={word}" for group in owners)
        return f"'{word}' is not an override (they are key=value); did you mean {guess}?"
    if resolve_key(schema, word) is None:
        return f"'{word}' has no value; give it one: {word}=<value> ({HELP})"
    near = suggestions(word, [f"{group}={option}" for group, options in available.items() for option in options]
                       + known_keys(schema))
    return f"'{word}' is not an override (they are key=value){_did_you_mean(near)} ({HELP})"


def conflicting_override(overrides: Sequence[str]) -> Optional[str]:
    """A key given twice with different values (Hydra would keep the last, silently), or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException:
        return None  # a malformed override: Hydra's own message names it
    seen: dict = {}
    for override in parsed:
        key, value = override.key_or_group, override.value()
        if key in seen and seen[key] != value:
            return f"config key '{key}' is given twice with different values ({seen[key]!r} and {value!r}); give it once"
        seen[key] = value
    return None


NOT_IN_YAML = re.compile(r"Could not override '([^']+)'")


def schema_key_not_in_yaml(hydra_message: str, overrides: list[str], schema: type) -> Optional[int]:
    """The index of the override Hydra refused because no YAML file sets its key, when the schema has the
    key (so it can be added); None otherwise."""
    found = NOT_IN_YAML.search(hydra_message)
    if not found or resolve_key(schema, found.group(1)) is not None:
        return None
    return next((i for i, o in enumerate(overrides) if not o.startswith(("+", "~"))
                 and o.split("=", 1)[0].strip() == found.group(1)), None)
