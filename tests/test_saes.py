"""The SAE architectures' mathematics: where gradients flow, the decoder-norm constraint, weight tying,
the JumpReLU export, independence of the SAEs batched in one module, and shrinkage on toy data."""

from __future__ import annotations

import pytest
import torch
from sae_helpers import gradients, inputs, perturb, toy_batch, toy_directions, train_step

from gatedsae.plan.architectures import ARCHITECTURES, sae_class
from gatedsae.saes.base import load_slice_state, make_sae, slice_state
from gatedsae.saes.baseline import BaselineSAE
from gatedsae.saes.gated import GatedSAE, to_jumprelu
from gatedsae.saes.jumprelu_form import jumprelu_encode
from gatedsae.saes.rescale_shift import RescaleShiftSAE

D, WIDTH, B = 8, 12, 32
GATED = ["gated", "gated_unfrozen_decoder", "gated_no_rmag", "gated_untied"]
PAPER = ["baseline", *GATED, "baseline_rescale_shift"]  # the paper's architectures, all in gatedsae.saes
TRAINABLE_DECODER = [arch for arch in PAPER if arch != "baseline_rescale_shift"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: threads only add overhead


def _x(seed: int = 0, batch: int = B, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return inputs(batch, D, seed, dtype)


# ---------------------------------------------------------------------------------------------------
# Construction.


def test_unknown_architecture_names_the_known_ones():
    with pytest.raises(ValueError) as info:
        make_sae("relu_softplus", 2, D, WIDTH, torch.ones(2), seed=0)
    for name in ARCHITECTURES:
        assert name in str(info.value)


@pytest.mark.parametrize("arch", PAPER)
def test_shapes_and_initialisation(arch):
    sae = make_sae(arch, 3, D, WIDTH, torch.tensor([0.1, 0.2, 0.3]), seed=4)
    assert sae.arch == arch and isinstance(sae, sae_class(arch))
    assert sae.W_dec.shape == (3, WIDTH, D) and sae.b_dec.shape == (3, D)
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(3, WIDTH))
    encoder = "W_enc" if arch.startswith("baseline") else "W_gate"
    assert torch.equal(getattr(sae, encoder), sae.W_dec.transpose(1, 2))
    for name, t in [*sae.named_parameters(), *sae.named_buffers()]:
        if name.startswith("b_") or name == "r_mag":
            assert not t.any(), name  # biases, b_dec and r_mag start at zero
    # Slices differ from one another, and x [B, d] means the same as x broadcast to [n, B, d].
    assert not torch.equal(sae.W_dec[0], sae.W_dec[1])
    x = _x()
    terms = sae(x)
    assert terms.features.shape == (3, B, WIDTH) and terms.x_hat.shape == (3, B, D)
    for value in (terms.total, terms.reconstruction, terms.sparsity, terms.auxiliary):
        assert value.shape == (3,)
    torch.testing.assert_close(sae.encode(x.expand(3, B, D)), terms.features)
    torch.testing.assert_close(sae.decode(terms.features), terms.x_hat)
    # Reproducible from the seed.
    again = make_sae(arch, 3, D, WIDTH, torch.tensor([0.1, 0.2, 0.3]), seed=4)
    assert all(torch.equal(a, b) for a, b in zip(sae.state_dict().values(), again.state_dict().values()))


def test_slice_init_depends_on_its_seed_only():
    grid = make_sae("gated", 3, D, WIDTH, torch.ones(3), seed=0, seeds=[11, 12, 13])
    alone = make_sae("gated", 1, D, WIDTH, torch.ones(1), seed=99, seeds=[12])
    for name, value in slice_state(alone, 0).items():
        torch.testing.assert_close(slice_state(grid, 1)[name], value, rtol=0, atol=0)


def test_slice_state_round_trip_and_mismatch():
    source = make_sae("gated", 2, D, WIDTH, torch.tensor([0.5, 2.0]), seed=1)
    perturb(source)
    target = make_sae("gated", 3, D, WIDTH, torch.ones(3), seed=2)
    state = slice_state(source, 1)
    assert state["sparsity_coefficient"].item() == 2.0 and state["W_dec"].shape == (WIDTH, D)
    load_slice_state(target, 2, state)
    for name, value in slice_state(target, 2).items():
        assert torch.equal(value, state[name]), name
    with pytest.raises(KeyError):
        load_slice_state(make_sae("gated_untied", 1, D, WIDTH, torch.ones(1), seed=0), 0, state)


# ---------------------------------------------------------------------------------------------------
# Where gradients flow.


@pytest.mark.parametrize("arch", GATED)
def test_heaviside_gate_passes_no_gradient(arch):
    sae = make_sae(arch, 2, D, WIDTH, torch.tensor([0.3, 1.0]), seed=0)
    perturb(sae)
    terms = sae(_x())
    assert 0 < (terms.features > 0).float().mean() < 1  # some gates open, some closed
    recon = gradients(sae, terms.reconstruction.sum())
    assert torch.equal(recon["b_gate"], torch.zeros_like(recon["b_gate"]))  # b_gate only feeds the gate
    if arch == "gated_untied":  # untied, W_gate too only feeds the gate
        assert torch.equal(recon["W_gate"], torch.zeros_like(recon["W_gate"]))
    else:  # tied, W_gate also feeds π_mag
        assert recon["W_gate"].abs().sum() > 0
    assert recon["b_mag"].abs().sum() > 0
    terms = sae(_x())
    gate = gradients(sae, (sae.sparsity_coefficient * terms.sparsity + terms.auxiliary).sum())
    assert (gate["b_gate"].abs().sum(-1) > 0).all()  # the gate learns from sparsity + auxiliary only
    assert torch.equal(gate["b_mag"], torch.zeros_like(gate["b_mag"]))  # ... which never touch magnitudes


def test_auxiliary_term_trains_the_decoder_only_when_unfrozen():
    frozen = make_sae("gated", 2, D, WIDTH, torch.ones(2), seed=0)
    perturb(frozen)
    unfrozen = make_sae("gated_unfrozen_decoder", 2, D, WIDTH, torch.ones(2), seed=0)
    for i in range(2):
        load_slice_state(unfrozen, i, slice_state(frozen, i))
    x = _x()
    g_frozen = gradients(frozen, frozen(x).auxiliary.sum())
    g_unfrozen = gradients(unfrozen, unfrozen(x).auxiliary.sum())

    assert torch.equal(g_frozen["W_dec"], torch.zeros_like(frozen.W_dec))
    with torch.no_grad():  # d/dW_dec and d/db_dec of mean_B ||x − (a W_dec + b_dec)||², a = ReLU(π_gate)
        pi_gate, _ = frozen.preactivations(x)
        a = torch.relu(pi_gate)
        residual = x - (a @ frozen.W_dec + frozen.b_dec[:, None, :])
        dW = -2 / B * a.transpose(1, 2) @ residual
        db = -2 * residual.mean(1)
    assert dW.abs().sum() > 0
    torch.testing.assert_close(g_unfrozen["W_dec"], dW)
    # b_dec also centres the encoder input (never detached), so only the decoder-side part differs.
    torch.testing.assert_close(g_unfrozen["b_dec"] - g_frozen["b_dec"], db)
    for name in ("W_gate", "b_gate", "r_mag"):  # the gate path learns the same in both
        torch.testing.assert_close(g_unfrozen[name], g_frozen[name])


def test_no_rmag_has_no_trainable_rmag():
    sae = make_sae("gated_no_rmag", 2, D, WIDTH, torch.ones(2), seed=0)
    names = {name for name, _ in sae.named_parameters()}
    assert names == {"W_dec", "b_dec", "W_gate", "b_gate", "b_mag"}
    assert "r_mag" in dict(sae.named_buffers())
    assert all(p.requires_grad for p in sae.trainable_parameters())
    assert not any(p is sae.r_mag for p in sae.trainable_parameters())
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2)
    for step in range(3):
        train_step(sae, opt, _x(step))
    assert not sae.r_mag.any()
    torch.testing.assert_close(sae.magnitude_weight(), sae.W_gate)


