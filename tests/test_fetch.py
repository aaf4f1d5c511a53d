"""fetch-data: downloads over a real local HTTP server, hostile archives, every import layout, registration.

The sources are built here from the real photos in ../shared (3 classes, 4 train + 2 test photos each)
in the shapes they have in the wild: the devkit layout, Kaggle's nested zip, the original tgz files,
a class-folder zip and Hugging Face parquet. Every import must end in the same data set: each image
(by content) in the same split with the same class name, readable by carcli and by torchvision alike.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import scipy.io
from conftest import SMALL_CLASSES, real_photos_by_class
from http_fixture import FileServer
from PIL import Image
from typer.testing import CliRunner

from carcli.cli import app
from carcli.data.fetch import FetchRequest, FetchResult, Network, fetch, list_datasets
from carcli.data.fetch import build as fetch_build
from carcli.data.fetch.archives import extract
from carcli.data.fetch.download import ChecksumError, download
from carcli.data.fetch.mirrors import RemoteFile
from carcli.data.layouts import load_dataset
from carcli.errors import CarcliError, UsageError
from carcli.progress import SilentReporter

NET = Network(timeout=5.0, retries=2, backoff=0.01)
runner = CliRunner()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Recorder(SilentReporter):
    """A Reporter that keeps the lines it is told and every amount of every stage."""

    def __init__(self) -> None:
        self.infos: list[str] = []
        self.warnings: list[str] = []
        self.updates: list[tuple[str, int, int | None, str]] = []

    def info(self, message: str) -> None:
        self.infos.append(message)

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def stage(self, description: str, total: int | None, unit: str = "images") -> Callable[[int], None]:
        return lambda done: self.updates.append((description, done, total, unit))


# ---------------------------------------------------------------- the mini data set in its many shapes


def mat_bytes(data: dict) -> bytes:
    buffer = io.BytesIO()
    scipy.io.savemat(buffer, data)
    return buffer.getvalue()


def annotations(items: list[tuple[str, int, bytes]], with_class: bool = True) -> bytes:
    fields = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", *(["class"] if with_class else []), "fname"]
    table = np.zeros((1, len(items)), dtype=[(f, object) for f in fields])
    for i, (fname, label, data) in enumerate(items):
        width, height = Image.open(io.BytesIO(data)).size
        table[0, i] = (1, 1, width, height, *([label + 1] if with_class else []), fname)
    return mat_bytes({"annotations": table})


@dataclass
class Mini:
    names: list[str]
    train: list[tuple[str, int, bytes]]  # fname, 0-based label, JPEG bytes
    test: list[tuple[str, int, bytes]]

    def expected(self) -> dict[str, tuple[str, str]]:
        """image content -> (split, class name): what every import must produce."""
        return {
            sha(data): (split, self.names[label])
            for split, items in (("train", self.train), ("test", self.test))
            for _, label, data in items
        }

    def meta(self) -> bytes:
        return mat_bytes({"class_names": np.array(self.names, dtype=object)[None, :]})

    def devkit_files(self, prefix: str = "") -> dict[str, bytes]:
        """The devkit layout as torchvision reads it (relative path -> bytes)."""
        files = {f"{prefix}cars_train/{f}": d for f, _, d in self.train}
        files |= {f"{prefix}cars_test/{f}": d for f, _, d in self.test}
        files[f"{prefix}devkit/cars_meta.mat"] = self.meta()
        files[f"{prefix}devkit/cars_train_annos.mat"] = annotations(self.train)
        files[f"{prefix}devkit/cars_test_annos.mat"] = annotations(self.test, with_class=False)
        files[f"{prefix}cars_test_annos_withlabels.mat"] = annotations(self.test)
        return files

    def kaggle_files(self) -> dict[str, bytes]:
        """Kaggle's stanford-cars-dataset zip: nested photo folders, the devkit, no test labels."""
        files = {f"cars_train/cars_train/{f}": d for f, _, d in self.train}
        files |= {f"cars_test/cars_test/{f}": d for f, _, d in self.test}
        files["car_devkit/devkit/cars_meta.mat"] = self.meta()
        files["car_devkit/devkit/cars_train_annos.mat"] = annotations(self.train)
        files["car_devkit/devkit/cars_test_annos.mat"] = annotations(self.test, with_class=False)
        return files

    def class_folder_files(self) -> dict[str, bytes]:
        files = {f"car_data/car_data/train/{self.names[lb]}/{f}": d for f, lb, d in self.train}
        return files | {f"car_data/car_data/test/{self.names[lb]}/{f}": d for f, lb, d in self.test}

    def parquet(self, path: Path, split: str, names: list[str] | None) -> Path:
        items = self.train if split == "train" else self.test
        table = pa.table(
            {
                "image": [{"bytes": d, "path": f} for f, _, d in items],
                "label": pa.array([lb for _, lb, _ in items], pa.int64()),
            }
        )
        if names is not None:
            features = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
            table = table.replace_schema_metadata({"huggingface": json.dumps({"info": {"features": features}})})
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        return path


