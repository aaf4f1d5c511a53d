"""Where commands run: `--device auto|cpu|cuda` resolved to a torch device, with a clear error for a missing GPU,
and what the processor offers (native bfloat16 arithmetic on CPUs)."""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from carcli.errors import CarcliError
from carcli.usage import DEVICES, one_of


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """auto -> cuda when a GPU is there, else cpu; `local_rank` picks this process's GPU under torchrun."""
    one_of(name, DEVICES, "--device")
    if name == "cuda" and not torch.cuda.is_available():
        raise CarcliError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


BF16_CPU_FLAGS = {"avx512_bf16", "amx_bf16", "bf16"}  # x86 AVX512-BF16 / AMX, Arm BF16 (aarch64 "Features")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU computes in bfloat16 natively (`cpuinfo`: the text of /proc/cpuinfo, read when None).

    Without these instructions bf16 is emulated and slower than float32; where /proc/cpuinfo is
    missing (macOS, Windows) the answer is no.
    """
    if cpuinfo is None:
        return _host_cpu_has_bf16()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features") and BF16_CPU_FLAGS & set(value.split()):
            return True
    return False


@functools.cache
def _host_cpu_has_bf16() -> bool:
    try:
        return cpu_has_bf16(Path("/proc/cpuinfo").read_text())
    except OSError:
        return False
