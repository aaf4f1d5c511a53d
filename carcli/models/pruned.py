"""Pruned models: pruning a model in place (magnitude: global L1, unstructured; channel: Torch-Pruning, channels
really removed) and the record of a channel-pruned model's new shapes.

A channel-pruned model has other shapes than its architecture's: `structure_of` records the module
attributes that changed (in the checkpoint's `pruned` metadata) and `rebuild_structure` reshapes a
freshly built model to them, so `carcli.models.builder.build_model` loads it like any other.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from carcli.checkpoint_meta import CheckpointMeta
from carcli.models.registry import create_model

# ---------------------------------------------------------------- pruning a model in place


def prunable_weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """The weights of every convolution and linear layer."""
    return [(m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]


def magnitude_prune(model: nn.Module, rate: float, permanent: bool = True) -> None:
    """Zero the `rate` share of conv and linear weights with the smallest |w|, globally.

    `permanent=False` keeps torch's masks (`weight_orig` * `weight_mask`) so that fine-tuning cannot
    regrow the zeros; `fold_masks` turns such a state dict into plain weights afterwards.
    """
    from torch.nn.utils import prune

    weights = prunable_weights(model)
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=rate)
    if permanent:
        for module, name in weights:
            prune.remove(module, name)


def fold_masks(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A state dict with pruning masks (`x_orig`, `x_mask`) as plain tensors `x` = `x_orig` * `x_mask`."""
    masked = {k.removesuffix("_orig") for k in state if k.endswith("_orig") and f"{k[:-5]}_mask" in state}
    plain = {
        k: v
        for k, v in state.items()
        if k.removesuffix("_orig") not in masked and k.removesuffix("_mask") not in masked
    }
    return {**plain, **{base: state[f"{base}_orig"] * state[f"{base}_mask"] for base in masked}}


def weight_sparsity(model: nn.Module) -> float:
    """Share of exact zeros among the conv and linear weights."""
    tensors = [getattr(m, name) for m, name in prunable_weights(model)]
    total = sum(t.numel() for t in tensors)
    return sum(int((t == 0).sum()) for t in tensors) / max(1, total)


def channel_prune(model: nn.Module, rate: float, img_size: int) -> None:
    """Remove the `rate` share of channels of every prunable layer (L1 importance), keeping the class outputs."""
    import torch_pruning as tp

    model.eval()
    example = torch.zeros(1, 3, img_size, img_size)
    head = getattr(model, "head", model)
    outputs = [m for m in head.modules() if isinstance(m, nn.Linear)]
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=rate, ignored_layers=outputs)
    pruner.step()


def apply_pruning(model: nn.Module, method: str, rate: float, img_size: int, permanent: bool = True) -> None:
    """Prune `model` in place with `method` at `rate` (`permanent` as for `magnitude_prune`)."""
    if method == "magnitude":
        magnitude_prune(model, rate, permanent)
    else:
        channel_prune(model, rate, img_size)


def pruned_metadata(model: nn.Module, meta: CheckpointMeta, method: str, rate: float) -> CheckpointMeta:
    """`meta` with the `pruned` entry that load_model needs to rebuild the pruned `model`."""
    pruned: dict[str, Any] = {"method": method, "rate": rate, "sparsity": weight_sparsity(model)}
    structure = structure_of(model, meta)
    if structure:
        pruned["structure"] = structure
    return meta.replace(pruned=pruned)


# ---------------------------------------------------------------- storing the new shapes


def _shape_like(value: Any) -> bool:
    return isinstance(value, int) or (isinstance(value, tuple | list) and all(isinstance(v, int) for v in value))


def _attributes(module: nn.Module) -> dict[str, Any]:
    """A module's plain integer attributes (channel counts, groups, ...), the ones pruning rewrites."""
    return {k: v for k, v in vars(module).items() if not k.startswith("_") and k != "training" and _shape_like(v)}


def structure_of(model: nn.Module, meta: CheckpointMeta) -> dict[str, dict[str, Any]]:
    """{module name: {attribute: value}} where `model` differs from a fresh model of its architecture."""
    with torch.device("meta"):
        fresh = dict(create_model(meta.arch, meta.head, meta.class_counts).named_modules())
    structure: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        before = _attributes(fresh[name])
        changed = {
            k: list(v) if isinstance(v, tuple) else v for k, v in _attributes(module).items() if before.get(k) != v
        }
        if changed:
            structure[name] = changed
    return structure


def rebuild_structure(model: nn.Module, structure: dict[str, dict[str, Any]], state: dict[str, Tensor]) -> None:
    """Give a fresh model the recorded attributes and the tensor shapes of `state`, ready for load_state_dict."""
    for name, attributes in structure.items():
        module = model.get_submodule(name)
        for attribute, value in attributes.items():
            setattr(module, attribute, tuple(value) if isinstance(getattr(module, attribute), tuple) else value)
    current = model.state_dict()
    for key, tensor in state.items():
        if key in current and current[key].shape != tensor.shape:
            path, _, attribute = key.rpartition(".")
            module = model.get_submodule(path)
            empty = torch.empty(tensor.shape, dtype=tensor.dtype)
            is_parameter = isinstance(getattr(module, attribute), nn.Parameter)
            setattr(module, attribute, nn.Parameter(empty) if is_parameter else empty)
