"""Where commands run: `--device auto|cpu|cuda` resolved to a torch device, with a clear error for a missing GPU."""

from __future__ import annotations

import torch

from carcli.errors import CarcliError, UsageError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, local_rank: int | None = None) -> torch.device:
    """auto -> cuda when a GPU is there, else cpu; `local_rank` picks this process's GPU under torchrun."""
    if name not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise CarcliError("--device cuda asked for, but no CUDA GPU is available; use --device cpu or auto")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and local_rank is not None:
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)
