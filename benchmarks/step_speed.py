"""Training-step speed of one model alone (no data pipeline): memory format, autocast dtype, torch.compile,
and the optimizer step, foreach against fused AdamW.

The measurement behind carcli's defaults: channels_last on, `--precision auto` (bf16 on CPUs with bf16
instructions, depthwise convolutions kept in fp32 there), `--compile auto`, fused AdamW. One AdamW step
of cross-entropy on a fixed random batch, best of the steps after two warm-up steps.

    python benchmarks/step_speed.py                       # CPU, batch 32, 160 px
    python benchmarks/step_speed.py --compile             # adds a torch.compile column (minutes per arch)
    python benchmarks/step_speed.py --device cuda --img-size 224 --compile
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from carcli.models.registry import get_arch
from carcli.train.runtime import depthwise_in_fp32

ARCHS = ("ghostnet", "resnet34", "efficientnet_lite0")
VARIANTS = {  # name: (channels_last, autocast dtype, depthwise convolutions in fp32, torch.compile)
    "contiguous, fp32": (False, None, False, False),
    "channels_last, fp32": (True, None, False, False),
    "channels_last, bf16": (True, torch.bfloat16, False, False),
    "channels_last, bf16, depthwise fp32": (True, torch.bfloat16, True, False),
}
COMPILED = {
    "channels_last, fp32, compiled": (True, None, False, True),
    "channels_last, bf16, depthwise fp32, compiled": (True, torch.bfloat16, True, True),
}


def images_per_s(
    arch: str,
    channels_last: bool,
    dtype: torch.dtype | None,
    depthwise_fp32: bool,
    compiled: bool,
    args: argparse.Namespace,
) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(get_arch(arch).model_name, num_classes=args.classes).to(device)
    if depthwise_fp32:
        depthwise_in_fp32(model)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    net = torch.compile(model) if compiled else model
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return args.batch_size / min(times[2:])


def optimizer_ms(arch: str, fused: bool, args: argparse.Namespace, steps: int = 10) -> float:
    """Milliseconds of one AdamW step over the model's parameters (random gradients)."""
    model = timm.create_model(get_arch(arch).model_name, num_classes=args.classes).to(args.device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3, fused=fused)
    for _ in range(3):
        optimizer.step()
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    if args.device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - started) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--classes", type=int, default=49)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--compile", action="store_true", help="also time the model under torch.compile")
    args = parser.parse_args()
    variants = {**VARIANTS, **(COMPILED if args.compile else {})}
    print("| arch | " + " | ".join(variants) + " |\n|---|" + "---:|" * len(variants))
    for arch in args.archs.split(","):
        rates = [images_per_s(arch, *variant, args) for variant in variants.values()]
        print(f"| {arch} | " + " | ".join(f"{rate:.1f}" for rate in rates) + " |", flush=True)
    print("\n| arch | AdamW step, foreach | AdamW step, fused |\n|---|---:|---:|")
    for arch in args.archs.split(","):
        print(f"| {arch} | {optimizer_ms(arch, False, args):.1f} ms | {optimizer_ms(arch, True, args):.1f} ms |")


if __name__ == "__main__":
    main()
