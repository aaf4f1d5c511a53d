"""Measuring models: parameters, FLOPs, file size, latency and throughput, and top-1 on a checkpoint's eval split.

`bench` measures a checkpoint or an untrained `--arch`; prune and ensemble reuse the pieces
(`count_parameters`, `latency_ms`, `eval_samples`, `top1_per_task`) for their before/after reports.
FLOPs come from `torch.utils.flop_counter.FlopCounterMode` (one multiply-add counts as 2 FLOPs;
matrix products and convolutions only, and zeros left by unstructured pruning still count).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from carcli.data.layouts import Sample
from carcli.device import resolve_device
from carcli.evaluate import predict_samples, split_samples, topk_accuracy
from carcli.usage import check_bench

LATENCY_BATCH = 1
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
            (f"latency, batch {LATENCY_BATCH} ({self.device})", f"{self.latency_ms:.2f} ms/image"),
            (f"throughput, batch {THROUGHPUT_BATCH} ({self.device})", f"{self.throughput:.1f} images/s"),
        ]


def bench(
    checkpoint: Path | None = None, arch: str | None = None, img_size: int | None = None, device: str = "auto"
) -> BenchResult:
    """Measure a checkpoint, or an untrained `arch` with a linear head for 196 classes."""
    from carcli.checkpoint import load_model
    from carcli.models.registry import create_model, get_arch

    check_bench(checkpoint, arch, img_size, device)
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
    return BenchResult(
        name=name,
        img_size=size,
        device=_device_name(torch_device),
        parameters=total,
        nonzero=nonzero,
        flops=count_flops(model, size, torch_device),
        file_bytes=file_bytes,
        latency_ms=latency_ms(model, size, torch_device),
        throughput=throughput(model, size, torch_device),
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu, {torch.get_num_threads()} threads"


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


@torch.inference_mode()
def _seconds_per_batch(model: nn.Module, images: torch.Tensor, warmup: int, budget_s: float, min_runs: int) -> float:
    """Median wall time of a forward pass, after `warmup` passes; runs until `budget_s` and at least `min_runs`."""
    model.eval()
    sync = torch.cuda.synchronize if images.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(images)
    sync()
    times: list[float] = []
    started = time.perf_counter()
    while len(times) < min_runs or time.perf_counter() - started < budget_s:
        tick = time.perf_counter()
        model(images)
        sync()
        times.append(time.perf_counter() - tick)
    return sorted(times)[len(times) // 2]


def latency_ms(
    model: nn.Module, img_size: int, device: torch.device | str = "cpu", threads: int | None = None
) -> float:
    """Milliseconds per image at batch 1 (median); `threads` pins torch's CPU threads while measuring."""
    images = _images(LATENCY_BATCH, img_size, torch.device(device))
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        return 1000 * _seconds_per_batch(model, images, warmup=2, budget_s=0.5, min_runs=5)
    finally:
        torch.set_num_threads(before)


def throughput(model: nn.Module, img_size: int, device: torch.device | str = "cpu") -> float:
    """Images per second at batch 32 (median batch time)."""
    images = _images(THROUGHPUT_BATCH, img_size, torch.device(device))
    return THROUGHPUT_BATCH / _seconds_per_batch(model, images, warmup=1, budget_s=1.0, min_runs=2)


def eval_samples(meta: dict[str, Any], data: Path) -> tuple[list[Sample], list[str], str]:
    """The evaluation split of `data` as the checkpoint's training run split it: samples, class names, split name."""
    dataset, samples, split = split_samples(meta, data, None)
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
