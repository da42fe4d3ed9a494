"""The fault suite through Snakemake: a finished run, a fault, a plain rerun, and the rerun's outputs equal
to the uninterrupted run's, file by file (sha256).

One smoke run at one site is finished once per session (`finished`); every test copies it (file times
and Snakemake's metadata kept), breaks it as a careless user, a crash or a bad disk would, and runs the
same Snakemake command again, as `make run` does (through the run lock). Jobs are killed for real: a
SIGKILL of the job's own process at an exact point of the code (tests/fault_injection/sitecustomize.py).
Faults of the data (tokens, indexes, records, evaluations) rerun through the evaluate stage only
(experiment.through=evaluate, which changes no job's identity); faults of the reported outputs through
the report.

A Snakemake rerun costs seconds per job, so faults whose repairs are independent (each owned by another
output, or each named on its own line) share one copy and one rerun: every fault is checked on its own
(its line, the rule that rebuilt it), and the outputs as a whole against the uninterrupted run. Each test
records its faults (`faults` property) for results/benchmarks/faults.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_faults import _env, flip_byte

from gatedsae.plan.config import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.snakemake]

# The smoke experiment at one site, its rescale-and-shift grid included: 6 + 2 SAEs, seconds per job.
OVERRIDES = ("experiment.sites=[resid_post]", "train.tokens=2048", "evaluate.ce_windows=8", "intervals.resamples=200")
THROUGH_EVALUATE = ("experiment.through=evaluate",)
INJECTION = Path(__file__).parent / "fault_injection"
GRID = Path("data/checkpoints/tiny/tiny/resid_post/layer1/smoke")
EVALUATION = Path("data/evaluation/tiny/tiny/resid_post/layer1/smoke")
TOKENS = Path("data/tokens/tiny/tiny")
STORE = Path("data/activations/tiny/tiny/resid_post/layer1")
RESULTS, FIGURES = Path("results/smoke"), Path("paper_figures/smoke")
# What a rerun must reproduce byte for byte: everything the run writes but its logs, timings and the
# states it resumes from (a training state; each SAE's saved evaluation, which holds its timing: the
# grid's metrics.json holds its numbers).
COMPARED = (RESULTS, FIGURES, TOKENS, STORE, GRID, EVALUATION)
NOT_COMPARED = ("training_state.pt", "progress.json")


def compared(relative: Path) -> bool:
    """Not compared: resumable states, and each SAE's saved evaluation (<split>/<variant>/<sae>.json, or
    <variant>/<sae>.json in a run without a held-out split) wherever it sits below the grid's metrics.json."""
    saved_evaluation = EVALUATION in relative.parents and relative.parent != EVALUATION
    return relative.name not in NOT_COMPARED and not saved_evaluation


def snakemake(work: Path, *extra: str, overrides: tuple[str, ...] = (), fault: str = "") -> subprocess.CompletedProcess:
    """`make run` on the copy `work`: Snakemake through the run lock, with the fault injected if given."""
    env = _env(GATEDSAE_TEST_FAULT=fault)
    if fault:
        env["PYTHONPATH"] = f"{INJECTION}{os.pathsep}{env['PYTHONPATH']}"
    command = [sys.executable, "-m", "gatedsae.cli.runlock", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(work),
               "--profile", str(REPO_ROOT / "profiles" / "local"), "--cores", "2", *extra,
               "--config", "experiment=smoke", "overrides=" + " ".join([*OVERRIDES, *overrides])]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)


def content(relative: Path, data: bytes) -> bytes:
    """What must be equal of a file: its bytes, but the tokens manifest without its timing, and a grid's
    training log (appended as SAEs finish, so retraining one moves its rows) as a set of rows."""
    if relative == TOKENS / "manifest.json":
        return json.dumps({k: v for k, v in json.loads(data).items() if k not in ("seconds", "content_sha256")}).encode()
    if relative == GRID / "curves.csv":
        header, *rows = data.decode().splitlines()
        return "\n".join([header, *sorted(rows)]).encode()
    return data


def snapshot(work: Path) -> dict[str, str]:
    """sha256 of every compared file of a run."""
    found = {}
    for folder in COMPARED:
        for path in sorted((work / folder).rglob("*")):
            relative = path.relative_to(work)
            if path.is_file() and compared(relative):
                found[str(relative)] = hashlib.sha256(content(relative, path.read_bytes())).hexdigest()
    return found


def leftovers(work: Path) -> list[str]:
    """Temporary files a killed writer left anywhere in the run."""
    return [str(p.relative_to(work)) for p in work.rglob("*.tmp") if ".snakemake" not in p.parts]


@pytest.fixture(scope="session")
def finished(tmp_path_factory):
    """One uninterrupted run of the fault configuration through the report (read-only), and its outputs."""
    work = tmp_path_factory.mktemp("finished")
    result = snakemake(work)
    assert result.returncode == 0, result.stderr[-4000:]
    return work, snapshot(work)


