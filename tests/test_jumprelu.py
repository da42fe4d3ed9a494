"""The JumpReLU SAE's mathematics: the forward pass and L0 term, the straight-through estimators'
gradients against the paper's pseudo-derivatives, independence of the SAEs batched in one module,
agreement with the Gated → JumpReLU export and with sae-lens, and λ controlling L0 on toy data."""

from __future__ import annotations

import json

import pytest
import torch
from sae_helpers import gradients, inputs, toy_batch, toy_directions, train_step

from gatedsae.saes.base import load_slice_state, slice_state
from gatedsae.saes.gated import GatedSAE, to_jumprelu
from gatedsae.saes.jumprelu import JumpReLUSAE

D, WIDTH, B = 8, 12, 32
EPS = JumpReLUSAE.BANDWIDTH

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: threads only add overhead


def _x(seed: int = 0, batch: int = B) -> torch.Tensor:
    return inputs(batch, D, seed, torch.float64)


@torch.no_grad()
def _sae(n: int = 2, seeds=None, coefficient=None, x: torch.Tensor | None = None, seed: int = 1) -> JumpReLUSAE:
    """A float64 JumpReLU SAE moved off its init, with thresholds placed among the pre-activations of `x`:
    for each feature θ sits within ε·0.4 of one π of the batch (above or below it), so the kernel fires
    there, while every other π is clearly open or closed."""
    seeds = list(range(n)) if seeds is None else seeds
    coefficient = torch.linspace(0.1, 1.0, n) if coefficient is None else coefficient
    sae = JumpReLUSAE(n, D, WIDTH, coefficient, seeds).double()
    gen = torch.Generator().manual_seed(seed)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        t = getattr(sae, name)
        t.add_(0.3 * torch.randn(t.shape, generator=gen, dtype=t.dtype))
    sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    pi = sae.preactivations(_x() if x is None else x)
    upper_quartile = pi.sort(dim=1).values[:, (3 * pi.shape[1]) // 4, :]  # [n, width]
    offset = (torch.rand(n, WIDTH, generator=gen, dtype=pi.dtype) - 0.5) * 0.8 * EPS
    theta = upper_quartile.abs().clamp_min(0.01) + offset
    sae.threshold.copy_(theta)
    return sae


def _by_hand(sae: JumpReLUSAE, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """π, θ, the open mask and the kernel K((π − θ)/ε), written out from the parameters."""
    with torch.no_grad():
        centred = x - sae.b_dec[:, None, :]
        pi = centred @ sae.W_enc + sae.b_enc[:, None, :]
        theta = sae.threshold.clone()
        kernel = (((pi - theta[:, None, :]) / EPS).abs() < 0.5).to(pi.dtype)
    return dict(centred=centred, pi=pi, theta=theta, open=(pi > theta[:, None, :]).to(pi.dtype), kernel=kernel)


# ---------------------------------------------------------------------------------------------------
# Construction and forward pass.


def test_initialisation():
    sae = JumpReLUSAE(3, D, WIDTH, torch.tensor([0.1, 0.2, 0.3]), seeds=[4, 5, 6])
    assert sae.arch == "jumprelu"
    assert {name for name, _ in sae.named_parameters()} == {"W_enc", "b_enc", "threshold", "W_dec", "b_dec"}
    assert torch.equal(sae.W_enc, sae.W_dec.transpose(1, 2))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(3, WIDTH))
    assert not sae.b_enc.any() and not sae.b_dec.any()
    torch.testing.assert_close(sae.threshold, torch.full((3, WIDTH), JumpReLUSAE.INITIAL_THRESHOLD))


def test_features_and_l0_by_hand():
    x = _x()
    sae = _sae(3, x=x)
    hand = _by_hand(sae, x)
    terms = sae(x)
    torch.testing.assert_close(terms.features, hand["pi"] * hand["open"], rtol=0, atol=0)
    # Non-trivial: the threshold matters (some π > 0 stay closed), and both open and closed features occur.
    assert ((hand["pi"] > 0) & (hand["open"] == 0)).any() and 0 < hand["open"].mean() < 1
    l0 = hand["open"].sum(-1).mean(-1)  # open features per row, averaged over the batch
    torch.testing.assert_close(terms.sparsity, l0, rtol=0, atol=0)
    assert torch.equal(terms.sparsity, (terms.features != 0).sum(-1).double().mean(-1))
    torch.testing.assert_close(terms.reconstruction, (x - terms.x_hat).pow(2).sum(-1).mean(-1))
    torch.testing.assert_close(terms.total, terms.reconstruction + sae.sparsity_coefficient.double() * l0)
    assert not terms.auxiliary.any()


# ---------------------------------------------------------------------------------------------------
# Straight-through estimators.


def test_threshold_gradients_are_the_papers_pseudo_derivatives():
    x = _x()
    sae = _sae(2, x=x)
    hand = _by_hand(sae, x)
    theta = hand["theta"]
    assert hand["kernel"].sum(1).gt(0).float().mean() > 0.5  # the kernel fires for most features
    # Reconstruction: ∂L/∂θ = Σ_B ∂L/∂f · (−θ/ε) K, with ∂L/∂f = (2/B)(x̂ − x) W_decᵀ.
    terms = sae(x)
    dL_df = 2 / B * (terms.x_hat.detach() - x) @ sae.W_dec.detach().transpose(1, 2)
    d_theta = -(theta[:, None, :] / EPS * hand["kernel"] * dL_df).sum(1)
    recon = gradients(sae, terms.reconstruction.sum())
    assert d_theta.abs().sum() > 0
    torch.testing.assert_close(recon["threshold"], d_theta)
    # ... and the encoder learns only through open features (∂f/∂π = H(π − θ)).
    delta = dL_df * hand["open"]
    torch.testing.assert_close(recon["b_enc"], delta.sum(1))
    torch.testing.assert_close(recon["W_enc"], hand["centred"].transpose(1, 2) @ delta)
    # L0 (mean over the batch of Σ_j H): ∂/∂θ = −(1/ε) Σ_B K / B, and nothing else gets a gradient.
    sparse = gradients(sae, sae(x).sparsity.sum())
    d_theta = -(hand["kernel"] / EPS).sum(1) / B
    assert d_theta.abs().sum() > 0
    torch.testing.assert_close(sparse["threshold"], d_theta)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert not sparse[name].any(), name


def test_constraints_keep_thresholds_non_negative_and_decoder_rows_unit():
    sae = _sae(2)
    with torch.no_grad():  # a large step takes some thresholds below zero and the decoder off the sphere
        sae.threshold.sub_(torch.linspace(-1, 5, WIDTH, dtype=sae.threshold.dtype))
        sae.W_dec.mul_(3.0)
    moved = sae.threshold.detach().clone()
    assert (moved < 0).any() and (moved > 0).any()
    sae.constrain_()
    assert torch.equal(sae.threshold, moved.clamp(min=0))
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, WIDTH, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------
# Batched SAEs are independent.


def test_slice_of_a_grid_equals_the_sae_alone():
    x = _x() + 0.5
    coefficient = torch.tensor([0.1, 0.5, 2.0])
    grid = _sae(3, seeds=[21, 22, 23], coefficient=coefficient, x=x)
    alone = JumpReLUSAE(1, D, WIDTH, coefficient[1:2], seeds=[22]).double()
    load_slice_state(alone, 0, slice_state(grid, 1))
    grid_terms, alone_terms = grid(x), alone(x)
    for field in ("total", "reconstruction", "sparsity", "auxiliary", "features", "x_hat"):
        torch.testing.assert_close(getattr(grid_terms, field)[1:2], getattr(alone_terms, field))
    grid_grads, alone_grads = gradients(grid, grid_terms.total.sum()), gradients(alone, alone_terms.total.sum())
    assert grid_grads.keys() == alone_grads.keys()
    assert alone_grads["threshold"].abs().sum() > 0
    for name, grad in alone_grads.items():
        torch.testing.assert_close(grid_grads[name][1:2], grad)


# ---------------------------------------------------------------------------------------------------
# Resampling.


def test_resampling_resets_the_dead_features_thresholds():
    sae = _sae(2)
    dead = torch.zeros(2, WIDTH, dtype=torch.bool)
    dead[0, [1, 5]] = True
    assert torch.equal(sae.feature_mask_for(sae.threshold, dead), dead)
    before = sae.threshold.detach().clone()
    x = _x(3)
    counts = sae.resample_(dead, x, torch.rand(2, B, dtype=torch.float64) + 0.1, seeds=[0, 1])
    assert counts.tolist() == [2, 0]
    torch.testing.assert_close(sae.threshold[dead], torch.full((2,), JumpReLUSAE.INITIAL_THRESHOLD,
                                                                  dtype=torch.float64))
    assert torch.equal(sae.threshold[~dead], before[~dead])
    assert not sae.b_enc[dead].any()


# ---------------------------------------------------------------------------------------------------
# Export.


def _gated_with_positive_thresholds() -> GatedSAE:
    sae = GatedSAE(3, D, WIDTH, torch.ones(3), seeds=[0, 1, 2]).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        sae.r_mag.copy_(torch.randn(sae.r_mag.shape, generator=gen, dtype=torch.float64))
        sae.b_dec.copy_(torch.randn(sae.b_dec.shape, generator=gen, dtype=torch.float64))
        # θ = b_mag − exp(r_mag) b_gate > 0 when b_gate < 0 < b_mag.
        sae.b_gate.copy_(-0.5 * torch.rand(sae.b_gate.shape, generator=gen, dtype=torch.float64) - 0.01)
        sae.b_mag.copy_(0.5 * torch.rand(sae.b_mag.shape, generator=gen, dtype=torch.float64))
    return sae


def test_loaded_gated_export_gives_the_gated_features():
    gated = _gated_with_positive_thresholds()
    sae = JumpReLUSAE(3, D, WIDTH, torch.ones(3), seeds=[0, 1, 2]).double()
    x = _x(3, batch=256)
    for i in range(3):
        params = to_jumprelu(gated, i)
        assert (params["threshold"] > 0).all()
        load_slice_state(sae, i, {"W_enc": params["W_enc"], "b_enc": params["b_enc"],
                                  "threshold": params["threshold"], "W_dec": params["W_dec"],
                                  "b_dec": params["b_dec"], "sparsity_coefficient": torch.tensor(1.0)})
        exported = sae.saelens_tensors(i, scale=1.0)  # and our export gives back the same tensors
        assert set(exported) == set(params)
        for name, value in params.items():
            torch.testing.assert_close(exported[name], value.float())
    pi_gate, pi_mag = gated.preactivations(x)
    assert ((pi_mag > 0) & (pi_gate <= 0)).any()  # the threshold matters: some π_mag > 0 are closed
    expected = gated.encode(x)
    torch.testing.assert_close(sae.encode(x), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sae(x).x_hat, gated.decode(expected))


def _saelens_cfg(sae: JumpReLUSAE, i: int) -> dict:
    return {"architecture": "jumprelu", "d_in": sae.d, "d_sae": sae.width, "dtype": "float32",
            "device": "cpu", "apply_b_dec_to_input": True, "normalize_activations": "none",
            **sae.saelens_cfg_extra(i)}


def test_sae_lens_computes_our_features_of_raw_activations(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from safetensors.torch import save_file

    scale = 0.37  # the SAE was trained on scale · x_raw
    x_raw = _x(5, batch=128) * 4.0 + 1.0
    sae = _sae(2, x=scale * x_raw)
    i = 1
    tensors = sae.saelens_tensors(i, scale)
    torch.testing.assert_close(tensors["threshold"], sae.threshold[i].float(), rtol=0, atol=0)
    cfg = _saelens_cfg(sae, i)
    save_file(tensors, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    loaded = sae_lens.SAE.load_from_disk(tmp_path, device="cpu")
    assert type(loaded).__name__ == "JumpReLUSAE"

    pi = sae.preactivations(scale * x_raw)[i].detach().float()
    torch.testing.assert_close((x_raw.float() - tensors["b_dec"]) @ tensors["W_enc"] + tensors["b_enc"], pi,
                               rtol=1e-5, atol=1e-5)  # pre-activations, hence θ, unchanged by the rescaling
    ours = sae.encode(scale * x_raw)[i].detach().float()
    assert ((pi > 0) & (ours == 0)).any()  # some positive π below θ: the threshold is applied
    with torch.no_grad():
        theirs = loaded.encode(x_raw.float())
        torch.testing.assert_close(theirs, ours, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(JumpReLUSAE.encode_saelens(cfg, tensors, x_raw.float()), ours,
                                   rtol=1e-5, atol=1e-5)
        x_hat = sae.decode(sae.encode(scale * x_raw))[i].float()
        torch.testing.assert_close(loaded.decode(theirs), x_hat / scale, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------------
# Training on toy data with known sparse features.


def test_training_reduces_the_loss_and_lambda_controls_l0():
    """d=16, 32 unit ground-truth directions, each active w.p. 0.05 with magnitude U[1, 3], normalised to
    E||x||² = 1 as the trainer does (the threshold's init and ε assume it). Three SAEs of one init at
    λ = 0.001, 0.03, 0.3 train in one module: each loss falls, and L0 falls as λ grows."""
    gen = torch.Generator().manual_seed(0)
    directions = toy_directions(gen)
    heldout = toy_batch(gen, directions, 4096)
    scale = heldout.pow(2).sum(-1).mean().rsqrt()
    heldout = heldout * scale
    sae = JumpReLUSAE(3, 16, 32, torch.tensor([0.001, 0.03, 0.3]), seeds=[0, 0, 0])
    with torch.no_grad():
        start = sae(heldout).total
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2)
    for _ in range(600):
        train_step(sae, opt, toy_batch(gen, directions, 256) * scale)
    with torch.no_grad():
        end = sae(heldout)
    l0 = end.sparsity.tolist()
    assert (end.total < 0.5 * start).all(), (start.tolist(), end.total.tolist())
    assert l0[0] > 1.5 * l0[1] and l0[1] > 1.5 * l0[2], l0
    assert end.reconstruction[0] < 0.05, end.reconstruction.tolist()  # small λ: it reconstructs
    theta = sae.threshold.detach()
    assert torch.isfinite(theta).all() and (theta >= 0).all()
    assert theta.median(-1).values[2] > 10 * JumpReLUSAE.INITIAL_THRESHOLD  # thresholds did rise with λ
