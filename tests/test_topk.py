"""TopK SAEs: the top-k selection per SAE, where gradients flow (main term and AuxK), the dead-latent
counter, independence of batched SAEs, the sae-lens export, bad k, and training on toy data."""

from __future__ import annotations

import json

import pytest
import torch
from sae_helpers import gradients, inputs, perturb, toy_batch, toy_directions, train_step

from gatedsae.saes.base import load_slice_state, slice_state
from gatedsae.saes.topk import TopKSAE

D, WIDTH, B = 8, 12, 32

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: threads only add overhead


def _x(seed: int = 0, batch: int = B, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return inputs(batch, D, seed, dtype)


def _sae(k, seeds=(1, 2, 3), **kwargs) -> TopKSAE:
    return TopKSAE(len(seeds), D, WIDTH, k, seeds, **kwargs).double()


def _mark_dead(sae: TopKSAE, dead: torch.Tensor) -> None:
    sae.tokens_since_fired.copy_(torch.where(dead, sae.dead_after_tokens, 0))


# ---------------------------------------------------------------------------------------------------
# The forward pass.


def test_each_sae_keeps_its_own_k_largest_positive_preactivations():
    k = [1, 3, 7]
    sae = _sae(k)
    perturb(sae, buffers=False)
    with torch.no_grad():
        sae.b_enc[:, : WIDTH // 2] -= 1.5  # many π ≤ 0, so some rows have fewer than k positive
    x = _x()
    pi = sae.preactivations(x)
    terms = sae(x)
    features = terms.features
    assert features.shape == (3, B, WIDTH)
    for i, k_i in enumerate(k):
        positive = (pi[i] > 0).sum(-1)
        nonzero = features[i] > 0
        torch.testing.assert_close(nonzero.sum(-1), torch.minimum(positive, torch.tensor(k_i)), rtol=0, atol=0)
        # The kept latents are the largest pre-activations, at their value.
        top = pi[i].topk(k_i, dim=-1)
        expected = torch.zeros_like(pi[i]).scatter(-1, top.indices, top.values.clamp_min(0))
        torch.testing.assert_close(features[i], expected, rtol=0, atol=0)
    assert ((pi[2] > 0).sum(-1) < 7).any()  # the min(k, #positive) case is exercised
    torch.testing.assert_close(terms.sparsity, (features > 0).double().sum(-1).mean(-1))  # sparsity is L0
    torch.testing.assert_close(sae.encode(x), features)
    torch.testing.assert_close(terms.total, terms.reconstruction + terms.auxiliary)  # no L1 term


# ---------------------------------------------------------------------------------------------------
# Gradients, AuxK and the dead-latent counter.


def test_reconstruction_gradient_reaches_only_the_selected_latents():
    sae = _sae([2, 3], seeds=(1, 2))
    perturb(sae, buffers=False)
    x = _x(batch=2)  # few tokens, so most latents are selected on none
    terms = sae(x)
    selected = terms.features > 0  # [n, 2, width]
    grads = gradients(sae, terms.reconstruction.sum())
    used = selected.any(1)  # latents selected on some token
    assert (~used).any() and used.any()
    assert not grads["b_enc"][~used].any() and not grads["W_enc"].transpose(1, 2)[~used].any()
    assert (grads["b_enc"][used] != 0).all()
    # Exactly: d/db_enc = Σ over tokens of d/df on the selected latents, with d/dx̂ = 2(x̂ − x)/batch.
    with torch.no_grad():
        d_f = 2 * (terms.x_hat - x) @ sae.W_dec.transpose(1, 2) / 2
        torch.testing.assert_close(grads["b_enc"], (d_f * selected).sum(1))


def test_auxk_is_zero_without_dead_latents_and_trains_only_the_dead_ones():
    sae = _sae([2, 3], seeds=(1, 2), k_aux=3)
    perturb(sae, buffers=False)
    x = _x()
    terms = sae(x)
    assert not sae.dead().any() and not terms.auxiliary.any()
    assert not terms.auxiliary.requires_grad  # a constant 0: it trains nothing

    dead = torch.zeros(2, WIDTH, dtype=torch.bool)
    dead[0, [0, 4, 5, 9]] = True  # SAE 1 has none
    sae.eval()  # no counting: the marks stand
    _mark_dead(sae, dead)
    terms = sae(x)
    assert terms.auxiliary[0] > 0 and terms.auxiliary[1] == 0
    # The reference: the top-3 ReLU'd dead pre-activations decoded without b_dec model the detached error.
    with torch.no_grad():
        pi = sae.preactivations(x)[0]
        masked = pi.masked_fill(~dead[0], -torch.inf)
        top = masked.topk(3, dim=-1)
        z = torch.zeros_like(pi).scatter(-1, top.indices, top.values.clamp_min(0))
        assert (z > 0).any()
        e = x - terms.x_hat[0]
        expected = (e - z @ sae.W_dec[0]).pow(2).sum(-1).mean() / 32
    torch.testing.assert_close(terms.auxiliary[0], expected)

    grads = gradients(sae, terms.auxiliary.sum())
    chosen = (z > 0).any(0)
    assert chosen.any() and (dead[0] | ~chosen).all()  # only dead latents are chosen
    assert (grads["b_enc"][0, chosen] != 0).all() and not grads["b_enc"][0, ~chosen].any()
    assert not grads["W_dec"][0, ~chosen].any() and grads["W_dec"][0, chosen].abs().sum() > 0
    assert grads["b_dec"][0].abs().sum() > 0  # only through the encoder's centring (ê has no b_dec)
    assert all(not g[1].any() for g in grads.values())  # nothing for the SAE without dead latents
    # The target is detached: the live latents' selection (and their b_enc) learn nothing from AuxK.
    live_used = (terms.features[0] > 0).any(0) & ~dead[0]
    assert live_used.any() and not grads["b_enc"][0, live_used].any()


def test_dead_counter_advances_and_resets_in_training_only():
    sae = _sae([1], seeds=(5,), dead_after_tokens=3 * B)
    perturb(sae, buffers=False)
    x = _x()
    fires = (sae.encode(x) > 0).any(1)  # [1, width]
    assert fires.any() and (~fires).sum() >= 2
    sae.eval()
    sae(x)
    assert not sae.tokens_since_fired.any()  # evaluation does not count
    sae.train()
    for step in range(1, 4):
        sae(x)
        torch.testing.assert_close(sae.tokens_since_fired, torch.where(fires, 0, step * B))
    assert torch.equal(sae.dead(), ~fires)  # 3·B tokens without firing: dead
    # A dead latent that fires again is alive at once: raise one silent latent to the top of every row.
    silent = int((~fires[0]).nonzero()[0])
    with torch.no_grad():
        sae.b_enc[0, silent] += 100.0
    terms = sae(x)
    assert sae.tokens_since_fired[0, silent] == 0 and not sae.dead()[0, silent]
    assert (terms.features[0, :, silent] > 0).all()
    assert (sae.tokens_since_fired[0, ~fires[0]].sort().values[1:] == 4 * B).all()  # the others keep counting


# ---------------------------------------------------------------------------------------------------
# Batched SAEs are independent.


def test_slice_of_a_grid_equals_the_sae_alone():
    grid = TopKSAE(3, D, WIDTH, [2, 5, 9], [21, 22, 23], k_aux=3)
    alone = TopKSAE(1, D, WIDTH, 5, [22], k_aux=3)
    perturb(grid, buffers=False)
    dead = torch.rand(3, WIDTH, generator=torch.Generator().manual_seed(4)) < 0.4
    assert dead[1].any()
    _mark_dead(grid, dead)
    load_slice_state(alone, 0, slice_state(grid, 1))
    assert int(slice_state(grid, 1)["k"]) == 5  # k travels with the slice
    x = _x(dtype=torch.float32) + 0.5
    grid.eval(), alone.eval()  # keep the dead marks for this batch (training mode would count it first)
    grid_terms, alone_terms = grid(x), alone(x)
    assert alone_terms.auxiliary[0] > 0
    for field in ("total", "reconstruction", "sparsity", "auxiliary", "features", "x_hat"):
        torch.testing.assert_close(getattr(grid_terms, field)[1:2], getattr(alone_terms, field), rtol=1e-6, atol=1e-6)
    grid_grads = gradients(grid, grid_terms.total.sum())
    alone_grads = gradients(alone, alone_terms.total.sum())
    assert grid_grads.keys() == alone_grads.keys()
    for name, grad in alone_grads.items():
        torch.testing.assert_close(grid_grads[name][1:2], grad, rtol=1e-5, atol=1e-6)
    grid.train(), alone.train()
    grid(x[:2]), alone(x[:2])  # the counter too is per slice (two tokens: some latents stay silent)
    assert (grid.tokens_since_fired[1] == 0).any() and (grid.tokens_since_fired[1] > 0).any()
    torch.testing.assert_close(grid.tokens_since_fired[1:2], alone.tokens_since_fired, rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------
# Export to sae-lens.


def test_sae_lens_loads_the_export_and_computes_the_same_features(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    from safetensors.torch import save_file

    scale = 3.7
    sae = TopKSAE(2, D, WIDTH, [2, 4], [1, 2])
    perturb(sae, buffers=False)
    x_raw = _x(9, batch=64, dtype=torch.float32) * 2 + 0.3
    ours = sae.encode(scale * x_raw)
    for i in range(2):
        tensors = sae.saelens_tensors(i, scale)
        cfg = {"architecture": "topk", "d_in": D, "d_sae": WIDTH, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none", **sae.saelens_cfg_extra(i)}
        directory = tmp_path / str(i)
        directory.mkdir()
        save_file(tensors, directory / "sae_weights.safetensors")
        (directory / "cfg.json").write_text(json.dumps(cfg))
        loaded = sae_lens.SAE.load_from_disk(directory, device="cpu")
        assert type(loaded).__name__ == "TopKSAE" and loaded.cfg.k == int(sae.k[i])
        with torch.no_grad():
            theirs = loaded.encode(x_raw)
            torch.testing.assert_close(theirs, ours[i], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(TopKSAE.encode_saelens(cfg, tensors, x_raw), ours[i], rtol=1e-5, atol=1e-5)
            # Decoding in raw space is our reconstruction of s·x divided by s.
            torch.testing.assert_close(loaded.decode(theirs), sae.decode(ours)[i] / scale, rtol=1e-5, atol=1e-5)
        assert ((theirs > 0).sum(-1) <= sae.k[i]).all() and (theirs > 0).sum() > 0


# ---------------------------------------------------------------------------------------------------
# Bad input.


@pytest.mark.parametrize("k", [0, WIDTH + 1, 2.5, -1, float("nan"), [1, 0]])
def test_bad_k_is_refused_naming_the_value(k):
    with pytest.raises(ValueError, match=r"k = .* is not an integer in \[1, width = 12\]"):
        TopKSAE(2, D, WIDTH, k, [1, 2])


def test_bad_k_shape_and_auxk_settings_are_refused():
    with pytest.raises(ValueError, match="one value per SAE"):
        TopKSAE(2, D, WIDTH, [1, 2, 3], [1, 2])
    for kwargs in ({"k_aux": 0}, {"dead_after_tokens": 0}, {"aux_coefficient": -1.0}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            TopKSAE(2, D, WIDTH, 2, [1, 2], **kwargs)
    assert TopKSAE(1, D, WIDTH, WIDTH, [1]).k_aux == D // 2  # k = width is allowed; k_aux defaults to d/2


# ---------------------------------------------------------------------------------------------------
# Training on toy data with known sparse features.


def test_training_reduces_the_loss_and_larger_k_reconstructs_better():
    """d=16, 32 unit ground-truth directions, each active w.p. 0.05 (1.6 per input on average). One module
    trains k = 1 and k = 4 side by side (AuxK on, with a short dead window so it acts)."""
    gen = torch.Generator().manual_seed(0)
    directions = toy_directions(gen)
    heldout = toy_batch(gen, directions, 2048)
    sae = TopKSAE(2, 16, 32, [1, 4], [0, 1], dead_after_tokens=5 * 256)
    with torch.no_grad():
        before = sae(heldout)
    opt = torch.optim.Adam(sae.trainable_parameters(), lr=1e-2, betas=(0.0, 0.999))
    auxiliary_seen = torch.zeros(2)
    for _ in range(200):
        terms = train_step(sae, opt, toy_batch(gen, directions, 256))
        auxiliary_seen = torch.maximum(auxiliary_seen, terms.auxiliary.detach())
    sae.eval()
    with torch.no_grad():
        after = sae(heldout)
    fvu = after.reconstruction / heldout.pow(2).sum(-1).mean()
    # k = 1 starts near its optimum (the transposed-decoder init already picks a good direction per
    # input: FVU ≈ 0.3 before and after), so the loss must halve over both SAEs together and for k = 4.
    assert after.total.sum() < 0.5 * before.total.sum(), (before.total, after.total)
    assert after.reconstruction[1] < 0.5 * before.reconstruction[1], (before.reconstruction, after.reconstruction)
    assert fvu[1] < fvu[0] and fvu[1] < 0.2, fvu
    assert (after.sparsity <= sae.k.to(after.sparsity.dtype)).all()
    assert auxiliary_seen.sum() > 0  # AuxK did act at some point