def _trained_baseline(n: int = 2) -> BaselineSAE:
    baseline = make_sae("baseline", n, D, WIDTH, torch.linspace(0.2, 1.0, n), seed=3)
    perturb(baseline)
    return baseline


def test_rescale_shift_starts_as_the_baseline_and_trains_only_rmag_bmag():
    baseline = _trained_baseline()
    sae = RescaleShiftSAE.from_baseline(baseline)
    x = _x()
    base_terms, terms = baseline(x), sae(x)
    for field in ("features", "x_hat", "reconstruction", "sparsity", "total"):
        torch.testing.assert_close(getattr(terms, field), getattr(base_terms, field))
    assert not terms.auxiliary.any()
    assert {name for name, _ in sae.named_parameters()} == {"r_mag", "b_mag"}
    grads = gradients(sae, terms.total.sum())
    assert grads["r_mag"].abs().sum() > 0 and grads["b_mag"].abs().sum() > 0
    frozen = {name: getattr(sae, name).clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2)
    for step in range(3):
        train_step(sae, opt, _x(step))
    assert sae.r_mag.abs().sum() > 0
    for name, value in frozen.items():
        assert torch.equal(getattr(sae, name), value), name
    with pytest.raises(TypeError):
        RescaleShiftSAE.from_baseline(sae)


