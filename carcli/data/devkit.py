"""The Stanford Cars devkit's files: its names, its annotations read and written, its submission file scored.

The devkit numbers classes from 1: cars_meta.mat holds the class names, cars_*_annos*.mat (or a
test_labels.csv) one annotation per image. `write_devkit` writes the .mat files torchvision reads.
A submission is a text file with the predicted 1-based class of annotation M on line M;
`score_submission` scores one as the devkit's eval_train.m does.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import numpy as np
import scipy.io
from PIL import Image

from carcli.errors import CarcliError

DEVKIT_TRAIN_DIR = "cars_train"
DEVKIT_TEST_DIR = "cars_test"
DEVKIT_META = "cars_meta.mat"
DEVKIT_TRAIN_ANNOS = "cars_train_annos.mat"
DEVKIT_TEST_ANNOS = "cars_test_annos_withlabels.mat"
DEVKIT_TEST_ANNOS_NOLABELS = "cars_test_annos.mat"
DEVKIT_TEST_CSV = "test_labels.csv"
BBOX_FIELDS = ("bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2")
CSV_BBOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")


class Annotation(NamedTuple):
    """One image of a devkit annotation file (`.mat` or test_labels.csv)."""

    fname: str
    label: int  # 1-based, as in the devkit
    bbox: tuple[int, int, int, int] | None


class LabelledImage(Protocol):
    """What `write_devkit` needs of an image (a `carcli.data.layouts.Sample` is one)."""

    @property
    def path(self) -> Path: ...
    @property
    def label(self) -> int: ...  # 0-based
    @property
    def split(self) -> str: ...
    @property
    def bbox(self) -> tuple[int, int, int, int] | None: ...


# ---------------------------------------------------------------- reading


def devkit_file(base: Path, name: str) -> Path | None:
    """`name` in base/devkit/ or in base/ itself."""
    return next((p for p in (base / "devkit" / name, base / name) if p.is_file()), None)


def _load_mat(path: Path) -> dict[str, Any]:
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise CarcliError(f"cannot read {path}: {err}") from None


def read_class_names(path: Path) -> list[str]:
    """The class names of a devkit cars_meta.mat, in class order (class i + 1 is name i)."""
    mat = _load_mat(path)
    if "class_names" not in mat:
        raise CarcliError(f"{path} has no class_names")
    return [str(name).strip() for name in np.atleast_1d(mat["class_names"])]


def _bbox(values: Iterable[Any]) -> tuple[int, int, int, int]:
    x1, y1, x2, y2 = (int(v) for v in values)
    return x1, y1, x2, y2


def mat_annotations(path: Path) -> list[Annotation] | None:
    """The annotations of a devkit .mat file; None when they have no class field (unlabelled test set)."""
    mat = _load_mat(path)
    if "annotations" not in mat:
        raise CarcliError(f"{path} has no annotations")
    records = np.atleast_1d(mat["annotations"])
    fields = set(records.dtype.names or ())
    if "class" not in fields:
        return None
    if "fname" not in fields:
        raise CarcliError(f"{path}: annotations have no fname field")
    has_bbox = fields.issuperset(BBOX_FIELDS)
    return [
        Annotation(
            fname=str(record["fname"]).strip(),
            label=int(record["class"]),
            bbox=_bbox(record[name] for name in BBOX_FIELDS) if has_bbox else None,
        )
        for record in records
    ]


def csv_annotations(path: Path) -> list[Annotation]:
    """Rows of a test_labels.csv: image_name, x_min, y_min, x_max, y_max, label (1-based)."""
    with path.open(newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return []
    if not {"image_name", "label"}.issubset(rows[0]):
        raise CarcliError(f"{path} needs the columns image_name and label")
    has_bbox = set(CSV_BBOX_COLUMNS).issubset(rows[0])
    try:
        return [
            Annotation(
                fname=row["image_name"].strip(),
                label=int(row["label"]),
                bbox=_bbox(float(row[c]) for c in CSV_BBOX_COLUMNS) if has_bbox else None,
            )
            for row in rows
        ]
    except (TypeError, ValueError) as err:
        raise CarcliError(f"{path}: bad value ({err})") from None


def labelled_test_annotations(base: Path) -> list[Annotation]:
    """Labelled test annotations from cars_test_annos_withlabels.mat, else test_labels.csv; [] if neither."""
    mat = devkit_file(base, DEVKIT_TEST_ANNOS)
    annotations = mat_annotations(mat) if mat else None
    if annotations is not None:
        return annotations
    table = devkit_file(base, DEVKIT_TEST_CSV)
    return csv_annotations(table) if table else []


def labelled_annotations(path: Path) -> list[Annotation]:
    """The annotations of a cars_*_annos*.mat or test_labels.csv; CarcliError when they have no classes."""
    annotations = csv_annotations(path) if path.suffix.lower() == ".csv" else mat_annotations(path)
    if annotations is None:
        raise CarcliError(f"{path} has no classes (the unlabelled test annotations?)")
    return annotations


def annotation_classes(path: Path) -> list[int]:
    """The 1-based class of every annotation of a devkit file: a cars_*_annos*.mat or test_labels.csv."""
    if not path.is_file():
        raise CarcliError(f"annotation file not found: {path}")
    return [a.label for a in labelled_annotations(path)]


# ---------------------------------------------------------------- writing


def _save_annotations(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A devkit annotations .mat: a 1 x n struct array with the rows' fields."""
    if not rows:
        raise CarcliError(f"no readable images left for {path.name}")
    fields = list(rows[0])
    table = np.zeros((1, len(rows)), dtype=[(name, object) for name in fields])
    for i, row in enumerate(rows):
        table[0, i] = tuple(row[name] for name in fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": table})


def _save_class_names(path: Path, names: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"class_names": np.array(list(names), dtype=object)[None, :]})


