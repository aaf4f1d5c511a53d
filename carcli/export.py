"""Exporting a checkpoint for deployment: ONNX (dynamic batch axis), TorchScript or OpenVINO IR, verified after
writing; ONNX optionally quantised to int8 (carcli.quantize).

The exported graph takes one input, `image`: a float32 batch (N, 3, img_size, img_size), preprocessed
as carcli's evaluation does (the checkpoint's evaluation view squashed to a square, normalised with its
mean/std), and gives one output per task the model predicts, named after the task (`model`,
`make`, `type`, `year`): (N, classes) logits (log-probabilities for an ensemble), already divided by
the checkpoint's calibration temperatures, so a softmax gives calibrated probabilities. The file
describes itself (carcli.deploy.export_info: input size, resize rule, mean/std, class names in
order, taxonomy, temperatures): ONNX metadata property `carcli`, TorchScript extra file
`carcli.json`, OpenVINO rt_info `carcli`. After writing, the file is run on a sample batch of
another size than the one exported with (onnxruntime, torch.jit.load, the OpenVINO runtime) and
compared with PyTorch; the largest absolute difference is reported.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from carcli.checkpoint_meta import CheckpointMeta
from carcli.deploy import EXTRA, INPUT_NAME, METADATA_KEY, export_info
from carcli.errors import CarcliError, UsageError
from carcli.files import atomic_output, check_output_file
from carcli.models.builder import load_model
from carcli.models.ensemble import predicted_tasks
from carcli.usage import EXPORT_FORMATS, check_export

QUANTIZE = ("int8",)
EXPORT_BATCH = 2
CHECK_BATCH = 3  # differs from EXPORT_BATCH, so the check also proves the batch axis is dynamic
PACKAGES = {
    "onnx": ("onnx", "onnxruntime", "onnxscript"),
    "torchscript": (),
    "openvino": ("onnx", "onnxscript", "openvino"),
}


@dataclass
class ExportResult:
    path: Path
    format: str
    input_shape: tuple[str, int, int, int]
    outputs: dict[str, int]  # output name (task) -> number of classes
    max_abs_diff: float
    file_bytes: int
    temperatures: dict[str, float] = field(default_factory=dict)
    quantized: Any = None  # a carcli.quantize.QuantReport with --quantize

    def rows(self) -> list[tuple[str, str]]:
        """(quantity, value) pairs for a table."""
        shape = " x ".join(str(d) for d in self.input_shape)
        rows = [
            ("file", f"{self.path} ({self.file_bytes / 2**20:.2f} MiB)"),
            ("input", f"{INPUT_NAME}: float32 {shape}, evaluation view squashed to a square, normalised"),
            ("outputs", ", ".join(f"{name} ({n})" for name, n in self.outputs.items())),
            (
                "max |fp32 ONNX - PyTorch|" if self.quantized else "max |exported - PyTorch|",
                f"{self.max_abs_diff:.2e} (batch {CHECK_BATCH})",
            ),
        ]
        if self.temperatures:
            applied = ", ".join(f"{task} {t:.3f}" for task, t in self.temperatures.items())
            rows.append(("calibration temperatures", f"{applied} (in the graph)"))
        return rows


class TaskOutputs(nn.Module):
    """A carcli model with a tuple of outputs, one per task, in a fixed order (exporters want tensors, not dicts)."""

    def __init__(self, model: nn.Module, tasks: list[str], temperatures: dict[str, float] | None = None) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks
        self.temperatures = [float((temperatures or {}).get(task, 1.0)) for task in tasks]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        logits = self.model(images)
        pairs = zip(self.tasks, self.temperatures, strict=True)
        return tuple(logits[task] if t == 1.0 else logits[task] / t for task, t in pairs)


def export_checkpoint(
    checkpoint: Path,
    fmt: str,
    out: Path | None = None,
    quantize: str | None = None,
    data: Path | None = None,
    calibration_images: int = 200,
) -> ExportResult:
    """Export `checkpoint` to `out` (default: beside it) in `fmt`, then check the file against PyTorch.

    With `quantize="int8"` (ONNX only) the file written is the int8 model, calibrated on
    `calibration_images` training images of `data` and compared with the fp32 one on its val split.
    """
    out = _check_request(checkpoint, fmt, out, quantize, data, calibration_images)
    model, meta = load_model(checkpoint)
    tasks = predicted_tasks(model)
    temperatures = meta.temperatures
    wrapper = TaskOutputs(model, tasks, temperatures).eval()
    size = meta.img_size
    info = export_info(meta, tasks, "log_probs" if meta.is_ensemble else "logits")
    check = _sample(meta, CHECK_BATCH)
    with torch.no_grad():
        expected = [t.numpy() for t in wrapper(check)]
    sample = _sample(meta, EXPORT_BATCH)
    report = None
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "openvino":
        got = _write_openvino(wrapper, sample, out, tasks, info, check)
    elif quantize:
        from carcli.quantize import quantize_int8

        with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
            fp32 = Path(scratch) / "fp32.onnx"
            _write_onnx(wrapper, sample, fp32, tasks, info)
            got = _run_onnx(fp32, check)
            report = quantize_int8(fp32, out, data, calibration_images)  # type: ignore[arg-type]
    else:
        with atomic_output(out) as tmp:
            if fmt == "onnx":
                _write_onnx(wrapper, sample, tmp, tasks, info)
                got = _run_onnx(tmp, check)
            else:
                _write_torchscript(wrapper, sample, tmp, info)
                got = _run_torchscript(tmp, check)
    diff = max(float(abs(a - b).max()) for a, b in zip(got, expected, strict=True))
    outputs = {task: meta.class_counts[task] for task in tasks}
    result = ExportResult(out, fmt, ("batch", 3, size, size), outputs, diff, out.stat().st_size, temperatures)
    result.quantized = report
    return result


def _check_request(
    checkpoint: Path, fmt: str, out: Path | None, quantize: str | None, data: Path | None, images: int
) -> Path:
    """Refuse what cannot work before any model is loaded; the output path."""
    check_export(checkpoint, fmt)
    if quantize is not None:
        if quantize not in QUANTIZE:
            raise UsageError(f"--quantize must be one of {', '.join(QUANTIZE)}")
        if fmt != "onnx":
            raise UsageError("--quantize int8 quantises an ONNX model: use --format onnx")
        if data is None:
            raise UsageError("--quantize int8 calibrates on images of a data set: give --data DIR")
        if images < 1:
            raise UsageError("--calibration-images must be at least 1")
    missing = [name for name in PACKAGES[fmt] if importlib.util.find_spec(name) is None]
    if missing:
        raise CarcliError(f"{fmt} export needs {', '.join(missing)}: {EXTRA}")
    suffix = ".int8.onnx" if quantize else EXPORT_FORMATS[fmt]
    out = out or checkpoint.with_name(checkpoint.stem + suffix)
    if out.resolve() == checkpoint.resolve():
        raise UsageError("-o would overwrite the checkpoint; choose another file")
    if fmt == "openvino" and out.suffix != ".xml":
        raise UsageError("-o: an OpenVINO model is an .xml file (its weights go to the .bin beside it)")
    check_output_file(out, "-o", needed_bytes=checkpoint.stat().st_size if checkpoint.is_file() else 0)
    return out


def _sample(meta: CheckpointMeta, batch: int) -> Tensor:
    """A seeded batch of random [0, 1] images, normalised as the model expects."""
    size = meta.img_size
    images = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(batch))
    mean = torch.tensor(meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(meta.std).view(1, 3, 1, 1)
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
    onnx.helper.set_model_props(graph, {METADATA_KEY: json.dumps(info)})
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


def _write_openvino(
    model: nn.Module, sample: Tensor, out: Path, tasks: list[str], info: dict[str, Any], check: Tensor
) -> list[Any]:
    """The ONNX graph converted to OpenVINO IR (.xml + .bin, fp32), run on `check`; both files land together."""
    import openvino

    out.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        _write_onnx(model, sample, scratch / "model.onnx", tasks, info)
        with _quiet():
            converted = openvino.convert_model(str(scratch / "model.onnx"))
        converted.set_rt_info(json.dumps(info), [METADATA_KEY])
        openvino.save_model(converted, str(scratch / out.name), compress_to_fp16=False)
        compiled = openvino.Core().compile_model(str(scratch / out.name), "CPU")
        results = compiled(check.numpy())
        got = [results[compiled.output(task)] for task in tasks]
        os.replace(scratch / out.with_suffix(".bin").name, out.with_suffix(".bin"))
        os.replace(scratch / out.name, out)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return got
