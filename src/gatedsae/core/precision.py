"""Which precision a stage computes in, chosen from what the machine reports.

A stage's setting (`conf/precision/`) is `float32`, `bfloat16` or `auto`. `auto` is bfloat16 where the
device multiplies bf16 matrices natively, float32 elsewhere:

- a CPU whose flags include `avx512_bf16` or `amx_bf16` and on which torch runs its AVX-512 kernels
  (`torch.backends.cpu.get_cpu_capability()`); a CPU without them emulates bf16 matmuls, several
  times slower than float32;
- a CUDA device of compute capability 8.0 or more (bf16 tensor cores).

bfloat16 means bf16 operands with float32 accumulation (autocast, or matmuls that return float32), never
bf16 state: activations between layers, weights that train and optimiser moments stay float32. A stage
then checks bf16 against float32 on a little of its own data (its fidelity gate, tolerances in
`conf/precision/`) and keeps float32 if the check fails; `Precision` records the choice, the reason and
the check, for the provenance of what the stage writes. The cache's and the evaluation's precision enter
no artifact's identity: the gate bounds the difference below the tolerances that the statistics are
insensitive to. Training's does (its resolved dtype, in the training keys: plan/identity.py), since bf16
steps reach other weights.

torch is imported inside the functions, so this module costs nothing to import.
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Optional

SETTINGS = ("auto", "float32", "bfloat16")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # either one: native bf16 dot products on the CPU
REPORTED_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
CUDA_BF16_CAPABILITY = (8, 0)


def _cpuinfo() -> tuple[str, set[str]]:
    """The CPU's model name and flags from /proc/cpuinfo ("" and none where it does not exist)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and not model:
                    model = value.strip()
                elif key.strip() == "flags" and not flags:
                    flags = set(value.split())
                if model and flags:
                    break
    except OSError:
        pass
    return model or platform.processor(), flags


def cpu_summary() -> dict[str, Any]:
    """The CPU in a few fields, without importing torch: what tells two machines' speeds apart (a run
    resumed on another kind of machine records each part's)."""
    name, flags = _cpuinfo()
    return {"cpu": name, "cores": os.cpu_count(),
            "cpu_features": [flag for flag in sorted(REPORTED_CPU_FLAGS) if flag in flags]}


@dataclass(frozen=True)
class Device:
    """What one device reports about its bf16 support."""

    device: str                # "cpu", "cuda:0", ...
    name: str                  # the CPU model or the GPU's name
    capability: str            # torch's CPU kernel level (AVX2, AVX512, ...) or "sm_90"
    flags: tuple[str, ...]     # the CPU flags that matter here
    native_bf16: bool
    why: str                   # one line: why bf16 is native here or not


@functools.lru_cache(maxsize=None)
def describe_device(device: str = "cpu") -> Device:
    import torch

    kind = torch.device(device).type
    if kind == "cuda":
        index = torch.device(device).index or 0
        major, minor = torch.cuda.get_device_capability(index)
        native = (major, minor) >= CUDA_BF16_CAPABILITY
        why = (f"CUDA compute capability {major}.{minor} " + ("≥" if native else "<")
               + f" {CUDA_BF16_CAPABILITY[0]}.{CUDA_BF16_CAPABILITY[1]} (bf16 tensor cores)")
        return Device(device, torch.cuda.get_device_name(index), f"sm_{major}{minor}", (), native, why)
    if kind != "cpu":
        return Device(device, kind, "", (), False, f"no bf16 detection for {kind} devices: float32")
    name, flags = _cpuinfo()
    capability = torch.backends.cpu.get_cpu_capability()
    found = tuple(flag for flag in REPORTED_CPU_FLAGS if flag in flags)
    bf16_flags = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    if not bf16_flags:
        return Device(device, name, capability, found, False,
                      "the CPU reports neither avx512_bf16 nor amx_bf16: bf16 matmuls would be emulated")
    if not capability.startswith("AVX512"):
        return Device(device, name, capability, found, False,
                      f"the CPU has {', '.join(bf16_flags)} but torch runs its {capability} kernels")
    return Device(device, name, capability, found, True, f"{', '.join(bf16_flags)} with torch's {capability} kernels")


