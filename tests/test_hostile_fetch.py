"""Hostile archives and servers for `fetch-data`: damaged compressed data, truncation, members that point
outside, links, device files, bombs, wrong answers from a server. Each ends in one line naming the archive
or the URL, and the data set already under the root stays as it was."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import pytest
from hostile import carcli, fails, snapshot
from http_fixture import FileServer

from carcli.data.fetch.archives import extract
from carcli.errors import CarcliError


def _zip_of(folder: Path, path: Path, method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for file in sorted(folder.rglob("*")):
            if file.is_file():
                zf.write(file, file.relative_to(folder.parent).as_posix())
    return path


def _damage_first_member(path: Path, fill: bytes) -> Path:
    data = bytearray(path.read_bytes())
    name_len, extra_len = int.from_bytes(data[26:28], "little"), int.from_bytes(data[28:30], "little")
    start = 30 + name_len + extra_len
    data[start + 20 : start + 220] = fill * 200
    path.write_bytes(bytes(data))
    return path


def _tar_with(path: Path, member: tarfile.TarInfo, payload: bytes = b"") -> Path:
    with tarfile.open(path, "w") as tf:
        tf.addfile(member, io.BytesIO(payload) if payload else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    return info


@pytest.fixture(scope="module")
def registered(real_folder_set, tmp_path_factory) -> Path:
    """A root holding one registered data set, `cars`."""
    root = tmp_path_factory.mktemp("root")
    result = carcli("fetch-data", "folder", real_folder_set, "--name", "cars", "--root", root)
    assert result.exit_code == 0, result.output
    return root


def _hostile_archives(real_folder_set: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """name -> (archive, fragment of the error)."""
    good = _zip_of(real_folder_set / "train", folder / "good.zip")
    damaged = _damage_first_member(Path(shutil.copy(good, folder / "damaged.zip")), b"\xff")
    stored = _zip_of(real_folder_set / "train", folder / "stored.zip", zipfile.ZIP_STORED)
    crc = _damage_first_member(Path(shutil.copy(stored, folder / "bad-crc.zip")), b"\x00")
    tgz = folder / "cut.tar.gz"
    with tarfile.open(tgz, "w:gz") as tf:
        tf.add(real_folder_set / "train", "train")
    tgz.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    txz = folder / "damaged.tar.xz"
    with tarfile.open(txz, "w:xz") as tf:
        tf.add(real_folder_set / "train", "train")
    data = bytearray(txz.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    txz.write_bytes(bytes(data))
    slip = folder / "slip.zip"
    with zipfile.ZipFile(slip, "w") as zf:
        zf.writestr("train/a/../../../escaped.jpg", b"x")
    return {
        "damaged deflate data": (damaged, "damaged.zip: its compressed data is damaged"),
        "bad crc": (crc, "bad-crc.zip"),
        "truncated tar.gz": (tgz, "cut.tar.gz"),
        "damaged tar.xz": (txz, "damaged.tar.xz"),
        "zip slip": (slip, "outside"),
        "tar device file": (_tar_with(folder / "dev.tar", _member("train/a/null", tarfile.CHRTYPE)), "dev.tar"),
        "tar absolute path": (_tar_with(folder / "abs.tar", _member("/etc/x.jpg", size=1), b"x"), "outside"),
        "tar link out": (_tar_with(folder / "link.tar", _member("train/a/l", tarfile.SYMTYPE, link="/etc")), "link"),
    }


CASES = (
    "damaged deflate data",
    "bad crc",
    "truncated tar.gz",
    "damaged tar.xz",
    "zip slip",
    "tar device file",
    "tar absolute path",
    "tar link out",
)


@pytest.mark.parametrize("case", CASES)
def test_hostile_archives_are_one_line_and_keep_the_data_set_there(registered, real_folder_set, tmp_path, case):
    archive, says = _hostile_archives(real_folder_set, tmp_path)[case]
    before = snapshot(registered)
    fails("fetch-data", "folder", archive, "--name", "cars", "--root", registered, says=(says,))
    assert snapshot(registered) == before
    assert not (tmp_path / "escaped.jpg").exists() and not Path("/etc/x.jpg").exists()


def test_stanford_cars_from_a_damaged_zip_names_it(real_folder_set, tmp_path):
    archive, _ = _hostile_archives(real_folder_set, tmp_path)["damaged deflate data"]
    fails("fetch-data", "stanford-cars", "--from", archive, "--root", tmp_path / "root", says=(str(archive),))
    assert not (tmp_path / "root" / "stanford-cars").exists()


def test_an_archive_that_unpacks_past_the_limit_is_refused(real_folder_set, tmp_path):
    archive = _zip_of(real_folder_set / "train", tmp_path / "big.zip")
    with pytest.raises(CarcliError, match="over the 1,000-byte limit"):
        extract(archive, tmp_path / "out", max_bytes=1000)
    assert not list((tmp_path / "out").rglob("*.jpg"))


# ---------------------------------------------------------------- servers


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def _fetch_url(url: str, root: Path, tmp_path: Path, says: tuple[str, ...]) -> None:
    mirrors = tmp_path / "mirrors.json"
    mirrors.write_text("[]")
    fails("fetch-data", "stanford-cars", "--url", url, "--root", root, says=says, env={"CARCLI_MIRRORS": str(mirrors)})
    assert not (root / "stanford-cars").exists()


SERVED = {
    "404": (None, "404"),
    "a web page instead of an archive": (b"<html><body>Sign in to download</body></html>", "no Stanford Cars data"),
    "a damaged zip": ("damaged", "damaged"),
    "a zip that slips out": ("slip", "outside"),
}


@pytest.mark.parametrize("case", sorted(SERVED))
def test_hostile_servers_are_one_line(server, real_folder_set, tmp_path, case):
    body, says = SERVED[case]
    if body in ("damaged", "slip"):
        archives = _hostile_archives(real_folder_set, tmp_path)
        body = archives["damaged deflate data" if body == "damaged" else "zip slip"][0].read_bytes()
    if body is not None:
        server.files["/cars.zip"] = body
    _fetch_url(server.url("/cars.zip"), tmp_path / "root", tmp_path, (says,))


def test_a_checksum_mismatch_is_one_line_and_keeps_no_partial_file(server, tmp_path):
    server.files["/cars.zip"] = b"PK not what was promised"
    _fetch_url(server.url("/cars.zip#sha256=" + "0" * 64), tmp_path / "root", tmp_path, ("SHA-256", "deleted"))
    assert not [p for p in (tmp_path / "root").rglob("*") if p.is_file() and "cars" in p.name]


def test_a_refused_connection_is_one_line(tmp_path):
    closed = FileServer()
    closed._server.server_close()  # its port is free again: connections are refused
    _fetch_url(closed.url("/cars.zip"), tmp_path / "root", tmp_path, ("cars.zip",))
