"""Each training technique has the effect it claims: sampling, freezing, EMA, schedules, losses, augmentation."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from torchvision.transforms import v2

from carcli import train as train_module
from carcli.data.images import open_rgb
from carcli.data.layouts import load_dataset
from carcli.data.sampling import EpochSampler, class_balanced_weights
from carcli.data.transforms import PRESETS, batch_mixer, eval_transform, resolve_augment, train_transform
from carcli.device import cpu_has_bf16
from carcli.errors import CarcliError
from carcli.models.builder import load_model
from carcli.models.registry import create_model
from carcli.progress import Event, SilentReporter
from carcli.train import EpochEnd, TrainConfig, distributed, recipe, runtime, steps, train
from carcli.train.losses import complement_entropy, inverse_frequency_weights, multitask_loss, task_targets
from carcli.train.optim import build_optimizer, build_scheduler
from carcli.train.runtime import auto_precision

TINY = {"arch": "ghostnet", "img_size": 32, "batch_size": 8, "workers": 0, "device": "cpu", "warmup_epochs": 0.0}


def tiny_config(data: Path, out: Path, **options) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, "epochs": 1, **options})


# ---------------------------------------------------------------- sampling


def test_balanced_sampler_draws_every_class_about_equally():
    labels = [0] * 90 + [1] * 10
    sampler = EpochSampler(len(labels), seed=0, weights=class_balanced_weights(labels))
    counts = Counter(labels[i] for epoch in range(20) for i in (sampler.set_epoch(epoch), list(sampler))[1])
    assert abs(counts[0] / (counts[0] + counts[1]) - 0.5) < 0.05
    plain = EpochSampler(len(labels), seed=0)
    assert Counter(labels[i] for i in plain) == Counter(labels)  # a permutation keeps the 90/10 mix


def test_sampler_order_depends_only_on_seed_and_epoch_and_can_skip():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    order = list(a)
    assert order == list(b) and sorted(order) == list(range(50))
    b.set_epoch(3)
    assert list(b) != order
    b.set_epoch(2)
    b.set_start(20)
    assert list(b) == order[20:] and len(b) == 30


def test_distributed_shards_cover_the_epoch_once():
    shards = [EpochSampler(10, seed=0, num_replicas=2, rank=r) for r in (0, 1)]
    seen = [i for s in shards for i in s]
    assert len(shards[0]) == 5 and sorted(seen) == list(range(10))


# ---------------------------------------------------------------- losses


def test_inverse_frequency_weights():
    weights = inverse_frequency_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert weights[2] == 0 and weights[1] == pytest.approx(3 * weights[0])
    assert weights[:2].mean() == pytest.approx(1.0)


def test_complement_entropy_rewards_flat_wrong_classes():
    target = torch.tensor([0])
    flat = torch.tensor([[5.0, 1.0, 1.0, 1.0]])
    peaked = torch.tensor([[5.0, 4.0, -4.0, -4.0]])
    assert complement_entropy(flat, target).item() == pytest.approx(-1.0, abs=1e-5)
    assert complement_entropy(peaked, target).item() > -0.2
    logits = {"model": torch.randn(4, 5, requires_grad=True)}
    targets = {"model": torch.tensor([0, 1, 2, 3])}
    plain, _ = multitask_loss(logits, targets)
    cot, _ = multitask_loss(logits, targets, complement=True)
    assert cot.item() == pytest.approx(plain.item() + complement_entropy(logits["model"], targets["model"]).item())


def test_class_weights_change_the_loss():
    logits = {"model": torch.randn(6, 3)}
    targets = {"model": torch.tensor([0, 0, 0, 0, 1, 2])}
    weights = {"model": inverse_frequency_weights(targets["model"], 3)}
    plain, _ = multitask_loss(logits, targets)
    weighted, _ = multitask_loss(logits, targets, class_weights=weights)
    expected = torch.nn.functional.cross_entropy(logits["model"], targets["model"], weight=weights["model"])
    assert weighted.item() == pytest.approx(expected.item()) and weighted.item() != pytest.approx(plain.item())


# ---------------------------------------------------------------- augmentation


def test_presets_and_overrides_build_the_named_parts():
    strong = resolve_augment("strong", {"random_erasing": None, "hflip": False})
    kinds = {type(t) for t in train_transform(32, (0.5,) * 3, (0.5,) * 3, strong).transforms}
    assert {v2.TrivialAugmentWide, v2.RandomErasing, v2.RandomAffine, v2.RandomGrayscale} <= kinds
    assert v2.RandomHorizontalFlip not in kinds
    none = {type(t) for t in train_transform(32, (0.5,) * 3, (0.5,) * 3, PRESETS["none"]).transforms}
    assert not none & {v2.RandomHorizontalFlip, v2.ColorJitter, v2.TrivialAugmentWide}
    randaug = resolve_augment("light", {"auto_augment": "randaugment"})
    assert v2.RandAugment in {type(t) for t in train_transform(32, (0.5,) * 3, (0.5,) * 3, randaug).transforms}


def test_mixed_labels_carry_over_to_every_task():
    mixer = batch_mixer(resolve_augment("standard", {"mixup": 0.4}), num_classes=4)
    images, labels = torch.rand(6, 3, 16, 16), torch.tensor([0, 1, 2, 3, 0, 1])
    mixed, soft = mixer(images, labels)
    assert mixed.shape == images.shape and not torch.equal(mixed, images)
    assert soft.shape == (6, 4) and torch.allclose(soft.sum(1), torch.ones(6))
    fine_to = {"model": torch.arange(4), "make": torch.tensor([0, 0, 1, 1])}
    targets = task_targets(soft, fine_to, {"model": None, "make": None})
    assert torch.allclose(targets["make"][:, 0], soft[:, 0] + soft[:, 1])
    assert batch_mixer(PRESETS["standard"], 4) is None


def test_crop_to_bbox_keeps_the_box_and_its_margin(tmp_path):
    path = tmp_path / "car.png"
    Image.new("RGB", (200, 100), (0, 0, 0)).save(path)
    assert open_rgb(path, box=(50, 20, 150, 80), margin=0.1).size == (120, 72)
    assert open_rgb(path, box=(0, 0, 200, 100), margin=0.5).size == (200, 100)  # clipped to the image


# ---------------------------------------------------------------- schedules


def _lrs(name: str, epochs: int = 10, steps: int = 10, **kw) -> list[float]:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = build_scheduler(optimizer, name, epochs, steps, **kw)
    values = []
    for _ in range(epochs * steps):
        values.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return values


def test_schedule_values_at_known_steps():
    cosine = _lrs("cosine", warmup_epochs=1)
    assert cosine[0] == pytest.approx(1 / 11) and cosine[9] == pytest.approx(10 / 11)
    assert cosine[10] == pytest.approx(1.0) and cosine[55] == pytest.approx(0.5)
    multistep = _lrs("multistep", warmup_epochs=0, milestones=[3, 6], gamma=0.1)
    assert multistep[29] == pytest.approx(1.0) and multistep[30] == pytest.approx(0.1)
    assert multistep[60] == pytest.approx(0.01)
    exponential = _lrs("exponential", warmup_epochs=0, gamma=0.5)
    assert exponential[20] == pytest.approx(0.25)
    onecycle = _lrs("onecycle", warmup_epochs=3)
    peak = max(range(100), key=onecycle.__getitem__)
    assert onecycle[0] == pytest.approx(1 / 25) and abs(peak - 30) <= 1 and onecycle[-1] < 1e-3


def test_backbone_learns_at_a_scaled_rate():
    model = create_model("ghostnet", "linear", {"model": 3})
    optimizer = build_optimizer(model, "adamw", 1e-3, 0.05, backbone_lr_scale=0.1)
    head_ids = {id(p) for p in model.head.parameters()}
    for group in optimizer.param_groups:
        is_head = all(id(p) in head_ids for p in group["params"])
        assert group["lr"] == pytest.approx(1e-3 if is_head else 1e-4)
        assert (group["weight_decay"] == 0) == all(p.ndim <= 1 for p in group["params"])
        assert group["fused"]  # one kernel per step, on the CPU too


# ---------------------------------------------------------------- training runs


def _tasks() -> dict[str, int]:
    return {"model": 4}


def test_frozen_backbone_stays_fixed_and_the_head_learns(tiny_set, tmp_path):
    model = create_model("ghostnet", "linear", _tasks())
    before = copy.deepcopy(model.state_dict())
    train(tiny_config(tiny_set, tmp_path / "run", freeze_backbone=True), model=model)
    after = model.state_dict()
    backbone = [k for k in before if k.startswith("backbone.")]
    assert all(torch.equal(before[k], after[k]) for k in backbone)  # weights and batch-norm statistics
    assert not torch.equal(before["head.classifiers.fc_model.weight"], after["head.classifiers.fc_model.weight"])


class _Snapshots(SilentReporter):
    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.states = model, []

    def progress(self, event: Event) -> None:
        if isinstance(event, EpochEnd):
            self.states.append(copy.deepcopy(self.model.backbone.state_dict()))


def test_staged_fine_tuning_unfreezes_after_n_epochs(tiny_set, tmp_path):
    model = create_model("ghostnet", "linear", _tasks())
    start = copy.deepcopy(model.backbone.state_dict())
    snapshots = _Snapshots(model)
    train(tiny_config(tiny_set, tmp_path / "run", epochs=2, unfreeze_after=1), snapshots, model=model)
    first, second = snapshots.states
    assert all(torch.equal(start[k], first[k]) for k in start)
    assert any(not torch.equal(first[k], second[k]) for k in first)


def test_ema_weights_are_saved_and_differ_from_the_raw_ones(tiny_set, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(tiny_set, run, epochs=2, ema=True, ema_decay=0.9, lr=1e-2))
    ema = load_file(str(run / "last.st"))
    raw = {k[len("model.") :]: v for k, v in load_file(str(run / "state.st")).items() if k.startswith("model.")}
    key = "head.classifiers.fc_model.weight"
    assert not torch.equal(ema[key], raw[key])
    assert json.loads((run / "config.json").read_text())["ema"] is True
    model, _ = load_model(run / "best.st")  # the saved EMA model loads like any checkpoint
    assert model(torch.rand(1, 3, 32, 32))["model"].shape == (1, 4)


def test_run_writes_csv_curves_and_records_the_recipe(tiny_set, tmp_path):
    run = tmp_path / "run"
    options = {"augment": "strong", "balance": "weights", "loss": "cot", "schedule": "onecycle", "accum_steps": 2}
    result = train(tiny_config(tiny_set, run, epochs=2, head="mtl", clip_grad=1.0, **options))
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 3 and "val_top1_make" in rows[0].split(",")
    with Image.open(run / "curves.png") as img:
        assert img.size[0] > 500 and np.asarray(img.convert("L")).std() > 5
    _, meta = load_model(run / "best.st")
    assert {k: meta.train[k] for k in options} == options
    assert meta.train["mixup"] == PRESETS["strong"].mixup and meta.train["crop_scale"] == 0.25
    assert result.records[-1]["epoch"] == 2 and math.isfinite(result.records[-1]["train_loss"])


def test_early_stopping_stops_after_patience(tiny_set, tmp_path):
    # a learning rate this small changes nothing: top-1 never improves after epoch 1
    result = train(tiny_config(tiny_set, tmp_path / "run", epochs=6, patience=2, lr=1e-12))
    assert result.stopped_early and len(result.records) == 3


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_checkpoint(tiny_set, tmp_path, monkeypatch):
    run = tmp_path / "run"
    train(tiny_config(tiny_set, run))

    def broken(*args, **kwargs):
        total, per_task = multitask_loss(*args, **kwargs)
        return total * float("nan"), per_task

    monkeypatch.setattr(steps, "multitask_loss", broken)
    with pytest.raises(CarcliError, match="not finite"):
        train(train_module.resume_config(run, {"epochs": 2}), resume=True)
    _, meta = load_model(run / "last.st")
    assert meta.metrics["epoch"] == 1


# ---------------------------------------------------------------- precision


def _output_dtypes(model: torch.nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    model.head.register_forward_hook(lambda module, args, out: dtypes.append(out["model"].dtype))
    return dtypes


@pytest.mark.parametrize(("precision", "dtype"), [("auto", torch.float32), ("bf16", torch.bfloat16)])
def test_precision_sets_the_autocast_dtype_on_cpu(tiny_set, tmp_path, monkeypatch, precision, dtype):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: False)  # auto: fp32 on CPUs without bf16 instructions
    model = create_model("ghostnet", "linear", _tasks())
    dtypes = _output_dtypes(model)
    run = tmp_path / "run"
    train(tiny_config(tiny_set, run, precision=precision), model=model)
    assert dtypes and set(dtypes) == {dtype}  # training and validation steps alike
    saved, meta = load_model(run / "best.st")
    assert meta.train["precision"] == precision
    assert all(t.dtype == torch.float32 for t in saved.state_dict().values() if t.is_floating_point())


X86_FLAGS = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw {extra}\nbogomips\t: 4000\n"


@pytest.mark.parametrize(
    ("cpuinfo", "native"),
    [
        (X86_FLAGS.format(extra="avx512_bf16"), True),
        (X86_FLAGS.format(extra="amx_tile amx_bf16"), True),
        (X86_FLAGS.format(extra="avx512_vnni"), False),  # AVX512 alone: bf16 would be emulated
        ("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n", True),
        ("processor\t: 0\nFeatures\t: fp asimd\nmodel name\t: has bf16 in its name\n", False),
        ("", False),
    ],
)
def test_cpu_bf16_support_is_read_from_the_cpu_flags(cpuinfo, native):
    assert cpu_has_bf16(cpuinfo) is native


@pytest.mark.parametrize(
    ("device", "native_bf16", "expected"),
    [
        ("cpu", True, "bf16"),  # depthwise convolutions then compute in fp32 (make_runtime)
        ("cpu", False, "fp32"),
        ("cuda", False, "bf16"),  # GPUs: bf16 whatever the CPU
    ],
)
def test_auto_precision_picks_bf16_where_the_hardware_has_it(monkeypatch, device, native_bf16, expected):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native_bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    assert auto_precision(torch.device(device)) == expected


def test_auto_precision_falls_back_to_fp16_on_gpus_without_bf16(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: False)
    assert auto_precision(torch.device("cuda")) == "fp16"


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_precision_trains_a_dense_net_in_bf16_on_cpus_that_have_it(tiny_set, tmp_path, monkeypatch, native_bf16):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: native_bf16)
    model = create_model("timm:resnet10t", "linear", _tasks())
    dtypes = _output_dtypes(model)
    run = tmp_path / "run"
    train(tiny_config(tiny_set, run), model=model)
    dtype, name = (torch.bfloat16, "bf16") if native_bf16 else (torch.float32, "fp32")
    assert set(dtypes) == {dtype}
    run_info = json.loads((run / "config.json").read_text())
    assert run_info["precision"] == "auto" and run_info["run"]["precision"] == name


def _conv_calls(model: torch.nn.Module) -> dict[str, set[tuple[bool, torch.dtype, torch.dtype]]]:
    """Per convolution: (CPU autocast on, dtype computed in, dtype the module returns) of its calls."""
    seen: dict[str, set[tuple[bool, torch.dtype, torch.dtype]]] = {}
    for name, conv in model.named_modules():
        if isinstance(conv, torch.nn.Conv2d):
            computed: list[tuple[bool, torch.dtype]] = []

            def record(x, weight, bias, computed=computed, conv_forward=conv._conv_forward):
                out = conv_forward(x, weight, bias)
                computed.append((torch.is_autocast_enabled("cpu"), out.dtype))
                return out

            def returned(module, args, out, name=name, computed=computed):
                seen.setdefault(name, set()).add((*computed.pop(), out.dtype))

            conv._conv_forward = record
            conv.register_forward_hook(returned)
    return seen


def test_bf16_on_cpus_computes_depthwise_convolutions_in_fp32_and_the_rest_in_bf16(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_bf16", lambda: True)
    model = create_model("ghostnet", "linear", _tasks())
    keys = list(model.state_dict())
    depthwise = {name for name, m in model.named_modules() if runtime.is_depthwise(m)}
    seen = _conv_calls(model)
    run = tmp_path / "run"
    train(tiny_config(tiny_set, run), model=model)
    assert json.loads((run / "config.json").read_text())["run"]["precision"] == "bf16"
    assert depthwise and seen.keys() >= depthwise and len(seen) > len(depthwise)
    for name, calls in seen.items():  # training and validation steps alike
        if name in depthwise:  # computed without autocast in fp32, returned in its input's bf16
            assert calls == {(False, torch.float32, torch.bfloat16)}, name
        else:
            assert calls == {(True, torch.bfloat16, torch.bfloat16)}, name
    saved, _ = load_model(run / "best.st")
    assert list(saved.state_dict()) == keys  # the same parameters: checkpoints do not change


def test_a_depthwise_convolution_in_fp32_returns_its_inputs_dtype_and_trains():
    conv = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4)
    reference = copy.deepcopy(conv)
    runtime.depthwise_in_fp32(torch.nn.Sequential(conv))
    assert type(conv) is runtime.DepthwiseConvInFp32 and type(reference) is torch.nn.Conv2d
    x = torch.randn(2, 4, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = conv(x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16 and conv.weight.grad is not None and conv.weight.grad.dtype == torch.float32
    exact = reference(x.float())  # the fp32 result, rounded once to bf16
    assert torch.equal(out, exact.bfloat16())
    dense = torch.nn.Conv2d(4, 4, 3, groups=2)
    runtime.depthwise_in_fp32(dense)
    assert type(dense) is torch.nn.Conv2d  # only depthwise convolutions change


@pytest.mark.parametrize(("device", "resolved"), [("cpu", "auto"), ("cuda", "on")])
def test_compile_auto_is_on_with_cuda_and_decided_later_on_cpus(tiny_set, device, resolved, monkeypatch):
    monkeypatch.setattr(recipe, "has_compiler", lambda: True)
    config = TrainConfig(data=str(tiny_set), img_size=32, batch_size=8, epochs=1)
    dataset = load_dataset(tiny_set)
    recipe.resolve_defaults(config, dataset, torch.device(device), distributed.Dist())
    assert config.compile == resolved
    for given, kept in (("off", "off"), ("on", "on"), (False, "off"), (True, "on")):  # bools: older config files
        fixed = TrainConfig(data=str(tiny_set), img_size=32, batch_size=8, epochs=1, compile=given)
        recipe.resolve_defaults(fixed, dataset, torch.device(device), distributed.Dist())
        assert fixed.compile == kept  # --compile on/off (--no-compile) is kept as given


@pytest.mark.slow
def test_compiled_training_writes_plain_loadable_checkpoints(tiny_set, tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    run = tmp_path / "run"
    model = create_model("timm:resnet10t", "linear", _tasks())
    train(tiny_config(tiny_set, run, arch="timm:resnet10t", compile="on"), model=model)
    assert counters["stats"]["unique_graphs"] > 0  # the model really went through torch.compile
    saved, meta = load_model(run / "best.st")
    assert meta.train["compile"] == "on"
    trained = model.state_dict()
    assert saved.state_dict().keys() == trained.keys()  # no torch.compile prefixes in the file
    for key, tensor in saved.state_dict().items():
        torch.testing.assert_close(tensor, trained[key].cpu(), msg=key)


@pytest.mark.parametrize(
    ("precision", "message"), [("fp16", "fp16 needs a GPU"), ("half", "--precision must be one of")]
)
def test_impossible_precisions_are_refused_before_the_run_folder_exists(tiny_set, tmp_path, precision, message):
    run = tmp_path / "run"
    with pytest.raises(CarcliError, match=message):
        train(tiny_config(tiny_set, run, precision=precision))
    assert not run.exists()


def test_evaluation_squashes_its_view_to_the_input_and_aspect_1_is_the_centre_square():
    columns = np.tile(np.linspace(0, 255, 200), (100, 1))  # red: 255 x column / width; green: by row
    rows = np.tile(np.linspace(0, 255, 100)[:, None], (1, 200))
    img = Image.fromarray(np.stack([columns, rows, np.zeros_like(rows)], axis=-1).round().astype(np.uint8))
    unit = ((0.0,) * 3, (1.0,) * 3)
    as_before = v2.Compose(
        [v2.Resize(32, antialias=True), v2.CenterCrop(32), v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    )
    assert torch.equal(eval_transform(32, *unit)(img), as_before(img))  # aspect 1: bit for bit the old view
    view = eval_transform(32, *unit, aspect=4 / 3)(img) * 255
    assert view.shape == (3, 32, 32)
    # the middle two thirds of the columns, squashed: red from 255 x (33 + 2) / 200 to 255 x (167 - 2) / 200
    assert abs(view[0].min() - 45) < 6 and abs(view[0].max() - 210) < 6
    assert view[1].min() < 10 and view[1].max() > 245  # every row
    assert torch.equal(train_transform(32, *unit, PRESETS["none"], 4 / 3)(img) * 255, view)  # crop scale 1: the view
