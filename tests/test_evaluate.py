"""Evaluation: predictions with the checkpoint's preprocessing, metrics checked against a recomputation, reports,
the devkit submission format and its scorer."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from conftest import SHARED, SMALL_CLASSES, need_real_photos, real_class_names, real_photos_by_class
from PIL import Image

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.devkit import annotation_classes, score_submission
from carcli.data.images import open_rgb
from carcli.data.layouts import Sample, load_dataset
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.errors import CarcliError
from carcli.evaluate import evaluate
from carcli.inference import batch_probs, predict_samples, sample_probs
from carcli.metrics import confusion_matrix, most_confused, task_metrics, topk_accuracy, with_implied_tasks
from carcli.models.builder import load_model
from carcli.models.registry import create_model
from carcli.plots import plot_confusion
from carcli.splits import align_labels

DEVKIT = SHARED / "data" / "stanford_cars_devkit"


def _meta(class_names: list[str]) -> CheckpointMeta:
    taxonomy = Taxonomy.from_class_names(class_names)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return CheckpointMeta(arch="ghostnet", head="mtl", tasks=taxonomy.tasks, taxonomy=taxonomy, img_size=32, **norm)


def test_predictions_follow_the_checkpoint_class_order(real_folder_set):
    dataset = load_dataset(real_folder_set, 0.2, 0)
    ckpt_names = list(reversed(dataset.class_names))  # the checkpoint lists the same classes in another order
    meta = _meta(ckpt_names)
    tasks = {task: len(names) for task, names in meta.tasks.items()}
    model = create_model("ghostnet", "mtl", tasks)
    samples = dataset.split("val")
    seen: list[int] = []
    preds = predict_samples(model, meta, samples, dataset.class_names, batch_size=8, progress=seen.append)
    assert seen[-1] == len(samples) and set(preds.probs) == set(tasks)
    for task, probs in preds.probs.items():
        assert probs.shape == (len(samples), tasks[task])
        assert torch.allclose(probs.sum(1), torch.ones(len(samples)), atol=1e-5)
    expected_fine = [ckpt_names.index(dataset.class_names[s.label]) for s in samples]
    assert preds.targets[FINE].tolist() == expected_fine
    make_of = meta.taxonomy.fine_to["make"]
    assert preds.targets["make"].tolist() == [make_of[i] for i in expected_fine]


def test_unknown_classes_are_refused():
    with pytest.raises(CarcliError, match="not among the checkpoint"):
        align_labels(["Audi S4 Sedan 2012", "Unknown Thing"], _meta(["Audi S4 Sedan 2012", "BMW X3 SUV 2012"]))


def test_topk_accuracy_counts_rows_with_the_truth_among_the_k_best():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    targets = torch.tensor([0, 1, 2])
    assert topk_accuracy(probs, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, targets, 10) == 1.0


# ---------------------------------------------------------------- carcli eval on a briefly trained checkpoint

# "hierarchy": multi-task heads only
EVAL_KEYS = {
    "checkpoint",
    "data",
    "split",
    "n_images",
    "img_size",
    "eval_aspect",
    "tasks",
    "temperatures",
    "seconds",
    "hierarchy",
}
TASK_KEYS = {
    "top1",
    "top5",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "loss",
    "classes",
    "source",
    "per_class",
    "ece",
}


@pytest.fixture(scope="module")
def eval_run(trained_checkpoint, real_folder_set, tmp_path_factory):
    """`carcli eval --json` once: (stdout object, report folder)."""
    from typer.testing import CliRunner

    from carcli.cli import app

    out = tmp_path_factory.mktemp("eval") / "report"
    args = ["eval", str(trained_checkpoint), "--data", str(real_folder_set), "--out", str(out), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), out


def _decoded(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32)


def test_eval_json_is_the_one_stdout_object_and_eval_json(eval_run, trained_checkpoint, real_folder_set):
    report, out = eval_run
    assert set(report) == EVAL_KEYS
    assert report == json.loads((out / "eval.json").read_text())
    assert report["checkpoint"] == str(trained_checkpoint) and report["data"] == str(real_folder_set)
    assert report["split"] == "val" and report["n_images"] == 20 and report["seconds"] > 0
    assert list(report["tasks"]) == ["model", "make", "type", "year"]
    for task, metrics in report["tasks"].items():
        assert set(metrics) >= TASK_KEYS, task
        assert metrics["source"] == "head"
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 1
    for task in ("make", "type", "year"):
        assert {"implied_top1", "agreement"} <= set(report["tasks"][task])
    hierarchy = report["hierarchy"]
    assert not hierarchy["used"] and hierarchy["plain_top1"] == report["tasks"]["model"]["top1"]


def test_eval_looks_at_the_stored_view_and_eval_aspect_overrides_it(
    eval_run, trained_checkpoint, real_folder_set, tmp_path
):
    from typer.testing import CliRunner

    from carcli.cli import app

    report, _ = eval_run
    assert report["eval_aspect"] == pytest.approx(4 / 3) and report["img_size"] == 64  # training's defaults, stored
    args = ["eval", str(trained_checkpoint), "--data", str(real_folder_set), "--out", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, [*args, "--eval-aspect", "1"])
    assert result.exit_code == 0, result.output
    square = json.loads(result.stdout)
    assert square["eval_aspect"] == 1.0
    model, meta = load_model(trained_checkpoint)
    samples = load_dataset(real_folder_set, 0.2, 0).split("val")[:4]
    wide = sample_probs(model, meta, samples)["model"]  # the 4:3 view; their centre square is other pixels
    assert not torch.equal(wide, sample_probs(model, meta.at_view(None, 1.0), samples)["model"])
    refused = CliRunner().invoke(app, [*args, "--eval-aspect", "0.5"])
    assert refused.exit_code == 2 and "--eval-aspect" in refused.output


def test_eval_metrics_equal_a_recomputation_from_raw_predictions(eval_run, trained_checkpoint, real_folder_set):
    report, _ = eval_run
    model, meta = load_model(trained_checkpoint)
    dataset = load_dataset(real_folder_set, 0.2, 0)
    preds = predict_samples(model, meta, dataset.split("val"), dataset.class_names)
    for task, probs in preds.probs.items():
        p, t = probs.numpy(), preds.targets[task].numpy()
        predicted = p.argmax(1)
        top5 = np.argsort(-p, axis=1)[:, :5]
        expected = report["tasks"][task]
        assert expected["top1"] == pytest.approx(np.mean(predicted == t))
        assert expected["top5"] == pytest.approx(np.mean([t[i] in top5[i] for i in range(len(t))]))
        f1s, precisions, recalls = [], [], []
        for c in np.unique(t):
            tp = np.sum((predicted == c) & (t == c))
            precision = tp / max(1, np.sum(predicted == c))
            recall = tp / np.sum(t == c)
            precisions.append(precision)
            recalls.append(recall)
            f1s.append(0.0 if tp == 0 else 2 * precision * recall / (precision + recall))
            name = meta.tasks[task][c]
            assert expected["per_class"][name]["support"] == np.sum(t == c)
            assert expected["per_class"][name]["accuracy"] == pytest.approx(recall)
        assert expected["macro_precision"] == pytest.approx(np.mean(precisions))
        assert expected["macro_recall"] == pytest.approx(np.mean(recalls))
        assert expected["macro_f1"] == pytest.approx(np.mean(f1s))
        assert expected["loss"] == pytest.approx(-np.mean(np.log(p[np.arange(len(t)), t])), rel=1e-5)
    fine_pred = preds.probs["model"].argmax(1).numpy()
    for task in ("make", "type", "year"):
        implied = np.array(meta.taxonomy.fine_to[task])[fine_pred]
        head = preds.probs[task].argmax(1).numpy()
        assert report["tasks"][task]["implied_top1"] == pytest.approx(np.mean(implied == preds.targets[task].numpy()))
        assert report["tasks"][task]["agreement"] == pytest.approx(np.mean(implied == head))


def test_confusion_rows_sum_to_the_class_support(eval_run, real_folder_set):
    report, out = eval_run
    with (out / "confusion.csv").open() as handle:
        rows = list(csv.reader(handle))
    names = rows[0][1:]
    assert [r[0] for r in rows[1:]] == names
    for row in rows[1:]:
        support = len(list((real_folder_set / "val" / row[0]).iterdir()))
        assert sum(int(v) for v in row[1:]) == support == report["tasks"]["model"]["per_class"][row[0]]["support"]
    with (out / "most_confused.csv").open() as handle:
        pairs = list(csv.DictReader(handle))
    off_diagonal = [(r[0], names[j]) for r in rows[1:] for j, v in enumerate(r[1:]) if int(v) and r[0] != names[j]]
    assert sorted((p["true"], p["predicted"]) for p in pairs) == sorted(off_diagonal)
    assert [int(p["count"]) for p in pairs] == sorted((int(p["count"]) for p in pairs), reverse=True)


def test_eval_pngs_are_real_pictures(eval_run):
    _, out = eval_run
    for name, min_size in (
        ("confusion.png", (500, 300)),
        ("top_losses.png", (800, 300)),
        ("reliability.png", (500, 300)),
    ):
        pixels = _decoded(out / name)
        assert pixels.shape[1] >= min_size[0] and pixels.shape[0] >= min_size[1], name
        assert pixels.std() > 20, name


def test_the_confusion_png_stays_readable_at_196_classes(tmp_path):
    names = real_class_names()
    taxonomy = Taxonomy.from_class_names(names)
    make_of = np.array(taxonomy.fine_to["make"])
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(196), 4)
    guess = np.where(rng.random(len(truth)) < 0.7, truth, rng.integers(0, 196, len(truth)))
    makes = taxonomy.tasks["make"]
    plot_confusion(
        confusion_matrix(truth, guess, 196),
        names,
        tmp_path / "c.png",
        [makes[i] for i in make_of],
        confusion_matrix(make_of[truth], make_of[guess], len(makes)),
        makes,
    )
    pixels = _decoded(tmp_path / "c.png")
    assert pixels.shape[0] > 2500 and pixels.shape[1] > 4000  # about 12 px a row: class names can be read
    assert pixels.std() > 20


def test_task_metrics_on_a_small_hand_checked_case():
    # truth 0 0 1 1 2; predicted 0 1 1 1 0 -> class 0: P 1/2 R 1/2; class 1: P 2/3 R 1; class 2: P 0 R 0
    probs = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 1, 0]), 4).float() * 0.7 + 0.075
    metrics, matrix = task_metrics(probs, torch.tensor([0, 0, 1, 1, 2]), ["a", "b", "c", "d"])
    assert matrix.sum(1).tolist() == [2, 2, 1, 0]
    assert metrics["top1"] == pytest.approx(3 / 5)
    assert metrics["classes"] == 3 and "d" not in metrics["per_class"]
    assert metrics["macro_precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert metrics["macro_recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert metrics["macro_f1"] == pytest.approx((1 / 2 + 0.8 + 0) / 3)
    pairs = most_confused(matrix, ["a", "b", "c", "d"], ["x", "x", "y", "y"])
    assert [(p["true"], p["predicted"], p["count"], p["same_make"]) for p in pairs] == [
        ("a", "b", 1, True),
        ("c", "a", 1, False),
    ]


def test_a_head_less_task_is_the_fine_distribution_summed():
    names = ["Audi S4 Sedan 2012", "Audi R8 Coupe 2012", "BMW X3 SUV 2012"]
    meta = _meta(names)
    fine = torch.tensor([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    probs, sources = with_implied_tasks({"model": fine}, meta)
    assert sources == {"model": "head", "make": "fine", "type": "fine"}
    assert meta.tasks["make"] == ["Audi", "BMW"]
    assert np.allclose(probs["make"], [[0.5, 0.5], [0.9, 0.1]])


def test_tta_averages_the_six_views_and_their_mirrors(trained_checkpoint, real_folder_set):
    model, meta = load_model(trained_checkpoint)
    img = open_rgb(next((real_folder_set / "val").rglob("*.jpg")))
    views = meta.view_transform(tta=True)(img)
    assert views.shape == (6, 3, 64, 64)
    assert torch.equal(views[0], meta.view_transform()(img))
    with torch.no_grad():
        averaged = batch_probs(model, views[None])
        each = batch_probs(model, torch.cat([views, views.flip(-1)]))
    for task, p in averaged.items():
        assert torch.allclose(p[0], each[task].mean(0), atol=1e-6)


def test_eval_skips_and_lists_unreadable_images(trained_checkpoint, real_folder_set, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(real_folder_set, data)
    folder = sorted((data / "val").iterdir())[0]
    (folder / "broken.jpg").write_bytes(next(folder.iterdir()).read_bytes()[:500])
    result = evaluate(trained_checkpoint, data, out=tmp_path / "out")
    assert [p.name for p in result.unreadable] == ["broken.jpg"]
    assert result.report["n_images"] == 20
    assert (tmp_path / "out" / "unreadable.txt").read_text().strip().endswith("broken.jpg")


def test_eval_crop_cam_reports_the_gain_over_one_pass(trained_checkpoint, real_folder_set, eval_run, tmp_path):
    plain_report, _ = eval_run
    report = evaluate(trained_checkpoint, real_folder_set, out=tmp_path / "out", crop="cam").report
    for task, metrics in report["tasks"].items():
        assert metrics["plain_top1"] == pytest.approx(plain_report["tasks"][task]["top1"])


# ---------------------------------------------------------------- the devkit submission format


def test_the_devkit_perfect_predictions_score_100_percent(tmp_path):
    need_real_photos(DEVKIT)
    classes = annotation_classes(DEVKIT / "cars_train_annos.mat")
    assert len(classes) == 8144
    assert score_submission(DEVKIT / "train_perfect_preds.txt", classes) == 1.0
    lines = (DEVKIT / "train_perfect_preds.txt").read_text().split()
    lines[0] = str(int(lines[0]) % 196 + 1)
    (tmp_path / "one_wrong.txt").write_text("\n".join(lines))
    assert score_submission(tmp_path / "one_wrong.txt", classes) == pytest.approx(1 - 1 / 8144)
    (tmp_path / "short.txt").write_text("\n".join(lines[:-1]))
    with pytest.raises(CarcliError, match="8143 predictions but there are 8144"):
        score_submission(tmp_path / "short.txt", classes)
    assert annotation_classes(DEVKIT / "test_labels.csv")[:2] == [181, 103]


def _mini_devkit(root: Path) -> Path:
    """A devkit of the 5 small classes: cars_train/ (12 a class) and cars_test/ (4 a class) with test_labels.csv."""
    photos = real_photos_by_class()
    train, test = [], []
    for label, name in enumerate(SMALL_CLASSES, start=1):
        for i, src in enumerate(sorted(photos[name])):
            split, rows = ("cars_test", test) if i >= 12 else ("cars_train", train)
            (root / split).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, root / split / src.name)
            rows.append((src.name, label))
    (root / "devkit").mkdir()
    scipy.io.savemat(root / "devkit" / "cars_meta.mat", {"class_names": np.array(SMALL_CLASSES, dtype=object)})
    annos = np.array(
        [(0, 0, 10, 10, label, fname) for fname, label in train],
        dtype=[(f, "O") for f in ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname")],
    )
    scipy.io.savemat(root / "devkit" / "cars_train_annos.mat", {"annotations": annos})
    test.reverse()  # annotation order differs from file order: line M must follow the annotations
    lines = [f"{fname},0,0,10,10,{label}" for fname, label in test]
    (root / "devkit" / "test_labels.csv").write_text("image_name,x_min,y_min,x_max,y_max,label\n" + "\n".join(lines))
    return root


def test_submission_has_the_devkit_class_of_annotation_m_on_line_m(trained_checkpoint, tmp_path):
    devkit = _mini_devkit(tmp_path / "devkit_set")
    result = evaluate(trained_checkpoint, devkit, split="test", out=tmp_path / "out", submission=tmp_path / "sub.txt")
    lines = [int(v) for v in (tmp_path / "sub.txt").read_text().split()]
    labels = annotation_classes(devkit / "devkit" / "test_labels.csv")
    assert len(lines) == len(labels) == 20
    model, meta = load_model(trained_checkpoint)
    dataset = load_dataset(devkit)
    fnames = [line.split(",")[0] for line in (devkit / "devkit" / "test_labels.csv").read_text().splitlines()[1:]]
    samples = [Sample(devkit / "cars_test" / f, 0, "test") for f in fnames]
    preds = predict_samples(model, meta, samples, dataset.class_names)
    predicted_names = [meta.tasks["model"][i] for i in preds.probs["model"].argmax(1).tolist()]
    assert lines == [dataset.class_names.index(name) + 1 for name in predicted_names]
    assert result.submission_top1 == pytest.approx(np.mean(np.array(lines) == np.array(labels)))
    assert result.submission_top1 == pytest.approx(result.report["tasks"]["model"]["top1"])


def test_submission_refuses_a_split_that_misses_annotations(trained_checkpoint, tmp_path):
    devkit = _mini_devkit(tmp_path / "devkit_set")
    shutil.rmtree(devkit / "cars_test")  # now val is a seeded 20 % of cars_train: not every annotation
    with pytest.raises(CarcliError, match="needs a prediction for each of the 60 annotations"):
        evaluate(trained_checkpoint, devkit, out=tmp_path / "out", submission=tmp_path / "sub.txt")
    assert not (tmp_path / "sub.txt").exists()


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--split", "train"], 2, "--split must be one of"),
        (["--crop", "box"], 2, "--crop must be one of"),
        (["--tta", "--crop", "cam"], 2, "cannot be combined"),
        (["--data", "/no/such/folder"], 1, "not found"),
    ],
)
def test_eval_user_errors_are_one_line(trained_checkpoint, real_folder_set, tmp_path, args, code, words):
    from typer.testing import CliRunner

    from carcli.cli import app

    base = ["eval", str(trained_checkpoint), "--out", str(tmp_path / "out")]
    if "--data" not in args:
        base += ["--data", str(real_folder_set)]
    result = CliRunner().invoke(app, [*base, *args])
    assert result.exit_code == code
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and words in lines[0] and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path):
    from typer.testing import CliRunner

    from carcli.cli import app

    result = CliRunner().invoke(app, ["eval", str(tmp_path / "nope.st")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: checkpoint not found: {tmp_path / 'nope.st'}"]
