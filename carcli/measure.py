"""Measuring a model: parameters, FLOPs, batch-1 latency and batched throughput.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (one multiply-add counts as 2 FLOPs;
matrix products and convolutions only, and zeros left by unstructured pruning still count).
Times come from `torch.utils.benchmark.Timer` (it synchronises CUDA and sets the thread count):
batch-1 latency on one CPU thread by default, throughput on the physical cores, so neither is
distorted by more threads than cores; `spread_warnings` names timings whose spread makes them unreliable.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from torch import nn

LATENCY_BATCH = 1
NOISY_SPREAD = 0.15  # interquartile range / median above this: the figure is unreliable (busy machine)
THROUGHPUT_BATCH = 32


def physical_cores() -> int:
    """Physical CPU cores this process may use (hyper-threads not counted; Linux reads /proc/cpuinfo)."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return usable
    cores = {
        (block.split("physical id")[1].split("\n")[0], block.split("core id")[1].split("\n")[0])
        for block in text.split("\n\n")
        if "physical id" in block and "core id" in block
    }
    return max(1, min(usable, len(cores) or usable))


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """All parameters, and those that are not exactly zero."""
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(int(torch.count_nonzero(p)) for p in params)


def _images(batch: int, img_size: int, device: torch.device) -> torch.Tensor:
    return torch.randn(batch, 3, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)


@torch.inference_mode()
def count_flops(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> int:
    """FLOPs of one forward pass on one image."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model.eval()(_images(1, img_size, torch.device(device)))
    return int(counter.get_total_flops())


def time_forward(model: nn.Module, images: torch.Tensor, threads: int, budget_s: float) -> tuple[float, float]:
    """(median seconds of a forward pass, interquartile range / median) on `threads` CPU threads."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines
    from torch.utils import benchmark

    model.eval()
    timer = benchmark.Timer(stmt="model(images)", globals={"model": model, "images": images}, num_threads=threads)
    with torch.inference_mode():
        model(images)  # warm-up: lazy initialisation, allocator
        measured = timer.blocked_autorange(min_run_time=budget_s)
    return measured.median, measured.iqr / measured.median


def latency(
    model: nn.Module, img_size: int, device: torch.device | str = "cpu", threads: int = 1
) -> tuple[float, float]:
    """(milliseconds per image at batch 1 (median), spread of the timings) on `threads` CPU threads."""
    seconds, spread = time_forward(model, _images(LATENCY_BATCH, img_size, torch.device(device)), threads, 0.5)
    return 1000 * seconds / LATENCY_BATCH, spread


def throughput(model: nn.Module, img_size: int, device: torch.device | str, threads: int) -> tuple[float, float]:
    """(images per second at batch THROUGHPUT_BATCH, spread of the timings) on `threads` CPU threads."""
    seconds, spread = time_forward(model, _images(THROUGHPUT_BATCH, img_size, torch.device(device)), threads, 1.0)
    return THROUGHPUT_BATCH / seconds, spread


def spread_warnings(spreads: dict[str, float]) -> list[str]:
    """A warning for every measurement (name -> spread) whose timings spread more than NOISY_SPREAD."""
    return [
        f"{what} timings spread by {spread:.0%} of their median (interquartile range): the machine is "
        "busy or its clock changes; close other programs or run again"
        for what, spread in spreads.items()
        if spread > NOISY_SPREAD
    ]
