"""The fault suite: what an adversarial user or a hostile machine does to a run, and what must hold.

On the smoke experiment cut to one site (tiny model, six SAEs, seconds per stage):
- SIGKILL of the stage's process at several exact points of caching, training and evaluation, then the
  stage again: the outputs equal those of an uninterrupted run, byte for byte;
- one flipped byte in a shard, a weights file or a cfg.json (and truncated, empty, inconsistent
  checkpoints): refused naming the file, then repaired by the documented command;
- names with shell metacharacters refused before anything runs, and no shell argument left unquoted;
- bad values refused naming the full key; stage errors printed as one message, without a traceback;
- a full disk (a small tmpfs; skipped where it cannot be mounted): a clear error naming the path and
  the free space, nothing finished lost, and the rerun completes;
- a killed Snakemake run's stale lock cleared by the next run, a second live run refused;
- a deleted store manifest rebuilt, a corrupt journal restarted, an offline hub corpus refused at once,
  a moved data folder still read.

`python scripts/fault_suite.py` runs this file and writes results/benchmarks/faults.json.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import smoke_config

from gatedsae.plan.config import REPO_ROOT, ConfigError, load_config

SITE, LAYER = "resid_post", 1
# The smoke experiment at one site: 5 training shards and 1 held-out shard, six SAEs of 16 steps
# (the state saved every 4), eight windows for the spliced losses.
FAULTS = ["experiment.sites=[resid_post]", "sweep.rescale_shift=false", "train.tokens=2048",
          "train.checkpoint_every_steps=4", "evaluate.ce_windows=8"]


def fault_config(root: Path, *overrides: str):
    return smoke_config(root, *FAULTS, *overrides)


def _env(**extra: str) -> dict:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def stage_args(stage: str, root: Path, *extra: str) -> list[str]:
    return [stage, "experiment=smoke", f"paths.data={root}", *FAULTS, *extra]


def cli(stage: str, root: Path, *extra: str, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m gatedsae <stage>` on the fault configuration."""
    return subprocess.run([sys.executable, "-m", "gatedsae", *stage_args(stage, root, *extra)], env=env or _env(),
                          capture_output=True, text=True, timeout=timeout)


def patched_cli(target: str, mode: str, count: int, stage: str, root: Path, *extra: str) -> subprocess.CompletedProcess:
    """A stage run with one function patched (tests/fault_injection): SIGKILL before or after its n-th call
    (a kill at an exact point of the real code), or a no-op (a check switched off)."""
    module, attribute = target.split(":")
    env = _env(GATEDSAE_TEST_FAULT=f"{stage}:{module}:{attribute}:{mode}:{count}")
    env["PYTHONPATH"] = f"{Path(__file__).parent / 'fault_injection'}{os.pathsep}{env['PYTHONPATH']}"
    return subprocess.run([sys.executable, "-m", "gatedsae", *stage_args(stage, root, *extra)], env=env,
                          capture_output=True, text=True, timeout=300)


def assert_clean_error(result: subprocess.CompletedProcess, *names: str, code: int | None = None) -> None:
    """Refused with one message naming `names`, no traceback, a non-zero exit code."""
    assert result.returncode != 0, result.stdout[-2000:]
    if code is not None:
        assert result.returncode == code, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    for name in names:
        assert name in result.stderr, result.stderr[-2000:]


# --- the reference: one uninterrupted run, and copies of its data to break ----------------------------


@pytest.fixture(scope="module")
def reference(smoke_tokens, tiny_model, tmp_path_factory):
    """Cache, train and evaluate the fault configuration without interruption (read-only)."""
    from gatedsae.activations.cache import cache_activations
    from gatedsae.evaluation.evaluate import evaluate_grid
    from gatedsae.training.stages import train_grid

    root = tmp_path_factory.mktemp("reference")
    copy_data(smoke_tokens.paths.root, root, "text", "tokens")
    config = fault_config(root)
    cache_activations(config, loaded=tiny_model)
    train_grid(config, SITE, LAYER, progress=False)
    evaluate_grid(config, SITE, LAYER, progress=False, loaded=tiny_model)
    return config


def copy_data(source: Path, target: Path, *parts: str) -> Path:
    for part in parts:
        shutil.copytree(Path(source) / part, Path(target) / part, symlinks=True)
    return Path(target)


def store_dir(root: Path) -> Path:
    return fault_config(root).paths.activations_dir("tiny", "tiny", SITE, LAYER)


