"""Stanford Cars in torchvision's devkit layout from whatever the sources are: a devkit, parquet files
(`carcli.data.fetch.parquet`) or class folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from carcli.data.devkit import (
    DEVKIT_META,
    DEVKIT_TEST_ANNOS,
    DEVKIT_TEST_CSV,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    read_class_names,
    split_folder,
    write_provisional,
)
from carcli.data.fetch.parquet import assemble_parquet
from carcli.data.fetch.sources import Survey, gather, visible
from carcli.data.layouts import DataSet, load_dataset
from carcli.errors import CarcliError
from carcli.progress import Reporter


def _place(folder: Path, dest: Path, staging: Path) -> None:
    """Move a photo folder to `dest` when carcli extracted it, else copy its files (the user's stay untouched)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if folder.resolve().is_relative_to(staging.resolve()):
        os.rename(folder, dest)
    else:
        dest.mkdir()
        for path in folder.iterdir():
            if path.is_file() and visible(path.name):
                shutil.copyfile(path, dest / path.name)
    dest.chmod(dest.stat().st_mode | 0o700)  # unreadable photos get deleted from it later


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _assemble_devkit(survey: Survey, train_dir: Path, base: Path, staging: Path, reporter: Reporter) -> str:
    meta, train_annos = survey.file(DEVKIT_META), survey.file(DEVKIT_TRAIN_ANNOS)
    if meta is None or train_annos is None:
        raise CarcliError(
            f"found {DEVKIT_TRAIN_DIR}/ photos but not the devkit ({DEVKIT_META} and {DEVKIT_TRAIN_ANNOS}): "
            "add car_devkit.tgz with another --from"
        )
    _place(train_dir, base / DEVKIT_TRAIN_DIR, staging)
    _copy(meta, base / "devkit" / DEVKIT_META)
    _copy(train_annos, base / "devkit" / DEVKIT_TRAIN_ANNOS)
    test_dir, labels, table = (
        survey.photos(DEVKIT_TEST_DIR),
        survey.file(DEVKIT_TEST_ANNOS),
        survey.file(DEVKIT_TEST_CSV),
    )
    if test_dir and (labels or table):
        _place(test_dir, base / DEVKIT_TEST_DIR, staging)
        if labels:
            _copy(labels, base / DEVKIT_TEST_ANNOS)
        elif table:
            _copy(table, base / "devkit" / DEVKIT_TEST_CSV)
    elif test_dir:
        reporter.warn(
            f"{DEVKIT_TEST_DIR}/ came without test labels ({DEVKIT_TEST_ANNOS} or {DEVKIT_TEST_CSV}): "
            "the test split is left out"
        )
    return "devkit"


def _name_key(name: str) -> str:
    """Class names compared across sources: case, spacing and '/' vs '-' (not allowed in folder names) ignored."""
    return " ".join(name.replace("/", "-").casefold().split())


def _class_folder_set(survey: Survey) -> DataSet:
    for root in survey.roots:
        try:
            dataset = load_dataset(root, val_fraction=0.0)
        except CarcliError:
            continue
        if dataset.layout != "devkit":
            return dataset
    raise CarcliError(
        f"no Stanford Cars data in {', '.join(str(r) for r in survey.roots) or 'the given files'}: looked for "
        f"{DEVKIT_TRAIN_DIR}/ with the devkit .mat files, train/test parquet files and class folders"
    )


def _assemble_folders(survey: Survey, base: Path) -> str:
    """Class folders (train/<class>/, test/<class>/) -> cars_train/, cars_test/; val joins train."""
    dataset = _class_folder_set(survey)
    names, labels = dataset.class_names, list(range(len(dataset.class_names)))
    meta = survey.file(DEVKIT_META)
    if meta is not None:  # keep the devkit's class numbering
        order = read_class_names(meta)
        index = {_name_key(name): i for i, name in enumerate(order)}
        unknown = [name for name in names if _name_key(name) not in index]
        if unknown:
            raise CarcliError(f"class folder {unknown[0]!r} is not a class of {meta.name}")
        names, labels = order, [index[_name_key(name)] for name in names]
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for sample in dataset.samples:
        split = "test" if sample.split == "test" else "train"
        fname = f"{len(rows[split]) + 1:05d}{sample.path.suffix.lower()}"
        _copy(sample.path, split_folder(base, split) / fname)
        rows[split].append({"class": labels[sample.label] + 1, "fname": fname})
    write_provisional(base, names, rows)
    return f"class folders ({dataset.layout})"


def assemble_stanford_cars(
    sources: Sequence[Path], staging: Path, base: Path, max_bytes: int, reporter: Reporter
) -> str:
    """Turn whatever the sources are into base/ in the devkit layout; returns what kind of source it was."""
    survey = gather(sources, staging, max_bytes, reporter)
    train_dir = survey.photos(DEVKIT_TRAIN_DIR)
    if train_dir is not None:
        return _assemble_devkit(survey, train_dir, base, staging, reporter)
    if survey.parquets:
        return assemble_parquet(survey, base, reporter)
    return _assemble_folders(survey, base)
