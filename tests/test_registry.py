"""The architecture registry: every registered backbone builds, runs and says what it is."""

from __future__ import annotations

import pytest
import timm
import torch

from carcli.errors import UsageError
from carcli.models.registry import count_parameters, create_model, get_arch, list_archs

TASKS = {"model": 7, "make": 3, "type": 2}


@pytest.mark.parametrize("spec", list_archs(), ids=lambda s: s.name)
def test_every_registered_arch_builds_and_runs(spec):
    model = create_model(spec.name, "mtl", TASKS).eval()
    size = 80 if spec.name == "inception_v3" else 64  # inception needs at least 75 px
    with torch.no_grad():
        features = model.backbone(torch.randn(2, 3, size, size))
        out = model(torch.randn(2, 3, size, size))
    assert features.shape == (2, spec.feature_dim)
    assert {task: tuple(z.shape) for task, z in out.items()} == {t: (2, n) for t, n in TASKS.items()}


@pytest.mark.parametrize("spec", [s for s in list_archs() if s.library == "timm"], ids=lambda s: s.name)
def test_registry_defaults_agree_with_timm(spec):
    cfg = timm.get_pretrained_cfg(spec.model_name).to_dict()
    assert cfg["input_size"][-1] == spec.img_size
    assert tuple(cfg["mean"]) == spec.mean
    assert tuple(cfg["std"]) == spec.std


def test_prefixed_names_reach_timm_and_torchvision():
    timm_spec = get_arch("timm:resnet18")
    assert (timm_spec.library, timm_spec.feature_dim, timm_spec.img_size) == ("timm", 512, 224)
    tv_spec = get_arch("tv:resnet18")
    assert (tv_spec.library, tv_spec.feature_dim) == ("torchvision", 512)
    model = create_model("tv:resnet18", "linear", {"model": 5}).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64))["model"].shape == (1, 5)


@pytest.mark.parametrize("name", ["nonsense", "timm:not_a_model", "tv:not_a_model", "timm:"])
def test_unknown_arch_is_a_usage_error(name):
    with pytest.raises(UsageError):
        create_model(name, "linear", {"model": 3})


def test_parameter_count_matches_a_real_build():
    tasks = {"model": 196}
    real = sum(p.numel() for p in create_model("resnet34", "linear", tasks).parameters())
    assert count_parameters("resnet34", tasks) == real
    # 512 features -> 196 classes: weights + biases on top of the bare backbone
    bare = sum(p.numel() for p in timm.create_model("resnet34", num_classes=0).parameters())
    assert real == bare + 512 * 196 + 196
