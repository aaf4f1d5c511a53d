"""Training throughput, carcli against timm's own pipeline, on the same photos, model, size and batch.

timm side: the loop its train.py runs, written out short: `timm.data.create_dataset` over a class
folder, `create_loader` (timm's transforms: random resized crop 0.08-1, flip, colour jitter 0.4;
its prefetcher; workers as train.py's default, capped at the core count), `timm.create_model`,
`timm.optim.create_optimizer_v2` (AdamW), label-smoothed cross-entropy, AMP only on CUDA; run
with train.py's defaults, with its `--channels-last`, and with `--channels-last --amp --amp-dtype
bfloat16` (bf16 autocast on the CPU too).
carcli side: `carcli.train.train` with the same augmentation and `cache` on (the prepared store
and augmentation of whole batches), one epoch; its training images/s (validation excluded).
Also the data pipelines alone (no model) against the decode limit: one core's decode + resize
rate times the cores.
`--epochs N` trains every setting N epochs (rates include whatever compiling costs), long enough for
carcli's `--compile auto` (its default) to decide after the first epoch; the variants
`carcli_compile_off` and `carcli_compile_on` show what each choice would have given on the same work.

    python benchmarks/throughput.py --repeats 3           # 49 classes, 160 px, batch 32, CPU; medians of 3
    python benchmarks/throughput.py --classes 196 --img-size 224 --device cuda
    python benchmarks/throughput.py --archs efficientnet_lite0 --classes 196 --epochs 3 \
        --variants timm_channels_last,carcli,carcli_compile_off,carcli_compile_on
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.data import create_dataset, create_loader, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader

from carcli.data.batch_augment import BatchAugment
from carcli.data.images import open_rgb
from carcli.data.layouts import load_dataset
from carcli.data.packed import PackedDataset, load_or_build, store_shape
from carcli.data.transforms import Augment
from carcli.models.registry import get_arch
from carcli.progress import Event, SilentReporter
from carcli.train import EpochEnd, Step, TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"
ARCHS = ("ghostnet", "resnet34", "efficientnet_lite0")
VARIANTS = (
    "timm",
    "timm_channels_last",
    "timm_channels_last_bf16",
    "carcli",
    "carcli_compile_off",
    "carcli_compile_on",
)
DEFAULT_VARIANTS = VARIANTS[:4]
TIMM_AUGMENT = Augment(crop_scale=0.08, hflip=True, color_jitter=0.4)  # what create_transform does when training
# timm's loop above, for every option a carcli recipe would otherwise fill (from scratch: affine
# augmentation, which has no batched form, dropout, its own learning rate and weight decay)
SAME_AS_TIMM = {
    "head": "linear", "lr": 1e-3, "weight_decay": 0.05, "label_smoothing": 0.1, "drop_rate": 0.0, "ema": False,
    "affine_degrees": 0.0, "affine_translate": 0.0, "affine_scale": 0.0, "affine_shear": 0.0, "schedule": "cosine",
}  # fmt: skip


def class_folders(classes: int, out: Path) -> Path:
    """train/ and val/ class folders (symlinks) over the first `classes` classes of the shared photos (75/25 split)."""
    dataset = load_dataset(SHARED, 0.25, 0)
    for sample in dataset.samples:
        if sample.label >= classes:
            continue
        name = dataset.class_names[sample.label].replace("/", "-")  # "Ram C/V ...": one folder
        folder = out / ("train" if sample.split == "train" else "val") / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / sample.path.name).symlink_to(sample.path)
    return out


def images_per_s(batches: Iterable[Any], step=lambda batch: None, warmup: int = 2) -> float:
    """Images per second over `batches` after `warmup` batches, running `step` on each."""
    seen, started = 0, None
    for index, batch in enumerate(batches):
        step(batch)
        if index + 1 == warmup:
            started = time.perf_counter()
        elif started is not None:
            seen += len(batch[1])
    return seen / (time.perf_counter() - started) if started and seen else float("nan")


def timm_loader(root: Path, model: torch.nn.Module, img_size: int, batch: int, workers: int, device: torch.device):
    data_config = resolve_data_config({"input_size": (3, img_size, img_size)}, model=model)
    dataset = create_dataset("", root=str(root / "train"), is_training=True)
    return create_loader(
        dataset, input_size=data_config["input_size"], batch_size=batch, is_training=True, use_prefetcher=True,
        mean=data_config["mean"], std=data_config["std"], num_workers=workers, device=device,
        pin_memory=device.type == "cuda",
    )  # fmt: skip


def timm_train(
    arch: str,
    root: Path,
    args: argparse.Namespace,
    device: torch.device,
    channels_last: bool = False,
    bf16: bool = False,
) -> float:
    """`args.epochs` epochs of timm's loop (train.py's defaults; `channels_last`, `bf16` as its
    --channels-last, --amp --amp-dtype bfloat16): images/s."""
    model = timm.create_model(get_arch(arch).model_name, num_classes=args.classes).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    loader = timm_loader(root, model, args.img_size, args.batch_size, args.timm_workers, device)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    criterion = LabelSmoothingCrossEntropy(0.1)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 or device.type == "cuda")
    model.train()

    def step(batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        images, labels = batch
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with amp:
            loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return images_per_s((batch for _ in range(args.epochs) for batch in loader), step)


class StepTimes(SilentReporter):
    """Wall-clock time of every training step, for a rate measured as `images_per_s` measures timm's:
    validation and the files written at an epoch's end are left out (timm's loop has neither), the
    first step after them (loader restart, a compile) is kept."""

    def __init__(self) -> None:
        self.marks: list[tuple[float, bool]] = []  # (time, whether a step ended there; else an epoch did)

    def progress(self, event: Event) -> None:
        if isinstance(event, Step | EpochEnd):
            self.marks.append((time.perf_counter(), isinstance(event, Step)))

    def images_per_s(self, batch: int, warmup: int = 2) -> float:
        steps = [index for index, (_, is_step) in enumerate(self.marks) if is_step][warmup:]
        seconds = sum(self.marks[index][0] - self.marks[index - 1][0] for index in steps)
        return len(steps) * batch / seconds if steps else float("nan")


def carcli_train(arch: str, root: Path, args: argparse.Namespace, out: Path, compile: str = "auto") -> float:
    """`args.epochs` epochs of `carcli train --cache` with timm's augmentation and `--compile compile`:
    training images/s after two warm-up steps (validation excluded)."""
    config = TrainConfig(
        data=str(root), arch=arch, img_size=args.img_size, batch_size=args.batch_size, epochs=args.epochs,
        device=args.device, out=str(out / f"carcli-{arch}-{compile}"), cache=True, augment="none",
        crop_scale=TIMM_AUGMENT.crop_scale, hflip=True, color_jitter=TIMM_AUGMENT.color_jitter, warmup_epochs=0.0,
        compile=compile, **SAME_AS_TIMM,
    )  # fmt: skip
    steps = StepTimes()
    train(config, steps)
    return steps.images_per_s(args.batch_size)


def run_variant(name: str, arch: str, root: Path, args: argparse.Namespace, device: torch.device, out: Path) -> float:
    """Images/s of one setting of VARIANTS."""
    if name not in VARIANTS:
        raise SystemExit(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")
    if name.startswith("carcli"):
        return carcli_train(arch, root, args, out, name.rpartition("_")[2] if "compile" in name else "auto")
    return timm_train(arch, root, args, device, channels_last="channels_last" in name, bf16="bf16" in name)


def decode_limit(root: Path, img_size: int, limit: int = 200) -> float:
    """One core's decode + resize rate (images/s) times the cores."""
    paths = sorted((root / "train").rglob("*.jpg"))[:limit]
    started = time.perf_counter()
    for path in paths:
        open_rgb(path, img_size).resize((img_size, img_size))
    return len(paths) / (time.perf_counter() - started) * (os.cpu_count() or 1)


