"""Writing the Stanford Cars devkit files (.mat class names and annotations) that torchvision reads."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image

from carcli.data.layouts import (
    BBOX_FIELDS,
    DEVKIT_META,
    DEVKIT_TEST_ANNOS,
    DEVKIT_TEST_CSV,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    Sample,
)
from carcli.errors import CarcliError

DEVKIT_TEST_ANNOS_NOLABELS = "cars_test_annos.mat"


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


def _annotation(sample: Sample, with_class: bool = True) -> dict[str, Any]:
    box = sample.bbox or _full_box(sample.path)
    row: dict[str, Any] = dict(zip(BBOX_FIELDS, box, strict=True))
    if with_class:
        row["class"] = sample.label + 1
    row["fname"] = sample.path.name
    return row


def write_devkit(base: Path, class_names: Sequence[str], samples: Sequence[Sample]) -> None:
    """The devkit files for exactly `samples`: class names, train annotations, test annotations with/without labels."""
    devkit = base / "devkit"
    _save_class_names(devkit / DEVKIT_META, class_names)
    _save_annotations(devkit / DEVKIT_TRAIN_ANNOS, [_annotation(s) for s in samples if s.split == "train"])
    (devkit / DEVKIT_TEST_CSV).unlink(missing_ok=True)
    test = [s for s in samples if s.split == "test"]
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
