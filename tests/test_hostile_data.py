"""Hostile data sets and flags: degenerate class lists, manifests that contradict themselves, impossible
option values. Each ends in one line and a non-zero exit before any run folder is made, or in a warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hostile import fails

from carcli.data.layouts import load_dataset
from carcli.errors import CarcliError, UsageError
from carcli.limits import MAX_IMG_SIZE, check_img_size
from carcli.train.config import TrainConfig, check_config

FAST = ("--arch", "ghostnet", "--img-size", "32", "--epochs", "1", "--batch-size", "8", "--workers", "0")


def _photos(tiny_set: Path) -> list[Path]:
    return sorted((tiny_set / "train").rglob("*.png"))


def _manifest(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "labels.csv"
    path.write_text(text)
    return path


@pytest.fixture
def listed(tiny_set, tmp_path) -> Path:
    """A folder with 8 copied photos, for manifests to name."""
    folder = tmp_path / "listed"
    folder.mkdir()
    for i, photo in enumerate(_photos(tiny_set)[:8]):
        shutil.copy(photo, folder / f"{i}.png")
    return folder


def test_one_class_refuses_to_train_before_making_a_run_folder(tiny_set, tmp_path):
    data = tmp_path / "one"
    shutil.copytree(next((tiny_set / "train").iterdir()), data / "only-class")
    fails("train", "--data", data, "--out", tmp_path / "run", *FAST, says=("only one class", "only-class"))
    assert not (tmp_path / "run").exists()


def test_an_image_listed_with_two_labels_is_an_error(listed, tmp_path):
    _manifest(listed, "path,label\n0.png,a\n1.png,b\n2.png,a\n0.png,b\n")
    fails("train", "--data", listed, "--out", tmp_path / "run", *FAST, says=("0.png", "listed twice", "'a'", "'b'"))
    assert not (tmp_path / "run").exists()


def test_the_same_image_reached_through_two_class_folders_is_an_error(tiny_set, tmp_path):
    data = tmp_path / "linked"
    source = next((tiny_set / "train").iterdir())
    shutil.copytree(source, data / "cars")
    (data / "trucks").symlink_to(data / "cars")
    with pytest.raises(CarcliError, match="listed twice with different labels"):
        load_dataset(data)


def test_an_image_listed_twice_with_one_label_counts_once_with_a_warning(listed):
    _manifest(listed, "path,label\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(8)) + "3.png,b\n0.png,a\n")
    dataset = load_dataset(listed)
    assert len(dataset.samples) == 8
    assert any("2 images are listed more than once" in note for note in dataset.notes)


def test_classes_too_small_to_split_are_named(listed):
    _manifest(listed, "path,label\n" + "".join(f"{i}.png,many\n" for i in range(7)) + "7.png,lonely\n")
    dataset = load_dataset(listed, val_fraction=0.25)
    assert any("fewer than 2 images" in note and "'lonely'" in note for note in dataset.notes)
    assert not any(s.split == "val" and dataset.class_names[s.label] == "lonely" for s in dataset.samples)


BAD_MANIFESTS = {
    "empty": ("", "is empty"),
    "no label column": ("path,kind\n0.png,a\n", "columns path and label"),
    "missing files": ("path,label\n0.png,a\nnope.png,b\n", "do not exist"),
    "unknown split": ("path,label,split\n0.png,a,train\n1.png,b,later\n", "split must be"),
    "empty label": ("path,label\n0.png,\n1.png,b\n", "empty path or label"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifests_are_one_line(listed, tmp_path, case):
    text, message = BAD_MANIFESTS[case]
    _manifest(listed, text)
    fails("train", "--data", listed / "labels.csv", "--out", tmp_path / "run", *FAST, says=(message,))
    assert not (tmp_path / "run").exists()


def test_a_manifest_in_another_encoding_is_one_line(listed, tmp_path):
    (listed / "labels.csv").write_bytes(b"path,label\n0.png,\xff\xfe\x00caf\xe9\n")
    fails("train", "--data", listed / "labels.csv", "--out", tmp_path / "run", *FAST, says=("cannot read",))


@pytest.mark.parametrize("kind", ["missing", "a file", "no images"])
def test_unusable_data_roots_are_one_line(tmp_path, kind):
    root = tmp_path / "data"
    if kind == "a file":
        root.write_text("hello")
    elif kind == "no images":
        (root / "train" / "a").mkdir(parents=True)
        (root / "train" / "a" / "notes.txt").write_text("x")
    fails("train", "--data", root, "--out", tmp_path / "run", *FAST, says=(str(root),))


# ---------------------------------------------------------------- flags


@pytest.mark.parametrize(
    "args, says",
    [
        (("train", "--img-size", "100000"), ("--img-size 100000 is over 2048", "--allow-large-images")),
        (("train", "--img-size", "16"), ("--img-size must be at least 32",)),
        (("bench", "--arch", "ghostnet", "--img-size", "100000"), ("--allow-large-images",)),
        (("bench", "--arch", "ghostnet", "--img-size", "8"), ("at least 32",)),
        (("train", "--lr", "-1"), ("--lr must be positive",)),
        (("train", "--epochs", "0"), ("--epochs must be at least 1",)),
        (("train", "--val-fraction", "1.5"), ("--val-fraction",)),
        (("train", "--optimizer", "adamx"), ("--optimizer must be one of",)),
        (("train", "--workers", "-2"), ("--workers",)),
        (("train", "--loss-weights", "make=heavy"), ("--loss-weights",)),
        (("predict", "x.jpg", "--top-k", "0"), ("--top-k",)),
        (("export", "m.st", "--format", "tflite"), ("--format must be one of",)),
        (("prune", "m.st", "--data", "d", "--rate", "0.5", "--sweep"), ("--rate R or --sweep",)),
        (("train", "--img-size", "many"), ("--img-size",)),
    ],
)
def test_impossible_flags_are_one_line_with_exit_2(tmp_path, args, says):
    out = ("--out", tmp_path / "run") if args[0] == "train" else ()
    fails(*args, *out, code=2, says=says)
    assert not (tmp_path / "run").exists()


def test_large_images_need_the_flag_and_then_pass():
    with pytest.raises(UsageError, match="--allow-large-images"):
        check_config(TrainConfig(img_size=MAX_IMG_SIZE + 1))
    check_config(TrainConfig(img_size=MAX_IMG_SIZE + 1, allow_large_images=True))
    check_img_size(MAX_IMG_SIZE)


def test_a_broken_config_file_is_one_line(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("lr = [unclosed\n")
    fails("train", "--config", config, "--out", tmp_path / "run", code=2, says=(str(config),))