def grid_dir(root: Path) -> Path:
    return fault_config(root).paths.checkpoints_dir("tiny", "tiny", SITE, LAYER, "smoke")


def store_files(root: Path) -> dict:
    """Every shard's bytes and the manifest of the store."""
    directory = store_dir(root)
    files = {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.glob("*/shard_*.npy"))}
    return {**files, "manifest": json.loads((directory / "manifest.json").read_text())}


def checkpoint_files(root: Path) -> dict:
    """Every SAE's weights and cfg.json, as bytes."""
    from gatedsae.plan.grid import read_grid_index

    return {entry["sae"]: [(entry["path"] / name).read_bytes() for name in ("sae_weights.safetensors", "cfg.json")]
            for entry in read_grid_index(grid_dir(root) / "grid.json")}


def metric_rows(root: Path) -> list[dict]:
    config = fault_config(root)
    path = config.paths.evaluation_dir("tiny", "tiny", SITE, LAYER, "smoke") / "metrics.json"
    return [{k: v for k, v in row.items() if k != "checkpoint"} for row in json.loads(path.read_text())["rows"]]


def flip_byte(path: Path, offset: int = -3) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


# --- SIGKILL, then the same command: the outputs of an uninterrupted run ---------------------------------


@pytest.mark.parametrize("point", [
    ("gatedsae.activations.store:StoreWriter.write_shard", "kill-before", 3),  # two training shards finished
    ("numpy:save", "kill-after", 4),  # a shard's bytes written to its temporary file, not yet renamed
    ("gatedsae.activations.store:StoreWriter.write_shard", "kill-before", 6),  # in the held-out split
], ids=["between-shards", "inside-a-shard-write", "held-out-split"])
def test_sigkill_during_caching_then_rerun_equals_an_uninterrupted_run(point, reference, tiny_model, tmp_path):
    """Caching killed with SIGKILL (between shards, inside a shard write, in the held-out split), then run
    again: every shard and the manifest equal an uninterrupted run's."""
    from gatedsae.activations.cache import cache_activations

    root = copy_data(reference.paths.root, tmp_path, "text", "tokens")
    killed = patched_cli(*point, "cache", root)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (store_dir(root) / "manifest.json").exists()
    cache_activations(fault_config(root), loaded=tiny_model)  # what `python -m gatedsae cache` runs again
    assert store_files(root) == store_files(reference.paths.root)