@pytest.fixture
def run_copy(finished, tmp_path):
    """A copy of the finished run to break: file times and Snakemake's metadata as they were."""
    work = tmp_path / "work"
    shutil.copytree(finished[0], work, symlinks=True)
    return work


def rerun_equals_the_finished_run(work: Path, finished, overrides: tuple[str, ...] = (), said: list[str] = (),
                                  rebuilt: list[str] = ()) -> subprocess.CompletedProcess:
    """The plain rerun: it succeeds, says each of `said`, runs each rule of `rebuilt`, leaves no temporary
    file, and every output equals the uninterrupted run's."""
    result = snakemake(work, overrides=overrides)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "Traceback" not in output, output[-4000:]
    for line in said:
        assert line in result.stderr, f"not said: {line!r}\n{result.stderr[-4000:]}"
    for rule in rebuilt:
        assert f"rule {rule}:" in output, f"{rule} did not run\n{output[-4000:]}"
    assert not leftovers(work)
    after, expected = snapshot(work), finished[1]
    if overrides == THROUGH_EVALUATE:  # the reported outputs were not rebuilt: compare the data
        expected = {k: v for k, v in expected.items() if not k.startswith((str(RESULTS), str(FIGURES)))}
        after = {k: v for k, v in after.items() if k in expected or not k.startswith((str(RESULTS), str(FIGURES)))}
    differ = sorted(k for k in set(expected) | set(after) if expected.get(k) != after.get(k))
    assert not differ, f"differ from the uninterrupted run: {differ[:10]}"
    return result


# --- a job killed (SIGKILL) mid-way, then the same command --------------------------------------------------


@pytest.mark.parametrize("fault, through", [
    ("aggregate:gatedsae.reporting.tables:write_csv_atomic:kill-after:1", ()),  # metrics.csv written, the rest not
    ("figures:matplotlib.figure:Figure.savefig:kill-after:3", ()),  # a figure in its temporary file, not renamed
    ("evaluate:gatedsae.core.sealed:write_sealed_json:kill-after:2", THROUGH_EVALUATE),  # two SAEs' results saved
], ids=["aggregate", "figures-mid-write", "evaluate-between-saes"])
def test_killed_job_then_plain_rerun_equals_an_uninterrupted_run(fault, through, finished, run_copy, record_property):
    """A job killed with SIGKILL (Snakemake then deletes its outputs): the plain rerun rebuilds them, never
    'Nothing to be done', and leaves no temporary file."""
    stage = fault.split(":")[0]
    record_property("faults", [f"{stage} job killed with SIGKILL ({fault.split(':', 1)[1]})"])
    if stage == "evaluate":  # evaluate from scratch: the saved per-SAE results go
        shutil.rmtree(run_copy / EVALUATION)
    killed = snakemake(run_copy, "--forcerun", stage, overrides=through, fault=fault)
    assert killed.returncode != 0, killed.stderr[-3000:]
    rerun_equals_the_finished_run(run_copy, finished, through, rebuilt=[stage])


# --- damaged files, then the same command -------------------------------------------------------------------


