"""Training-step speed of one model alone (no data pipeline): memory format and autocast dtype.

The measurement behind two of carcli's defaults: channels_last on (`--channels-last`) and full
precision on CPUs (`--precision auto`). One AdamW step of cross-entropy on a fixed random batch,
best of the steps after two warm-up steps.

    python benchmarks/step_speed.py                       # CPU, batch 32, 160 px
    python benchmarks/step_speed.py --device cuda --img-size 224
"""

from __future__ import annotations

import argparse
import time

import timm
import torch

from carcli.models.registry import get_arch

ARCHS = ("ghostnet", "resnet34", "efficientnet_lite0")
VARIANTS = {  # name: (channels_last, autocast dtype)
    "contiguous, fp32": (False, None),
    "channels_last, fp32": (True, None),
    "channels_last, bf16": (True, torch.bfloat16),
}


def images_per_s(arch: str, channels_last: bool, dtype: torch.dtype | None, args: argparse.Namespace) -> float:
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = timm.create_model(get_arch(arch).model_name, num_classes=args.classes).to(device)
    images = torch.randn(args.batch_size, 3, args.img_size, args.img_size, device=device)
    labels = torch.randint(0, args.classes, (args.batch_size,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    times = []
    for _ in range(args.steps):
        started = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return args.batch_size / min(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--classes", type=int, default=49)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print("| arch | " + " | ".join(VARIANTS) + " |\n|---|" + "---:|" * len(VARIANTS))
    for arch in args.archs.split(","):
        rates = [images_per_s(arch, cl, dtype, args) for cl, dtype in VARIANTS.values()]
        print(f"| {arch} | " + " | ".join(f"{rate:.1f}" for rate in rates) + " |", flush=True)


if __name__ == "__main__":
    main()
