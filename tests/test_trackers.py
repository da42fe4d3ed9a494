"""The optional experiment tracker (train.tracker): off by default, refused before compute when its package is
missing, never part of a training key, and when on it receives the same rows as curves.csv."""

from __future__ import annotations

import csv
from dataclasses import replace

import pytest

from gatedsae.activations.store import ActivationStore
from gatedsae.plan.config import ConfigError, load_config
from gatedsae.plan.grid import grid_specs
from gatedsae.plan.identity import training_key
from gatedsae.training.curve_log import CURVES_FILE
from gatedsae.training.trainer import GridTrainer

SITE, LAYER = "resid_post", 1


def _with_tracker(config, kind):
    return replace(config, train=replace(config.train, tracker=kind))


def test_the_tracker_is_off_by_default_and_changes_no_training_key():
    config = load_config(["experiment=smoke"])
    assert config.train.tracker == "none"
    spec = grid_specs(config, config.model.site_width(SITE), SITE)[0]
    assert training_key(_with_tracker(config, "wandb"), SITE, spec) == training_key(config, SITE, spec)
    with pytest.raises(ConfigError, match="train.tracker"):
        load_config(["experiment=smoke", "train.tracker=tensorboard"])


def test_a_missing_tracker_package_is_refused_before_compute(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "dvclive" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install dvclive"):
        load_config(["experiment=smoke", "train.tracker=dvclive"])


def _train(config, directory):
    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "train")
    trainer = GridTrainer(config, store, directory)
    trainer.run(progress=False)
    with open(directory / CURVES_FILE, newline="") as handle:
        return trainer, list(csv.DictReader(handle))


class FakeRun:
    """What the trainer sends to wandb: init's arguments, every log call, whether it finished."""

    def __init__(self, **kwargs):
        self.init, self.logged, self.finished = kwargs, [], False

    def log(self, metrics, step):
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def test_the_tracker_receives_the_rows_of_curves_csv(smoke_cache, tmp_path, monkeypatch):
    import sys
    import types

    runs = []
    fake = types.ModuleType("wandb")
    fake.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.chdir(tmp_path)
    trainer, rows = _train(_with_tracker(smoke_cache, "wandb"), tmp_path / "grid")
    (run,) = runs
    assert run.finished and run.init["project"] == "gatedsae" and run.init["config"]["experiment"] == "smoke"
    sent = {(step, name): value for step, metrics in run.logged for name, value in metrics.items()}
    expected = {(int(row["step"]), f"{row['sae']}/{name}"): float(row[name]) for row in rows
                for name in ("total", "reconstruction", "sparsity", "auxiliary", "l0", "dead_fraction", "lr")}
    assert sent == expected and len({step for step, _ in run.logged}) == len(run.logged)


@pytest.mark.slow
def test_wandb_runs_offline_with_the_installed_release(smoke_cache, tmp_path, monkeypatch):
    """The same calls against the real package, offline: the run is written under logs/<experiment>/wandb."""
    pytest.importorskip("wandb")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = replace(_with_tracker(smoke_cache, "wandb"), train=replace(smoke_cache.train, tracker="wandb", tokens=1024))
    _train(config, tmp_path / "grid")
    (run,) = (tmp_path / "logs" / "smoke" / "wandb").glob("offline-run-*/run-*.wandb")
    assert run.stat().st_size > 0


def test_dvclive_writes_each_saes_curves_where_dvc_plots_reads_them(smoke_cache, tmp_path, monkeypatch):
    """Runs where dvclive is installed (`pip install dvclive`; it is not in requirements.lock)."""
    pytest.importorskip("dvclive")
    monkeypatch.chdir(tmp_path)
    config = replace(smoke_cache, train=replace(smoke_cache.train, tracker="dvclive", tokens=1024))
    trainer, rows = _train(config, tmp_path / "grid")
    (run,) = {path.parents[3] for path in (tmp_path / "logs" / "smoke" / "dvclive").rglob("plots/metrics/*/total.tsv")}
    for spec in trainer.specs:
        with open(run / "plots" / "metrics" / spec.name / "total.tsv", newline="") as handle:
            logged = [(int(r["step"]), float(r["total"])) for r in csv.DictReader(handle, delimiter="\t")]
        assert logged == [(int(r["step"]), float(r["total"])) for r in rows if r["sae"] == spec.name]
