"""What the Snakefile needs from conf/: the experiment's paths, the command line of each stage, and
each job's resolved configuration (as `params`, so a config change reruns exactly the jobs it affects).

Hydra is composed once per Snakemake invocation; the Snakefile itself stays a thin list of rules.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from gatedsae.plan.config import STAGES, Config, load_config, require_safe_name
from gatedsae.plan.identity import job_params
from gatedsae.plan.grid import ALL_TOKENS_DIR, GRID_INDEX, MAIN_VARIANT, RESCALE_SHIFT_DIR, trained_variants
from gatedsae.plan.layout import (
    AGGREGATE_OUTPUTS,
    ANALYSIS_FILE,
    CURVES_FILE,
    FIGURES_INDEX,
    MANIFEST,
    METRICS_FILE,
    MODEL_MARKER,
    PAGE_FILE,
    REPORT_FILE,
    SPLIT_OUTPUTS,
    TEST,
    VERDICT_OUTPUTS,
    browser_dir,
    split_results,
    splits_heldout,
    study_dir,
)

# Snakemake options under which it runs no job: the health check then only names what it finds.
_NO_JOBS = {"--dry-run", "--dryrun", "--touch", "--summary", "--detailed-summary", "--list", "--list-rules", "--lint",
            "--dag", "--rulegraph", "--filegraph", "--unlock", "--cleanup-metadata", "--list-changes"}


def runs_jobs(argv: list[str]) -> bool:
    """Whether the Snakemake command line `argv` runs jobs (not a dry run, --touch, a listing...)."""
    import re

    short = [a for a in argv if re.fullmatch(r"-[A-Za-z]+", a)]
    return not (_NO_JOBS & {a.split("=")[0] for a in argv} or any(set(a[1:]) & set("ntSDl") for a in short))


@dataclass
class ExperimentPlan:
    experiment: str
    overrides: list[str] = field(default_factory=list)
    config: Config = field(init=False)

    def __post_init__(self) -> None:
        from gatedsae.plan.preflight import check_plan

        require_safe_name(self.experiment, "experiment")  # it names the log folder
        self.config = load_config([f"experiment={self.experiment}", *self.overrides])
        check_plan(self.config)  # a size that cannot work stops the run before its first job

    @classmethod
    def from_snakemake(cls, snakemake_config: dict) -> "ExperimentPlan":
        """The plan of the Snakefile's `--config experiment=... overrides="..."`. An expected failure (a bad
        key, a device or size that cannot work) ends Snakemake with its one line and exit code."""
        from gatedsae.core.errors import PipelineError, classify, failure_line

        from gatedsae.plan.chapters import require_no_shrink

        experiment = str(snakemake_config.get("experiment", "default"))
        try:
            plan = cls(experiment, str(snakemake_config.get("overrides", "")).split())
            require_no_shrink(plan.config)  # a chapter run never drops later chapters' SAEs from the results
            return plan
        except PipelineError as error:
            print(failure_line(error), file=sys.stderr, flush=True)
            sys.exit(classify(error)[1])

    @property
    def model(self) -> str:
        return self.config.model.name

    @property
    def corpus(self) -> str:
        return self.config.corpus.name

    @property
    def data(self) -> Path:
        return self.config.paths.root

    # --- outputs, as path patterns with Snakemake wildcards where the DAG branches ---------------------

    # Paths come from `paths` (PathsConfig) with the wildcards in place of the values.
    def model_marker(self) -> str:
        return str(self.config.paths.model_dir("{model}") / MODEL_MARKER)

    def corpus_manifest(self) -> str:
        return str(self.config.paths.text_dir("{corpus}") / MANIFEST)

    def tokens_manifest(self) -> str:
        return str(self.config.paths.tokens_dir("{model}", "{corpus}") / MANIFEST)

    def store_manifest(self) -> str:
        return str(self.config.paths.activations_dir("{model}", "{corpus}", "{site}", "{layer}") / MANIFEST)

    def store_manifests(self) -> list[str]:
        """Every (site, layer) store of the experiment, model and corpus left as wildcards."""
        pattern = self.store_manifest()
        return [
            pattern.replace("{site}", site).replace("{layer}", str(layer))
            for site, layer in self.config.experiment.site_layer_pairs()
        ]

    @property
    def streamed(self) -> bool:
        """Stream mode: training runs the LM itself, one job per layer for all its sites."""
        return self.config.cache.mode == "stream"

    def training_input(self) -> list[str]:
        """What a per-site training job reads: its store, or in stream mode the tokens and the model."""
        return [self.tokens_manifest(), self.model_marker()] if self.streamed else [self.store_manifest()]

    def layer_grid_indexes(self) -> list[str]:
        """The grids a stream-mode train job writes: every site of one layer (a wildcard)."""
        return [self.grid_index().replace("{site}", site) for site in self.config.experiment.sites]

    def grid_index(self) -> str:
        return str(self.config.paths.checkpoints_dir("{model}", "{corpus}", "{site}", "{layer}", "{sweep}") / GRID_INDEX)

    def rescale_shift_index(self) -> str:
        return self.variant_index(RESCALE_SHIFT_DIR)

    def all_tokens_index(self) -> str:
        return self.variant_index(ALL_TOKENS_DIR)

    def variant_index(self, variant: str) -> str:
        """The grid index a variant's training writes (the sweep's own: `grid_index`)."""
        if variant == MAIN_VARIANT:
            return self.grid_index()
        grid = self.config.paths.checkpoints_dir("{model}", "{corpus}", "{site}", "{layer}", "{sweep}")
        return str(grid / variant / GRID_INDEX)

    def evaluation(self) -> str:
        return str(self.config.paths.evaluation_dir("{model}", "{corpus}", "{site}", "{layer}", "{sweep}")
                   / METRICS_FILE)

    def evaluations(self) -> list[str]:
        return self._concrete(self.evaluation())

    def aggregate_outputs(self) -> dict[str, str]:
        return {key: str(self.config.experiment.results / name) for key, name in AGGREGATE_OUTPUTS.items()}

    def test_outputs(self) -> dict[str, str]:
        """The aggregate's readings of the test split (`test_<table>`; none when the held-out documents are
        not split): written beside development's, read by the verdict alone."""
        if not splits_heldout(self.config):
            return {}
        folder = split_results(self.config, TEST)
        return {f"test_{key}": str(folder / AGGREGATE_OUTPUTS[key]) for key in SPLIT_OUTPUTS}

    def verdict_inputs(self) -> dict[str, str]:
        """The tables the verdict judges: the aggregate's readings of verdict.split (the test split's folder)."""
        folder = split_results(self.config, self.config.verdict.split)
        return {key: str(folder / AGGREGATE_OUTPUTS[key]) for key in SPLIT_OUTPUTS}

    def verdict_outputs(self) -> dict[str, str]:
        return {key: str(self.config.experiment.results / name) for key, name in VERDICT_OUTPUTS.items()}

    def reference_verdict(self) -> list[str]:
        """The reference run's verdict.json, if the repository has one (the verdict quotes it)."""
        path = self.config.verdict.reference(self.experiment) / "verdict.json"
        return [str(path)] if path.exists() else []

    @property
    def groundtruth(self) -> bool:
        """Whether the experiment (through its chapter) runs the ground-truth benchmark (plan/groundtruth.py)."""
        from gatedsae.plan.groundtruth import runs

        return runs(self.config)

    def groundtruth_outputs(self) -> dict[str, str]:
        """The groundtruth stage's files (rows, summary with the claims, claims)."""
        from gatedsae.plan.groundtruth import outputs

        return outputs(self.config)

    def groundtruth_targets(self) -> list[str]:
        """Every file of the groundtruth stage, when the experiment runs it."""
        return list(self.groundtruth_outputs().values()) if self.groundtruth else []

    def groundtruth_inputs(self) -> list[str]:
        """What the verdict reads of the benchmark: its summary, when the experiment runs it."""
        return [self.groundtruth_outputs()["summary"]] if self.groundtruth else []

    def interp_outputs(self) -> dict[str, str]:
        """The interp stage's files (plan/interp.py: rows, the development split's summary, the test split's)."""
        from gatedsae.plan import interp

        return interp.outputs(self.config)

    def interp_inputs(self, key: str) -> list[str]:
        """What a later rule reads of the interp stage, when the experiment runs it (through its chapter):
        "rows" (the figures), "verdict" (the summary on the verdict's split), "all" (every file: targets)."""
        from gatedsae.plan import interp

        if not interp.runs(self.config):
            return []
        files = self.interp_outputs()
        return list(files.values()) if key == "all" else [interp.verdict_summary(self.config) if key == "verdict"
                                                          else files[key]]

    def curves(self) -> str:
        return str(self.config.experiment.results / CURVES_FILE)

    def browser_index(self) -> str:
        return str(browser_dir(self.config) / "index.html")

    def study_page(self) -> str:
        return str(study_dir(self.config) / PAGE_FILE)

    def study_analysis(self) -> str:
        return str(study_dir(self.config) / ANALYSIS_FILE)

    def site_inputs(self, site: str, layer: int) -> list[str]:
        """What a stage reading one site's trained SAEs and held-out data needs: its grid(s), its store,
        the held-out tokens and the model."""
        values = dict(model=self.model, corpus=self.corpus, site=site, layer=layer, sweep=self.config.sweep.name)
        grids = [self.variant_index(variant) for variant in trained_variants(self.config, site)]
        return [p.format(**values) for p in [*grids, self.store_manifest(), self.tokens_manifest(), self.model_marker()]]

    def figures_index(self) -> str:
        return str(self.config.experiment.figures / FIGURES_INDEX)

    def report(self) -> str:
        return str(self.config.experiment.results / REPORT_FILE)

    def _concrete(self, pattern: str, sites: list[str] | None = None) -> list[str]:
        return [
            pattern.format(model=self.model, corpus=self.corpus, site=site, layer=layer, sweep=self.config.sweep.name)
            for site in (self.config.experiment.sites if sites is None else sites)
            for layer in self.config.experiment.layers_at(site)
        ]

    def stage_targets(self, stage: str) -> list[str]:
        """Every output of the jobs a stage adds to the DAG (the report: aggregate, curves, figures, verdict
        and the report itself), concrete."""
        if stage == "report":
            return [*self.aggregate_outputs().values(), *self.test_outputs().values(), self.curves(),
                    self.figures_index(),
                    *self.verdict_outputs().values(), self.report(), *self.groundtruth_targets(),
                    *self.interp_inputs("all")]
        patterns = {"cache": [self.model_marker(), self.corpus_manifest(), self.tokens_manifest(), self.store_manifest()],
                    "train": [self.grid_index()], "evaluate": [self.evaluation()]}
        targets = {path for pattern in patterns[stage] for path in self._concrete(pattern)}
        if stage == "train":
            for site in self.config.experiment.sites:
                targets |= {path for variant in trained_variants(self.config, site)
                            for path in self._concrete(self.variant_index(variant), [site])}
        return sorted(targets)

    def trained_grids(self, wildcards) -> list[str]:
        """Input function of the evaluate rule: the (site, layer)'s grid, and its variants' (rescale-and-shift,
        every token) where configured."""
        grids = [self.variant_index(variant) for variant in trained_variants(self.config, wildcards.site)]
        return [grid.format(**dict(wildcards.items())) for grid in grids]

    def targets(self) -> list[str]:
        """What `snakemake all` builds: every output of the experiment's stages through its last one, and
        with the report the optional tools that are switched on (feature browser, rating page, the study's
        analysis). Every job's outputs are listed, the earlier stages' too: Snakemake never reruns the job of a
        missing file that is only an input of up-to-date results, so one deleted on disk (or removed by
        `repair` as damaged, or by Snakemake after its job failed) would silently stay missing."""
        through = STAGES.index(self.config.experiment.through)
        targets = sorted({target for stage in STAGES[: through + 1] for target in self.stage_targets(stage)})
        if self.config.experiment.through == "report":
            targets += [self.browser_index()] if self.config.browser.enabled else []
            targets += [self.study_page()] if self.config.study.enabled else []
            targets += [self.study_analysis()] if self.config.study.enabled and self.config.study.ratings else []
        return targets

    # --- scheduler resources, from the estimates of `resources` -------------------------------------

    def resources(self, rule: str) -> dict:
        """Snakemake resources of a rule (gatedsae.plan.scheduling): callables of the wildcards where they
        depend on the site."""
        from gatedsae.plan.estimates import sized_per_site
        from gatedsae.plan.scheduling import rule_resources

        if not sized_per_site(self.config, rule):
            return rule_resources(self.config, rule)
        keys = rule_resources(self.config, rule, self.config.experiment.sites[0])
        return {key: (lambda wildcards, key=key: rule_resources(self.config, rule, wildcards.site)[key]) for key in keys}

    def repair(self, dry_run: bool = False) -> None:
        """Before the DAG is built: every damaged file named in one line, and the output that owns it removed,
        so this run rebuilds it (plan/health.py). A dry run only names them."""
        from gatedsae.plan.health import repair

        for line in repair(self.config, dry_run):
            print(line, file=sys.stderr, flush=True)

    def explain_failures(self, logs: str | list[str] | None) -> list[str]:
        """For a failed run's Snakemake log(s): which jobs SLURM killed for their memory, and what to raise."""
        from gatedsae.plan.job_failures import memory_failures
        from gatedsae.plan.scheduling import rule_resources

        paths = [logs] if isinstance(logs, str) else list(logs or [])
        text = "\n".join(Path(p).read_text(errors="replace") for p in paths if Path(p).is_file())
        return [failure.advice(rule_resources(self.config, failure.rule, failure.site)["mem_mb"])
                for failure in memory_failures(text)]

    # --- commands and params --------------------------------------------------------------------------

    def command(self, stage: str) -> str:
        """The shell command of a stage, carrying the experiment and every override."""
        args = [sys.executable, "-m", "gatedsae", stage, f"experiment={self.experiment}", *self.overrides]
        # Quoted for the shell; braces doubled so Snakemake's formatting leaves them literal.
        return " ".join(shlex.quote(a) for a in args).replace("{", "{{").replace("}", "}}")

    def params(self, job: str):
        """A job's params: the settings that identify its result (plan/identity.py). One holding text that
        reads as a wildcard (conf/interp's template, "{word} ..."), given as a function so Snakemake takes
        it as it is."""
        import re

        value = job_params(self.config, job)
        return (lambda wildcards: value) if re.search(r"\{\w+\}", value) else value