def machine(device: str = "cpu") -> dict[str, Any]:
    """The machine as benchmarks and provenance record it."""
    import torch

    facts = describe_device(device)
    return {"platform": platform.platform(), "cpu": _cpuinfo()[0], "cores": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version(),
            "cpu_features": sorted(facts.flags) if facts.device == "cpu" else sorted(describe_device("cpu").flags),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "device": facts.device, "device_name": facts.name, "native_bf16": facts.native_bf16,
            "load_average": list(os.getloadavg())}


@dataclass(frozen=True)
class Precision:
    """The precision one stage computes in, and why."""

    stage: str                 # cache | train | evaluate
    setting: str               # auto | float32 | bfloat16, as configured
    dtype: str                 # float32 | bfloat16: what the stage uses
    reason: str
    device: str = "cpu"
    gate: Optional[dict] = field(default=None)  # the fidelity check's measurements, when one ran

    @property
    def bf16(self) -> bool:
        return self.dtype == "bfloat16"

    @property
    def torch_dtype(self):
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def wants_gate(self) -> bool:
        """Whether the stage should check bf16 against float32 before using it (auto only: a forced
        bfloat16 is used as asked, and its check is only recorded)."""
        return self.bf16 and self.setting == "auto"

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast (float32 accumulation) on the stage's device when bf16 is chosen; else nothing."""
        if not self.bf16:
            return contextlib.nullcontext()
        import torch

        return torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16)

    def checked(self, passed: bool, measured: dict) -> "Precision":
        """This precision after its fidelity gate: float32 if `passed` is false and bf16 was automatic."""
        gate = {"passed": passed, **measured}
        if passed or self.setting != "auto":
            return replace(self, gate=gate)
        return replace(self, dtype="float32", gate=gate,
                       reason=f"bf16 failed this stage's fidelity gate ({gate_failure(measured)}); float32")

    def provenance(self) -> dict:
        return asdict(self)


def gate_failure(measured: dict) -> str:
    """The measurements above their tolerance, as text (`measured` holds {name: {value, tolerance}})."""
    over = [f"{name} {entry['value']:.3g} > {entry['tolerance']:.3g}" for name, entry in measured.items()
            if isinstance(entry, dict) and "tolerance" in entry and not entry["value"] <= entry["tolerance"]]
    return "; ".join(over) or "no measurement"


def check(measurements: dict[str, float], tolerances: dict[str, float]) -> tuple[bool, dict]:
    """Compare each measurement with its tolerance: (all within, {name: {value, tolerance}}); a measurement
    without a tolerance is only recorded ({name: value})."""
    measured = {name: {"value": float(value), "tolerance": float(tolerances[name])} if name in tolerances else float(value)
                for name, value in measurements.items()}
    gated_entries = [entry for entry in measured.values() if isinstance(entry, dict)]
    return all(entry["value"] <= entry["tolerance"] for entry in gated_entries), measured


def gated(chosen: Precision, measure, tolerances: dict[str, float]) -> Precision:
    """`chosen` after its fidelity gate: when it is bf16, `measure()` ({name: value}, bf16 against float32
    on a little of the stage's data) is checked against `tolerances`; an automatic bf16 that fails becomes
    float32, a forced one stays (its check recorded). float32 needs no gate."""
    if not chosen.bf16:
        return chosen
    return chosen.checked(*check(measure(), tolerances))


def choose(stage: str, setting: str, device: str = "cpu") -> Precision:
    """The precision `stage` computes in on `device` for `setting` (before its fidelity gate)."""
    if setting not in SETTINGS:
        raise ValueError(f"precision.{stage}: got {setting!r}; use one of {', '.join(SETTINGS)}")
    if setting == "float32":
        return Precision(stage, setting, "float32", "float32 as configured", device)
    if setting == "bfloat16":
        return Precision(stage, setting, "bfloat16", "bfloat16 as configured", device)
    facts = describe_device(device)
    dtype = "bfloat16" if facts.native_bf16 else "float32"
    return Precision(stage, setting, dtype, f"{facts.why}: {dtype}", device)

