"""Stanford Cars: imported from local files (--from), or downloaded from each mirror in turn and imported."""

from __future__ import annotations

import re
import shutil
from collections.abc import Sequence
from pathlib import Path

from carcli.data.fetch.assemble import assemble_stanford_cars
from carcli.data.fetch.build import FetchResult, build, check_replaceable, read_marker, result_from_marker
from carcli.data.fetch.download import download
from carcli.data.fetch.mirrors import Mirror, mirror_table
from carcli.data.fetch.request import STANFORD_CARS, FetchRequest
from carcli.data.layouts import TORCHVISION_DIR
from carcli.errors import CarcliError, UsageError
from carcli.progress import Reporter

DOWNLOADS = ".downloads"


def _import_stanford_cars(
    request: FetchRequest, sources: Sequence[Path], source: str, reporter: Reporter
) -> FetchResult:
    def fill(staging: Path, set_dir: Path) -> str:
        kind = assemble_stanford_cars(sources, staging, set_dir / TORCHVISION_DIR, request.max_extract_bytes, reporter)
        return f"{source} ({kind})"

    return build(request.root / STANFORD_CARS, STANFORD_CARS, fill, reporter)


def _download_mirror(mirror: Mirror, folder: Path, request: FetchRequest, reporter: Reporter) -> list[str]:
    """Download every file of `mirror` into `folder`; the names of those that had no checksum to check."""
    unverified = []
    for file in mirror.files:
        if not download(file, folder / file.name, reporter, request.network):
            unverified.append(file.name)
            reporter.warn(f"{file.name}: no checksum is published for it; not verified")
    return unverified


def _download_stanford_cars(request: FetchRequest, reporter: Reporter) -> FetchResult:
    """Try each mirror in turn: download all its files, then import them; the first that works wins.

    Partial downloads stay in <root>/.downloads/ for the next run to resume; complete ones are
    deleted once imported, or when their import failed (so a bad file is fetched afresh next time).
    """
    failures = []
    for mirror in mirror_table(request.urls):
        folder = request.root / DOWNLOADS / re.sub(r"[^A-Za-z0-9._-]+", "-", mirror.name).strip("-")
        reporter.info(f"trying mirror: {mirror.name}")
        try:
            unverified = _download_mirror(mirror, folder, request, reporter)
            try:
                paths = [folder / file.name for file in mirror.files]
                result = _import_stanford_cars(request, paths, f"mirror {mirror.name}", reporter)
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        except UsageError:
            raise
        except CarcliError as err:
            failures.append(f"{mirror.name}: {err}")
            reporter.warn(f"mirror {mirror.name} failed: {err}")
            continue
        result.unverified = unverified
        return result
    raise CarcliError(
        "could not get Stanford Cars from any mirror ("
        + "; ".join(failures or ["the mirror table is empty"])
        + "); if you have the files, import them with --from PATH"
    )


def fetch_stanford_cars(request: FetchRequest, reporter: Reporter) -> FetchResult:
    target = request.root / STANFORD_CARS
    check_replaceable(target)
    if request.sources:
        names = ", ".join(Path(s).name for s in request.sources)
        return _import_stanford_cars(request, request.sources, f"--from {names}", reporter)
    marker = read_marker(target)
    if not request.urls and marker is not None and marker.get("kind") == STANFORD_CARS:
        reporter.info(f"Stanford Cars is already in {target}; nothing to download")
        return result_from_marker(target, marker, reused=True)
    return _download_stanford_cars(request, reporter)
