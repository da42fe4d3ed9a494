"""Training curves: what is logged, a resumed run logs every step once, the experiment's curves gathered,
the logging frequency never changes a training key, and the curves reach the figures and `dvc plots`."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import replace

import pandas as pd
import pytest
from conftest import TRAINED, copy_data

from gatedsae.activations.store import ActivationStore
from gatedsae.plan.config import load_config
from gatedsae.plan.grid import grid_specs
from gatedsae.plan.identity import training_key
from gatedsae.reporting.curves_table import gather_curves
from gatedsae.training.curve_log import CURVES_FILE, FIELDS
from gatedsae.training.stages import train_grid
from gatedsae.training.trainer import GridTrainer, lr_factor

SITE, LAYER = "resid_post", 1


def _trainer(config, out_dir):
    store = ActivationStore(config.paths.activations_dir("tiny", "tiny", SITE, LAYER), "train")
    return GridTrainer(config, store, out_dir)


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_sae_is_logged_every_n_steps_with_its_losses_averaged_since_the_last_row_and_lr(smoke_cache, tmp_path):
    trainer = _trainer(smoke_cache, tmp_path)
    every, steps = smoke_cache.train.log_every_steps, trainer.steps
    assert every == 4 and steps % every == 0
    each_step = []  # every step's own losses, as the step computed them
    step_once = trainer._train_step

    def stepped(x):
        step_once(x)
        each_step.append({name: dict(losses) for name, losses in trainer.last_losses.items()})

    trainer._train_step = stepped
    trainer.run(progress=False)
    rows = _rows(tmp_path / CURVES_FILE)
    assert list(rows[0]) == list(FIELDS)
    for spec in trainer.specs:
        mine = [row for row in rows if row["sae"] == spec.name]
        assert [int(row["step"]) for row in mine] == list(range(every, steps + 1, every))
        for row in mine:  # the mean over the steps since the previous row, not the last batch's value
            interval = each_step[int(row["step"]) - every:int(row["step"])]
            for term in ("total", "reconstruction", "sparsity", "auxiliary", "l0"):
                mean = sum(s[spec.name][term] for s in interval) / every
                assert float(row[term]) == pytest.approx(mean, rel=1e-5, abs=1e-7), term
        last_batch = trainer.last_losses[spec.name]["reconstruction"]
        assert float(mine[-1]["reconstruction"]) != pytest.approx(last_batch, rel=1e-7)  # the batches differ
        for row in mine:
            step = int(row["step"])
            expected_lr = spec.lr * lr_factor(step - 1, trainer.train, trainer.resample_steps)
            assert float(row["lr"]) == pytest.approx(expected_lr, rel=1e-5)
            assert 0.0 <= float(row["dead_fraction"]) <= 1.0 and int(row["tokens"]) == step * trainer.train.batch_size
    warm = [float(r["lr"]) for r in rows if r["sae"] == trainer.specs[0].name]
    assert warm[0] < warm[-1] or trainer.train.lr_warmup_steps < every  # the schedule shows


@pytest.mark.parametrize("every", [4, 3])  # 3: the state is saved in the middle of an interval
def test_a_resumed_run_appends_without_duplicates(smoke_cache, tmp_path, every):
    smoke_cache = replace(smoke_cache, train=replace(smoke_cache.train, log_every_steps=every))
    reference = _trainer(smoke_cache, tmp_path / "reference")
    reference.run(progress=False)
    killed = _trainer(smoke_cache, tmp_path / "resumed")
    killed.run(progress=False, stop_after=13)  # state saved at step 8; rows for 12 are written, then "killed"
    with open(tmp_path / "resumed" / CURVES_FILE, "a") as handle:
        handle.write("gated_w64_l1_0.01,gated,0.0")  # a row cut short by the kill
    assert {int(r["step"]) for r in _rows(tmp_path / "resumed" / CURVES_FILE) if r["step"]} >= {12}
    _trainer(smoke_cache, tmp_path / "resumed").run(progress=False)  # resumes at step 8
    resumed = _rows(tmp_path / "resumed" / CURVES_FILE)
    keys = [(r["sae"], r["step"]) for r in resumed]
    assert len(keys) == len(set(keys)), "a step logged twice"
    order = lambda rows: sorted(rows, key=lambda r: (r["sae"], int(r["step"])))  # noqa: E731
    assert order(resumed) == order(_rows(tmp_path / "reference" / CURVES_FILE))  # same values, too


def test_logging_frequency_changes_no_training_key_or_job_params():
    from gatedsae.plan.workflow import ExperimentPlan

    config = load_config(["experiment=smoke"])
    spec = grid_specs(config, config.model.site_width(SITE), SITE)[0]
    for every in (0, 1, 100):
        other = replace(config, train=replace(config.train, log_every_steps=every))
        assert training_key(other, SITE, spec) == training_key(config, SITE, spec)
    assert ExperimentPlan("smoke", ["train.log_every_steps=1"]).params("train") == ExperimentPlan("smoke").params("train")
    with pytest.raises(Exception, match="train.log_every_steps"):
        load_config(["experiment=smoke", "train.log_every_steps=-1"])


def test_no_curves_when_logging_is_off(smoke_cache, tmp_path):
    config = replace(smoke_cache, train=replace(smoke_cache.train, log_every_steps=0))
    _trainer(config, tmp_path).run(progress=False, stop_after=5)
    assert not (tmp_path / CURVES_FILE).exists()


@pytest.fixture(scope="module")
def gathered(smoke_trained, tmp_path_factory):
    """Two sites' grids trained, one grid's baseline rows removed (SAEs trained before curves existed),
    and the experiment's curves gathered: (config, the trained resid_post grid's index, curves.csv)."""
    tmp_path = tmp_path_factory.mktemp("gathered")
    # The session's grids (training finds them finished), without Fig. 9's variant: only the sweeps' curves.
    config = copy_data(smoke_trained, tmp_path, TRAINED, "sweep.rescale_shift=false")
    config = replace(config, experiment=replace(config.experiment, sites=[SITE, "mlp_out"],
                                                results_dir=str(tmp_path / "results")))
    index = json.loads(train_grid(config, SITE, LAYER, progress=False).read_text())
    train_grid(config, "mlp_out", LAYER, progress=False)
    grid_dir = config.paths.checkpoints_dir("tiny", "tiny", "mlp_out", LAYER, "smoke")
    kept = [r for r in _rows(grid_dir / CURVES_FILE) if not r["sae"].startswith("baseline")]
    with open(grid_dir / CURVES_FILE, "w", newline="") as handle:
        writer = csv.DictWriter(handle, FIELDS)
        writer.writeheader()
        writer.writerows(kept)
    return config, index, gather_curves(config)


def test_the_experiments_curves_are_gathered_for_every_trained_sae(gathered):
    config, index, curves = gathered
    frame = pd.read_csv(curves)
    resid = frame[frame["site"] == SITE]
    assert set(resid["sae"]) == {entry["sae"] for entry in index["saes"]}
    assert set(frame[frame["site"] == "mlp_out"]["arch"]) == {"gated"}
    assert (resid.groupby("sae")["step"].max() == config.train.steps).all()


def test_saes_without_curves_are_named(gathered, capsys):
    gather_curves(gathered[0])
    assert f"{2 * gathered[0].train.seeds} SAEs have no training curves" in capsys.readouterr().out  # 2 λ × seeds


def test_dvc_plots_show_draws_the_training_curves_where_the_pipeline_writes_them(gathered, tmp_path):
    """dvc.yaml's plots read by `dvc plots show` in a copy of the repository's DVC files, from the curves and
    the Pareto table of a smoke run placed where the pipeline writes them (results/<experiment>/, as the
    Snakefile's plan names it; params.yaml picks the experiment)."""
    import os
    import subprocess
    import sys

    from gatedsae.plan.config import REPO_ROOT
    from gatedsae.plan.workflow import ExperimentPlan

    plan = ExperimentPlan("smoke")
    curves = tmp_path / plan.curves()
    curves.parent.mkdir(parents=True)
    shutil.copy(gathered[2], curves)
    pareto = tmp_path / plan.aggregate_outputs()["pareto"]
    pd.DataFrame({"l0": [3.0, 5.0], "loss_recovered": [0.5, 0.7]}).to_csv(pareto, index=False)
    shutil.copy(REPO_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    (tmp_path / "params.yaml").write_text("experiment: smoke\n")
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, capture_output=True)
    shutil.copytree(REPO_ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    shown = subprocess.run([*dvc, "plots", "show", "--json"], cwd=tmp_path, check=True, capture_output=True, text=True,
                           env={**os.environ, "DVC_NO_ANALYTICS": "1"})
    plots = json.loads(shown.stdout)["data"]
    rows = len(pd.read_csv(curves))
    for name, column in (("training loss", "total"), ("training L0", "l0"), ("training dead fraction", "dead_fraction"),
                         ("training learning rate", "lr"), ("training reconstruction loss", "reconstruction")):
        content = plots[name][0]["content"]
        assert content["spec"]["encoding"]["y"]["field"] == column
        assert content["spec"]["encoding"]["color"]["field"] == "arch" and content["facet"]["column"]["field"] == "site"
        assert len(content["data"]["values"]) == rows > 0
    assert len(plots[plan.aggregate_outputs()["pareto"]][0]["content"]["data"]["values"]) == 2
