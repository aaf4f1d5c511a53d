"""Building a data set folder: staged beside its target, every image checked, the unreadable ones listed,
the `.carcli-dataset.json` marker written, then renamed into place; `FetchResult` read back from the marker."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from carcli import __version__
from carcli.data.devkit import write_devkit
from carcli.data.images import find_unreadable
from carcli.data.layouts import TORCHVISION_DIR, DataSet, load_dataset
from carcli.errors import CarcliError
from carcli.files import swap_dir
from carcli.progress import Reporter

MARKER = ".carcli-dataset.json"
REPORT = "unreadable.txt"
CHECK_CHUNK = 512


def _unreadable(paths: list[Path], reporter: Reporter) -> set[Path]:
    bad: set[Path] = set()
    advance = reporter.stage("check images", len(paths), "images")
    for start in range(0, len(paths), CHECK_CHUNK):
        bad.update(find_unreadable(paths[start : start + CHECK_CHUNK]))
        advance(min(start + CHECK_CHUNK, len(paths)))
    return bad


def _finish(set_dir: Path, reporter: Reporter, check: bool = True) -> tuple[DataSet, int]:
    """Open every image once, drop and list the unreadable ones, rewrite the devkit files to match, re-read.

    Returns the data set as later commands will see it and the number of images excluded.
    """
    dataset = load_dataset(set_dir, val_fraction=0.0)
    bad = _unreadable([s.path for s in dataset.samples], reporter) if check else set()
    for path in bad:
        path.unlink(missing_ok=True)
    if bad:
        lines = sorted(path.relative_to(set_dir).as_posix() for path in bad)
        (set_dir / REPORT).write_text("\n".join(lines) + "\n", encoding="utf-8")
        reporter.warn(f"{len(bad)} unreadable images excluded (listed in {REPORT})")
    if dataset.layout == "devkit":
        base = set_dir / TORCHVISION_DIR
        write_devkit(base, dataset.class_names, [s for s in dataset.samples if s.path not in bad])
    return load_dataset(set_dir, val_fraction=0.0), len(bad)


@dataclass
class FetchResult:
    name: str
    path: Path
    kind: str  # "stanford-cars", "folder", "prepared", "demo"
    source: str
    classes: int
    images: dict[str, int]  # split -> images
    unreadable: int = 0
    report: Path | None = None
    unverified: list[str] = field(default_factory=list)  # downloaded files that had no checksum to check
    reused: bool = False  # already there: nothing was downloaded or imported
    prepared: FetchResult | None = None  # the --prepare-size copy


def split_counts(dataset: DataSet) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sample in dataset.samples:
        counts[sample.split] = counts.get(sample.split, 0) + 1
    return counts


def read_marker(set_dir: Path) -> dict[str, Any] | None:
    try:
        marker = json.loads((set_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


def result_from_marker(set_dir: Path, marker: dict[str, Any], reused: bool = False) -> FetchResult:
    report = set_dir / REPORT
    return FetchResult(
        name=set_dir.name,
        path=set_dir,
        kind=marker["kind"],
        source=marker["source"],
        classes=marker["classes"],
        images=marker["images"],
        unreadable=marker.get("unreadable", 0),
        report=report if report.is_file() else None,
        reused=reused,
    )


def check_replaceable(target: Path) -> None:
    """carcli replaces only its own data sets and empty folders, never other files."""
    if target.is_dir() and (read_marker(target) is not None or not any(target.iterdir())):
        return
    if target.exists():
        raise CarcliError(f"{target} exists and was not made by carcli fetch-data; move it away or use another --root")


def build(
    target: Path,
    kind: str,
    fill: Callable[[Path, Path], str],
    reporter: Reporter,
    extra: dict[str, Any] | None = None,
    check: bool = True,
) -> FetchResult:
    """Build a data set in a hidden folder beside `target` and rename it into place only when complete.

    `fill(staging, set_dir)` writes the data set into set_dir (using staging for scratch) and returns
    its source description. An interruption or error leaves `target` as it was.
    """
    check_replaceable(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        set_dir = staging / "set"
        set_dir.mkdir()
        source = fill(staging, set_dir)
        dataset, excluded = _finish(set_dir, reporter, check)
        marker = {
            "format": 1,
            "carcli": __version__,
            "name": target.name,
            "kind": kind,
            "source": source,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "classes": len(dataset.class_names),
            "images": split_counts(dataset),
            "unreadable": excluded,
            **(extra or {}),
        }
        (set_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        swap_dir(set_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result_from_marker(target, marker)
