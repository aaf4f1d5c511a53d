"""int8 ONNX models: ONNX Runtime static quantisation calibrated on images of a data set, then checked.

Calibration feeds a seeded sample of the data set's training images (default 200), preprocessed
as carcli's evaluation does (carcli.deploy), through the fp32 graph to set the activation ranges
(MinMax); weights are quantised per output channel, activations and weights to signed int8 in the
QDQ format, which ONNX Runtime's CPU provider runs with integer kernels. The int8 file is then run
next to the fp32 one: file size, latency per image (batch 1) and top-1 per task on the val split.
Nothing here imports torch.
"""

from __future__ import annotations

import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.images import open_rgb
from carcli.data.layouts import Sample, load_dataset
from carcli.deploy import INPUT_NAME, OnnxModel, eval_view
from carcli.errors import CarcliError
from carcli.files import atomic_output
from carcli.metrics import topk_accuracy
from carcli.splits import align_labels, sample_targets, split_samples

SEED = 0
CALIBRATION_BATCH = 8
LATENCY_RUNS = 20


@dataclass
class QuantReport:
    """fp32 against int8: bytes, milliseconds per image (batch 1), top-1 per task on `split` (`images` of them)."""

    bytes: dict[str, int]
    latency_ms: dict[str, float]
    top1: dict[str, dict[str, float]]  # "fp32"/"int8" -> task -> top-1
    split: str
    images: int
    calibration_images: int

    def rows(self) -> list[list[str]]:
        """One row per quantity: name, fp32, int8."""
        rows = [
            ["file size", *(f"{self.bytes[k] / 2**20:.2f} MiB" for k in ("fp32", "int8"))],
            ["latency / image (batch 1)", *(f"{self.latency_ms[k]:.1f} ms" for k in ("fp32", "int8"))],
        ]
        for task in self.top1["fp32"]:
            top1 = [f"{100 * self.top1[k][task]:.1f}%" for k in ("fp32", "int8")]
            rows.append([f"{task} top-1 ({self.images} {self.split} images)", *top1])
        return rows


class ImageReader:
    """An onnxruntime CalibrationDataReader over image files, preprocessed as carcli evaluates, in small batches."""

    def __init__(self, paths: Sequence[Path], meta: CheckpointMeta) -> None:
        self.paths = list(paths)
        self.meta = meta
        self.start = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.start >= len(self.paths):
            return None
        batch = self.paths[self.start : self.start + CALIBRATION_BATCH]
        self.start += CALIBRATION_BATCH
        return {INPUT_NAME: np.stack([eval_view(open_rgb(p, self.meta.img_size), self.meta) for p in batch])}

    def rewind(self) -> None:
        self.start = 0


def calibration_paths(data: Path, meta: CheckpointMeta, count: int) -> list[Path]:
    """A seeded sample of `count` training images of `data` (all of them when there are fewer)."""
    val_fraction, seed = meta.train_option("val_fraction", 0.2), meta.train_option("seed", 0)
    dataset = load_dataset(Path(data), float(val_fraction), int(seed))
    pool = [s.path for s in dataset.split("train")] or [s.path for s in dataset.samples]
    if not pool:
        raise CarcliError(f"{data} has no images to calibrate the quantisation on")
    return sorted(random.Random(SEED).sample(pool, min(count, len(pool))))


def quantize_int8(fp32: Path, out: Path, data: Path, images: int = 200) -> QuantReport:
    """Quantise the checked fp32 model `fp32` to `out` (atomically), then compare the two on `data`."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    reference = OnnxModel.load(fp32)
    paths = calibration_paths(data, reference.meta, images)
    with tempfile.TemporaryDirectory(dir=fp32.parent) as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        with atomic_output(out) as tmp:
            quantize_static(
                str(prepared), str(tmp), _reader(paths, reference.meta),
                quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
            )  # fmt: skip
            quantized = OnnxModel.load(tmp)
            report = compare(reference, quantized, data)
    report.bytes = {"fp32": fp32.stat().st_size, "int8": out.stat().st_size}
    report.calibration_images = len(paths)
    return report


def _reader(paths: Sequence[Path], meta: CheckpointMeta) -> Any:
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(ImageReader, CalibrationDataReader):
        pass

    return Reader(paths, meta)


def compare(fp32: OnnxModel, int8: OnnxModel, data: Path) -> QuantReport:
    """Latency (batch 1) and top-1 per output task of both models on the val split of `data`."""
    dataset, samples, split = split_samples(fp32.meta, data, None)
    to_fine = np.asarray(align_labels(dataset.class_names, fp32.meta), dtype=np.int64)
    targets = sample_targets(samples, to_fine, fp32.meta, fp32.outputs)
    top1: dict[str, dict[str, float]] = {}
    latency: dict[str, float] = {}
    for name, model in (("fp32", fp32), ("int8", int8)):
        probs = model.sample_probs(samples)
        top1[name] = {task: topk_accuracy(p, targets[task]) for task, p in probs.items()}
        latency[name] = latency_ms(model, samples[0])
    return QuantReport({}, latency, top1, split, len(samples), 0)


def latency_ms(model: OnnxModel, sample: Sample) -> float:
    """Median milliseconds of one forward pass at batch 1 (after 3 warm-up runs)."""
    image = eval_view(open_rgb(sample.path, model.meta.img_size), model.meta)[None]
    times = []
    for run in range(3 + LATENCY_RUNS):
        started = time.perf_counter()
        model.session.run(None, {INPUT_NAME: image})
        if run >= 3:
            times.append(1000 * (time.perf_counter() - started))
    return statistics.median(times)
