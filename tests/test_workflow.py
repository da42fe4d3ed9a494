"""The workflow itself: dry runs of every experiment without network, the smoke DAG end to end in a
scratch copy of the repository (a second run does nothing), and `dvc repro` twice (second: no-op)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from scratch import clone_repository, snakemake
from scratch import git as _git
from scratch import run as _run

from gatedsae.plan.config import REPO_ROOT, load_config


def test_every_rule_runs_the_stage_it_is_named_after_and_is_documented():
    """A rule's name is its stage's (`python -m gatedsae <stage>`), and docs/pipeline.md's table lists it."""
    import re

    from gatedsae.cli.main import STAGES

    snakefile = (REPO_ROOT / "Snakefile").read_text()
    rules = set(re.findall(r"^\s*rule (\w+):", snakefile, flags=re.M))
    documented = set(re.findall(r"^\| `(\w+)` \|", (REPO_ROOT / "docs" / "pipeline.md").read_text(), flags=re.M))
    assert rules - {"all"} <= {stage.replace("-", "_") for stage in STAGES}, "a rule not named after its stage"
    for rule in rules - {"all"}:
        block = snakefile[snakefile.index(f"rule {rule}:"):]
        command = re.search(r'plan\.command\("([\w-]+)"\)', block).group(1)
        assert command.replace("-", "_") == rule, f"rule {rule} runs the stage {command}"
    assert rules <= documented, f"rules missing from docs/pipeline.md's table: {sorted(rules - documented)}"


@pytest.fixture(scope="module")
def scratch_repo(tmp_path_factory) -> Path:
    """A fresh `git clone` of the repository, as a newcomer gets it (tests/scratch.py)."""
    if not (REPO_ROOT / ".git").exists():
        pytest.skip("the repository is not a git checkout")
    return clone_repository(tmp_path_factory.mktemp("repo") / "repo")


def test_fresh_clone_dry_run_plans_the_real_work(scratch_repo):
    """The README's run command on a fresh clone must compute everything: no committed output may make
    Snakemake believe a stage is done."""
    planned = snakemake("-n", "--profile", "profiles/local", "--config", "experiment=default",
                        cwd=scratch_repo).stdout
    for rule in ("prepare_model", "fetch_corpus", "tokenize", "cache", "train", "rescale_shift",
                 "evaluate", "aggregate", "figures", "report"):
        assert f"rule {rule}:" in planned or f"localrule {rule}:" in planned, rule
    assert not _git("status", "--porcelain", cwd=scratch_repo).strip()


@pytest.mark.parametrize("experiment", ["default", "gemma3", "smoke", "paper_pythia_2.8b", "paper_gemma_7b"])
def test_dry_run_lists_the_dag_without_network(experiment, tmp_path):
    result = snakemake("-n", "--config", f"experiment={experiment}",
                       f"overrides=paths.data={tmp_path / 'data'}", cwd=REPO_ROOT)
    for rule in ("prepare_model", "fetch_corpus", "tokenize", "cache", "train", "rescale_shift",
                 "evaluate", "aggregate", "curves", "figures", "verdict", "report", "interp"):
        assert f"rule {rule}:" in result.stdout, rule
    if experiment == "default":  # the paper's treatment of massive activations, its own run
        assert "rule train_all_tokens:" in result.stdout
    trained = snakemake("-n", "--config", f"experiment={experiment}",
                        f"overrides=paths.data={tmp_path / 'data'} experiment.through=train", cwd=REPO_ROOT)
    assert "rule train:" in trained.stdout and "rule evaluate:" not in trained.stdout
    assert not (tmp_path / "data").exists(), "a dry run must not create anything"


def test_only_the_verdict_reads_the_test_split(tmp_path):
    """The planned DAG: the test split's readings (results/<experiment>/test/) are an input of the verdict
    and of no other job; the verdict reads no development table (figures, report, study and browser read
    only the validation split's tables)."""
    import re

    from gatedsae.plan.workflow import ExperimentPlan

    tools = f"paths.data={tmp_path / 'data'} browser.enabled=true study.enabled=true"
    planned = snakemake("-n", "--config", "experiment=smoke", f"overrides={tools}", cwd=REPO_ROOT).stdout
    inputs = {}
    for rule, line in re.findall(r"rule (\w+):\n    input: ([^\n]*)", planned):
        inputs.setdefault(rule, set()).update(line.split(", "))
    plan = ExperimentPlan("smoke")
    test_tables = set(plan.test_outputs().values())
    assert test_tables and all("/test/" in path for path in test_tables)
    assert {"figures", "report", "study", "browse", "aggregate", "verdict"} <= set(inputs)
    readers = {rule for rule, paths in inputs.items() if any("results/smoke/test/" in path for path in paths)}
    assert readers == {"verdict", "all"}  # `all` runs nothing: it lists every job's outputs as targets
    assert test_tables <= inputs["verdict"]
    assert not set(plan.aggregate_outputs().values()) & inputs["verdict"], "the verdict reads no development table"