def _delete(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() else path.unlink()


def _edit_digit(path: Path) -> None:
    text = path.read_text()
    index = next(i for i, c in enumerate(text) if c.isdigit() and c != "9")
    path.write_text(text[:index] + str(int(text[index]) + 1) + text[index + 1:])


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _png(work: Path, n: int) -> Path:
    return sorted((work / FIGURES).glob("*.png"))[n]


def _edit_training_record(work: Path) -> Path:
    """λ of one SAE changed by hand in its training.json (the record stays valid JSON)."""
    record = next((work / GRID).glob("gated_w*/training.json"))
    data = json.loads(record.read_text())
    data["l1"] = data["l1"] * 2
    record.write_text(json.dumps(data, indent=2))
    return record


def _edit_saved_evaluation(work: Path) -> Path:
    saved = sorted((work / EVALUATION).rglob("sweep/*.json"))[0]  # under its held-out split's folder
    data = json.loads(saved.read_text())
    data["row"]["l0"] = data["row"]["l0"] + 1.0
    saved.write_text(json.dumps(data))
    return saved


def _flip_two_token_bits(work: Path) -> Path:
    path = work / TOKENS / "heldout.npy"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    data[-9] ^= 0x10
    path.write_bytes(bytes(data))
    return path


def _corrupt_metadata(work: Path) -> Path:
    record = sorted((work / ".snakemake" / "metadata").glob("*"))[0]
    record.write_bytes(b"\xff\xfe\x00garbage")
    return record


# Each fault: (what it is, how to break the copy, what the rerun must say, the rule that must run again).
# "" says nothing: a missing output is rebuilt as a target of `all`, which Snakemake reports as such.
REPORTED_A = [
    ("headline.csv edited", lambda w: _edit_digit(w / RESULTS / "headline.csv"), "headline.csv does not match", "aggregate"),
    ("a PNG deleted", lambda w: _delete(_png(w, 0)), ".png is missing", "figures"),
    ("report.html deleted", lambda w: _delete(w / RESULTS / "report.html"), "", "report"),
    ("curves.csv deleted", lambda w: _delete(w / RESULTS / "curves.csv"), "", "curves"),
    ("a Snakemake metadata record corrupted", _corrupt_metadata, "removed Snakemake's corrupt metadata record", ""),
]
REPORTED_B = [
    ("tables/ deleted", lambda w: _delete(w / RESULTS / "tables"), "tables/metrics.md is missing", "aggregate"),
    ("figures.json truncated", lambda w: _truncate(w / FIGURES / "figures.json"), "figures.json is not valid JSON",
     "figures"),
    ("verdict.md edited", lambda w: _edit_digit(w / RESULTS / "verdict.md"), "verdict.md does not match", "verdict"),
]
REPORTED_C = [
    ("metrics.csv deleted", lambda w: _delete(w / RESULTS / "metrics.csv"), "metrics.csv is missing", "aggregate"),
    ("a PNG's bytes flipped", lambda w: flip_byte(_png(w, 1), 200), ".png does not match", "figures"),
]
DATA_A = [
    ("two bits of the held-out tokens flipped", _flip_two_token_bits, "heldout.npy does not match the sha256",
     "tokenize"),
    ("λ edited in a training.json", _edit_training_record, "training.json does not match the sha256 it was written",
     "train"),
    ("one SAE's checkpoint deleted", lambda w: _delete(next((w / GRID).glob("baseline_*"))), "is missing", "train"),
    ("a saved per-SAE evaluation edited", _edit_saved_evaluation, "does not match the sha256 it was written",
     "evaluate"),
]
DATA_B = [
    ("grid.json truncated", lambda w: _truncate(w / GRID / "grid.json"), "grid.json is not valid JSON", "train"),
    ("an evaluation metrics.json truncated", lambda w: _truncate(w / EVALUATION / "metrics.json"),
     "metrics.json is not valid JSON", "evaluate"),
    ("the rescale-and-shift grid.json deleted", lambda w: _delete(w / GRID / "rescale_shift" / "grid.json"), "",
     "rescale_shift"),
]
DATA_C = [
    ("the tokens manifest deleted", lambda w: _delete(w / TOKENS / "manifest.json"), "", "tokenize"),
    ("a store manifest deleted", lambda w: _delete(w / STORE / "manifest.json"), "", "cache"),
]


@pytest.mark.parametrize("faults, through", [
    (REPORTED_A, ()), (REPORTED_B, ()), (REPORTED_C, ()),
    (DATA_A, THROUGH_EVALUATE), (DATA_B, THROUGH_EVALUATE), (DATA_C, THROUGH_EVALUATE),
], ids=["reported-a", "reported-b", "reported-c", "data-a", "data-b", "data-c"])
def test_damaged_files_are_named_and_rebuilt_by_the_next_plain_run(faults, through, finished, run_copy,
                                                                    record_property):
    """Reported outputs and the data files that feed the numbers, deleted, edited, truncated or with bits
    flipped, and Snakemake's own metadata corrupted: the next plain run names each damaged file in one
    line, reruns the rule that owns it (and what depends on it), and every output equals the uninterrupted
    run's."""
    record_property("faults", [name for name, *_ in faults])
    for _, damage, _, _ in faults:
        damage(run_copy)
    result = rerun_equals_the_finished_run(run_copy, finished, through, said=[said for *_, said, _ in faults],
                                           rebuilt=[rule for *_, rule in faults if rule])
    assert "Nothing to be done" not in result.stdout + result.stderr


def test_verify_names_every_damaged_file(finished, run_copy):
    """`python -m gatedsae verify` finds what the issue's probe passed as 'all intact': flipped token bits, an
    edited λ, a truncated evaluation and index, a deleted figure; each named, exit code 4."""
    _flip_two_token_bits(run_copy)
    _edit_training_record(run_copy)
    _truncate(run_copy / EVALUATION / "metrics.json")
    _truncate(run_copy / GRID / "rescale_shift" / "grid.json")
    _delete(_png(run_copy, 0))
    result = subprocess.run([sys.executable, "-m", "gatedsae", "verify", "experiment=smoke", *OVERRIDES],
                            cwd=run_copy, env=_env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 4, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    for name in ("heldout.npy", "training.json", "metrics.json", "rescale_shift/grid.json", ".png is missing"):
        assert name in result.stderr, result.stderr[-3000:]
