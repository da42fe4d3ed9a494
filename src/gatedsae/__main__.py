"""Command line: `python -m gatedsae <stage> [hydra overrides...]`.

Each stage composes conf/ with the overrides, validates the whole configuration before any compute,
then runs one step of the flow. Snakemake calls these; they work just as well by hand.
"""

from __future__ import annotations

import sys
from typing import Callable

from .config import Config, ConfigError, load_config


def _prepare_model(config: Config) -> None:
    from .models import prepare_model

    print(f"prepared {config.model.name} in {prepare_model(config.model, config.paths)}")


def _fetch_corpus(config: Config) -> None:
    from .corpus import fetch_corpus

    print(f"wrote {fetch_corpus(config.corpus, config.paths)}")


def _tokenize(config: Config) -> None:
    from .corpus import tokenize_corpus

    print(f"wrote {tokenize_corpus(config)}")


def _cache(config: Config) -> None:
    from .activations import cache_activations

    for path in cache_activations(config):
        print(f"wrote {path}")


def _train(config: Config, layer: str, site: str | None = None) -> None:
    """One site's grid, or (without --site) every site of the layer in lockstep: in stream mode one LM
    forward then feeds them all."""
    from .train import train_layer

    for path in train_layer(config, int(layer), None if site is None else [site]):
        print(f"wrote {path}")


def _rescale_shift(config: Config, site: str, layer: str) -> None:
    from .train import train_rescale_shift

    print(f"wrote {train_rescale_shift(config, site, int(layer))}")


def _evaluate(config: Config, site: str, layer: str) -> None:
    from .evaluate import evaluate_grid

    print(f"wrote {evaluate_grid(config, site, int(layer))}")


def _evaluate_checkpoint(config: Config, checkpoint: str) -> None:
    """Recompute one checkpoint's metrics from the checkpoint and the data; print them as JSON (the only
    thing on stdout, so it can be piped)."""
    import contextlib
    import json

    from .evaluate import evaluate_checkpoint

    with contextlib.redirect_stdout(sys.stderr):
        row = evaluate_checkpoint(config, checkpoint)
    row.pop("density_histogram")
    print(json.dumps(row, indent=2))


def _upgrade_checkpoints(config: Config) -> None:
    """Rewrite the cfg.json of every trained checkpoint of the experiment in the current sae-lens format
    (checkpoints written before it carry their metadata where sae-lens does not read it)."""
    import json

    from .checkpoints import upgrade_saelens_cfg
    from .evaluate import grid_indexes

    rewritten = kept = 0
    for site in config.experiment.sites:
        for layer in config.experiment.layers:
            for index in grid_indexes(config, site, layer).values():
                if index.exists():
                    for entry in json.loads(index.read_text())["saes"]:
                        if upgrade_saelens_cfg(entry["path"], config):
                            rewritten += 1
                        else:
                            kept += 1
    print(f"rewrote {rewritten} cfg.json files; {kept} already current")


def _aggregate(config: Config) -> None:
    from .tables import aggregate

    for path in aggregate(evaluation_files(config), config.experiment.results).values():
        print(f"wrote {path}")


def _curves(config: Config) -> None:
    from .curves import gather_curves

    print(f"wrote {gather_curves(config)}")


def _figures(config: Config) -> None:
    from .figures import render_all

    print(f"wrote {render_all(config.experiment.results, config.experiment.figures)}")


def _report(config: Config) -> None:
    from .report import write_report

    print(f"wrote {write_report(config)}")


def _browse(config: Config) -> None:
    """The feature browser of browser.site (docs/feature-browser.md)."""
    from .browser import browse

    print(f"wrote {browse(config)}")


def _study(config: Config) -> None:
    """The blinded rating page and its key (docs/interpretability-study.md)."""
    from .study import build_study

    build_study(config)


def _study_analysis(config: Config) -> None:
    """Unblind the raters' files (study.ratings=[...]) and compare Gated with the baseline."""
    from .study import ANALYSIS_MARKDOWN, analyse_study

    path = analyse_study(config)
    print(path.with_name(ANALYSIS_MARKDOWN).read_text())
    print(f"wrote {path}")


def _estimate(config: Config) -> None:
    """Print the experiment's jobs with their estimated memory, disk and device-hours."""
    from .resources import markdown_table

    print(markdown_table(config))


def evaluation_files(config: Config) -> list:
    from .evaluate import METRICS_FILE

    return [config.paths.evaluation_dir(config.model.name, config.corpus.name, site, layer, config.sweep.name)
            / METRICS_FILE for site in config.experiment.sites for layer in config.experiment.layers]


STAGES: dict[str, Callable[..., None]] = {
    "prepare-model": _prepare_model,
    "fetch-corpus": _fetch_corpus,
    "tokenize": _tokenize,
    "cache": _cache,
    "train": _train,  # takes --layer=<layer> [--site=<site>] (no site: every site of the layer)
    "rescale-shift": _rescale_shift,  # likewise; needs the trained grid
    "evaluate": _evaluate,  # likewise; evaluates the site's grids
    "evaluate-checkpoint": _evaluate_checkpoint,
    "upgrade-checkpoints": _upgrade_checkpoints,  # --checkpoint=<dir>: recompute one SAE's metrics row
    "aggregate": _aggregate,  # metrics.csv, tables, headline, summary
    "curves": _curves,  # every SAE's training curves in one table (results/.../curves.csv)
    "figures": _figures,
    "report": _report,
    "browse": _browse,
    "study": _study,
    "study-analysis": _study_analysis,
    "estimate": _estimate,  # memory, disk and device-hours of every job of the experiment
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m gatedsae {{{'|'.join(STAGES)}}} [key=value ...] [--site=S --layer=L] "
              "[--checkpoint=DIR]",
              file=sys.stderr)
        return 2
    options = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
    overrides = [a for a in argv[1:] if not a.startswith("--")]
    try:
        config = load_config(overrides)
        if argv[0] in ("train", "rescale-shift", "evaluate"):
            _check_target(argv[0], config, options)
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    from .resources import ResourceError

    try:
        STAGES[argv[0]](config, **options)
    except ResourceError as error:
        print(f"resource error: {error}", file=sys.stderr)
        return 3
    return 0


def _check_target(stage: str, config: Config, options: dict[str, str]) -> None:
    site, layer = options.get("site"), options.get("layer", "")
    site_optional = stage == "train"
    if ((site not in config.experiment.sites and not (site_optional and site is None))
            or not layer.isdigit() or int(layer) not in config.experiment.layers):
        site_usage = f"--site=<one of {config.experiment.sites}>"
        raise ConfigError(f"{stage} needs {'[' + site_usage + ']' if site_optional else site_usage} and "
                          f"--layer=<one of {config.experiment.layers}>; got site={site!r}, layer={layer!r}")


if __name__ == "__main__":
    sys.exit(main())
