"""carcli checkpoints: safetensors files (`.st`) that describe themselves.

The tensors are the model's state dict. The safetensors `__metadata__` holds one key,
`carcli`, whose value is a JSON object with everything `predict` needs without the data set:

    {"format": 1, "version", "arch", "head", "img_size", "mean", "std",
     "tasks": {task: [class names in order]}, "taxonomy": {...}, "train": {resolved config},
     "metrics": {"best_epoch", "top1": {task: value}}, "created"}

Files are written atomically (temporary file in the same folder, then rename), so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carcli import __version__
from carcli.errors import CarcliError

if TYPE_CHECKING:
    from torch import Tensor

    from carcli.models.heads import CarcliModel

FORMAT = 1
METADATA_KEY = "carcli"
REQUIRED_FIELDS = ("format", "arch", "head", "img_size", "mean", "std", "tasks")


def save_checkpoint(path: Path, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + metadata to `path` atomically."""
    from safetensors.torch import save_file

    header = {"format": FORMAT, "version": __version__, **meta}
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={METADATA_KEY: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_metadata(path: Path) -> dict[str, Any]:
    """The carcli metadata of a checkpoint; a clear CarcliError for anything that is not one."""
    from safetensors import safe_open

    _check_file(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:
        raise CarcliError(f"{path} is not a readable safetensors file (corrupt or truncated?)") from exc
    return _parse_metadata(path, raw)


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Tensors and metadata of a checkpoint."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CarcliError(f"{path} is truncated or corrupt: its tensors cannot be read") from exc
    return state, meta


def load_model(path: Path, device: str = "cpu") -> tuple[CarcliModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode)."""
    from carcli.models.registry import create_model

    state, meta = load_checkpoint(path)
    tasks = {task: len(names) for task, names in meta["tasks"].items()}
    model = create_model(meta["arch"], meta["head"], tasks)
    mismatch = f"{path} does not match the model it describes ({meta['arch']}, head {meta['head']})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes disagree with the task sizes in the metadata
        raise CarcliError(f"{mismatch}: tensor shapes differ") from exc
    if missing or unexpected:
        raise CarcliError(f"{mismatch}: {len(missing)} tensors missing, {len(unexpected)} unexpected")
    return model.to(device).eval(), meta


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CarcliError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CarcliError(f"checkpoint is not a file: {path}")


def _parse_metadata(path: Path, raw: str | None) -> dict[str, Any]:
    if raw is None:
        raise CarcliError(f"{path} is a safetensors file but not a carcli checkpoint (no carcli metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CarcliError(f"{path}: carcli metadata is not valid JSON") from exc
    missing = [f for f in REQUIRED_FIELDS if f not in meta]
    if missing:
        raise CarcliError(f"{path}: carcli metadata lacks {', '.join(missing)}")
    if meta["format"] > FORMAT:
        raise CarcliError(
            f"{path} has checkpoint format {meta['format']}, newer than this carcli reads ({FORMAT}); upgrade carcli"
        )
    return meta