def write_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def write_zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def write_tar(path: Path, files: dict[str, bytes], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return path


@pytest.fixture(scope="module")
def mini() -> Mini:
    names = list(SMALL_CLASSES[:3])
    photos = real_photos_by_class()
    train, test = [], []
    for label, name in enumerate(names):
        files = sorted(photos[name])
        train += [(p.name, label, p.read_bytes()) for p in files[:4]]
        test += [(f"{len(test) + i + 1:05d}.jpg", label, p.read_bytes()) for i, p in enumerate(files[4:6])]
    return Mini(names, train, test)


def content(set_dir: Path) -> dict[str, tuple[str, str]]:
    dataset = load_dataset(set_dir, val_fraction=0.0)
    return {sha(s.path.read_bytes()): (s.split, dataset.class_names[s.label]) for s in dataset.samples}


def assert_torchvision_agrees(set_dir: Path) -> None:
    """torchvision's own StanfordCars class reads the set and gives every image carcli's label."""
    from torchvision.datasets import StanfordCars

    dataset = load_dataset(set_dir, val_fraction=0.0)
    carcli = {s.path.resolve(): (s.split, s.label) for s in dataset.samples}
    seen = 0
    for split in sorted({split for split, _ in carcli.values()}):
        tv = StanfordCars(set_dir, split=split, loader=lambda p: p)
        assert tv.classes == dataset.class_names
        for i in range(len(tv)):
            path, target = tv[i]
            assert carcli[Path(path).resolve()] == (split, target)
        seen += len(tv)
    assert seen == len(carcli)


def import_from(root: Path, *sources: Path, reporter: Recorder | None = None, **kw) -> FetchResult:
    return fetch(FetchRequest("stanford-cars", root, sources=list(sources), network=NET, **kw), reporter)


# ---------------------------------------------------------------- downloads


@pytest.fixture
def server():
    with FileServer() as srv:
        yield srv


def test_full_download_reports_bytes_and_checks_sha256(server, tmp_path):
    data = bytes(range(256)) * 4000
    server.files["/f.bin"] = data
    recorder = Recorder()
    assert download(RemoteFile(server.url("/f.bin"), sha(data)), tmp_path / "f.bin", recorder, NET) is True
    assert (tmp_path / "f.bin").read_bytes() == data and not (tmp_path / "f.bin.part").exists()
    assert recorder.updates[-1] == ("download f.bin", len(data), len(data), "B")


def test_download_resumes_with_a_range_request_after_a_dropped_connection(server, tmp_path):
    data = bytes(range(256)) * 8000
    server.files["/big.bin"] = data
    server.faults["/big.bin"] = ["drop"]
    file = RemoteFile(server.url("/big.bin"), sha(data))
    with pytest.raises(CarcliError, match="kept to resume"):
        download(file, tmp_path / "big.bin", network=Network(timeout=5.0, retries=0))
    part = tmp_path / "big.bin.part"
    assert part.stat().st_size == len(data) // 2  # the half that arrived stays for the next run
    assert download(file, tmp_path / "big.bin", network=NET) is True
    assert server.requests[-1] == ("/big.bin", f"bytes={len(data) // 2}-")
    assert (tmp_path / "big.bin").read_bytes() == data


def test_a_drop_is_retried_and_resumed_within_one_call(server, tmp_path):
    data = b"0123456789" * 50_000
    server.files["/d.bin"] = data
    server.faults["/d.bin"] = ["drop"]
    recorder = Recorder()
    download(RemoteFile(server.url("/d.bin"), sha(data)), tmp_path / "d.bin", recorder, NET)
    assert [r for _, r in server.requests] == [None, f"bytes={len(data) // 2}-"]
    assert "dropped" in recorder.warnings[0] and (tmp_path / "d.bin").read_bytes() == data


def test_500_then_200_is_retried(server, tmp_path):
    server.files["/x.bin"] = b"payload"
    server.faults["/x.bin"] = ["500"]
    recorder = Recorder()
    download(RemoteFile(server.url("/x.bin"), sha(b"payload")), tmp_path / "x.bin", recorder, NET)
    assert len(server.requests) == 2 and "HTTP 500" in recorder.warnings[0]
    assert (tmp_path / "x.bin").read_bytes() == b"payload"


def test_a_timeout_is_retried(server, tmp_path):
    server.files["/s.bin"] = b"slow payload"
    server.faults["/s.bin"] = ["slow"]
    network = Network(timeout=0.3, retries=2, backoff=0.01)
    download(RemoteFile(server.url("/s.bin"), sha(b"slow payload")), tmp_path / "s.bin", network=network)
    assert len(server.requests) == 2 and (tmp_path / "s.bin").read_bytes() == b"slow payload"


def test_checksum_mismatch_deletes_the_partial_file(server, tmp_path):
    server.files["/c.bin"] = b"tampered"
    with pytest.raises(ChecksumError, match=r"expected 0{64}; the partial file was deleted"):
        download(RemoteFile(server.url("/c.bin"), "0" * 64), tmp_path / "c.bin", network=NET)
    assert list(tmp_path.iterdir()) == []


def test_x_linked_etag_of_a_redirect_is_checked_when_the_table_has_no_hash(server, tmp_path):
    data = b"lfs object"
    server.files["/cdn/o.parquet"] = data
    server.redirects["/resolve/o.parquet"] = (server.url("/cdn/o.parquet"), {"X-Linked-Etag": f'"{sha(data)}"'})
    assert download(RemoteFile(server.url("/resolve/o.parquet")), tmp_path / "o.parquet", network=NET) is True
    server.redirects["/resolve/o.parquet"] = (server.url("/cdn/o.parquet"), {"X-Linked-Etag": f'"{"a" * 64}"'})
    with pytest.raises(ChecksumError):
        download(RemoteFile(server.url("/resolve/o.parquet")), tmp_path / "other.parquet", network=NET)
    assert not (tmp_path / "other.parquet.part").exists()


def test_no_published_hash_means_unverified(server, tmp_path):
    server.files["/u.bin"] = b"anything"
    assert download(RemoteFile(server.url("/u.bin")), tmp_path / "u.bin", network=NET) is False


def test_404_is_not_retried(server, tmp_path):
    with pytest.raises(CarcliError, match=r"/missing.bin: HTTP 404"):
        download(RemoteFile(server.url("/missing.bin")), tmp_path / "m.bin", network=NET)
    assert len(server.requests) == 1


# ---------------------------------------------------------------- mirrors


def mirror_table(path: Path, mirrors: list[tuple[str, list[str]]]) -> Path:
    path.write_text(json.dumps([{"name": n, "files": [{"url": u} for u in urls]} for n, urls in mirrors]))
    return path


def test_mirrors_are_tried_in_order_and_downloads_are_removed_after_import(server, mini, tmp_path, monkeypatch):
    server.files["/cars.zip"] = write_zip(
        tmp_path / "cars.zip", mini.devkit_files("repo-main/stanford_cars/")
    ).read_bytes()
    server.files["/slip.zip"] = write_zip(tmp_path / "slip.zip", {"../../x": b"x"}).read_bytes()
    table = [
        ("gone", [server.url("/gone.zip")]),
        ("hostile", [server.url("/slip.zip")]),
        ("good", [server.url("/cars.zip")]),
    ]
    monkeypatch.setenv("CARCLI_MIRRORS", str(mirror_table(tmp_path / "mirrors.json", table)))
    recorder = Recorder()
    result = fetch(FetchRequest("stanford-cars", tmp_path / "root", network=NET), recorder)
    assert result.source == "mirror good (devkit)" and result.unverified == ["cars.zip"]
    assert any("gone" in w and "404" in w for w in recorder.warnings)
    assert any("hostile" in w and "points outside" in w for w in recorder.warnings)
    assert content(result.path) == mini.expected()
    assert list((tmp_path / "root" / ".downloads").iterdir()) == []  # imported or refused: not kept
    again = fetch(FetchRequest("stanford-cars", tmp_path / "root", network=NET))  # present: nothing downloaded
    assert again.reused and len(server.requests) == 3


def test_a_parquet_mirror_served_like_hugging_face(server, mini, tmp_path, monkeypatch):
    """resolve/ URLs redirect to a CDN with the LFS SHA-256 in X-Linked-Etag; one file has a table hash."""
    files = {}
    for split in ("train", "test"):
        data = mini.parquet(tmp_path / f"{split}-00000-of-00001.parquet", split, mini.names).read_bytes()
        name = f"{split}-00000-of-00001.parquet"
        server.files[f"/cdn/{name}"] = data
        server.redirects[f"/resolve/{name}"] = (server.url(f"/cdn/{name}"), {"X-Linked-Etag": f'"{sha(data)}"'})
        files[split] = {"url": server.url(f"/resolve/{name}")} | ({"sha256": sha(data)} if split == "test" else {})
    (tmp_path / "m.json").write_text(json.dumps([{"name": "hf", "files": [files["train"], files["test"]]}]))
    monkeypatch.setenv("CARCLI_MIRRORS", str(tmp_path / "m.json"))
    result = fetch(FetchRequest("stanford-cars", tmp_path / "root", network=NET))
    assert result.source == "mirror hf (parquet)" and result.unverified == []
    assert content(result.path) == mini.expected()
    assert_torchvision_agrees(result.path)


def test_url_with_sha256_fragment_goes_first(server, mini, tmp_path, monkeypatch):
    data = write_zip(tmp_path / "k.zip", mini.devkit_files("stanford_cars/")).read_bytes()
    server.files["/k.zip"] = data
    monkeypatch.setenv("CARCLI_MIRRORS", str(mirror_table(tmp_path / "m.json", [])))
    request = FetchRequest("stanford-cars", tmp_path / "root", urls=[server.url(f"/k.zip#sha256={sha(data)}")])
    result = fetch(request)
    assert result.source == "mirror --url (devkit)" and result.unverified == []
    with pytest.raises(UsageError, match="sha256"):
        fetch(FetchRequest("stanford-cars", tmp_path / "root", urls=[server.url("/k.zip#sha256=12")]))


# ---------------------------------------------------------------- hostile archives


def outside_untouched(tmp_path: Path, before: set[str]) -> None:
    root = tmp_path / "root"
    assert {p.name for p in tmp_path.iterdir()} - {"root"} == before
    assert not (root / "stanford-cars").exists()
    assert [p.name for p in root.iterdir()] == []  # no half data set, no staging left behind


@pytest.mark.parametrize("member", ["../evil.txt", "/tmp/carcli-evil.txt", "stanford_cars/../../evil.txt"])
def test_zip_slip_is_refused(mini, tmp_path, member):
    archive = write_zip(tmp_path / "slip.zip", mini.devkit_files("stanford_cars/") | {member: b"pwned"})
    before = {p.name for p in tmp_path.iterdir()}
    (tmp_path / "root").mkdir()
    with pytest.raises(CarcliError, match="points outside the extraction folder"):
        import_from(tmp_path / "root", archive)
    outside_untouched(tmp_path, before)
    assert not Path("/tmp/carcli-evil.txt").exists()


def test_tar_with_a_parent_member_is_refused(mini, tmp_path):
    archive = write_tar(tmp_path / "bad.tgz", mini.devkit_files("stanford_cars/") | {"../escape.txt": b"x"})
    before = {p.name for p in tmp_path.iterdir()}
    (tmp_path / "root").mkdir()
    with pytest.raises(CarcliError, match="points outside"):
        import_from(tmp_path / "root", archive)
    outside_untouched(tmp_path, before)


def test_tar_with_a_symlink_pointing_out_is_refused(mini, tmp_path):
    link = tarfile.TarInfo("stanford_cars/cars_train/zz.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../outside.txt"
    archive = write_tar(tmp_path / "link.tgz", mini.devkit_files("stanford_cars/"), [link])
    before = {p.name for p in tmp_path.iterdir()}
    (tmp_path / "root").mkdir()
    with pytest.raises(CarcliError, match=r"refusing link\.tgz"):
        import_from(tmp_path / "root", archive)
    outside_untouched(tmp_path, before)


def test_zip_symlink_member_is_refused(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = 0o120777 << 16
    with zipfile.ZipFile(tmp_path / "l.zip", "w") as zf:
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(CarcliError, match="symbolic link"):
        extract(tmp_path / "l.zip", tmp_path / "out")


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_decompression_bombs_are_refused(tmp_path, kind):
    files = {"zeros.bin": bytes(2_000_000)}
    archive = write_zip(tmp_path / "b.zip", files) if kind == "zip" else write_tar(tmp_path / "b.tgz", files)
    assert archive.stat().st_size < 100_000
    with pytest.raises(CarcliError, match="decompression bomb"):
        extract(archive, tmp_path / "out", max_bytes=1_000_000)
    assert not (tmp_path / "out" / "zeros.bin").exists()


# ---------------------------------------------------------------- imports: one canonical layout from every shape


def kaggle(mini: Mini, tmp: Path) -> list[Path]:
    labels = tmp / "cars_test_annos_withlabels.mat"
    labels.write_bytes(annotations(mini.test))
    return [write_zip(tmp / "stanford-cars-dataset.zip", mini.kaggle_files()), labels]


def original_tgz(mini: Mini, tmp: Path) -> list[Path]:
    files = mini.devkit_files()
    labels = tmp / "cars_test_annos_withlabels.mat"
    labels.write_bytes(files["cars_test_annos_withlabels.mat"])
    return [
        write_tar(tmp / "cars_train.tgz", {k: v for k, v in files.items() if k.startswith("cars_train/")}),
        write_tar(tmp / "cars_test.tgz", {k: v for k, v in files.items() if k.startswith("cars_test/")}),
        write_tar(tmp / "car_devkit.tgz", {k: v for k, v in files.items() if k.startswith("devkit/")}),
        labels,
    ]


def devkit_folder(mini: Mini, tmp: Path) -> list[Path]:
    return [write_tree(tmp / "mine", mini.devkit_files("stanford_cars/"))]


def class_zip_with_meta(mini: Mini, tmp: Path) -> list[Path]:
    (tmp / "cars_meta.mat").write_bytes(mini.meta())
    return [write_zip(tmp / "by-class.zip", mini.class_folder_files()), tmp / "cars_meta.mat"]


def class_zip(mini: Mini, tmp: Path) -> list[Path]:
    return [write_zip(tmp / "by-class.zip", mini.class_folder_files())]


def parquet_files(mini: Mini, tmp: Path) -> list[Path]:
    return [
        mini.parquet(tmp / "train-00000-of-00001.parquet", "train", mini.names),
        mini.parquet(tmp / "test-00000-of-00001.parquet", "test", mini.names),
    ]


@pytest.mark.parametrize(
    ("shape", "devkit_order"),
    [
        (kaggle, True),
        (original_tgz, True),
        (devkit_folder, True),
        (class_zip_with_meta, True),
        (class_zip, False),
        (parquet_files, True),
    ],
)
def test_every_source_shape_ends_in_the_same_canonical_layout(mini, tmp_path, shape, devkit_order):
    sources = shape(mini, tmp_path)
    result = import_from(tmp_path / "root", *sources)
    base = result.path / "stanford_cars"
    assert {p.name for p in base.iterdir()} == {"cars_train", "cars_test", "cars_test_annos_withlabels.mat", "devkit"}
    assert {p.name for p in (base / "devkit").iterdir()} == {
        "cars_meta.mat",
        "cars_train_annos.mat",
        "cars_test_annos.mat",
    }
    assert content(result.path) == mini.expected()
    dataset = load_dataset(result.path, val_fraction=0.0)
    assert dataset.layout == "devkit"
    assert dataset.class_names == (mini.names if devkit_order else sorted(mini.names))
    assert result.images == {"train": 12, "test": 6} and result.classes == 3
    assert all(s.bbox is not None and s.bbox[:2] == (1, 1) for s in dataset.samples)
    assert_torchvision_agrees(result.path)
    assert all(p.exists() for p in sources)  # the user's files are never moved


def test_parquet_needs_class_names_that_agree_with_the_devkit(mini, tmp_path):
    bare = mini.parquet(tmp_path / "train-00000-of-00001.parquet", "train", None)
    with pytest.raises(CarcliError, match="names no classes"):
        import_from(tmp_path / "root", bare)
    (tmp_path / "cars_meta.mat").write_bytes(mini.meta())
    result = import_from(tmp_path / "root", bare, tmp_path / "cars_meta.mat")
    assert load_dataset(result.path, 0.0).class_names == mini.names
    wrong = mini.parquet(tmp_path / "p" / "train-00000-of-00001.parquet", "train", list(reversed(mini.names)))
    with pytest.raises(CarcliError, match=r"disagree with cars_meta\.mat"):
        import_from(tmp_path / "root2", wrong, tmp_path / "cars_meta.mat")


def test_kaggle_zip_without_test_labels_leaves_the_test_split_out(mini, tmp_path):
    recorder = Recorder()
    result = import_from(tmp_path / "root", write_zip(tmp_path / "k.zip", mini.kaggle_files()), reporter=recorder)
    assert result.images == {"train": 12}
    assert any("without test labels" in w for w in recorder.warnings)
    assert not (result.path / "stanford_cars" / "cars_test").exists()
    assert_torchvision_agrees(result.path)


def test_unreadable_images_are_excluded_and_listed(mini, tmp_path):
    files = mini.devkit_files("stanford_cars/")
    first_train, first_test = mini.train[0][0], mini.test[0][0]
    files[f"stanford_cars/cars_train/{first_train}"] = files[f"stanford_cars/cars_train/{first_train}"][:500]
    files[f"stanford_cars/cars_test/{first_test}"] = b"not an image"
    result = import_from(tmp_path / "root", write_zip(tmp_path / "c.zip", files))
    assert result.unreadable == 2 and result.images == {"train": 11, "test": 5}
    assert result.report.read_text().split() == [
        f"stanford_cars/cars_test/{first_test}",
        f"stanford_cars/cars_train/{first_train}",
    ]
    assert_torchvision_agrees(result.path)  # the .mat files list only the images that are there


def test_a_failed_import_keeps_the_data_set_already_there(mini, tmp_path):
    good = import_from(tmp_path / "root", *devkit_folder(mini, tmp_path))
    hostile = write_zip(tmp_path / "h.zip", {"../x": b"x"})
    with pytest.raises(CarcliError):
        import_from(tmp_path / "root", hostile)
    assert content(good.path) == mini.expected()
    assert [p.name for p in (tmp_path / "root").iterdir()] == ["stanford-cars"]


def test_an_interrupted_import_leaves_nothing_behind(mini, tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(fetch_build, "find_unreadable", interrupt)
    with pytest.raises(KeyboardInterrupt):
        import_from(tmp_path / "root", *devkit_folder(mini, tmp_path))
    assert list((tmp_path / "root").iterdir()) == []


def test_foreign_folders_are_never_replaced(mini, tmp_path):
    (tmp_path / "root" / "stanford-cars").mkdir(parents=True)
    (tmp_path / "root" / "stanford-cars" / "mine.txt").write_text("keep me")
    with pytest.raises(CarcliError, match="not made by carcli"):
        import_from(tmp_path / "root", *devkit_folder(mini, tmp_path))
    assert (tmp_path / "root" / "stanford-cars" / "mine.txt").read_text() == "keep me"


# ---------------------------------------------------------------- folder registration, --prepare-size, --list


def register(root: Path, path: Path, name: str = "cars5", **kw) -> FetchResult:
    return fetch(FetchRequest("folder", root, path=path, dataset_name=name, **kw))


def test_folder_registration_copies_class_folders_with_their_splits(real_folder_set, tmp_path):
    result = register(tmp_path / "root", real_folder_set)
    assert result.path == tmp_path / "root" / "cars5" and result.kind == "folder"
    original, copy = load_dataset(real_folder_set, 0.0), load_dataset(result.path, 0.0)
    assert copy.class_names == original.class_names
    assert content(result.path) == content(real_folder_set)
    assert result.images == {"train": 60, "val": 20}


def test_csv_manifest_in_a_zip_registers_as_class_folders(real_folder_set, tmp_path):
    rows, files = ["path,label,split"], {}
    for i, sample in enumerate(load_dataset(real_folder_set, 0.0).samples[::8]):
        files[f"set/img/{i}.jpg"] = sample.path.read_bytes()
        rows.append(f"img/{i}.jpg,{sample.path.parent.name},{'val' if i % 3 == 0 else 'train'}")
    files["set/labels.csv"] = "\n".join(rows).encode()
    result = register(tmp_path / "root", write_zip(tmp_path / "m.zip", files), "manifest-set")
    copy = load_dataset(result.path, 0.0)
    assert copy.layout == "folders" and sum(result.images.values()) == len(rows) - 1
    assert set(result.images) == {"train", "val"}


def test_folder_registration_refuses_bad_names_and_devkits(mini, tmp_path, real_folder_set):
    for name in ("stanford-cars", "../up", ".hidden"):
        with pytest.raises(UsageError, match="--name"):
            register(tmp_path / "root", real_folder_set, name)
    with pytest.raises(CarcliError, match="stanford-cars --from"):
        register(tmp_path / "root", write_tree(tmp_path / "dk", mini.devkit_files("stanford_cars/")))


def test_prepare_size_makes_a_smaller_copy_with_scaled_boxes(mini, tmp_path):
    result = import_from(tmp_path / "root", *devkit_folder(mini, tmp_path), prepare_size=64)
    small = result.prepared
    assert small.path == tmp_path / "root" / "stanford-cars-64px" and small.images == result.images
    full = {s.path.name + s.split: s for s in load_dataset(result.path, 0.0).samples}
    for sample in load_dataset(small.path, 0.0).samples:
        with Image.open(sample.path) as img:
            assert min(img.size) == 64
            assert sample.bbox == (1, 1, *img.size)  # the full-frame boxes scale with the image
        big = full[sample.path.name + sample.split]
        assert big.label == sample.label and big.bbox[2] > sample.bbox[2]
    assert_torchvision_agrees(small.path)
    again = fetch(FetchRequest("stanford-cars", tmp_path / "root", prepare_size=64))
    assert again.reused and again.prepared.reused


def test_list_shows_known_and_registered_sets(real_folder_set, tmp_path):
    root = tmp_path / "root"
    register(root, real_folder_set)
    infos = {info.name: info for info in list_datasets(root)}
    assert infos["cars5"].present and infos["cars5"].images == 80
    assert infos["cars5"].size_bytes == sum(p.stat().st_size for p in (root / "cars5").rglob("*") if p.is_file())
    assert not infos["stanford-cars"].present and not infos["demo"].present


# ---------------------------------------------------------------- the command line


def cli(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, ["fetch-data", *args], env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "name a data set"),
        (["cifar"], "unknown data set"),
        (["folder", "x"], "needs a PATH and --name"),
        (["demo", "--from", "x.zip"], "--from and --url are for"),
        (["stanford-cars", "--prepare-size", "4"], "at least 16"),
        (["demo", "--list"], "--list takes no"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(tmp_path, args, message):
    result = cli(*args, "--root", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_every_mirror_failing_is_one_line_naming_each(server, tmp_path):
    closed = FileServer()  # bound, never served: the connection is refused
    closed._server.server_close()
    table = [("refusing", [closed.url("/a.zip")]), ("missing", [server.url("/b.zip")])]
    env = {"CARCLI_MIRRORS": str(mirror_table(tmp_path / "m.json", table))}
    result = cli("stanford-cars", "--root", str(tmp_path / "root"), env=env)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "refusing: " in errors[0] and "missing: " in errors[0] and "HTTP 404" in errors[0]
    assert f"data root: {tmp_path / 'root'}" in result.output


def test_cli_demo_then_list(tmp_path):
    root = str(tmp_path / "root")
    result = cli("demo", "--root", root)
    assert result.exit_code == 0, result.output
    assert "demo" in result.output and "train 960, val 240" in result.output
    listing = cli("--list", "--root", root)
    assert listing.exit_code == 0 and "present" in listing.output and "not fetched" in listing.output


@pytest.mark.slow
def test_cli_fetch_over_http_then_train_one_epoch(server, mini, tmp_path):
    data = write_zip(tmp_path / "cars.zip", mini.devkit_files("stanford_cars/")).read_bytes()
    server.files["/cars.zip"] = data
    env = {"CARCLI_MIRRORS": str(mirror_table(tmp_path / "m.json", []))}
    root = tmp_path / "root"
    url = server.url(f"/cars.zip#sha256={sha(data)}")
    fetched = cli("stanford-cars", "--url", url, "--root", str(root), env=env)
    assert fetched.exit_code == 0, fetched.output
    assert "download cars.zip" in fetched.output and "train 12, test 6" in fetched.output
    fast = ["--arch", "ghostnet", "--img-size", "64", "--batch-size", "8", "--workers", "0", "--epochs", "1"]
    trained = runner.invoke(
        app, ["train", "--data", str(root / "stanford-cars"), "--out", str(tmp_path / "run"), *fast]
    )
    assert trained.exit_code == 0, trained.output
    assert (tmp_path / "run" / "best.st").is_file()
    shutil.rmtree(tmp_path / "run")
