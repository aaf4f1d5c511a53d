"""Hostile images: bombs, truncation, damaged compressed data, odd pixel formats; every command that reads
images checks them through the one shared check and answers for the good photos beside them."""

from __future__ import annotations

import functools
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import real_photos_by_class
from hostile import bomb_jpeg, bomb_png, carcli, damaged_png, fails, snapshot
from PIL import Image

from carcli.data.images import UnreadableImage, image_problem, open_rgb

UNREADABLE = {  # kind -> a fragment of the reason given
    "bomb.png": "decompression bomb",
    "bomb.jpg": "decompression bomb",
    "warn-range.png": "decompression bomb",  # PIL only warns here; carcli refuses
    "damaged-zlib.png": "corrupt",
    "truncated.jpg": "truncated",
    "truncated.png": "truncated",
    "empty.jpg": "not an image",
    "text.jpg": "not an image",
    "html.png": "not an image",
    "header-only.gif": "not an image",
}
READABLE = ("cmyk.jpg", "sixteen-bit.png", "la.png", "palette-alpha.png", "one-bit.png", "float.tif", "anim.gif")


@functools.cache
def _photos() -> list[Path]:
    return sorted(next(iter(real_photos_by_class().values())))


def _photo(index: int = 0) -> Path:
    return _photos()[index]


