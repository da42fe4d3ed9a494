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
    config = load_config(["experiment=smoke", "precision.evaluate=float32"])
    assert (config.precision.cache, config.precision.evaluate) == ("auto", "float32")
    with pytest.raises(ConfigError, match="precision.train.*auto, float32, bfloat16"):
        load_config(["experiment=smoke", "precision.train=half"])
    with pytest.raises(ConfigError, match="precision.gate.ce_nats"):
        load_config(["experiment=smoke", "precision.gate.ce_nats=0"])
