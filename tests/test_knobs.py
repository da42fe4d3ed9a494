"""Each architecture's sparsity knob under its own name (λ for the L1 family, λ_L0 for JumpReLU, k for
TopK), and the migration of what was written before: configurations and records that held every
penalty's coefficient in `l1`, and saved training states whose coefficient buffer was `l1`."""

from __future__ import annotations

import pytest
import torch

from gatedsae.plan.architectures import KNOBS, knob_fields, knob_of, knob_text, knob_value
from gatedsae.plan.config import ConfigError, load_config
from gatedsae.saes.base import make_sae


def test_each_architecture_names_its_knob_as_its_paper_does():
    assert (knob_of("gated"), knob_of("baseline"), knob_of("jumprelu"), knob_of("topk")) == \
        ("l1", "l1", "l0_coefficient", "k")
    assert [KNOBS[knob].symbol for knob in ("l1", "l0_coefficient", "k")] == ["λ", "λ_L0", "k"]
    assert knob_text("jumprelu", {"l0_coefficient": 0.002}) == "λ_L0 = 0.002"
    assert knob_text("topk", {"k": 32, "l1": None}) == "k = 32"


def test_a_legacy_config_holding_jumprelus_coefficient_in_l1_still_loads(capsys):
    current = load_config(["experiment=successors"])
    index = next(i for i, group in enumerate(current.sweep.groups) if group.arch == "jumprelu")
    values = current.sweep.groups[index].l0_coefficient
    legacy = load_config(["experiment=successors", f"sweep.groups.{index}.l0_coefficient=[]",
                          f"sweep.groups.{index}.l1=[{','.join(map(str, values))}]"])
    assert legacy.sweep == current.sweep
    assert f"sweep.groups.{index}.l1 of a jumprelu group is read as sweep.groups.{index}.l0_coefficient" in \
        capsys.readouterr().err


def test_a_knob_under_another_architectures_name_is_refused():
    with pytest.raises(ConfigError, match=r"sweep.groups.0.l0_coefficient.*gated is swept over l1"):
        load_config(["experiment=smoke", "+sweep.groups.0.l0_coefficient=[0.1]"])
    with pytest.raises(ConfigError, match=r"sweep.groups.2.l1_units"):  # units are the L1 penalty's
        load_config(["experiment=successors", "sweep.groups.2.l1_units=paper_per_dim"])


def test_records_and_rows_written_before_read_through_the_legacy_key():
    old_jumprelu = {"arch": "jumprelu", "l1": 0.004, "k": None}
    assert knob_value("jumprelu", old_jumprelu) == 0.004
    assert knob_fields("jumprelu", old_jumprelu) == {"l0_coefficient": 0.004}
    assert knob_text("jumprelu", {"l0_coefficient": float("nan"), "l1": 0.004}) == "λ_L0 = 0.004"  # a table's row
    assert knob_fields("topk", {"k": 16.0, "l1": 0.0}) == {"k": 16}


@pytest.mark.parametrize("arch, knob", [("gated", [0.1, 0.3]), ("jumprelu", [0.01, 0.02]), ("topk", [2, 3])])
def test_a_training_state_saved_with_the_l1_buffer_resumes(arch, knob):
    saved = make_sae(arch, 2, 4, 6, torch.tensor(knob, dtype=torch.float32), seed=0)
    state = saved.state_dict()
    coefficient = state.pop("sparsity_coefficient", torch.zeros(2))  # TopK held zeros there
    legacy = {"l1": coefficient, **state}
    fresh = make_sae(arch, 2, 4, 6, torch.tensor(knob, dtype=torch.float32), seed=1)
    fresh.load_state_dict(legacy)
    for name, value in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], value), name
    assert not hasattr(fresh, "l1")
