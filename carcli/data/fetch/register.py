"""Data sets made from local things: a class-folder or CSV set registered under a name, the generated demo set."""

from __future__ import annotations

import shutil
from pathlib import Path

from carcli.data import demo
from carcli.data.fetch.archives import extract, is_archive
from carcli.data.fetch.build import FetchResult, build, split_counts
from carcli.data.fetch.request import FOLDER, FetchRequest
from carcli.data.fetch.sources import visible
from carcli.data.layouts import DataSet, load_dataset
from carcli.errors import CarcliError
from carcli.progress import Reporter


def _safe_folder_name(name: str) -> bool:
    return bool(name.strip()) and visible(name) and not set(name) & set('/\\:*?"<>|\0') and name not in (".", "..")


def _unique(folder: Path, name: str) -> Path:
    path, stem, suffix, n = folder / name, Path(name).stem, Path(name).suffix, 1
    while path.exists():
        path, n = folder / f"{stem}-{n}{suffix}", n + 1
    return path


def _copy_as_folders(dataset: DataSet, set_dir: Path) -> None:
    """Samples -> set_dir/<split>/<class>/<file name>."""
    unsafe = [name for name in dataset.class_names if not _safe_folder_name(name)]
    if unsafe:
        raise CarcliError(f"class name {unsafe[0]!r} cannot be a folder name; rename it in the manifest")
    for sample in dataset.samples:
        folder = set_dir / sample.split / dataset.class_names[sample.label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample.path, _unique(folder, sample.path.name))


def register_folder(request: FetchRequest, reporter: Reporter) -> FetchResult:
    source = Path(request.path).expanduser()  # type: ignore[arg-type]

    def fill(staging: Path, set_dir: Path) -> str:
        root = source
        if is_archive(source):
            reporter.info(f"extracting {source.name}")
            root = staging / "src"
            extract(source, root, request.max_extract_bytes, reporter)
        dataset = load_dataset(root, val_fraction=0.0)
        if dataset.layout == "devkit":
            raise CarcliError(
                f"{source} is a Stanford Cars devkit: use `carcli fetch-data stanford-cars --from {source}`"
            )
        _copy_as_folders(dataset, set_dir)
        return f"{source} ({dataset.layout})"

    return build(request.root / request.dataset_name, FOLDER, fill, reporter)  # type: ignore[operator]


def fetch_demo(request: FetchRequest, reporter: Reporter) -> FetchResult:
    path = request.root / demo.DEMO_NAME
    existed = demo.is_demo_root(path)
    demo.generate_demo(path)
    dataset = load_dataset(path, val_fraction=0.0)
    return FetchResult(
        name=demo.DEMO_NAME,
        path=path,
        kind="demo",
        source="generated offline by carcli.data.demo",
        classes=len(dataset.class_names),
        images=split_counts(dataset),
        reused=existed,
    )
