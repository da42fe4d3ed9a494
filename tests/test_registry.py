"""What every registered architecture must satisfy, run over the registry (so a new architecture is
covered without editing this file): it builds from its record, its feature axes name real tensors, its
SAEs are independent slices, and its sae-lens export computes the same features on raw activations."""

from __future__ import annotations

import pytest
import torch

from gatedsae.plan.architectures import ARCHITECTURES, KNOBS, SAELENS_TENSORS, architecture, by_saelens, sae_class
from gatedsae.saes.base import load_slice_state, make_sae, slice_state

D, WIDTH, B = 8, 12, 64
KNOB_VALUES = {"l1": [0.05, 0.5], "l0_coefficient": [0.05, 0.5], "k": [3, 5]}  # two SAEs per module, different knobs

pytestmark = pytest.mark.usefixtures("one_thread")


def _x(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + 0.3


def _build(name: str, seeds=(11, 12)):
    values = KNOB_VALUES[architecture(name).knob][: len(seeds)]
    sae = make_sae(name, len(seeds), D, WIDTH, torch.tensor(values, dtype=torch.float32), seed=0, seeds=seeds).double()
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():  # away from the initialisation, where biases are zero and tensors coincide
        for _, tensor in sae.named_parameters():
            tensor.add_(0.05 * torch.randn(tensor.shape, generator=gen, dtype=tensor.dtype))
    sae.constrain_()  # back inside the architecture's constraints, as after every training step
    return sae


def test_records_are_consistent():
    assert set(KNOBS) == set(KNOB_VALUES)
    for name, record in ARCHITECTURES.items():
        assert record.name == name and record.saelens in SAELENS_TENSORS and record.train_flops_per_dw > 0
    labels = [r.label for r in ARCHITECTURES.values()]
    colours = [r.colour for r in ARCHITECTURES.values()]
    assert len(set(labels)) == len(labels) and len(set(colours)) == len(colours), "legends must tell them apart"
    for saelens in {r.saelens for r in ARCHITECTURES.values()}:
        assert by_saelens(saelens).saelens == saelens


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_builds_from_its_record_with_real_feature_axes(name):
    cls = sae_class(name)
    assert cls.arch == name
    sae = _build(name)
    tensors = {**dict(sae.named_parameters()), **dict(sae.named_buffers())}
    for tensor_name, axis in architecture(name).feature_axes.items():
        assert tensor_name in tensors, f"{name}: feature axis given for {tensor_name}, which it does not have"
        assert tensors[tensor_name].shape[axis] == WIDTH, f"{name}.{tensor_name}: axis {axis} is not the features"
    trainable = {k for k, p in sae.named_parameters() if p.requires_grad and p.dim() >= 2 and WIDTH in p.shape}
    if architecture(name).resamples:
        assert trainable <= set(architecture(name).feature_axes), f"{name}: resampling would miss {trainable}"


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_a_slice_equals_the_sae_alone(name):
    grid, alone = _build(name, seeds=(11, 12)), _build(name, seeds=(12,))
    load_slice_state(alone, 0, slice_state(grid, 1))
    x = _x()
    grid_terms, alone_terms = grid(x), alone(x)
    for field in ("total", "reconstruction", "sparsity", "auxiliary", "features", "x_hat"):
        torch.testing.assert_close(getattr(grid_terms, field)[1:2], getattr(alone_terms, field))


@pytest.mark.parametrize("name", list(ARCHITECTURES))
def test_sae_lens_export_computes_the_same_features_on_raw_activations(name):
    sae, scale = _build(name), 0.37  # trained on scale · x; the export works on x
    record = architecture(name)
    raw = _x(1) / scale
    with torch.no_grad():
        features = sae.encode(raw * scale)
        x_hat = sae.decode(features) / scale
    for i in range(sae.n):
        tensors = {k: v.double() for k, v in sae.saelens_tensors(i, scale).items()}  # exported in float32
        assert set(tensors) == set(SAELENS_TENSORS[record.saelens])
        sizes = {"d_in": D, "d_sae": WIDTH}
        for tensor_name, shape in SAELENS_TENSORS[record.saelens].items():
            assert tuple(tensors[tensor_name].shape) == tuple(sizes[s] for s in shape), tensor_name
        cfg = {"architecture": record.saelens, **sae.saelens_cfg_extra(i)}
        assert set(cfg) - {"architecture"} == set(record.saelens_cfg_fields)
        exported = sae_class(by_saelens(record.saelens).name).encode_saelens(cfg, tensors, raw)
        torch.testing.assert_close(exported, features[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(exported @ tensors["W_dec"] + tensors["b_dec"], x_hat[i], rtol=1e-5, atol=1e-5)


def test_every_role_names_what_it_is_measured_against():
    from gatedsae.plan.architectures import BASELINE, PROPOSED, ROLES, names, only, rescale_shift_base

    assert {a.role for a in ARCHITECTURES.values()} <= set(ROLES) and {PROPOSED, BASELINE} <= set(names("main"))
    for name in names("ablation") + names("successor") + names("rescale_shift"):
        assert architecture(name).versus in ARCHITECTURES, name
    assert rescale_shift_base() == architecture(only("rescale_shift")).versus == BASELINE


def test_the_verdict_judges_every_registered_ablation_and_successor():
    """A claim per ablation and per successor the registry lists, against what its record says it is
    measured against: a new one gets its verdict without an edit to the verdict."""
    import pandas as pd

    from gatedsae.plan.architectures import names, versus
    from gatedsae.plan.config import VerdictConfig
    from gatedsae.reporting.claims import comparison_claims

    rows = [{"model": "m", "site": "resid_post", "layer": 1, "arch": name, "versus": versus(name), "seeds": 1,
             "l0_at": "10", "loss_recovered_difference": -0.001, "loss_recovered_difference_ci_low": -0.002,
             "loss_recovered_difference_ci_high": 0.0} for name in names("ablation") + names("successor")]
    found, beyond = comparison_claims(pd.DataFrame(rows), VerdictConfig(), "test")
    judged = {claim.id.split("/")[0] for claim in found + beyond}
    assert {f"{name}_vs_{versus(name)}" for name in names("ablation") + names("successor")} <= judged


def _code_outside_the_registry():
    """(path, syntax tree) of every module that must learn architectures from the registry and the SAE
    classes' own methods: the package but `saes/` and `plan/architectures.py`, and the scripts."""
    import ast

    from gatedsae.plan.config import REPO_ROOT

    package = REPO_ROOT / "src" / "gatedsae"
    paths = [p for p in sorted(package.rglob("*.py"))
             if p.relative_to(package).parts[0] != "saes" and p != package / "plan" / "architectures.py"]
    paths += sorted((REPO_ROOT / "scripts").glob("*.py"))
    return [(p.relative_to(REPO_ROOT), ast.parse(p.read_text())) for p in paths]


def test_no_code_outside_the_saes_and_the_registry_names_an_architecture_or_asks_an_sae_its_class():
    import ast

    from gatedsae.saes.base import BatchedSAE

    def subclasses(cls):
        return {cls.__name__}.union(*(subclasses(sub) for sub in cls.__subclasses__()))

    for name in ARCHITECTURES:
        sae_class(name)  # imported, so that every class is among BatchedSAE's subclasses
    classes = subclasses(BatchedSAE)
    named, asked = [], []
    for path, tree in _code_outside_the_registry():
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and node.value in ARCHITECTURES:
                named.append(f"{path}:{node.lineno} {node.value!r}")
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") in ("isinstance", "issubclass"):
                kinds = node.args[1].elts if isinstance(node.args[1], ast.Tuple) else [node.args[1]]
                found = {getattr(kind, "id", getattr(kind, "attr", "")) for kind in kinds} & classes
                asked += [f"{path}:{node.lineno} {sorted(found)}"] if found else []
    assert not named, f"architecture names outside saes/ and plan/architectures.py (use the registry): {named}"
    assert not asked, f"SAE classes asked outside saes/ (put the behaviour on the class): {asked}"
