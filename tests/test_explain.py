"""Grad-CAM (torchcam) on every registered architecture, saliency, CAM boxes, overlays and the two-pass CAM crop."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from carcli.checkpoint import read_metadata
from carcli.checkpoint_meta import CheckpointMeta
from carcli.cli import app
from carcli.data.images import view_box
from carcli.data.layouts import Sample
from carcli.data.taxonomy import Taxonomy
from carcli.explain import DISPLAY_SIZE, cam_maps, grad_cam, overlay, saliency_maps, wrap_text
from carcli.inference import cam_box, cam_crop_probs, sample_probs
from carcli.models.registry import create_model, list_archs

BIG_ARCHS = ("resnext50", "wide_resnet50", "densenet121", "inception_v3")  # seconds each just to build


@pytest.mark.parametrize(
    "arch", [pytest.param(s.name, marks=pytest.mark.slow) if s.name in BIG_ARCHS else s.name for s in list_archs()]
)
def test_grad_cam_serves_every_registered_arch(arch):
    torch.manual_seed(0)
    model = create_model(arch, "mtl", {"model": 4, "make": 2, "type": 3}).eval()
    size = 80  # inception_v3 needs 75 px at least
    images = torch.randn(2, 3, size, size)
    with grad_cam(model, size) as extractor:
        [layer] = extractor.target_names
        logits, maps = cam_maps(model, extractor, images, [1, 3])
    assert layer.startswith("backbone.")  # a spatial feature map of the backbone, not the head
    assert logits["model"].shape == (2, 4)
    assert maps.shape == (2, size, size)
    assert maps.min() >= 0 and maps.max() <= 1
    assert not any(m._forward_hooks for m in model.modules())  # the hooks are gone afterwards


def test_cam_box_follows_the_strongest_region():
    cam = torch.zeros(100, 100)
    cam[20:40, 50:90] = 1.0  # the strong region
    cam[80:85, 5:10] = 0.6  # a weaker one elsewhere
    # x: 0.5..0.9 grown by 10 % of its width; y: 0.2..0.4 grown, then widened to the 0.3 minimum around its centre
    assert cam_box(cam) == pytest.approx((0.46, 0.15, 0.94, 0.45))
    assert cam_box(torch.zeros(10, 10)) == (0.0, 0.0, 1.0, 1.0)
    corner = torch.zeros(100, 100)
    corner[0:2, 98:100] = 1.0
    assert cam_box(corner) == pytest.approx((0.7, 0.0, 1.0, 0.3))  # never a sliver, never outside the image


def test_saliency_is_a_normalised_gradient_map():
    torch.manual_seed(0)
    model = create_model("ghostnet", "linear", {"model": 3}).eval()
    maps = saliency_maps(model, torch.randn(2, 3, 64, 64), [0, 2])
    assert maps.shape == (2, 64, 64)
    assert torch.allclose(maps.flatten(1).amax(1), torch.ones(2))
    assert float(maps.std()) > 0.01


def test_two_pass_prediction_keeps_the_first_pass_and_averages(real_folder_set):
    # random mobilenetv2 weights: its answers depend on the pixels (an untrained ghostnet's barely do)
    names = sorted(p.name for p in (real_folder_set / "val").iterdir())
    taxonomy = Taxonomy.from_class_names(names)
    meta = CheckpointMeta(
        arch="mobilenetv2",
        head="mtl",
        img_size=128,
        mean=[0.5] * 3,
        std=[0.25] * 3,
        tasks=taxonomy.tasks,
        taxonomy=taxonomy,
    )
    torch.manual_seed(0)
    model = create_model("mobilenetv2", "mtl", {task: len(n) for task, n in taxonomy.tasks.items()}).eval()
    samples = [Sample(p, 0, "val") for p in sorted((real_folder_set / "val").rglob("*.jpg"))[::3]]
    first, final = cam_crop_probs(model, meta, samples, batch_size=4)
    plain = sample_probs(model, meta, samples)
    for task in plain:
        assert torch.allclose(first[task], plain[task], atol=1e-5)
        assert torch.allclose(final[task].sum(1), torch.ones(len(samples)), atol=1e-5)
        assert float((final[task] - plain[task]).abs().max()) > 1e-3  # the second pass saw other pixels


def test_predict_explain_writes_an_overlay_per_image(trained_checkpoint, real_folder_set, tmp_path):
    photos = sorted((real_folder_set / "val").rglob("*.jpg"))[:2]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(photos[0], tmp_path / "a" / "car.jpg")
    shutil.copy(photos[1], tmp_path / "b" / "car.jpg")  # same name in another folder
    out = tmp_path / "explain"
    args = ["predict", str(tmp_path / "a"), str(tmp_path / "b"), "--model", str(trained_checkpoint)]
    result = CliRunner().invoke(app, [*args, "--explain", str(out), "--saliency", "--crop", "cam", "--json"])
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    names = sorted(p.name for p in out.iterdir())
    assert names == ["car-2.gradcam.png", "car-2.saliency.png", "car.gradcam.png", "car.saliency.png"]
    aspect = read_metadata(trained_checkpoint).view_aspect
    for path in out.iterdir():
        with Image.open(photos[path.name.startswith("car-2")]) as photo:
            _, _, view_w, view_h = view_box(photo.width, photo.height, aspect)
        with Image.open(path) as img:
            pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
        height, width = pixels.shape[:2]
        shown = round(DISPLAY_SIZE * min(1.0, view_h / view_w))  # the view the model saw, long side 448 ...
        assert max(width, shown) == DISPLAY_SIZE
        assert shown + 14 < height < shown + 120  # ... and a caption strip below it
        assert pixels.std() > 20


def test_overlays_are_448_px_and_the_caption_wraps_whole():
    from PIL import ImageFont

    caption = "gradcam: Mercedes-Benz Sprinter Cargo Van 2012 (87.5%) Volkswagen-Golf-Hatchback-2012-extra-long-name"
    sheet = overlay(Image.new("RGB", (160, 177), "gray"), torch.rand(7, 7), caption)
    assert max(sheet.size) >= DISPLAY_SIZE >= 448  # a 160 x 177 photo is scaled up, not left small
    font = ImageFont.load_default(size=max(14, 405 // 28))
    lines = wrap_text(caption, font, 405 - 12)
    assert len(lines) >= 2 and "".join(lines).replace(" ", "") == caption.replace(" ", "")
    assert all(font.getlength(line) <= 405 - 12 for line in lines)
    assert sheet.height > 448 + len(lines) * font.size  # a strip tall enough for every line
