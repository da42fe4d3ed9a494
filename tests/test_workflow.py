"""The workflow itself: dry runs of every experiment without network, the smoke DAG end to end in a
scratch copy of the repository (a second run does nothing), and `dvc repro` twice (second: no-op)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gatedsae.config import REPO_ROOT


def _env() -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def snakemake(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "snakemake", *args], cwd, timeout)


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    """The repository's tracked (and untracked, not ignored) files, copied without data or metadata."""
    listing = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO_ROOT,
                             capture_output=True, text=True)
    files = listing.stdout.split() if listing.returncode == 0 else None
    target = tmp_path_factory.mktemp("repo") / "repo"
    if files is None:  # not a git checkout: copy everything but the heavy, generated folders
        shutil.copytree(REPO_ROOT, target, ignore=shutil.ignore_patterns(".venv", "data", ".snakemake", ".git"))
    else:
        for name in files:
            if (REPO_ROOT / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO_ROOT / name, target / name)
    return target


@pytest.mark.parametrize("experiment", ["default", "gemma3", "smoke", "paper_pythia_2.8b", "paper_gemma_7b"])
def test_dry_run_lists_the_dag_without_network(experiment, tmp_path):
    result = snakemake("-n", "--config", f"experiment={experiment}",
                       f"overrides=paths.data={tmp_path / 'data'}", cwd=REPO_ROOT)
    training = "train_layer" if experiment.startswith("paper_") else "train_grid"  # the paper runs stream
    for rule in ("prepare_model", "fetch_corpus", "tokenize", "cache_activations", training, "rescale_shift",
                 "evaluate_grid", "aggregate", "training_curves", "figures", "html_report"):
        assert rule in result.stdout
    trained = snakemake("-n", "train", "--config", f"experiment={experiment}",
                        f"overrides=paths.data={tmp_path / 'data'}", cwd=REPO_ROOT)
    assert training in trained.stdout
    assert not (tmp_path / "data").exists(), "a dry run must not create anything"


def test_dry_run_with_the_browser_and_the_study_switched_on(tmp_path):
    ratings = tmp_path / "ratings-a.json"
    ratings.write_text("{}")
    tools = f"browser.enabled=true study.enabled=true study.ratings=[{ratings}] paths.data={tmp_path}"
    result = snakemake("-n", "--config", "experiment=smoke", f"overrides={tools}", cwd=REPO_ROOT)
    for rule in ("browse", "study_pages", "study_analysis"):
        assert f"rule {rule}:" in result.stdout, rule
    plain = snakemake("-n", "--config", "experiment=smoke", f"overrides=paths.data={tmp_path}", cwd=REPO_ROOT)
    assert "rule browse:" not in plain.stdout and "rule study_pages:" not in plain.stdout


def test_dry_run_of_paper_experiment_lists_every_site_and_layer(tmp_path):
    result = snakemake("-n", "--config", "experiment=paper_pythia_2.8b", f"overrides=paths.data={tmp_path}",
                       cwd=REPO_ROOT)
    for site in ("resid_post", "mlp_out", "attn_z"):
        for layer in (4, 12, 16, 20, 28):
            assert f"{site}/layer{layer}/manifest.json" in result.stdout


