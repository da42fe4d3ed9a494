"""k-sparse probes: a latent that carries the label is found and probed alone; a label nothing carries
is guessed at chance."""

from __future__ import annotations

import torch

from gatedsae.evaluation.sparse_probing import full_probe_accuracy, sparse_probing


def _latents(rows: int, seed: int, planted: bool):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.rand(rows, generator=generator) < 0.4
    features = torch.relu(torch.randn(rows, 32, generator=generator))  # 32 latents of noise ...
    if planted:  # ... and latent 7 fires, with a noisy magnitude, exactly on the label's rows
        features[:, 7] = labels * (1.0 + 0.3 * torch.rand(rows, generator=generator))
    return features, labels


def test_a_sparse_probe_recovers_a_planted_feature():
    train, train_labels = _latents(2000, 0, planted=True)
    test, test_labels = _latents(1000, 1, planted=True)
    found = sparse_probing(train, train_labels, test, test_labels, ks=[1, 2, 5])
    assert found[1]["latents"] == [7] and found[1]["accuracy"] > 0.99
    assert all(7 in found[k]["latents"] and found[k]["accuracy"] > 0.98 for k in (2, 5))
    assert full_probe_accuracy(train, train_labels, test, test_labels) > 0.98


def test_a_label_no_latent_carries_is_guessed_at_chance():
    train, train_labels = _latents(2000, 2, planted=False)
    test, test_labels = _latents(1000, 3, planted=False)
    majority = max(float(test_labels.double().mean()), 1 - float(test_labels.double().mean()))
    assert sparse_probing(train, train_labels, test, test_labels, ks=[1])[1]["accuracy"] < majority + 0.05
