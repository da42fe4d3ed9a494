"""Evaluation: the metrics against hand-computed values, splicing, batching, BOS handling, reuse of
saved results, and recomputing a checkpoint's row by the documented command."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TRAINED, copy_data

from gatedsae.activations.store import ActivationStore
from gatedsae.data.corpus import load_windows
from gatedsae.evaluation.evaluate import (
    CheckpointSAE,
    evaluate_checkpoint,
    evaluate_each,
    evaluate_grid,
    evaluate_saes,
    split_windows,
)
from gatedsae.evaluation.reconstruction import ReconstructionStats
from gatedsae.evaluation.spliced import SplicedLM, next_token_losses
from gatedsae.saes.checkpoints import CFG_FILE, RECORD_FILE, WEIGHTS_FILE

SITES = ("resid_post", "mlp_out", "attn_z")


def handmade_sae(directory: Path, W_enc: torch.Tensor, W_dec: torch.Tensor, site: str, layer: int) -> CheckpointSAE:
    """A 'standard' (ReLU) SAE with the given weights, written as a checkpoint directory."""
    from safetensors.torch import save_file

    d, width = W_enc.shape
    directory.mkdir(parents=True)
    save_file({"W_enc": W_enc.contiguous(), "b_enc": torch.zeros(width), "W_dec": W_dec.contiguous(),
               "b_dec": torch.zeros(d)}, directory / WEIGHTS_FILE)
    (directory / CFG_FILE).write_text(json.dumps({"architecture": "standard", "d_in": d, "d_sae": width}))
    (directory / RECORD_FILE).write_text(json.dumps({"arch": "handmade", "l1": 0.0, "lr": 0.0, "width": width, "d": d,
                                                     "tokens": 0, "sae": directory.name, "site": site,
                                                     "layer": layer}))
    return CheckpointSAE.load(directory)


def identity_sae(directory: Path, d: int, site: str, layer: int) -> CheckpointSAE:
    """relu(x) − relu(−x) = x: an exact identity as a ReLU SAE of width 2d."""
    eye = torch.eye(d)
    return handmade_sae(directory, torch.cat([eye, -eye], 1), torch.cat([eye, -eye], 0), site, layer)


def zero_sae(directory: Path, d: int, site: str, layer: int) -> CheckpointSAE:
    return handmade_sae(directory, torch.eye(d), torch.zeros(d, d), site, layer)


# --- γ and the reconstruction sums ---------------------------------------------------------------------


def test_gamma_is_the_numerical_argmin_of_the_rescaled_error():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=generator)
    x_hat = 0.7 * x + 0.3 * torch.randn(2000, 16, generator=generator)
    stats = ReconstructionStats(width=4, d=16)
    for rows in range(0, 2000, 300):  # in uneven batches
        stats.update(x[rows:rows + 300], torch.ones(min(300, 2000 - rows), 4), x_hat[rows:rows + 300])
    gamma = stats.result()["gamma"]

    candidates = np.linspace(0.3, 2.0, 20001)
    errors = [float(((x_hat / g - x) ** 2).sum(-1).mean()) for g in candidates[::100]]
    coarse = candidates[::100][int(np.argmin(errors))]
    fine = np.linspace(coarse - 0.01, coarse + 0.01, 2001)
    best = fine[int(np.argmin([float(((x_hat / g - x) ** 2).sum(-1).mean()) for g in fine]))]
    assert gamma == pytest.approx(best, abs=2e-5)
    assert gamma < 1  # shrunk reconstructions


def test_fvu_nmse_l0_alive_by_hand():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])
    features = torch.tensor([[1.0, 0.0, 0.0], [2.0, 3.0, 0.0]])
    stats = ReconstructionStats(width=3, d=2)
    stats.update(x, features, x_hat)
    result = stats.result()
    assert result["l0"] == 1.5
    assert result["nmse"] == pytest.approx(1 / 14)
    assert result["fvu"] == pytest.approx(1 / 4)  # mean (2, 1): Σ||x − mean||² = 2 + 2
    assert result["alive_fraction"] == pytest.approx(2 / 3)
    assert result["density_histogram"]["dead"] == 1
    assert sum(result["density_histogram"]["counts"]) == 2


# --- splicing on the tiny model ----------------------------------------------------------------------


@pytest.mark.parametrize("site", SITES)
def test_splicing_the_clean_activation_back_changes_nothing(smoke_tokens, tiny_model, site):
    windows = torch.from_numpy(np.asarray(load_windows(smoke_tokens.paths.tokens_dir("tiny", "tiny"), "heldout")[:4],
                                          dtype=np.int64))
    spliced = SplicedLM(tiny_model.model, site, layer=1)
    prefix = spliced.prefix(windows)
    clean = spliced.token_losses(prefix, None)
    assert torch.allclose(spliced.token_losses(prefix, prefix.activation.clone()), clean, atol=1e-6)
    full = next_token_losses(tiny_model.model(windows), windows)
    assert torch.allclose(clean, full, atol=1e-5), "the prefix + remainder must equal one full forward"
    zeroed = spliced.token_losses(prefix, torch.zeros_like(prefix.activation))
    assert not torch.allclose(zeroed, clean, atol=1e-3), "zero-ablation must change the loss"


def llama_like_model():
    """A random model of SmolLM2's kind (RMSNorm, rotary, grouped-query attention, gated SiLU MLP), every
    parameter perturbed so that no bias or norm weight is trivial."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=3, d_model=32, n_heads=4, d_head=8, n_key_value_heads=2, d_mlp=64,
                                  d_vocab=258, n_ctx=64, act_fn="silu", normalization_type="RMS",
                                  positional_embedding_type="rotary", rotary_dim=8, gated_mlp=True, final_rms=True,
                                  seed=0)
    model = HookedTransformer(cfg).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn(parameter.shape, generator=generator))
    return model


