"""Inference: a loaded model (a `.st` checkpoint's module, or an exported `.onnx` one) over images, to probabilities
and answers.

`predict_samples` is the one place that feeds a data set's images through a loaded model with the
checkpoint's own preprocessing (`carcli.data.transforms.view_transform`, with test-time augmentation)
and its calibration temperatures; everything that scores a model (eval, prune sweeps, ensembles, bench)
starts from the `Predictions` it returns. `cam_crop_probs` is the two-pass prediction of `--crop cam`.
`image_predictions` turns probabilities into the answers of `carcli predict --json` and `carcli serve`.
Nothing here imports torch at import time, so an `.onnx` model is scored without it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.images import ImageDataset, image_problems, open_rgb, view_box
from carcli.data.layouts import Sample
from carcli.data.taxonomy import FINE
from carcli.deploy import OnnxModel, is_onnx
from carcli.errors import CarcliError
from carcli.metrics import with_implied_tasks
from carcli.progress import Reporter, SilentReporter
from carcli.splits import align_labels, sample_targets, split_samples

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor, nn
    from torch.utils.data import Dataset

COARSE = ("make", "type", "year")
CAM_THRESHOLD = 0.2  # share of the map's maximum that counts as object
CROP_MARGIN = 0.1  # the CAM box grows by this share of its size on each side
MIN_CROP = 0.3  # a CAM box is never narrower or lower than this share of the image
Box = tuple[float, float, float, float]  # x1, y1, x2, y2 as shares of the image's width and height


@dataclass
class Predictions:
    """Class probabilities and true labels per task, in sample order."""

    paths: list[Path]
    probs: dict[str, Tensor]  # task -> (N, classes) softmax probabilities
    targets: dict[str, Tensor]  # task -> (N,) true class index in that task


# ---------------------------------------------------------------- images -> probabilities


def batch_probs(model: nn.Module, images: Tensor, temperatures: dict[str, float] | None = None) -> dict[str, Tensor]:
    """Softmax probabilities per task, each task's logits divided by its calibration temperature first;
    a 5-D batch (B, views, 3, S, S) is averaged over its views and their mirrors."""
    import torch

    temperatures = temperatures or {}
    if images.ndim == 4:
        return {task: (z.float() / temperatures.get(task, 1.0)).softmax(1) for task, z in model(images).items()}
    batch, views = images.shape[:2]
    flat = images.flatten(0, 1)
    logits = model(torch.cat([flat, flat.flip(-1)]))
    return {
        task: (z.float() / temperatures.get(task, 1.0)).softmax(1).view(2, batch, views, -1).mean((0, 2))
        for task, z in logits.items()
    }


def dataset_probs(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    temperatures: dict[str, float] | None = None,
) -> dict[str, Tensor]:
    """Softmax probabilities per task for every item of `dataset` (image tensors first, labels ignored)."""
    import torch
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    model.eval().to(device)
    chunks: dict[str, list[Tensor]] = {}
    done = 0
    with torch.no_grad():
        for images, _ in loader:
            for task, p in batch_probs(model, images.to(device), temperatures).items():
                chunks.setdefault(task, []).append(p.cpu())
            done += len(images)
            if progress:
                progress(done)
    return {task: torch.cat(parts) for task, parts in chunks.items()}


def sample_probs(
    model: nn.Module,
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    tta: bool = False,
    crop_margin: float | None = None,
) -> dict[str, Tensor]:
    """Softmax probabilities per task for `samples`, with the checkpoint's preprocessing (and `tta` views)
    and calibration temperatures."""
    size = meta.img_size
    dataset = ImageDataset(samples, meta.view_transform(tta), size, crop_margin)
    if tta:
        batch_size = max(1, batch_size // 12)  # six views and their mirrors per image
    return dataset_probs(model, dataset, batch_size, device, workers, progress, meta.temperatures)


def predict_samples(
    model: nn.Module,
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    class_names: Sequence[str],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    progress: Callable[[int], None] | None = None,
    tta: bool = False,
    crop_margin: float | None = None,
) -> Predictions:
    """Softmax probabilities per task for `samples` (labels index `class_names`), with the checkpoint's preprocessing.

    `progress` is called with the number of images done after each batch. `tta` averages flips and
    crops; `crop_margin` crops samples that have a bounding box to it (grown by that share).
    """
    import torch

    to_fine = np.asarray(align_labels(class_names, meta), dtype=np.int64)
    probs = sample_probs(model, meta, samples, batch_size, device, workers, progress, tta, crop_margin)
    targets = sample_targets(samples, to_fine, meta, list(probs))
    return Predictions([s.path for s in samples], probs, {t: torch.from_numpy(y) for t, y in targets.items()})


def default_workers(images: int, batch_size: int) -> int:
    """Loader processes: none for a single batch, else half the cores (at most 8), as training on a CPU."""
    return 0 if images <= batch_size else min(8, (os.cpu_count() or 2) // 2)


def load_scorer(model_path: Path, device: str = "auto") -> tuple[Any, CheckpointMeta, str]:
    """(model, metadata, where it runs): an `OnnxModel` for a `.onnx` file (no torch), else the checkpoint's module."""
    if is_onnx(model_path):
        onnx_model = OnnxModel.load(model_path)
        return onnx_model, onnx_model.meta, "onnxruntime"
    from carcli.device import resolve_device
    from carcli.models.builder import load_model

    torch_device = str(resolve_device(device))
    model, meta = load_model(model_path, torch_device)
    return model, meta, torch_device


