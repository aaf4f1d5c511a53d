"""What `fetch-data` is asked for (`FetchRequest`) and the checks that refuse a request that does not fit."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from carcli.data import demo
from carcli.data.fetch.archives import MAX_EXTRACT_BYTES
from carcli.data.fetch.download import Network
from carcli.errors import UsageError

STANFORD_CARS = "stanford-cars"
FOLDER = "folder"
DATASETS = (STANFORD_CARS, FOLDER, demo.DEMO_NAME)
MIN_PREPARE_SIZE = 16
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class FetchRequest:
    name: str | None  # stanford-cars, folder or demo
    root: Path  # the data root
    path: Path | None = None  # folder: the data set to register
    dataset_name: str | None = None  # folder: --name
    sources: Sequence[Path] = ()  # stanford-cars: --from
    urls: Sequence[str] = ()  # stanford-cars: --url
    prepare_size: int | None = None
    network: Network = field(default_factory=Network)
    max_extract_bytes: int = MAX_EXTRACT_BYTES


def check_request(request: FetchRequest) -> None:
    if request.name is None:
        raise UsageError("name a data set to fetch: stanford-cars, folder or demo (or --list to see what is there)")
    if request.name not in DATASETS:
        raise UsageError(f"unknown data set {request.name!r}; choose stanford-cars, folder or demo")
    if (request.sources or request.urls) and request.name != STANFORD_CARS:
        raise UsageError("--from and --url are for `fetch-data stanford-cars`")
    if request.sources and request.urls:
        raise UsageError("--from imports local files and --url downloads: give one of them")
    if (request.path is not None or request.dataset_name is not None) and request.name != FOLDER:
        raise UsageError("a PATH and --name are for `fetch-data folder PATH --name NAME`")
    if request.name == FOLDER:
        if request.path is None or request.dataset_name is None:
            raise UsageError("`fetch-data folder` needs a PATH and --name NAME")
        if not NAME_PATTERN.fullmatch(request.dataset_name) or request.dataset_name in DATASETS:
            raise UsageError(
                f"--name {request.dataset_name!r}: use letters, digits, '.', '_' and '-' "
                "(and not stanford-cars, folder or demo)"
            )
    if request.prepare_size is not None and request.prepare_size < MIN_PREPARE_SIZE:
        raise UsageError(f"--prepare-size must be at least {MIN_PREPARE_SIZE} px, got {request.prepare_size}")
