"""The precision each stage computes in: chosen from what the machine reports, overridable in conf/, and
dropped back to float32 when bf16 fails a stage's fidelity gate."""

from __future__ import annotations

import pytest

from gatedsae.core import precision
from gatedsae.plan.config import ConfigError, load_config


@pytest.fixture
def cpu_reporting(monkeypatch):
    """Make the CPU report the given flags and torch kernel level."""

    def report(flags: set[str], capability: str) -> None:
        import torch

        monkeypatch.setattr(precision, "_cpuinfo", lambda: ("a test CPU", flags))
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        precision.describe_device.cache_clear()

    yield report
    precision.describe_device.cache_clear()


@pytest.mark.parametrize("flags, capability, native", [
    ({"avx2"}, "AVX2", False),                                       # bf16 matmuls emulated
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX512", True),            # AVX-512 BF16
    ({"avx2", "avx512f", "amx_bf16", "amx_tile"}, "AVX512", True),   # AMX
    ({"avx2", "avx512f", "avx512_bf16"}, "AVX2", False),             # torch not running its AVX-512 kernels
])
def test_auto_is_bf16_only_where_the_cpu_multiplies_bf16_natively(cpu_reporting, flags, capability, native):
    cpu_reporting(flags, capability)
    chosen = precision.choose("evaluate", "auto")
    assert chosen.bf16 == native
    assert chosen.dtype in chosen.reason and chosen.setting == "auto"
    assert precision.machine()["native_bf16"] == native


def test_a_forced_setting_is_used_whatever_the_machine(cpu_reporting):
    cpu_reporting({"avx2"}, "AVX2")
    assert precision.choose("cache", "bfloat16").bf16
    cpu_reporting({"avx512_bf16"}, "AVX512")
    assert not precision.choose("cache", "float32").bf16
    with pytest.raises(ValueError, match="precision.cache.*auto, float32, bfloat16"):
        precision.choose("cache", "fp16")


def test_a_failed_gate_keeps_float32_under_auto_and_says_why(cpu_reporting):
    cpu_reporting({"avx512_bf16"}, "AVX512")
    passed, measured = precision.check({"ce_clean_nats": 0.01, "ce_zero_nats": 0.0001},
                                       {"ce_clean_nats": 0.002, "ce_zero_nats": 0.002})
    assert not passed
    after = precision.choose("evaluate", "auto").checked(passed, measured)
    assert after.dtype == "float32" and "ce_clean_nats 0.01 > 0.002" in after.reason
    assert after.gate["passed"] is False and after.gate["ce_zero_nats"]["value"] == 0.0001
    forced = precision.choose("evaluate", "bfloat16").checked(passed, measured)
    assert forced.bf16 and forced.gate["passed"] is False  # forced: used as asked, the check recorded
    passing = precision.choose("evaluate", "auto").checked(*precision.check({"x": 0.001}, {"x": 0.002}))
    assert passing.bf16 and passing.gate["passed"]


def test_autocast_only_when_bf16():
    import torch

    with precision.choose("train", "bfloat16").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with precision.choose("train", "float32").autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_precision_settings_are_checked_with_the_configuration():
    config = load_config(["experiment=default", "precision.evaluate=float32"])
    assert (config.precision.cache, config.precision.evaluate) == ("auto", "float32")
    assert load_config(["experiment=smoke"]).precision.cache == "float32"  # the plumbing's test: any machine
    with pytest.raises(ConfigError, match="precision.train.*auto, float32, bfloat16"):
        load_config(["experiment=smoke", "precision.train=half"])
    with pytest.raises(ConfigError, match="precision.gate.ce_nats"):
        load_config(["experiment=smoke", "precision.gate.ce_nats=0"])


# --- the LM forward in bf16, and each stage's fidelity gate (tiny model) -----------------------------


