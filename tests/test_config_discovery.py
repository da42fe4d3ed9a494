"""Finding your way in the configuration: a misspelt key or option gets "did you mean", a bare word gets the
override it probably meant, every stage's --help lists the keys it reads with their values and meanings
(generated from the schema), `config` / `--cfg` print the resolved configuration."""

from __future__ import annotations

import dataclasses
import re
import typing

import pytest
import yaml

from gatedsae.cli.main import STAGES, main
from gatedsae.plan.config import Config, ConfigError, load_config, to_dict
from gatedsae.plan.schema_doc import describe_schema, resolve_key


@pytest.mark.parametrize("override, expected", [
    ("train.token=5", "did you mean train.tokens=5"),
    ("tokens=5", "did you mean train.tokens=5"),
    ("browser.sites=attn_z", "did you mean browser.site=attn_z"),
    ("sweep.groups.0.l2=[1]", "sweep.groups.0.l1=[1]"),
    ("experiment=smok", "did you mean smoke?"),
    ("smoke", "did you mean experiment=smoke"),
    ("train.tokens", "give it one: train.tokens=<value>"),
])
def test_mistakes_get_a_message_about_the_mistake(override, expected):
    with pytest.raises(ConfigError) as raised:
        load_config(["experiment=smoke", override] if override != "smoke" else [override])
    message = str(raised.value)
    assert expected in message and "\n" not in message
    assert "+" + override not in message and "Available choices" not in message and "EQUAL" not in message


def test_valid_overrides_and_hydra_syntax_pass_the_check():
    config = load_config(["experiment=smoke", "sweep.groups.0.l1=[0.02,0.05]", "model.d_mlp=64", "seed=3"])
    assert config.sweep.groups[0].l1 == [0.02, 0.05] and config.seed == 3
    assert resolve_key(Config, "verdict.paper_matched_l0.0.site") is None
    assert resolve_key(Config, "sweep.groups.x.l1") == "sweep.groups"


def test_every_stage_help_lists_the_keys_it_reads_with_values_and_meanings(capsys):
    hints = typing.get_type_hints(Config)
    for name, stage in STAGES.items():
        assert main([name, "--help", "experiment=smoke"]) == 0, name
        out = capsys.readouterr().out
        assert "values shown for experiment=smoke" in out and re.search(r"experiment +default \|", out)
        for section in stage.reads:
            if dataclasses.is_dataclass(hints[section]):
                keys = [doc.key for doc in describe_schema(hints[section], f"{section}.")]
                assert all(key in out for key in keys), (name, section)
    assert main(["browse", "--help"]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if line.strip().startswith("browser.site ="))
    assert "resid_post" in line  # the value for experiment=default
    meaning = next(line for line in out.splitlines() if line.strip().startswith("browser.features ="))
    assert "features sampled per SAE" in meaning


def test_config_and_cfg_print_the_resolved_configuration(capsys):
    assert main(["config", "experiment=smoke", "train.tokens=2048"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load(yaml.safe_dump(to_dict(load_config(["experiment=smoke", "train.tokens=2048"]))))
    assert main(["figures", "experiment=smoke", "--cfg"]) == 0  # prints instead of running
    assert yaml.safe_load(capsys.readouterr().out)["experiment"]["name"] == "smoke"


def test_a_missing_checkpoint_is_not_found(capsys, tmp_path):
    assert main(["evaluate-checkpoint", f"--checkpoint={tmp_path / 'nope'}", "experiment=smoke"]) == 4
    error = capsys.readouterr().err
    assert "not found" in error and "retrain" not in error.lower()
    assert main(["evaluate-checkpoint", f"--checkpoint={tmp_path}", "experiment=smoke"]) == 4
    assert "is not a checkpoint" in capsys.readouterr().err
