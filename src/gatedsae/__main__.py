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


STAGES: dict[str, Callable[[Config], None]] = {
    "prepare-model": _prepare_model,
    "fetch-corpus": _fetch_corpus,
    "tokenize": _tokenize,
    "cache": _cache,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        print(f"usage: python -m gatedsae {{{'|'.join(STAGES)}}} [key=value ...]", file=sys.stderr)
        return 2
    try:
        config = load_config(argv[1:])
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    STAGES[argv[0]](config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