def test_bf16_forward_is_autocast_with_the_matrices_cast_once(tiny_model):
    """Under bf16 the matmul matrices are bf16 (embeddings and norms stay float32), the logits are exactly
    plain autocast's, and on exit the float32 weights are back, untouched."""
    import torch

    from gatedsae.data.lm_precision import lm_forward_precision, matmul_parameters

    model = tiny_model.model
    tokens = torch.randint(0, 256, (2, 16))
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        fp32 = model(tokens)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = model(tokens)
        with lm_forward_precision(model, precision.choose("evaluate", "bfloat16")):
            cast = {name for name, p in model.named_parameters() if p.dtype == torch.bfloat16}
            ours = model(tokens)
    assert cast == {name for name, _ in matmul_parameters(model)} and cast
    assert not any(name.startswith("embed.") for name in cast)
    torch.testing.assert_close(ours, autocast, rtol=0, atol=0)
    assert not torch.equal(ours.float(), fp32)
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and torch.equal(p, before[name]), name


def test_bf16_logits_have_their_largest_and_target_entries_in_float32(tiny_model, monkeypatch):
    """Under bf16 the unembedding's output is rounded to bf16; the CE's largest logits and the target's are
    recomputed in float32: with every logit recomputed the CE is float32's, and with the default few it is
    closer to float32's than the CE of the bf16 logits alone."""
    import torch
    import torch.nn.functional as F

    from gatedsae.data.lm_precision import matmul_weights
    from gatedsae.evaluation.spliced import Unembedding, next_token_losses

    model = tiny_model.model
    generator = torch.Generator().manual_seed(0)
    residual = 30 * torch.randn(4, 12, model.cfg.d_model, generator=generator)  # large logits, as an LM's
    tokens = torch.randint(0, model.cfg.d_vocab, (4, 12), generator=generator)
    unembedding = Unembedding(model)
    with torch.no_grad():
        fp32 = unembedding.token_losses(residual, tokens)
        with matmul_weights(model, precision.choose("evaluate", "bfloat16")):
            ours = unembedding.token_losses(residual, tokens)
            bf16_logits = F.linear(model.ln_final(residual[:, 1:-1]).to(torch.bfloat16), unembedding.weight())
            plain = next_token_losses(bf16_logits, tokens, predicting_only=True)
            monkeypatch.setattr(Unembedding, "EXACT_LOGITS", model.cfg.d_vocab)
            every = unembedding.token_losses(residual, tokens)
    torch.testing.assert_close(every, fp32, rtol=0, atol=1e-4)
    assert (ours - fp32).abs().mean() < 0.5 * (plain - fp32).abs().mean()
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("site", ["resid_post", "mlp_out", "attn_z"])
def test_a_bf16_evaluation_computes_its_first_predictions_again_in_float32(tiny_model, site, monkeypatch):
    """With `float32_positions` = k the residual stream the first k predictions are made from is float32's (a
    forward of those positions alone, causal attention): with every logit recomputed in float32 their CE
    is float32's; the rest are the bf16 remainder's, untouched; with the site replaced too."""
    import torch

    from gatedsae.data.lm_precision import matmul_weights
    from gatedsae.evaluation.spliced import SplicedLM, Unembedding

    monkeypatch.setattr(Unembedding, "EXACT_LOGITS", tiny_model.model.cfg.d_vocab)

    model, k = tiny_model.model, 3
    tokens = torch.randint(1, model.cfg.d_vocab, (3, 12), generator=torch.Generator().manual_seed(1))
    bf16 = precision.choose("evaluate", "bfloat16")
    exact = SplicedLM(model, site, 1)
    prefix = exact.prefix(tokens)
    replacement = 0.9 * prefix.activation
    with torch.no_grad():
        fp32 = exact.token_losses(prefix, replacement)
        with matmul_weights(model, bf16):
            plain = SplicedLM(model, site, 1, bf16).token_losses(prefix, replacement)
            head = SplicedLM(model, site, 1, bf16, float32_positions=k)
            ours = head.token_losses(prefix, replacement)
    torch.testing.assert_close(ours[:, :k], fp32[:, :k], rtol=0, atol=1e-5)
    assert torch.equal(ours[:, k:], plain[:, k:])
    assert not torch.equal(plain[:, :k], fp32[:, :k])  # bf16 did move them
    assert head.exact.float32_positions == 0  # the float32 twin has nothing to redo