def test_rescale_shift_is_a_tied_gated_sae_on_the_frozen_baseline():
    sae = RescaleShiftSAE.from_baseline(_trained_baseline())
    with torch.no_grad():
        sae.r_mag.normal_(0, 0.5, generator=torch.Generator().manual_seed(5))
        sae.b_mag.normal_(0, 0.5, generator=torch.Generator().manual_seed(6))
    gated = make_sae("gated", 2, D, WIDTH, torch.ones(2), seed=0)
    with torch.no_grad():
        for ours, theirs in [("W_gate", "W_enc"), ("b_gate", "b_enc"), ("W_dec", "W_dec"),
                             ("b_dec", "b_dec"), ("r_mag", "r_mag"), ("b_mag", "b_mag")]:
            getattr(gated, ours).copy_(getattr(sae, theirs))
    x = _x()
    features = sae.encode(x)
    assert not torch.equal(features, torch.relu(sae._project(x, sae.W_enc) + sae.b_enc[:, None]))
    torch.testing.assert_close(features, gated.encode(x))


# ---------------------------------------------------------------------------------------------------
# Decoder-norm constraint.


@pytest.mark.parametrize("arch", TRAINABLE_DECODER)
def test_decoder_rows_stay_unit_norm(arch):
    sae = make_sae(arch, 2, D, WIDTH, torch.tensor([0.1, 1.0]), seed=0)
    with torch.no_grad():
        sae.W_dec.mul_(torch.rand(2, WIDTH, 1, generator=torch.Generator().manual_seed(0)) * 3 + 0.1)
    sae.normalize_decoder_()
    torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, WIDTH), rtol=0, atol=1e-6)

    start = sae.W_dec.detach().clone()
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2, betas=(0.0, 0.999))
    for step in range(10):
        train_step(sae, opt, _x(step) + 1.0)
        torch.testing.assert_close(sae.W_dec.norm(dim=-1), torch.ones(2, WIDTH), rtol=0, atol=1e-6)
    assert (sae.W_dec - start).abs().max() > 1e-2  # the decoder did move


@pytest.mark.parametrize("arch", ["baseline", "gated"])
def test_parallel_gradient_removal_leaves_orthogonal_rows(arch):
    sae = make_sae(arch, 2, D, WIDTH, torch.tensor([0.1, 1.0]), seed=0)
    perturb(sae)
    sae(_x() + 1.0).total.sum().backward()
    W = sae.W_dec.detach().double()
    before = sae.W_dec.grad.double().clone()
    assert (before * W).sum(-1).abs().max() > 1e-3  # there was a parallel part to remove
    sae.remove_parallel_decoder_grad_()
    after = sae.W_dec.grad.double()
    scale = before.norm(dim=-1) * W.norm(dim=-1) + 1e-12
    assert ((after * W).sum(-1).abs() / scale).max() < 1e-6
    expected = before - (before * W).sum(-1, keepdim=True) * W  # rows of W have unit norm
    # float32 arithmetic on gradients of magnitude ~30: the absolute tolerance follows their scale
    # (a fixed 1e-6 passed or failed by the CPU's summation order)
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-6 * float(before.abs().max()))


# ---------------------------------------------------------------------------------------------------
# Weight tying and the JumpReLU export.


def test_weight_tying_holds_after_training():
    sae = make_sae("gated", 2, D, WIDTH, torch.tensor([0.1, 1.0]), seed=0)
    assert "W_mag" not in dict(sae.named_parameters())
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=3e-2, betas=(0.0, 0.999))
    for step in range(10):
        train_step(sae, opt, _x(step) + 1.0)
    assert sae.r_mag.abs().min() > 1e-3  # every r_mag moved, so tying is not trivially W_mag = W_gate
    with torch.no_grad():
        W_mag = torch.exp(sae.r_mag)[:, None, :] * sae.W_gate
        torch.testing.assert_close(sae.magnitude_weight(), W_mag)
        x = _x(100)
        centred = x - sae.b_dec[:, None, :]
        pi_gate = centred @ sae.W_gate + sae.b_gate[:, None, :]
        pi_mag = centred @ W_mag + sae.b_mag[:, None, :]
        torch.testing.assert_close(sae.encode(x), (pi_gate > 0).float() * torch.relu(pi_mag))


def test_untied_magnitude_weights_are_separate():
    sae = make_sae("gated_untied", 2, D, WIDTH, torch.tensor([0.1, 1.0]), seed=0)
    assert "r_mag" not in dict(sae.named_parameters()) and "r_mag" not in dict(sae.named_buffers())
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=3e-2, betas=(0.0, 0.999))
    for step in range(5):
        train_step(sae, opt, _x(step) + 1.0)
    assert sae.magnitude_weight() is sae.W_mag
    assert (sae.W_mag - sae.W_gate).abs().max() > 1e-2
    with pytest.raises(TypeError):
        to_jumprelu(sae, 0)


