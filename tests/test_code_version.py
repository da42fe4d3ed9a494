"""Provenance names the commit a run used, and says `-dirty` only when the code differs from it."""

import subprocess

import pytest

from gatedsae.core.codehash import code_version


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture()
def repo(tmp_path):
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "config", "user.email", "t@example.org")
    _git(tmp_path, "config", "user.name", "t")
    (tmp_path / "train.py").write_text("step = 1\n")
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "first")
    return tmp_path


def test_clean_checkout_is_its_commit(repo):
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True,
                          text=True, check=True).stdout.strip()
    assert code_version(repo) == head


def test_the_runs_own_lock_file_does_not_make_it_dirty(repo):
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    (repo / "results.csv").write_text("untracked output\n")
    assert not code_version(repo).endswith("-dirty")


def test_changed_code_makes_it_dirty(repo):
    (repo / "train.py").write_text("step = 2\n")
    assert code_version(repo).endswith("-dirty")


def test_outside_a_repository_it_says_unknown(tmp_path):
    assert code_version(tmp_path / "nowhere") == "unknown"
