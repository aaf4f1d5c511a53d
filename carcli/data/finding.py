"""Turning what a user typed (files, folders, globs) into image files: each real file once, no symlink loops.

Folders are searched recursively and `**` in a glob matches any depth; both follow symbolic links to
folders, but never into a folder already visited (by its real path), so a link such as `self -> .`
costs nothing and a photo reached by two names is listed once.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator, Sequence
from fnmatch import fnmatchcase
from pathlib import Path

GLOB_CHARS = "*?["


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """The files named by `inputs` (first name kept for each real file), and (input, why) for inputs naming none."""
    found: dict[str, Path] = {}
    skipped: list[tuple[str, str]] = []
    for text in inputs:
        path = Path(text).expanduser()
        if any(c in text for c in GLOB_CHARS) and not path.exists():
            files = _glob(str(path))
            if not files:
                skipped.append((text, "no file matches this pattern"))
        elif path.is_dir():
            files = sorted(p for p in walk_files(path) if not _hidden(p.relative_to(path).parts))
        elif path.is_file():
            files = [path]
        else:
            skipped.append((text, "not found"))
            continue
        for file in files:
            found.setdefault(os.path.realpath(file), file)
    return list(found.values()), skipped


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under `root`, following links to folders but entering each real folder once."""
    seen: set[str] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def _glob(pattern: str) -> list[Path]:
    parts = Path(pattern).parts
    if "**" not in parts:  # no recursion, so no loop: the standard library's matching
        return [Path(p) for p in sorted(glob.glob(pattern)) if os.path.isfile(p)]
    first = next(i for i, part in enumerate(parts) if any(c in part for c in GLOB_CHARS))
    base = Path(*parts[:first]) if first else Path(".")
    wanted = parts[first:]
    return sorted(p for p in walk_files(base) if _matches(p.relative_to(base).parts, wanted))


def _matches(parts: Sequence[str], pattern: Sequence[str]) -> bool:
    """Glob matching of path components: `**` spans zero or more folders; hidden names need a leading dot."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_matches(parts[i:], pattern[1:]) for i in range(len(parts) + 1) if not _hidden(parts[:i]))
    return bool(parts) and _component(parts[0], pattern[0]) and _matches(parts[1:], pattern[1:])


def _component(name: str, pattern: str) -> bool:
    return fnmatchcase(name, pattern) and (not name.startswith(".") or pattern.startswith("."))


def _hidden(parts: Sequence[str]) -> bool:
    return any(part.startswith(".") for part in parts)
