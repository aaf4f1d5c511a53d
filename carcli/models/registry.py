"""The architecture registry: short names -> backbones (timm or torchvision), and `create_model`.

Every model carcli trains or loads is built by `create_model`, in the style of timm's
`register_model` / `create_model`. A backbone maps images to pooled features of width
`ArchSpec.feature_dim`; a head from `carcli.models.heads` maps features to `{task: logits}`.
Besides the registered names, any timm model is reachable as `timm:NAME` and any torchvision
model as `tv:NAME`. This module imports torch, timm and torchvision only inside functions.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from carcli.errors import CarcliError, UsageError

if TYPE_CHECKING:
    from torch import nn

    from carcli.models.heads import CarcliModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ArchSpec:
    """What carcli knows about a backbone before building it."""

    name: str
    library: str  # "timm" or "torchvision"
    model_name: str  # the name inside that library
    feature_dim: int  # width of the pooled features the head sees
    img_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


_ARCHS: dict[str, ArchSpec] = {}


def register_arch(spec: ArchSpec) -> ArchSpec:
    """Add an architecture under its short name."""
    if spec.name in _ARCHS:
        raise ValueError(f"architecture {spec.name!r} is registered twice")
    _ARCHS[spec.name] = spec
    return spec


for _spec in (
    ArchSpec("ghostnet", "timm", "ghostnet_100", 1280),
    ArchSpec("mobilenetv2", "timm", "mobilenetv2_100", 1280),
    ArchSpec("resnet34", "timm", "resnet34", 512),
    ArchSpec("resnext50", "timm", "resnext50_32x4d", 2048),
    ArchSpec("efficientnet_lite0", "timm", "efficientnet_lite0", 1280),
    ArchSpec("efficientnet_b0", "timm", "efficientnet_b0", 1280),
    ArchSpec("mnasnet", "torchvision", "mnasnet1_0", 1280),
    ArchSpec("wide_resnet50", "timm", "wide_resnet50_2", 2048),
    ArchSpec("densenet121", "timm", "densenet121", 1024),
    ArchSpec("inception_v3", "timm", "inception_v3", 2048, 299, INCEPTION_MEAN, INCEPTION_STD),
):
    register_arch(_spec)


def list_archs() -> list[ArchSpec]:
    """The registered architectures, in registration order."""
    return list(_ARCHS.values())


def check_arch_name(name: str) -> None:
    """Refuse a name that is neither registered nor `timm:NAME` / `tv:NAME` (without importing torch)."""
    prefix, _, model_name = name.partition(":")
    if name not in _ARCHS and not (prefix in ("timm", "tv") and model_name):
        known = ", ".join(_ARCHS)
        raise UsageError(f"unknown architecture {name!r}; choose one of {known}, or timm:NAME / tv:NAME")


def get_arch(name: str) -> ArchSpec:
    """Look up a registered name, or describe a `timm:NAME` / `tv:NAME` model (this builds it once)."""
    check_arch_name(name)
    if name in _ARCHS:
        return _ARCHS[name]
    prefix, _, model_name = name.partition(":")
    library = "timm" if prefix == "timm" else "torchvision"
    return _describe(ArchSpec(name, library, model_name, feature_dim=0))


def _describe(spec: ArchSpec) -> ArchSpec:
    """Fill feature width, image size and mean/std of an unregistered model by building it on 'meta'."""
    import torch

    with torch.device("meta"):
        backbone, feature_dim = _build(spec, pretrained=False)
    cfg = getattr(backbone, "pretrained_cfg", None) or _torchvision_cfg(spec.model_name)
    size = cfg.get("input_size", (3, spec.img_size, spec.img_size))[-1]
    mean = tuple(cfg.get("mean", IMAGENET_MEAN))
    std = tuple(cfg.get("std", IMAGENET_STD))
    return replace(spec, feature_dim=feature_dim, img_size=int(size), mean=mean, std=std)  # type: ignore[arg-type]


def _torchvision_cfg(model_name: str) -> dict:
    """Input size and mean/std from a torchvision model's default weights (its eval transform)."""
    import torchvision

    try:
        preset = torchvision.models.get_model_weights(model_name).DEFAULT.transforms()
    except (ValueError, AttributeError):  # a model without published weights
        return {}
    return {"input_size": (3, *preset.crop_size), "mean": preset.mean, "std": preset.std}


def create_backbone(spec: ArchSpec, pretrained: bool = False) -> nn.Module:
    """Build the backbone: images (B, 3, H, W) -> pooled features (B, spec.feature_dim)."""
    backbone, feature_dim = _build(spec, pretrained)
    if spec.feature_dim and feature_dim != spec.feature_dim:
        raise CarcliError(f"{spec.name}: built {feature_dim} features, registry says {spec.feature_dim}")
    return backbone


def _build(spec: ArchSpec, pretrained: bool) -> tuple[nn.Module, int]:
    if spec.library == "timm":
        return _build_timm(spec.model_name, pretrained)
    return _build_torchvision(spec.model_name, pretrained)


def _build_timm(model_name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import timm

    if not timm.is_model(model_name):
        raise UsageError(f"timm has no model {model_name!r} (see `timm.list_models()`)")
    try:
        model = timm.create_model(model_name, pretrained=pretrained, num_classes=0)
    except Exception as exc:
        if not pretrained:
            raise
        raise CarcliError(
            f"could not get pretrained weights for {model_name} ({type(exc).__name__}); "
            "on an offline machine pass a local weights file with --weights FILE"
        ) from exc
    width = getattr(model, "head_hidden_size", None) or model.num_features
    return model, int(width)


def _build_torchvision(model_name: str, pretrained: bool) -> tuple[nn.Module, int]:
    import torchvision
    from torch import nn

    if model_name not in torchvision.models.list_models():
        raise UsageError(f"torchvision has no model {model_name!r} (see `torchvision.models.list_models()`)")
    kwargs = {"aux_logits": False, "init_weights": False} if model_name.startswith("inception") else {}
    try:
        model = torchvision.models.get_model(model_name, weights="DEFAULT" if pretrained else None, **kwargs)
    except Exception as exc:
        if not pretrained:
            raise
        raise CarcliError(
            f"could not get pretrained weights for torchvision {model_name} ({type(exc).__name__}); "
            "on an offline machine pass a local weights file with --weights FILE"
        ) from exc
    parent, attr, last = _last_linear(model)
    setattr(parent, attr, nn.Identity())
    return model, last.in_features


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The parent, attribute name and module of a torchvision model's final classifier layer."""
    from torch import nn

    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = name, module
    if found is None:
        raise UsageError("this torchvision model has no linear classifier to replace")
    path, module = found
    parent_path, _, attr = path.rpartition(".")
    return model.get_submodule(parent_path), attr, module


def create_model(
    arch: str,
    head: str,
    tasks: dict[str, int],
    pretrained: bool = False,
    drop_rate: float = 0.0,
) -> CarcliModel:
    """Build backbone + head for the given tasks ({task: number of classes})."""
    from carcli.models.heads import CarcliModel, create_head

    spec = get_arch(arch)
    head_module = create_head(head, spec.feature_dim, tasks, drop_rate=drop_rate)
    return CarcliModel(create_backbone(spec, pretrained), head_module)


def count_parameters(arch: str, tasks: dict[str, int], head: str = "linear") -> int:
    """Parameters of arch + head, counted on the 'meta' device (no memory, no weights)."""
    import torch

    with torch.device("meta"):
        model = create_model(arch, head, tasks)
    return sum(p.numel() for p in model.parameters())
