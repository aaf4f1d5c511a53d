"""carcli predict: files, folders and globs with bad files reported; JSON Lines and CSV; modernity; the checkpoint."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_untrained_checkpoint
from typer.testing import CliRunner

from carcli.cli import app
from carcli.data.layouts import Sample
from carcli.inference import modernity, sample_probs
from carcli.models.builder import load_model
from carcli.predict import gather_images, newest_checkpoint

JSON_KEYS = ["image", "top_k", "make", "type", "year", "modernity"]
runner = CliRunner()


@pytest.fixture(scope="module")
def mixed_folder(real_folder_set, tmp_path_factory) -> Path:
    """Six real photos (one in a subfolder), a truncated JPEG, a text file and a hidden file."""
    root = tmp_path_factory.mktemp("mixed")
    photos = sorted((real_folder_set / "val").rglob("*.jpg"))[::3][:6]
    for src in photos[:5]:
        shutil.copy(src, root / src.name)
    (root / "more").mkdir()
    shutil.copy(photos[5], root / "more" / photos[5].name)
    (root / "truncated.jpg").write_bytes(photos[0].read_bytes()[:700])
    (root / "notes.txt").write_text("not a picture")
    (root / ".DS_Store").write_bytes(b"\0\1")
    return root


def _one_error_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_gather_reports_the_corrupt_and_the_non_image_and_keeps_the_rest(mixed_folder):
    paths, skipped = gather_images([str(mixed_folder), str(mixed_folder / "nothing.jpg")])
    assert len(paths) == 6 and all(p.suffix == ".jpg" and p.name != "truncated.jpg" for p in paths)
    assert sorted((Path(name).name, why) for name, why in skipped) == [
        ("notes.txt", "not an image"),
        ("nothing.jpg", "not found"),
        ("truncated.jpg", "corrupt or truncated image"),
    ]
    globbed, missed = gather_images([str(mixed_folder / "*.jpg"), str(mixed_folder / "*.webp")])
    assert len(globbed) == 5 and missed[0][1] == "no file matches this pattern"


def test_predict_json_lines_on_a_folder_with_bad_files(mixed_folder, trained_checkpoint, tmp_path):
    out_csv = tmp_path / "p.csv"
    args = ["predict", str(mixed_folder), "--model", str(trained_checkpoint), "--json", "--top-k", "3"]
    result = runner.invoke(app, [*args, "--csv", str(out_csv)])
    assert result.exit_code == 0, result.output
    assert "notes.txt: not an image" in result.stderr
    assert "truncated.jpg: corrupt or truncated image" in result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == 6
    model, meta = load_model(trained_checkpoint)
    paths = [Path(a["image"]) for a in answers]
    probs = sample_probs(model, meta, [Sample(p, 0, "test") for p in paths])
    years = [int(y) for y in meta.tasks["year"]]
    for row, answer in enumerate(answers):
        assert list(answer) == JSON_KEYS
        assert len(answer["top_k"]) == 3
        scores = [item["score"] for item in answer["top_k"]]
        assert scores == sorted(scores, reverse=True)
        best = int(probs["model"][row].argmax())
        assert answer["top_k"][0]["label"] == meta.tasks["model"][best]
        assert scores[0] == pytest.approx(float(probs["model"][row, best]), abs=1e-5)
        for task in ("make", "type", "year"):
            assert answer[task]["label"] == meta.tasks[task][int(probs[task][row].argmax())]
        expected = sum(p * y for p, y in zip(probs["year"][row].tolist(), years, strict=True))
        assert answer["year"]["expected"] == pytest.approx(expected, abs=0.01)
        assert answer["modernity"] == pytest.approx((expected - min(years)) / (max(years) - min(years)), abs=1e-3)
    with out_csv.open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["image"] for r in rows] == [a["image"] for a in answers]
    assert [r["label_1"] for r in rows] == [a["top_k"][0]["label"] for a in answers]
    assert [float(r["modernity"]) for r in rows] == [a["modernity"] for a in answers]


def test_predict_table_names_the_newest_run_checkpoint(trained_checkpoint, mixed_folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    older, newer = Path("runs/a/best.st"), Path("runs/b/best.st")
    for path in (newer, older):
        path.parent.mkdir(parents=True)
        shutil.copy(trained_checkpoint, path)
    os.utime(older, (1_000_000, 1_000_000))
    assert newest_checkpoint(Path("runs")) == newer
    photo = next(mixed_folder.glob("*.jpg"))
    result = runner.invoke(app, ["predict", str(photo)])
    assert result.exit_code == 0, result.output
    assert f"using the newest checkpoint: {newer}" in result.stderr
    _, meta = load_model(trained_checkpoint)
    assert str(photo) in result.stdout and "modernity" in result.stdout
    assert any(name in result.stdout for name in meta.tasks["model"])


def test_plain_class_names_give_null_coarse_answers(tmp_path, mixed_folder):
    ckpt = write_untrained_checkpoint(tmp_path / "plain.st", ["dotted", "striped", "plain"], "linear", 32)
    result = runner.invoke(app, ["predict", str(next(mixed_folder.glob("*.jpg"))), "--model", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["make"] is None and answer["type"] is None and answer["year"] is None
    assert answer["modernity"] is None and len(answer["top_k"]) == 3


def test_a_linear_car_checkpoint_answers_make_from_the_fine_classes(tmp_path, mixed_folder, real_folder_set):
    names = sorted(p.name for p in (real_folder_set / "train").iterdir())
    ckpt = write_untrained_checkpoint(tmp_path / "linear.st", names, "linear", 32)
    result = runner.invoke(app, ["predict", str(next(mixed_folder.glob("*.jpg"))), "--model", str(ckpt), "--json"])
    answer = json.loads(result.stdout)
    model, meta = load_model(ckpt)
    fine = sample_probs(model, meta, [Sample(Path(answer["image"]), 0, "test")])["model"][0]
    make_of = meta.taxonomy.fine_to["make"]
    makes = range(len(meta.tasks["make"]))
    summed = [sum(float(fine[i]) for i in range(len(names)) if make_of[i] == m) for m in makes]
    assert answer["make"]["score"] == pytest.approx(max(summed), abs=1e-5)
    assert 0 <= answer["modernity"] <= 1


def test_modernity_spans_the_checkpoint_years():
    years = ["1994", "2007", "2012"]
    probs = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0.5, 0, 0.5], [0, 1.0, 0]])
    assert modernity(probs, years).tolist() == pytest.approx([0.0, 1.0, 0.5, 13 / 18])


@pytest.mark.parametrize(
    ("extra", "code", "words"),
    [
        (["--top-k", "0"], 2, "--top-k must be at least 1"),
        (["--saliency"], 2, "--explain DIR"),
        (["--crop", "box"], 2, "--crop must be one of"),
    ],
)
def test_predict_flag_errors_are_one_line(trained_checkpoint, mixed_folder, extra, code, words):
    result = runner.invoke(app, ["predict", str(mixed_folder), "--model", str(trained_checkpoint), *extra])
    assert result.exit_code == code
    assert words in _one_error_line(result)


def test_predict_without_images_or_runs_is_one_line(trained_checkpoint, mixed_folder, tmp_path, monkeypatch):
    result = runner.invoke(app, ["predict", str(mixed_folder / "notes.txt"), "--model", str(trained_checkpoint)])
    assert result.exit_code == 1
    assert "no readable images among the inputs given" in result.output.splitlines()[-1]
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["predict", str(mixed_folder)])
    assert result.exit_code == 1
    assert "no best.st under runs/" in _one_error_line(result)


def test_plain_predict_imports_neither_plotting_nor_cam_libraries(trained_checkpoint, mixed_folder):
    photo = str(next(mixed_folder.glob("*.jpg")))
    code = (
        "import sys, pathlib; from carcli.predict import predict; "
        f"predict([{photo!r}], pathlib.Path({str(trained_checkpoint)!r})); "
        "print(sorted(m for m in ('matplotlib', 'torchcam', 'scipy.ndimage') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
