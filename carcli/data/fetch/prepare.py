"""--prepare-size: a copy of a data set with every image's shorter side at N px (bounding boxes scaled)."""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

from PIL import Image

from carcli.data.devkit import write_devkit
from carcli.data.fetch.build import FetchResult, build, read_marker, result_from_marker
from carcli.data.images import open_rgb
from carcli.data.layouts import TORCHVISION_DIR, Sample, load_dataset
from carcli.progress import Reporter


def _resize(src: Path, dest: Path, size: int) -> tuple[float, float]:
    """Write `src` with its shorter side at `size` px (never enlarged) to `dest`; the x and y scale."""
    with Image.open(src) as img:
        width, height = img.size
    if min(width, height) <= size:
        shutil.copyfile(src, dest)
        return 1.0, 1.0
    img = open_rgb(src, min_size=size)
    scale = size / min(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    img.save(dest, quality=90)
    return img.width / width, img.height / height


def _scaled(sample: Sample, dest: Path, scale: tuple[float, float]) -> Sample:
    box = None
    if sample.bbox is not None:
        sx, sy = scale
        x1, y1, x2, y2 = sample.bbox
        box = (max(1, round(x1 * sx)), max(1, round(y1 * sy)), max(1, round(x2 * sx)), max(1, round(y2 * sy)))
    return replace(sample, path=dest, bbox=box)


def prepare_copy(result: FetchResult, size: int, reporter: Reporter) -> FetchResult:
    """A copy of the data set at `result.path` with the shorter side of every image at `size` px."""
    target = result.path.parent / f"{result.name}-{size}px"
    source_marker = read_marker(result.path) or {}
    extra = {"prepared_from": result.name, "prepared_size": size, "source_created": source_marker.get("created")}
    marker = read_marker(target)
    if marker is not None and all(marker.get(k) == v for k, v in extra.items()) and extra["source_created"]:
        reporter.info(f"{target.name} is up to date")
        return result_from_marker(target, marker, reused=True)

    def fill(staging: Path, set_dir: Path) -> str:
        dataset = load_dataset(result.path, val_fraction=0.0)
        jobs = [(s, set_dir / s.path.relative_to(result.path)) for s in dataset.samples]
        for _, dest in jobs:
            dest.parent.mkdir(parents=True, exist_ok=True)
        scaled = []
        advance = reporter.stage(f"resize to {size} px", len(jobs), "images")
        with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            scales = pool.map(lambda job: _resize(job[0].path, job[1], size), jobs)
            for i, ((sample, dest), scale) in enumerate(zip(jobs, scales, strict=True), 1):
                scaled.append(_scaled(sample, dest, scale))
                advance(i)
        if dataset.layout == "devkit":
            write_devkit(set_dir / TORCHVISION_DIR, dataset.class_names, scaled)
        return f"{result.name} at {size} px"

    return build(target, "prepared", fill, reporter, extra, check=False)
