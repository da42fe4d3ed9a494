"""Docs that run: every command and code block of README.md and docs/ is run here on the smoke experiment
(a copy of the session's trained smoke sweep, tests/conftest.py), or, where the real run is the replication
itself, as a dry run (Snakemake's, or make's), or it is covered by a named test elsewhere, or it is listed
in HOW with the reason it cannot run here. A command added to the docs that none of these covers fails
test_every_command_and_code_block_is_run_or_excused, so examples cannot go stale unnoticed.

A gatedsae command that names `experiment=default` runs with `experiment=smoke` (the same stage, keys and
options on the tiny model); the Python blocks run in order, as pasted, with the default experiment's
checkpoint path replaced by its smoke counterpart, after a check that the default grid makes that path.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import yaml
from conftest import TRAINED, copy_data

from gatedsae.plan.config import REPO_ROOT, load_config
from gatedsae.reporting.published import BLOCK, documents


@dataclass(frozen=True)
class Example:
    doc: str    # its document, relative to the repository
    line: int
    kind: str   # command | python | yaml
    text: str

    @property
    def id(self) -> str:
        return f"{self.doc}:{self.line}"


FENCE = re.compile(r"^```(?P<lang>\w*)\n(?P<body>.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
COMMAND = re.compile(r"^(?:[A-Z_]+=\S+ )*(?:python3?|make|snakemake|dvc|bash|pip|git|source|huggingface-cli|npm)\s+\S")
PLACEHOLDER = re.compile(r"<[^>]*>|…|\.\.\.|\bkey=value\b|=(?:E|C|DIR|S|L)(?=[\s\]]|$)|\[(?:--|key|overrides)")
GATEDSAE = "python -m gatedsae"


def _commands(body: str) -> list[tuple[int, str]]:
    """The commands of a shell block: continuation lines joined, comments dropped; (line offset, command)."""
    found, pending, start = [], "", 0
    for offset, line in enumerate(body.splitlines()):
        line = re.sub(r"(^|\s)#\s.*$|^#.*$", "", line).rstrip()
        if not pending:
            start = offset
        pending += line.rstrip("\\").strip() + " " if line.endswith("\\") else line.strip()
        if not line.endswith("\\"):
            if pending.strip():
                found.append((start, " ".join(pending.split())))
            pending = ""
    return found


def examples() -> list[Example]:
    """Every command (in shell blocks and inline) and every Python and YAML block of the docs."""
    found = []
    for path in documents():
        doc, text = path.relative_to(REPO_ROOT).as_posix(), path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 2
            lang, body = match["lang"], match["body"]
            if lang in ("bash", "sh"):
                found += [Example(doc, line + offset, "command", command) for offset, command in _commands(body)]
            elif lang in ("python", "yaml"):
                found.append(Example(doc, line, lang, body))
        # inline code outside the blocks (blocks blanked, keeping line numbers)
        prose = FENCE.sub(lambda m: "\n" * m[0].count("\n"), text)
        for number, line in enumerate(prose.splitlines(), 1):
            found += [Example(doc, number, "command", span) for span in INLINE.findall(line) if COMMAND.match(span)]
    return found


# How each command is covered: the first pattern that matches decides. "run": run here on smoke; "dry-run":
# Snakemake's or make's dry run here; "template": a usage line with placeholders, checked for its stage,
# options and make target; "tests/…::test_…": a named test runs it; any other text: why it cannot run here.
HOW: list[tuple[str, str]] = [
    (r"^python -m gatedsae replicate\b(?!.*[<…$])", "dry-run"),
    (r"^python -m gatedsae render-docs$",
     "tests/test_published_docs.py::test_every_generated_block_agrees_with_the_published_run"),
    (r"^python -m gatedsae study-analysis .*…",
     "tests/test_browser_study.py::test_the_analysis_unblinds_synthetic_ratings_and_finds_a_real_difference"),
    (rf"^{GATEDSAE} .*(<|…|=E\b|=DIR\b|=S\b|\[key|\$\{{)", "template"),
    (r"^python -m gatedsae\.cli\.runlock$",
     "tests/test_faults.py::test_killed_snakemake_run_leaves_no_blocking_lock_and_two_live_runs_never_overlap"),
    (r"^python -m gatedsae (--help|prepare-model|config|estimate|browse|study|upgrade-checkpoints|export-hub|"
     r"export-neuronpedia|curves|verdict|figures|verify)\b", "run"),
    (r"^snakemake --profile \S+ (--config|--forcerun)", "dry-run"),
    (r"^make (run|dry-run|sync|verify|unlock|bench|push|test|test-fast|test-cluster|setup|lock|replicate)\b(?!.*&&)",
     "dry-run"),
    (r"^python scripts/update_docs\.py$", "tests/test_docs.py::test_generated_blocks_are_current"),
    (r"^python scripts/plan_replicate\.py$",
     "tests/test_replicate_plan.py::test_the_committed_plan_is_the_one_the_current_configuration_gives"),
    (r"^python scripts/bench_\w+\.py|^python scripts/(interval_coverage|fault_suite)\.py",
     "a benchmark: minutes on the default model, and its numbers are the committed JSON it writes"),
    (r"^python scripts/local_cluster\.py", "tests/test_cluster.py::test_every_rule_is_an_sbatch_job_sized_by_the_estimates"),
    (r"^bash scripts/gpu_check\.sh", "measures the GPU path: needs a GPU (without one, a degraded CPU run on SmolLM2 "
                                     "for minutes) and writes results/benchmarks/gpu.json"),
    (r"^TORCH_SPEC=.* make setup", "installs a CUDA build of torch from the network"),
    (r"^dvc plots( show)?$",
     "tests/test_curves.py::test_dvc_plots_show_draws_the_training_curves_where_the_pipeline_writes_them"),
    (r"^dvc (repro|push|pull|status|metrics|metrics show)$|^dvc pull && make sync$",
     "tests/test_workflow.py::test_dvc_push_then_pull_in_another_clone_leaves_nothing_to_recompute"),
    (r"^dvc exp run -S experiment=gemma3$", "runs the gemma3 experiment (hours here)"),
    (r"^dvc (commit|checkout|metrics diff|plots diff)$", "needs two versions of a run in the reader's own repository"),
    (r"^dvc remote (add|modify)\b|^pip install dvc-\w+",
     "needs a remote store (the S3 round trip runs against a local S3 server in tests/test_cluster.py)"),
    (r"^git (add|commit|checkout|clone)\b", "changes the reader's own repository"),
    (r"^source \.venv/bin/activate$", "a shell setting (the tests run inside that environment)"),
    (r"^huggingface-cli ", "downloads paper-scale models from the Hugging Face Hub"),
    (r"^(pip download|npm pack|pip freeze|pip install --no-deps -e \.|pip install dvclive)",
     "what scripts/setup.sh or the pipeline runs itself, named in prose (tests/test_corpus_sources.py, make setup)"),
    (r"^python3 -m venv$", "what scripts/setup.sh runs itself, named in prose"),
    (r"^snakemake (all|--touch|--unlock)$|^snakemake --profile profiles/local --forcerun",
     "a Snakemake option or target named in prose, not a command to type"),
]


def how(command: str) -> str | None:
    return next((way for pattern, way in HOW if re.search(pattern, command)), None)


COMMANDS = sorted({e.text for e in examples() if e.kind == "command"})
RUN = [c for c in COMMANDS if how(c) == "run"]
DRY = [c for c in COMMANDS if how(c) == "dry-run"]
TEMPLATES = [c for c in COMMANDS if how(c) == "template"]


def test_the_readme_opens_with_its_two_commands_then_a_quick_start():
    readme = (REPO_ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 12 * 1024, "the README stays under 12 KB"
    first = FENCE.search(readme)
    assert [command for _, command in _commands(first["body"])] == ["make replicate", "make test"]
    assert readme.index("## Quick start") < readme.index("## The replication") < readme.index("## Results")
    assert "make run EXPERIMENT=smoke" in readme[readme.index("## Quick start"):readme.index("## The replication")]
    blocks = {(m["source"], m["kind"]) for m in BLOCK.finditer(readme)}
    assert {("results/benchmarks/quickstart.json", "quickstart"),
            ("results/benchmarks/replicate.json", "runtime")} <= blocks
    for prerequisite in ("Python ≥ 3.10", "`npm`", "`make`", "`git`"):
        assert prerequisite in readme


def test_every_command_and_code_block_is_run_or_excused():
    assert len(COMMANDS) > 40 and RUN and DRY  # the extraction finds the docs' commands
    uncovered = [e.id + ": " + e.text for e in examples() if e.kind == "command" and how(e.text) is None]
    assert not uncovered, "run these in tests/test_docs_run.py, or give the reason they cannot run here in HOW"
    for way in {how(c) for c in COMMANDS}:
        if way.startswith("tests/"):
            file, test = way.split("::")
            assert re.search(rf"^def {test}\(", (REPO_ROOT / file).read_text(), re.M), f"{way} does not exist"
    assert {e.kind for e in examples()} == {"command", "python", "yaml"}


@pytest.mark.parametrize("command", TEMPLATES)
def test_usage_lines_name_real_stages_options_and_targets(command):
    from gatedsae.cli.main import STAGES, _options

    words = command.split()
    stage = words[3] if len(words) > 3 else None
    if stage is None or PLACEHOLDER.fullmatch(stage) or stage in ("…", "<stage>"):
        return
    assert stage in STAGES, f"{command}: no stage {stage!r}"
    for option in re.findall(r"--([\w-]+)=", command):
        assert option in _options(STAGES[stage]), f"{command}: {stage} takes no --{option}"


def test_checkpoint_paths_in_the_docs_are_ones_the_default_grid_makes():
    pattern = re.compile(r"data/checkpoints/(?P<model>[\w.-]+)/(?P<corpus>\w+)/(?P<site>\w+)/layer(?P<layer>\d+)/"
                         r"(?P<sweep>\w+)/(?P<sae>\w+_w\d+_\w+_[\d.]+)")
    sources = [*documents(), REPO_ROOT / "src" / "gatedsae" / "saes" / "hooked.py"]
    found = [m for path in sources for m in pattern.finditer(path.read_text())]
    assert found
    from gatedsae.plan.grid import grid_specs

    for m in found:
        config = load_config([f"experiment={m['sweep']}"])
        assert (m["model"], m["corpus"]) == (config.model.name, config.corpus.name), m[0]
        assert m["site"] in config.experiment.sites and int(m["layer"]) in config.experiment.layers, m[0]
        names = {spec.name for spec in grid_specs(config, config.model.site_width(m["site"]), m["site"])}
        assert m["sae"] in names, f"{m[0]}: the grid makes {sorted(names)}"


def test_config_examples_in_the_docs_are_valid():
    from gatedsae.plan.config import CorpusConfig, dataclass_from

    for example in (e for e in examples() if e.kind == "yaml"):
        corpus = dataclass_from(CorpusConfig, yaml.safe_load(example.text))
        corpus.validate()


# ---------------------------------------------------------------------------------------------------
# Run on smoke


@pytest.fixture(scope="module")
def workdir(smoke_trained, tiny_model, tmp_path_factory):
    """A folder holding `data/` (a copy of the session's trained smoke sweep), every site evaluated and the
    experiment aggregated, as the docs' commands find a finished run; the tests run there."""
    from gatedsae.cli.main import main
    from gatedsae.evaluation.evaluate import evaluate_grid

    root = tmp_path_factory.mktemp("docs-run")
    config = copy_data(smoke_trained, root / "data", TRAINED)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        for site in config.experiment.sites:
            evaluate_grid(config, site, 1, progress=False, loaded=tiny_model)
        assert main(["aggregate", "experiment=smoke"]) == 0
    return root


ON_SMOKE = ["browser.features=4", "study.features_per_sae=4", "study.sites=[resid_post]"]  # small and quick


def _on_smoke(command: str) -> list[str]:
    """The command's arguments on smoke: `experiment=default` becomes `experiment=smoke` (another experiment's
    command, such as `estimate experiment=paper_gemma_7b`, runs as written: it reads no data)."""
    words = ["experiment=smoke" if w == "experiment=default" else w for w in shlex.split(command)[3:]]
    if words == ["--help"] or any(w.startswith("experiment=") and w != "experiment=smoke" for w in words):
        return words
    if "experiment=smoke" not in words:
        words.append("experiment=smoke")
    given = {w.split("=")[0] for w in words}
    return words + ([] if words[0] == "config" else [o for o in ON_SMOKE if o.split("=")[0] not in given])


STAGE_ORDER = ["--help", "config", "prepare-model", "estimate", "upgrade-checkpoints", "curves", "verdict", "figures",
               "browse", "study", "export-neuronpedia", "export-hub", "verify"]


@pytest.mark.parametrize("command", sorted(RUN, key=lambda c: STAGE_ORDER.index(c.split()[3])))
def test_the_docs_commands_run_on_smoke(command, workdir, monkeypatch, capsys):
    from gatedsae.cli.main import main

    monkeypatch.chdir(workdir)
    argv = _on_smoke(command)
    assert main(argv) == 0, f"{command} (run as {' '.join(argv)}): {capsys.readouterr().err[-2000:]}"
    out = capsys.readouterr().out
    if argv[0] == "export-neuronpedia":
        assert list((workdir / "results" / "smoke" / "neuronpedia").rglob("batch-0.jsonl.gz"))
    if argv[0] == "export-hub":
        assert list((workdir / "results" / "smoke" / "hub").rglob("sae_weights.safetensors"))
    if argv[0] == "config":
        assert yaml.safe_load(out)["experiment"]["name"] == "smoke"


def test_the_docs_python_blocks_run_as_pasted_on_smoke(workdir, monkeypatch):
    from gatedsae.plan.grid import GRID_INDEX, read_grid_index

    monkeypatch.chdir(workdir)
    index = workdir / "data" / "checkpoints" / "tiny" / "tiny" / "resid_post" / "layer1" / "smoke" / GRID_INDEX
    smoke_gated = next(Path(e["path"]) for e in read_grid_index(index) if e["arch"] == "gated")
    default_path = re.compile(r"data/checkpoints/smollm2-135m/offline_prose/resid_post/layer15/default/\w+_[\d.]+")
    blocks = [e for e in examples() if e.kind == "python"]
    assert blocks
    for doc in sorted({e.doc for e in blocks}):
        namespace: dict = {}
        for block in (e for e in blocks if e.doc == doc):
            code = default_path.sub(os.path.relpath(smoke_gated, workdir), block.text)
            exec(compile(code, block.id, "exec"), namespace)  # noqa: S102 - the docs' own code, as pasted
        if "loss" in namespace:
            assert namespace["loss"].ndim == 0 and namespace["loss"].item() > 0
        if "activations" in namespace:
            assert namespace["activations"].shape[0] == 4


def _dry(command: str, data: Path) -> list[str]:
    """The command as a dry run: Snakemake's -n, make's -n; replicate runs its chapters' Snakemake with -n."""
    words = shlex.split(command)
    if words[0] == "make":
        return ["make", "-n", *words[1:]]
    if words[0] == "snakemake":
        words = [sys.executable, "-m", "snakemake", "-n", *words[1:]]
        place = f"paths.data={data}"
        for i, word in enumerate(words):
            if word.startswith("overrides="):
                words[i] = f"{word} {place}"
                return words
        return [*words, f"overrides={place}"] if "--config" in words else [*words, "--config", f"overrides={place}"]
    return words  # replicate: see test_the_docs_dry_runs


@pytest.mark.parametrize("command", DRY)
def test_the_docs_dry_runs(command, tmp_path, monkeypatch, capsys):
    """make targets expand (make -n runs nothing); Snakemake plans the DAG; replicate validates the chapter
    and the overrides, then each chapter's Snakemake plans its DAG."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if not command.startswith(GATEDSAE):
        result = subprocess.run(_dry(command, tmp_path / "data"), cwd=REPO_ROOT, capture_output=True, text=True,
                                env=env, timeout=300)
        assert result.returncode == 0, f"{command}: {(result.stdout + result.stderr)[-2000:]}"
        if command.startswith("snakemake"):
            assert "rule " in result.stdout or "Nothing to be done" in result.stdout + result.stderr
        return
    import gatedsae.cli.replicate as replicate_module
    from gatedsae.cli.main import main

    planned, real_run = [], subprocess.run

    def dry_run(args, **kwargs):  # runlock's Snakemake arguments, planned only, its output kept here
        if "gatedsae.cli.runlock" not in args:
            return real_run(args, **kwargs)
        args = [sys.executable, "-m", "snakemake", "-n", *args[args.index("--profile"):]]
        result = real_run(args, cwd=REPO_ROOT, capture_output=True, text=True, env=env, timeout=300)
        planned.append(result.stdout)
        return result

    monkeypatch.setattr(replicate_module.subprocess, "run", dry_run)
    monkeypatch.chdir(tmp_path)
    argv = shlex.split(command)[3:] + [f"paths.data={tmp_path / 'data'}",
                                       f"experiment.results_dir={tmp_path / 'results'}",
                                       f"experiment.figures_dir={tmp_path / 'figures'}"]
    assert main(argv) == 0, f"{command}: {capsys.readouterr().err[-2000:]}"
    assert planned and all("rule train:" in out for out in planned), planned[-1][-2000:] if planned else command
