"""Stanford Cars from parquet files (the Hugging Face conversion): images written out, labels as annotations."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from carcli.data.devkit import DEVKIT_META, read_class_names, split_folder, write_provisional
from carcli.data.fetch.sources import Survey
from carcli.errors import CarcliError
from carcli.progress import Reporter


def _parquet_split(path: Path) -> str | None:
    """train/test from the file name (train-00000-of-00002.parquet) or its folder (train/0000.parquet)."""
    for name in (path.stem.lower(), path.parent.name.lower()):
        for split in ("train", "test"):
            if name.startswith(split):
                return split
    return None


def _embedded_class_names(path: Path) -> list[str] | None:
    """The ClassLabel names that `datasets` stores in a parquet file's schema metadata, if any."""
    import pyarrow.parquet as pq

    meta = pq.read_schema(path).metadata or {}
    try:
        info = json.loads(meta[b"huggingface"])
        names = (info.get("info", info))["features"]["label"]["names"]
    except (KeyError, TypeError, ValueError):
        return None
    return [str(name).strip() for name in names]


def _parquet_class_names(survey: Survey, files: list[Path]) -> list[str]:
    """cars_meta.mat's names when the sources have it (checked against the parquet's own), else the parquet's."""
    embedded = _embedded_class_names(files[0])
    meta = survey.file(DEVKIT_META)
    if meta is None:
        if embedded is None:
            raise CarcliError(f"{files[0].name} names no classes: add the devkit's {DEVKIT_META} with another --from")
        return embedded
    names = read_class_names(meta)
    if embedded is not None and embedded != names:
        first = next((i for i, pair in enumerate(zip(embedded, names, strict=False)) if pair[0] != pair[1]), None)
        where = f"class {first + 1}: {embedded[first]!r} vs {names[first]!r}" if first is not None else "count"
        raise CarcliError(f"the class names in {files[0].name} disagree with {meta.name} ({where})")
    return names


def _image_bytes(value: Any) -> bytes:
    """The bytes of a parquet image cell: a `datasets` Image struct {bytes, path} or plain binary."""
    data = value.get("bytes") if isinstance(value, dict) else value
    return data if isinstance(data, bytes) else b""  # no bytes: written empty, then listed as unreadable


def _parquet_rows(path: Path) -> Iterator[tuple[bytes, int]]:
    """(image bytes, label) for each row of a parquet file with `image` and `label` columns."""
    import pyarrow.parquet as pq

    parquet = pq.ParquetFile(path)
    if not {"image", "label"} <= set(parquet.schema_arrow.names):
        raise CarcliError(f"{path.name} has no image and label columns (it has {parquet.schema_arrow.names})")
    for batch in parquet.iter_batches(batch_size=256, columns=["image", "label"]):
        images = map(_image_bytes, batch.column("image").to_pylist())
        yield from zip(images, batch.column("label").to_pylist(), strict=True)


def _parquet_by_split(survey: Survey, reporter: Reporter) -> dict[str, list[Path]]:
    by_split: dict[str, list[Path]] = {"train": [], "test": []}
    for path in sorted(survey.parquets, key=lambda p: p.name):
        split = _parquet_split(path)
        if split is None:
            reporter.warn(f"skipping {path.name}: neither a train nor a test split")
        else:
            by_split[split].append(path)
    if not by_split["train"]:
        raise CarcliError("no train parquet file among the sources (expected names like train-00000-of-00002.parquet)")
    return by_split


def assemble_parquet(survey: Survey, base: Path, reporter: Reporter) -> str:
    """Write each row's image bytes to cars_train/ or cars_test/ as 00001.jpg, ... with provisional annotations."""
    import pyarrow.parquet as pq

    by_split = _parquet_by_split(survey, reporter)
    names = _parquet_class_names(survey, by_split["train"])
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for split, files in by_split.items():
        folder = split_folder(base, split)
        folder.mkdir(parents=True, exist_ok=True)
        total = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        advance = reporter.stage(f"convert {split} parquet", total, "images")
        for data, label in (row for path in files for row in _parquet_rows(path)):
            fname = f"{len(rows[split]) + 1:05d}.jpg"
            (folder / fname).write_bytes(data)
            rows[split].append({"class": int(label) + 1, "fname": fname})
            advance(len(rows[split]))
    write_provisional(base, names, rows)
    return "parquet"