@pytest.mark.parametrize("point", [
    ("gatedsae.training.trainer:GridTrainer.save_state", "kill-after", 2),  # mid-training, state saved at step 8
    ("gatedsae.saes.checkpoints:write_checkpoint", "kill-after", 2),  # two of six SAEs exported, no grid.json
], ids=["mid-training", "mid-export"])
def test_sigkill_during_training_then_rerun_equals_an_uninterrupted_run(point, reference, tmp_path):
    """Training killed with SIGKILL (mid-training, mid-export), then run again: every checkpoint equals an
    uninterrupted run's, byte for byte."""
    from gatedsae.training.stages import train_grid

    root = copy_data(reference.paths.root, tmp_path, "text", "tokens", "activations")
    killed = patched_cli(*point, "train", root, f"--site={SITE}", f"--layer={LAYER}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert not (grid_dir(root) / "grid.json").exists()
    train_grid(fault_config(root), SITE, LAYER, progress=False)  # what `python -m gatedsae train` runs again
    assert checkpoint_files(root) == checkpoint_files(reference.paths.root)


@pytest.mark.parametrize("point", [
    ("gatedsae.evaluation.spliced:HeldOutWindows.losses", "kill-before", 2),  # one SAE saved, the next one's CE not started
    ("gatedsae.evaluation.spliced:SplicedLM.token_losses", "kill-after", 5),  # in the middle of the spliced losses
], ids=["between-saes", "mid-spliced-losses"])
def test_sigkill_during_evaluation_then_rerun_equals_an_uninterrupted_run(point, reference, tiny_model, tmp_path):
    """Evaluation killed with SIGKILL (before and during the spliced losses), then run again: the metrics
    equal an uninterrupted run's."""
    from gatedsae.evaluation.evaluate import evaluate_grid

    root = copy_data(reference.paths.root, tmp_path, "text", "tokens", "activations", "checkpoints")
    killed = patched_cli(*point, "evaluate", root, f"--site={SITE}", f"--layer={LAYER}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    evaluate_grid(fault_config(root), SITE, LAYER, progress=False, loaded=tiny_model)  # `python -m gatedsae evaluate`
    assert metric_rows(root) == metric_rows(reference.paths.root)


# --- one flipped byte: refused by name, repaired by the documented command -------------------------------


def test_flipped_byte_in_a_shard_is_refused_by_name_and_the_cache_step_repairs_it(reference, tiny_model, tmp_path,
                                                                                  capsys):
    """One flipped byte in a training shard: training refuses it naming the file and the repair command;
    the cache step (that command) recomputes it, and the store equals the original."""
    from gatedsae.activations.cache import cache_activations
    from gatedsae.cli.integrity import verify_experiment

    root = copy_data(reference.paths.root, tmp_path, "text", "tokens", "activations")
    shard = store_dir(root) / "train" / "shard_00001.npy"
    flip_byte(shard)
    refused = cli("train", root, f"--site={SITE}", f"--layer={LAYER}")
    assert_clean_error(refused, str(shard), "python -m gatedsae cache", code=4)
    cache_activations(fault_config(root), loaded=tiny_model)  # the command the error names
    assert "shard_00001.npy does not match its recorded sha256" in capsys.readouterr().out
    assert store_files(root) == store_files(reference.paths.root)
    assert "all intact" in verify_experiment(fault_config(root))


def test_flipped_byte_in_a_weights_file_is_refused_by_name_and_retrained(reference, tiny_model, tmp_path, capsys):
    """One flipped byte in an SAE's weights: evaluation and `verify` refuse it naming the file; the training
    stage retrains that SAE alone, to the same bytes, and evaluation then gives the same metrics."""
    from gatedsae.cli.integrity import verify_experiment
    from gatedsae.core.errors import IntegrityError
    from gatedsae.evaluation.evaluate import evaluate_grid
    from gatedsae.training.stages import train_grid

    root = copy_data(reference.paths.root, tmp_path, "text", "tokens", "activations", "checkpoints", "evaluation")
    weights = grid_dir(root) / "gated_w64_l1_0.1" / "sae_weights.safetensors"
    flip_byte(weights, offset=-5)  # a sign or mantissa bit of the last tensor: still loads, numbers change
    refused = cli("evaluate", root, f"--site={SITE}", f"--layer={LAYER}")
    assert_clean_error(refused, str(weights), "does not match the sha256", "python -m gatedsae train", code=4)
    with pytest.raises(IntegrityError, match="--site=resid_post --layer=1"):
        verify_experiment(fault_config(root))
    train_grid(fault_config(root), SITE, LAYER, progress=False)  # the command the error names
    out = capsys.readouterr().out
    assert "retraining gated_w64_l1_0.1" in out and "training 1\n" in out
    assert checkpoint_files(root) == checkpoint_files(reference.paths.root)
    evaluate_grid(fault_config(root), SITE, LAYER, progress=False, loaded=tiny_model)
    assert metric_rows(root) == metric_rows(reference.paths.root)


def test_flipped_byte_in_a_cfg_json_is_refused_by_name_and_retrained(reference, tmp_path, tiny_model):
    """One changed byte in a cfg.json (still valid JSON): refused naming the file, retrained by the training
    stage to the original bytes."""
    from gatedsae.saes.checkpoints import CheckpointError, read_checkpoint
    from gatedsae.training.stages import train_grid

    root = copy_data(reference.paths.root, tmp_path, "tokens", "activations", "checkpoints")
    cfg = grid_dir(root) / "baseline_w96_l1_0.01" / "cfg.json"
    text = cfg.read_text()
    cfg.write_text(text.replace('"d_sae": 96', '"d_sae": 97'))  # one byte: valid JSON, wrong number
    with pytest.raises(CheckpointError, match=str(cfg)):
        read_checkpoint(cfg.parent)
    train_grid(fault_config(root), SITE, LAYER, progress=False)  # `python -m gatedsae train`: retrains it
    assert cfg.read_text() == text
    assert checkpoint_files(root) == checkpoint_files(reference.paths.root)


def _legacy(directory: Path) -> None:
    """Drop the recorded hashes, as in a checkpoint exported before they existed: the structural checks
    must then catch what the hashes would."""
    record = json.loads((directory / "training.json").read_text())
    record.pop("sha256")
    record.pop("content_sha256")  # nor was the record itself sealed
    (directory / "training.json").write_text(json.dumps(record))


def _truncate(d: Path) -> None:
    weights = d / "sae_weights.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _drop_tensor(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "sae_weights.safetensors")
    tensors.pop("b_enc")
    save_file(tensors, d / "sae_weights.safetensors")


def _nan(d: Path) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(d / "sae_weights.safetensors")
    tensors["W_dec"][0, 0] = float("nan")
    save_file(tensors, d / "sae_weights.safetensors")


def _shape(d: Path) -> None:
    cfg = json.loads((d / "cfg.json").read_text())
    (d / "cfg.json").write_text(json.dumps({**cfg, "d_in": cfg["d_in"] + 1}))


@pytest.mark.parametrize("damage, legacy, file, message", [
    (_truncate, False, "sae_weights.safetensors", "does not match the sha256"),
    (_truncate, True, "sae_weights.safetensors", "truncated or corrupt"),
    (lambda d: (d / "sae_weights.safetensors").write_bytes(b""), True, "sae_weights.safetensors", "is empty"),
    (lambda d: (d / "cfg.json").write_text('{"architecture": "standard", "d_in'), False, "cfg.json", "not valid JSON"),
    (lambda d: (d / "cfg.json").write_text('{"architecture": "standard", "d_in'), True, "cfg.json", "not valid JSON"),
    (_shape, True, "cfg.json", "implies"),
    (_drop_tensor, True, "sae_weights.safetensors", "lacks the tensors b_enc"),
    (_nan, True, "sae_weights.safetensors", "NaN or inf"),
    (lambda d: (d / "training.json").unlink(), False, "training.json", "is missing"),
], ids=["truncated", "truncated-legacy", "empty", "broken-cfg", "broken-cfg-legacy", "cfg-disagrees-with-tensors",
        "missing-tensor", "nan-weights-legacy", "missing-record"])
def test_damaged_checkpoint_is_refused_naming_the_file_and_counts_as_unfinished(damage, legacy, file, message,
                                                                                  reference, tmp_path):
    """A truncated, empty, inconsistent or incomplete checkpoint (with and without recorded hashes) is
    refused naming the file and the repair, and the trainer counts it as not finished."""
    from gatedsae.saes.checkpoints import CheckpointError, read_checkpoint
    from gatedsae.training.stages import _finished

    directory = copy_data(reference.paths.root, tmp_path, "checkpoints") / grid_dir(tmp_path).relative_to(
        tmp_path) / "baseline_w96_l1_0.01"
    key = json.loads((directory / "training.json").read_text())["training_key"]
    assert _finished(directory, key)
    if legacy:
        _legacy(directory)
    damage(directory)
    with pytest.raises(CheckpointError, match=str(directory / file)) as error:
        read_checkpoint(directory)
    assert message in str(error.value) and "python -m gatedsae train" in str(error.value)
    assert not _finished(directory, key), "a damaged checkpoint must be retrained"


# --- names and values: refused before anything runs ------------------------------------------------------


@pytest.mark.parametrize("key", ["model.name", "corpus.name", "sweep.name", "experiment.name"])
@pytest.mark.parametrize("name", ["x;id>PWNED;#", "a&b", "a(b", "$(touch PWNED)", "a b", "../up", "-rf"])
def test_names_with_shell_metacharacters_are_refused(key, name):
    """A name with shell or path metacharacters is refused when the configuration is loaded."""
    with pytest.raises(ConfigError, match=f"config key '{key}'.*letters, digits"):
        load_config(["experiment=smoke", f"{key}='{name}'"])


def test_no_shell_injection_through_snakemake(tmp_path):
    """The issue's attack, through Snakemake: refused when the workflow is read, nothing run. And every
    shell argument of the Snakefile is quoted."""
    target = "data/models/x;id>PWNED;#/prepared.json"
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(tmp_path),
                             "--cores", "1", target, "--config", "experiment=smoke",
                             "overrides=model.name='x;id>PWNED;#'"], env=_env(), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0
    assert "model.name" in result.stdout + result.stderr
    assert not list(tmp_path.rglob("PWNED")) and not (REPO_ROOT / "PWNED").exists()
    snakefile = (REPO_ROOT / "Snakefile").read_text()
    assert "{log}" not in snakefile and "{log:q}" in snakefile
    assert all(f"{{wildcards.{w}:q}}" in snakefile and f"{{wildcards.{w}}}" not in snakefile for w in ("site", "layer"))


@pytest.mark.parametrize("override, key", [
    ("sweep.groups.0.l1=[inf]", "sweep.groups.0.l1"),
    ("sweep.groups.0.l1=[nan]", "sweep.groups.0.l1"),
    ("sweep.groups.1.lr=inf", "sweep.groups.1.lr"),
    ("sweep.groups.0.width_ratio=0.01", "sweep.groups.0.width_ratio"),
    ("train.lr_warmup_steps=-5", "train.lr_warmup_steps"),
    ("train.resample_window_steps=0", "train.resample_window_steps"),
    ("sweep.groups.2.l1=[abc]", "sweep.groups.2.l1"),
    ("sweep.groups.2.l1=abc", "sweep.groups.2.l1"),
])
def test_bad_values_are_refused_naming_the_full_key(override, key):
    """Non-finite λ or lr, a width that rounds to 0, negative step counts, a wrong type inside a sweep
    group: refused before any compute, naming the full key."""
    with pytest.raises(ConfigError, match=f"config key '{key}"):
        load_config(["experiment=smoke", override])


def test_stage_errors_are_one_message_without_a_traceback(reference, tmp_path):
    """A configuration error found at stage time and a missing input: one message, no traceback, exit
    codes 2 and 4; GATEDSAE_DEBUG=1 shows the traceback."""
    root = copy_data(reference.paths.root, tmp_path, "text", "tokens", "activations")
    too_many = cli("cache", root, "cache.train_tokens=100000000")  # a ConfigError found at stage time
    assert_clean_error(too_many, "configuration error", "cache.train_tokens", code=2)
    untrained = cli("evaluate", root, f"--site={SITE}", f"--layer={LAYER}")  # a missing input
    assert_clean_error(untrained, "grid.json", code=4)
    debug = cli("evaluate", root, f"--site={SITE}", f"--layer={LAYER}", env=_env(GATEDSAE_DEBUG="1"))
    assert "Traceback" in debug.stderr and debug.returncode == 4


# --- a full disk ---------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of a given size (KiB) mounted in tmp_path, or skip where this user cannot mount one."""
    mounted = []

    def mount(kib: int) -> Path:
        point = tmp_path / "disk"
        point.mkdir()
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("mounting a tmpfs needs root (the disk-full cases run where the tests run as root)")
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(point)],
                                capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], capture_output=True)


