"""HTTP downloads that resume from `*.part` files, retry with backoff and check each file's SHA-256."""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carcli import __version__
from carcli.data.fetch.mirrors import SHA256_PATTERN, RemoteFile
from carcli.errors import CarcliError
from carcli.progress import Reporter, SilentReporter

CHUNK = 1 << 20


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


def hash_file(path: Path) -> Any:
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
        advance = reporter.stage(f"download {file.name}", total, "B")
        digest = hash_file(part) if offset else hashlib.sha256()
        done = offset
        part.parent.mkdir(parents=True, exist_ok=True)
        try:
            with part.open("ab" if offset else "wb") as out:
                while chunk := response.read(CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
                    advance(done)
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
    reporter, network = reporter or SilentReporter(), network or Network()
    if dest.is_file() and (file.sha256 is None or hash_file(dest).hexdigest() == file.sha256):
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
