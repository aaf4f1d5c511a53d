"""Atomic file writes and output-path checks: every file carcli writes appears whole or not at all, so a crash
or Ctrl-C never leaves half a checkpoint, table or plot where a later command would trust it.

Temporary files are named `.NAME.carcli-PID-XXXXXXXX.SUFFIX`; one whose process is gone (killed mid-write)
is removed by the next write into that folder. An operating-system error while writing (no space, no
permission) becomes one CarcliError naming the user's path, and the previous file stays as it was.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import io
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from carcli.errors import CarcliError

TEMP_MARK = ".carcli-"
_TEMP_NAME = re.compile(r"^\..+\.carcli-(?P<pid>\d+)-[a-z0-9_]{8}")


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path beside `path` to write to; renamed to `path` only when the block succeeds."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_MARK}{os.getpid()}-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        yield Path(tmp)
        os.chmod(tmp, usual_mode())  # mkstemp makes the file private; give it the usual permissions
        os.replace(tmp, path)
    except OSError as exc:
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_error(path: Path, exc: OSError) -> CarcliError:
    """One line naming the user's `path` (never carcli's temporary file) and what the system said."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        kept = f"; the previous {path.name} is unchanged" if path.exists() else ""
        return CarcliError(f"cannot write {path}: no space left on the device{kept}; free some space and run again")
    if isinstance(exc, PermissionError):
        return CarcliError(f"cannot write {path}: permission denied; choose a folder you may write to")
    reason = (exc.strerror or str(exc) or type(exc).__name__).lower()
    return CarcliError(f"cannot write {path}: {reason}")


def remove_stale_temps(folder: Path) -> list[Path]:
    """Delete the temporary files in `folder` left by carcli processes that no longer run; returns them."""
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(folder):
            found = _TEMP_NAME.match(entry.name)
            if found and entry.is_file(follow_symlinks=False) and not _running(int(found["pid"])):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by someone else
        return True
    return True


def check_output_file(path: Path, flag: str = "--out", needed_bytes: int = 0) -> None:
    """Refuse, before any work, an output file that cannot be written: a folder there, a file where a parent
    folder should be, no write permission, or (when `needed_bytes` is known) too little free space."""
    if path.is_dir():
        raise CarcliError(f"{flag} {path} is a folder; give a file name")
    _check_writable_parent(path, flag, needed_bytes)


def check_output_dir(path: Path, flag: str = "--out", needed_bytes: int = 0) -> None:
    """Like `check_output_file` for an output folder: it may exist (as a folder) or be creatable."""
    if path.exists() and not path.is_dir():
        raise CarcliError(f"{flag} {path} exists and is not a folder; give a folder name")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CarcliError(f"{flag} {path}: permission denied; choose a folder you may write to")
        _check_space(path, flag, needed_bytes)
        return
    _check_writable_parent(path, flag, needed_bytes)


def _check_writable_parent(path: Path, flag: str, needed_bytes: int) -> None:
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CarcliError(f"{flag} {path}: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CarcliError(f"{flag} {path}: no permission to write in {ancestor}; choose a folder you may write to")
    _check_space(ancestor, flag, needed_bytes)


def _check_space(folder: Path, flag: str, needed_bytes: int) -> None:
    if needed_bytes and shutil.disk_usage(folder).free < needed_bytes:
        free = shutil.disk_usage(folder).free
        raise CarcliError(
            f"{flag} {folder}: about {needed_bytes / 1e6:.0f} MB are needed but only {free / 1e6:.0f} MB are free"
        )


def write_text(path: Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: Path, payload: bytes) -> None:
    with atomic_output(path) as tmp:
        tmp.write_bytes(payload)


def csv_text(header: Sequence[Any], rows: Iterable[Sequence[Any]], line_end: str = "\r\n") -> str:
    """A CSV table as text: the header row, then the rows (Python's csv dialect, `line_end` between rows)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def write_csv(path: Path, header: Sequence[Any], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV table atomically."""
    write_text(path, csv_text(header, rows))


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
