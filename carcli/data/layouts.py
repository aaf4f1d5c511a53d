"""Finding and reading a data set root (Stanford Cars devkit, class folders or CSV manifest) -> Samples.

This module owns layout detection, the three readers, and the seeded stratified validation split
made when a data set brings no val or test images of its own. It reads annotations (the devkit's
files through `carcli.data.devkit`) and lists files; it never decodes an image.
"""

from __future__ import annotations

import csv
import os
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from carcli.data.devkit import (
    DEVKIT_META,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    Annotation,
    devkit_file,
    labelled_test_annotations,
    mat_annotations,
    read_class_names,
)
from carcli.errors import CarcliError, UsageError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
LAYOUTS = ("devkit", "folders", "csv")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MANIFEST_NAMES = ("manifest.csv", "labels.csv", "data.csv")
IGNORED_NAMES = ("__MACOSX",)
MAX_NESTING = 2  # single-folder levels looked through, as in Kaggle's car_data/car_data/train

TORCHVISION_DIR = "stanford_cars"


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    split: str
    bbox: tuple[int, int, int, int] | None = None


@dataclass
class DataSet:
    root: Path
    layout: str
    class_names: list[str]
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)  # warnings about degenerate data, for the user

    def split(self, name: str) -> list[Sample]:
        """The samples of split `name` ("train", "val" or "test"), in data set order."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [sample for sample in self.samples if sample.split == name]

    @property
    def eval_split(self) -> str:
        """The split to evaluate on: val if there is one, else test, else train."""
        present = {sample.split for sample in self.samples}
        return next((name for name in ("val", "test") if name in present), "train")


# ---------------------------------------------------------------- files and folders


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name not in IGNORED_NAMES


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and _visible(path) and path.is_file()


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


# ---------------------------------------------------------------- detection


def _is_devkit(base: Path) -> bool:
    return (base / DEVKIT_TRAIN_DIR).is_dir() and all(
        devkit_file(base, name) for name in (DEVKIT_META, DEVKIT_TRAIN_ANNOS)
    )


def _devkit_problem(base: Path) -> str | None:
    """Why `base` looks like a Stanford Cars devkit but cannot be read; None if it does not look like one."""
    has_photos = (base / DEVKIT_TRAIN_DIR).is_dir()
    missing = [f"devkit/{name}" for name in (DEVKIT_META, DEVKIT_TRAIN_ANNOS) if not devkit_file(base, name)]
    if has_photos and missing:
        return f"{base} has {DEVKIT_TRAIN_DIR}/ but no {' or '.join(missing)}"
    if not has_photos and len(missing) < 2:
        return f"{base} has Stanford Cars annotation files but no {DEVKIT_TRAIN_DIR}/ folder of photos"
    return None


def _split_dirs(base: Path) -> dict[str, list[Path]]:
    """Split name -> folders for it (train/, val/ or valid/ or validation/, test/), case-insensitive."""
    found: dict[str, list[Path]] = {}
    for child in _subdirs(base):
        split = SPLIT_ALIASES.get(child.name.lower())
        if split:
            found.setdefault(split, []).append(child)
    return found


def _manifest(base: Path) -> Path | None:
    return next((base / name for name in MANIFEST_NAMES if (base / name).is_file()), None)


def _match(base: Path) -> tuple[str, Path] | None:
    """The layout of folder `base` and where its data lives, or None."""
    candidates = [c for c in (base / TORCHVISION_DIR, base) if c.is_dir()]
    for candidate in candidates:
        if _is_devkit(candidate):
            return "devkit", candidate
    for candidate in candidates:
        problem = _devkit_problem(candidate)
        if problem:
            raise CarcliError(f"incomplete Stanford Cars devkit: {problem}")
    if "train" in _split_dirs(base):
        return "folders", base
    manifest = _manifest(base)
    if manifest:
        return "csv", manifest
    if any(_images(folder) for folder in _subdirs(base)):
        return "folders", base
    return None


def locate(root: Path) -> tuple[str, Path]:
    """The layout of `root` and where its data lives (a folder, or the manifest for csv)."""
    root = Path(root).expanduser()
    if not root.exists():
        raise CarcliError(f"data set not found: {root}")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return "csv", root
        raise CarcliError(f"{root} is a file, not a data set folder or a .csv manifest")
    base = root
    for _ in range(MAX_NESTING + 1):
        found = _match(base)
        if found:
            return found
        children = _subdirs(base)
        if len(children) != 1:
            break
        base = children[0]
    raise CarcliError(
        f"no data set found in {root}: looked for a Stanford Cars devkit (cars_train/ + devkit/*.mat), class "
        f"folders (train/<class>/ or <class>/ with images) and a CSV manifest ({', '.join(MANIFEST_NAMES)})"
    )


def detect_layout(root: Path) -> str:
    """The layout of `root`: "devkit", "folders" or "csv"; CarcliError when it is none of them."""
    return locate(root)[0]


# ---------------------------------------------------------------- devkit


def _devkit_samples(
    folder: Path, annotations: list[Annotation], split: str, n_classes: int, source: Path
) -> list[Sample]:
    """Samples for the annotations whose image file exists; labels become 0-based."""
    samples = []
    for item in annotations:
        if not 1 <= item.label <= n_classes:
            raise CarcliError(f"{source}: class {item.label} of {item.fname} is outside 1..{n_classes}")
        path = folder / item.fname
        if path.is_file():
            samples.append(Sample(path=path, label=item.label - 1, split=split, bbox=item.bbox))
    return samples


def _read_devkit(base: Path) -> tuple[list[str], list[Sample]]:
    meta, train_annos = devkit_file(base, DEVKIT_META), devkit_file(base, DEVKIT_TRAIN_ANNOS)
    if meta is None or train_annos is None:
        raise CarcliError(f"{base}: {DEVKIT_META} or {DEVKIT_TRAIN_ANNOS} is missing")
    names = read_class_names(meta)
    train = mat_annotations(train_annos)
    if train is None:
        raise CarcliError(f"{train_annos}: annotations have no class field")
    samples = _devkit_samples(base / DEVKIT_TRAIN_DIR, train, "train", len(names), train_annos)
    if (base / DEVKIT_TEST_DIR).is_dir():
        test = labelled_test_annotations(base)
        samples += _devkit_samples(base / DEVKIT_TEST_DIR, test, "test", len(names), base)
    return names, samples


# ---------------------------------------------------------------- class folders


def _read_folders(base: Path) -> tuple[list[str], list[Sample]]:
    """train/<class>/ [+ val/<class>/, test/<class>/], or <class>/ directly under `base` (all train)."""
    split_dirs = _split_dirs(base)
    if "train" not in split_dirs:
        split_dirs = {"train": [base]}
    found: list[tuple[str, str, list[Path]]] = [
        (split, folder.name, _images(folder))
        for split, parents in split_dirs.items()
        for parent in parents
        for folder in _subdirs(parent)
    ]
    class_names = sorted({name for _, name, _ in found})
    label = {name: i for i, name in enumerate(class_names)}
    samples = [Sample(path=path, label=label[name], split=split) for split, name, paths in found for path in paths]
    samples.sort(key=lambda s: (SPLITS.index(s.split), s.label, s.path))
    return class_names, samples


# ---------------------------------------------------------------- CSV manifest


def _manifest_rows(manifest: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; columns named in lower case."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as handle:
            lines = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise CarcliError(f"cannot read {manifest}: {err}") from None
    if not lines:
        raise CarcliError(f"{manifest} is empty; expected a header path,label[,split]")
    header = [column.strip().lower() for column in lines[0]]
    if not {"path", "label"}.issubset(header):
        raise CarcliError(f"{manifest} needs a header with the columns path and label (and optionally split)")
    return [
        (number, dict(zip(header, (cell.strip() for cell in row), strict=False)))
        for number, row in enumerate(lines[1:], start=2)
        if any(cell.strip() for cell in row)
    ]


def _manifest_split(manifest: Path, number: int, value: str) -> str:
    split = SPLIT_ALIASES.get((value or "train").lower())
    if split is None:
        raise CarcliError(f"{manifest}:{number}: split must be train, val or test, got {value!r}")
    return split


def _read_csv(manifest: Path) -> tuple[list[str], list[Sample]]:
    entries: list[tuple[Path, str, str]] = []
    for number, row in _manifest_rows(manifest):
        if not row.get("path") or not row.get("label"):
            raise CarcliError(f"{manifest}:{number}: empty path or label")
        split = _manifest_split(manifest, number, row.get("split", ""))
        entries.append((manifest.parent / row["path"], row["label"], split))
    missing = [path for path, _, _ in entries if not path.is_file()]
    if missing:
        raise CarcliError(f"{manifest}: {len(missing)} listed image files do not exist (first: {missing[0]})")
    class_names = sorted({name for _, name, _ in entries})
    label = {name: i for i, name in enumerate(class_names)}
    return class_names, [Sample(path=path, label=label[name], split=split) for path, name, split in entries]


# ---------------------------------------------------------------- loading and splitting

READERS: dict[str, Callable[[Path], tuple[list[str], list[Sample]]]] = {
    "devkit": _read_devkit,
    "folders": _read_folders,
    "csv": _read_csv,
}


def _check_classes(source: Path, class_names: list[str], samples: list[Sample]) -> None:
    if not samples:
        raise CarcliError(f"{source}: no images found")
    counts = Counter(sample.label for sample in samples)
    empty = [name for i, name in enumerate(class_names) if counts[i] == 0]
    if empty:
        raise CarcliError(f"{source}: {len(empty)} of {len(class_names)} classes have no images (first: {empty[0]!r})")


def _val_count(n: int, val_fraction: float) -> int:
    """round(n * val_fraction), keeping at least one image in train and, when n >= 2, one in val."""
    if n < 2 or val_fraction <= 0:
        return 0
    return min(n - 1, max(1, round(n * val_fraction)))


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> list[Sample]:
    """Move a seeded, per-class share of the train samples to "val"; order is kept."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, sample in enumerate(samples):
        if sample.split == "train":
            by_class.setdefault(sample.label, []).append(i)
    chosen: set[int] = set()
    for label in sorted(by_class):
        members = sorted(by_class[label], key=lambda i: (str(samples[i].path), i))
        chosen.update(rng.sample(members, _val_count(len(members), val_fraction)))
    return [replace(s, split="val") if i in chosen else s for i, s in enumerate(samples)]


