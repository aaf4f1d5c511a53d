"""Shared fixtures: the real Stanford Cars photos in ../shared and small data sets made from them."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import scipy.io

# The shared/ folder beside the clone, or wherever $CARCLI_TEST_DATA says (the folder that holds data/stanford_cars).
SHARED = Path(os.environ.get("CARCLI_TEST_DATA") or Path(__file__).resolve().parents[2] / "shared")
STANFORD_CARS = SHARED / "data" / "stanford_cars"

# Two makes, two body types, two years: every head has something to learn.
SMALL_CLASSES = (
    "Audi S4 Sedan 2012",
    "Audi R8 Coupe 2012",
    "BMW X3 SUV 2012",
    "BMW M3 Coupe 2012",
    "Chevrolet Cobalt SS 2010",
)


def need_real_photos(path: Path = STANFORD_CARS) -> Path:
    """`path` under the shared test material; skips the test (with the reason) when it is absent.

    In CI (CI=true) a missing folder fails the test instead: CI must never silently skip the real-data tests.
    """
    if path.exists():
        return path
    reason = f"{path} is missing: put the shared/ folder beside the clone or set CARCLI_TEST_DATA to it"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(f"{reason} (CI=true: the real-data tests must run)", pytrace=False)
    pytest.skip(reason)


def real_class_names() -> list[str]:
    need_real_photos()
    meta = scipy.io.loadmat(STANFORD_CARS / "devkit" / "cars_meta.mat", squeeze_me=True)
    return [str(n) for n in meta["class_names"]]


def real_photos_by_class() -> dict[str, list[Path]]:
    need_real_photos()
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


@pytest.fixture(scope="session")
def tiny_set(tmp_path_factory) -> Path:
    """Generated train/ and val/ class folders: 4 car classes (2 makes, 3 types, 2 years), 40 px images."""
    import numpy as np
    from PIL import Image

    root = tmp_path_factory.mktemp("tiny_set")
    rng = np.random.default_rng(0)
    for label, name in enumerate(SMALL_CLASSES[:4]):
        for split, count in (("train", 12), ("val", 4)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (40, 40, 3)) + np.array([60 * label, 200 - 50 * label, 90])
                Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(folder / f"{i}.png")
    return root


def write_untrained_checkpoint(
    path: Path,
    class_names: list[str],
    head: str = "mtl",
    img_size: int = 64,
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
    std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    seed: int = 0,
) -> Path:
    """A ghostnet checkpoint with random weights and real metadata: fast material for prune/ensemble/export/bench."""
    import torch

    from carcli.checkpoint import save_checkpoint
    from carcli.checkpoint_meta import CheckpointMeta
    from carcli.data.taxonomy import Taxonomy
    from carcli.models.registry import create_model

    torch.manual_seed(seed)
    taxonomy = Taxonomy.from_class_names(class_names)
    model = create_model("ghostnet", head, {task: len(names) for task, names in taxonomy.tasks.items()})
    train = {"arch": "ghostnet", "head": head, "img_size": img_size, "batch_size": 8, "workers": 0, "epochs": 1}
    meta = CheckpointMeta(
        arch="ghostnet",
        head=head,
        img_size=img_size,
        mean=list(mean),
        std=list(std),
        tasks=taxonomy.tasks,
        taxonomy=taxonomy,
        train={**train, "val_fraction": 0.2, "seed": 0, "lr": 1e-3},
    )
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="session")
def untrained_members(tmp_path_factory, real_folder_set) -> tuple[Path, Path, Path]:
    """Random-weight ghostnet checkpoints for real_folder_set: mtl 64 px, linear 64 px (own mean/std), mtl 48 px."""
    from carcli.data.layouts import load_dataset

    root = tmp_path_factory.mktemp("members")
    names = load_dataset(real_folder_set).class_names
    return (
        write_untrained_checkpoint(root / "a.st", names, "mtl", 64, seed=1),
        write_untrained_checkpoint(root / "b.st", names, "linear", 64, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), seed=2),
        write_untrained_checkpoint(root / "c.st", names, "mtl", 48, seed=3),
    )


@pytest.fixture(scope="session")
def trained_checkpoint(real_folder_set, tmp_path_factory) -> Path:
    """best.st of ghostnet + mtl head (model, make, type, year tasks) trained 2 epochs at 64 px on real_folder_set."""
    from carcli.train import TrainConfig, train

    out = tmp_path_factory.mktemp("trained") / "run"
    config = TrainConfig(
        data=str(real_folder_set), arch="ghostnet", head="mtl", img_size=64, epochs=2, batch_size=16, workers=0,
        out=str(out),
    )  # fmt: skip
    train(config)
    return out / "best.st"


def assert_same_weights(a: Path, b: Path) -> None:
    """Two safetensors files hold the same tensors (to 1e-6)."""
    import torch
    from safetensors.torch import load_file

    left, right = load_file(str(a)), load_file(str(b))
    assert left.keys() == right.keys()
    for key in left:
        torch.testing.assert_close(left[key], right[key], rtol=0, atol=1e-6, msg=key)
