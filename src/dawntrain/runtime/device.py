"""Device and precision: where the run computes and in which number format."""

from __future__ import annotations

import contextlib
import functools
from pathlib import Path

import torch

from dawntrain.errors import ConfigError


def resolve_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to PyTorch; use --device cpu")
    return torch.device(name)


@functools.cache
def _cpuinfo() -> str:
    """/proc/cpuinfo; empty where there is none (macOS, Windows)."""
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The words of /proc/cpuinfo (its flags among them); empty where there is none."""
    return frozenset(_cpuinfo().split())


def _cpuinfo_field(key: str, cpuinfo: str) -> str | None:
    """The first processor's value of `key` in /proc/cpuinfo's text."""
    for line in cpuinfo.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


# The widest bf16-or-vector path a CPU flag announces, widest first: flag, label, short name.
_ISA = (
    ("amx_bf16", "AMX", "amx"),
    ("avx512_bf16", "AVX-512 bf16", "avx512bf16"),
    ("avx512f", "AVX-512", "avx512"),
    ("avx2", "AVX2", "avx2"),
)
_NO_ISA = ("", "", "cpu")
_VENDORS = {"AuthenticAMD": "amd", "GenuineIntel": "intel"}


def _widest_isa(cpuinfo: str) -> tuple[str, str, str]:
    flags = set(cpuinfo.split())
    return next((isa for isa in _ISA if isa[0] in flags), _NO_ISA)


def widest_isa_flag(cpuinfo: str | None = None) -> str:
    """The /proc/cpuinfo flag of the CPU's widest bf16-or-vector path ("amx_bf16", "avx512_bf16",
    "avx512f", "avx2"); empty when it has none of them or there is no /proc/cpuinfo."""
    return _widest_isa(_cpuinfo() if cpuinfo is None else cpuinfo)[0]


def cpu_kind(cpuinfo: str | None = None) -> str:
    """The CPU's family and model numbers and its widest vector path: "family 26 model 2, AVX-512
    bf16"; empty without /proc/cpuinfo. Cloud machines often name only "AMD EPYC", which hides the
    generation that sets the speed (a Zen 4 and a Zen 5 both report AVX-512 bf16, and the Zen 5's
    bf16 matmul measured 2.0-2.4x the Zen 4's on 2 cores), so runs and benchmarks record this
    beside the name."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    isa = _widest_isa(text)[1]
    family, model = _cpuinfo_field("cpu family", text), _cpuinfo_field("model", text)
    generation = f"family {family} model {model}" if family is not None else ""
    return ", ".join(part for part in (generation, isa) if part)


def cpu_kind_slug(cpuinfo: str | None = None) -> str:
    """`cpu_kind` as a folder name: "avx512bf16-amd-f26m2", "amx-intel-f6m143", "avx2-amd-f25m1";
    "cpu" without /proc/cpuinfo. Benchmark folders carry it, so that two generations with the
    same flags never share a name."""
    text = _cpuinfo() if cpuinfo is None else cpuinfo
    isa = _widest_isa(text)[2]
    family, model = _cpuinfo_field("cpu family", text), _cpuinfo_field("model", text)
    if family is None:
        return isa
    vendor = _VENDORS.get(_cpuinfo_field("vendor_id", text) or "", "cpu")
    return f"{isa}-{vendor}-f{family}m{model}"


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX512-BF16 or AMX); emulated bf16 is slower than fp32."""
    flags = _cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    # Elsewhere (macOS, Windows) trust oneDNN's own check.
    with contextlib.suppress(Exception):
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and not flags
    return False


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tile units for bf16 (Xeon Sapphire Rapids and later)."""
    return "amx_bf16" in _cpu_flags()


def cpu_has_avx512() -> bool:
    return "avx512f" in _cpu_flags()


def resolve_precision(name: str, device: torch.device) -> str:
    """fp32 | bf16 | fp16 for this device; `auto` picks bf16 where the hardware has it."""
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if device.type == "cpu" and cpu_has_bf16() else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ConfigError("--precision fp16 is for CUDA; on a CPU use bf16 or fp32")
    return name


def memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast for bf16/fp16; BatchNorm and the loss stay fp32 by autocast's own op lists."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    name = _cpuinfo_field("model name", _cpuinfo()) or platform.processor() or platform.machine()
    kind = cpu_kind()
    return f"{name} ({kind + '; ' if kind else ''}{torch.get_num_threads()} threads)"
