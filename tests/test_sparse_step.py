"""Steps on the support (sparse_step.py) equal dense autograd steps: losses, gradients, activity and,
after training with Adam, the decoder constraint and resampling, parameters; for every architecture."""

from __future__ import annotations

import pytest
import torch

from gatedsae.plan.architectures import ARCHITECTURES
from gatedsae.saes.base import make_sae
from gatedsae.saes.rescale_shift import RescaleShiftSAE

SPARSE = [name for name, record in ARCHITECTURES.items() if record.sparse_steps]
from gatedsae.training.sparse_step import dense_step_, sparse_step_

D, WIDTH, B, N = 8, 24, 64, 3
L1 = torch.tensor([0.05, 0.3, 1.0])


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: threads only add overhead


def _sae(arch: str, dtype: torch.dtype = torch.float64, closed: float = 0.5):
    """n = 3 SAEs moved off their init (every parameter, so no term is trivially zero), with about
    `closed` of the gates shut by the gate biases: a mix of open and closed gates, and of open gates with
    the magnitude off."""
    base = "baseline" if arch == "baseline_rescale_shift" else arch
    sae = make_sae(base, N, D, WIDTH, L1, seed=0).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, t in [*sae.named_parameters(), *sae.named_buffers()]:
            if name != "sparsity_coefficient" and not (name == "r_mag" and "r_mag" in sae.frozen):
                t.add_(0.3 * torch.randn(t.shape, generator=gen, dtype=dtype))
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
        gate_bias = sae.b_gate if hasattr(sae, "b_gate") else sae.b_enc
        gate_bias.sub_(closed * 2)
    if arch == "baseline_rescale_shift":
        sae = RescaleShiftSAE.from_baseline(sae)
        with torch.no_grad():
            sae.r_mag.normal_(0, 0.3, generator=gen)
            sae.b_mag.add_(0.2)
    return sae


def _x(seed: int, dtype: torch.dtype = torch.float64, batch: int = B) -> torch.Tensor:
    return torch.randn(batch, D, generator=torch.Generator().manual_seed(seed), dtype=dtype) + 0.5


def _grads(sae, step, x):
    sae.zero_grad(set_to_none=True)
    outcome = step(sae, x)
    return outcome, {name: p.grad.clone() for name, p in sae.named_parameters()}


@pytest.mark.parametrize("bf16", [False, True], ids=["float64", "bf16_encoder_product"])
@pytest.mark.parametrize("arch", SPARSE)
def test_sparse_step_gives_the_losses_gradients_and_activity_of_autograd(arch, bf16):
    """In float64; and with the encoder's product in bf16 (precision.train=bfloat16, saes/encoder_product.py)
    and the rest float64, where both steps must agree as tightly, on the same bf16-rounded gates."""
    sae = _sae(arch)
    x = _x(0)
    with torch.no_grad():
        exact = sae(x)
        sae.encoder_bf16 = bf16
        terms = sae(x)
    assert not bf16 or (terms.total - exact.total).abs().max() > 1e-6, "bf16 must round, or this tests nothing"
    open_gates = (terms.features > 0).double().mean()
    assert 0.1 < open_gates < 0.9, "the test needs open and closed gates"
    dense, expected = _grads(sae, dense_step_, x)
    sparse, grads = _grads(sae, sparse_step_, x)
    for field in ("total", "reconstruction", "sparsity", "auxiliary"):
        torch.testing.assert_close(getattr(sparse, field), getattr(terms, field), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(sparse.l0, dense.l0.double(), rtol=0, atol=0)
    assert torch.equal(sparse.fired, dense.fired)
    assert grads.keys() == expected.keys() == {name for name, _ in sae.named_parameters()}
    for name, grad in expected.items():
        assert grad.abs().sum() > 0, f"{name}: a zero gradient would test nothing"
        assert grads[name].shape == grad.shape
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("arch", ["gated", "baseline"])
def test_sparse_step_in_float32_and_with_every_gate_closed(arch):
    sae = _sae(arch, torch.float32)
    x = _x(1, torch.float32)
    _, expected = _grads(sae, dense_step_, x)
    _, grads = _grads(sae, sparse_step_, x)
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    shut = _sae(arch, closed=1e4)  # no gate open: only the decoder bias learns (towards the data)
    outcome, grads = _grads(shut, sparse_step_, x.double())
    _, expected = _grads(shut, dense_step_, x.double())
    assert not outcome.l0.any() and not outcome.fired.any()
    for name, grad in expected.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-10, atol=1e-12, msg=name)