def resize(point: Path, kib: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={kib}k", str(point)], check=True, capture_output=True)


def test_disk_preflight_refuses_a_cache_that_cannot_fit(reference, small_disk, tmp_path):
    """A cache larger than the free space is refused before any shard, naming the folder, the free space
    and what to lower."""
    root = small_disk(64)
    (root / "tokens").symlink_to(copy_data(reference.paths.root, tmp_path / "outside", "tokens") / "tokens")
    refused = cli("cache", root)
    assert_clean_error(refused, "resource error", "activations", "free", "cache.train_tokens", code=3)
    assert not list(root.rglob("shard_*.npy")), "the preflight comes before any shard"


def test_disk_full_while_caching_keeps_finished_shards_and_the_rerun_completes(reference, tiny_model, small_disk,
                                                                                tmp_path):
    """The disk fills while caching (a small tmpfs, the preflight switched off as if another process took
    the space): one message naming the file and the free space, every finished shard intact, and the
    rerun with room completes to the original store."""
    from gatedsae.activations.cache import cache_activations
    from gatedsae.activations.store import StoreManifest

    root = small_disk(100)  # room for two or three shards of six
    (root / "tokens").symlink_to(copy_data(reference.paths.root, tmp_path / "outside", "tokens") / "tokens")
    full = patched_cli("gatedsae.plan.preflight:check_disk", "noop", 0, "cache", root)  # as if the disk filled meanwhile
    assert_clean_error(full, "the disk is full", "free of", str(store_dir(root)), code=5)
    journal = StoreManifest.read(store_dir(root) / "progress.json")
    finished = journal.splits["train"].shards
    assert finished and all(record.problem(store_dir(root)) is None for record in finished)
    resize(root, 2048)
    cache_activations(fault_config(root), loaded=tiny_model)  # the same command, with room
    assert store_files(root) == store_files(reference.paths.root)


def test_disk_full_while_saving_the_training_state_keeps_the_last_one_and_resumes(reference, small_disk, tmp_path):
    """The disk fills while the training state is saved: one message naming training_state.pt and the
    free space, the last good state kept, and the rerun with room resumes to the original checkpoints."""
    import torch

    from gatedsae.training.stages import train_grid

    root = small_disk(1280)  # one training state (~860 KiB: every SAE twice, smoke trains two seeds) fits, not a second
    outside = copy_data(reference.paths.root, tmp_path / "outside", "tokens", "activations")
    for part in ("tokens", "activations"):
        (root / part).symlink_to(outside / part)
    state = grid_dir(root) / "training_state.pt"
    full = cli("train", root, f"--site={SITE}", f"--layer={LAYER}")
    assert_clean_error(full, str(state), "the disk is full", code=5)
    assert torch.load(state, weights_only=False)["step"] == 4, "the last good state is kept"
    assert not list(grid_dir(root).glob(".*.tmp")), "no partial file is left behind"
    resize(root, 4096)
    train_grid(fault_config(root), SITE, LAYER, progress=False)  # the same command, with room: resumes at step 4
    assert checkpoint_files(root) == checkpoint_files(reference.paths.root)


def test_unwritable_data_folder_is_named(reference, tiny_model, small_disk, tmp_path):
    """A data folder that cannot be written (a read-only mount: root ignores file permissions): one error
    naming the file it tried to write and the fix."""
    from gatedsae.activations.cache import cache_activations
    from gatedsae.core.errors import StorageError

    root = small_disk(1024)
    (root / "tokens").symlink_to(copy_data(reference.paths.root, tmp_path / "outside", "tokens") / "tokens")
    subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True, capture_output=True)
    with pytest.raises(StorageError, match=f"{store_dir(root)}.*permission denied.*writable"):
        cache_activations(fault_config(root), loaded=tiny_model)