@pytest.mark.parametrize("kind", ["tiny", "llama_like"])
@pytest.mark.parametrize("site", SITES)
def test_lean_blocks_give_transformer_lens_ce(tiny_model, kind, site):
    """The per-SAE remainder by LeanBlocks equals TransformerLens' own blocks to float32 rounding: clean,
    spliced (some positions kept clean) and zero-ablated."""
    from gatedsae.evaluation.spliced import kept_positions

    model = tiny_model.model if kind == "tiny" else llama_like_model()
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 258, (3, 24), generator=generator)
    lean, plain = SplicedLM(model, site, 1), SplicedLM(model, site, 1, lean=False)
    assert lean.lean is not None and plain.lean is None
    prefix, lean_prefix = plain.prefix(tokens), lean.prefix(tokens)
    assert torch.equal(lean_prefix.activation, prefix.activation)
    noisy = prefix.activation + 0.5 * prefix.activation.std() * torch.randn(prefix.activation.shape, generator=generator)
    kept = kept_positions(prefix.activation, None)
    kept[:, 7] = True
    clean = plain.token_losses(prefix, None)
    for replacement in (None, noisy, torch.zeros_like(noisy)):
        expected = plain.token_losses(prefix, replacement, kept)
        assert replacement is None or (expected - clean).abs().max() > 1e-3  # the splice matters
        torch.testing.assert_close(lean.token_losses(lean_prefix, replacement, kept), expected, atol=1e-5, rtol=0)


def test_lean_blocks_leave_unknown_models_to_transformer_lens(tiny_model):
    from transformer_lens import HookedTransformer

    cfg = tiny_model.model.cfg.to_dict() | {"parallel_attn_mlp": True}
    cfg.pop("n_params", None)
    assert SplicedLM(HookedTransformer(cfg), "resid_post", 1).lean is None


def test_prefix_activations_are_the_cached_heldout_rows_without_bos(smoke_cache, tiny_model):
    """The evaluation sees exactly what the store holds: the same tokens, BOS left out in both."""
    for site in SITES:
        store = ActivationStore(smoke_cache.paths.activations_dir("tiny", "tiny", site, 1), "heldout")
        windows = np.asarray(load_windows(smoke_cache.paths.tokens_dir("tiny", "tiny"), "heldout")[:2], dtype=np.int64)
        prefix = SplicedLM(tiny_model.model, site, 1).prefix(torch.from_numpy(windows))
        expected = prefix.activation[:, 1:].reshape(-1, store.d)
        stored = store.rows(0, dtype=torch.float32)[: len(expected)]
        assert torch.allclose(stored, expected, atol=1e-5), site


