"""Export: ONNX and TorchScript files with one named output per task that match PyTorch; a clear missing-extra error."""

from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from typer.testing import CliRunner

from carcli.cli import app
from carcli.errors import CarcliError
from carcli.export import export_checkpoint
from carcli.models.builder import load_model

runner = CliRunner()


def _reference(checkpoint, batch: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, meta = load_model(checkpoint)
    images = torch.randn(batch, 3, meta.img_size, meta.img_size, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return images, model(images)


def test_onnx_matches_pytorch_with_a_dynamic_batch(untrained_members, tmp_path):
    import onnx
    import onnxruntime

    out = tmp_path / "a.onnx"
    result = runner.invoke(app, ["export", str(untrained_members[0]), "--format", "onnx", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "max |exported - PyTorch|" in result.output
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["model", "make", "type", "year"]
    images, expected = _reference(untrained_members[0], 5)  # neither the export nor the check batch
    got = session.run(None, {"image": images.numpy()})
    for name, array in zip(["model", "make", "type", "year"], got, strict=True):
        assert array.shape == tuple(expected[name].shape)
        assert abs(torch.from_numpy(array) - expected[name]).max() < 1e-4
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    info = json.loads(props["carcli"])
    assert info["img_size"] == 64 and info["outputs"] == ["model", "make", "type", "year"]
    assert len(info["tasks"]["make"]) == 3


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated in favour of torch.export
def test_torchscript_matches_pytorch_and_carries_its_metadata(untrained_members, tmp_path):
    result = export_checkpoint(untrained_members[1], "torchscript", tmp_path / "b.pt")
    assert result.max_abs_diff < 1e-4 and result.outputs == {"model": 5}
    extra = {"carcli.json": ""}
    loaded = torch.jit.load(str(tmp_path / "b.pt"), _extra_files=extra)
    images, expected = _reference(untrained_members[1], 4)
    with torch.no_grad():
        (logits,) = loaded(images)
    assert abs(logits - expected["model"]).max() < 1e-4
    assert json.loads(extra["carcli.json"])["mean"] == [0.5, 0.5, 0.5]


def test_an_ensemble_exports_too(untrained_members, real_folder_set, tmp_path):
    from carcli.ensemble import build_ensemble

    build_ensemble([untrained_members[2], untrained_members[0]], real_folder_set, "mean", tmp_path / "e.st")
    result = export_checkpoint(tmp_path / "e.st", "torchscript")
    assert result.path == tmp_path / "e.torchscript.pt" and result.max_abs_diff < 1e-4
    assert result.input_shape == ("batch", 3, 64, 64)


def test_missing_onnx_names_the_extra(untrained_members, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    with pytest.raises(CarcliError, match=r"pip install \"carcli\[export\]\""):
        export_checkpoint(untrained_members[0], "onnx", tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def test_unknown_format_is_a_usage_error(untrained_members):
    result = runner.invoke(app, ["export", str(untrained_members[0]), "--format", "tflite"])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and "--format must be one of onnx, torchscript" in lines[0]
