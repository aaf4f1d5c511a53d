"""Getting data sets onto disk: the mirror table, downloads, safe extraction, imports and registration.

Everything lands under the data root (`carcli.paths.data_home`), one folder per data set, each with
a `.carcli-dataset.json` marker:

- `stanford-cars/` holds Stanford Cars in exactly the layout `torchvision.datasets.StanfordCars(root)`
  reads (`stanford_cars/{cars_train, cars_test, cars_test_annos_withlabels.mat, devkit/*.mat}`),
  whatever it came from: a mirror (the Hugging Face parquet conversion, an archive in the devkit
  layout), or local archives, folders and parquet files (`--from`).
- `NAME/` holds a registered class-folder or CSV data set as `train|val|test/<class>/` folders.
- `NAME-<N>px/` is a copy with the shorter image side at N px (`--prepare-size`).
- `demo/` is the generated demo set (`carcli.data.demo`).

Downloads resume from `*.part` files (HTTP Range), retry timeouts, dropped connections and 5xx
answers with exponential backoff, and check each file's SHA-256 against the table (else against the
`X-Linked-Etag` header Hugging Face sends with LFS files); a mismatch deletes the partial file.
Archives are extracted only after every member is checked (no absolute paths, no `..`, no links out,
a total size limit), into a temporary folder beside the target that is renamed into place only when
the data set is complete; every image is decoded once and unreadable ones are excluded and listed in
`unreadable.txt`. Nothing here prints: progress goes to a `Reporter`.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import lzma
import os
import re
import shutil
import socket
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import numpy as np
import scipy.io
from PIL import Image

from carcli import __version__
from carcli.data import demo
from carcli.data.images import find_unreadable, open_rgb
from carcli.data.layouts import (
    BBOX_FIELDS,
    DEVKIT_META,
    DEVKIT_TEST_ANNOS,
    DEVKIT_TEST_CSV,
    DEVKIT_TEST_DIR,
    DEVKIT_TRAIN_ANNOS,
    DEVKIT_TRAIN_DIR,
    IGNORED_NAMES,
    IMAGE_EXTENSIONS,
    TORCHVISION_DIR,
    DataSet,
    Sample,
    load_dataset,
    read_class_names,
)
from carcli.errors import CarcliError, UsageError, one_line
from carcli.files import swap_dir

STANFORD_CARS = "stanford-cars"
FOLDER = "folder"
DATASETS = (STANFORD_CARS, FOLDER, demo.DEMO_NAME)
MARKER = ".carcli-dataset.json"
REPORT = "unreadable.txt"
DOWNLOADS = ".downloads"
MIRRORS_ENV = "CARCLI_MIRRORS"
DEVKIT_TEST_ANNOS_NOLABELS = "cars_test_annos.mat"
MAX_EXTRACT_BYTES = 32 * 2**30  # a decompression bomb stops here; all of Stanford Cars is under 2 GB
MIN_PREPARE_SIZE = 16
CHUNK = 1 << 20
CHECK_CHUNK = 512
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


# ---------------------------------------------------------------- the mirror table


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None  # None: checked against the server's X-Linked-Etag if it sends one

    @property
    def name(self) -> str:
        name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(self.url).path)).name
        return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "download"


@dataclass(frozen=True)
class Mirror:
    """One place that serves the whole data set: all of `files` together make it."""

    name: str
    files: tuple[RemoteFile, ...]


_HF = "https://huggingface.co/datasets/tanganke/stanford_cars/resolve/9abf6cf7d6dfa7b95152a0d6e791ea9435b47a40/data"

# Tried in order. Hashes are the Git LFS SHA-256 of each file; train-00001 has none published in the
# table (its X-Linked-Etag header is checked instead), the GitHub archive has no stable checksum at all.
MIRRORS: tuple[Mirror, ...] = (
    Mirror(
        "huggingface tanganke/stanford_cars (parquet)",
        (
            RemoteFile(
                f"{_HF}/train-00000-of-00002.parquet",
                "b35f21fdeda40973f3b3e1d17bd7a0d2baf8ef249777fc0a0ea7c33c63fa718e",
            ),
            RemoteFile(f"{_HF}/train-00001-of-00002.parquet"),
            RemoteFile(
                f"{_HF}/test-00000-of-00002.parquet", "ddb15e6a44573203cc1be170be2f05d1e34b22532d37579a6d53cfd05c21485a"
            ),
            RemoteFile(
                f"{_HF}/test-00001-of-00002.parquet", "22c54046e4beaeb01d4a6daa72a39c5af50feda6850dbf2b0f784cabf865ccaa"
            ),
        ),
    ),
    Mirror(
        "github jhpohovey/StanfordCars-Dataset (devkit layout)",
        (RemoteFile("https://github.com/jhpohovey/StanfordCars-Dataset/archive/refs/heads/main.zip"),),
    ),
)


def _remote(url: str) -> RemoteFile:
    """`URL` or `URL#sha256=HEX` -> RemoteFile."""
    address, fragment = urllib.parse.urldefrag(url)
    if urllib.parse.urlparse(address).scheme not in ("http", "https"):
        raise UsageError(f"--url needs an http(s) URL, got {url!r}")
    sha256 = fragment.removeprefix("sha256=").lower() if fragment else None
    if sha256 is not None and not SHA256_PATTERN.fullmatch(sha256):
        raise UsageError(f"--url {url}: the fragment must be #sha256=<64 hex digits>")
    return RemoteFile(address, sha256)


def _mirror_file(path: Path) -> list[Mirror]:
    """The table in the JSON file $CARCLI_MIRRORS: [{"name": ..., "files": [{"url": ..., "sha256": ...}]}]."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        return [
            Mirror(str(e["name"]), tuple(RemoteFile(str(f["url"]), f.get("sha256")) for f in e["files"]))
            for e in entries
        ]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise CarcliError(f"{MIRRORS_ENV}={path}: not a mirror table ({type(err).__name__}: {err})") from None