def pipelines(root: Path, args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s of the data pipelines alone: timm's loader, and carcli's store + batch augmentation."""
    model = timm.create_model("resnet18", num_classes=args.classes)  # only its data config is used
    timm_rate = images_per_s(timm_loader(root, model, args.img_size, args.batch_size, args.timm_workers, device))
    samples = load_dataset(root, 0.25, 0).split("train")
    started = time.perf_counter()
    store = load_or_build(samples, store_shape(args.img_size, True), args.cache_dir)
    build_s = time.perf_counter() - started
    augment = BatchAugment(args.img_size, (0.5,) * 3, (0.5,) * 3, TIMM_AUGMENT, device)
    loader = DataLoader(PackedDataset(store), batch_size=args.batch_size, shuffle=True, drop_last=True)
    carcli_rate = images_per_s((augment(images, (1, i)), labels) for i, (images, labels) in enumerate(loader))
    return {"timm": timm_rate, "carcli": carcli_rate, "store_build_s": build_s, "decode_limit": decode_limit(root, 160)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--classes", type=int, default=49)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--timm-workers", type=int, default=min(4, os.cpu_count() or 1), help="train.py's -j (4)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each setting; the median is reported")
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every setting")
    parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS), help=f"some of {', '.join(VARIANTS)}")
    parser.add_argument("--out", type=Path, default=Path("/tmp/throughput.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    work = Path(tempfile.mkdtemp(prefix="carcli-throughput-"))
    os.environ["CARCLI_HOME"] = str(work / "home")
    args.cache_dir = work / "home" / "cache"
    try:
        root = class_folders(args.classes, work / "data")
        results: dict[str, Any] = {"settings": {k: str(v) for k, v in vars(args).items()}, "pipeline": {}, "train": {}}
        results["pipeline"] = pipelines(root, args, device)
        print(json.dumps(results["pipeline"]), flush=True)
        variants = args.variants.split(",")
        for arch in args.archs.split(","):
            rates: dict[str, list[float]] = {name: [] for name in variants}
            for repeat in range(args.repeats):  # interleaved, so a slow spell of a shared machine hits all alike
                for name in variants:
                    rates[name].append(run_variant(name, arch, root, args, device, work / f"run{repeat}"))
            result: dict[str, Any] = {name: statistics.median(values) for name, values in rates.items()}
            result["runs"] = rates
            timm_rates = [result[name] for name in variants if name.startswith("timm")]
            if "carcli" in result and timm_rates:
                result["ratio_best_timm"] = result["carcli"] / max(timm_rates)
            if "carcli" in result and "timm" in result:
                result["ratio"] = result["carcli"] / result["timm"]
            results["train"][arch] = result
            print(arch, json.dumps(result), flush=True)
        args.out.write_text(json.dumps(results, indent=2))
        print_table(results)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def print_table(results: dict[str, Any]) -> None:
    pipe = results["pipeline"]
    print("\n| pipeline (no model) | images/s |\n|---|---:|")
    print(f"| timm create_loader | {pipe['timm']:.0f} |\n| carcli store + batch augmentation | {pipe['carcli']:.0f} |")
    print(f"| decode limit (one core x cores) | {pipe['decode_limit']:.0f} |")
    print(f"\nstore built once in {pipe['store_build_s']:.1f} s\n")
    variants = results["settings"]["variants"].split(",")
    ratios = [key for key in ("ratio", "ratio_best_timm") if key in next(iter(results["train"].values()), {})]
    names = {"ratio": "carcli / timm", "ratio_best_timm": "carcli / fastest timm"}
    print(f"| arch | {' | '.join(variants + [names[k] for k in ratios])} |")
    print("|---|" + "---:|" * (len(variants) + len(ratios)))
    for arch, r in results["train"].items():
        cells = [f"{r[key]:.1f}" for key in variants] + [f"{r[key]:.2f}x" for key in ratios]
        print(f"| {arch} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
