"""The mirror table: where Stanford Cars can be downloaded from, as the built-in list, $CARCLI_MIRRORS or --url."""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from carcli.errors import CarcliError, UsageError

MIRRORS_ENV = "CARCLI_MIRRORS"
SHA256_PATTERN = re.compile(r"[0-9a-f]{64}")


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
