"""k-sparse linear probes on SAE latents, after SAEBench's sparse probing (Karvonen et al. 2024, building
on Gurnee et al. 2023, "Finding Neurons in a Haystack"): for a binary label, keep the k latents whose mean
activation differs most between the two classes on the training rows, fit a logistic regression on those
k alone, and report its accuracy on held-out rows; the same probe on every dimension of the raw
activations is the reference. A latent that carries the label alone gives a k = 1 probe the accuracy of
the full one.

The interp stage (evaluation/interp.py) runs it on the real SAEs; each result keeps which held-out rows
the probe got right, so intervals can resample them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def top_k_latents(features: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k latents whose mean activation differs most between label 1 and label 0."""
    positive, negative = labels.bool(), ~labels.bool()
    if not positive.any() or not negative.any():
        raise ValueError("sparse probing needs rows of both classes")
    difference = features[positive].double().mean(0) - features[negative].double().mean(0)
    return difference.abs().topk(min(k, features.shape[1])).indices


@dataclass
class LogisticProbe:
    """A fitted logistic regression on standardised columns: called on rows, whether it says label 1."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        return ((rows.double() - self.mean) / self.std) @ self.weight + self.bias > 0

    @property
    def direction(self) -> torch.Tensor:
        """The direction it reads, in the rows' own units (the feature's direction for absorption)."""
        return self.weight / self.std


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float = 1e-3, steps: int = 100) -> LogisticProbe:
    """A logistic regression on standardised columns (L-BFGS, L2 penalty `l2`)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0).clamp_min(1e-8)
    z = (x - mean) / std
    weight = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=steps, line_search_fn="strong_wolfe")
    target = y.double()

    def loss():
        optimiser.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(z @ weight + bias, target) \
            + l2 * (weight**2).sum()
        value.backward()
        return value

    optimiser.step(loss)
    return LogisticProbe(mean, std, weight.detach(), bias.detach())


def correct(predict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per row, whether the probe's answer is the label."""
    return predict(x) == y.bool()


def accuracy(predict, x: torch.Tensor, y: torch.Tensor) -> float:
    return float(correct(predict, x, y).double().mean())


def sparse_probing(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                   ks: Sequence[int]) -> dict[int, dict]:
    """Per k: the latents chosen on the training rows, the held-out accuracy of a probe on them, and which
    held-out rows it got right."""
    found = {}
    for k in ks:
        latents = top_k_latents(train, train_labels, k)
        right = correct(fit_logistic(train[:, latents], train_labels), test[:, latents], test_labels)
        found[k] = {"latents": latents.tolist(), "accuracy": float(right.double().mean()), "correct": right}
    return found


def full_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                        test_labels: torch.Tensor) -> float:
    """The reference: a probe on every column (the raw activations)."""
    return accuracy(fit_logistic(train, train_labels), test, test_labels)