# --- Snakemake's lock after a kill, and two live runs ----------------------------------------------------


@pytest.mark.snakemake
def test_killed_snakemake_run_leaves_no_blocking_lock_and_two_live_runs_never_overlap(reference, tmp_path,
                                                                                       record_property):
    """Through the run lock: a second run is refused while the first lives, and while a Snakemake process
    started without the wrapper works in the directory; the first killed with SIGKILL leaves Snakemake's
    lock, which the next run finds stale and clears, then completes to the same outputs."""
    from gatedsae.cli.runlock import holder, live_processes

    record_property("faults", ["Snakemake killed with SIGKILL, its lock left behind",
                               "a second run started while the first lives"])

    work = tmp_path / "work"
    work.mkdir()
    overrides = " ".join([*FAULTS, f"paths.data={work / 'data'}"])
    tokens = fault_config(work / "data").paths.tokens_dir("tiny", "tiny")
    wrapper = [sys.executable, "-m", "gatedsae.cli.runlock", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(work),
               "--profile", str(REPO_ROOT / "profiles" / "local"), "--cores", "1", str(tokens / "manifest.json"),
               "--config", "experiment=smoke", f"overrides={overrides}"]  # model, corpus, tokens: three jobs
    first_log = open(tmp_path / "first.log", "w")
    first = subprocess.Popen(wrapper, env=_env(), stdout=first_log, stderr=subprocess.STDOUT, start_new_session=True)
    locks = work / ".snakemake" / "locks"
    deadline = time.time() + 240
    while time.time() < deadline and first.poll() is None and not list(locks.glob("*.lock")):
        time.sleep(0.05)
    assert first.poll() is None, "the first run ended before it could be observed"
    second = subprocess.run(wrapper, env=_env(), capture_output=True, text=True, timeout=120)
    assert second.returncode == 6 and f"pid {first.pid}" in second.stderr, second.stderr[-2000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    first_log.close()
    assert list(locks.glob("*.lock")), "the kill left Snakemake's lock behind"
    # Jobs of the killed run may still be finishing (they run in their own process group and hold the lock);
    # a run started meanwhile is refused. Wait for them, then check that refusal with a stand-in process.
    while (live_processes(work.resolve()) or holder(work)) and time.time() < deadline:
        time.sleep(0.2)
    stand_in = subprocess.Popen(["bash", "-c", "exec -a snakemake sleep 120"], cwd=work)
    try:
        time.sleep(0.5)
        refused = subprocess.run(wrapper, env=_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 6 and f"{stand_in.pid}: snakemake" in refused.stderr, refused.stderr[-2000:]
    finally:
        stand_in.kill()
        stand_in.wait()
    third = subprocess.run(wrapper, env=_env(), capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-3000:]
    assert "stale lock" in third.stderr
    expected = reference.paths.tokens_dir("tiny", "tiny")
    for split in ("train", "heldout"):
        assert (tokens / f"{split}.npy").read_bytes() == (expected / f"{split}.npy").read_bytes()


# --- resume state and paths ----------------------------------------------------------------------------


def test_deleted_store_manifest_is_rebuilt_without_recomputing_and_the_workflow_targets_it(reference, tiny_model,
                                                                                           tmp_path):
    """A deleted store manifest: `verify` names the command, the cache step rebuilds it from the journal
    without recomputing a shard, and the workflow targets it so `make run` does too."""
    from gatedsae.activations.cache import cache_activations
    from gatedsae.cli.integrity import verify_experiment
    from gatedsae.core.errors import IntegrityError
    from gatedsae.plan.workflow import ExperimentPlan

    root = copy_data(reference.paths.root, tmp_path, "tokens", "activations")
    (store_dir(root) / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="python -m gatedsae cache"):
        verify_experiment(fault_config(root))
    shards = {p: p.stat().st_mtime_ns for p in store_dir(root).glob("*/shard_*.npy")}
    cache_activations(fault_config(root), loaded=tiny_model)
    assert {p: p.stat().st_mtime_ns for p in shards} == shards, "no shard was recomputed"
    assert store_files(root) == store_files(reference.paths.root)
    # `make run` targets every store manifest and grid index, so one deleted is rebuilt, not skipped.
    targets = ExperimentPlan("smoke", [f"paths.data={root}"]).targets()
    assert str(store_dir(root) / "manifest.json") in targets and str(grid_dir(root) / "grid.json") in targets


def test_corrupt_journal_restarts_the_store(reference, tiny_model, tmp_path):
    """An unreadable caching journal: the store is cached again from the start, equal to the original."""
    from gatedsae.activations.cache import cache_activations

    root = copy_data(reference.paths.root, tmp_path, "tokens", "activations")
    (store_dir(root) / "manifest.json").unlink()
    (store_dir(root) / "progress.json").write_text('{"format_version": 1, "spl')
    cache_activations(fault_config(root), loaded=tiny_model)
    assert store_files(root) == store_files(reference.paths.root)


def test_moved_data_folder_is_read_where_it_now_is(reference, tmp_path):
    """grid.json holds paths relative to the data root: a moved data folder evaluates from where it is."""
    from gatedsae.evaluation.evaluate import evaluate_grid
    from gatedsae.training.stages import train_grid

    before = copy_data(reference.paths.root, tmp_path / "before", "tokens", "activations", "checkpoints", "evaluation")
    train_grid(fault_config(before), SITE, LAYER, progress=False)  # nothing to train: rewrites grid.json here
    after = tmp_path / "after"
    shutil.move(before, after)
    metrics = json.loads(evaluate_grid(fault_config(after), SITE, LAYER, progress=False).read_text())
    assert all(row["checkpoint"].startswith(str(after)) for row in metrics["rows"])
    assert all(not entry["path"].startswith("/") for entry in json.loads((grid_dir(after) / "grid.json").read_text())["saes"])


def test_offline_hub_corpus_fails_at_once(tmp_path):
    """A hub corpus on a machine that cannot reach the hub fails at once saying what to do."""
    env = _env(HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        env.pop(key, None)
    started = time.time()
    result = subprocess.run([sys.executable, "-m", "gatedsae", "fetch-corpus", "corpus=pile_uncopyrighted",
                             f"paths.data={tmp_path}"], env=env, capture_output=True, text=True, timeout=120)
    seconds = time.time() - started
    assert_clean_error(result, "pile_uncopyrighted", "offline", "huggingface-cli download")
    assert seconds < 15, f"took {seconds:.1f} s"


# --- sealed records, Snakemake's metadata, stale temporaries, the reference swap ----------------------------


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_text('{"rows": [1, 2'), "is not valid JSON"),
    (lambda p: p.write_bytes(b"\xff\xfe\x00\x01"), "is not valid JSON"),
    (lambda p: p.write_text("[1, 2]"), "holds a JSON list, not a dict"),
    (lambda p: p.write_text(p.read_text().replace('"value": 1', '"value": 2')), "does not match the sha256 it was"),
], ids=["truncated", "binary", "not-an-object", "edited"])
def test_damaged_json_record_is_refused_naming_the_file_and_the_repair(damage, message, tmp_path):
    """Every JSON file a number depends on is read by one reader: a broken one is an IntegrityError naming
    the file, what is wrong, and the command that rebuilds it; never a bare JSONDecodeError."""
    from gatedsae.core.errors import IntegrityError
    from gatedsae.core.sealed import read_json, write_sealed_json

    path = tmp_path / "record.json"
    write_sealed_json(path, {"value": 1, "nested": {"b": [1.5, None]}})
    assert read_json(path, "") == {"value": 1, "nested": {"b": [1.5, None]}, "content_sha256": read_json(path, "")["content_sha256"]}
    damage(path)
    with pytest.raises(IntegrityError, match=f"{path}.*{message}.*Run make run") as raised:
        read_json(path, "Run make run.")
    assert raised.value.__cause__ is None or "Traceback" not in str(raised.value)


