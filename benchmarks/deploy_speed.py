"""Issue 18: `carcli predict` with a `.st` checkpoint against its `.onnx` export, and calibration on held-out photos.

Speed: every figure is the median of --runs interleaved runs of the whole process (wall time around
`subprocess.run`, output discarded): one photo (cold start) and a folder (throughput after the
first image = (images - 1) / (folder time - cold start)), plus the import floors of both paths.

Calibration (--calibration): the checkpoint's val split (its training seed and share) is cut in two
halves by image order; a temperature per task is fitted on one half and the ECE (15 bins) measured
on the other, both ways round, and the two held-out halves' ECE averaged (2-fold cross-fitting).

Usage:
  python benchmarks/deploy_speed.py --st best.st --onnx best.onnx --photo PHOTO --folder DIR [--runs 5]
  python benchmarks/deploy_speed.py --st best.st --calibration --data ../shared/data/stanford_cars
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

FLOORS = {
    "python -c 'import torch, torchvision, timm'": [sys.executable, "-c", "import torch, torchvision, timm"],
    "python -c 'import numpy, PIL, onnxruntime'": [sys.executable, "-c", "import numpy, PIL.Image, onnxruntime"],
}


def wall(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def speed(args: argparse.Namespace) -> None:
    carcli = [sys.executable, "-m", "carcli", "predict"]
    commands = dict(FLOORS)
    for kind, model in (("st", args.st), ("onnx", args.onnx)):
        commands[f"{kind}: 1 photo"] = [*carcli, str(args.photo), "--model", str(model), "--json"]
        commands[f"{kind}: folder"] = [*carcli, str(args.folder), "--model", str(model), "--json"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(args.runs):
        for name, command in commands.items():
            times[name].append(wall(command))
    median = {name: statistics.median(t) for name, t in times.items()}
    images = sum(1 for p in Path(args.folder).rglob("*") if p.is_file())
    print("| command | median wall time |\n|---|---:|")
    for name, value in median.items():
        print(f"| {name} | {value:.2f} s |")
    for kind in ("st", "onnx"):
        after = (images - 1) / max(median[f"{kind}: folder"] - median[f"{kind}: 1 photo"], 1e-9)
        print(f"{kind}: {after:.1f} images/s after the first, {images / median[f'{kind}: folder']:.1f} end to end")
    print(f"cold start onnx / st = {median['onnx: 1 photo'] / median['st: 1 photo']:.3f}")


def calibration(args: argparse.Namespace) -> None:
    import numpy as np

    from carcli.calibration import expected_calibration_error, fit_temperature, tempered
    from carcli.inference import predict_samples
    from carcli.models.builder import load_model
    from carcli.splits import split_samples

    model, meta = load_model(args.st)
    dataset, samples, split = split_samples(meta, args.data, "val")
    preds = predict_samples(model, meta, samples, dataset.class_names, batch_size=64)
    halves = np.arange(len(samples)) % 2
    print(f"{len(samples)} {split} images; held-out ECE (2-fold), before -> after; temperatures per fold")
    for task, p in preds.probs.items():
        p, y = p.numpy(), preds.targets[task].numpy()
        before, after, temps = [], [], []
        for fold in (0, 1):
            fit, held = halves != fold, halves == fold
            t = fit_temperature(p[fit], y[fit])
            temps.append(t)
            before.append(expected_calibration_error(p[held], y[held]))
            after.append(expected_calibration_error(tempered(p[held], t), y[held]))
        print(
            f"| {task} | {100 * np.mean(before):.1f} % | {100 * np.mean(after):.1f} % | "
            f"{' / '.join(f'{t:.2f}' for t in temps)} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--st", type=Path, required=True)
    parser.add_argument("--onnx", type=Path)
    parser.add_argument("--photo", type=Path)
    parser.add_argument("--folder", type=Path)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calibration", action="store_true")
    parser.add_argument("--data", type=Path)
    args = parser.parse_args()
    calibration(args) if args.calibration else speed(args)


if __name__ == "__main__":
    main()