def _readable(folder: Path) -> None:
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (40, 40), dtype=np.uint16)).save(folder / "sixteen-bit.png")
    rgb.convert("LA").save(folder / "la.png")
    palette = rgb.convert("P")
    palette.info["transparency"] = 0
    palette.save(folder / "palette-alpha.png")
    rgb.convert("1").save(folder / "one-bit.png")
    Image.fromarray(rng.random((40, 40), dtype=np.float32) * 1000).save(folder / "float.tif")
    frames = [rgb.convert("P"), rgb.rotate(90).convert("P")]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("zoo")
    photo = _photo()
    bomb_png(folder / "bomb.png")
    bomb_png(folder / "warn-range.png", side=20_000)  # 400 Mpx: over carcli's limit, under PIL's error
    bomb_jpeg(photo, folder / "bomb.jpg")
    damaged_png(folder / "damaged-zlib.png")
    (folder / "truncated.jpg").write_bytes(photo.read_bytes()[: photo.stat().st_size // 2])
    damaged_png(folder / "whole.png")
    whole = (folder / "whole.png").read_bytes()
    (folder / "whole.png").unlink()
    (folder / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a photo\n")
    (folder / "html.png").write_text("<html><body>404</body></html>")
    (folder / "header-only.gif").write_bytes(b"GIF89a\x10\x00\x10\x00\x80\x00\x00")
    _readable(folder)
    return folder


@pytest.mark.parametrize("name", sorted(UNREADABLE))
def test_the_shared_check_names_what_is_wrong(zoo, name):
    assert UNREADABLE[name] in (image_problem(zoo / name) or "")
    with pytest.raises(UnreadableImage, match=name.replace(".", r"\.")):  # the loaders' path: names the file
        open_rgb(zoo / name, 32)


@pytest.mark.parametrize("name", READABLE)
def test_odd_pixel_formats_become_rgb(zoo, name):
    assert image_problem(zoo / name) is None
    img = open_rgb(zoo / name, 32)
    assert img.mode == "RGB" and min(img.size) > 0


def test_a_missing_file_is_named():
    assert image_problem(Path("/nonexistent/x.jpg")) == "not found"


@pytest.fixture
def beside_a_bomb(zoo, tmp_path) -> Path:
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(2):
        shutil.copy(_photo(i), folder / f"good{i}.jpg")
    shutil.copy(zoo / "bomb.png", folder / "bomb.png")
    return folder


@pytest.mark.parametrize("form", ["files", "folder", "glob"])
def test_predict_answers_the_good_photos_beside_a_bomb(beside_a_bomb, untrained_members, form):
    inputs = {
        "files": [beside_a_bomb / "good0.jpg", beside_a_bomb / "bomb.png", beside_a_bomb / "good1.jpg"],
        "folder": [beside_a_bomb],
        "glob": [f"{beside_a_bomb}/*"],
    }[form]
    result = carcli("predict", *inputs, "--model", untrained_members[0], "--json")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(Path(a["image"]).name for a in answers) == ["good0.jpg", "good1.jpg"]
    assert "bomb.png" in result.output and "decompression bomb" in result.output


def test_predict_on_bombs_only_is_one_line(zoo, untrained_members):
    fails("predict", zoo / "bomb.png", zoo / "bomb.jpg", "--model", untrained_members[0], says=("no readable images",))


def test_eval_lists_a_bomb_in_the_data_and_goes_on(real_folder_set, zoo, untrained_members, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(real_folder_set, data)
    bomb_class = next((data / "val").iterdir())
    shutil.copy(zoo / "bomb.png", bomb_class / "bomb.png")
    result = carcli("eval", untrained_members[0], "--data", data, "--out", tmp_path / "report", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "bomb.png" in (tmp_path / "report" / "unreadable.txt").read_text()


def test_fetch_folder_excludes_a_bomb_and_keeps_the_source(real_folder_set, zoo, tmp_path):
    source = tmp_path / "source"
    shutil.copytree(real_folder_set, source)
    shutil.copy(zoo / "bomb.png", next((source / "train").iterdir()) / "bomb.png")
    before = snapshot(source)
    result = carcli("fetch-data", "folder", source, "--name", "withbomb", "--root", tmp_path / "root")
    assert result.exit_code == 0, result.output
    assert "unreadable" in result.output
    assert not list((tmp_path / "root").rglob("bomb.png"))
    assert snapshot(source) == before  # the user's folder is read, never changed


@pytest.fixture
def looped(tmp_path) -> Path:
    """Two photos in a folder holding links back to itself and to its parent (loops), and a second name."""
    folder = tmp_path / "looped"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(_photo(0), folder / "a.jpg")
    shutil.copy(_photo(1), folder / "sub" / "b.jpg")
    (folder / "self").symlink_to(".")
    (folder / "sub" / "up").symlink_to("..")
    (folder / "alias.jpg").symlink_to(folder / "a.jpg")
    return folder


@pytest.mark.parametrize("pattern", ["{f}", "{f}/**/*.jpg", "{f}/**", "{f}/*.jpg", "{f}/sub/../*.jpg"])
def test_links_and_loops_never_list_a_photo_twice(looped, pattern):
    from carcli.predict import gather_images

    paths, skipped = gather_images([pattern.format(f=looped), str(looped / "a.jpg")])
    assert len({os.path.realpath(p) for p in paths}) == len(paths) and skipped == []
    assert {Path(os.path.realpath(p)).name for p in paths} <= {"a.jpg", "b.jpg"}
    assert len(paths) == (1 if pattern.endswith("*.jpg") and "**" not in pattern else 2)


def test_predict_through_a_symlink_loop_answers_each_photo_once(looped, untrained_members):
    result = carcli("predict", f"{looped}/**/*.jpg", looped, "--model", untrained_members[0], "--json")
    assert result.exit_code == 0, result.output
    answers = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert sorted(Path(os.path.realpath(a["image"])).name for a in answers) == ["a.jpg", "b.jpg"]


def test_train_lists_a_bomb_and_goes_on(tiny_set, zoo, tmp_path):
    from types import SimpleNamespace

    from carcli.data.layouts import load_dataset
    from carcli.progress import SilentReporter
    from carcli.train.feed import readable_splits

    data = tmp_path / "data"
    shutil.copytree(tiny_set, data)
    shutil.copy(zoo / "bomb.png", next((data / "train").iterdir()) / "bomb.png")
    dataset = load_dataset(data)
    train, val = readable_splits(dataset, tmp_path, SilentReporter(), SimpleNamespace(main=True))
    assert len(train) + len(val) == len(dataset.samples) - 1
    assert "bomb.png" in (tmp_path / "unreadable.txt").read_text()
