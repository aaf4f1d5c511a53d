"""Image reading: odd modes become RGB, big JPEGs decode small, broken files are found up front."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import need_real_photos
from PIL import Image

from carcli.data.images import find_unreadable, open_rgb, view_box, view_resize


@pytest.mark.parametrize(
    ("mode", "color"),
    [("L", 128), ("CMYK", (0, 255, 255, 0)), ("RGBA", (255, 0, 0, 255)), ("P", 3), ("I;16", 40000), ("1", 1)],
)
def test_every_mode_opens_as_rgb(tmp_path, mode, color):
    path = tmp_path / ("img.tif" if mode in ("CMYK", "I;16") else "img.png")
    Image.new(mode, (20, 10), color).save(path)
    img = open_rgb(path)
    assert img.mode == "RGB" and img.size == (20, 10)


def test_cmyk_jpeg_keeps_its_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path)  # pure red in CMYK
    r, g, b = np.asarray(open_rgb(path)).reshape(-1, 3).mean(0)
    assert r > 200 and g < 60 and b < 60


def test_transparent_pixels_become_white(tmp_path):
    path = tmp_path / "clear.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert np.asarray(open_rgb(path)).min() == 255


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(path, quality=80)
    img = open_rgb(path, min_size=224)
    assert min(img.size) >= 224 and img.size[0] <= 1000  # decoded at 1/4 scale or smaller, not 4000 px
    assert open_rgb(path).size == (4000, 3000)


def test_find_unreadable_names_exactly_the_broken_files(tmp_path):
    real = sorted((need_real_photos() / "cars_train").glob("*.jpg"))[:3]
    assert len(real) == 3
    truncated, garbage, missing = tmp_path / "cut.jpg", tmp_path / "text.jpg", tmp_path / "gone.jpg"
    truncated.write_bytes(real[0].read_bytes()[:500])
    garbage.write_bytes(b"hello")
    assert find_unreadable([*real, truncated, garbage, missing]) == [truncated, garbage, missing]


def test_the_evaluation_view_is_the_centre_crop_of_at_most_the_aspect():
    assert view_box(200, 100) == (50, 0, 100, 100)  # aspect 1: the centre square
    assert view_box(200, 100, 4 / 3) == pytest.approx((100 / 3, 0, 400 / 3, 100))
    assert view_box(100, 200, 4 / 3) == pytest.approx((0, 100 / 3, 100, 400 / 3))  # portrait: the same on its side
    assert view_box(120, 100, 4 / 3) == (0, 0, 120, 100)  # a photo narrower than the aspect: all of it
    assert view_resize(200, 100, 32) == (64, 32)  # aspect 1: the shorter side to 32, as Resize(32)
    assert view_resize(200, 100, 32, 4 / 3) == (48, 32)  # the 133-pixel view becomes 32 wide
    assert view_resize(100, 200, 32, 4 / 3) == (32, 48)
