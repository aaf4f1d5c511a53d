"""Measuring models: parameters, FLOPs, file size, latency and throughput, and top-1 on a checkpoint's eval split.

`bench` measures a checkpoint or an untrained `--arch`; prune and ensemble reuse the pieces
(`count_parameters`, `latency_ms`, `eval_samples`, `top1_per_task`) for their before/after reports.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (one multiply-add counts as 2 FLOPs;
matrix products and convolutions only, and zeros left by unstructured pruning still count).
Times come from `torch.utils.benchmark.Timer` (it synchronises CUDA and sets the thread count):
batch-1 latency on one CPU thread by default, throughput on the physical cores, so neither is
distorted by more threads than cores; a wide spread of the timings is reported as a warning.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carcli.data.images import image_problems
from carcli.data.layouts import Sample
from carcli.device import resolve_device
from carcli.errors import CarcliError
from carcli.evaluate import predict_samples, split_samples, topk_accuracy
from carcli.usage import check_bench

LATENCY_BATCH = 1
NOISY_SPREAD = 0.15  # interquartile range / median above this: the figure is unreliable (busy machine)
THROUGHPUT_BATCH = 32
BENCH_CLASSES = 196  # --arch models get a linear head for Stanford Cars' classes, as in `carcli archs`


@dataclass
class BenchResult:
    """What `carcli bench` measured for one model."""

    name: str
    img_size: int
    device: str
    parameters: int
    nonzero: int
    flops: int  # per image
    file_bytes: int | None  # None for an --arch model that has no file
    latency_ms: float  # per image at batch 1
    throughput: float  # images per second at batch 32
    latency_threads: int = 1  # CPU threads of each measurement
    throughput_threads: int = 1
    warnings: list[str] = field(default_factory=list)

    def _on(self, threads: int) -> str:
        return self.device if self.device != "cpu" else f"cpu, {threads} thread{'' if threads == 1 else 's'}"

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs for a table."""
        size = "-" if self.file_bytes is None else f"{self.file_bytes / 2**20:.2f} MiB"
        return [
            ("model", self.name),
            ("input", f"3 x {self.img_size} x {self.img_size}"),
            ("parameters", f"{self.parameters / 1e6:.3f} M"),
            ("non-zero parameters", f"{self.nonzero / 1e6:.3f} M"),
            ("FLOPs per image", f"{self.flops / 1e6:,.1f} M"),
            ("file size", size),
            (f"latency, batch {LATENCY_BATCH} ({self._on(self.latency_threads)})", f"{self.latency_ms:.2f} ms/image"),
            (
                f"throughput, batch {THROUGHPUT_BATCH} ({self._on(self.throughput_threads)})",
                f"{self.throughput:.1f} images/s",
            ),
        ]


def bench(
    checkpoint: Path | None = None,
    arch: str | None = None,
    img_size: int | None = None,
    device: str = "auto",
    threads: int | None = None,
    allow_large_images: bool = False,
) -> BenchResult:
    """Measure a checkpoint, or an untrained `arch` with a linear head for 196 classes.

    `threads` sets the CPU threads of both timings (default: 1 for latency, the physical cores for throughput).
    """
    from carcli.checkpoint import load_model
    from carcli.models.registry import create_model, get_arch

    check_bench(checkpoint, arch, img_size, device, threads, allow_large_images)
    torch_device = resolve_device(device)
    if checkpoint is not None:
        model, meta = load_model(checkpoint)
        name, size, file_bytes = str(checkpoint), img_size or int(meta["img_size"]), checkpoint.stat().st_size
    else:
        assert arch is not None
        spec = get_arch(arch)
        model = create_model(arch, "linear", {"model": BENCH_CLASSES}).eval()
        name, size, file_bytes = arch, img_size or spec.img_size, None
    total, nonzero = count_parameters(model)
    model.to(torch_device)
    one, many = (threads, threads) if threads else (1, physical_cores())
    latency, latency_spread = _time(model, _images(LATENCY_BATCH, size, torch_device), one, 0.5)
    batch, batch_spread = _time(model, _images(THROUGHPUT_BATCH, size, torch_device), many, 1.0)
    result = BenchResult(
        name=name,
        img_size=size,
        device=torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        parameters=total,
        nonzero=nonzero,
        flops=count_flops(model, size, torch_device),
        file_bytes=file_bytes,
        latency_ms=1000 * latency / LATENCY_BATCH,
        throughput=THROUGHPUT_BATCH / batch,
        latency_threads=one,
        throughput_threads=many,
    )
    for what, spread in (("latency", latency_spread), ("throughput", batch_spread)):
        if spread > NOISY_SPREAD:
            result.warnings.append(
                f"{what} timings spread by {spread:.0%} of their median (interquartile range): the machine is "
                "busy or its clock changes; close other programs or run again"
            )
    return result


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


def _time(model: nn.Module, images: torch.Tensor, threads: int, budget_s: float) -> tuple[float, float]:
    """(median seconds of a forward pass, interquartile range / median) on `threads` CPU threads."""
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # "No CUDA runtime" on CPU machines
    from torch.utils import benchmark

    model.eval()
    timer = benchmark.Timer(stmt="model(images)", globals={"model": model, "images": images}, num_threads=threads)
    with torch.inference_mode():
        model(images)  # warm-up: lazy initialisation, allocator
        measured = timer.blocked_autorange(min_run_time=budget_s)
    return measured.median, measured.iqr / measured.median


def latency_ms(
    model: nn.Module, img_size: int, device: torch.device | str = "cpu", threads: int | None = None
) -> float:
    """Milliseconds per image at batch 1 (median) on `threads` CPU threads (default 1)."""
    images = _images(LATENCY_BATCH, img_size, torch.device(device))
    return 1000 * _time(model, images, threads or 1, 0.5)[0]


def eval_samples(
    meta: dict[str, Any], data: Path, say: Callable[[str], None] | None = None
) -> tuple[list[Sample], list[str], str]:
    """The evaluation split of `data` as the checkpoint's training run split it: samples, class names, split name.

    Images the shared check finds unreadable are left out and named through `say`.
    """
    dataset, samples, split = split_samples(meta, data, None)
    bad = image_problems([s.path for s in samples])
    for path, why in bad.items():
        if say is not None:
            say(f"skipped {path}: {why}")
    samples = [s for s in samples if s.path not in bad]
    if not samples:
        raise CarcliError(f"no readable images in the {split} split of {data}")
    return samples, dataset.class_names, split


def top1_per_task(
    model: nn.Module,
    meta: dict[str, Any],
    samples: Sequence[Sample],
    class_names: Sequence[str],
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Top-1 of every task the model predicts, on `samples`."""
    preds = predict_samples(model, meta, samples, class_names, device=device, progress=progress)
    return {task: topk_accuracy(probs, preds.targets[task]) for task, probs in preds.probs.items()}
