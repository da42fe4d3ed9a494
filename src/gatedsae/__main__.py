"""Command line: `python -m gatedsae <stage> [hydra overrides...]`.

Each stage composes conf/ with the overrides, validates the whole configuration before any compute,
then runs one step of the flow. Snakemake calls these; they work just as well by hand.

An expected failure (bad configuration, missing or corrupt input, a full disk, a job too large for the
device) is printed as one message naming the file or key and the fix, with a non-zero exit code (2
configuration, 3 resources, 4 corrupt or missing data, 5 cannot write, 1 other); anything else is a bug
and keeps its traceback. GATEDSAE_DEBUG=1 prints the traceback of expected failures too.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Callable

from .config import Config, ConfigError, load_config
from .errors import PipelineError


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


def _aggregate(config: Config) -> None:
    from .tables import aggregate

    for path in aggregate(evaluation_files(config), config.experiment.results, config.intervals).values():
        print(f"wrote {path}")


def _figures(config: Config) -> None:
    from .figures import render_all

    print(f"wrote {render_all(config.experiment.results, config.experiment.figures)}")


def _report(config: Config) -> None:
    from .report import write_report

    print(f"wrote {write_report(config)}")


def _replicate(config: Config, overrides: list[str], chapter: str | None = None) -> None:
    """Every chapter of the experiment through Snakemake, timed; prints the verdict at the end."""
    from .replicate import replicate

    print(f"wrote {replicate(config, overrides, chapter)}")


def _publish_reference(config: Config) -> None:
    from .reference import publish

    print(f"wrote {publish(config)}")


def _verdict(config: Config) -> None:
    """verdict.json and verdict.md next to the results; the table is printed."""
    from .verdict import write_verdict

    _, markdown = write_verdict(config)
    print(markdown.read_text())


def _estimate(config: Config) -> None:
    """Print the experiment's jobs with their estimated memory, disk and device-hours."""
    from .resources import markdown_table

    print(markdown_table(config))


def _verify(config: Config, overrides: str = "") -> None:
    """Check every store shard and checkpoint of the experiment against its recorded sha256 (and each
    cfg.json against its tensors); list what is wrong with the command that repairs it."""
    from .integrity import verify_experiment

    print(verify_experiment(config, overrides))


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
    "evaluate-checkpoint": _evaluate_checkpoint,  # --checkpoint=<dir>: recompute one SAE's metrics row
    "aggregate": _aggregate,  # metrics.csv (with intervals), tables, headline, comparisons, summary
    "verdict": _verdict,  # verdict.json and verdict.md: each claim REPRODUCED / NOT REPRODUCED / INCONCLUSIVE
    "figures": _figures,
    "report": _report,
    "replicate": _replicate,  # [--chapter=<name>]: the experiment's chapters through Snakemake, timed
    "publish-reference": _publish_reference,  # copy finished results and figures into reference/<experiment>/
    "estimate": _estimate,  # memory, disk and device-hours of every job of the experiment
    "verify": _verify,  # every shard and checkpoint against its recorded sha256; says how to repair
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
    if argv[0] == "verify":
        options["overrides"] = " ".join(overrides)
    try:
        config = load_config(overrides)
        if argv[0] in ("train", "rescale-shift", "evaluate"):
            _check_target(argv[0], config, options)
        if argv[0] == "replicate":
            options["overrides"] = overrides
        STAGES[argv[0]](config, **options)
    except ConfigError as error:
        return _failed("configuration error", error, 2)
    except PipelineError as error:
        return _failed(error.label, error, error.exit_code)
    except FileNotFoundError as error:  # a missing input: the message names the file
        return _failed("missing input", error, 4)
    return 0


def _failed(label: str, error: BaseException, code: int) -> int:
    if os.environ.get("GATEDSAE_DEBUG", "") not in ("", "0"):
        traceback.print_exc()
    print(f"{label}: {error}", file=sys.stderr)
    return code


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
