"""The command line: `--help` lists every stage in one line each, every stage has its own `--help`, bad
options are refused by name, and the `gatedsae` console script points at the same entry."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import pytest

from gatedsae.cli.main import STAGES, main
from gatedsae.plan.config import REPO_ROOT


def test_help_lists_every_stage_with_one_line():
    result = subprocess.run([sys.executable, "-m", "gatedsae", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for name, stage in STAGES.items():
        (line,) = [line for line in lines if line.split()[:1] == [name]]
        assert stage.summary in line
    assert "<stage> --help" in result.stdout


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_its_own_help(stage, capsys):
    assert main([stage, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: python -m gatedsae {stage}") and STAGES[stage].options in out.splitlines()[0]
    assert "experiment=" in out


def test_unknown_stages_and_options_are_refused_by_name(capsys):
    assert main(["trian"]) == 2
    assert "unknown stage 'trian'" in capsys.readouterr().err
    assert main(["evaluate", "--lyer=1", "experiment=smoke"]) == 2
    assert "--lyer=1" in capsys.readouterr().err
    assert main(["aggregate", "--site=resid_post", "experiment=smoke"]) == 2  # aggregate takes no options


def test_the_console_script_is_the_same_entry_point():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["gatedsae"].split(":")
    assert (module, function) == ("gatedsae.__main__", "main")
