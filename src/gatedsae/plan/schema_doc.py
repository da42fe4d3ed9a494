"""The configuration schema described for people: every key of the typed dataclasses behind conf/, with its
type and its one-line meaning (the comment beside the field in the schema's source, or the one above it).

`--help` pages, `python -m gatedsae config` and the did-you-mean of an unknown key all read this, so the
description can never drift from the schema itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import typing
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Optional

FIELD_LINE = re.compile(r"^    (\w+): [^=#]+?(?:=.*?)?(?:#\s?(.*))?$")
COMMENT_LINE = re.compile(r"^    #\s?(.*)$")


@dataclass(frozen=True)
class KeyDoc:
    key: str        # the full dotted key, e.g. "train.tokens" ("sweep.groups.<i>.l1" inside a list)
    type: str       # as written in the schema, e.g. "int", "Optional[int]", "list[float]"
    meaning: str    # one line ("" when the schema says nothing)


def _clean_type(hint: Any) -> str:
    text = hint if isinstance(hint, str) else getattr(hint, "__name__", str(hint))
    return str(text).replace("typing.", "")


@lru_cache(maxsize=None)
def field_comments(schema: type) -> dict[str, str]:
    """{field: its comment}: the comment on the field's own line, else the comment block right above it
    (first sentence). A comment continued with "..." onto the next field stays with each."""
    try:
        lines = inspect.getsource(schema).splitlines()
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in lines:
        comment = COMMENT_LINE.match(line)
        if comment:
            above.append(comment.group(1).strip())
            continue
        found = FIELD_LINE.match(line)
        if found and not line.lstrip().startswith(("def ", "@")):
            name, inline = found.group(1), (found.group(2) or "").strip()
            text = inline or " ".join(above)
            comments[name] = _first_sentence(text)
        above = [] if not comment else above
    return comments


SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]])\. (?=[A-Z(])")
ABBREVIATION = re.compile(r"\b(?:[A-Z][a-z]{0,3}|e\.g|i\.e|etc|cf|vs)$")  # "App. D", "Fig. 9", "e.g. x"
LONGEST = 160


def _first_sentence(text: str) -> str:
    """The first sentence, on one line, clipped to LONGEST characters."""
    text = " ".join(text.split())
    for cut in SENTENCE_END.finditer(text):
        if not ABBREVIATION.search(text[: cut.start()]):
            text = text[: cut.start() + 1]
            break
    return text if len(text) <= LONGEST else text[: LONGEST - 1].rstrip() + "…"


def _inner_dataclass(hint: Any) -> tuple[Optional[type], bool]:
    """(the dataclass a field holds, whether it is a list of them), or (None, False)."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    if len(args) == 1 and dataclasses.is_dataclass(args[0]):
        return args[0], False
    return None, False


def describe_schema(schema: type, prefix: str = "") -> list[KeyDoc]:
    """Every leaf key of `schema`, depth first in field order (lists of dataclasses as `<i>`)."""
    hints = typing.get_type_hints(schema)
    comments = field_comments(schema)
    keys = []
    for item in dataclasses.fields(schema):
        key = f"{prefix}{item.name}"
        inner, listed = _inner_dataclass(hints[item.name])
        if inner is not None:
            keys += describe_schema(inner, f"{key}.<i>." if listed else f"{key}.")
        else:
            keys.append(KeyDoc(key, _clean_type(item.type), comments.get(item.name, "")))
    return keys


def section_doc(schema: type) -> str:
    """The first sentence of a section's docstring ("" when it has none of its own)."""
    doc = schema.__dict__.get("__doc__") or ""
    if doc.startswith(f"{schema.__name__}("):  # the signature dataclasses write when there is no docstring
        return ""
    first = inspect.cleandoc(doc).split("\n\n")[0].split(":\n")[0]
    return _first_sentence(first)


def resolve_key(schema: type, key: str) -> Optional[str]:
    """None when `key` (dotted, list items by index) names a field or a part of one in `schema`;
    otherwise the longest prefix that does (possibly ""), so the caller can say where it went wrong."""
    hints_of = typing.get_type_hints
    current: Optional[type] = schema
    parts = key.split(".")
    done: list[str] = []
    index = 0
    while index < len(parts):
        part = parts[index]
        if current is None:  # inside a plain value (a dict or a list of scalars): anything goes
            return None
        names = {f.name for f in dataclasses.fields(current)}
        if part not in names:
            return ".".join(done)
        inner, listed = _inner_dataclass(hints_of(current)[part])
        done.append(part)
        index += 1
        if listed and index < len(parts):
            if not parts[index].isdigit():
                return ".".join(done)
            done.append(parts[index])
            index += 1
        current = inner
    return None


def known_keys(schema: type) -> list[str]:
    """Every dotted key (sections and leaves; list items as index 0), for spelling suggestions."""
    found = []
    for doc in describe_schema(schema):
        parts = doc.key.replace("<i>", "0").split(".")
        found += [".".join(parts[: i + 1]) for i in range(len(parts))]
    return list(dict.fromkeys(found))
