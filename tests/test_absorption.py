"""Feature absorption on a constructed case: the known share of rows where another latent carries the
feature in the main latent's place."""

from __future__ import annotations

import pytest
import torch

from gatedsae.evaluation.absorption import absorption


def _case():
    """40 rows carrying feature p (d = 4): the main latent 0 fires on 28; on 8 more, latent 1 (the feature
    with a token-specific part, 'starts with s' absorbed into 'short') fires instead; on 4, nothing does.
    Latent 2 fires everywhere along an orthogonal direction, never carrying p."""
    p, q, r = torch.eye(4)[0], torch.eye(4)[1], torch.eye(4)[2]
    decoder = torch.stack([p, (p + q) / 2**0.5, r])
    x = p.expand(40, 4).clone() + 0.5 * r
    features = torch.zeros(40, 3)
    features[:28, 0] = 1.0
    features[28:36, 1] = 2**0.5  # writes p + q: all of the row's projection on p
    features[:, 2] = 0.5
    return x, features, decoder, p


def test_absorption_on_a_constructed_case_gives_the_known_share():
    x, features, decoder, p = _case()
    found = absorption(x, features, decoder, p, main=[0])
    assert found["false_negative_rate"] == pytest.approx(12 / 40) and found["absorption_rate"] == pytest.approx(8 / 40)


def test_a_latent_carrying_too_little_of_the_feature_absorbs_nothing():
    x, features, decoder, p = _case()
    features[28:36, 1] = 0.2  # writes 0.14 along p: under 40% of the row's projection
    assert absorption(x, features, decoder, p, main=[0])["absorption_rate"] == 0.0