def _full_box(path: Path) -> tuple[int, int, int, int]:
    with Image.open(path) as img:
        return (1, 1, *img.size)


def _annotation(image: LabelledImage, with_class: bool = True) -> dict[str, Any]:
    box = image.bbox or _full_box(image.path)
    row: dict[str, Any] = dict(zip(BBOX_FIELDS, box, strict=True))
    if with_class:
        row["class"] = image.label + 1
    row["fname"] = image.path.name
    return row


def write_devkit(base: Path, class_names: Sequence[str], images: Sequence[LabelledImage]) -> None:
    """The devkit files for exactly `images`: class names, train annotations, test annotations with/without labels."""
    devkit = base / "devkit"
    _save_class_names(devkit / DEVKIT_META, class_names)
    _save_annotations(devkit / DEVKIT_TRAIN_ANNOS, [_annotation(s) for s in images if s.split == "train"])
    (devkit / DEVKIT_TEST_CSV).unlink(missing_ok=True)
    test = [s for s in images if s.split == "test"]
    if test:
        _save_annotations(base / DEVKIT_TEST_ANNOS, [_annotation(s) for s in test])
        _save_annotations(devkit / DEVKIT_TEST_ANNOS_NOLABELS, [_annotation(s, with_class=False) for s in test])
    else:
        shutil.rmtree(base / DEVKIT_TEST_DIR, ignore_errors=True)
        (base / DEVKIT_TEST_ANNOS).unlink(missing_ok=True)
        (devkit / DEVKIT_TEST_ANNOS_NOLABELS).unlink(missing_ok=True)


def write_provisional(base: Path, class_names: Sequence[str], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Class names and {class, fname} annotations per split, enough for load_dataset to read the new tree."""
    _save_class_names(base / "devkit" / DEVKIT_META, class_names)
    _save_annotations(base / "devkit" / DEVKIT_TRAIN_ANNOS, rows["train"])
    if rows["test"]:
        _save_annotations(base / DEVKIT_TEST_ANNOS, rows["test"])


def split_folder(base: Path, split: str) -> Path:
    return base / (DEVKIT_TEST_DIR if split == "test" else DEVKIT_TRAIN_DIR)


# ---------------------------------------------------------------- the submission file


def score_submission(path: Path, classes: Sequence[int]) -> float:
    """Top-1 of a submission file (class of annotation M on line M) against `classes`, as the devkit's eval_train.m."""
    try:
        predicted = [int(line) for line in path.read_text().split()]
    except (OSError, ValueError) as exc:
        raise CarcliError(f"{path} is not a submission file (one integer class a line): {exc}") from None
    if len(predicted) != len(classes):
        raise CarcliError(f"{path} has {len(predicted)} predictions but there are {len(classes)} annotations")
    valid = set(classes)
    bad = next((i for i, c in enumerate(predicted) if c not in valid), None)
    if bad is not None:
        raise CarcliError(f"{path}: line {bad + 1} predicts class {predicted[bad]}, which is not a valid class")
    return float(np.mean(np.array(predicted) == np.array(classes))) if classes else 0.0