@pytest.fixture
def bf16_cpu(cpu_reporting):
    cpu_reporting({"avx2", "avx512f", "avx512_bf16"}, "AVX512")


@pytest.mark.parametrize("tolerance, dtype", [(0.5, "bfloat16"), (1e-9, "float32")])
def test_the_cache_keeps_bf16_only_if_its_activations_pass_the_gate(bf16_cpu, smoke_tokens, tiny_model, tmp_path,
                                                                   tolerance, dtype):
    from conftest import copy_token_data, smoke_config

    from gatedsae.activations.cache import cache_activations
    from gatedsae.activations.store import ActivationStore

    fp32_config = copy_token_data(smoke_tokens, tmp_path / "fp32")
    cache_activations(fp32_config, loaded=tiny_model)
    copy_token_data(smoke_tokens, tmp_path / "auto")
    config = smoke_config(tmp_path / "auto", "precision.cache=auto", f"precision.gate.activation_rel_error={tolerance}")
    cache_activations(config, loaded=tiny_model)
    for (site, layer), directory in config.activation_dirs().items():
        store = ActivationStore(directory, "train")
        record = store.manifest.precision
        assert record["dtype"] == dtype and record["stage"] == "cache" and record["setting"] == "auto"
        entry = record["gate"][f"{site}_layer{layer}_rel_error"]
        assert entry["tolerance"] == tolerance and entry["value"] > 0
        assert record["gate"]["passed"] == (dtype == "bfloat16")
        assert record["float32_positions"] == (config.precision.cache_float32_positions if dtype == "bfloat16" else 0)
        reference = ActivationStore(fp32_config.activation_dirs()[(site, layer)], "train").shard(0)
        error = float((store.shard(0) - reference).norm() / reference.norm())
        if dtype == "float32":
            assert error == 0 and "failed this stage's fidelity gate" in record["reason"]
        else:
            assert 0 < error < 0.05  # bf16 operands: close to float32, not equal
        assert ActivationStore(fp32_config.activation_dirs()[(site, layer)], "train").manifest.precision["dtype"] == "float32"


@pytest.mark.parametrize("tolerance, dtype", [(0.5, "bfloat16"), (1e-12, "float32")])
def test_the_evaluation_keeps_bf16_only_if_its_ce_passes_the_gate(bf16_cpu, smoke_trained, tiny_model, tmp_path,
                                                                  tolerance, dtype):
    import json

    import torch
    from conftest import TRAINED, copy_data

    from gatedsae.evaluation.evaluate import evaluate_grid

    config = copy_data(smoke_trained, tmp_path, TRAINED, "precision.evaluate=auto", f"precision.gate.ce_nats={tolerance}")
    metrics = json.loads(evaluate_grid(config, "mlp_out", 1, progress=False, loaded=tiny_model).read_text())
    saved = sorted(config.paths.evaluation_dir("tiny", "tiny", "mlp_out", 1, "smoke").glob("**/sweep/*.json"))
    assert saved and metrics["rows"]
    for path in saved:
        record = json.loads(path.read_text())["precision"]
        assert record["dtype"] == dtype and record["stage"] == "evaluate"
        assert set(record["gate"]) == {"passed", "ce_clean_nats", "ce_spliced_nats"}  # the zero-ablation: float32 always
        head = {"float32_positions": config.precision.evaluate_float32_positions} if dtype == "bfloat16" else {}
        assert record["passes"] == {"prefix": "float32", "zero_ablation": "float32", "clean": dtype, "spliced": dtype} | head
        assert record["gate"]["passed"] == (dtype == "bfloat16")
    assert all(p.dtype == torch.float32 for p in tiny_model.model.parameters())  # the weights are back


