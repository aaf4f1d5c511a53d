"""Checkpoints: round trip, atomic writes, and clear refusals of files that are not carcli checkpoints."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from carcli.checkpoint import read_metadata, save_checkpoint
from carcli.checkpoint_meta import CheckpointMeta
from carcli.errors import CarcliError
from carcli.models.builder import load_model
from carcli.models.registry import create_model

TASKS = {"model": ["a b Sedan 2001", "a c SUV 2002", "d e Sedan 2002"], "make": ["a", "d"]}


def _meta(**extra):
    return {
        "arch": "timm:resnet18",
        "head": "mtl",
        "img_size": 64,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "tasks": TASKS,
        "taxonomy": {"tasks": TASKS, "fine_to": {"make": [0, 0, 1]}},
        **extra,
    }


@pytest.fixture
def saved(tmp_path):
    model = create_model("timm:resnet18", "mtl", {t: len(n) for t, n in TASKS.items()}).eval()
    path = tmp_path / "m.st"
    save_checkpoint(path, model.state_dict(), CheckpointMeta.from_dict(_meta(metrics={"best_epoch": 2})))
    return model, path


def test_round_trip_gives_the_same_predictions(saved):
    model, path = saved
    loaded, meta = load_model(path)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert all(torch.equal(a[t], b[t]) for t in a)
    assert meta.tasks == TASKS and meta.metrics == {"best_epoch": 2}
    assert meta.format == 1 and meta.version


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "m.st"
    save_checkpoint(path, {"w": torch.ones(3)}, CheckpointMeta.from_dict(_meta()))
    before = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(CarcliError, match=r"cannot write .*m\.st"):  # names the user's file, not the temp file
        save_checkpoint(path, {"w": torch.zeros(3)}, CheckpointMeta.from_dict(_meta()))
    assert path.read_bytes() == before  # the old checkpoint is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.st"]  # no temp file left


def test_truncated_file_is_refused(saved, tmp_path):
    _, path = saved
    cut = tmp_path / "cut.st"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CarcliError, match=r"truncated|corrupt"):
        load_model(cut)


def test_non_safetensors_file_is_refused(tmp_path):
    path = tmp_path / "photo.st"
    path.write_bytes(b"\xff\xd8\xff\xe0 not a checkpoint")
    with pytest.raises(CarcliError, match="not a readable safetensors"):
        read_metadata(path)


def test_safetensors_without_carcli_metadata_is_refused(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.ones(2)}, str(path))
    with pytest.raises(CarcliError, match="not a carcli checkpoint"):
        read_metadata(path)


def test_newer_format_and_missing_fields_are_refused(tmp_path):
    newer = tmp_path / "newer.st"
    save_file({"w": torch.ones(2)}, str(newer), metadata={"carcli": json.dumps({**_meta(), "format": 99})})
    with pytest.raises(CarcliError, match="newer"):
        read_metadata(newer)
    partial = tmp_path / "partial.st"
    save_file({"w": torch.ones(2)}, str(partial), metadata={"carcli": json.dumps({"format": 1})})
    with pytest.raises(CarcliError, match="lacks arch"):
        read_metadata(partial)


def test_tensors_that_do_not_match_the_described_model_are_refused(tmp_path):
    path = tmp_path / "wrong.st"
    save_checkpoint(path, {"w": torch.ones(2)}, CheckpointMeta.from_dict(_meta()))
    with pytest.raises(CarcliError, match="does not match"):
        load_model(path)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CarcliError, match="not found"):
        load_model(tmp_path / "none.st")


def test_metadata_that_disagrees_with_tensor_shapes_is_refused(saved, tmp_path):
    model, _ = saved
    path = tmp_path / "lying.st"
    wrong_tasks = {"model": [*TASKS["model"], "extra Coupe 2003"], "make": TASKS["make"]}
    taxonomy = {"tasks": wrong_tasks, "fine_to": {"make": [0, 0, 1, 1]}}
    save_checkpoint(path, model.state_dict(), CheckpointMeta.from_dict(_meta(tasks=wrong_tasks, taxonomy=taxonomy)))
    with pytest.raises(CarcliError, match="shapes differ"):
        load_model(path)


@pytest.mark.parametrize(
    ("taxonomy", "message"),
    [
        (None, "lacks taxonomy"),
        ({"tasks": {"make": ["a"]}}, "no 'model' task"),
        ({"tasks": TASKS, "fine_to": {"make": [0, 5, 1]}}, "'make' map does not fit"),
        ({"tasks": {"model": ["x", "y", "z"]}}, "other classes"),
    ],
)
def test_a_missing_or_inconsistent_taxonomy_is_refused(tmp_path, taxonomy, message):
    meta = _meta(taxonomy=taxonomy)
    if taxonomy is None:
        del meta["taxonomy"]
    path = tmp_path / "bad.st"
    save_file({"w": torch.ones(2)}, str(path), metadata={"carcli": json.dumps({"format": 1, **meta})})
    with pytest.raises(CarcliError, match=message):
        read_metadata(path)


@pytest.mark.parametrize("aspect", [0.5, "wide", None])
def test_an_evaluation_view_aspect_below_1_or_not_a_number_is_refused(tmp_path, aspect):
    path = tmp_path / "bad.st"
    save_file(
        {"w": torch.ones(2)}, str(path), metadata={"carcli": json.dumps({"format": 1, **_meta(eval_aspect=aspect)})}
    )
    with pytest.raises(CarcliError, match="field 'eval_aspect' must be a number of at least 1"):
        read_metadata(path)


def test_a_checkpoint_without_a_view_aspect_is_evaluated_on_the_centre_square(saved, tmp_path):
    old = read_metadata(saved[1])
    assert old.eval_aspect is None and old.view_aspect == 1.0  # written before the view had an aspect
    assert "eval_aspect" not in old.to_dict()  # rewriting it adds nothing
    wide = old.at_view(None, 4 / 3)
    assert wide.view_aspect == pytest.approx(4 / 3) and wide.img_size == old.img_size
    assert old.at_view(96, None).view_aspect == 1.0 and old.at_view(96, None).img_size == 96
