"""Exported models without torch: the JSON an export carries, carcli's eval view in numpy + PIL, and ONNX Runtime.

`export_info` is the one definition of the self-description that `carcli export` writes into every
file (ONNX metadata property `carcli`, TorchScript extra file `carcli.json`, OpenVINO rt_info
`carcli`). `OnnxModel` reads it back and runs a `.onnx` file on image files exactly as `carcli eval`
feeds a checkpoint: decode (JPEGs at reduced scale when that keeps the input size), resized so that the
evaluation view (the centre crop of at most `eval_aspect` long side over short side) becomes S x S
(bilinear, antialiased: PIL's resize, which torchvision uses for PIL images too), that centre S x S
square, RGB scaled to [0, 1], normalised with mean/std. Only numpy, PIL and
onnxruntime are imported, so `carcli predict model.onnx` starts in a fraction of the `.st` time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.images import open_rgb, view_resize
from carcli.data.layouts import Sample
from carcli.errors import CarcliError

METADATA_KEY = "carcli"
INFO_FORMAT = 1
INPUT_NAME = "image"
CROP_RATIO = 1.0  # the centre crop's side over the resized shorter side
EXTRA = 'pip install "carcli[export]"'
REQUIRED = ("outputs", "img_size", "mean", "std", "tasks", "taxonomy")
TRAIN_KEYS = ("data", "val_fraction", "seed", "crop_to_bbox", "bbox_margin")


def export_info(meta: CheckpointMeta, outputs: Sequence[str], output_kind: str) -> dict[str, Any]:
    """The self-description of an exported model of checkpoint `meta` whose graph outputs are `outputs`."""
    size = meta.img_size
    train = meta.train or {}
    temperatures = meta.temperatures
    return {
        "format": INFO_FORMAT,
        "input": INPUT_NAME,
        "outputs": list(outputs),
        "output_kind": output_kind,
        "img_size": size,
        "mean": list(meta.mean),
        "std": list(meta.std),
        "preprocess": {
            "input_layout": "NCHW float32, RGB",
            "resize": "shorter_side" if meta.view_aspect == 1 else "view",  # view: the view_aspect crop to a square
            "view_aspect": meta.view_aspect,
            "resize_to": round(size / CROP_RATIO),
            "interpolation": "bilinear, antialiased (PIL Image.resize)",
            "crop": "centre",
            "crop_size": size,
            "crop_ratio": CROP_RATIO,
            "scale": "1/255",
            "normalise": "(x - mean) / std, per channel",
        },
        "tasks": meta.tasks,
        "taxonomy": meta.taxonomy.to_dict(),
        "calibration": {"temperatures": dict(temperatures), "applied_in_graph": bool(temperatures)},
        "train": {k: train[k] for k in TRAIN_KEYS if k in train},
        "source": {"arch": meta.arch, "head": meta.head, "version": meta.version},
    }


def is_onnx(path: Path | None) -> bool:
    return path is not None and path.suffix.lower() == ".onnx"


def eval_view(img: Image.Image, meta: CheckpointMeta) -> np.ndarray:
    """carcli's eval preprocessing of an RGB image for the model of `meta`: (3, S, S) float32, as torchvision's
    eval_transform (`carcli.data.transforms.CentreView`)."""
    size, mean, std = meta.img_size, meta.mean, meta.std
    new = view_resize(img.width, img.height, size, meta.view_aspect)
    img = img.resize(new, Image.Resampling.BILINEAR)
    left, top = round((new[0] - size) / 2), round((new[1] - size) / 2)
    img = img.crop((left, top, left + size, top + size))
    x = np.asarray(img, dtype=np.float32) / 255
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def parse_info(raw: str | None, source: str) -> dict[str, Any]:
    """The carcli self-description of an exported file; a clear CarcliError for anything else."""
    if raw is None:
        raise CarcliError(f"{source} is not a carcli export (no carcli metadata); make one with `carcli export`")
    try:
        info = json.loads(raw)
    except json.JSONDecodeError:
        raise CarcliError(f"{source}: its carcli metadata is not valid JSON") from None
    missing = [k for k in REQUIRED if not isinstance(info, dict) or k not in info]
    if missing:
        raise CarcliError(f"{source}: its carcli metadata lacks {', '.join(missing)} (exported by an older carcli?)")
    return info


@dataclass
class OnnxModel:
    """An exported `.onnx` file, its self-description (`info`, as `export_info` wrote it; `meta`, the checkpoint
    metadata it carries) and an ONNX Runtime session."""

    path: Path
    info: dict[str, Any]
    meta: CheckpointMeta
    session: Any

    @classmethod
    def load(cls, path: Path, threads: int | None = None) -> OnnxModel:
        try:
            import onnxruntime
        except ImportError:
            raise CarcliError(f"running .onnx models needs onnxruntime: {EXTRA}") from None
        if not path.is_file():
            raise CarcliError(f"model not found: {path}")
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise CarcliError(f"{path} is not a readable ONNX model (corrupt or truncated?)") from exc
        raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
        info = parse_info(raw, str(path))
        names = [o.name for o in session.get_outputs()]
        if names != info["outputs"]:
            raise CarcliError(f"{path}: its outputs {names} differ from its carcli metadata {info['outputs']}")
        return cls(path, info, CheckpointMeta.from_export(info), session)

    @property
    def outputs(self) -> list[str]:
        """The graph's output tasks, in output order."""
        return self.meta.outputs or []

    def batch_probs(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Softmax probabilities per output task for a preprocessed (N, 3, S, S) batch."""
        logits = self.session.run(None, {INPUT_NAME: images})
        return {task: softmax(z) for task, z in zip(self.outputs, logits, strict=True)}

    def sample_probs(
        self,
        samples: Sequence[Sample],
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
        crop_margin: float | None = None,
    ) -> dict[str, np.ndarray]:
        """Probabilities per task for `samples`, decoded and preprocessed in threads, batched through the session."""
        size = self.meta.img_size

        def load(sample: Sample) -> np.ndarray:
            box = sample.bbox if crop_margin is not None else None
            return eval_view(open_rgb(sample.path, size, box, crop_margin or 0.0), self.meta)

        chunks: dict[str, list[np.ndarray]] = {task: [] for task in self.outputs}
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for start in range(0, len(samples), batch_size):
                batch = np.stack(list(pool.map(load, samples[start : start + batch_size])))
                for task, p in self.batch_probs(batch).items():
                    chunks[task].append(p)
                if progress:
                    progress(min(start + batch_size, len(samples)))
        empty = {task: np.zeros((0, self.meta.class_counts[task]), np.float32) for task in chunks}
        return {task: np.concatenate(parts) if parts else empty[task] for task, parts in chunks.items()}