def test_the_zero_ablation_is_float32_whatever_the_evaluation_precision(smoke_trained, tiny_model, tmp_path):
    """Forced bf16: the zero-ablated CE (shared by every SAE of a grid) is exactly float32's, while the
    clean and spliced CE, run in bf16, are close to float32's but not equal."""
    import numpy as np
    import pytest
    from conftest import TRAINED, copy_data

    from gatedsae.evaluation.evaluate import CheckpointSAE, evaluate_each
    from gatedsae.plan.grid import read_grid_index

    results = {}
    for dtype in ("float32", "bfloat16"):
        config = copy_data(smoke_trained, tmp_path / dtype, TRAINED, f"precision.evaluate={dtype}")
        grid = read_grid_index(config.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, "smoke") / "grid.json")
        saes = [CheckpointSAE.load(entry["path"]) for entry in grid][:2]
        results[dtype] = list(evaluate_each(config, "resid_post", 1, saes, loaded=tiny_model))
    for fp32, bf16 in zip(results["float32"], results["bfloat16"]):
        assert bf16.precision["dtype"] == "bfloat16" and bf16.precision["passes"]["zero_ablation"] == "float32"
        assert bf16.samples["ce_zero"] == fp32.samples["ce_zero"]
        for name in ("ce_clean", "ce_sae"):
            assert bf16.samples[name] != fp32.samples[name]
            np.testing.assert_allclose(bf16.samples[name], fp32.samples[name], rtol=0.05)
        assert bf16.row["ce_zero"] == fp32.row["ce_zero"]
        assert bf16.row["loss_recovered"] == pytest.approx(fp32.row["loss_recovered"], abs=0.1)


@pytest.mark.parametrize("flags, capability", [({"avx2", "avx512f", "avx512_bf16"}, "AVX512"), ({"avx2"}, "AVX2")])
def test_training_resolves_auto_from_what_the_cpu_reports(cpu_reporting, smoke_cache, tmp_path, flags, capability):
    from dataclasses import replace

    from gatedsae.activations.store import ActivationStore
    from gatedsae.training.trainer import GridTrainer

    cpu_reporting(flags, capability)
    native = "avx512_bf16" in flags
    for setting, bf16 in (("auto", native), ("float32", False), ("bfloat16", True)):
        config = replace(smoke_cache, precision=replace(smoke_cache.precision, train=setting))
        store = ActivationStore(config.paths.activations_dir("tiny", "tiny", "resid_post", 1), "train")
        trainer = GridTrainer(config, store, tmp_path / setting)
        assert trainer.precision.bf16 == bf16 and trainer.precision.setting == setting, setting
        assert all(module.encoder_bf16 == bf16 for module in trainer.modules)


def test_training_in_bf16_reaches_the_fvu_and_l0_of_float32_training(smoke_cache):
    """The smoke grid (Gated, baseline, untied; two seeds) trained in float32 and with the encoder's product
    in bf16, same seeds and batches: every SAE's held-out FVU and L0 within precision.train_check's
    tolerances (conf/precision/), and bf16 really trained differently."""
    from gatedsae.activations.store import ActivationStore
    from gatedsae.training.precision_check import compare_training_precisions

    directory = smoke_cache.paths.activations_dir("tiny", "tiny", "resid_post", 1)
    report = compare_training_precisions(smoke_cache, ActivationStore(directory, "train"),
                                         ActivationStore(directory, "heldout"), heldout_tokens=200)
    tolerances = smoke_cache.precision.train_check
    assert report["worst"]["fvu_rel"]["tolerance"] == tolerances.fvu_rel == 0.02
    assert report["passed"], report["worst"]
    for sae in report["saes"].values():
        assert sae["fvu_rel"] <= tolerances.fvu_rel and sae["l0_rel"] <= tolerances.l0_rel
    assert any(sae["fvu_float32"] != sae["fvu_bfloat16"] for sae in report["saes"].values()), "bf16 must change the run"


