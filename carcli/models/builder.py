"""Models from checkpoints: the module a checkpoint's metadata describes (plain, channel-pruned or ensemble),
built with `carcli.models.registry` and loaded with the checkpoint's tensors.
"""

from __future__ import annotations

from pathlib import Path

from torch import Tensor, nn

from carcli.checkpoint import load_checkpoint
from carcli.checkpoint_meta import CheckpointMeta
from carcli.errors import CarcliError
from carcli.models.ensemble import EnsembleModel
from carcli.models.pruned import rebuild_structure
from carcli.models.registry import create_model


def load_model(path: Path, device: str = "cpu") -> tuple[nn.Module, CheckpointMeta]:
    """Rebuild the model a checkpoint describes and load its weights (eval mode).

    Plain, pruned and ensemble checkpoints all come back as a module that maps a batch of images,
    preprocessed as the metadata's img_size/mean/std say, to {task: logits}.
    """
    state, meta = load_checkpoint(path)
    return build_model(meta, state, str(path)).to(device).eval(), meta


def build_model(meta: CheckpointMeta, state: dict[str, Tensor], source: str) -> nn.Module:
    """The model `meta` describes with the tensors of `state` loaded; `source` names it in errors.

    A channel-pruned model (metadata `pruned.structure`) is reshaped before loading; an ensemble
    (metadata `members`, `weights`) is built from its members, whose tensors carry `member{i}.` prefixes.
    """
    if meta.members is not None:
        return _build_ensemble(meta.members, meta.weights or [], state, source)
    model = create_model(meta.arch, meta.head, meta.class_counts)
    if meta.pruned is not None:
        rebuild_structure(model, meta.pruned.get("structure", {}), state)
    mismatch = f"{source} does not match the model it describes ({meta.arch}, head {meta.head})"
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # tensor shapes disagree with the task sizes in the metadata
        raise CarcliError(f"{mismatch}: tensor shapes differ") from exc
    if missing or unexpected:
        raise CarcliError(f"{mismatch}: {len(missing)} tensors missing, {len(unexpected)} unexpected")
    return model


def _build_ensemble(
    members_meta: list[CheckpointMeta], weights: list[float], state: dict[str, Tensor], source: str
) -> nn.Module:
    if not members_meta or len(weights) != len(members_meta):
        raise CarcliError(f"{source}: ensemble metadata needs as many weights as members")
    prefixes = [f"member{i}." for i in range(len(members_meta))]
    stray = [key for key in state if not key.startswith(tuple(prefixes))]
    if stray:
        raise CarcliError(f"{source}: {len(stray)} tensors belong to no ensemble member (first: {stray[0]})")
    members = [
        build_model(member, {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}, source)
        for prefix, member in zip(prefixes, members_meta, strict=True)
    ]
    return EnsembleModel(members, members_meta, weights)