def test_corrupt_snakemake_metadata_record_is_removed_naming_its_output(tmp_path):
    """A metadata record Snakemake's reader would crash on (not UTF-8, not JSON, not a record) is removed
    by the run lock with one line naming the output it described; good records stay."""
    import base64

    from gatedsae.cli.runlock import clear_corrupt_metadata

    metadata = tmp_path / ".snakemake" / "metadata"
    metadata.mkdir(parents=True)

    def record(output: str) -> Path:
        return metadata / base64.urlsafe_b64encode(output.encode()).decode()

    record("results/smoke/metrics.csv").write_bytes(b"\xff\xfe\x00garbage")
    record("results/smoke/headline.csv").write_text("[1, 2]")
    good = record("results/smoke/levels.csv")
    good.write_text(json.dumps({"record_format_version": 4, "code": None, "rule": "aggregate", "input": [],
                                "log": [], "params": [], "shellcmd": None, "incomplete": False,
                                "starttime": 1.0, "endtime": 2.0, "job_hash": 1, "conda_env": None,
                                "container_img_url": None, "input_checksums": {}}))
    lines = clear_corrupt_metadata(tmp_path)
    assert len(lines) == 2 and good.exists(), lines
    assert any("results/smoke/metrics.csv" in line for line in lines)
    assert any("results/smoke/headline.csv" in line for line in lines)
    assert clear_corrupt_metadata(tmp_path) == []


