"""What a stage's `--help` says about configuration, and the resolved configuration printed by `config` and
`--cfg`: the config groups with their options, then each key the stage reads with its value and its
one-line meaning, all generated from conf/ and the typed schema (gatedsae.plan.schema_doc)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Optional, Sequence

import yaml

from gatedsae.plan.config import CONF_DIR, Config, ConfigError, load_config, to_dict
from gatedsae.plan.overrides import groups
from gatedsae.plan.schema_doc import describe_schema, section_doc

VALUE_WIDTH = 24


def _configuration(overrides: Sequence[str]) -> tuple[Optional[Config], str]:
    """The configuration the overrides give (or the default one when they do not compose), and a note
    saying which it is."""
    try:
        return load_config(list(overrides)), " ".join(overrides) or "experiment=default"
    except ConfigError as error:
        try:
            return load_config([]), f"experiment=default (your overrides do not compose: {error})"
        except ConfigError:
            return None, "none (conf/ does not compose)"


def _value_at(values: dict, key: str):
    """The value of a dotted key in `values` (a list of dataclasses is shown whole, at its first part)."""
    current = values
    for part in key.split("."):
        if part == "<i>":
            return current
        if not isinstance(current, dict) or part not in current:
            return None
        current = current[part]
    return current


def _shown(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    text = text.removesuffix("\n...").removesuffix("...").strip()
    return text if len(text) <= 60 else text[:57] + "..."


def section_lines(section: str, values: dict) -> list[str]:
    """One section's keys: `key = value   meaning`; a list of groups (sweep.groups) once per field."""
    schema = typing.get_type_hints(Config)[section]
    if section == "seed" or not dataclasses.is_dataclass(schema):
        hint = {"seed": "the seed everything derives from unless a section sets its own"}.get(section, "")
        return [f"  {section} = {_shown(values.get(section))}".ljust(VALUE_WIDTH + 20) + f"  {hint}".rstrip()]
    lines = [f"  {section}: {section_doc(schema)}".rstrip()]
    listed: set[str] = set()
    for doc in describe_schema(schema, f"{section}."):
        if "<i>" in doc.key:  # a list of records (sweep.groups): its length once, then each field
            parent = doc.key.split(".<i>.")[0]
            if parent not in listed:
                listed.add(parent)
                items = _value_at(values, parent + ".<i>") or []
                lines.append(f"    {parent} = [{len(items)} item{'s' * (len(items) != 1)}], each with:")
            lines.append(f"      {doc.key}".ljust(VALUE_WIDTH + 24) + f"  {doc.meaning}".rstrip())
            continue
        lines.append(f"    {doc.key} = {_shown(_value_at(values, doc.key))}".ljust(VALUE_WIDTH + 24)
                     + f"  {doc.meaning}".rstrip())
    return lines


def config_help(sections: Sequence[str], overrides: Sequence[str] = ()) -> str:
    """The configuration part of a stage's --help: groups with their options, then the sections it reads."""
    config, which = _configuration(overrides)
    values = to_dict(config) if config is not None else {}
    options = groups(CONF_DIR)
    width = max(map(len, options))
    lines = ["configuration: key=value overrides of conf/ (Hydra), checked against the typed schema before any",
             f"compute; values shown for {which}.",
             "  groups (choose a file of conf/<group>/ with <group>=<name>):"]
    lines += [f"    {group:<{width}}  {' | '.join(names)}" for group, names in options.items()]
    for section in sections:
        lines += [""] + section_lines(section, values)
    lines += ["", "`python -m gatedsae config [key=value ...]` prints the whole resolved configuration; `--cfg` after "
              "any stage prints it instead of running."]
    return "\n".join(lines)


def resolved_config(config: Config) -> str:
    """The resolved configuration as YAML, in the schema's order."""
    return yaml.safe_dump(to_dict(config), sort_keys=False, allow_unicode=True)


ALL_SECTIONS = tuple(f.name for f in dataclasses.fields(Config))
