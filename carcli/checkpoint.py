"""carcli checkpoints: safetensors files (`.st`) that describe themselves.

The tensors are the model's state dict. The safetensors `__metadata__` holds one key,
`carcli`, whose value is a JSON object with everything `predict` needs without the data set:

    {"format": 1, "version", "arch", "head", "img_size", "mean", "std",
     "tasks": {task: [class names in order]}, "taxonomy": {"tasks", "fine_to"}, "train": {resolved config},
     "metrics": {"epoch", "top1", "top5", "best_epoch", "best_top1"}, ...}

(pruned and ensemble checkpoints add "pruned" or "members"/"weights"; docs/checkpoints.md has it all).
This module reads and writes the files; the metadata comes and goes as a checked `CheckpointMeta`
(`carcli.checkpoint_meta`), and `carcli.models.builder` turns a checkpoint into a model.

Files are written atomically (temporary file in the same folder, then rename), so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

from carcli import __version__
from carcli.checkpoint_meta import FORMAT, CheckpointMeta, parse_metadata
from carcli.errors import CarcliError, UsageError
from carcli.files import atomic_output
from carcli.usage import require_checkpoint

if TYPE_CHECKING:
    from torch import Tensor

METADATA_KEY = "carcli"


def save_checkpoint(path: Path, state: dict[str, Tensor], meta: CheckpointMeta) -> None:
    """Write tensors + metadata to `path` atomically (`format` and `version` first, this carcli's unless set)."""
    header = {"format": FORMAT, "version": __version__, **meta.to_dict()}
    write_safetensors(path, state, {METADATA_KEY: json.dumps(header)})


def write_safetensors(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Any safetensors file, written atomically: a temporary file in the same folder, then a rename."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    with atomic_output(path) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except OSError:
            raise
        except Exception as exc:  # safetensors reports I/O failures as SafetensorError("... Os { code: 28 ...")
            code = re.search(r"code: (\d+)", str(exc))
            number = int(code[1]) if code else errno.EIO
            raise OSError(number, os.strerror(number)) from exc


def read_metadata(path: Path) -> CheckpointMeta:
    """The carcli metadata of a checkpoint; a clear CarcliError for anything that is not one."""
    from safetensors import safe_open

    require_checkpoint(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(METADATA_KEY)
    except Exception as exc:
        raise CarcliError(f"{path} is not a readable safetensors file (corrupt or truncated?)") from exc
    return parse_metadata(str(path), raw)


def load_checkpoint(path: Path) -> tuple[dict[str, Tensor], CheckpointMeta]:
    """Tensors and metadata of a checkpoint."""
    from safetensors.torch import load_file

    meta = read_metadata(path)
    try:
        state = load_file(str(path))
    except Exception as exc:
        raise CarcliError(f"{path} is truncated or corrupt: its tensors cannot be read") from exc
    return state, meta


def rewrite_metadata(path: Path, meta: CheckpointMeta, out: Path | None = None) -> Path:
    """Write `path`'s tensors with `meta` as their carcli metadata to `out` (default: `path` itself), atomically."""
    state, _ = load_checkpoint(path)
    target = out or path
    write_safetensors(target, state, {METADATA_KEY: json.dumps(meta.to_dict())})
    return target


def trained_on(meta: CheckpointMeta, checkpoint: Path) -> Path:
    """The data set the checkpoint was trained on, as its metadata records it (the default --data)."""
    root = (meta.data or {}).get("root") or meta.train_option("data")
    if not root:
        raise UsageError(f"{checkpoint} does not record its training data; pass --data DIR")
    return Path(root)
