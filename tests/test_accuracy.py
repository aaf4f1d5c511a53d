"""Issue 14 mechanisms on tiny data: --init stages, the stored evaluation size and what follows."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import SMALL_CLASSES, write_untrained_checkpoint

from carcli import inference as inference_module
from carcli import train as train_module
from carcli.checkpoint import load_checkpoint, read_metadata
from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.layouts import load_dataset
from carcli.data.taxonomy import Taxonomy
from carcli.distill import load_teachers
from carcli.errors import CarcliError, UsageError
from carcli.evaluate import evaluate
from carcli.hierarchy import consistent_probs, fit_weights
from carcli.models.builder import load_model
from carcli.models.weights import init_from_checkpoint
from carcli.predict import predict
from carcli.progress import SilentReporter
from carcli.prune import prune_checkpoint
from carcli.train import TrainConfig, compiling, distributed, recipe, resume_config, runtime, train
from carcli.train.config import check_config

TINY = {"arch": "ghostnet", "img_size": 32, "batch_size": 8, "workers": 0, "device": "cpu", "warmup_epochs": 0.0}


def tiny_config(data: Path, out: Path, **options) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**TINY, "epochs": 1, **options})


def tasks_of(names) -> dict[str, list[str]]:
    return Taxonomy.from_class_names(list(names)).tasks


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], prefix: str) -> bool:
    keys = [k for k in b if k.startswith(prefix)]
    return bool(keys) and all(torch.equal(a[k], b[k]) for k in keys)


# ---------------------------------------------------------------- --init


def test_init_keeps_the_head_when_the_classes_agree_and_only_the_backbone_otherwise(tmp_path):
    names = list(SMALL_CLASSES[:4])
    path = write_untrained_checkpoint(tmp_path / "stage1.st", names, "mtl", 32, seed=5)
    saved, _ = load_checkpoint(path)

    model, line = init_from_checkpoint(path, "mtl", tasks_of(names), drop_rate=0.2)
    state = model.state_dict()
    assert same(state, saved, "backbone.") and same(state, saved, "head.")
    assert "backbone and mtl head" in line and model.head.dropout.p == 0.2

    other = list(SMALL_CLASSES[1:5])  # other classes: a fresh head of the new size on the same features
    model, line = init_from_checkpoint(path, "mtl", tasks_of(other), drop_rate=0.0)
    state = model.state_dict()
    assert same(state, saved, "backbone.") and not same(state, saved, "head.fc_model")
    assert "new mtl head" in line and "classes differ" in line

    model, line = init_from_checkpoint(path, "linear", tasks_of(names))  # another head kind: backbone only
    assert same(model.state_dict(), saved, "backbone.") and "head differ" in line
    assert list(model.head.tasks) == ["model"]


@pytest.mark.slow
def test_train_init_starts_from_the_checkpoint_and_records_it(tiny_set, tmp_path, monkeypatch):
    monkeypatch.setattr(recipe, "has_compiler", lambda: False)  # and --compile auto without a compiler
    names = load_dataset(tiny_set).class_names
    path = write_untrained_checkpoint(tmp_path / "stage1.st", names, "mtl", 32, seed=5)
    lines: list[str] = []

    class Lines(SilentReporter):
        info = warn = lines.append

    out = tmp_path / "stage2"
    train(tiny_config(tiny_set, out, arch="mobilenetv2", head="mtl", init=str(path), lr=1e-9), Lines())
    assert any("backbone and mtl head" in line for line in lines)
    assert any("no C++ compiler" in line and "eagerly" in line for line in lines)
    config = json.loads((out / "config.json").read_text())
    assert config["init"] == str(path) and config["arch"] == "ghostnet"  # the checkpoint's architecture
    assert config["compile"] == "off"
    with pytest.raises(UsageError, match="either --weights or --init"):
        check_config(TrainConfig(weights="w.pth", init=str(path)))


# ---------------------------------------------------------------- evaluation size


@pytest.mark.slow
def test_the_stored_evaluation_size_is_used_by_eval_and_predict(tiny_set, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_config(tiny_set, out, eval_img_size=48, head="mtl"))
    meta = read_metadata(out / "best.st")
    assert meta.img_size == 48 and meta.train_img_size == 32 and meta.train["eval_img_size"] == 48
    fit = meta.hierarchy  # fitted on the validation split at the end of training
    assert set(fit["weights"]) == {"make", "type"} and fit["val_top1"] >= fit["val_plain_top1"]

    seen: list[int] = []
    real = inference_module.dataset_probs

    def spy(model, dataset, *args, **kwargs):
        seen.append(dataset[0][0].shape[-1])
        return real(model, dataset, *args, **kwargs)

    monkeypatch.setattr(inference_module, "dataset_probs", spy)
    image = str(next((tiny_set / "val").rglob("*.png")))
    evaluate(out / "best.st", out=tmp_path / "eval", workers=0)
    predict([image], out / "best.st", workers=0)
    result = evaluate(out / "best.st", out=tmp_path / "eval40", workers=0, img_size=40, hierarchy=True)
    answers = predict([image], out / "best.st", workers=0, img_size=40, hierarchy=True).predictions
    assert seen == [48, 48, 40, 40]
    report = result.report["hierarchy"]
    assert report["used"] and report["fitted"] and report["weights"] == fit["weights"]
    assert {"top1", "plain_top1", "heads_agree"} <= set(report)
    fine = meta.tasks["model"].index(answers[0].top_k[0]["label"])
    for task in ("make", "type"):
        assert answers[0].coarse[task]["label"] == meta.tasks[task][meta.taxonomy.fine_to[task][fine]]


# ---------------------------------------------------------------- distillation


def test_the_distillation_term_is_zero_when_student_and_teacher_are_the_same_model(tmp_path):
    names = list(SMALL_CLASSES[:4])
    path = write_untrained_checkpoint(tmp_path / "t.st", names, "mtl", 32, seed=1)
    other = write_untrained_checkpoint(tmp_path / "o.st", names, "mtl", 32, seed=2)
    student, meta = load_model(path)
    teachers = load_teachers([str(path)], tasks_of(names), meta.mean, meta.std, torch.device("cpu"))
    teachers.train()
    assert not teachers.training  # a teacher always runs in eval mode
    torch.manual_seed(0)
    images = torch.randn(6, 3, 32, 32)
    with torch.no_grad():
        logits = student(images)
    for temperature in (1.0, 4.0):
        assert teachers.loss(images, logits, temperature).item() == pytest.approx(0.0, abs=1e-5)
    assert set(teachers.probs(images, 2.0)) == set(logits) == {"model", "make", "type"}
    different = load_teachers([str(other)], tasks_of(names), meta.mean, meta.std, torch.device("cpu"))
    assert different.loss(images, logits, 2.0).item() > 1e-4
    # the student's normalisation is undone and the teacher's applied: same pixels, other mean/std -> still 0
    shifted = load_teachers([str(path)], tasks_of(names), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    mean, std = torch.tensor(meta.mean).view(1, 3, 1, 1), torch.tensor(meta.std).view(1, 3, 1, 1)
    restated = (images * std + mean - 0.5) / 0.25
    assert shifted.loss(restated, logits, 2.0).item() == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(CarcliError, match="other classes"):
        load_teachers([str(path)], tasks_of(SMALL_CLASSES[1:5]), meta.mean, meta.std, torch.device("cpu"))


@pytest.mark.slow
def test_a_distilled_run_records_its_teacher_and_resume_refuses_a_changed_one(tiny_set, tmp_path):
    names = load_dataset(tiny_set).class_names
    teacher = write_untrained_checkpoint(tmp_path / "teacher.st", names, "mtl", 40, seed=1)
    out = tmp_path / "run"
    train(tiny_config(tiny_set, out, head="mtl", teacher=[str(teacher)], epochs=1))
    config = json.loads((out / "config.json").read_text())
    assert config["teacher"] == [str(teacher)] and len(config["run"]["teacher_sha256"]) == 1
    with pytest.raises(UsageError, match="--teacher"):
        resume_config(out, {"epochs": 2, "teacher": []})
    write_untrained_checkpoint(teacher, names, "mtl", 40, seed=2)  # same path, other weights
    with pytest.raises(CarcliError, match="not the ones this run started with"):
        train(resume_config(out, {"epochs": 2}), resume=True)


@pytest.mark.slow
def test_prune_finetuning_distils_from_the_unpruned_model_unless_told_not_to(tiny_set, tmp_path, monkeypatch):
    names = load_dataset(tiny_set).class_names
    path = write_untrained_checkpoint(tmp_path / "m.st", names, "mtl", 32)
    seen: list[list[str]] = []

    def fake_train(config, reporter=None, **kwargs):
        seen.append(config.teacher)
        raise RuntimeError("stop here")

    monkeypatch.setattr(train_module, "train", fake_train)
    for teacher in (True, False):
        with pytest.raises(RuntimeError, match="stop here"):
            prune_checkpoint(path, tiny_set, "channel", 0.3, 1, tmp_path / f"p{teacher}.st", teacher=teacher)
    assert seen == [[str(path)], []]


# ---------------------------------------------------------------- hierarchy-consistent answers


def hierarchy_meta() -> CheckpointMeta:
    taxonomy = Taxonomy.from_class_names(list(SMALL_CLASSES))
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return CheckpointMeta(arch="ghostnet", head="mtl", tasks=taxonomy.tasks, taxonomy=taxonomy, img_size=32, **norm)


def test_hierarchy_consistent_answers_are_consistent_and_the_fit_uses_the_coarse_heads():
    meta = hierarchy_meta()
    fine_to = meta.taxonomy.fine_to
    torch.manual_seed(0)
    probs = {task: torch.rand(200, len(names)).softmax(1) for task, names in meta.tasks.items() if task != "year"}
    plain = probs["model"].argmax(1)
    inconsistent = torch.tensor(fine_to["make"])[plain] != probs["make"].argmax(1)
    assert inconsistent.any()  # random heads disagree: the test means something
    consistent = consistent_probs(probs, meta)
    top = consistent["model"].argmax(1)
    for task in ("make", "type"):
        assert torch.equal(torch.tensor(fine_to[task])[top], consistent[task].argmax(1))
        assert torch.allclose(consistent[task].sum(1), torch.ones(200))
    # the make head knows the truth, the fine head is unsure between the two Audis and a BMW: the fit leans on make
    targets = torch.tensor([0, 2] * 50)
    fine = torch.tensor([[0.30, 0.40, 0.30, 0.0, 0.0], [0.30, 0.40, 0.30, 0.0, 0.0]]).repeat(50, 1)
    make_of = torch.tensor(fine_to["make"])
    make = torch.nn.functional.one_hot(make_of[targets], len(meta.tasks["make"])).float() * 0.9 + 0.05
    type_ = torch.full((100, len(meta.tasks["type"])), 1.0 / len(meta.tasks["type"]))
    fit = fit_weights({"model": fine, "make": make, "type": type_}, targets, meta)
    assert fit["weights"]["make"] > 0 and fit["weights"]["type"] == 0  # a useless head gets no weight
    assert fit["val_top1"] > fit["val_plain_top1"]
    assert fit_weights({"model": fine}, targets, meta) is None  # a linear head: nothing to combine
    with pytest.raises(UsageError, match="make or type heads"):
        consistent_probs({"model": fine}, meta)


# ---------------------------------------------------------------- --compile auto


def _auto_compile(monkeypatch, lines: list[str]) -> runtime.AutoCompile:
    """An AutoCompile for a depthwise net (1.25x expected) whose compiling is recorded, not done."""
    monkeypatch.setattr(runtime, "_compiled", lambda net: f"compiled {net}")
    reporter = type("R", (), {"info": staticmethod(lines.append)})()
    return runtime.AutoCompile(depthwise=True, reporter=reporter, ddp=distributed.Dist())


def test_compile_auto_decides_from_the_measured_step_time(monkeypatch):
    from carcli.train.compiling import COMPILE_SECONDS, initial_choice

    lines: list[str] = []
    # 0.5 s a step; 2000 steps left save 2000 * 0.5 * 0.2 = 200 s > the compile's 100 s
    assert _auto_compile(monkeypatch, lines).after_epoch("net", {"step_seconds": 0.5}, 2000) == "compiled net"
    assert "compiling" in lines[-1] and f"{COMPILE_SECONDS:.0f} s" in lines[-1]
    # 200 steps left: 20 s saved, not worth 100 s of compiling; decided once: later epochs change nothing
    auto = _auto_compile(monkeypatch, lines)
    assert auto.after_epoch("net", {"step_seconds": 0.5}, 200) == "net" and "staying eager" in lines[-1]
    assert auto.after_epoch("net", {"step_seconds": 50.0}, 199) == "net" and len(lines) == 2
    # the same 200 steps at 10 s each (a slow CPU) pay for it
    assert _auto_compile(monkeypatch, lines).after_epoch("net", {"step_seconds": 10.0}, 200) == "compiled net"
    assert initial_choice("auto", "cpu", compiler=False) == "off" and initial_choice("auto", "cuda", False) == "on"


@pytest.mark.parametrize(("compiled_step", "kept"), [(0.40, True), (0.485, True), (0.495, False), (0.6, False)])
def test_compile_auto_goes_back_to_eager_when_compiled_steps_are_not_faster(monkeypatch, compiled_step, kept):
    lines: list[str] = []
    auto = _auto_compile(monkeypatch, lines)
    net = auto.after_epoch("net", {"step_seconds": 0.5}, 2000)
    assert net == "compiled net"
    net = auto.after_epoch(net, {"step_seconds": compiled_step}, 1900)
    assert net == ("compiled net" if kept else "net")
    assert ("keeping it" in lines[-1]) == kept and f"{1000 * compiled_step:.0f} ms against 500 ms" in lines[-1]
    assert auto.after_epoch(net, {"step_seconds": 9.0}, 1800) == net and len(lines) == 2  # settled


def test_compile_auto_in_a_run_compiles_after_epoch_1_and_goes_back_when_slower(monkeypatch, tiny_set, tmp_path):
    """The run's real step times drive both decisions: with a free compile the first epoch's steps decide for it;
    the stand-in "compiled" net is slower, so the second epoch's median step sends the run back to eager."""

    class Slower(torch.nn.Module):
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, images: torch.Tensor):
            time.sleep(0.2)
            return self.net(images)

    monkeypatch.setattr(recipe, "has_compiler", lambda: True)
    monkeypatch.setattr(runtime, "decide", lambda *a: compiling.decide(*a, compile_seconds=0.0))
    monkeypatch.setattr(runtime, "_compiled", Slower)
    lines: list[str] = []
    reporter = type("R", (SilentReporter,), {"info": staticmethod(lines.append)})()
    train(tiny_config(tiny_set, tmp_path / "run", epochs=3, compile="auto"), reporter)
    said = [line for line in lines if line.startswith("--compile auto")]
    assert len(said) == 2 and "compiling" in said[0], said
    assert "back to eager" in said[1], said
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["compile"] == "auto"  # the config keeps "auto": a rerun decides afresh