def mirror_table(urls: Sequence[str] = ()) -> list[Mirror]:
    """The mirrors to try, in order: --url files first, then $CARCLI_MIRRORS's table or the built-in one."""
    table = _mirror_file(Path(os.environ[MIRRORS_ENV])) if os.environ.get(MIRRORS_ENV) else list(MIRRORS)
    if urls:
        table.insert(0, Mirror("--url", tuple(_remote(url) for url in urls)))
    return table


# ---------------------------------------------------------------- progress


class Reporter(Protocol):
    """Where long work reports. `update` gives the absolute progress of a named task (unit "B" = bytes)."""

    def info(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def update(self, task: str, done: int, total: int | None, unit: str) -> None: ...


class NullReporter:
    def info(self, message: str) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def update(self, task: str, done: int, total: int | None, unit: str) -> None:
        pass


# ---------------------------------------------------------------- downloads


@dataclass(frozen=True)
class Network:
    timeout: float = 30.0  # seconds without data before a try is given up
    retries: int = 4  # further tries after timeouts, dropped connections, 5xx and 429
    backoff: float = 2.0  # seconds before the first retry; doubles each time


class ChecksumError(CarcliError):
    """A downloaded file's SHA-256 differs from the expected one."""


class _Retryable(Exception):
    """A failure worth another try: timeout, dropped connection, 5xx."""


class _CannotResume(Exception):
    """The server answered 416 to a Range request: the partial file does not fit the remote one."""


class _KeepLinkedEtag(urllib.request.HTTPRedirectHandler):
    """Follows redirects and keeps the X-Linked-Etag (Hugging Face's LFS SHA-256) a redirect carried."""

    def __init__(self) -> None:
        super().__init__()
        self.linked_etag: str | None = None

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        self.linked_etag = headers.get("X-Linked-Etag") or self.linked_etag
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _hash_file(path: Path) -> Any:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest


def _header_sha256(value: str | None) -> str | None:
    """The SHA-256 in an ETag-like header value, if it is one (`"<64 hex>"`)."""
    text = (value or "").removeprefix("W/").strip('"').lower()
    return text if SHA256_PATTERN.fullmatch(text) else None


def _open(url: str, offset: int, network: Network) -> tuple[http.client.HTTPResponse, _KeepLinkedEtag]:
    headers = {"User-Agent": f"carcli/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    redirects = _KeepLinkedEtag()
    try:
        response = urllib.request.build_opener(redirects).open(
            urllib.request.Request(url, headers=headers), timeout=network.timeout
        )
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:
            raise _CannotResume from None
        if err.code >= 500 or err.code == 429:
            raise _Retryable(f"HTTP {err.code} {err.reason}") from None
        raise CarcliError(f"{url}: HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        raise _network_error(url, err.reason) from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
        raise _Retryable(f"{type(err).__name__}: {err}") from None
    return response, redirects


def _network_error(url: str, reason: object) -> Exception:
    host = urllib.parse.urlparse(url).hostname
    if isinstance(reason, socket.gaierror):
        return CarcliError(f"cannot resolve {host} ({reason.strerror}): offline?")
    if isinstance(reason, ConnectionRefusedError):
        return CarcliError(f"{host} refused the connection ({url})")
    if isinstance(reason, (TimeoutError, ConnectionError)):
        return _Retryable(f"{type(reason).__name__}: {reason}")
    return CarcliError(f"cannot reach {url}: {reason}")


def _attempt(file: RemoteFile, part: Path, reporter: Reporter, network: Network) -> tuple[str, str | None]:
    """One try at completing `part`: (its SHA-256, the server's SHA-256 if it sent one)."""
    offset = part.stat().st_size if part.exists() else 0
    try:
        response, redirects = _open(file.url, offset, network)
    except _CannotResume:
        part.unlink()
        raise _Retryable("the server cannot resume the partial file; starting over") from None
    with response:
        if offset and response.status != 206:  # the server ignored the Range: start over
            offset = 0
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        digest = _hash_file(part) if offset else hashlib.sha256()
        done = offset
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with part.open("ab" if offset else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    reporter.update(f"download {file.name}", done, total, "B")
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _Retryable(f"connection lost at {done} bytes ({type(err).__name__})") from None
        if total is not None and done < total:
            raise _Retryable(f"connection dropped at {done} of {total} bytes")
        server_sha = redirects.linked_etag or response.headers.get("X-Linked-Etag")
    return digest.hexdigest(), _header_sha256(server_sha)


def download(file: RemoteFile, dest: Path, reporter: Reporter | None = None, network: Network | None = None) -> bool:
    """Download `file` to `dest` through `dest.part` (resumed if present); True if its SHA-256 was checked.

    A file already at `dest` is kept when the table has no hash for it or the hash matches. On a
    checksum mismatch the partial file is deleted (ChecksumError); on other failures it is kept for
    the next run to resume.
    """
    reporter, network = reporter or NullReporter(), network or Network()
    if dest.is_file() and (file.sha256 is None or _hash_file(dest).hexdigest() == file.sha256):
        return file.sha256 is not None
    part = dest.with_name(dest.name + ".part")
    for attempt in range(network.retries + 1):
        try:
            actual, server_sha = _attempt(file, part, reporter, network)
            break
        except _Retryable as err:
            if attempt == network.retries:
                kept = f"; {part.name} is kept to resume" if part.exists() else ""
                raise CarcliError(f"{file.url}: {err} (gave up after {attempt + 1} tries{kept})") from None
            delay = network.backoff * 2**attempt
            reporter.warn(f"{file.name}: {err}; retrying in {delay:.1f} s")
            time.sleep(delay)
    expected = file.sha256 or server_sha
    if expected is not None and actual != expected:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{file.name} from {file.url} has SHA-256 {actual}, expected {expected}; the partial file was deleted"
        )
    os.replace(part, dest)
    return expected is not None


# ---------------------------------------------------------------- safe extraction


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
        for i, info in enumerate(members, 1):
            zf.extract(info, target)  # names were checked above; zipfile also stops each member at its size
            reporter.update(f"extract {archive.name}", i, len(members), "files")


def _extract_tar(archive: Path, target: Path, max_bytes: int, reporter: Reporter) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _check_member(archive, member.name)
        _check_total(archive, sum(m.size for m in members if m.isfile()), max_bytes)

        def counted() -> Iterator[tarfile.TarInfo]:
            for i, member in enumerate(members, 1):
                yield member
                reporter.update(f"extract {archive.name}", i, len(members), "files")

        # the "data" filter refuses links pointing outside, device files and anything escaping `target`
        tf.extractall(target, members=counted(), filter="data")


def extract(archive: Path, target: Path, max_bytes: int = MAX_EXTRACT_BYTES, reporter: Reporter | None = None) -> None:
    """Extract a zip or tar archive (any compression) into `target`, refusing anything unsafe (CarcliError)."""
    reporter = reporter or NullReporter()
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


# ---------------------------------------------------------------- what the sources hold


@dataclass
class _Survey:
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
        if len({_hash_file(p).hexdigest() for p in found}) > 1:
            raise CarcliError(f"the sources hold different files named {name}: {found[0]} and {found[1]}")
        return found[0] if found else None

    def photos(self, name: str) -> Path | None:
        found = self.photo_dirs[name]
        if len(found) > 1:
            raise CarcliError(f"the sources hold several {name}/ photo folders: {found[0]} and {found[1]}")
        return found[0] if found else None


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in IGNORED_NAMES


def _survey(roots: list[Path], loose: list[Path]) -> _Survey:
    survey = _Survey(roots)
    for path in loose:
        survey.add(path)
    for root in roots:
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if _visible(d))
            here = Path(folder)
            for name in sorted(filter(_visible, files)):
                survey.add(here / name)
            photos = survey.photo_dirs.get(here.name.lower())
            if photos is not None and any(Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in files):
                photos.append(here)
    return survey


def _gather(sources: Sequence[Path], staging: Path, max_bytes: int, reporter: Reporter) -> _Survey:
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


# ---------------------------------------------------------------- building the canonical layout


def _place(folder: Path, dest: Path, staging: Path) -> None:
    """Move a photo folder to `dest` when carcli extracted it, else copy its files (the user's stay untouched)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    if folder.resolve().is_relative_to(staging.resolve()):
        os.rename(folder, dest)
    else:
        dest.mkdir()
        for path in folder.iterdir():
            if path.is_file() and _visible(path.name):
                shutil.copyfile(path, dest / path.name)
    dest.chmod(dest.stat().st_mode | 0o700)  # unreadable photos get deleted from it later


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dest)


def _save_annotations(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """A devkit annotations .mat: a 1 x n struct array with the rows' fields."""
    if not rows:
        raise CarcliError(f"no readable images left for {path.name}")
    fields = list(rows[0])
    table = np.zeros((1, len(rows)), dtype=[(name, object) for name in fields])
    for i, row in enumerate(rows):
        table[0, i] = tuple(row[name] for name in fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"annotations": table})


def _save_class_names(path: Path, names: Sequence[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, {"class_names": np.array(list(names), dtype=object)[None, :]})


def _full_box(path: Path) -> tuple[int, int, int, int]:
    with Image.open(path) as img:
        return (1, 1, *img.size)


def _annotation(sample: Sample, with_class: bool = True) -> dict[str, Any]:
    box = sample.bbox or _full_box(sample.path)
    row: dict[str, Any] = dict(zip(BBOX_FIELDS, box, strict=True))
    if with_class:
        row["class"] = sample.label + 1
    row["fname"] = sample.path.name
    return row


def _write_devkit(base: Path, class_names: Sequence[str], samples: Sequence[Sample]) -> None:
    """The devkit files for exactly `samples`: class names, train annotations, test annotations with/without labels."""
    devkit = base / "devkit"
    _save_class_names(devkit / DEVKIT_META, class_names)
    _save_annotations(devkit / DEVKIT_TRAIN_ANNOS, [_annotation(s) for s in samples if s.split == "train"])
    (devkit / DEVKIT_TEST_CSV).unlink(missing_ok=True)
    test = [s for s in samples if s.split == "test"]
    if test:
        _save_annotations(base / DEVKIT_TEST_ANNOS, [_annotation(s) for s in test])
        _save_annotations(devkit / DEVKIT_TEST_ANNOS_NOLABELS, [_annotation(s, with_class=False) for s in test])
    else:
        shutil.rmtree(base / DEVKIT_TEST_DIR, ignore_errors=True)
        (base / DEVKIT_TEST_ANNOS).unlink(missing_ok=True)
        (devkit / DEVKIT_TEST_ANNOS_NOLABELS).unlink(missing_ok=True)


def _write_provisional(base: Path, class_names: Sequence[str], rows: dict[str, list[dict[str, Any]]]) -> None:
    """Class names and {class, fname} annotations per split, enough for load_dataset to read the new tree."""
    _save_class_names(base / "devkit" / DEVKIT_META, class_names)
    _save_annotations(base / "devkit" / DEVKIT_TRAIN_ANNOS, rows["train"])
    if rows["test"]:
        _save_annotations(base / DEVKIT_TEST_ANNOS, rows["test"])


def _split_folder(base: Path, split: str) -> Path:
    return base / (DEVKIT_TEST_DIR if split == "test" else DEVKIT_TRAIN_DIR)


def _assemble_devkit(survey: _Survey, train_dir: Path, base: Path, staging: Path, reporter: Reporter) -> str:
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


def _parquet_class_names(survey: _Survey, files: list[Path]) -> list[str]:
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


def _parquet_by_split(survey: _Survey, reporter: Reporter) -> dict[str, list[Path]]:
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


def _assemble_parquet(survey: _Survey, base: Path, reporter: Reporter) -> str:
    """Write each row's image bytes to cars_train/ or cars_test/ as 00001.jpg, ... with provisional annotations."""
    import pyarrow.parquet as pq

    by_split = _parquet_by_split(survey, reporter)
    names = _parquet_class_names(survey, by_split["train"])
    rows: dict[str, list[dict[str, Any]]] = {"train": [], "test": []}
    for split, files in by_split.items():
        folder = _split_folder(base, split)
        folder.mkdir(parents=True, exist_ok=True)
        total = sum(pq.ParquetFile(path).metadata.num_rows for path in files)
        for data, label in (row for path in files for row in _parquet_rows(path)):
            fname = f"{len(rows[split]) + 1:05d}.jpg"
            (folder / fname).write_bytes(data)
            rows[split].append({"class": int(label) + 1, "fname": fname})
            reporter.update(f"convert {split} parquet", len(rows[split]), total, "images")
    _write_provisional(base, names, rows)
    return "parquet"


def _name_key(name: str) -> str:
    """Class names compared across sources: case, spacing and '/' vs '-' (not allowed in folder names) ignored."""
    return " ".join(name.replace("/", "-").casefold().split())


def _class_folder_set(survey: _Survey) -> DataSet:
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


def _assemble_folders(survey: _Survey, base: Path) -> str:
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
        _copy(sample.path, _split_folder(base, split) / fname)
        rows[split].append({"class": labels[sample.label] + 1, "fname": fname})
    _write_provisional(base, names, rows)
    return f"class folders ({dataset.layout})"


def _assemble_stanford_cars(
    sources: Sequence[Path], staging: Path, base: Path, max_bytes: int, reporter: Reporter
) -> str:
    """Turn whatever the sources are into base/ in the devkit layout; returns what kind of source it was."""
    survey = _gather(sources, staging, max_bytes, reporter)
    train_dir = survey.photos(DEVKIT_TRAIN_DIR)
    if train_dir is not None:
        return _assemble_devkit(survey, train_dir, base, staging, reporter)
    if survey.parquets:
        return _assemble_parquet(survey, base, reporter)
    return _assemble_folders(survey, base)


# ---------------------------------------------------------------- checking and finishing a data set


def _unreadable(paths: list[Path], reporter: Reporter) -> set[Path]:
    bad: set[Path] = set()
    for start in range(0, len(paths), CHECK_CHUNK):
        bad.update(find_unreadable(paths[start : start + CHECK_CHUNK]))
        reporter.update("check images", min(start + CHECK_CHUNK, len(paths)), len(paths), "images")
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
        _write_devkit(base, dataset.class_names, [s for s in dataset.samples if s.path not in bad])
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


def _count(dataset: DataSet) -> dict[str, int]:
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


def _result(set_dir: Path, marker: dict[str, Any], reused: bool = False) -> FetchResult:
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


def _check_replaceable(target: Path) -> None:
    """carcli replaces only its own data sets and empty folders, never other files."""
    if target.is_dir() and (read_marker(target) is not None or not any(target.iterdir())):
        return
    if target.exists():
        raise CarcliError(f"{target} exists and was not made by carcli fetch-data; move it away or use another --root")


def _build(
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
    _check_replaceable(target)
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
            "images": _count(dataset),
            "unreadable": excluded,
            **(extra or {}),
        }
        (set_dir / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        swap_dir(set_dir, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return _result(target, marker)


# ---------------------------------------------------------------- the data sets


@dataclass
class FetchRequest:
    name: str | None  # stanford-cars, folder or demo
    root: Path  # the data root
    path: Path | None = None  # folder: the data set to register
    dataset_name: str | None = None  # folder: --name
    sources: Sequence[Path] = ()  # stanford-cars: --from
    urls: Sequence[str] = ()  # stanford-cars: --url
    prepare_size: int | None = None
    network: Network = field(default_factory=Network)
    max_extract_bytes: int = MAX_EXTRACT_BYTES


def _check_request(request: FetchRequest) -> None:
    if request.name is None:
        raise UsageError("name a data set to fetch: stanford-cars, folder or demo (or --list to see what is there)")
    if request.name not in DATASETS:
        raise UsageError(f"unknown data set {request.name!r}; choose stanford-cars, folder or demo")
    if (request.sources or request.urls) and request.name != STANFORD_CARS:
        raise UsageError("--from and --url are for `fetch-data stanford-cars`")
    if request.sources and request.urls:
        raise UsageError("--from imports local files and --url downloads: give one of them")
    if (request.path is not None or request.dataset_name is not None) and request.name != FOLDER:
        raise UsageError("a PATH and --name are for `fetch-data folder PATH --name NAME`")
    if request.name == FOLDER:
        if request.path is None or request.dataset_name is None:
            raise UsageError("`fetch-data folder` needs a PATH and --name NAME")
        if not NAME_PATTERN.fullmatch(request.dataset_name) or request.dataset_name in DATASETS:
            raise UsageError(
                f"--name {request.dataset_name!r}: use letters, digits, '.', '_' and '-' "
                "(and not stanford-cars, folder or demo)"
            )
    if request.prepare_size is not None and request.prepare_size < MIN_PREPARE_SIZE:
        raise UsageError(f"--prepare-size must be at least {MIN_PREPARE_SIZE} px, got {request.prepare_size}")


def _import_stanford_cars(
    request: FetchRequest, sources: Sequence[Path], source: str, reporter: Reporter
) -> FetchResult:
    def fill(staging: Path, set_dir: Path) -> str:
        kind = _assemble_stanford_cars(sources, staging, set_dir / TORCHVISION_DIR, request.max_extract_bytes, reporter)
        return f"{source} ({kind})"

    return _build(request.root / STANFORD_CARS, STANFORD_CARS, fill, reporter)


def _download_mirror(mirror: Mirror, folder: Path, request: FetchRequest, reporter: Reporter) -> list[str]:
    """Download every file of `mirror` into `folder`; the names of those that had no checksum to check."""
    unverified = []
    for file in mirror.files:
        if not download(file, folder / file.name, reporter, request.network):
            unverified.append(file.name)
            reporter.warn(f"{file.name}: no checksum is published for it; not verified")
    return unverified


def _download_stanford_cars(request: FetchRequest, reporter: Reporter) -> FetchResult:
    """Try each mirror in turn: download all its files, then import them; the first that works wins.

    Partial downloads stay in <root>/.downloads/ for the next run to resume; complete ones are
    deleted once imported, or when their import failed (so a bad file is fetched afresh next time).
    """
    failures = []
    for mirror in mirror_table(request.urls):
        folder = request.root / DOWNLOADS / re.sub(r"[^A-Za-z0-9._-]+", "-", mirror.name).strip("-")
        reporter.info(f"trying mirror: {mirror.name}")
        try:
            unverified = _download_mirror(mirror, folder, request, reporter)
            try:
                paths = [folder / file.name for file in mirror.files]
                result = _import_stanford_cars(request, paths, f"mirror {mirror.name}", reporter)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        except UsageError:
            raise
        except CarcliError as err:
            failures.append(f"{mirror.name}: {err}")
            reporter.warn(f"mirror {mirror.name} failed: {err}")
            continue
        result.unverified = unverified
        return result
    raise CarcliError(
        "could not get Stanford Cars from any mirror ("
        + "; ".join(failures or ["the mirror table is empty"])
        + "); if you have the files, import them with --from PATH"
    )


def _fetch_stanford_cars(request: FetchRequest, reporter: Reporter) -> FetchResult:
    target = request.root / STANFORD_CARS
    _check_replaceable(target)
    if request.sources:
        names = ", ".join(Path(s).name for s in request.sources)
        return _import_stanford_cars(request, request.sources, f"--from {names}", reporter)
    marker = read_marker(target)
    if not request.urls and marker is not None and marker.get("kind") == STANFORD_CARS:
        reporter.info(f"Stanford Cars is already in {target}; nothing to download")
        return _result(target, marker, reused=True)
    return _download_stanford_cars(request, reporter)


def _safe_folder_name(name: str) -> bool:
    return bool(name.strip()) and _visible(name) and not set(name) & set('/\\:*?"<>|\0') and name not in (".", "..")


def _unique(folder: Path, name: str) -> Path:
    path, stem, suffix, n = folder / name, Path(name).stem, Path(name).suffix, 1
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def _copy_as_folders(dataset: DataSet, set_dir: Path) -> None:
    """Samples -> set_dir/<split>/<class>/<file name>."""
    unsafe = [name for name in dataset.class_names if not _safe_folder_name(name)]
    if unsafe:
        raise CarcliError(f"class name {unsafe[0]!r} cannot be a folder name; rename it in the manifest")
    for sample in dataset.samples:
        folder = set_dir / sample.split / dataset.class_names[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, _unique(folder, sample.path.name))


def _register_folder(request: FetchRequest, reporter: Reporter) -> FetchResult:
    source = Path(request.path).expanduser()  # type: ignore[arg-type]

    def fill(staging: Path, set_dir: Path) -> str:
        root = source
        if is_archive(source):
            reporter.info(f"extracting {source.name}")
            root = staging / "src"
            extract(source, root, request.max_extract_bytes, reporter)
        dataset = load_dataset(root, val_fraction=0.0)
        if dataset.layout == "devkit":
            raise CarcliError(
                f"{source} is a Stanford Cars devkit: use `carcli fetch-data stanford-cars --from {source}`"
            )
        _copy_as_folders(dataset, set_dir)
        return f"{source} ({dataset.layout})"

    return _build(request.root / request.dataset_name, FOLDER, fill, reporter)  # type: ignore[operator]


def _fetch_demo(request: FetchRequest, reporter: Reporter) -> FetchResult:
    path = request.root / demo.DEMO_NAME
    existed = demo.is_demo_root(path)
    demo.generate_demo(path)
    dataset = load_dataset(path, val_fraction=0.0)
    return FetchResult(
        name=demo.DEMO_NAME,
        path=path,
        kind="demo",
        source="generated offline by carcli.data.demo",
        classes=len(dataset.class_names),
        images=_count(dataset),
        reused=existed,
    )


# ---------------------------------------------------------------- --prepare-size


def _resize(src: Path, dest: Path, size: int) -> tuple[float, float]:
    """Write `src` with its shorter side at `size` px (never enlarged) to `dest`; the x and y scale."""
    with Image.open(src) as img:
        width, height = img.size
    if min(width, height) <= size:
        shutil.copyfile(src, dest)
        return 1.0, 1.0
    img = open_rgb(src, min_size=size)
    scale = size / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    img.save(dest, quality=90)
    return img.width / width, img.height / height


def _scaled(sample: Sample, dest: Path, scale: tuple[float, float]) -> Sample:
    box = None
    if sample.bbox is not None:
        sx, sy = scale
        x1, y1, x2, y2 = sample.bbox
        box = (max(1, round(x1 * sx)), max(1, round(y1 * sy)), max(1, round(x2 * sx)), max(1, round(y2 * sy)))
    return replace(sample, path=dest, bbox=box)


def _prepare_copy(result: FetchResult, size: int, reporter: Reporter) -> FetchResult:
    """A copy of the data set at `result.path` with the shorter side of every image at `size` px."""
    target = result.path.parent / f"{result.name}-{size}px"
    source_marker = read_marker(result.path) or {}
    extra = {"prepared_from": result.name, "prepared_size": size, "source_created": source_marker.get("created")}
    marker = read_marker(target)
    if marker is not None and all(marker.get(k) == v for k, v in extra.items()) and extra["source_created"]:
        reporter.info(f"{target.name} is up to date")
        return _result(target, marker, reused=True)

    def fill(staging: Path, set_dir: Path) -> str:
        dataset = load_dataset(result.path, val_fraction=0.0)
        jobs = [(s, set_dir / s.path.relative_to(result.path)) for s in dataset.samples]
        for _, dest in jobs:
            dest.parent.mkdir(parents=True, exist_ok=True)
        scaled = []
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            scales = pool.map(lambda job: _resize(job[0].path, job[1], size), jobs)
            for i, ((sample, dest), scale) in enumerate(zip(jobs, scales, strict=True), 1):
                scaled.append(_scaled(sample, dest, scale))
                reporter.update(f"resize to {size} px", i, len(jobs), "images")
        if dataset.layout == "devkit":
            _write_devkit(set_dir / TORCHVISION_DIR, dataset.class_names, scaled)
        return f"{result.name} at {size} px"

    return _build(target, "prepared", fill, reporter, extra, check=False)


# ---------------------------------------------------------------- entry points


def fetch(request: FetchRequest, reporter: Reporter | None = None) -> FetchResult:
    """Get the named data set into the data root (download, import, register or generate), ready to train on."""
    reporter = reporter or NullReporter()
    _check_request(request)
    handlers: dict[str, Callable[[FetchRequest, Reporter], FetchResult]] = {
        STANFORD_CARS: _fetch_stanford_cars,
        FOLDER: _register_folder,
        demo.DEMO_NAME: _fetch_demo,
    }
    result = handlers[request.name](request, reporter)  # type: ignore[index]
    if request.prepare_size is not None:
        result.prepared = _prepare_copy(result, request.prepare_size, reporter)
    return result


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
    children = sorted(p for p in root.iterdir() if p.is_dir() and _visible(p.name)) if root.is_dir() else []
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