def eval_samples(
    meta: CheckpointMeta, data: Path, say: Callable[[str], None] | None = None
) -> tuple[list[Sample], list[str], str]:
    """The evaluation split of `data` as the checkpoint's training run split it: samples, class names, split name.

    Images the shared check finds unreadable are left out and named through `say`.
    """
    dataset, samples, split = split_samples(meta, data, None)
    bad = image_problems([s.path for s in samples])
    for path, why in bad.items():
        if say is not None:
            say(f"skipped {path}: {why}")
    samples = [s for s in samples if s.path not in bad]
    if not samples:
        raise CarcliError(f"no readable images in the {split} split of {data}")
    return samples, dataset.class_names, split


# ---------------------------------------------------------------- the CAM crop


def cam_box(cam: Tensor) -> Box:
    """The box around the strongest connected region of `cam` above CAM_THRESHOLD, grown by CROP_MARGIN."""
    from scipy import ndimage

    values = cam.numpy()
    labels, count = ndimage.label(values >= CAM_THRESHOLD * max(float(values.max()), 1e-12))
    if count == 0:
        return (0.0, 0.0, 1.0, 1.0)
    mass = ndimage.sum(values, labels, index=range(1, count + 1))
    rows, cols = np.nonzero(labels == int(np.argmax(mass)) + 1)
    height, width = values.shape
    x = _span(cols.min() / width, (cols.max() + 1) / width)
    y = _span(rows.min() / height, (rows.max() + 1) / height)
    return (x[0], y[0], x[1], y[1])


def _span(low: float, high: float) -> tuple[float, float]:
    """[low, high] grown by the margin, at least MIN_CROP wide, inside [0, 1]."""
    grow = CROP_MARGIN * (high - low)
    low, high = low - grow, high + grow
    if high - low < MIN_CROP:
        centre = (low + high) / 2
        low, high = centre - MIN_CROP / 2, centre + MIN_CROP / 2
    shift = max(0.0, -low) - max(0.0, high - 1)
    return max(0.0, low + shift), min(1.0, high + shift)


class CroppedDataset(ImageDataset):
    """Samples cropped to a box given as shares of each image's evaluation view (`view_box` of `aspect`)."""

    def __init__(
        self,
        samples: Sequence[Sample],
        boxes: Sequence[Box],
        transform: Callable[[Image.Image], Any],
        min_size: int,
        crop_margin: float | None = None,
        aspect: float = 1.0,
    ) -> None:
        super().__init__(samples, transform, min_size, crop_margin)
        self.boxes, self.aspect = list(boxes), aspect

    def __getitem__(self, index: int) -> tuple[Any, int]:
        sample, (x1, y1, x2, y2) = self.samples[index], self.boxes[index]
        min_size = int(self.min_size / max(min(x2 - x1, y2 - y1), MIN_CROP))
        box = sample.bbox if self.crop_margin is not None else None
        img = open_rgb(sample.path, min_size, box, self.crop_margin or 0.0)
        left, top, width, height = view_box(img.width, img.height, self.aspect)  # the box is in shares of the view
        crop = (left + x1 * width, top + y1 * height, left + x2 * width, top + y2 * height)
        return self.transform(img.crop(crop)), sample.label


