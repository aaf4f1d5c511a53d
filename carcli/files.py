"""Atomic file writes: every file carcli writes appears whole or not at all, so a crash or Ctrl-C never leaves
half a checkpoint, table or plot where a later command would trust it."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` only when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, usual_mode())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, payload: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


def usual_mode(directory: bool = False) -> int:
    """The permissions a plain open() or mkdir() would give under the current umask (mkstemp/mkdtemp give 0600/0700)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def swap_dir(new: Path, target: Path, lost_race: Callable[[], bool] = lambda: False) -> None:
    """Rename folder `new` to `target`; a folder already at `target` is moved aside first, put back if the
    rename fails, and deleted only once `new` is in place.

    `lost_race()` tells whether a failed rename means another process has just put an equally good
    `target` in place; that one is then kept instead of raising.
    """
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except OSError:
        if not lost_race():
            if old is not None and not target.exists():
                with contextlib.suppress(OSError):
                    os.rename(old, target)
            raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