def _train(sae, step, batches: int, resample_at: int) -> torch.optim.Optimizer:
    """The trainer's step (decoder-gradient projection, Adam β1 = 0, renormalised decoder rows), with
    one dead-feature resampling (and its Adam-state reset) on the way."""
    from gatedsae.training.optimizer import reset_adam_state

    optimizer = torch.optim.Adam(sae.trainable_parameters(), lr=3e-2, betas=(0.0, 0.999))
    for i in range(batches):
        x = _x(100 + i)
        optimizer.zero_grad(set_to_none=True)
        step(sae, x)
        sae.remove_parallel_decoder_grad_()
        optimizer.step()
        sae.normalize_decoder_()
        if i == resample_at:
            dead = torch.zeros(N, WIDTH, dtype=torch.bool)
            dead[:, ::5] = True
            with torch.no_grad():
                errors = ((x - sae(x).x_hat) ** 2).sum(-1)
            sae.resample_(dead, x, errors, seeds=[7, 8, 9])
            reset_adam_state(optimizer, sae, dead)
    return optimizer


@pytest.mark.parametrize("arch", SPARSE)
def test_training_on_the_support_reaches_the_parameters_of_dense_training(arch):
    dense, sparse = _sae(arch), _sae(arch)
    dense_opt = _train(dense, dense_step_, batches=12, resample_at=5)
    sparse_opt = _train(sparse, sparse_step_, batches=12, resample_at=5)
    moved = False
    for (name, expected), (_, value) in zip(dense.named_parameters(), sparse.named_parameters()):
        torch.testing.assert_close(value, expected, rtol=1e-9, atol=1e-10, msg=name)
        moved |= not torch.equal(expected, _sae(arch).get_parameter(name))
        for key, moment in dense_opt.state[expected].items():
            torch.testing.assert_close(sparse_opt.state[value][key], moment, rtol=1e-9, atol=1e-12, msg=f"{name}.{key}")
    assert moved


def test_sparse_step_rejects_an_unknown_module():
    class Other(torch.nn.Module):
        pass

    with pytest.raises(TypeError, match="no sparse step"):
        sparse_step_(Other(), _x(0))


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_the_registry_says_sparse_steps_exactly_where_the_class_has_a_gate_on_its_support(arch):
    sae = make_sae("baseline" if arch == "baseline_rescale_shift" else arch, 1, D, WIDTH, 4, seed=0)
    if arch == "baseline_rescale_shift":
        sae = RescaleShiftSAE.from_baseline(sae)
    try:
        sae.support_gate()
        has_gate = True
    except TypeError:
        has_gate = False
    assert has_gate == ARCHITECTURES[arch].sparse_steps


@pytest.mark.parametrize("shape", [(3, 64, 40), (2, 7, 9), (1, 1, 8)])  # 8-byte words, and a size that is not
@pytest.mark.parametrize("density", [0.0, 0.02, 0.5, 1.0])
def test_open_positions_are_the_masks_nonzero_entries_in_order(shape, density):
    from gatedsae.training.sparse_step import open_positions

    mask = torch.rand(shape, generator=torch.Generator().manual_seed(len(shape) + int(100 * density))) < density
    assert torch.equal(open_positions(mask), mask.reshape(-1).nonzero().squeeze(1))
    view = torch.zeros(2 * mask.numel() + 3, dtype=torch.bool)[3:3 + mask.numel()].view(shape)  # offset storage
    view |= mask
    assert torch.equal(open_positions(view), mask.reshape(-1).nonzero().squeeze(1))