def test_activation_difference_separates_a_few_large_rows_from_a_spread_difference():
    """The pooled difference weighs rows by their norm, the row quantiles do not; rows above the outlier
    ratio × the median norm count only in `rel_error_all_rows`."""
    import torch

    from gatedsae.activations.cache import activation_difference

    reference = torch.ones(100, 4)                       # every row of norm 2 ...
    reference[0] *= 30                                   # ... but one, large, under the outlier ratio of 50
    reference[1] *= 1000                                 # and a massive one, over it
    other = reference.clone()
    other[0] *= 1.01                                     # a 1% difference in the large row only
    other[1] *= 1.5
    measured = activation_difference(reference, other, outlier_norm_ratio=50.0)
    kept = torch.cat([reference[:1], reference[2:]])
    assert measured["rel_error"] == pytest.approx(0.01 * 60 / float(kept.norm()), rel=1e-5)
    assert measured["rel_error"] > 0.005                 # the one large row dominates the pooled figure
    assert measured["row_rel_error_p50"] == 0 and measured["row_rel_error_max"] == pytest.approx(0.01, rel=1e-4)
    assert measured["rel_error_all_rows"] > 0.4          # the massive row's 50% counts only here
    assert activation_difference(reference, reference, 50.0)["rel_error"] == 0


def test_training_on_a_bf16_cache_changes_the_saes_less_than_another_seed(smoke_cache, tiny_model, tmp_path):
    """The smoke grid trained on the float32 cache, on a cache from a bf16 forward of the same windows, and
    on the float32 cache with other seeds, all read on the float32 cache's held-out rows: the bf16 cache
    changes FVU and L0 (median over the SAEs) no more than the seeds do (precision.cache_check), and it
    really changes them."""
    from dataclasses import replace

    from conftest import copy_token_data

    from gatedsae.activations.cache import activation_difference, cache_activations
    from gatedsae.activations.store import ActivationStore
    from gatedsae.training.precision_check import cache_check_verdict, compare_cache_precisions

    bf16_config = copy_token_data(smoke_cache, tmp_path / "bf16")
    cache_activations(replace(bf16_config, precision=replace(bf16_config.precision, cache="bfloat16")), loaded=tiny_model)
    key = ("resid_post", 1)
    trains = {"float32": ActivationStore(smoke_cache.activation_dirs()[key], "train"),
              "bfloat16": ActivationStore(bf16_config.activation_dirs()[key], "train")}
    apart = activation_difference(trains["float32"].shard(0), trains["bfloat16"].shard(0), 50.0)
    assert 0 < apart["rel_error"] < 0.05, apart
    report = compare_cache_precisions(smoke_cache, trains, ActivationStore(smoke_cache.activation_dirs()[key], "heldout"),
                                      heldout_tokens=200)
    assert report["other_seeds"] == [s + len(smoke_cache.train.seed_values) for s in smoke_cache.train.seed_values]
    verdict = cache_check_verdict(list(report["saes"].values()), smoke_cache.precision.cache_check.seed_ratio)
    assert verdict["passed"], verdict
    assert all(sae["fvu_float32"] != sae["fvu_float32_other_seeds"] for sae in report["saes"].values())
    assert any(sae["fvu_float32"] != sae["fvu_bfloat16"] for sae in report["saes"].values()), "the caches must differ"


def test_the_cache_check_compares_the_median_change_with_a_seeds():
    from gatedsae.training.precision_check import cache_check_verdict

    def sae(cache_fvu, seed_fvu, cache_l0=0.0, seed_l0=0.1):
        return {"cache": {"fvu": cache_fvu, "l0": cache_l0}, "seed": {"fvu": seed_fvu, "l0": seed_l0}}

    # one run far off by chance does not move the medians
    passed = cache_check_verdict([sae(0.01, 0.02), sae(0.5, 0.02), sae(0.0, 0.03)], seed_ratio=1.0)
    assert passed["passed"] and passed["fvu"]["median_change_by_cache"] == 0.01 and passed["saes"] == 3
    failed = cache_check_verdict([sae(0.05, 0.02), sae(0.04, 0.02), sae(0.0, 0.03)], seed_ratio=1.0)
    assert not failed["passed"] and not failed["fvu"]["passed"] and failed["l0"]["passed"]
    assert cache_check_verdict([sae(0.05, 0.02), sae(0.04, 0.02), sae(0.0, 0.03)], seed_ratio=2.0)["passed"]


