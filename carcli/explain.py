"""Explanations: Grad-CAM heat maps (torchcam), gradient saliency, and the overlays `predict --explain` and
`serve` draw.

Grad-CAM is torchcam's `GradCAM`, hooked on the last layer of the model whose output is still a
spatial feature map (torchcam locates it with one forward pass, so every timm and torchvision
backbone, a pruned model and an ensemble are served alike). Heat maps are computed for the top
fine class. The CAM crop of two-pass prediction (`--crop cam`) uses these maps: `carcli.inference`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torch.utils.data import DataLoader

from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.images import ImageDataset, open_rgb, view_box
from carcli.data.layouts import Sample
from carcli.data.taxonomy import FINE
from carcli.files import atomic_output

if TYPE_CHECKING:
    from torchcam.methods import GradCAM

DISPLAY_SIZE = 448  # longest side of the written overlays


@contextmanager
def grad_cam(model: nn.Module, img_size: int) -> Iterator[GradCAM]:
    """torchcam's GradCAM on `model`, hooked on its last spatial feature map; the hooks go when the block ends."""
    from torchcam.methods import GradCAM

    logging.getLogger("torchcam").setLevel(logging.ERROR)  # it logs the layer it chose as a warning
    with GradCAM(model.eval(), None, input_shape=(3, img_size, img_size)) as extractor:
        yield extractor


def cam_maps(
    model: nn.Module, extractor: GradCAM, images: Tensor, classes: Sequence[int] | None = None
) -> tuple[dict[str, Tensor], Tensor]:
    """Logits per task and Grad-CAM maps (B, H, W) in [0, 1] at the input size, for `classes` (default: top-1)."""
    with torch.enable_grad():
        logits = model(images)
        chosen = list(classes) if classes is not None else logits[FINE].argmax(1).tolist()
        [maps] = extractor(class_idx=chosen, scores=logits[FINE])
    maps = F.interpolate(maps[:, None].float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    return {task: z.detach() for task, z in logits.items()}, maps[:, 0].clamp(0, 1).cpu()


def saliency_maps(model: nn.Module, images: Tensor, classes: Sequence[int]) -> Tensor:
    """Gradient saliency: |d score / d pixel|, the maximum over colour channels, scaled to [0, 1] per image."""
    with torch.enable_grad():
        inputs = images.detach().clone().requires_grad_(True)
        scores = model(inputs)[FINE]
        picked = scores.gather(1, torch.tensor(list(classes), device=scores.device)[:, None]).sum()
        (grad,) = torch.autograd.grad(picked, inputs)
    sal = grad.abs().amax(1).cpu()
    low = sal.flatten(1).amin(1)[:, None, None]
    high = sal.flatten(1).amax(1)[:, None, None]
    return (sal - low) / (high - low).clamp_min(1e-12)


# ---------------------------------------------------------------- overlays


def overlay(img: Image.Image, heat: Tensor, caption: str) -> Image.Image:
    """The heat map (H, W in [0, 1]) over `img` with torchcam's colour overlay, and a caption strip below.

    The image is scaled (up or down) to DISPLAY_SIZE on its long side; the caption wraps onto as many
    lines as it needs, so it is never cut off.
    """
    from torchcam.utils import overlay_mask

    scale = DISPLAY_SIZE / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    mask = Image.fromarray(heat.numpy().astype(np.float32), mode="F")
    blended = overlay_mask(img, mask, alpha=0.5)
    font = ImageFont.load_default(size=max(14, blended.width // 28))
    margin, line_height = 6, round(font.size * 1.3)
    lines = wrap_text(caption, font, blended.width - 2 * margin)
    sheet = Image.new("RGB", (blended.width, blended.height + line_height * len(lines) + margin), "white")
    sheet.paste(blended, (0, 0))
    draw = ImageDraw.Draw(sheet)
    for i, line in enumerate(lines):
        draw.text((margin, blended.height + margin // 2 + i * line_height), line, fill="black", font=font)
    return sheet


def view_photo(photo: Image.Image, meta: CheckpointMeta) -> Image.Image:
    """The part of `photo` the model of `meta` saw (its evaluation view, unsquashed), which the heat maps cover."""
    left, top, width, height = view_box(photo.width, photo.height, meta.view_aspect)
    return photo.crop((round(left), round(top), round(left + width), round(top + height)))


def wrap_text(text: str, font: ImageFont.ImageFont | ImageFont.FreeTypeFont, width: float) -> list[str]:
    """`text` in lines no wider than `width` pixels: broken between words, inside a word only when it must be."""
    lines: list[str] = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and font.getlength(candidate) <= width:
            lines[-1] = candidate
            continue
        while font.getlength(word) > width and len(word) > 1:
            cut = 1
            while cut < len(word) and font.getlength(word[: cut + 1]) <= width:
                cut += 1
            lines.append(word[:cut])
            word = word[cut:]
        lines.append(word)
    return lines or [""]


@dataclass
class Explanation:
    """What to explain for one image: its file, the class to explain and the caption of the overlay."""

    path: Path
    label: int
    caption: str


def write_explanations(
    model: nn.Module,
    meta: CheckpointMeta,
    items: Sequence[Explanation],
    out_dir: Path,
    saliency: bool = False,
    batch_size: int = 16,
    device: str = "cpu",
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """One Grad-CAM overlay PNG per image (`<name>.gradcam.png`), and with `saliency` a `<name>.saliency.png`."""
    size = meta.img_size
    model.eval().to(device)
    samples = [Sample(item.path, item.label, "test") for item in items]
    loader = DataLoader(ImageDataset(samples, meta.view_transform(), size), batch_size=batch_size)
    stems = _unique_stems([item.path for item in items])
    written: list[Path] = []
    with grad_cam(model, size) as extractor:
        for start, (images, labels) in zip(range(0, len(items), batch_size), loader, strict=True):
            images, classes = images.to(device), labels.tolist()
            kinds = {"gradcam": cam_maps(model, extractor, images, classes)[1]}
            if saliency:
                kinds["saliency"] = saliency_maps(model, images, classes)
            for offset, item in enumerate(items[start : start + len(classes)]):
                photo = view_photo(open_rgb(item.path, DISPLAY_SIZE), meta)
                for kind, maps in kinds.items():
                    path = out_dir / f"{stems[start + offset]}.{kind}.png"
                    with atomic_output(path) as tmp:
                        overlay(photo, maps[offset], f"{kind}: {item.caption}").save(tmp, format="PNG")
                    written.append(path)
            if progress:
                progress(start + len(classes))
    return written


def _unique_stems(paths: Sequence[Path]) -> list[str]:
    """File stems, with -2, -3, ... added where two inputs share one."""
    seen: dict[str, int] = {}
    stems = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        stems.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return stems
