"""Shared fixtures: the real Stanford Cars photos in ../shared and small data sets made from them."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import scipy.io

SHARED = Path(__file__).resolve().parents[2] / "shared"
STANFORD_CARS = SHARED / "data" / "stanford_cars"

# Two makes, two body types, two years: every head has something to learn.
SMALL_CLASSES = (
    "Audi S4 Sedan 2012",
    "Audi R8 Coupe 2012",
    "BMW X3 SUV 2012",
    "BMW M3 Coupe 2012",
    "Chevrolet Cobalt SS 2010",
)


def pytest_sessionstart(session: pytest.Session) -> None:
    """The real photos are part of the test material (in CI too): a missing folder is an error, not a skip."""
    if not STANFORD_CARS.is_dir():
        pytest.exit(f"{STANFORD_CARS} is missing: clone carcli beside the shared/ folder", returncode=4)


def real_class_names() -> list[str]:
    meta = scipy.io.loadmat(STANFORD_CARS / "devkit" / "cars_meta.mat", squeeze_me=True)
    return [str(n) for n in meta["class_names"]]


def real_photos_by_class() -> dict[str, list[Path]]:
    names = real_class_names()
    annos = scipy.io.loadmat(STANFORD_CARS / "devkit" / "cars_train_annos.mat", squeeze_me=True)["annotations"]
    by_class: dict[str, list[Path]] = {}
    for row in annos:
        by_class.setdefault(names[int(row["class"]) - 1], []).append(STANFORD_CARS / "cars_train" / str(row["fname"]))
    return by_class


@pytest.fixture(scope="session")
def real_folder_set(tmp_path_factory) -> Path:
    """train/<class>/ and val/<class>/ folders of real photos: 5 classes, 12 train + 4 val each."""
    root = tmp_path_factory.mktemp("cars_folders")
    photos = real_photos_by_class()
    for name in SMALL_CLASSES:
        for i, src in enumerate(sorted(photos[name])):
            split = "val" if i >= 12 else "train"
            dst = root / split / name / src.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(src, dst)
    return root
