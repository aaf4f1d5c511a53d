"""Deployable models (issue 18): self-describing exports, the ONNX path of predict/eval without torch, int8 and
OpenVINO, ensembles and pruned models, calibration, the docs snippet, and bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from carcli.calibration import expected_calibration_error, fit_temperature, tempered
from carcli.checkpoint import read_metadata
from carcli.cli import app
from carcli.data.layouts import Sample
from carcli.deploy import OnnxModel
from carcli.errors import CarcliError
from carcli.evaluate import evaluate
from carcli.export import export_checkpoint
from carcli.inference import sample_probs
from carcli.models.builder import load_model
from carcli.predict import predict

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def onnx_export(trained_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "trained.onnx"
    export_checkpoint(trained_checkpoint, "onnx", out)
    return out


def _val_paths(data: Path) -> list[Path]:
    return sorted((data / "val").rglob("*.jpg"))


def test_onnx_eval_and_predict_answer_as_the_checkpoint(trained_checkpoint, onnx_export, real_folder_set, tmp_path):
    st = evaluate(trained_checkpoint, real_folder_set, out=tmp_path / "st").report
    ox = evaluate(onnx_export, real_folder_set, out=tmp_path / "onnx").report
    assert ox["n_images"] == st["n_images"] == 20 and set(ox["tasks"]) == set(st["tasks"])
    for task, metrics in st["tasks"].items():
        assert ox["tasks"][task]["top1"] == metrics["top1"], task
        assert ox["tasks"][task]["loss"] == pytest.approx(metrics["loss"], abs=1e-4), task
    photos = [str(p) for p in _val_paths(real_folder_set)[:6]]
    a = [p.to_json() for p in predict(photos, trained_checkpoint, top_k=3).predictions]
    b = [p.to_json() for p in predict(photos, onnx_export, top_k=3).predictions]
    assert [x["image"] for x in a] == [x["image"] for x in b] and a[0].keys() == b[0].keys()
    for x, y in zip(a, b, strict=True):
        assert [t["label"] for t in x["top_k"]] == [t["label"] for t in y["top_k"]]
        assert np.allclose([t["score"] for t in x["top_k"]], [t["score"] for t in y["top_k"]], atol=1e-4)
        assert x["make"]["label"] == y["make"]["label"] and x["modernity"] == pytest.approx(y["modernity"], abs=1e-3)


def test_the_exported_file_describes_itself(onnx_export, trained_checkpoint):
    meta = read_metadata(trained_checkpoint)
    info = OnnxModel.load(onnx_export).info
    assert info["preprocess"]["resize"] == "view" and info["preprocess"]["crop"] == "centre"
    assert info["preprocess"]["view_aspect"] == meta.view_aspect == pytest.approx(4 / 3)
    assert info["preprocess"]["crop_ratio"] == 1.0 and info["preprocess"]["crop_size"] == 64
    assert info["tasks"] == meta.tasks and info["taxonomy"] == meta.taxonomy.to_dict()
    assert info["mean"] == meta.mean and info["outputs"] == ["model", "make", "type", "year"]
    assert info["calibration"] == {"temperatures": {}, "applied_in_graph": False}


def test_onnx_predict_and_eval_do_not_import_torch(onnx_export, real_folder_set, tmp_path):
    photo = str(_val_paths(real_folder_set)[0])
    for args in (
        ["predict", photo, "--model", str(onnx_export), "--json"],
        ["eval", str(onnx_export), "--data", str(real_folder_set), "--out", str(tmp_path / "e"), "--json"],
    ):
        code = (
            "import sys; from carcli.cli import app\n"
            f"try:\n    app({args!r})\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
            "print(sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))"
        )
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        lines = done.stdout.strip().splitlines()
        assert lines[-1] == "[]", args[0]
        assert json.loads(lines[0])["image" if args[0] == "predict" else "n_images"]


def test_the_docs_snippet_answers_as_pytorch(onnx_export, trained_checkpoint, real_folder_set):
    text = (ROOT / "docs" / "export.md").read_text()
    snippet = re.search(r"<!-- snippet: onnx-numpy-pil -->\n```python\n(.*?)```", text, re.S).group(1)
    assert "carcli" not in re.sub(r'"carcli"|carcli export|carcli\'s', "", snippet)  # numpy + PIL + onnxruntime only
    photo = _val_paths(real_folder_set)[3]
    snippet = snippet.replace('"runs/x/best.onnx"', repr(str(onnx_export))).replace('"car.jpg"', repr(str(photo)))
    scope: dict = {}
    exec(compile(snippet, "export.md", "exec"), scope)
    model, meta = load_model(trained_checkpoint)
    expected = sample_probs(model, meta, [Sample(photo, 0, "test")])
    for task, p in expected.items():
        assert np.allclose(scope["probs"][task], p.numpy(), atol=1e-4), task


def test_int8_is_within_two_points_of_fp32(onnx_export, real_folder_set, tmp_path):
    from carcli.quantize import quantize_int8

    report = quantize_int8(onnx_export, tmp_path / "q.onnx", real_folder_set, images=40)
    assert report.calibration_images == 40 and report.images == 20
    assert report.bytes["int8"] < 0.5 * report.bytes["fp32"]
    for task, top1 in report.top1["fp32"].items():
        assert abs(report.top1["int8"][task] - top1) <= 0.02 + 1e-9, task
    assert OnnxModel.load(tmp_path / "q.onnx").info["outputs"] == ["model", "make", "type", "year"]


@pytest.mark.slow
def test_openvino_matches_pytorch(untrained_members, tmp_path):
    import openvino

    result = export_checkpoint(untrained_members[0], "openvino", tmp_path / "m.xml")
    assert result.max_abs_diff < 1e-3 and (tmp_path / "m.bin").is_file()
    model, _ = load_model(untrained_members[0])
    images = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    compiled = openvino.Core().compile_model(str(tmp_path / "m.xml"), "CPU")
    got = compiled(images.numpy())
    with torch.no_grad():
        expected = model(images)
    for task in ("model", "make", "type", "year"):
        assert abs(torch.from_numpy(got[compiled.output(task)]) - expected[task]).max() < 1e-3
    info = json.loads(openvino.Core().read_model(str(tmp_path / "m.xml")).get_rt_info(["carcli"]).astype(str))
    assert info["img_size"] == 64


@pytest.mark.slow
def test_ensemble_and_pruned_checkpoints_export_to_onnx(untrained_members, real_folder_set, tmp_path):
    from carcli.ensemble import build_ensemble
    from carcli.prune import prune_checkpoint

    build_ensemble([untrained_members[2], untrained_members[0]], real_folder_set, "mean", tmp_path / "e.st")
    prune_checkpoint(untrained_members[1], real_folder_set, "channel", 0.5, out=tmp_path / "p.st")
    photos = [str(p) for p in _val_paths(real_folder_set)[:3]]
    for name in ("e", "p"):
        result = export_checkpoint(tmp_path / f"{name}.st", "onnx")
        assert result.max_abs_diff < 1e-4, name
        a = predict(photos, tmp_path / f"{name}.st").predictions
        b = predict(photos, tmp_path / f"{name}.onnx").predictions
        assert [p.top_k[0]["label"] for p in a] == [p.top_k[0]["label"] for p in b], name
    assert OnnxModel.load(tmp_path / "e.onnx").info["output_kind"] == "log_probs"


def test_temperature_scaling_lowers_ece_on_held_out_data():
    # x = noise + 1.5 on the true class: the exact posterior is softmax(1.5 x); a model that outputs 3 x is
    # over-confident (as a network trained to zero loss is) and its right temperature is 2
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 8, 600)
    x = rng.normal(0.0, 1.0, (600, 8))
    x[np.arange(600), labels] += 1.5
    probs = np.exp(3 * x) / np.exp(3 * x).sum(1, keepdims=True)
    fit, held = slice(0, 300), slice(300, 600)
    t = fit_temperature(probs[fit], labels[fit])
    assert 1.6 < t < 2.5
    before = expected_calibration_error(probs[held], labels[held])
    after = expected_calibration_error(tempered(probs[held], t), labels[held])
    assert after < 0.5 * before
    assert (tempered(probs, t).argmax(1) == probs.argmax(1)).all()  # a temperature never changes a prediction


def test_calibrate_stores_temperatures_that_predict_and_export_apply(trained_checkpoint, real_folder_set, tmp_path):
    before = trained_checkpoint.read_bytes()
    out = tmp_path / "cal.st"
    args = ["eval", str(trained_checkpoint), "--data", str(real_folder_set), "--out", str(tmp_path / "r")]
    result = runner.invoke(app, [*args, "--calibrate", "-o", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    calibration = report["calibration"]
    assert set(calibration["temperatures"]) == {"model", "make", "type", "year"}
    assert report["tasks"]["model"]["ece"] == pytest.approx(calibration["ece_after"]["model"])
    assert trained_checkpoint.read_bytes() == before  # -o leaves the checkpoint alone
    assert read_metadata(out).calibration["temperatures"] == calibration["temperatures"]
    assert (tmp_path / "r" / "reliability.png").stat().st_size > 10_000
    photo = [str(_val_paths(real_folder_set)[0])]
    plain, tempered_answer = predict(photo, trained_checkpoint), predict(photo, out)
    t = calibration["temperatures"]["model"]
    model, meta = load_model(trained_checkpoint)
    logits = torch.log(sample_probs(model, meta, [Sample(Path(photo[0]), 0, "test")])["model"])
    expected = (logits / t).softmax(1).max().item()
    assert tempered_answer.predictions[0].top_k[0]["score"] == pytest.approx(expected, abs=1e-5)
    assert tempered_answer.predictions[0].top_k[0]["label"] == plain.predictions[0].top_k[0]["label"]
    exported = export_checkpoint(out, "torchscript", tmp_path / "cal.pt")
    assert exported.temperatures == calibration["temperatures"] and exported.max_abs_diff < 1e-4


def test_bad_onnx_files_are_one_line(tmp_path, real_folder_set):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["model"])], "plain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("model", TensorProto.FLOAT, [1, 3])],
    )  # fmt: skip
    onnx.save(helper.make_model(graph), str(tmp_path / "plain.onnx"))
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07garbage" * 50)
    photo = str(_val_paths(real_folder_set)[0])
    for name, words in (
        ("plain", "is not a carcli export"),
        ("broken", "not a readable ONNX model"),
        ("none", "not found"),
    ):
        result = runner.invoke(app, ["predict", photo, "--model", str(tmp_path / f"{name}.onnx")])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1 and words in lines[0], result.output


def test_bad_export_requests_are_one_line(untrained_members, tmp_path, monkeypatch):
    st = str(untrained_members[0])
    cases = [
        (["--format", "onnx", "--quantize", "int8"], 2, "give --data DIR"),
        (["--format", "torchscript", "--quantize", "int8", "--data", "x"], 2, "use --format onnx"),
        (["--format", "onnx", "--quantize", "int4", "--data", "x"], 2, "--quantize must be one of int8"),
    ]
    for args, code, words in cases:
        result = runner.invoke(app, ["export", st, *args])
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == code and len(lines) == 1 and words in lines[0], result.output
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else real(name, *a))
    with pytest.raises(CarcliError, match=r'openvino export needs openvino: pip install "carcli\[export\]"'):
        export_checkpoint(untrained_members[0], "openvino", tmp_path / "m.xml")
    assert not list(tmp_path.iterdir())


def test_eval_refuses_what_an_onnx_model_cannot_do(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")  # refused for the flag, before the file is read
    result = runner.invoke(app, ["eval", str(tmp_path / "m.onnx"), "--tta"])
    assert result.exit_code == 2 and "need the .st checkpoint" in result.output
