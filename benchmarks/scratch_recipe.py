"""Benchmark: carcli's from-scratch recipe against other recipes, training from random weights.

A from-scratch run on all of Stanford Cars takes days on a CPU, so this compares the recipes on a
smaller problem of the same kind: the first `--classes` classes of ../shared/data/stanford_cars
(16 real photos each) as class folders, carcli's seeded 75/25 stratified split (`--seed`), random
initial weights, the same arch, size, batch and epochs for every recipe. Rows:
- defaults: only the data, arch, size and epochs given, so the from-scratch recipe of
  carcli/train/recipe.py fills the rest (GhostNet write-up: AdamW wd 0.1, dropout 0.25, flip + affine +
  colour jitter, cosine)
- no-affine, no-dropout, wd0.05: the defaults less one of the write-up's findings each
- fine-tune recipe: the values carcli gives a pretrained start (one-cycle lr 2e-3, crops 0.5-1 + flip,
  wd 0.05, no dropout), used from scratch

Usage: python benchmarks/scratch_recipe.py [--arch ghostnet] [--classes 49] [--img-size 128]
       [--epochs 30] [--seed 0] [--only NAME ...] [--out /tmp/scratch-bench]
Prints one line per epoch and a markdown table; results.json in --out gathers the runs of every seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from carcli.data.layouts import load_dataset
from carcli.progress import Event, SilentReporter
from carcli.train import EpochEnd, TrainConfig, train
from carcli.train.recipe import FINE_TUNE

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"
FINE_TUNE_VALUES = {k: v for k, v in FINE_TUNE.values.items() if not callable(v) and k != "epochs"}  # epochs: --epochs
RUNS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "no-affine": {"affine_degrees": 0.0, "affine_translate": 0.0, "affine_scale": 0.0},
    "no-dropout": {"drop_rate": 0.0},
    "wd0.05": {"weight_decay": 0.05},
    "fine-tune recipe": {**FINE_TUNE_VALUES, "head": "linear"},
}


def class_folders(classes: int, out: Path) -> Path:
    """Class folders (symlinks) holding every shared photo of the first `classes` classes."""
    dataset = load_dataset(DATA)
    for sample in dataset.samples:
        if sample.label < classes:
            folder = out / dataset.class_names[sample.label].replace("/", "-")
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / sample.path.name
            if not link.exists():
                link.symlink_to(sample.path)
    return out


class EpochLines(SilentReporter):
    def __init__(self, name: str) -> None:
        self.name = name

    def progress(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            record = event.record
            top1 = 100 * record["val_top1"]["model"]
            print(f"[{self.name}] epoch {record['epoch']}: {top1:.1f}% ({record['seconds']:.0f} s)", flush=True)


def run(name: str, recipe: dict[str, Any], data: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One from-scratch run; its best and final top-1 and wall time."""
    config = TrainConfig(
        data=str(data), out=str(args.out / f"seed{args.seed}" / name.replace(" ", "-")), arch=args.arch,
        img_size=args.img_size, epochs=args.epochs, batch_size=32, val_fraction=0.25, seed=args.seed,
        device="cpu", compile="off", **recipe,
    )  # fmt: skip
    started = time.perf_counter()
    result = train(config, EpochLines(f"{name}, seed {args.seed}"))
    return {
        "best_top1": result.best_top1["model"],
        "final_top1": result.records[-1]["val_top1"]["model"],
        "best_epoch": result.best_epoch,
        "minutes": (time.perf_counter() - started) / 60,
    }


def print_table(results: dict[str, dict[str, Any]]) -> None:
    """One row per recipe: best and final top-1 of each seed, their means and the mean wall time."""
    print("\n| recipe | best top-1 per seed | mean best | mean final | wall time |")
    print("|---|---|---:|---:|---:|")
    for name, seeds in results.items():
        runs = list(seeds.values())
        per_seed = " / ".join(f"{100 * r['best_top1']:.1f}" for r in runs)
        best = statistics.mean(r["best_top1"] for r in runs)
        final = statistics.mean(r["final_top1"] for r in runs)
        minutes = statistics.mean(r["minutes"] for r in runs)
        print(f"| {name} | {per_seed} % | {100 * best:.1f} % | {100 * final:.1f} % | {minutes:.1f} min |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ghostnet")
    parser.add_argument("--classes", type=int, default=49)
    parser.add_argument("--img-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="the split's and the run's seed")
    parser.add_argument("--only", action="append", help="run just the recipes whose name contains this (repeatable)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/scratch-bench"))
    args = parser.parse_args()
    data = class_folders(args.classes, args.out / "data")
    path = args.out / "results.json"
    results: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
    for name, recipe in RUNS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        results.setdefault(name, {})[str(args.seed)] = run(name, recipe, data, args)
        path.write_text(json.dumps(results, indent=2))
    print_table(results)


if __name__ == "__main__":
    main()
