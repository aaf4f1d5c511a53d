"""The known data sets (`fetch-data --list`): Stanford Cars, the demo set and every set carcli put under a root."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from carcli.data import demo
from carcli.data.fetch.build import read_marker
from carcli.data.fetch.request import STANFORD_CARS
from carcli.data.fetch.sources import visible


@dataclass
class DataSetInfo:
    name: str
    path: Path
    present: bool
    kind: str
    images: int | None = None
    size_bytes: int | None = None


def _disk_size(folder: Path) -> int:
    return sum((Path(here) / name).stat().st_size for here, _, files in os.walk(folder) for name in files)


def _demo_images(path: Path) -> int | None:
    try:
        marker = json.loads((path / demo.MARKER).read_text(encoding="utf-8"))
        return sum(marker["per_class"].values()) * len(marker["classes"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def list_datasets(root: Path) -> list[DataSetInfo]:
    """The known data sets (Stanford Cars, the demo set) and every data set carcli put under `root`."""
    found: dict[str, DataSetInfo] = {}
    children = sorted(p for p in root.iterdir() if p.is_dir() and visible(p.name)) if root.is_dir() else []
    for path in children:
        marker = read_marker(path)
        if marker is not None:
            images = sum(marker.get("images", {}).values())
            found[path.name] = DataSetInfo(path.name, path, True, marker.get("kind", "?"), images, _disk_size(path))
        elif path.name == demo.DEMO_NAME and (path / demo.MARKER).is_file():
            found[path.name] = DataSetInfo(path.name, path, True, "demo", _demo_images(path), _disk_size(path))
    for name, kind in ((STANFORD_CARS, STANFORD_CARS), (demo.DEMO_NAME, "demo")):
        found.setdefault(name, DataSetInfo(name, root / name, False, kind))
    return sorted(found.values(), key=lambda info: (not info.present, info.name))
