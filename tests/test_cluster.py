"""The pipeline past one machine, for real: a single-node SLURM cluster and an S3 server brought up on
this machine (scripts/local_cluster.py; loopback only). The smoke experiment submitted through
profiles/slurm runs every rule as an sbatch job sized by the project's estimates and ends identical to a
local run, with a training job cancelled mid-way resubmitted and resumed; a job whose memory request
is too small fails naming the rule and the setting to raise. The finished run, versioned by DVC on S3,
comes back whole in a fresh clone, and an object corrupted on the server is caught on pull. What the runs
measured (jobs, wall time locally and through SLURM, overhead per job, the identity check) goes to
results/benchmarks/cluster.json, which docs/paper-scale.md quotes through a generated block.

Needs root and Debian's slurmctld, slurmd, slurm-client and munge (.ci/run installs them and sets
GATEDSAE_REQUIRE_CLUSTER=1, so CI fails instead of skipping)."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from scratch import clone_repository, git, run, snakemake

from gatedsae.plan.config import REPO_ROOT
from gatedsae.plan.scheduling import rule_resources
from gatedsae.plan.workflow import ExperimentPlan

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import local_cluster  # noqa: E402

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SITES = ("resid_post", "mlp_out", "attn_z")
RECORD = REPO_ROOT / "results" / "benchmarks" / "cluster.json"  # what the tests measured (written by the identity test)
# A training state every step, so that the cancel lands mid-training however fast this machine is (placement
# only: the same results, as the identity check shows); the local run saves as often, so the two walls compare.
EVERY_STEP = "train.checkpoint_every_steps=1"
CANCELLED_SITE = "resid_post"
BUCKET = "gatedsae-test"
OUTPUTS = ("data/activations", "data/checkpoints", "data/evaluation", "results/smoke", "paper_figures/smoke")  # dvc.yaml


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = local_cluster.unavailable()
    if reason is None:
        try:
            import moto.server  # noqa: F401
        except ImportError:
            reason = "moto is not installed (it is in requirements.lock: make setup)"
    if reason:
        if os.environ.get("GATEDSAE_REQUIRE_CLUSTER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    with local_cluster.LocalCluster(tmp_path_factory.mktemp("cluster"), s3=True) as cluster:
        yield cluster


def slurm_command(cluster, *args: str, overrides: str = "") -> list[str]:
    """profiles/slurm as a user runs it, plus what this cluster needs: squeue for job states (no
    accounting database), a short first status check (jobs take seconds here), and its node's CPUs."""
    return ["--profile", "profiles/slurm", "--slurm-status-command", "squeue",
            "--slurm-init-seconds-before-status-checks", "1", *args, "--config", "experiment=smoke",
            f"overrides=resources.job_cpus={cluster.node.cpus} {overrides}".strip()]


@dataclass
class Run:
    repo: Path
    output: str      # Snakemake's
    wall_s: float
    cancelled: dict  # the SLURM job cancelled mid-training, and the step its saved state had reached


def timed_snakemake(*args: str, cwd: Path, **kwargs) -> tuple[str, float]:
    started = time.perf_counter()
    result = snakemake(*args, cwd=cwd, **kwargs)
    return result.stdout + result.stderr, time.perf_counter() - started


@pytest.fixture(scope="module")
def local_run(cluster, tmp_path_factory) -> Run:
    """The same experiment run locally, its jobs given as many threads as the cluster's."""
    repo = clone_repository(tmp_path_factory.mktemp("local") / "repo")
    output, wall = timed_snakemake("--profile", "profiles/local", "--cores", str(cluster.node.cpus), "--config",
                                   "experiment=smoke", f"overrides={EVERY_STEP}", cwd=repo, timeout=1800)
    return Run(repo, output, wall, {})


class CancelMidTraining(threading.Thread):
    """Watches the run; once one site's training job has saved a training state and not yet finished,
    cancels it with scancel (as an administrator or a preemption would)."""

    def __init__(self, cluster: local_cluster.LocalCluster, repo: Path, site: str):
        super().__init__(daemon=True)
        self.cluster, self.repo, self.site = cluster, repo, site
        self.cancelled: dict = {}
        self.error = ""
        self.stop = threading.Event()

    def run(self) -> None:
        folder = self.repo / f"data/checkpoints/tiny/tiny/{self.site}/layer1/smoke"
        while not self.stop.is_set():
            job = self._running_train_job()
            if job and (folder / "training_state.pt").exists() and not (folder / "grid.json").exists():
                self.cluster.run(["scancel", job])
                import torch

                state = torch.load(folder / "training_state.pt", weights_only=False)
                self.cancelled = {"job": job, "step": state["step"]}
                return
            if (folder / "grid.json").exists():
                self.error = "the training job finished before it could be cancelled"
                return
            time.sleep(0.05)

    def _running_train_job(self) -> str | None:
        out = self.cluster.run(["squeue", "--noheader", "--states=RUNNING", "--format=%i|%k"], check=False).stdout
        for line in out.splitlines():
            job, _, comment = line.partition("|")
            if comment.startswith("rule_train_") and f"_{self.site}_" in comment:
                return job.strip()
        return None


