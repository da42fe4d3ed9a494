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


# --- the error boundary: one line, an exit code by class, the traceback only with --debug ----------------

SMOKE_EVALUATE = ["evaluate", "experiment=smoke", "--site=resid_post", "--layer=1"]
CUDA_DEVICES = __import__("torch").cuda.device_count()


@pytest.mark.parametrize("argv, code, named", [
    (["evaluate-checkpoint", "experiment=smoke"], 2, "needs --checkpoint=DIR"),
    (["train", "experiment=smoke"], 2, "needs --layer=L"),
    (["aggregate", "experiment=smoke", "model=null"], 2, "model is one of"),
    ([*SMOKE_EVALUATE, "evaluate.device=tpu"], 2, "evaluate.device"),
    pytest.param([*SMOKE_EVALUATE, "evaluate.device=cuda:7"], 2, "'cuda:7'", marks=pytest.mark.skipif(
        CUDA_DEVICES > 7, reason="this machine has a cuda:7")),
    ([*SMOKE_EVALUATE, "train.tokens=1", "train.tokens=2"], 2, "given twice"),
    ([*SMOKE_EVALUATE, "intervals.resamples=1000000000"], 3, "intervals.resamples"),
    (["aggregate", "experiment=smoke", "study.enabled=true", "study.bootstrap=3000000000"], 3, "study.bootstrap"),
    ([*SMOKE_EVALUATE, "train.tokens=1000000000000000"], 3, "train.tokens"),
])
def test_expected_failures_are_one_line_with_the_key_and_an_exit_code_by_class(argv, code, named, tmp_path, capsys):
    assert main([*argv, f"paths.data={tmp_path}"]) == code
    err = capsys.readouterr().err
    assert named in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_a_bug_is_one_line_naming_where_and_debug_shows_the_traceback(monkeypatch, tmp_path, capsys):
    from dataclasses import replace

    from gatedsae.cli import main as cli

    def broken(config):
        return {}["missing"]

    monkeypatch.setitem(cli.STAGES, "curves", replace(cli.STAGES["curves"], run=broken))
    assert main(["curves", "experiment=smoke", f"paths.data={tmp_path}"]) == 70
    err = capsys.readouterr().err
    assert err.startswith("internal error: KeyError: 'missing' at test_cli.py:") and "--debug" in err
    assert "Traceback" not in err
    assert main(["curves", "experiment=smoke", f"paths.data={tmp_path}", "--debug"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_an_unwritable_data_folder_is_refused_before_the_stage_runs(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes anywhere (the read-only mount case is in test_faults.py)")
    tmp_path.chmod(0o500)
    try:
        assert main(["tokenize", "experiment=smoke", f"paths.data={tmp_path}"]) == 5
    finally:
        tmp_path.chmod(0o700)
    assert "paths.data" in capsys.readouterr().err
