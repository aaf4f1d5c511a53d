"""Exporting a checkpoint for deployment: ONNX (dynamic batch axis) or TorchScript, verified after writing.

The exported graph takes one input, `image`: a float32 batch (N, 3, img_size, img_size), resized and
normalised as the checkpoint's metadata says, and gives one output per task the model predicts,
named after the task (`model`, `make`, `type`, `year`): (N, classes) logits (log-probabilities for
an ensemble). The class names, input size and mean/std travel inside the file (ONNX metadata
property `carcli`; TorchScript extra file `carcli.json`). After writing, the file is run on a sample
batch of another size than the one exported with (onnxruntime for ONNX, torch.jit.load for
TorchScript) and compared with PyTorch; the largest absolute difference is reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from carcli.checkpoint import load_model
from carcli.ensemble import predicted_tasks
from carcli.errors import CarcliError, UsageError
from carcli.files import atomic_output
from carcli.usage import EXPORT_FORMATS, check_export

INPUT_NAME = "image"
EXPORT_BATCH = 2
CHECK_BATCH = 3  # differs from EXPORT_BATCH, so the check also proves the batch axis is dynamic
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[str, int, int, int]
    outputs: dict[str, int]  # output name (task) -> number of classes
    max_abs_diff: float
    file_bytes: int

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs for a table."""
        shape = " x ".join(str(d) for d in self.input_shape)
        return [
            ("file", f"{self.path} ({self.file_bytes / 2**20:.2f} MiB)"),
            ("input", f"{INPUT_NAME}: float32 {shape}, normalised"),
            ("outputs", ", ".join(f"{name} ({n})" for name, n in self.outputs.items())),
            ("max |exported - PyTorch|", f"{self.max_abs_diff:.2e} (batch {CHECK_BATCH})"),
        ]


class TaskOutputs(nn.Module):
    """A carcli model with a tuple of outputs, one per task, in a fixed order (exporters want tensors, not dicts)."""

    def __init__(self, model: nn.Module, tasks: list[str]) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        logits = self.model(images)
        return tuple(logits[task] for task in self.tasks)


def export_checkpoint(checkpoint: Path, fmt: str, out: Path | None = None) -> ExportResult:
    """Export `checkpoint` to `out` (default: beside it) in `fmt`, then check the file against PyTorch."""
    check_export(checkpoint, fmt)
    if fmt == "onnx":
        _require_onnx()
    out = out or checkpoint.with_name(checkpoint.stem + EXPORT_FORMATS[fmt])
    if out.resolve() == checkpoint.resolve():
        raise UsageError("-o would overwrite the checkpoint; choose another file")
    model, meta = load_model(checkpoint)
    tasks = predicted_tasks(model)
    wrapper = TaskOutputs(model, tasks).eval()
    size = int(meta["img_size"])
    info = {
        "input": INPUT_NAME,
        "outputs": tasks,
        "img_size": size,
        "mean": meta["mean"],
        "std": meta["std"],
        "tasks": {task: meta["tasks"][task] for task in tasks},
    }
    check = _sample(meta, CHECK_BATCH)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(check)]
    with atomic_output(out) as tmp:
        if fmt == "onnx":
            _write_onnx(wrapper, _sample(meta, EXPORT_BATCH), tmp, tasks, info)
            got = _run_onnx(tmp, check)
        else:
            _write_torchscript(wrapper, _sample(meta, EXPORT_BATCH), tmp, info)
            got = _run_torchscript(tmp, check)
    diff = max(float(abs(a - b).max()) for a, b in zip(got, expected, strict=True))
    outputs = {task: len(meta["tasks"][task]) for task in tasks}
    return ExportResult(out, fmt, ("batch", 3, size, size), outputs, diff, out.stat().st_size)


def _require_onnx() -> None:
    missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise CarcliError(f"ONNX export needs {', '.join(missing)}: pip install carcli[export]")


def _sample(meta: dict[str, Any], batch: int) -> Tensor:
    """A seeded batch of random [0, 1] images, normalised as the model expects."""
    size = int(meta["img_size"])
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    mean = torch.tensor(meta["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(meta["std"]).view(1, 3, 1, 1)
    return (images - mean) / std


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters warn about their own deprecations and trace details; none of it is the user's business."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _write_onnx(model: nn.Module, sample: Tensor, path: Path, tasks: list[str], info: dict[str, Any]) -> None:
    import onnx

    with _quiet():
        torch.onnx.export(
            model,
            (sample,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=tasks,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    graph = onnx.load(str(path))
    onnx.helper.set_model_props(graph, {"carcli": json.dumps(info)})
    onnx.save(graph, str(path))


def _run_onnx(path: Path, images: Tensor) -> list[Any]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {INPUT_NAME: images.numpy()})


def _write_torchscript(model: nn.Module, sample: Tensor, path: Path, info: dict[str, Any]) -> None:
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(model, sample)
        torch.jit.save(traced, str(path), _extra_files={"carcli.json": json.dumps(info)})


def _run_torchscript(path: Path, images: Tensor) -> list[Any]:
    with _quiet(), torch.no_grad():
        loaded = torch.jit.load(str(path))
        return [t.numpy() for t in loaded(images)]