def test_slurm_profile_dry_run_has_gpu_resources(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = snakemake("-n", "--profile", "profiles/slurm", "--config", "experiment=paper_gemma_7b",
                       f"overrides=paths.data={tmp_path}", cwd=REPO_ROOT)
    assert "cache_activations" in result.stdout


@pytest.mark.slow
def test_smoke_workflow_end_to_end_then_nothing_to_do_then_only_what_a_new_l1_needs(scratch_repo):
    import pandas as pd

    snakemake("--profile", "profiles/local", "--cores", "2", "--config", "experiment=smoke", cwd=scratch_repo)
    manifests = sorted(scratch_repo.glob("data/activations/tiny/tiny/*/layer1/manifest.json"))
    assert len(manifests) == 3
    for site in ("resid_post", "mlp_out", "attn_z"):
        assert (scratch_repo / "logs/smoke/cache_activations/tiny/tiny.log").exists()
        assert (scratch_repo / f"data/activations/tiny/tiny/{site}/layer1/train/shard_00000.npy").stat().st_size > 0
    grids = sorted(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/grid.json"))
    assert len(grids) == 3
    assert len(list(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/rescale_shift/grid.json"))) == 3
    checkpoints = []
    for grid in sorted(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/**/grid.json")):
        for entry in json.loads(grid.read_text())["saes"]:
            assert (scratch_repo / entry["path"] / "sae_weights.safetensors").stat().st_size > 0
            checkpoints.append(entry["path"])

    # The summaries agree with the checkpoints and with each other.
    results = scratch_repo / "results" / "smoke"
    metrics = pd.read_csv(results / "metrics.csv")
    assert sorted(metrics["checkpoint"]) == sorted(checkpoints)
    assert metrics[["l0", "loss_recovered", "gamma", "fvu", "ce_clean", "ce_zero"]].notna().all().all()
    assert (metrics.groupby("site")["ce_clean"].nunique() == 1).all(), "one clean CE per site"
    headline = pd.read_csv(results / "headline.csv")
    assert sorted(headline["site"]) == ["attn_z", "mlp_out", "resid_post"] and "l0_ratio" in headline
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary) == {f"tiny/{site}/layer1" for site in ("resid_post", "mlp_out", "attn_z")}
    curves = pd.read_csv(results / "curves.csv")
    assert set(zip(curves["site"], curves["variant"], curves["sae"])) == set(
        zip(metrics["site"], metrics["variant"], metrics["sae"])), "every trained SAE has its training curve"
    figures = json.loads((scratch_repo / "paper_figures" / "smoke" / "figures.json").read_text())
    assert all((scratch_repo / path).stat().st_size > 0 for path in figures["files"])
    assert any(path.endswith("training_curves.png") for path in figures["files"])
    report = (results / "report.html").read_text()
    assert report.count("<img") == len(figures["files"]) // 2 and "Headline" in report
    for table in ("metrics.md", "metrics.tex"):
        assert (results / "tables" / table).stat().st_size > 0

    again = snakemake("--profile", "profiles/local", "--cores", "2", "--config", "experiment=smoke",
                      cwd=scratch_repo)
    assert "Nothing to be done" in again.stdout + again.stderr

    # One more baseline λ: no re-caching, one new SAE trained and evaluated per site.
    grown = ["--config", "experiment=smoke", "overrides=sweep.groups.1.l1=[0.01,0.03,0.1]"]
    planned = snakemake("-n", "--profile", "profiles/local", *grown, cwd=scratch_repo).stdout
    assert "cache_activations" not in planned and "tokenize" not in planned
    snakemake("--profile", "profiles/local", "--cores", "2", *grown, cwd=scratch_repo)
    for site in ("resid_post", "mlp_out", "attn_z"):
        log = (scratch_repo / f"logs/smoke/train_grid/tiny/tiny/{site}/layer1/smoke.log").read_text()
        assert "training 1\n" in log, log[-500:]
        evaluated = (scratch_repo / f"logs/smoke/evaluate/tiny/tiny/{site}/layer1/smoke.log").read_text()
        assert "evaluating 2 of" in evaluated, evaluated[-500:]  # the new baseline and its rescale-and-shift
    assert len(pd.read_csv(results / "metrics.csv")) == len(metrics) + 6
    grown_curves = pd.read_csv(results / "curves.csv")
    assert grown_curves["sae"].nunique() == curves["sae"].nunique() + 2  # the new λ's baseline and its rescale-shift
    assert not grown_curves.duplicated(["site", "variant", "sae", "step"]).any()


@pytest.mark.slow
def test_dvc_repro_twice_second_is_a_no_op(scratch_repo):
    config = scratch_repo / ".dvc" / "config"
    config.write_text(config.read_text().replace("[core]", "[core]\n    no_scm = true", 1))
    (scratch_repo / "params.yaml").write_text("experiment: smoke\n")
    dvc = [sys.executable, "-m", "dvc"]
    _run([*dvc, "repro"], scratch_repo, timeout=900)
    assert (scratch_repo / "dvc.lock").exists()
    second = _run([*dvc, "repro"], scratch_repo)
    output = second.stdout + second.stderr
    assert "didn't change" in output or "up to date" in output, output
    assert "Running stage" not in output
    status = _run([*dvc, "status"], scratch_repo)
    assert "up to date" in status.stdout