def test_dry_run_with_the_browser_and_the_study_switched_on(tmp_path):
    ratings = tmp_path / "ratings-a.json"
    ratings.write_text("{}")
    tools = f"browser.enabled=true study.enabled=true study.ratings=[{ratings}] paths.data={tmp_path}"
    result = snakemake("-n", "--config", "experiment=smoke", f"overrides={tools}", cwd=REPO_ROOT)
    for rule in ("browse", "study", "study_analysis"):
        assert f"rule {rule}:" in result.stdout, rule
    plain = snakemake("-n", "--config", "experiment=smoke", f"overrides=paths.data={tmp_path}", cwd=REPO_ROOT)
    assert "rule browse:" not in plain.stdout and "rule study:" not in plain.stdout


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
    assert "rule cache:" in result.stdout


@pytest.mark.slow
def test_smoke_workflow_end_to_end_then_nothing_to_do_then_only_what_a_new_l1_needs(scratch_repo):
    import pandas as pd

    first = snakemake("--profile", "profiles/local", "--cores", "2", "--config", "experiment=smoke", cwd=scratch_repo)
    assert "# Replication verdict: experiment `smoke`" in first.stdout + first.stderr, "the run ends with its verdict"
    manifests = sorted(scratch_repo.glob("data/activations/tiny/tiny/*/layer1/manifest.json"))
    assert len(manifests) == 3
    for site in ("resid_post", "mlp_out", "attn_z"):
        assert (scratch_repo / "logs/smoke/cache/tiny/tiny.log").exists()
        assert (scratch_repo / f"data/activations/tiny/tiny/{site}/layer1/train/shard_00000.npy").stat().st_size > 0
    grids = sorted(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/grid.json"))
    assert len(grids) == 3
    assert len(list(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/rescale_shift/grid.json"))) == 3
    checkpoints = []
    for grid in sorted(scratch_repo.glob("data/checkpoints/tiny/tiny/*/layer1/smoke/**/grid.json")):
        for entry in json.loads(grid.read_text())["saes"]:  # paths relative to the data root
            assert (scratch_repo / "data" / entry["path"] / "sae_weights.safetensors").stat().st_size > 0
            checkpoints.append(f"data/{entry['path']}")

    # The summaries agree with the checkpoints and with each other.
    results = scratch_repo / "results" / "smoke"
    metrics = pd.read_csv(results / "metrics.csv")
    assert sorted(metrics["checkpoint"]) == sorted(checkpoints)
    assert metrics[["l0", "loss_recovered", "gamma", "fvu", "ce_clean", "ce_zero"]].notna().all().all()
    assert (metrics.groupby("site")["ce_clean"].nunique() == 1).all(), "one clean CE per site"
    headline = pd.read_csv(results / "headline.csv")
    assert sorted(headline["site"]) == ["attn_z", "mlp_out", "resid_post"] and "l0_ratio" in headline
    # intervals from the per-window samples every SAE's evaluation keeps
    for metric in ("loss_recovered", "delta_lm_loss"):
        assert (metrics[f"{metric}_ci_low"] <= metrics[metric] + 1e-9).all()
        assert (metrics[metric] <= metrics[f"{metric}_ci_high"] + 1e-9).all()
    assert {"l0_ratio_ci_low", "l0_ratio_ci_high", "gamma_gated_ci_low"} <= set(headline)
    assert (metrics["ce_tokens"] == metrics["ce_windows"] * (32 - 2)).all()  # windows × (context − 2)
    verdict = json.loads((results / "verdict.json").read_text())
    claim_ids = {claim["id"] for claim in verdict["claims"]}
    assert {f"l0_ratio/{site}/layer1" for site in ("resid_post", "mlp_out", "attn_z")} <= claim_ids
    assert "rescale_shift_vs_baseline/resid_post/layer1" in claim_ids and "gated_untied_vs_gated/resid_post/layer1" in claim_ids
    assert all(claim["status"] in ("REPRODUCED", "NOT REPRODUCED", "INCONCLUSIVE", "NOT TESTED", "NOT MEASURED")
               for claim in verdict["claims"])
    assert "| Claim |" in (results / "verdict.md").read_text()
    truth = json.loads((results / "groundtruth" / "summary.json").read_text())  # the ground-truth chapter
    assert {c["status"] for c in truth["claims"]} <= {"REPRODUCED", "NOT REPRODUCED", "UNDECIDED", "NOT TESTED"}
    assert verdict["ground_truth"]["claims"] == truth["claims"]
    assert "## The mechanism on ground truth" in (results / "verdict.md").read_text()
    assert (scratch_repo / "paper_figures/smoke/groundtruth/recovery_vs_l0.png").stat().st_size > 0
    # the interpretability measures (a proxy for claim 3): every Gated and baseline SAE scored on validation,
    # the matched pairs on test, which the verdict reads
    interp = json.loads((results / "test" / "interp" / "summary.json").read_text())
    assert set(interp["sites"]) == {f"{site}/layer1" for site in ("resid_post", "mlp_out", "attn_z")}
    proxy = verdict["interpretability_proxy"]
    assert proxy["split"] == "test" and proxy["sites"].keys() == interp["sites"].keys()
    assert "## Automatic interpretability (a proxy for claim 3)" in (results / "verdict.md").read_text()
    scored = pd.read_csv(results / "interp" / "rows.csv")
    assert set(scored.loc[scored["split"] == "validation", "sae"]) >= set(
        metrics.loc[metrics["arch"].isin(["gated", "baseline"]) & (metrics["variant"] == "sweep"), "sae"])
    summary = json.loads((results / "summary.json").read_text())
    assert set(summary) == {f"tiny/{site}/layer1" for site in ("resid_post", "mlp_out", "attn_z")}
    curves = pd.read_csv(results / "curves.csv")
    assert set(zip(curves["site"], curves["variant"], curves["sae"])) == set(
        zip(metrics["site"], metrics["variant"], metrics["sae"])), "every trained SAE has its training curve"
    figures = json.loads((scratch_repo / "paper_figures" / "smoke" / "figures.json").read_text())
    assert all((scratch_repo / path).stat().st_size > 0 for path in figures["files"])
    assert any(path.endswith("training_curves.png") for path in figures["files"])
    assert {"probing_accuracy_vs_l0.png", "recovery_vs_l0.png", "magnitude_ratio_vs_lambda.png"} <= {
        Path(path).name for path in figures["files"]}  # the other stages' figures are in the report too
    report = (results / "report.html").read_text()
    assert report.count("<img") == len(figures["files"]) // 2 and "Headline" in report and "<h2>Verdict</h2>" in report
    for table in ("metrics.md", "metrics.tex"):
        assert (results / "tables" / table).stat().st_size > 0

    assert not _git("status", "--porcelain", cwd=scratch_repo).strip(), "a run must not modify tracked files"
    again = snakemake("--profile", "profiles/local", "--cores", "2", "--config", "experiment=smoke",
                      cwd=scratch_repo)
    assert "Nothing to be done" in again.stdout + again.stderr
    # Placing the work differently (threads, devices' batch sizes, checkpoint cadence) reruns nothing.
    placed = ["train.threads=1", "train.checkpoint_every_steps=3", "cache.threads=1", "cache.batch_sequences=2",
              "evaluate.threads=1", "evaluate.batch_rows=100", "evaluate.batch_windows=1"]
    moved = snakemake("-n", "--profile", "profiles/local", "--config", "experiment=smoke",
                      f"overrides={' '.join(placed)}", cwd=scratch_repo)
    assert "Nothing to be done" in moved.stdout + moved.stderr, moved.stdout[-2000:]

    # One chapter again after the full run (docs/pipeline.md): it runs through the chapters the results hold,
    # so every row, claim and figure stays, and replicate.json records what was asked and what ran.
    pngs = sorted(path.name for path in (scratch_repo / "paper_figures" / "smoke").glob("*.png"))
    chapter = _run([sys.executable, "-m", "gatedsae", "replicate", "experiment=smoke", "--chapter=headline"],
                   scratch_repo)
    last = [c.name for c in load_config(["experiment=smoke"]).experiment.chapters][-1]
    assert f"already holds the chapters through '{last}'" in chapter.stdout, chapter.stdout[-2000:]
    assert pd.read_csv(results / "metrics.csv").equals(metrics)
    assert {claim["id"] for claim in json.loads((results / "verdict.json").read_text())["claims"]} == claim_ids
    assert sorted(path.name for path in (scratch_repo / "paper_figures" / "smoke").glob("*.png")) == pngs
    timings = json.loads((results / "replicate.json").read_text())
    assert timings["chapter"] == "headline" and timings["chapters_run"] == [last]
    assert json.loads((results / "groundtruth" / "summary.json").read_text()) == truth

    # One more baseline λ: no re-caching, one new SAE per seed trained and evaluated per site.
    seeds = metrics["seed"].nunique()
    assert seeds == 2 and (metrics.groupby(["site", "variant", "arch", "l1"])["seed"].nunique() == seeds).all()
    grown = ["--config", "experiment=smoke", "overrides=sweep.groups.1.l1=[0.01,0.03,0.1]"]
    planned = snakemake("-n", "--profile", "profiles/local", *grown, cwd=scratch_repo).stdout
    assert "rule cache:" not in planned and "rule tokenize:" not in planned
    snakemake("--profile", "profiles/local", "--cores", "2", *grown, cwd=scratch_repo)
    for site in ("resid_post", "mlp_out", "attn_z"):
        log = (scratch_repo / f"logs/smoke/train/tiny/tiny/{site}/layer1/smoke.log").read_text()
        assert f"training {seeds}\n" in log, log[-500:]
        evaluated = (scratch_repo / f"logs/smoke/evaluate/tiny/tiny/{site}/layer1/smoke.log").read_text()
        # the new baseline and its rescale-and-shift, each seed, each held-out split (validation and test)
        assert f"evaluating {2 * seeds * 2} of" in evaluated, evaluated[-500:]
    assert len(pd.read_csv(results / "metrics.csv")) == len(metrics) + 6 * seeds
    grown_curves = pd.read_csv(results / "curves.csv")
    assert grown_curves["sae"].nunique() == curves["sae"].nunique() + 2 * seeds  # the new baselines and their rescale-shift
    assert not grown_curves.duplicated(["site", "variant", "sae", "step"]).any()


@pytest.mark.slow
def test_dvc_push_then_pull_in_another_clone_leaves_nothing_to_recompute(scratch_repo, tmp_path):
    """A finished run, versioned by DVC and pushed to a directory remote, is pulled into a second clone:
    neither DVC nor Snakemake then recomputes anything."""
    dvc = [sys.executable, "-m", "dvc"]
    remote = tmp_path / "remote"
    (scratch_repo / "params.yaml").write_text("experiment: smoke\n")
    _git("commit", "--quiet", "-am", "run the smoke experiment", cwd=scratch_repo)
    _run([*dvc, "repro"], scratch_repo, timeout=900)
    changed = _git("status", "--porcelain", cwd=scratch_repo).split("\n")
    assert [line for line in changed if line.strip()] == [" M dvc.lock"], changed  # the run's hashes, to commit
    second = _run([*dvc, "repro"], scratch_repo)
    assert "Running stage" not in second.stdout + second.stderr
    metrics = json.loads(_run([*dvc, "metrics", "show", "--json"], scratch_repo).stdout)  # the docs' `dvc metrics show`
    assert "tiny/resid_post/layer1" in json.dumps(metrics), json.dumps(metrics)[:2000]
    _git("commit", "--quiet", "-am", "record the smoke run", cwd=scratch_repo)
    _run([*dvc, "remote", "add", "--local", "--force", "--default", "store", str(remote)], scratch_repo)
    _run([*dvc, "push"], scratch_repo, timeout=300)

    clone = tmp_path / "clone"
    _run(["git", "clone", "--quiet", str(scratch_repo), str(clone)], tmp_path)
    _run([*dvc, "remote", "add", "--local", "--force", "--default", "store", str(remote)], clone)
    _run([*dvc, "pull"], clone, timeout=300)
    assert (clone / "results" / "smoke" / "metrics.csv").exists()
    snakemake("--profile", "profiles/local", "--config", "experiment=smoke", "--touch", "--forceall", "--quiet",
              cwd=clone)  # `make sync`
    planned = snakemake("-n", "--profile", "profiles/local", "--config", "experiment=smoke", cwd=clone)
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout[-2000:]
    status = _run([*dvc, "status"], clone)
    assert "up to date" in status.stdout, status.stdout
    replicated = _run([*dvc, "repro"], clone)  # what `make replicate` runs
    assert "Running stage" not in replicated.stdout + replicated.stderr
    assert not _git("status", "--porcelain", cwd=clone).strip()
