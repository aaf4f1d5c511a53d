"""Where carcli keeps things: the data root, the prepared image stores and the runs folder."""

from __future__ import annotations

import os
import sys
from pathlib import Path

RUNS_DIR = Path("runs")


def data_home(root: str | Path | None = None) -> Path:
    """The data root: `root` if given, else $CARCLI_HOME/data, else the platform's cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("CARCLI_HOME"):
        return Path(os.environ["CARCLI_HOME"]).expanduser() / "data"
    return _cache_dir() / "carcli" / "data"


def cache_home() -> Path:
    """Prepared image stores (`carcli train --cache`): $CARCLI_HOME/cache, else the platform's cache folder."""
    if os.environ.get("CARCLI_HOME"):
        return Path(os.environ["CARCLI_HOME"]).expanduser() / "cache"
    return _cache_dir() / "carcli" / "cache"


def _cache_dir() -> Path:
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
