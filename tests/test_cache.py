"""--cache: the prepared image store, augmentation of whole batches on the device, and --profile."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import SMALL_CLASSES, assert_same_weights, real_photos_by_class
from PIL import Image, ImageOps
from torchvision.io import decode_jpeg
from typer.testing import CliRunner

from carcli.cli import app
from carcli.data import packed
from carcli.data.batch_augment import BatchAugment, batchable
from carcli.data.images import open_rgb, view_box
from carcli.data.layouts import Sample, load_dataset
from carcli.data.packed import Frame, PackedDataset, StoreShape, load_or_build, store_path, store_shape
from carcli.data.transforms import PRESETS, Augment
from carcli.errors import CarcliError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
CPU = torch.device("cpu")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("CARCLI_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _samples(root):
    return load_dataset(root, 0.2, 0).split("train")


def test_store_holds_the_resized_images_and_is_built_once(tiny_set, tmp_path):
    samples = _samples(tiny_set)
    calls = []
    store = load_or_build(samples, StoreShape(24), tmp_path, progress=lambda done, total: calls.append((done, total)))
    assert store.images.shape == (len(samples), 24, 24, 3) and store.images.dtype == np.uint8
    assert calls[-1] == (len(samples), len(samples))
    expected = np.array(ImageOps.fit(open_rgb(samples[5].path), (24, 24), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(store.images[5], expected)
    image, label = PackedDataset(store)[5]
    assert image.shape == (3, 24, 24) and image.dtype == torch.uint8 and label == samples[5].label
    torch.testing.assert_close(image.permute(1, 2, 0).numpy(), expected, check_dtype=False)
    built = store.path.stat().st_mtime_ns
    calls.clear()
    again = load_or_build(samples, StoreShape(24), tmp_path, progress=lambda done, total: calls.append(done))
    assert again.path == store.path and not calls and store.path.stat().st_mtime_ns == built
    assert [p.name for p in tmp_path.iterdir()] == [store.path.name]  # no temporary file left behind


def test_training_stores_keep_whole_photos_and_their_proportions(tmp_path):
    sizes = [(80, 40), (30, 60)]  # a wide and a tall photo
    samples = []
    for index, size in enumerate(sizes):
        path = tmp_path / f"photo{index}.png"
        Image.radial_gradient("L").convert("RGB").resize(size).save(path)
        samples.append(Sample(path, index, "train"))
    store = load_or_build(samples, StoreShape(20, whole=True), tmp_path / "cache")
    assert store.images.shape == (2, 20, 30, 3)
    np.testing.assert_allclose(store.aspects, [2.0, 0.5])
    for index, sample in enumerate(samples):  # the whole photo, squashed to the frame
        expected = np.asarray(Image.open(sample.path).resize((30, 20), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(store.images[index], expected)
    (frame, label) = PackedDataset(store)[1]
    assert isinstance(frame, Frame) and frame.pixels.shape == (3, 20, 30) and frame.aspect == 0.5 and label == 1
    per_image = PackedDataset(store, transform=lambda image: image.size)
    assert [per_image[i][0] for i in range(2)] == [(40, 20), (10, 20)]  # back in the photo's proportions
    store.path.with_suffix(".aspects.npy").unlink()  # a store without its aspects is built again
    rebuilt = load_or_build(samples, StoreShape(20, whole=True), tmp_path / "cache")
    np.testing.assert_allclose(rebuilt.aspects, [2.0, 0.5])
    aspects = store.path.with_suffix(".aspects.npy")
    for damage in (b"garbage", None):  # unreadable, then the wrong length: one line naming the store
        if damage is None:
            np.save(aspects, np.ones(5, dtype=np.float32))
        else:
            aspects.write_bytes(damage)
        with pytest.raises(CarcliError, match=f"image store {store.path}.*delete"):
            load_or_build(samples, StoreShape(20, whole=True), tmp_path / "cache")


def _photo_kinds(folder):
    """Real photos at a full-size-like scale as the file kinds a data set holds, each with a box."""
    photos = sorted(real_photos_by_class()[SMALL_CLASSES[0]])[:6]
    folder.mkdir()
    samples = []
    for i, (kind, src) in enumerate(zip(("rgb", "rgb", "gray", "rotated", "cmyk", "png"), photos, strict=True)):
        img = Image.open(src).convert("RGB")
        img = img.resize((img.width * 3, img.height * 3))
        path = folder / f"{i}-{kind}.{'png' if kind == 'png' else 'jpg'}"
        if kind == "gray":
            img.convert("L").save(path, quality=95)
        elif kind == "rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            img.save(path, quality=95, exif=exif)
        else:
            img.convert("CMYK" if kind == "cmyk" else "RGB").save(path, quality=95)
        box = (img.width // 8, img.height // 6, img.width - img.width // 5, img.height - 4)
        samples.append(Sample(path, i, "train", box))
    return samples


@pytest.mark.parametrize("crop_margin", [None, 0.1])
@pytest.mark.parametrize(
    "shape", [StoreShape(64), StoreShape(64, aspect=4 / 3), StoreShape(64, whole=True)], ids=["square", "view", "whole"]
)
def test_device_decoding_builds_the_store_pil_would(tmp_path, monkeypatch, crop_margin, shape):
    samples = _photo_kinds(tmp_path / "photos")
    decoded = []

    def counting_decode(blobs, **kwargs):
        decoded.extend(blobs)
        return decode_jpeg(blobs, **kwargs)

    monkeypatch.setattr(packed, "decode_jpeg", counting_decode)
    by_pil = load_or_build(samples, shape, tmp_path / "pil", crop_margin)
    assert not decoded
    by_device = load_or_build(samples, shape, tmp_path / "device", crop_margin, device=CPU)
    assert len(decoded) == 3  # the RGB and grayscale JPEGs; the rotated, CMYK and PNG files went through PIL
    for index, sample in enumerate(samples):
        device_pixels, pil_pixels = by_device.images[index].astype(int), by_pil.images[index].astype(int)
        if index >= 3:
            np.testing.assert_array_equal(device_pixels, pil_pixels, err_msg=sample.path.name)
            continue
        # both are approximations (PIL decodes at 1/2-1/8 scale first); the full-size decode is no further off
        full = _full_size(sample, crop_margin)
        left, top, width, height = view_box(full.width, full.height, shape.aspect)  # the evaluation view
        view = None if shape.whole else (left, top, left + width, top + height)
        exact = np.asarray(full.resize(shape.size, Image.Resampling.LANCZOS, box=view)).astype(int)
        device_error, pil_error = np.abs(device_pixels - exact).mean(), np.abs(pil_pixels - exact).mean()
        assert device_error <= pil_error + 0.5 and device_error < 6, (sample.path.name, device_error, pil_error)
    if shape.whole:  # each photo's own width / height, whichever decoder
        truth = [_full_size(sample, crop_margin).width / _full_size(sample, crop_margin).height for sample in samples]
        np.testing.assert_allclose(by_device.aspects, truth, rtol=0.01)
        np.testing.assert_allclose(by_pil.aspects, truth, rtol=0.01)
    else:
        assert by_device.aspects is None and by_pil.aspects is None


def _full_size(sample, crop_margin):
    return open_rgb(sample.path, None, sample.bbox if crop_margin is not None else None, crop_margin or 0.0)


def test_jpegs_the_device_decoder_refuses_are_decoded_by_pil(tmp_path, monkeypatch):
    samples = _photo_kinds(tmp_path / "photos")
    by_pil = load_or_build(samples, StoreShape(64), tmp_path / "pil")

    def refusing_decode(blobs, **kwargs):
        raise RuntimeError("nvjpeg: unsupported JPEG")

    monkeypatch.setattr(packed, "decode_jpeg", refusing_decode)
    by_device = load_or_build(samples, StoreShape(64), tmp_path / "device", device=CPU)
    np.testing.assert_array_equal(by_device.images, by_pil.images)


def test_a_changed_photo_or_size_gets_a_new_store(tiny_set, tmp_path):
    shutil.copytree(tiny_set, tmp_path / "data")
    samples = _samples(tmp_path / "data")
    first = store_path(samples, StoreShape(24), tmp_path)
    assert store_path(samples, StoreShape(32), tmp_path) != first
    assert store_path(samples, StoreShape(24, whole=True), tmp_path) != first
    assert store_path(samples, StoreShape(24, aspect=4 / 3), tmp_path) != first
    assert store_path(samples, StoreShape(24), tmp_path, crop_margin=0.1) != first
    Image.new("RGB", (40, 40), (255, 0, 0)).save(samples[0].path)
    os.utime(samples[0].path, ns=(1, 1))
    assert store_path(samples, StoreShape(24), tmp_path) != first


def test_training_stores_a_margin_larger_than_evaluation():
    assert store_shape(160, training=True) == StoreShape(184, whole=True)
    assert store_shape(160, training=False) == StoreShape(160)
    assert store_shape(160, training=False, view_aspect=1.5) == StoreShape(160, aspect=1.5)
    assert StoreShape(184, whole=True).size == (276, 184) and StoreShape(160).size == (160, 160)


def _batch(n: int = 6, side: int = 20) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, side, side), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _normalised(images: torch.Tensor) -> torch.Tensor:
    return (images.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def test_evaluation_batches_are_only_normalised_and_resized():
    images = _batch()
    torch.testing.assert_close(BatchAugment(20, MEAN, STD, None, CPU)(images), _normalised(images))
    assert BatchAugment(12, MEAN, STD, None, CPU)(images).shape == (6, 3, 12, 12)


def test_flip_only_gives_each_image_or_its_mirror_and_both_occur():
    images = _batch(32)
    flip_only = Augment(crop_scale=1.0, hflip=True, color_jitter=0.0)
    out = BatchAugment(20, MEAN, STD, flip_only, CPU)(images, (1, 0))
    plain, mirrored = _normalised(images), _normalised(images).flip(3)
    same = [torch.allclose(o, p, atol=1e-5) for o, p in zip(out, plain, strict=True)]
    flipped = [torch.allclose(o, m, atol=1e-5) for o, m in zip(out, mirrored, strict=True)]
    assert all(a or b for a, b in zip(same, flipped, strict=True))
    assert 0 < sum(flipped) < 32


def test_batch_augmentation_is_seeded_by_epoch_and_step():
    images = _batch()
    augment = BatchAugment(16, MEAN, STD, PRESETS["standard"], CPU, seed=3)
    first = augment(images, (2, 5))
    assert first.shape == (6, 3, 16, 16) and torch.isfinite(first).all()
    torch.testing.assert_close(augment(images, (2, 5)), first)
    assert not torch.allclose(augment(images, (2, 6)), first)
    crops = augment(images, (2, 5)).flatten(1)
    assert not torch.allclose(crops, _normalised(torch.nn.functional.interpolate(images.float(), 16)).flatten(1))


def test_random_resized_crops_cut_each_image_a_box_of_the_drawn_area():
    side, n = 40, 24
    columns = torch.arange(side, dtype=torch.uint8).mul(6).view(1, 1, 1, side)  # a ramp: pixel value = 6 x column
    images = columns.expand(n, 3, side, side).clone()
    images[:, 1] = torch.arange(n, dtype=torch.uint8).view(n, 1, 1) * 10  # green: which image a crop came from
    crop_only = Augment(crop_scale=0.5, hflip=False, color_jitter=0.0)
    out = BatchAugment(16, (0.0,) * 3, (1.0,) * 3, crop_only, CPU)(images, (1, 0)) * 255
    assert out.shape == (n, 3, 16, 16) and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out[:, 1], images[:, 1, :16, :16].float())  # every crop from its own image
    seen = (out[:, 0].amax(dim=(1, 2)) - out[:, 0].amin(dim=(1, 2))) / 6 + 1  # columns each crop spans
    widest = side * (4 / 3) ** 0.5  # area share 1 at the widest aspect ratio, clamped to the image
    assert (seen >= side * (0.5 * 3 / 4) ** 0.5 - 2).all() and (seen <= min(side, widest) + 1).all()
    assert seen.std() > 1  # boxes differ


def _wide_photos(n: int) -> Frame:
    """n copies of a 2:1 photo (red: 255 x its column / width, green: 255 x its row / height), stored whole."""
    height, width = 40, 80
    red = torch.linspace(0, 255, width).view(1, 1, 1, width).expand(1, 1, height, width)
    green = torch.linspace(0, 255, height).view(1, 1, height, 1).expand(1, 1, height, width)
    photo = torch.cat([red, green, torch.zeros_like(red)], dim=1)
    squashed = torch.nn.functional.interpolate(photo, size=(40, 60), mode="bilinear", antialias=True)
    return Frame(squashed.round().to(torch.uint8).expand(n, 3, 40, 60), torch.full((n,), width / height))


def test_crops_of_whole_photos_are_drawn_in_the_photos_proportions():
    unit = ((0.0,) * 3, (1.0,) * 3)
    centre = BatchAugment(16, *unit, Augment(crop_scale=1.0, hflip=False, color_jitter=0.0), CPU)(_wide_photos(2))
    columns = centre[0, 0] * 255  # the centre square of a 2:1 photo: its middle half of columns
    assert abs(columns.min() - 64) < 8 and abs(columns.max() - 191) < 8
    assert centre[0, 1].min() * 255 < 8 and centre[0, 1].max() * 255 > 247  # every row
    crop_1 = Augment(crop_scale=1.0, hflip=False, color_jitter=0.0)
    view = BatchAugment(16, *unit, crop_1, CPU, view_aspect=4 / 3)(_wide_photos(2))[0] * 255
    # the middle two thirds (a 4:3 view): 16 pixel centres from 43 + 169 / 32 to 212 - 169 / 32 in red
    assert abs(view[0].min() - 48) < 6 and abs(view[0].max() - 207) < 6
    assert view[1].min() < 8 and view[1].max() > 247
    crops = BatchAugment(16, *unit, Augment(crop_scale=0.3, hflip=False, color_jitter=0.0), CPU)(_wide_photos(64))
    wide = (crops[:, 0].amax(dim=(1, 2)) - crops[:, 0].amin(dim=(1, 2))) * 80  # true columns each crop spans
    high = (crops[:, 1].amax(dim=(1, 2)) - crops[:, 1].amin(dim=(1, 2))) * 40
    area = wide * high / (80 * 40)
    assert (area > 0.3 - 0.06).all() and (area < 1.02).all()
    inside = (wide < 74) & (
        high < 36.5
    )  # boxes no edge clamped (a full 40-row crop reads as 37.8): their drawn aspect ratio, 3/4 to 4/3
    ratio = wide[inside] / high[inside]
    assert inside.sum() > 10 and (ratio > 0.72).all() and (ratio < 1.38).all() and ratio.max() > 1.1


def test_a_crop_that_cannot_fit_falls_back_to_the_centre_crop_at_the_widest_ratio_as_torchvision():
    unit = ((0.0,) * 3, (1.0,) * 3)
    # on a 2:1 photo no crop of 90 % of the area has an aspect ratio of 4/3 or less: every draw fails
    fallback = BatchAugment(16, *unit, Augment(crop_scale=0.9, hflip=False, color_jitter=0.0), CPU)(_wide_photos(8))
    view = BatchAugment(16, *unit, Augment(crop_scale=1.0, hflip=False, color_jitter=0.0), CPU, view_aspect=4 / 3)
    torch.testing.assert_close(fallback, view(_wide_photos(8)))  # the 4:3 centre crop, the evaluation view


def test_colour_jitter_grayscale_and_erasing_act():
    images = _batch(16)
    base = Augment(crop_scale=1.0, hflip=False, color_jitter=0.0)
    assert torch.allclose(BatchAugment(20, MEAN, STD, base, CPU)(images), _normalised(images), atol=1e-5)
    jittered = BatchAugment(20, MEAN, STD, replace(base, color_jitter=0.5), CPU)(images)
    assert not torch.allclose(jittered, _normalised(images), atol=1e-3)
    gray = BatchAugment(20, (0.0,) * 3, (1.0,) * 3, replace(base, grayscale=1.0), CPU)(images)
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    erased = BatchAugment(20, MEAN, STD, replace(base, random_erasing=1.0), CPU)(images)
    zeros = (erased == 0).all(dim=1).flatten(1).float().mean(1)  # share of each image set to 0
    assert ((zeros > 0.01) & (zeros < 0.5)).all()


def test_affine_and_auto_augment_have_no_batched_form():
    assert batchable(PRESETS["standard"]) and batchable(PRESETS["light"])
    assert not batchable(PRESETS["strong"])
    assert not batchable(replace(PRESETS["none"], affine_degrees=5.0))


def test_train_with_cache_and_profile_from_the_cli(tiny_set, tmp_path, home):
    args = ["train", "--data", str(tiny_set), "--img-size", "32", "--epochs", "2", "--batch-size", "8"]
    first = CliRunner().invoke(app, [*args, "--cache", "--profile", "--out", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    assert "preparing 48 images" in first.output and "profile, epoch 2, per step: load" in first.output
    stores = sorted(p.name for p in (home / "cache").iterdir())
    assert len(stores) == 3  # train: whole photos 37 px high and their aspects; val: evaluation views at 32 px
    record = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["profile"]) == {"load", "prepare", "compute"}
    assert json.loads((tmp_path / "a" / "config.json").read_text())["cache"] is True
    second = CliRunner().invoke(app, [*args, "--cache", "--out", str(tmp_path / "b")])
    assert second.exit_code == 0, second.output
    assert "preparing" not in second.output and sorted(p.name for p in (home / "cache").iterdir()) == stores


def test_cached_runs_resume_exactly(tiny_set, tmp_path, home):
    from carcli.train import TrainConfig, resume_config, train

    options = {"data": str(tiny_set), "arch": "ghostnet", "img_size": 32, "batch_size": 8, "device": "cpu"}
    options.update(cache=True, warmup_epochs=0.0, schedule="multistep", augment="standard", random_erasing=0.5)
    train(TrainConfig(out=str(tmp_path / "straight"), epochs=2, **options))
    train(TrainConfig(out=str(tmp_path / "resumed"), epochs=1, **options))
    result = train(resume_config(tmp_path / "resumed", {"epochs": 2}), resume=True)
    assert [r["epoch"] for r in result.records] == [1, 2]  # the second run continued the first
    assert_same_weights(tmp_path / "straight" / "last.st", tmp_path / "resumed" / "last.st")


def test_strong_preset_with_cache_augments_per_image(tiny_set, tmp_path, home):
    from carcli.progress import SilentReporter
    from carcli.train import TrainConfig, train

    lines: list[str] = []

    class Lines(SilentReporter):
        def info(self, message: str) -> None:
            lines.append(message)

    config = TrainConfig(
        data=str(tiny_set), out=str(tmp_path / "run"), epochs=1, img_size=32, batch_size=8, device="cpu",
        cache=True, augment="strong", workers=0,
    )  # fmt: skip
    result = train(config, Lines())
    assert result.records and any("augmenting per image" in line for line in lines)
