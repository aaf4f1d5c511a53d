"""The embedded demo data set: names, layout, determinism, real images, reuse and atomic writes."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from carcli.data import demo
from carcli.errors import CarcliError

NAME = re.compile(r"^([A-Z][a-z]+) ([A-Z][a-z]+) (Sedan|SUV|Coupe|Hatchback|Wagon|Convertible) (\d{4})$")
SMALL = 2  # training images per class in the quick tests (validation: 1)


@pytest.fixture(scope="module")
def small_set(tmp_path_factory) -> Path:
    return demo.generate_demo(tmp_path_factory.mktemp("demo") / "set", seed=0, per_class=SMALL)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_constants_are_sane():
    assert demo.DEMO_NAME == "demo"
    assert 48 <= demo.DEMO_IMG_SIZE <= 128
    assert demo.DEMO_EPOCHS >= 1 and demo.DEMO_BATCH_SIZE >= 1 and 0 < demo.DEMO_LR < 0.1


def test_class_names_form_a_car_hierarchy():
    names = demo.demo_class_names()
    assert 16 <= len(names) <= 24
    assert len(set(names)) == len(names) and names == sorted(names)
    parsed = [NAME.match(name) for name in names]
    assert all(parsed), [n for n, m in zip(names, parsed, strict=True) if not m]
    makes = {m.group(1) for m in parsed}
    models = {(m.group(1), m.group(2)) for m in parsed}
    types = {m.group(3) for m in parsed}
    years = {int(m.group(4)) for m in parsed}
    assert 4 <= len(makes) <= 6
    assert len(types) >= 3 and len(years) >= 2
    assert all(2000 <= y <= 2020 for y in years)
    for make in makes:
        assert 2 <= sum(1 for mk, _ in models if mk == make) <= 3


def test_class_names_parse_with_the_taxonomy():
    from carcli.data.taxonomy import Taxonomy

    taxonomy = Taxonomy.from_class_names(demo.demo_class_names())
    assert {"make", "type", "year"} <= set(taxonomy.tasks)
    assert len(taxonomy.tasks["make"]) >= 3 and len(taxonomy.tasks["type"]) >= 3


def test_layout_is_class_folders_with_train_and_val(small_set: Path):
    names = demo.demo_class_names()
    assert sorted(p.name for p in (small_set / "train").iterdir()) == names
    assert sorted(p.name for p in (small_set / "val").iterdir()) == names
    for name in names:
        assert len(list((small_set / "train" / name).glob("*.jpg"))) == SMALL
        assert len(list((small_set / "val" / name).glob("*.jpg"))) == 1
    assert (small_set / demo.MARKER).is_file()
    leftovers = [p.name for p in small_set.parent.iterdir() if p != small_set]
    assert leftovers == []


def test_images_are_real(small_set: Path):
    for path in _files(small_set)[::7]:
        if path.name == demo.MARKER:
            continue
        with Image.open(path) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            assert img.size == (demo.SAVE_SIZE, demo.SAVE_SIZE)
            assert demo.SAVE_SIZE >= demo.DEMO_IMG_SIZE
            pixels = np.asarray(img, dtype=np.float32)
        assert pixels.std() > 10.0  # a picture, not a flat fill
        assert pixels.reshape(-1, 3).std(axis=0).min() > 5.0


def test_same_seed_gives_identical_files(tmp_path: Path, small_set: Path):
    again = demo.generate_demo(tmp_path / "again", seed=0, per_class=SMALL)
    first, second = _files(small_set), _files(again)
    assert [p.relative_to(small_set) for p in first] == [p.relative_to(again) for p in second]
    for a, b in zip(first[::5], second[::5], strict=True):
        assert a.read_bytes() == b.read_bytes(), a


def test_other_seed_gives_other_images(tmp_path: Path, small_set: Path):
    other = demo.generate_demo(tmp_path / "other", seed=1, per_class=SMALL)
    name = demo.demo_class_names()[0]
    a = np.asarray(Image.open(next((small_set / "train" / name).glob("*.jpg"))))
    b = np.asarray(Image.open(next((other / "train" / name).glob("*.jpg"))))
    assert not np.array_equal(a, b)


def test_second_call_reuses_the_set(small_set: Path, monkeypatch: pytest.MonkeyPatch):
    before = {p: p.stat().st_mtime_ns for p in _files(small_set)}

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an existing demo set")

    monkeypatch.setattr(demo, "_write_image", fail)
    assert demo.generate_demo(small_set, seed=0, per_class=SMALL) == small_set
    assert {p: p.stat().st_mtime_ns for p in _files(small_set)} == before


def test_other_settings_replace_the_set(tmp_path: Path):
    root = demo.generate_demo(tmp_path / "set", seed=0, per_class=1)
    demo.generate_demo(root, seed=0, per_class=SMALL)
    name = demo.demo_class_names()[0]
    assert len(list((root / "train" / name).glob("*.jpg"))) == SMALL
    assert demo.is_demo_root(root, seed=0, per_class=SMALL)
    assert not demo.is_demo_root(root, seed=0, per_class=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]


def test_interrupted_generation_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    written = []
    real_write = demo._write_image

    def write_then_fail(img: Image.Image, path: Path) -> None:
        if len(written) == 10:
            raise KeyboardInterrupt
        written.append(path)
        real_write(img, path)

    monkeypatch.setattr(demo, "_write_image", write_then_fail)
    with pytest.raises(KeyboardInterrupt):
        demo.generate_demo(tmp_path / "set", per_class=SMALL)
    assert len(written) == 10
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(demo, "_write_image", real_write)
    assert demo.is_demo_root(demo.generate_demo(tmp_path / "set", per_class=SMALL), per_class=SMALL)


def test_refuses_a_folder_that_is_not_a_demo_set(tmp_path: Path):
    root = tmp_path / "mine"
    root.mkdir()
    (root / "notes.txt").write_text("keep me")
    with pytest.raises(CarcliError, match="not a carcli demo"):
        demo.generate_demo(root, per_class=1)
    assert [p.name for p in root.iterdir()] == ["notes.txt"]


def test_empty_folder_is_filled(tmp_path: Path):
    root = tmp_path / "empty"
    root.mkdir()
    assert demo.is_demo_root(demo.generate_demo(root, per_class=1), per_class=1)


@pytest.mark.slow
def test_full_default_set_is_quick_and_reads_as_class_folders(tmp_path: Path):
    from carcli.data.layouts import load_dataset

    start = time.perf_counter()
    root = demo.generate_demo(tmp_path / "demo")
    elapsed = time.perf_counter() - start
    assert elapsed < 30.0  # about 5 s on 2 cores; generous for a loaded CI machine
    data = load_dataset(root)
    assert data.layout == "folders"
    assert data.class_names == demo.demo_class_names()
    n = len(data.class_names)
    assert len(data.split("train")) == n * demo.TRAIN_PER_CLASS
    assert len(data.split("val")) == n * demo.VAL_PER_CLASS
