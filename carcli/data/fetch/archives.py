"""Safe extraction of zip and tar archives: every member checked (no absolute paths, no `..`, no links out,
a total size limit) before anything is written."""

from __future__ import annotations

import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from carcli.errors import CarcliError, one_line
from carcli.progress import Reporter, SilentReporter

MAX_EXTRACT_BYTES = 32 * 2**30  # a decompression bomb stops here; all of Stanford Cars is under 2 GB


def is_archive(path: Path) -> bool:
    return path.is_file() and (zipfile.is_zipfile(path) or tarfile.is_tarfile(path))


def _check_member(archive: Path, name: str) -> None:
    """Refuse member names that would land outside the target: absolute paths, drive letters, `..`."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix) or ".." in PurePosixPath(posix).parts:
        raise CarcliError(f"refusing {archive.name}: member {name!r} points outside the extraction folder")


def _check_total(archive: Path, total: int, max_bytes: int) -> None:
    if total > max_bytes:
        raise CarcliError(
            f"refusing {archive.name}: it unpacks to {total:,} bytes, over the {max_bytes:,}-byte limit "
            "(a decompression bomb?)"
        )


def _extract_zip(archive: Path, target: Path, max_bytes: int, reporter: Reporter) -> None:
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        for info in members:
            _check_member(archive, info.filename)
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise CarcliError(f"refusing {archive.name}: member {info.filename!r} is a symbolic link")
        _check_total(archive, sum(info.file_size for info in members), max_bytes)
        advance = reporter.stage(f"extract {archive.name}", len(members), "files")
        for i, info in enumerate(members, 1):
            zf.extract(info, target)  # names were checked above; zipfile also stops each member at its size
            advance(i)


def _extract_tar(archive: Path, target: Path, max_bytes: int, reporter: Reporter) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_member(archive, member.name)
        _check_total(archive, sum(m.size for m in members if m.isfile()), max_bytes)
        advance = reporter.stage(f"extract {archive.name}", len(members), "files")

        def counted() -> Iterator[tarfile.TarInfo]:
            for i, member in enumerate(members, 1):
                yield member
                advance(i)

        # the "data" filter refuses links pointing outside, device files and anything escaping `target`
        tf.extractall(target, members=counted(), filter="data")


def extract(archive: Path, target: Path, max_bytes: int = MAX_EXTRACT_BYTES, reporter: Reporter | None = None) -> None:
    """Extract a zip or tar archive (any compression) into `target`, refusing anything unsafe (CarcliError)."""
    reporter = reporter or SilentReporter()
    target.mkdir(parents=True, exist_ok=True)
    try:
        if zipfile.is_zipfile(archive):
            _extract_zip(archive, target, max_bytes, reporter)
        else:
            _extract_tar(archive, target, max_bytes, reporter)
    except tarfile.FilterError as err:
        raise CarcliError(f"refusing {archive.name}: {err}") from None
    except (zlib.error, lzma.LZMAError, EOFError) as err:  # the index is intact but the packed data is not
        raise CarcliError(f"cannot extract {archive}: its compressed data is damaged ({err}); get it again") from None
    except (zipfile.BadZipFile, tarfile.TarError, OSError, ValueError) as err:
        raise CarcliError(f"cannot extract {archive}: {one_line(str(err))}") from None