@pytest.mark.parametrize("arch", ["gated", "gated_unfrozen_decoder", "gated_no_rmag"])
def test_jumprelu_export_matches_gated_encode(arch):
    sae: GatedSAE = make_sae(arch, 3, D, WIDTH, torch.ones(3), seed=0).double()
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        if arch != "gated_no_rmag":
            sae.r_mag.copy_(torch.randn(sae.r_mag.shape, generator=gen, dtype=torch.float64))
        for name in ("b_gate", "b_mag", "b_dec"):
            getattr(sae, name).copy_(torch.randn(getattr(sae, name).shape, generator=gen, dtype=torch.float64))
    x = _x(3, batch=256, dtype=torch.float64)
    gated = sae.encode(x)
    pi_gate, pi_mag = sae.preactivations(x)
    # Non-trivial: the threshold matters (some π_mag > 0 with the gate closed, and the reverse).
    assert ((pi_mag > 0) & (pi_gate <= 0)).any() and ((pi_mag <= 0) & (pi_gate > 0)).any()
    for i in range(3):
        params = to_jumprelu(sae, i)
        assert set(params) == {"W_enc", "b_enc", "threshold", "W_dec", "b_dec"}
        torch.testing.assert_close(jumprelu_encode(params, x), gated[i], rtol=1e-12, atol=1e-12)
        x_hat = jumprelu_encode(params, x) @ params["W_dec"] + params["b_dec"]
        torch.testing.assert_close(x_hat, sae.decode(gated)[i])


# ---------------------------------------------------------------------------------------------------
# Batched SAEs are independent.


@pytest.mark.parametrize("arch", PAPER)
def test_slice_of_a_grid_equals_the_sae_alone(arch):
    l1 = torch.tensor([0.1, 0.5, 2.0])
    grid = make_sae(arch, 3, D, WIDTH, l1, seed=0, seeds=[21, 22, 23])
    alone = make_sae(arch, 1, D, WIDTH, l1[1:2], seed=0, seeds=[22])
    perturb(grid)  # every slice moved differently, so a mixing bug would show
    load_slice_state(alone, 0, slice_state(grid, 1))
    x = _x() + 0.5
    grid_terms, alone_terms = grid(x), alone(x)
    for field in ("total", "reconstruction", "sparsity", "auxiliary", "features", "x_hat"):
        torch.testing.assert_close(getattr(grid_terms, field)[1:2], getattr(alone_terms, field),
                                   rtol=1e-6, atol=1e-6)
    grid_grads = gradients(grid, grid_terms.total.sum())
    alone_grads = gradients(alone, alone_terms.total.sum())
    assert grid_grads.keys() == alone_grads.keys()
    for name, grad in alone_grads.items():
        torch.testing.assert_close(grid_grads[name][1:2], grad, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# Shrinkage on toy data with known sparse features.


def test_baseline_shrinks_and_gated_does_not_on_toy_data():
    """d=16, 32 unit ground-truth directions, each active w.p. 0.05 with magnitude U[1, 3]. At the same λ
    both SAEs are sparse and reconstruct well, but the baseline's L1 shrinks its features (γ well below 1)
    while the Gated SAE's magnitudes are unpenalised (γ ≈ 1)."""
    gen = torch.Generator().manual_seed(0)
    directions = toy_directions(gen)
    heldout = toy_batch(gen, directions, 4096)
    results = {}
    for arch in ("baseline", "gated"):
        sae = make_sae(arch, 1, 16, 32, torch.tensor([1.0]), seed=0)
        opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2, betas=(0.0, 0.999))
        for _ in range(300):
            train_step(sae, opt, toy_batch(gen, directions, 256))
        with torch.no_grad():
            terms = sae(heldout)
            x_hat = terms.x_hat[0]
            gamma = (x_hat.pow(2).sum(-1).mean() / (x_hat * heldout).sum(-1).mean()).item()
            fvu = (terms.reconstruction[0] / heldout.pow(2).sum(-1).mean()).item()
            l0 = (terms.features[0] > 0).float().sum(-1).mean().item()
        results[arch] = dict(gamma=gamma, fvu=fvu, l0=l0)
    for arch, r in results.items():  # both sparse (true L0 is 1.6 of 32) and both reconstruct
        assert r["l0"] < 8 and r["fvu"] < 0.3, (arch, r)
    assert results["baseline"]["gamma"] < 0.95, results
    assert abs(results["gated"]["gamma"] - 1) < 0.03, results
