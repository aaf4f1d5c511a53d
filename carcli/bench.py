"""`carcli bench`: parameters, FLOPs, file size, latency and throughput of a checkpoint or an untrained `--arch`.

The measurements themselves are `carcli.measure`'s (FLOPs from torch's flop counter, times from
`torch.utils.benchmark.Timer`: batch-1 latency on one CPU thread by default, throughput on the physical
cores); a wide spread of the timings is reported as a warning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from carcli.device import resolve_device
from carcli.measure import (
    LATENCY_BATCH,
    THROUGHPUT_BATCH,
    count_flops,
    count_parameters,
    latency,
    physical_cores,
    spread_warnings,
    throughput,
)
from carcli.usage import check_bench

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
    from carcli.models.builder import load_model
    from carcli.models.registry import create_model, get_arch

    check_bench(checkpoint, arch, img_size, device, threads, allow_large_images)
    torch_device = resolve_device(device)
    if checkpoint is not None:
        model, meta = load_model(checkpoint)
        name, size, file_bytes = str(checkpoint), img_size or meta.img_size, checkpoint.stat().st_size
    else:
        assert arch is not None
        spec = get_arch(arch)
        model = create_model(arch, "linear", {"model": BENCH_CLASSES}).eval()
        name, size, file_bytes = arch, img_size or spec.img_size, None
    total, nonzero = count_parameters(model)
    model.to(torch_device)
    one, many = (threads, threads) if threads else (1, physical_cores())
    latency_ms, latency_spread = latency(model, size, torch_device, one)
    images_per_s, batch_spread = throughput(model, size, torch_device, many)
    return BenchResult(
        name=name,
        img_size=size,
        device=torch.cuda.get_device_name(torch_device) if torch_device.type == "cuda" else "cpu",
        parameters=total,
        nonzero=nonzero,
        flops=count_flops(model, size, torch_device),
        file_bytes=file_bytes,
        latency_ms=latency_ms,
        throughput=images_per_s,
        latency_threads=one,
        throughput_threads=many,
        warnings=spread_warnings({"latency": latency_spread, "throughput": batch_spread}),
    )