# --- whole-grid evaluation -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_smoke(smoke_trained, tmp_path_factory):
    """A copy of the session's trained (and rescale-shifted) smoke grids: evaluation writes in it."""
    return copy_data(smoke_trained, tmp_path_factory.mktemp("evaluated"), TRAINED)


@pytest.mark.parametrize("site", SITES)
def test_identity_sae_recovers_all_loss_and_zero_sae_none(trained_smoke, tiny_model, tmp_path, site):
    d = trained_smoke.model.site_width(site)
    saes = [identity_sae(tmp_path / "identity", d, site, 1), zero_sae(tmp_path / "zero", d, site, 1)]
    identity, zero = evaluate_saes(trained_smoke, site, 1, saes, loaded=tiny_model)
    assert identity["delta_lm_loss"] == pytest.approx(0.0, abs=1e-6)
    assert identity["loss_recovered"] == pytest.approx(1.0, abs=1e-5)
    assert identity["fvu"] == pytest.approx(0.0, abs=1e-10) and identity["gamma"] == pytest.approx(1.0)
    assert zero["loss_recovered"] == pytest.approx(0.0, abs=1e-6)
    assert zero["ce_sae"] == pytest.approx(zero["ce_zero"])
    assert zero["nmse"] == pytest.approx(1.0)