def _check_val_fraction(val_fraction: float) -> None:
    if not 0 <= val_fraction < 1:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")


def load_dataset(root: Path, val_fraction: float = 0.2, seed: int = 0) -> DataSet:
    """Detect and read `root`; without val or test images, hold out `val_fraction` of each class as val."""
    _check_val_fraction(val_fraction)
    layout, base = locate(root)
    class_names, samples = READERS[layout](base)
    samples, notes = _once_each(base, class_names, samples)
    _check_classes(base, class_names, samples)
    if len(class_names) == 1:
        notes.append(f"{base} has only one class ({class_names[0]!r}): a classifier needs at least two")
    if not any(sample.split in ("val", "test") for sample in samples):
        samples = stratified_split(samples, val_fraction, seed)
        notes += _unsplit_classes(class_names, samples, val_fraction)
    return DataSet(root=Path(root), layout=layout, class_names=class_names, samples=samples, notes=notes)


def _once_each(source: Path, class_names: list[str], samples: list[Sample]) -> tuple[list[Sample], list[str]]:
    """Each image (by real path) once: listed twice with two labels is an error, with one label a warning."""
    first: dict[str, Sample] = {}
    kept: list[Sample] = []
    for sample in samples:
        seen = first.setdefault(os.path.realpath(sample.path), sample)
        if seen is sample:
            kept.append(sample)
        elif seen.label != sample.label:
            raise CarcliError(
                f"{source}: {sample.path} is listed twice with different labels "
                f"({class_names[seen.label]!r} and {class_names[sample.label]!r}); keep one"
            )
    repeats = len(samples) - len(kept)
    note = f"{source}: {repeats} images are listed more than once with the same label; each counts once"
    return kept, [note] if repeats else []


def _unsplit_classes(class_names: list[str], samples: list[Sample], val_fraction: float) -> list[str]:
    """A note naming the classes that got no validation image from the split (fewer than 2 images)."""
    if val_fraction <= 0:
        return []
    counts = Counter(sample.label for sample in samples if sample.split == "val")
    alone = [name for i, name in enumerate(class_names) if counts[i] == 0]
    if not alone:
        return []
    return [
        f"{len(alone)} classes have fewer than 2 images, so none of theirs is held out for validation "
        f"(first: {alone[0]!r}); their accuracy is not measured"
    ]
