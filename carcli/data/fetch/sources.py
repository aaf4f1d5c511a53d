"""What the sources hold: archives extracted, folders walked, every file found by name (`Survey`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carcli.data.devkit import DEVKIT_TEST_DIR, DEVKIT_TRAIN_DIR
from carcli.data.fetch.archives import extract, is_archive
from carcli.data.fetch.download import hash_file
from carcli.data.layouts import IGNORED_NAMES, IMAGE_EXTENSIONS
from carcli.errors import CarcliError
from carcli.progress import Reporter


@dataclass
class Survey:
    """Every file of the sources by lower-case name, photo folders, parquet files and the roots walked."""

    roots: list[Path]
    files: dict[str, list[Path]] = field(default_factory=dict)
    photo_dirs: dict[str, list[Path]] = field(default_factory=lambda: {DEVKIT_TRAIN_DIR: [], DEVKIT_TEST_DIR: []})
    parquets: list[Path] = field(default_factory=list)

    def add(self, path: Path) -> None:
        self.files.setdefault(path.name.lower(), []).append(path)
        if path.suffix.lower() == ".parquet":
            self.parquets.append(path)

    def file(self, name: str) -> Path | None:
        """The source file called `name`; copies with equal content count once."""
        found = self.files.get(name.lower(), [])
        if len({hash_file(p).hexdigest() for p in found}) > 1:
            raise CarcliError(f"the sources hold different files named {name}: {found[0]} and {found[1]}")
        return found[0] if found else None

    def photos(self, name: str) -> Path | None:
        found = self.photo_dirs[name]
        if len(found) > 1:
            raise CarcliError(f"the sources hold several {name}/ photo folders: {found[0]} and {found[1]}")
        return found[0] if found else None


def visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_NAMES


def _survey(roots: list[Path], loose: list[Path]) -> Survey:
    survey = Survey(roots)
    for path in loose:
        survey.add(path)
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if visible(d))
            here = Path(folder)
            for name in sorted(filter(visible, files)):
                survey.add(here / name)
            photos = survey.photo_dirs.get(here.name.lower())
            if photos is not None and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
                photos.append(here)
    return survey


def gather(sources: Sequence[Path], staging: Path, max_bytes: int, reporter: Reporter) -> Survey:
    """Extract the archives among `sources` into staging/src/, then survey them with the folders and files."""
    roots: list[Path] = []
    loose: list[Path] = []
    for i, source in enumerate(sources):
        source = Path(source).expanduser()
        if source.is_dir():
            roots.append(source)
        elif is_archive(source):
            reporter.info(f"extracting {source.name}")
            extract(source, staging / "src" / str(i), max_bytes, reporter)
            roots.append(staging / "src" / str(i))
        elif source.is_file():
            loose.append(source)
        else:
            raise CarcliError(f"{source}: no such file or folder")
    return _survey(roots, loose)
