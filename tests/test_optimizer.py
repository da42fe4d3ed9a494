"""The optimiser's side of a step (training/optimizer.py): Adam over transposed-stored parameters, the
per-SAE gradient norm."""

import torch

from gatedsae.training.optimizer import adam_step, squared_norm_per_sae


def _feature_major(*shape, seed):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape[:-2], shape[-1], shape[-2], generator=generator).transpose(-1, -2)


def test_adam_step_in_memory_order_is_the_plain_fused_step_bit_for_bit():
    params = {name: torch.nn.Parameter(_feature_major(3, 8, 32, seed=0)) for name in ("plain", "ours")}
    params["ours_bias"], params["plain_bias"] = (torch.nn.Parameter(torch.randn(3, 32)) for _ in range(2))
    params["plain_bias"].data.copy_(params["ours_bias"].data)
    optimizers = {side: torch.optim.Adam([params[side], params[f"{side}_bias"]], lr=1e-2, fused=True)
                  for side in ("plain", "ours")}
    for step in range(4):
        for side in ("plain", "ours"):
            params[side].grad = _feature_major(3, 8, 32, seed=10 + step)
            params[f"{side}_bias"].grad = torch.randn(3, 32, generator=torch.Generator().manual_seed(step))
        optimizers["plain"].step()
        adam_step(optimizers["ours"])
        ours, plain = params["ours"], params["plain"]
        assert ours.shape == plain.shape and ours.stride() == plain.stride() == (256, 1, 8)
        assert ours.grad.stride() == plain.grad.stride()
        assert torch.equal(ours, plain) and torch.equal(params["ours_bias"], params["plain_bias"])
        for key, value in optimizers["plain"].state[plain].items():
            mine = optimizers["ours"].state[ours][key]
            assert torch.equal(mine, value) and mine.stride() == value.stride(), key


def test_squared_norm_per_sae_reads_any_layout_to_float32_accuracy():
    generator = torch.Generator().manual_seed(0)
    row_major = torch.randn(4, 6, 9, generator=generator)
    layouts = {"row-major": row_major, "feature-major": row_major.transpose(-1, -2).contiguous().transpose(-1, -2),
               "strided": torch.randn(4, 6, 18, generator=generator)[..., ::2], "vector": row_major[:, 0]}
    for name, grad in layouts.items():
        exact = grad.double().pow(2).flatten(1).sum(1)
        torch.testing.assert_close(squared_norm_per_sae(grad).double(), exact, rtol=1e-6, atol=0, msg=name)
