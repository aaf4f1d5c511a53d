"""The command line end to end: training writes a loadable checkpoint; user errors are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from carcli.cli import app
from carcli.models.builder import load_model

runner = CliRunner()
FAST = ["--arch", "ghostnet", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--seed", "1"]


def run(*args: str):
    return runner.invoke(app, list(args))


def test_cli_import_stays_light():
    code = "import sys, carcli.cli; print(sorted(m for m in ('torch', 'timm', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_version_and_help():
    assert run("--version").stdout.strip().startswith("carcli ")
    result = run("--help")
    assert result.exit_code == 0
    for command in ("fetch-data", "train", "eval", "prune", "ensemble", "predict", "archs"):
        assert command in result.stdout


def test_train_writes_a_run_folder_with_a_loadable_checkpoint(real_folder_set, tmp_path):
    out = tmp_path / "run"
    result = run("train", "--data", str(real_folder_set), "--head", "mtl", "--epochs", "2", "--out", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert {"best.st", "last.st", "metrics.jsonl", "config.json"} <= {p.name for p in out.iterdir()}
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]
    assert "epoch 2/2: train loss" in result.output  # not a terminal: one plain line per epoch, no live bars
    assert set(lines[0]["val_top1"]) == {"model", "make", "type", "year"}
    for key in ("lr", "train_loss", "val_loss", "val_top5", "images_per_s", "seconds"):
        assert key in lines[0]
    config = json.loads((out / "config.json").read_text())
    assert config["head"] == "mtl" and config["epochs"] == 2 and config["img_size"] == 64

    model, meta = load_model(out / "best.st")
    assert meta.arch == "ghostnet" and meta.img_size == 64
    assert meta.tasks["make"] == ["Audi", "BMW", "Chevrolet"]
    assert len(meta.tasks["model"]) == 5
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 64))
    assert logits["model"].shape == (1, 5) and logits["make"].shape == (1, 3)
    assert "training finished" in result.output


def test_corrupt_images_are_skipped_and_listed(real_folder_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(real_folder_set, data)
    first_class = sorted((data / "train").iterdir())[0]
    good = sorted(first_class.iterdir())[0]
    (first_class / "truncated.jpg").write_bytes(good.read_bytes()[:600])
    (first_class / "garbage.jpg").write_bytes(b"this is not a jpeg")
    out = tmp_path / "run"
    result = run("train", "--data", str(data), "--epochs", "1", "--out", str(out), *FAST)
    assert result.exit_code == 0, result.output
    assert "skipped 2 unreadable images" in result.output
    listed = (out / "unreadable.txt").read_text().splitlines()
    assert sorted(Path(p).name for p in listed) == ["garbage.jpg", "truncated.jpg"]


def test_existing_run_is_never_overwritten(real_folder_set, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "best.st").write_bytes(b"precious")
    result = run("train", "--data", str(real_folder_set), "--out", str(out), *FAST)
    assert result.exit_code == 1
    assert "already holds a run" in result.output
    assert (out / "best.st").read_bytes() == b"precious"


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--data", "/no/such/folder"], 1, "not found"),
        (["--arch", "alexnet9000"], 2, "unknown architecture"),
        (["--head", "quadratic"], 2, "unknown head"),
        (["--epochs", "0"], 2, "--epochs"),
        (["--epochs", "many"], 2, "--epochs"),
        (["--device", "tpu"], 2, "--device"),
        (["--loss-weights", "make=lots"], 2, "--loss-weights"),
        (["--loss-weights", "maek=0.5", "--head", "mtl"], 2, "predicts only"),
        (["--loss-weights", "make=0.5"], 2, "predicts only"),  # the linear head has no make output
        (["--weights", "/no/such/weights.pth"], 1, "weights file not found"),
    ],
)
def test_user_errors_are_one_line(real_folder_set, tmp_path, args, code, words):
    base = ["train", "--data", str(real_folder_set), "--out", str(tmp_path / "r"), *FAST]
    result = run(*base, *args)
    assert result.exit_code == code
    assert words in _one_error_line(result)
    assert not (tmp_path / "r").exists()  # a refused run leaves no folder behind


def test_mtl_on_plain_class_names_is_refused(tmp_path):
    from PIL import Image

    for split, n in (("train", 3), ("val", 1)):
        for cls in ("striped", "dotted"):
            folder = tmp_path / "patterns" / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 40), (i * 40, 0, 0)).save(folder / f"{i}.png")
    result = run("train", "--data", str(tmp_path / "patterns"), "--head", "mtl", "--out", str(tmp_path / "r"), *FAST)
    assert result.exit_code == 2
    assert "--head linear" in _one_error_line(result)


@pytest.mark.slow
def test_readme_main_job_trains_on_the_demo_set(tmp_path):
    """`carcli train --arch ghostnet` with every default, as the README says, in a fresh folder."""
    env = {**os.environ, "CARCLI_HOME": str(tmp_path / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "carcli", "train", "--arch", "ghostnet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "demo" in proc.stdout
    [best] = list((tmp_path / "runs").glob("*/best.st"))
    _, meta = load_model(best)
    classes = len(meta.tasks["model"])
    assert meta.metrics["top1"]["model"] > 3 / classes  # far above chance


def test_pretrained_without_a_hub_points_to_weights(real_folder_set, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "TORCH_HOME": str(tmp_path / "th")}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "carcli",
            "train",
            "--data",
            str(real_folder_set),
            "--out",
            str(tmp_path / "r"),
            "--pretrained",
            *FAST,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--weights" in lines[0] and "Traceback" not in proc.stderr