@pytest.fixture(scope="module")
def slurm_run(cluster, tmp_path_factory) -> Run:
    repo = clone_repository(tmp_path_factory.mktemp("slurm") / "repo")
    watcher = CancelMidTraining(cluster, repo, CANCELLED_SITE)
    watcher.start()
    output, wall = timed_snakemake(*slurm_command(cluster, overrides=EVERY_STEP), cwd=repo, wrap=cluster.command,
                                   timeout=2400)
    watcher.stop.set()
    watcher.join(timeout=10)
    assert not watcher.error, watcher.error
    return Run(repo, output, wall, watcher.cancelled | {"left_running": _working_in(repo)})


def _working_in(repo: Path) -> list[str]:
    """The processes still working in `repo` (a job's processes that outlived it)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if Path(f"/proc/{pid}/cwd").resolve() == repo.resolve():
                found.append(f"{pid}: {Path(f'/proc/{pid}/cmdline').read_text().replace(chr(0), ' ')[:200]}")
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


def _submitted(output: str) -> list[tuple[str, str, str]]:
    """(SLURM job id, rule, wildcards) of every submission in a Snakemake log."""
    return re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/rule_([a-z_]+)/(?:(\S+)/)?\d+\.log", output)


def _jobs(cluster) -> dict[str, dict]:
    """What SLURM recorded of every job it still lists: rule, wildcards, requests, final state, and when
    it was submitted, started and ended."""
    fields = "%i|%k|%m|%l|%C|%T|%V|%S|%e"
    out = cluster.run(["squeue", "--noheader", "--states=all", f"--format={fields}"]).stdout
    jobs = {}
    for line in out.splitlines():
        job, comment, memory, limit, cpus, state, submitted, started, ended = (part.strip() for part in line.split("|"))
        rule = re.match(r"rule_(\w+?)(?:_wildcards_|$)", comment).group(1)
        site = next((s for s in SITES if f"_{s}_" in comment + "_"), None)
        jobs[job] = {"rule": rule, "site": site, "mem_mb": _megabytes(memory), "time": limit, "cpus": int(cpus),
                     "state": state, "submitted": submitted, "started": started, "ended": ended}
    return jobs


def _megabytes(memory: str) -> int:
    """squeue's memory (2049M, 2G, …) in MB."""
    return round(float(memory[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[memory[-1]])


def _minutes(limit: str) -> int:
    """squeue's time limit ([days-]hours:minutes:seconds, or minutes:seconds) in minutes."""
    days, _, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    while len(parts) < 3:
        parts.insert(0, 0)
    return int(days or 0) * 24 * 60 + parts[0] * 60 + parts[1]


def _ran_locally(output: str) -> list[str]:
    """The rule of every job a local Snakemake log ran, `all` left out (it runs on the submitting host)."""
    return [rule for rule in re.findall(r"^(?:local)?rule (\w+):$", output, re.MULTILINE) if rule != "all"]


def test_every_rule_is_an_sbatch_job_sized_by_the_estimates(cluster, slurm_run, local_run):
    submitted = _submitted(slurm_run.output)
    planned = _ran_locally(local_run.output)  # the same smoke DAG, run on this host
    assert {"train", "evaluate", "groundtruth", "verdict", "report"} <= set(planned), planned
    assert len(submitted) == len(planned) + 1, submitted  # every job once, the cancelled training twice
    assert Counter(rule for _, rule, _ in submitted) == Counter(planned) + Counter({"train": 1}), submitted
    jobs = _jobs(cluster)  # as SLURM recorded them
    config = ExperimentPlan("smoke", [f"resources.job_cpus={cluster.node.cpus}"]).config
    for job_id, rule, _ in submitted:
        job = jobs[job_id]
        expected = rule_resources(config, rule, job["site"])
        assert job["rule"] == rule and job["mem_mb"] == expected["mem_mb"], (rule, job)
        assert _minutes(job["time"]) == expected["runtime"] and job["cpus"] == expected["cpus_per_task"], (rule, job)
        assert job["state"] in ("COMPLETED", "CANCELLED"), (rule, job)
    logs = re.findall(r"^    log: (\S+)$", slurm_run.output, re.MULTILINE)  # each job's own log, as run locally
    assert len(set(logs)) == len(planned) and all((slurm_run.repo / log).stat().st_size > 0 for log in logs)


def test_a_job_cancelled_mid_training_is_resubmitted_and_resumes(cluster, slurm_run):
    cancelled = slurm_run.cancelled
    assert "job" in cancelled and 0 < cancelled["step"] < 32, cancelled  # 4096 tokens / batch 128 = 32 steps
    assert _jobs(cluster)[cancelled["job"]]["state"] == "CANCELLED"
    assert not cancelled["left_running"], f"processes outlived their jobs: {cancelled['left_running']}"
    trains = [(job, wildcards) for job, rule, wildcards in _submitted(slurm_run.output) if rule == "train"]
    resubmitted = [job for job, wildcards in trains if f"_{CANCELLED_SITE}_" in f"_{wildcards}_"]
    assert len(trains) == 4 and resubmitted[0] == cancelled["job"] and len(resubmitted) == 2, trains
    log = (slurm_run.repo / f"logs/smoke/train/tiny/tiny/{CANCELLED_SITE}/layer1/smoke.log").read_text()
    resumed_at = int(re.search(r"train grid:\s+\d+%\|[^|]*\|\s*(\d+)/32", log).group(1))
    assert resumed_at >= cancelled["step"] > 0, "the resubmitted job resumed from the cancelled one's state"


def test_results_are_identical_to_a_local_run(cluster, local_run, slurm_run, tmp_path):
    out = tmp_path / "identity.json"
    result = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "compare_runs.py"),
                             str(local_run.repo / "data"), str(local_run.repo / "results" / "smoke"),
                             str(slurm_run.repo / "data"), str(slurm_run.repo / "results" / "smoke"), "--out", str(out)],
                            capture_output=True, text=True)
    report = json.loads(out.read_text())
    record_figures(cluster, local_run, slurm_run, report)
    assert result.returncode == 0 and report["identical"], result.stdout[-3000:]
    assert all(kind["a"] > 0 for kind in report["artifacts"].values())
    assert {"metrics.csv", "headline.csv", "comparisons.csv", "pareto.csv"} <= set(report["tables"])