def cam_crop_probs(
    model: nn.Module,
    meta: CheckpointMeta,
    samples: Sequence[Sample],
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    crop_margin: float | None = None,
    reporter: Reporter | None = None,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Two-pass prediction: (first-pass probabilities, mean of the first pass and the CAM-crop pass) per task."""
    import torch
    from torch.utils.data import DataLoader

    from carcli.explain import cam_maps, grad_cam

    reporter = reporter or SilentReporter()
    size = meta.img_size
    temperatures = meta.temperatures
    model.eval().to(device)
    loader = DataLoader(
        ImageDataset(samples, meta.view_transform(), size, crop_margin),
        batch_size=batch_size,
        num_workers=workers,
    )
    progress = reporter.stage("pass 1: Grad-CAM", len(samples))
    first: dict[str, list[Tensor]] = {}
    boxes: list[Box] = []
    with grad_cam(model, size) as extractor:
        for images, _ in loader:
            logits, maps = cam_maps(model, extractor, images.to(device))
            for task, z in logits.items():
                first.setdefault(task, []).append((z.float() / temperatures.get(task, 1.0)).softmax(1).cpu())
            boxes.extend(cam_box(m) for m in maps)
            progress(len(boxes))
    cropped = CroppedDataset(samples, boxes, meta.view_transform(), size, crop_margin, meta.view_aspect)
    progress = reporter.stage("pass 2: CAM crops", len(samples))
    second = dataset_probs(model, cropped, batch_size, device, workers, progress, temperatures)
    plain = {task: torch.cat(parts) for task, parts in first.items()}
    return plain, {task: (plain[task] + second[task]) / 2 for task in plain}


# ---------------------------------------------------------------- answers


@dataclass
class ImagePrediction:
    """One image's answer; `to_json` gives the JSON Lines object of `carcli predict --json`."""

    image: str
    top_k: list[dict[str, Any]]  # [{"label", "score"}], best first
    coarse: dict[str, dict[str, Any] | None]  # make/type/year -> {"label", "score"(, "expected")} or None
    modernity: float | None

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "top_k": self.top_k, **self.coarse, "modernity": self.modernity}

    def caption(self) -> str:
        """The top class and its probability, as the explanation overlays show it."""
        return f"{self.top_k[0]['label']} ({100 * self.top_k[0]['score']:.1f}%)"


def modernity(year_probs: Any, years: Sequence[str]) -> np.ndarray:
    """(expected year - first year) / (last year - first year) for each row of a year distribution."""
    values = np.asarray([float(y) for y in years], dtype=np.float32)
    span = float(values.max() - values.min())
    expected = np.asarray(year_probs, dtype=np.float32) @ values
    return (expected - values.min()) / span if span else np.zeros(len(expected), dtype=np.float32)


def image_predictions(
    paths: Sequence[Path | str], probs: dict[str, Any], meta: CheckpointMeta, top_k: int
) -> list[ImagePrediction]:
    """Per-image answers from the probabilities of every task (coarse tasks filled from the fine one if needed).

    `probs` are numpy arrays or CPU tensors: the `.st` and the `.onnx` paths share this code.
    """
    probs, _ = with_implied_tasks(probs, meta)
    names = meta.tasks
    order = np.argsort(-probs[FINE], axis=1, kind="stable")[:, :top_k]
    years = modernity(probs["year"], names["year"]) if "year" in probs else None
    expected = probs["year"] @ np.asarray([float(y) for y in names["year"]], np.float32) if "year" in probs else None
    answers = []
    for row, path in enumerate(paths):
        coarse: dict[str, dict[str, Any] | None] = dict.fromkeys(COARSE)
        for task in COARSE:
            if task in probs:
                index = int(probs[task][row].argmax())
                coarse[task] = {"label": names[task][index], "score": round(float(probs[task][row, index]), 6)}
        if expected is not None and coarse["year"] is not None:
            coarse["year"]["expected"] = round(float(expected[row]), 2)
        top = [{"label": names[FINE][int(i)], "score": round(float(probs[FINE][row, i]), 6)} for i in order[row]]
        score = None if years is None else round(float(years[row]), 4)
        answers.append(ImagePrediction(str(path), top, coarse, score))
    return answers


def predict_batch(
    model: nn.Module, meta: CheckpointMeta, images: Tensor, names: Sequence[str], top_k: int = 5
) -> list[ImagePrediction]:
    """Answers for a batch of images already in the checkpoint's view (`view_transform`): `carcli serve`'s path."""
    import torch

    with torch.no_grad():
        probs = batch_probs(model.eval(), images, meta.temperatures)
    return image_predictions(names, probs, meta, top_k)
