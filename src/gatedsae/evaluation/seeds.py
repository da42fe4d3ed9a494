"""Training seeds as the first level of the bootstrap: which rows of a grid are the same SAE
configuration trained with different seeds, their seed-averaged metrics, and resamples of the seeds.

A seed is one training of the whole grid: every SAE of a grid pass sees the same batches in the same
order (`train.seed` orders the data), so a seed's SAEs are correlated across configurations. The seeds
are therefore resampled jointly, the same draw of seed labels for every configuration of a grid — the
unit of replication is a whole trained grid, as a rerun of the experiment with another seed would
give. (Drawing each configuration's seeds independently would leave that correlation out and misstate
the variance of every comparison between SAEs.) A configuration trained with fewer seeds than the others
keeps the seeds it has: where the draw holds none of its labels, it is averaged over all of them, so it
adds no seed variation it cannot show.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gatedsae.plan.architectures import KNOBS

SEED = "seed"  # metrics rows' training seed (rows without it: one seed, 0)
IDENTITY = ("variant", "arch", "width", "lr", *KNOBS)  # what makes an SAE configuration, apart from its seed
EXACT_UP_TO = 1000  # enumerate every multiset of seed labels when there are at most this many


def configurations(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Per row: the index of its configuration (rows equal in IDENTITY) and of its seed label; the labels."""
    identity = [[None if pd.isna(value) else value for value in frame[column].tolist()]
                for column in IDENTITY if column in frame]
    found: dict[tuple, int] = {}
    config = np.array([found.setdefault(key, len(found)) for key in zip(*identity)] if identity
                      else np.zeros(len(frame)), dtype=int)
    seeds = frame[SEED].fillna(0).astype(int).to_numpy() if SEED in frame else np.zeros(len(frame), dtype=int)
    labels, label_index = np.unique(seeds, return_inverse=True)
    return config, label_index.reshape(-1), [int(label) for label in labels]


@dataclass(frozen=True)
class SeedDesign:
    """How a grid's rows (SAEs) group into configurations (C) and seed labels (S)."""

    config: np.ndarray  # [K] configuration index of each row
    seed: np.ndarray    # [K] seed label index of each row
    labels: list[int]   # the seed values, in label order

    @classmethod
    def of(cls, frame: pd.DataFrame) -> "SeedDesign":
        return cls(*configurations(frame))

    @property
    def configs(self) -> int:
        return int(self.config.max()) + 1 if len(self.config) else 0

    @property
    def seeds(self) -> int:
        return len(self.labels)

    def seeds_of(self, rows: np.ndarray) -> int:
        """The fewest seeds any configuration among `rows` (boolean mask) was trained with."""
        counts = [len(set(self.seed[rows & (self.config == c)])) for c in set(self.config[rows])]
        return min(counts) if counts else 0

    def averaging(self, label_weights: np.ndarray) -> np.ndarray:
        """[C, K]: each configuration's metrics as the mean over its rows, row k weighted by its label's
        weight (a draw's count of that label); a configuration with none of the drawn labels is averaged
        over all its rows."""
        weights = np.asarray(label_weights, dtype=float)[self.seed]
        matrix = np.zeros((self.configs, len(self.config)))
        matrix[self.config, np.arange(len(self.config))] = weights
        totals = matrix.sum(1, keepdims=True)
        empty = totals[:, 0] == 0
        matrix[empty] = (self.config[None, :] == np.flatnonzero(empty)[:, None]).astype(float)
        return matrix / matrix.sum(1, keepdims=True)

    def draws(self, resamples: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Seed-label draws with replacement, as (counts [J, S], probabilities [J]): every multiset of S
        labels with its exact probability when there are at most EXACT_UP_TO of them (3 seeds: 10),
        else `resamples` random draws of equal weight."""
        s = self.seeds
        if math.comb(2 * s - 1, s) <= EXACT_UP_TO:
            counts = np.array([np.bincount(c, minlength=s) for c in itertools.combinations_with_replacement(range(s), s)])
            log_p = (math.lgamma(s + 1) - np.sum([[math.lgamma(n + 1) for n in row] for row in counts], 1)
                     - s * math.log(s))
            return counts.astype(float), np.exp(log_p)
        counts = rng.multinomial(s, np.full(s, 1 / s), size=resamples).astype(float)
        return counts, np.full(resamples, 1 / resamples)

    def single(self, label: int) -> np.ndarray:
        """Label weights that keep one seed only (that seed's own grid)."""
        weights = np.zeros(self.seeds)
        weights[label] = 1.0
        return weights