def _seconds(stamp: str) -> float:
    return datetime.datetime.fromisoformat(stamp).timestamp()


def record_figures(cluster, local_run: Run, slurm_run: Run, identity: dict) -> None:
    """results/benchmarks/cluster.json: the smoke experiment's jobs, its wall time locally and through SLURM,
    the submission overhead per job, and the identity check's result."""
    from gatedsae.core.atomic import write_json_atomic
    from gatedsae.core.precision import machine

    submitted = _submitted(slurm_run.output)
    jobs = _jobs(cluster)
    waits = sorted(_seconds(jobs[job]["started"]) - _seconds(jobs[job]["submitted"]) for job, _, _ in submitted)
    local_jobs = len(set(re.findall(r"^    log: (\S+)$", local_run.output, re.MULTILINE)))
    record = {
        "benchmark": "the smoke experiment run locally (profiles/local) and through a single-node SLURM cluster "
                     "(profiles/slurm, every rule an sbatch job), one after the other, by tests/test_cluster.py",
        "command": "make test-cluster", "machine": machine(), "node": {"cpus": cluster.node.cpus,
                                                                      "memory_mb": cluster.node.memory_mb},
        "settings": f"experiment=smoke, {EVERY_STEP} (both runs), resources.job_cpus={cluster.node.cpus}",
        "jobs_submitted": len(submitted), "jobs_local": local_jobs,
        "rules": dict(sorted(Counter(rule for _, rule, _ in submitted).items())),
        "cancelled_and_resubmitted": {"job": slurm_run.cancelled.get("job"), "at_step": slurm_run.cancelled.get("step")},
        "wall_s": {"local": round(local_run.wall_s, 1), "slurm": round(slurm_run.wall_s, 1)},
        "slurm_over_local": round(slurm_run.wall_s / local_run.wall_s, 3),
        # What going through SLURM adds per job: the run's extra wall time over the jobs SLURM ran (it includes
        # the cancelled training job's lost work), and SLURM's own queue wait (start − submit, 1 s resolution).
        "overhead_per_job_s": round((slurm_run.wall_s - local_run.wall_s) / len(submitted), 2),
        "queue_wait_s": {"median": waits[len(waits) // 2], "max": waits[-1]},
        "identical": identity["identical"],
        "identity": {kind: {"files": found["a"], "identical": found["identical"]}
                     for kind, found in identity["artifacts"].items()}
                    | {table: found["shared_columns_identical"] for table, found in identity["tables"].items()},
    }
    write_json_atomic(RECORD, record)


def test_a_job_whose_memory_request_is_too_small_names_the_rule_and_the_setting(cluster, tmp_path):
    repo = clone_repository(tmp_path / "repo")
    result = snakemake(*slurm_command(cluster, "--retries", "0", "--set-resources", "cache:mem_mb=100",
                                      overrides="experiment.through=cache"), cwd=repo, wrap=cluster.command,
                       timeout=1200, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "rule cache ran out of memory" in output, output[-3000:]
    assert "--set-resources cache:mem_mb=" in output and "(--mem 100 MB)" in output


def test_a_run_versioned_on_s3_comes_back_whole_and_a_corrupt_object_is_caught(cluster, slurm_run, tmp_path):
    inside = {"wrap": cluster.command, "extra_env": cluster.env()}
    dvc = [sys.executable, "-m", "dvc"]
    repo = slurm_run.repo
    run([sys.executable, "-c", f"import boto3; boto3.client('s3', endpoint_url={cluster.s3_endpoint!r})"
         f".create_bucket(Bucket={BUCKET!r})"], repo, **inside)
    remote = [("remote", "add", "--local", "--force", "--default", "store", f"s3://{BUCKET}/dvc"),
              ("remote", "modify", "--local", "store", "endpointurl", cluster.s3_endpoint),
              ("remote", "modify", "--local", "store", "verify", "true")]

    (repo / "params.yaml").write_text("experiment: smoke\n")
    git("commit", "--quiet", "-am", "run the smoke experiment", cwd=repo)
    run([*dvc, "repro"], repo, timeout=900)  # the run is there: DVC records it, Snakemake recomputes nothing
    git("commit", "--quiet", "-am", "record the smoke run", cwd=repo)
    for args in remote:
        run([*dvc, *args], repo)
    run([*dvc, "push"], repo, timeout=600, **inside)

    clone = tmp_path / "clone"
    run(["git", "clone", "--quiet", str(repo), str(clone)], tmp_path)
    for args in remote:
        run([*dvc, *args], clone)
    run([*dvc, "pull"], clone, timeout=600, **inside)
    # `make sync` with this environment (-o setup: installs nothing into it)
    run(["make", "-o", "setup", "sync", "EXPERIMENT=smoke", f"VENV={Path(sys.executable).parent.parent}"], clone,
        timeout=600)
    planned = snakemake("-n", "--profile", "profiles/local", "--config", "experiment=smoke", cwd=clone)
    assert "Nothing to be done" in planned.stdout + planned.stderr, planned.stdout[-2000:]
    assert "up to date" in run([*dvc, "status"], clone).stdout
    assert not git("status", "--porcelain", cwd=clone).strip()

    # One object changed on the server: a fresh pull refuses it (verify) instead of checking out wrong bytes.
    flip = (f"import boto3; s3 = boto3.client('s3', endpoint_url={cluster.s3_endpoint!r}); "
            f"keys = [o['Key'] for o in s3.list_objects_v2(Bucket={BUCKET!r})['Contents'] if not o['Key'].endswith('.dir')]; "
            f"key = max(keys, key=lambda k: s3.head_object(Bucket={BUCKET!r}, Key=k)['ContentLength']); "
            f"body = bytearray(s3.get_object(Bucket={BUCKET!r}, Key=key)['Body'].read()); body[len(body) // 2] ^= 1; "
            f"s3.put_object(Bucket={BUCKET!r}, Key=key, Body=bytes(body)); print(key)")
    key = run([sys.executable, "-c", flip], repo, **inside).stdout.strip()  # dvc/files/md5/ab/cdef…
    digest = "".join(key.split("/")[-2:])
    (corrupted,) = [path.relative_to(repo) for output in OUTPUTS for path in (repo / output).rglob("*")
                    if path.is_file() and hashlib.md5(path.read_bytes()).hexdigest() == digest][:1]
    second = tmp_path / "second"
    run(["git", "clone", "--quiet", str(repo), str(second)], tmp_path)
    for args in remote:
        run([*dvc, *args], second)
    pulled = run([*dvc, "pull"], second, timeout=600, check=False, **inside)
    message = pulled.stdout + pulled.stderr
    assert pulled.returncode != 0 and "Checkout failed" in message, message[-3000:]
    output = next(o for o in OUTPUTS if str(corrupted).startswith(o))
    assert output in message, (corrupted, message[-3000:])
    assert not (second / corrupted).exists(), "the corrupted file was not checked out"