def test_metrics_do_not_depend_on_batch_sizes(trained_smoke, tiny_model):
    from gatedsae.plan.grid import read_grid_index

    grid = read_grid_index(trained_smoke.paths.checkpoints_dir("tiny", "tiny", "mlp_out", 1, "smoke") / "grid.json")
    saes = [CheckpointSAE.load(entry["path"]) for entry in grid]
    results = []
    for batch_rows, batch_windows in ((7, 1), (1000, 3), (64, 8)):
        config = replace(trained_smoke, evaluate=replace(trained_smoke.evaluate, batch_rows=batch_rows,
                                                         batch_windows=batch_windows))
        results.append(evaluate_saes(config, "mlp_out", 1, saes, loaded=tiny_model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            for key in ("l0", "fvu", "nmse", "gamma", "alive_fraction", "ce_clean", "ce_zero", "ce_sae",
                        "loss_recovered"):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key


def test_grid_evaluation_reuses_saved_results_and_recomputes_only_what_changed(trained_smoke, tiny_model, capsys):
    path = evaluate_grid(trained_smoke, "resid_post", 1, progress=False, loaded=tiny_model)
    rows = json.loads(path.read_text())["rows"]
    grid = json.loads(trained_smoke.paths.checkpoints_dir("tiny", "tiny", "resid_post", 1, "smoke")
                      .joinpath("grid.json").read_text())
    seeds = trained_smoke.train.seeds
    # every SAE (the two rescale-and-shift ones too, every seed) once per held-out split
    assert len(rows) == 2 * (len(grid["saes"]) + 2 * seeds)
    assert {row["variant"] for row in rows} == {"sweep", "rescale_shift"}
    assert sorted({row["seed"] for row in rows}) == trained_smoke.train.seed_values  # each row says its seed
    by_split = {split: [row for row in rows if row["split"] == split] for split in ("validation", "test")}
    assert len(by_split["validation"]) == len(by_split["test"]) == len(rows) // 2
    # disjoint windows: the clean CE and the window counts are the split's own
    assert by_split["validation"][0]["ce_clean"] != by_split["test"][0]["ce_clean"]
    assert {r["ce_windows"] for r in by_split["validation"]} != {r["ce_windows"] for r in by_split["test"]}
    capsys.readouterr()

    evaluate_grid(trained_smoke, "resid_post", 1, progress=False, loaded=tiny_model)
    assert "evaluating" not in capsys.readouterr().out, "nothing changed: nothing is recomputed"

    saved = path.parent / "validation" / "sweep" / f"{grid['saes'][0]['sae']}.json"
    saved.unlink()
    evaluate_grid(trained_smoke, "resid_post", 1, progress=False, loaded=tiny_model)
    assert f"evaluating 1 of {len(rows)} SAEs" in capsys.readouterr().out
    assert json.loads(path.read_text())["rows"] == rows


def test_a_checkpoint_row_is_recomputed_by_the_documented_command(trained_smoke, tiny_model):
    rows = json.loads(evaluate_grid(trained_smoke, "attn_z", 1, progress=False, loaded=tiny_model).read_text())["rows"]
    row = rows[-1]
    assert row["split"] == "test"
    again = evaluate_checkpoint(trained_smoke, row["checkpoint"], progress=False, split=row["split"])
    for key in ("l0", "fvu", "gamma", "alive_fraction", "ce_sae", "loss_recovered", "delta_lm_loss", "checkpoint_id"):
        assert again[key] == pytest.approx(row[key], rel=1e-6) if isinstance(row[key], float) else again[key] == row[key]


def test_evaluating_an_untrained_grid_names_the_missing_step(smoke_cache):
    with pytest.raises(FileNotFoundError, match="train the grid first"):
        evaluate_grid(smoke_cache, "resid_post", 1, progress=False)


# --- per-window CE, per-SAE progress, massive activations, the metrics code in the identity -------------


def _grid_saes(config, site: str) -> list[CheckpointSAE]:
    from gatedsae.plan.grid import read_grid_index

    grid = read_grid_index(config.paths.checkpoints_dir("tiny", "tiny", site, 1, "smoke") / "grid.json")
    return [CheckpointSAE.load(entry["path"]) for entry in grid]


def test_per_window_ce_reproduces_the_means_over_every_prediction(trained_smoke, tiny_model):
    """The per-window samples average to the row's CE, which is the old definition: the mean over all
    windows × (context − 2) predictions of one forward over every window."""
    saes = _grid_saes(trained_smoke, "mlp_out")[:2]
    windows = load_windows(trained_smoke.paths.tokens_dir("tiny", "tiny"), "heldout")[: trained_smoke.evaluate.ce_windows]
    tokens = torch.from_numpy(np.asarray(windows, dtype=np.int64))
    spliced = SplicedLM(tiny_model.model, "mlp_out", 1)
    prefix = spliced.prefix(tokens)
    clean = spliced.token_losses(prefix, None).double()
    for result in evaluate_each(trained_smoke, "mlp_out", 1, saes, loaded=tiny_model):
        samples, row = result.samples, result.row
        direct = spliced.token_losses(prefix, result.sae.reconstruct(prefix.activation)).double()
        assert len(samples["ce_sae"]) == len(windows) == row["ce_windows"]
        assert row["ce_tokens"] == len(windows) * (trained_smoke.experiment.context_length - 2) == direct.numel()
        np.testing.assert_allclose(samples["ce_sae"], direct.mean(1).numpy(), rtol=1e-5)
        np.testing.assert_allclose(samples["ce_clean"], clean.mean(1).numpy(), rtol=1e-5)
        assert row["ce_sae"] == pytest.approx(float(direct.sum() / direct.numel()), rel=1e-5)
        assert row["ce_clean"] == pytest.approx(float(clean.sum() / clean.numel()), rel=1e-5)
        assert np.mean(samples["ce_zero"]) == pytest.approx(row["ce_zero"])
        store = samples["store"]
        assert sum(store["l0"]) / sum(store["rows"]) == pytest.approx(row["l0"])
        assert sum(store["x_hat_sq"]) / sum(store["x_hat_dot_x"]) == pytest.approx(row["gamma"])
        assert sum(store["rows"]) == row["eval_tokens"]


def with_threshold(sae: CheckpointSAE, directory: Path, threshold) -> CheckpointSAE:
    """A copy of `sae` whose training record carries a massive-activation threshold."""
    from gatedsae.core.sealed import write_sealed_json
    from gatedsae.saes.checkpoints import RECORD_FILE

    shutil.copytree(sae.directory, directory)
    record = json.loads((directory / RECORD_FILE).read_text())
    write_sealed_json(directory / RECORD_FILE, {**record, "massive_norm_threshold": threshold})  # sealed anew
    return CheckpointSAE.load(directory)


def test_massive_positions_are_treated_like_bos(trained_smoke, tiny_model, tmp_path):
    from gatedsae.evaluation.spliced import kept_positions

    site = "resid_post"
    store = ActivationStore(trained_smoke.paths.activations_dir("tiny", "tiny", site, 1), "heldout")
    rows = torch.cat(list(store.tokens())).float()
    norms = rows.norm(dim=-1)
    tau = float(norms.quantile(0.9))  # a tenth of the held-out rows count as massive
    saes = {sae.record["arch"]: sae for sae in _grid_saes(trained_smoke, site)}
    plain = with_threshold(saes["gated"], tmp_path / "gated_plain", None)  # no threshold: every row counts
    thresholded = with_threshold(plain, tmp_path / "gated_tau", tau)
    above_all = with_threshold(plain, tmp_path / "gated_high", float(norms.max()) + 1)
    blocked = with_threshold(saes["baseline"], tmp_path / "baseline_everything", 0.0)  # every position massive
    results = list(evaluate_each(trained_smoke, site, 1, [plain, thresholded, above_all, blocked], loaded=tiny_model))
    plain_r, tau_r, high_r, blocked_r = results

    # store metrics leave the massive rows out, exactly as if they were not there
    kept = rows[norms <= tau]
    by_hand = ReconstructionStats(plain.width, store.d)
    features = plain.encode(kept)
    by_hand.update(kept, features, plain.decode(features))
    expected = by_hand.result()
    assert tau_r.row["massive_rows"] == int((norms > tau).sum()) > 0
    assert tau_r.row["eval_tokens"] == len(kept)
    for metric in ("l0", "fvu", "nmse", "gamma"):
        assert tau_r.row[metric] == pytest.approx(expected[metric], rel=1e-6), metric
    assert plain_r.row["massive_rows"] == 0 and set(plain_r.samples) == {"ce_clean", "ce_zero", "ce_sae", "store"}

    # the splice: only windows holding a massive position differ from the SAE evaluated on every token
    windows = load_windows(trained_smoke.paths.tokens_dir("tiny", "tiny"), "heldout")[: trained_smoke.evaluate.ce_windows]
    prefix = SplicedLM(tiny_model.model, site, 1).prefix(torch.from_numpy(np.asarray(windows, dtype=np.int64)))
    massive = kept_positions(prefix.activation, tau)[:, 1:].any(1).numpy()
    assert tau_r.row["massive_windows"] == int(massive.sum()) > 0
    kept_ce, every_ce = np.array(tau_r.samples["ce_sae"]), np.array(plain_r.samples["ce_sae"])
    np.testing.assert_allclose(kept_ce[~massive], every_ce[~massive], rtol=1e-6)
    assert not np.allclose(kept_ce[massive], every_ce[massive], rtol=1e-6)
    # every position massive: the site keeps its clean activation everywhere, as at BOS
    np.testing.assert_allclose(blocked_r.samples["ce_sae"], blocked_r.samples["ce_clean"], rtol=1e-6)
    np.testing.assert_allclose(blocked_r.samples["ce_zero"], blocked_r.samples["ce_clean"], rtol=1e-6)

    # a threshold above every norm changes nothing
    for metric in ("l0", "gamma", "ce_sae", "loss_recovered"):
        assert high_r.row[metric] == pytest.approx(plain_r.row[metric], rel=1e-6)
    assert high_r.row["massive_rows"] == 0 and high_r.row["massive_windows"] == 0


def test_a_killed_evaluation_keeps_every_sae_it_finished(trained_smoke, tiny_model, capsys, monkeypatch):
    site = "mlp_out"
    out_dir = trained_smoke.paths.evaluation_dir("tiny", "tiny", site, 1, "smoke")
    shutil.rmtree(out_dir, ignore_errors=True)
    finished, original = [], CheckpointSAE.reconstruct

    def killed_at_the_second_sae(self, activation):
        if self.directory not in finished:
            finished.append(self.directory)
        if len(finished) > 1:
            raise KeyboardInterrupt
        return original(self, activation)

    monkeypatch.setattr(CheckpointSAE, "reconstruct", killed_at_the_second_sae)
    with pytest.raises(KeyboardInterrupt):
        evaluate_grid(trained_smoke, site, 1, progress=False, loaded=tiny_model)
    saved = list(out_dir.glob("**/*.json"))  # <split>/<variant>/<sae>.json
    assert len(saved) == 1 and "samples" in json.loads(saved[0].read_text())
    monkeypatch.undo()
    capsys.readouterr()
    rows = json.loads(evaluate_grid(trained_smoke, site, 1, progress=False, loaded=tiny_model).read_text())["rows"]
    assert f"evaluating {len(rows) - 1} of {len(rows)} SAEs" in capsys.readouterr().out


def test_a_change_to_the_metrics_code_re_evaluates_every_sae(trained_smoke, tiny_model, capsys, monkeypatch):
    import gatedsae.evaluation.evaluate

    rows = json.loads(evaluate_grid(trained_smoke, "attn_z", 1, progress=False, loaded=tiny_model).read_text())["rows"]
    capsys.readouterr()
    monkeypatch.setattr(gatedsae.evaluation.evaluate, "metrics_code_version", lambda: "a fixed metric")
    evaluate_grid(trained_smoke, "attn_z", 1, progress=False, loaded=tiny_model)
    assert f"evaluating {len(rows)} of {len(rows)} SAEs" in capsys.readouterr().out


def test_the_code_fingerprint_follows_the_code_not_its_comments(tmp_path):
    from gatedsae.core.codehash import METRICS_CODE, code_fingerprint

    module = tmp_path / "m.py"

    def fingerprint(source: str, functions=None) -> str:
        module.write_text(source)
        return code_fingerprint({"m.py": functions}, tmp_path)

    base = fingerprint('"""Doc."""\ndef f(x):\n    """Doc."""\n    return x + 1\n\ndef g():\n    return 0\n')
    assert fingerprint('"""Other doc."""\n\ndef f(x):  # why\n    """More."""\n    return x + 1\n\ndef g():\n    return 0\n') == base
    assert fingerprint('"""Doc."""\ndef f(x):\n    return x + 2\n\ndef g():\n    return 0\n') != base
    only_f = fingerprint('def f(x):\n    return x + 1\n\ndef g():\n    return 0\n', ("f",))
    assert fingerprint('def f(x):\n    return x + 1\n\ndef g():\n    return 1\n', ("f",)) == only_f
    with pytest.raises(ValueError, match="no longer defines"):
        fingerprint('def g():\n    return 0\n', ("f",))
    assert len(code_fingerprint(METRICS_CODE)) == 16  # every named module and function exists
    # A folder stands for every module in it: adding an architecture's module changes the fingerprint.
    (tmp_path / "archs").mkdir()
    (tmp_path / "archs" / "a.py").write_text("x = 1\n")
    folder = code_fingerprint({"archs/": None}, tmp_path)
    (tmp_path / "archs" / "b.py").write_text("y = 2\n")
    assert code_fingerprint({"archs/": None}, tmp_path) != folder


def test_the_code_fingerprint_parses_a_text_once_and_sees_every_rewrite(tmp_path, monkeypatch):
    """evaluate fingerprints once per SAE: each file's text is parsed once per process, yet a file rewritten
    in place (same size, same instant) is parsed again."""
    import gatedsae.core.codehash as codehash

    parsed, parse = [], codehash._parse
    monkeypatch.setattr(codehash, "_parse", lambda path, text, functions: parsed.append(text) or parse(path, text, functions))
    module = tmp_path / "m.py"
    module.write_text("x = 1\n")
    first = codehash.code_fingerprint({"m.py": None}, tmp_path)
    assert codehash.code_fingerprint({"m.py": None}, tmp_path) == first and parsed == ["x = 1\n"]
    module.write_text("x = 2\n")
    assert codehash.code_fingerprint({"m.py": None}, tmp_path) != first and parsed == ["x = 1\n", "x = 2\n"]


def test_development_tables_hold_validation_only_and_the_verdict_reads_test(trained_smoke, tiny_model, tmp_path):
    """The aggregate stage writes development's tables (every later stage reads them) from the validation
    rows alone, the test split's readings in results/<experiment>/test/; the verdict judges those."""
    import pandas as pd

    from gatedsae.cli.main import STAGES
    from gatedsae.plan.layout import AGGREGATE_OUTPUTS, SPLIT_OUTPUTS, split_results

    config = replace(trained_smoke, experiment=replace(trained_smoke.experiment, results_dir=str(tmp_path / "results")))
    for site in SITES:
        evaluate_grid(config, site, 1, progress=False, loaded=tiny_model)
    STAGES["aggregate"].run(config)
    results, test = config.experiment.results, split_results(config, "test")
    assert test == results / "test" and split_results(config, "validation") == results
    for name in ("metrics", "headline", "levels", "comparisons", "pareto", "ratio_curve"):
        frame = pd.read_csv(results / AGGREGATE_OUTPUTS[name])
        assert "split" not in frame or set(frame["split"].dropna()) <= {"validation"}, name
    assert set(pd.read_csv(results / "metrics.csv")["split"]) == {"validation"}
    assert sorted(p.name for p in test.iterdir()) == sorted(AGGREGATE_OUTPUTS[key] for key in SPLIT_OUTPUTS)
    for key in SPLIT_OUTPUTS:
        assert set(pd.read_csv(test / AGGREGATE_OUTPUTS[key])["split"]) == {"test"}, key
    STAGES["verdict"].run(config)
    verdict = json.loads((results / "verdict.json").read_text())
    assert verdict["split"] == "test" and {claim["split"] for claim in verdict["claims"]} == {"test"}


def test_the_validation_split_may_be_read_on_fewer_ce_windows(smoke_cache):
    """evaluate.validation_ce_windows: development's split on its own first windows, the test split (the
    verdict's) on ce_windows; unset, both on ce_windows. The estimates count each split's windows."""
    from gatedsae.plan.estimates import evaluate_estimate

    coarse = replace(smoke_cache, evaluate=replace(smoke_cache.evaluate, ce_windows=4, validation_ce_windows=2))
    same = replace(coarse, evaluate=replace(coarse.evaluate, validation_ce_windows=None))
    validation, test = split_windows(coarse, "validation")[0], split_windows(coarse, "test")[0]
    assert len(validation) == 2 and len(test) == 4
    np.testing.assert_array_equal(split_windows(same, "validation")[0][:2], validation)
    np.testing.assert_array_equal(split_windows(same, "test")[0], test)
    site = "resid_post"
    assert evaluate_estimate(coarse, site).flops == pytest.approx(evaluate_estimate(same, site).flops * (2 + 4) / (4 + 4))


def test_a_site_may_have_its_own_test_windows(smoke_cache):
    """evaluate.site_ce_windows: that site's test split reads its own number of windows (the first ones of
    the same split), every other site keeps ce_windows, and the evaluation identity at another site is the
    one it had without the override (adding a site's windows re-evaluates only that site's SAEs)."""
    from gatedsae.plan.config import ConfigError
    from gatedsae.plan.identity import evaluation_identity

    base = replace(smoke_cache, evaluate=replace(smoke_cache.evaluate, ce_windows=2, validation_ce_windows=None))
    own = replace(base, evaluate=replace(base.evaluate, site_ce_windows={"mlp_out": 4}))
    assert len(split_windows(own, "test", "mlp_out")[0]) == 4
    np.testing.assert_array_equal(split_windows(own, "test", "mlp_out")[0][:2], split_windows(own, "test", "resid_post")[0])
    assert len(split_windows(own, "validation", "mlp_out")[0]) == 4  # validation_ce_windows null: as the test split
    coarse = replace(own, evaluate=replace(own.evaluate, validation_ce_windows=1))
    assert len(split_windows(coarse, "validation", "mlp_out")[0]) == 1 and len(split_windows(coarse, "test", "mlp_out")[0]) == 4
    same = evaluation_identity(base, "resid_post", "w", None, "store", metrics_code="c")
    assert evaluation_identity(own, "resid_post", "w", None, "store", metrics_code="c") == same
    assert evaluation_identity(own, "mlp_out", "w", None, "store", metrics_code="c") != \
        evaluation_identity(base, "mlp_out", "w", None, "store", metrics_code="c")
    with pytest.raises(ConfigError, match="site_ce_windows"):
        replace(base.evaluate, site_ce_windows={"mlp_out": 0}).validate()
    with pytest.raises(ConfigError, match="site_ce_windows"):
        replace(base.evaluate, site_ce_windows={"mlp": 8}).validate()
