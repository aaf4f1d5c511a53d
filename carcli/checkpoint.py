"""carcli checkpoints: safetensors files (`.st`) that describe themselves.

The tensors are the model's state dict. The safetensors `__metadata__` holds one key,
`carcli`, whose value is a JSON object with everything `predict` needs without the data set:

    {"format": 1, "version", "arch", "head", "img_size", "mean", "std",
     "tasks": {task: [class names in order]}, "taxonomy": {"tasks", "fine_to"}, "train": {resolved config},
     "metrics": {"epoch", "top1", "top5", "best_epoch", "best_top1"}, ...}

(pruned and ensemble checkpoints add "pruned" or "members"/"weights"; docs/checkpoints.md has it all).
This module reads, writes and checks the files; `carcli.models.builder` turns one into a model.

Files are written atomically (temporary file in the same folder, then rename), so a crash
never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from carcli import __version__
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.errors import CarcliError, UsageError
from carcli.files import atomic_output
from carcli.limits import check_img_size
from carcli.usage import require_checkpoint

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = 1
METADATA_KEY = "carcli"
REQUIRED_FIELDS = ("format", "arch", "head", "img_size", "mean", "std", "tasks", "taxonomy")


def save_checkpoint(path: Path, state: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write tensors + metadata to `path` atomically."""
    header = {"format": FORMAT, "version": __version__, **meta}
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


def read_metadata(path: Path) -> dict[str, Any]:
    """The carcli metadata of a checkpoint; a clear CarcliError for anything that is not one."""
    from safetensors import safe_open

    require_checkpoint(path)
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


def rewrite_metadata(path: Path, meta: dict[str, Any], out: Path | None = None) -> Path:
    """Write `path`'s tensors with `meta` as their carcli metadata to `out` (default: `path` itself), atomically."""
    state, _ = load_checkpoint(path)
    target = out or path
    write_safetensors(target, state, {METADATA_KEY: json.dumps(meta)})
    return target


def at_size(meta: dict[str, Any], img_size: int | None) -> dict[str, Any]:
    """`meta` with its evaluation size replaced by `img_size` (`--img-size` of eval and predict; None: as stored)."""
    if img_size is None:
        return meta
    check_img_size(img_size, bool((meta.get("train") or {}).get("allow_large_images")))
    return {**meta, "img_size": img_size}


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
    if not isinstance(meta["format"], int) or not isinstance(meta["tasks"], dict) or FINE not in meta["tasks"]:
        raise CarcliError(f"{path}: carcli metadata is malformed (format or tasks)")
    try:
        taxonomy = Taxonomy.from_dict(meta["taxonomy"])
    except CarcliError as exc:
        raise CarcliError(f"{path}: {exc}") from None
    if taxonomy.tasks[FINE] != meta["tasks"][FINE]:
        raise CarcliError(f"{path}: its taxonomy names other classes than its {FINE!r} task")
    if meta["format"] > FORMAT:
        raise CarcliError(
            f"{path} has checkpoint format {meta['format']}, newer than this carcli reads ({FORMAT}); upgrade carcli"
        )
    problem = metadata_problem(meta)
    if problem:
        raise CarcliError(f"{path}: {problem}; the file is damaged or was not written by carcli")
    return meta


def metadata_problem(meta: dict[str, Any], prefix: str = "") -> str | None:
    """What is wrong with the types and shapes of checkpoint metadata (None: nothing), naming the field.

    Checked once, when a checkpoint is read, so every command can trust `img_size`, `mean`, `std`,
    `tasks` and the ensemble's `members`/`weights` without converting them again.
    """
    for name in ("arch", "head"):
        if not isinstance(meta.get(name), str) or not meta[name]:
            return f"field {prefix}{name!r} must be a name, got {_shown(meta.get(name))}"
    train = meta.get("train", {})
    if not isinstance(train, dict):
        return f"field {prefix}'train' must be an object, got {_shown(train)}"
    for name in ("val_fraction", "seed"):
        if name in train and not _finite(train[name]):
            return f"field {prefix}'train.{name}' must be a number, got {_shown(train[name])}"
    try:
        check_img_size(meta.get("img_size"), bool(train.get("allow_large_images")), f"field {prefix}'img_size'")
    except UsageError as exc:
        return str(exc).split(": one such")[0]
    for name in ("mean", "std"):
        value = meta.get(name)
        if not (isinstance(value, list) and len(value) == 3 and all(_finite(v) for v in value)):
            return f"field {prefix}{name!r} must be 3 numbers (one per colour channel), got {_shown(value)}"
    if any(v <= 0 for v in meta["std"]):
        return f"field {prefix}'std' must be positive, got {_shown(meta['std'])}"
    for task, names in meta["tasks"].items():
        if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
            return f"field {prefix}'tasks.{task}' must be a list of class names, got {_shown(names)}"
    return _ensemble_problem(meta, prefix) if "members" in meta else None


def _ensemble_problem(meta: dict[str, Any], prefix: str) -> str | None:
    members, weights = meta["members"], meta.get("weights")
    if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
        return f"field {prefix}'members' must be a list of member metadata, got {_shown(members)}"
    if not (isinstance(weights, list) and len(weights) == len(members) and all(_finite(w) for w in weights)):
        return f"field {prefix}'weights' must be {len(members)} numbers, one per member, got {_shown(weights)}"
    for i, member in enumerate(members):
        if not isinstance(member.get("tasks"), dict):
            return f"field {prefix}'members[{i}].tasks' must be an object, got {_shown(member.get('tasks'))}"
        problem = metadata_problem(member, f"{prefix}members[{i}].")
        if problem:
            return problem
    return None


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def trained_on(meta: dict[str, Any], checkpoint: Path) -> Path:
    """The data set the checkpoint was trained on, as its metadata records it (the default --data)."""
    root = (meta.get("data") or {}).get("root") or (meta.get("train") or {}).get("data")
    if not root:
        raise UsageError(f"{checkpoint} does not record its training data; pass --data DIR")
    return Path(root)