def test_a_bf16_cache_computes_its_first_positions_again_in_float32(tiny_model, smoke_tokens):
    """Under bf16 the first `float32_positions` positions after BOS are the float32 forward's (a causal
    prefix does not depend on what follows), every later position the bf16 forward's; the float32
    matrices are back in place for that prefix and bf16 again after it."""
    import numpy as np
    import torch

    from gatedsae.activations.cache import forward_at_sites
    from gatedsae.core.precision import choose
    from gatedsae.data.lm_precision import matmul_parameters, matmul_weights

    model = tiny_model.model
    keys = [("resid_post", 1), ("attn_z", 1)]
    tokens = torch.from_numpy(np.random.default_rng(0).integers(1, 100, (3, 12), dtype=np.int64))
    float32, bfloat16 = choose("cache", "float32"), choose("cache", "bfloat16")

    def forward(precision, positions=0):
        with matmul_weights(model, precision):
            rows = dict(forward_at_sites(model, tokens, keys, 2, precision, positions))
            assert all(p.dtype == precision.torch_dtype for _, p in matmul_parameters(model))
        return {key: value.reshape(3, 11, -1) for key, value in rows.items()}

    exact, rounded, mixed = forward(float32), forward(bfloat16), forward(bfloat16, 4)
    for key in keys:
        torch.testing.assert_close(mixed[key][:, :4], exact[key][:, :4], rtol=1e-5, atol=1e-6)
        assert torch.equal(mixed[key][:, 4:], rounded[key][:, 4:])
        assert not torch.allclose(rounded[key][:, :4], exact[key][:, :4], rtol=1e-5, atol=1e-6), "bf16 must differ"
    assert all(p.dtype == torch.float32 for _, p in matmul_parameters(model))


def test_the_cache_gate_sits_just_above_what_the_end_to_end_check_passed():
    """precision.gate.activation_rel_error is set from the cache's end-to-end check (conf/precision/ says
    why): the check on record passed, and the tolerance lies above the largest difference it trained on,
    by less than a quarter."""
    import json

    from gatedsae.plan.config import REPO_ROOT, load_config

    check = json.loads((REPO_ROOT / "results" / "benchmarks" / "cache_precision.json").read_text())
    largest = max(site["activations"]["rel_error"] for site in check["sites"].values())
    tolerance = load_config([]).precision.gate.activation_rel_error
    assert check["passed"] and check["verdict"]["passed"]
    assert check["cache_float32_positions"] == load_config([]).precision.cache_float32_positions
    assert largest <= tolerance <= 1.25 * largest, (largest, tolerance)


def test_a_shard_takes_its_float32_prefix_from_one_forward_and_matches_the_per_batch_one(tiny_model, smoke_tokens):
    """shard_activations computes the float32 prefix of every window of a shard in one forward; the rows
    are those of forwarding each batch with its own prefix (to float32 rounding of the batch shapes)."""
    from dataclasses import replace

    import torch

    from gatedsae.activations.cache import forward_at_sites, shard_activations, token_windows
    from gatedsae.core.precision import choose
    from gatedsae.data.lm_precision import matmul_weights

    config = replace(smoke_tokens, cache=replace(smoke_tokens.cache, batch_sequences=2))
    _, windows, _ = token_windows(config)
    keys = [("resid_post", 1), ("attn_z", 1)]
    bf16 = choose("cache", "bfloat16")
    shard = shard_activations(tiny_model.model, windows["train"], 0, config, keys, bf16)
    per_batch = {key: [] for key in keys}
    tokens = torch.from_numpy(windows["train"][: config.cache.shard_sequences].astype("int64"))
    with matmul_weights(tiny_model.model, bf16):
        for start in range(0, len(tokens), 2):
            for key, rows in forward_at_sites(tiny_model.model, tokens[start : start + 2], keys, 2, bf16,
                                              config.precision.cache_float32_positions):
                per_batch[key].append(rows)
    for key in keys:
        torch.testing.assert_close(shard[key], torch.cat(per_batch[key]), rtol=1e-5, atol=1e-5)