def test_a_killed_writer_leaves_no_temporary_file_behind_the_next_write(tmp_path):
    """A writer killed inside `atomic_path` leaves `.<name>.*.tmp`; the next write of that file removes it."""
    from gatedsae.core.atomic import write_text_atomic

    target = tmp_path / "fig[1].png"
    (tmp_path / ".fig[1].png.abc123.tmp").write_text("half")
    (tmp_path / ".other.png.abc123.tmp").write_text("another file's")
    write_text_atomic(target, "whole")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.png.abc123.tmp", "fig[1].png"]


def test_reference_swap_never_leaves_the_reader_without_a_reference(tmp_path, monkeypatch):
    """publish-reference swaps the new copy in with one atomic exchange: no rename ever leaves the folder
    missing (a kill at any point leaves the old reference or the new one); where the exchange is not
    available, a kill between the two renames is undone by the next call."""
    from gatedsae.core import atomic

    target = tmp_path / "reference" / "smoke"
    target.mkdir(parents=True)
    (target / "verdict.md").write_text("old")

    def killed(*args, **kwargs):
        raise SystemExit("killed between two renames")

    monkeypatch.setattr(Path, "rename", killed)  # the fallback's renames would die: the exchange needs none
    with atomic.atomic_directory(target) as staging:
        (staging / "verdict.md").write_text("new")
    assert (target / "verdict.md").read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["smoke"]
    monkeypatch.undo()
    # The fallback, killed between its renames: the old folder is put back before anything else.
    target.rename(target.with_name(".smoke.old"))
    atomic.restore_directory(target)
    assert (target / "verdict.md").read_text() == "new"


def test_truncated_evaluation_stops_aggregate_naming_the_file(tmp_path):
    """aggregate on a truncated evaluation: one line naming the file and the repair, exit code 4."""
    from gatedsae.reporting.tables import collect
    from gatedsae.core.errors import IntegrityError

    path = tmp_path / "metrics.json"
    path.write_text('{"rows": [{"site": "resid_')
    with pytest.raises(IntegrityError, match=f"{path} is not valid JSON.*re-evaluates it"):
        collect([path])
