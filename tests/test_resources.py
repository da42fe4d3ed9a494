"""Job sizing: estimates, the memory check before compute, grids split into passes that fit, and the
scheduler resources the Snakefile derives from them."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from conftest import TRAINED, copy_data

from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.plan.estimates import GIB, experiment_estimates, plan_passes, train_estimate, train_pass_memory
from gatedsae.plan.grid import grid_specs, read_grid_index
from gatedsae.plan.preflight import ResourceError
from gatedsae.plan.scheduling import markdown_table, resources_table, rule_resources
from gatedsae.plan.workflow import ExperimentPlan
from gatedsae.saes.checkpoints import read_checkpoint
from gatedsae.training.stages import train_grid

SITE, LAYER = "resid_post", 1


def test_estimates_grow_with_the_grid_and_name_every_job():
    config = load_config(["experiment=paper_pythia_2.8b", "cache.mode=store"])
    jobs = [estimate.job for estimate, _ in experiment_estimates(config)]
    assert jobs[0] == "cache" and len(jobs) == 1 + 3 * 3 + 1 and jobs[-1] == "interp"  # and the interp measures
    streamed = load_config(["experiment=paper_pythia_2.8b", "resources.device_memory_gib=80"])
    estimates = [estimate for estimate, _ in experiment_estimates(streamed)]
    assert [e.job.split("[")[0] for e in estimates[:2]] == ["cache", "train"]
    assert len(estimates) == 2 + 3 * 2 + 1 and estimates[1].devices == 4  # three grids + the LM
    assert estimates[0].disk_bytes < experiment_estimates(config)[0][0].disk_bytes / 1000  # held-out only
    assert all(e.memory_bytes <= 80 * GIB for e in estimates), "every job fits its 80 GiB devices"
    small = train_estimate(config, "resid_post")  # 2^15-wide Gated vs 2^17 at the MLP
    large = train_estimate(config, "mlp_out")
    assert 3.5 < large.flops / small.flops < 4.5 and large.memory_bytes > small.memory_bytes
    assert "| **total** |" in markdown_table(config)


def test_plan_passes_is_greedy_and_stable():
    sizes = {"a": 3, "b": 3, "c": 3, "d": 5, "e": 1}
    memory = lambda chunk: sum(sizes[i] for i in chunk)  # noqa: E731
    assert plan_passes(list("abcde"), memory, 6) == [["a", "b"], ["c"], ["d", "e"]]
    assert plan_passes(list("cde"), memory, 6) == [["c"], ["d", "e"]], "what is left after a pass plans the same"
    assert plan_passes(list("abcde"), memory, 100) == [list("abcde")]


def test_an_impossible_config_stops_before_any_compute(smoke_cache, tmp_path):
    config = copy_data(smoke_cache, tmp_path, ("activations",), "resources.device_memory_gib=0.0001")
    with pytest.raises(ResourceError, match=r"train\[resid_post\] needs about .* GiB but cpu has 0.0 GiB; lower"):
        train_grid(config, SITE, LAYER, progress=False)
    assert not config.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke").exists()
    result = subprocess.run([sys.executable, "-m", "gatedsae", "train", "experiment=smoke", f"paths.data={tmp_path}",
                             "resources.device_memory_gib=0.0001", f"--site={SITE}", f"--layer={LAYER}"],
                            capture_output=True, text=True)
    assert result.returncode == 3 and "resource error" in result.stderr


def test_a_grid_too_large_for_the_device_trains_in_passes_to_the_same_saes(smoke_cache, smoke_trained, tmp_path,
                                                                             capsys):
    whole = copy_data(smoke_trained, tmp_path / "one", TRAINED)  # the grid trained in one pass (the session's)
    memory = train_pass_memory(whole, SITE)
    specs = grid_specs(whole, whole.model.site_width(SITE), SITE)
    budget = memory(specs[: len(specs) // 2]) / GIB  # room for half of the SAEs (every seed) at a time
    split = copy_data(smoke_cache, tmp_path / "split", ("activations",), f"resources.device_memory_gib={budget}")
    index = train_grid(split, SITE, LAYER, progress=False)
    assert re.search(rf"training {len(specs)} in [23] passes over the data", capsys.readouterr().out)
    train_grid(whole, SITE, LAYER, progress=False)
    for entry in read_grid_index(index):
        _, passes, _ = read_checkpoint(entry["path"])
        _, together, _ = read_checkpoint(whole.paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke") / entry["sae"])
        for name in together:
            torch.testing.assert_close(passes[name], together[name], rtol=1e-5, atol=1e-6)


def test_scheduler_resources_come_from_the_estimates():
    plan = ExperimentPlan("paper_gemma_7b", ["resources.device_memory_gib=80", "cache.mode=store"])
    wildcards = type("Wildcards", (), {"site": "mlp_out"})()
    train = {key: value(wildcards) for key, value in plan.resources("train").items()}
    assert train["gpu"] == 1 and 80 * 1024 < train["mem_mb"] < 80 * 1024 * 1.25 + 2048 + 1
    assert train["runtime"] > 60 * 24  # days of GPU time for a paper grid
    streamed = ExperimentPlan("paper_gemma_7b", ["resources.device_memory_gib=80"]).resources("train")
    assert streamed["gpu"] == 4 and streamed["mem_mb"] < 80 * 1024 * 1.25 + 2048 + 1
    cache = plan.resources("cache")
    assert cache["gpu"] == 1 and cache["mem_mb"] > 16 * 1024


def test_slurm_dry_run_lists_the_paper_dag_with_resources_per_job(tmp_path):
    pytest.importorskip("snakemake_executor_plugin_slurm")
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--profile", "profiles/slurm", "--config", "experiment=paper_gemma_7b",
         f"overrides=paths.data={tmp_path} resources.device_memory_gib=80 resources.gpu_model=h100"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    blocks = result.stdout.split("\n\n")
    trains = [b for b in blocks if "rule train:" in b]
    assert len(trains) == 4  # stream mode: one job per layer
    plan = ExperimentPlan("paper_gemma_7b", [f"paths.data={tmp_path}", "resources.device_memory_gib=80",
                                             "resources.gpu_model=h100"])
    expected = plan.resources("train")["mem_mb"]
    for block in trains:
        assert f"mem_mb={expected}" in block and "gpu=4" in block and "gpu_model=h100" in block
        assert "cpus_per_task=8" in block  # resources.job_cpus
    for block in (b for b in blocks if "rule rescale_shift:" in b):
        site = re.search(r"site=(\w+)", block).group(1)
        wildcards = type("Wildcards", (), {"site": site})()
        assert f"mem_mb={plan.resources('rescale_shift')['mem_mb'](wildcards)}" in block and "gpu=2" in block
    assert len([b for b in blocks if "rule evaluate:" in b]) == 12
    for rule in ("prepare_model", "fetch_corpus", "tokenize", "aggregate", "figures", "verdict", "report"):
        (block,) = [b for b in blocks if f"rule {rule}:" in b]
        (requested,) = re.findall(r"resources: (.*)", block)
        expected = rule_resources(plan.config, rule)
        assert f"mem_mb={expected['mem_mb']}," in requested and "cpus_per_task=1" in requested
        assert "gpu_model" not in requested


def test_every_rule_asks_for_what_its_estimate_needs():
    config = load_config(["experiment=paper_pythia_2.8b", "resources.device_memory_gib=80", "resources.gpu_model=h100"])
    tokenize = rule_resources(config, "tokenize")
    assert tokenize["mem_mb"] > 20 * 1024, "every token of the experiment is held while it is cut into windows"
    assert tokenize["runtime"] > 15 and tokenize["cpus_per_task"] == 1 and tokenize["gpu"] == 0
    light = config.resources.light_job_mem_mb
    assert rule_resources(config, "figures") == {"mem_mb": light, "runtime": 15, "gpu": 0, "cpus_per_task": 1}
    evaluate = rule_resources(config, "evaluate", "mlp_out")
    assert evaluate["gpu"] == 1 and evaluate["gpu_model"] == "h100" and evaluate["cpus_per_task"] == 8
    cpu = load_config(["experiment=smoke", "resources.job_cpus=2", "resources.gpu_model=h100"])
    assert rule_resources(cpu, "train", "resid_post")["cpus_per_task"] == 2
    assert "gpu_model" not in rule_resources(cpu, "train", "resid_post"), "no GPU type on a CPU job"
    table = resources_table(config)
    assert "| train | 5 |" in table and "h100:4" in table and f"| report | 1 | {light / 1024:.1f} GiB | 0:15:00 | 1 |  |" in table


def test_a_job_killed_for_its_memory_is_explained_with_the_rule_and_the_setting(tmp_path):
    slurm_log = tmp_path / ".snakemake/slurm_logs/rule_train/tiny_tiny_mlp_out_1_smoke/7.log"
    slurm_log.parent.mkdir(parents=True)
    slurm_log.write_text("slurmstepd-vm: error: StepId=7.batch exceeded memory limit (128790528 > 104857600), "
                         "being killed\n")
    log = tmp_path / "snakemake.log"
    log.write_text(f"Error in rule train:\n    message: SLURM-job '7' failed, SLURM status is: 'FAILED'.\n"
                   f"    log: logs/smoke/train.log, {slurm_log} (check log file(s) for error details)\n"
                   f"Error in rule aggregate:\n    message: None\n    log: logs/smoke/aggregate.log\n")
    plan = ExperimentPlan("smoke", [f"paths.data={tmp_path}"])
    (advice,) = plan.explain_failures([str(log)])
    expected = rule_resources(plan.config, "train", "mlp_out")["mem_mb"]
    assert advice.startswith("rule train ran out of memory") and "(--mem 100 MB)" in advice
    assert f"--set-resources train:mem_mb={max(200, expected)}`" in advice and str(slurm_log) in advice
    assert plan.explain_failures([str(tmp_path / "missing.log")]) == []


@pytest.mark.slow
def test_gpu_check_runs_degraded_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = subprocess.run([sys.executable, "scripts/gpu_check.py", "--models", "tiny", "--device", "cpu",
                             "--train-steps", "3", "--data", str(tmp_path / "none"), "--out", str(out)],
                            cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["degraded"] is True and report["device"] == "cpu"
    (tiny,) = report["models"]
    assert tiny["cache_tokens_per_s"] > 0 and tiny["train"]["sae_tokens_per_s"] > 0 and tiny["finite_metrics"]
    assert 0 < tiny["train"]["fraction_of_matmul_peak"]
    streamed = tiny["train_streamed"]
    assert streamed["rows_computed"] >= streamed["rows_trained_on"] > 0 and streamed["speed_vs_stored"] > 0
