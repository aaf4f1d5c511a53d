"""Hostile checkpoints, output paths and faults: tampered metadata names the file and the field in every
command; unusable outputs are refused before any work; a full disk, a refused write, a killed writer,
a NaN loss or a failing loader worker end in one line and change nothing written before."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from conftest import real_photos_by_class
from hostile import DELETE, fails, snapshot, tamper

from carcli.checkpoint import save_checkpoint
from carcli.checkpoint_meta import CheckpointMeta
from carcli.data.taxonomy import Taxonomy
from carcli.errors import CarcliError, fault, one_line
from carcli.files import remove_stale_temps, write_text


@pytest.fixture(scope="module")
def photo() -> Path:
    return sorted(next(iter(real_photos_by_class().values())))[0]


@pytest.fixture
def model(untrained_members, tmp_path) -> Path:
    return Path(shutil.copy(untrained_members[0], tmp_path / "model.st"))


# ---------------------------------------------------------------- checkpoints

FIELDS = {
    "img_size as words": ({"img_size": "sixty-four"}, "'img_size'"),
    "img_size huge": ({"img_size": 100000}, "'img_size'"),
    "img_size tiny": ({"img_size": 8}, "'img_size'"),
    "mean as a colour name": ({"mean": "red"}, "'mean'"),
    "std null": ({"std": None}, "'std'"),
    "std zero": ({"std": [0, 0, 0]}, "'std'"),
    "mean too short": ({"mean": [0.5, 0.5]}, "'mean'"),
    "arch a number": ({"arch": 123}, "'arch'"),
    "train a list": ({"train": [1, 2]}, "'train'"),
    "val_fraction words": ({"train": {"val_fraction": "most"}}, "'train.val_fraction'"),
    "head missing": ({"head": DELETE}, "head"),
    "ensemble weights short": ({"members": [], "weights": []}, "'members'"),
}


@pytest.mark.parametrize("case", sorted(FIELDS))
def test_tampered_metadata_names_the_file_and_the_field(model, photo, tmp_path, case):
    changes, field = FIELDS[case]
    bad = tamper(model, tmp_path / "bad.st", **changes)
    fails("predict", photo, "--model", bad, says=(str(bad), field))


@pytest.mark.parametrize(
    "command",
    [
        ("predict", "{photo}", "--model", "{bad}"),
        ("eval", "{bad}", "--data", "{data}"),
        ("export", "{bad}", "--format", "torchscript"),
        ("bench", "{bad}"),
        ("prune", "{bad}", "--data", "{data}", "--rate", "0.5"),
        ("ensemble", "{bad}", "{model}", "--data", "{data}", "-o", "{out}"),
    ],
    ids=lambda c: c[0],
)
def test_every_command_refuses_a_bad_img_size_at_read(model, photo, real_folder_set, tmp_path, command):
    bad = tamper(model, tmp_path / "bad.st", img_size="sixty-four")
    values = {"photo": photo, "bad": bad, "model": model, "data": real_folder_set, "out": tmp_path / "e.st"}
    before = snapshot(tmp_path)
    fails(*(part.format(**values) for part in command), says=(str(bad), "'img_size'"))
    assert snapshot(tmp_path) == before


def _not_checkpoints(model: Path, folder: Path) -> dict[str, Path]:
    files = {
        "random bytes": os.urandom(4096),
        "empty": b"",
        "truncated": model.read_bytes()[: model.stat().st_size // 3],
    }
    found = {name: folder / f"{name.replace(' ', '-')}.st" for name in files}
    for name, data in files.items():
        found[name].write_bytes(data)
    torch.save({"w": torch.ones(2)}, folder / "pickle.st")
    found["pickle"] = folder / "pickle.st"
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(folder / "foreign.st"))
    found["foreign safetensors"] = folder / "foreign.st"
    (folder / "a-folder.st").mkdir()
    found["a folder"] = folder / "a-folder.st"
    return found


@pytest.mark.parametrize("kind", ["random bytes", "empty", "truncated", "pickle", "foreign safetensors", "a folder"])
def test_files_that_are_not_checkpoints_are_one_line(model, photo, tmp_path, kind):
    path = _not_checkpoints(model, tmp_path)[kind]
    fails("predict", photo, "--model", path, says=(str(path),))


def test_a_pickle_as_weights_is_one_plain_line(tiny_set, tmp_path):
    import argparse

    torch.save({"model": argparse.Namespace(layers=1)}, tmp_path / "p.pth")
    line = fails("train", "--data", tiny_set, "--weights", tmp_path / "p.pth", "--out", tmp_path / "run",
                 "--img-size", "32", "--epochs", "1", "--workers", "0", says=("p.pth", "pickled"))  # fmt: skip
    assert "\x1b" not in line


# ---------------------------------------------------------------- output paths


def _write_file(path: Path, text: str = "keep me\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


OUTPUTS = {
    "train --out is a file": (("train", "--data", "{data}", "--out", "{file}"), "not a folder"),
    "train --out under a file": (("train", "--data", "{data}", "--out", "{file}/run"), "is a file"),
    "predict --csv is a folder": (("predict", "{photo}", "--model", "{model}", "--csv", "{dir}"), "is a folder"),
    "predict --csv under a file": (("predict", "{photo}", "--model", "{model}", "--csv", "{file}/p.csv"), "is a file"),
    "predict --explain is a file": (("predict", "{photo}", "--model", "{model}", "--explain", "{file}"), "not a"),
    "eval --out is a file": (("eval", "{model}", "--data", "{data}", "--out", "{file}"), "not a folder"),
    "eval --submission is a folder": (("eval", "{model}", "--data", "{data}", "--submission", "{dir}"), "is a folder"),
    "export -o is a folder": (("export", "{model}", "--format", "torchscript", "-o", "{dir}"), "is a folder"),
    "prune -o under a file": (("prune", "{model}", "--data", "{data}", "--rate", "0.3", "-o", "{file}/p.st"), "file"),
    "prune --sweep -o is a folder": (("prune", "{model}", "--data", "{data}", "--sweep", "-o", "{dir}"), "folder"),
    "ensemble -o is a folder": (("ensemble", "{model}", "{model2}", "--data", "{data}", "-o", "{dir}"), "folder"),
}


@pytest.mark.parametrize("case", sorted(OUTPUTS))
def test_unusable_outputs_are_refused_before_any_work(
    model, untrained_members, photo, tiny_set, real_folder_set, tmp_path, case
):
    command, says = OUTPUTS[case]
    values = {
        "data": tiny_set if command[0] == "train" else real_folder_set,
        "file": _write_file(tmp_path / "taken" / "file"),
        "dir": (tmp_path / "taken" / "dir").mkdir() or tmp_path / "taken" / "dir",
        "photo": photo,
        "model": model,
        "model2": untrained_members[2],
    }
    before = snapshot(tmp_path)
    fails(*(part.format(**values) for part in command), says=(says,))
    assert snapshot(tmp_path) == before


def test_a_folder_without_write_permission_is_refused_up_front(model, photo, tmp_path, monkeypatch):
    real_access = os.access
    locked = tmp_path / "locked"
    locked.mkdir()
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != locked and real_access(p, mode))
    fails("predict", photo, "--model", model, "--csv", locked / "p.csv", says=("no permission", str(locked)))


def test_a_refused_write_names_the_users_path_not_the_temporary_file(model, photo, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / ".p.csv.carcli-1-abcdefgh.csv"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    line = fails("predict", photo, "--model", model, "--csv", tmp_path / "p.csv", says=(str(tmp_path / "p.csv"),))
    assert ".carcli-" not in line and "permission denied" in line


def test_too_little_space_for_an_export_is_refused_before_exporting(model, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=1000))
    fails("export", model, "--format", "torchscript", "-o", tmp_path / "m.pt", says=("MB are needed",))
    assert not (tmp_path / "m.pt").exists()


def test_too_little_space_for_a_runs_checkpoints_is_refused_before_training(tiny_set, tmp_path, monkeypatch):
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage._replace(free=10_000_000))
    args = ("--arch", "ghostnet", "--img-size", "32", "--epochs", "1", "--workers", "0")
    fails("train", "--data", tiny_set, "--out", tmp_path / "run", *args, says=("MB are needed",))
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------- faults: full disk, killed writers


def _full_disk(monkeypatch) -> None:
    real = Path.write_text

    def half_then_full(self, text, *args, **kwargs):
        real(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", half_then_full)


def test_a_full_disk_during_predict_csv_keeps_the_previous_table(model, photo, tmp_path, monkeypatch):
    table = _write_file(tmp_path / "out" / "p.csv", "image,label_1\nold,row\n")
    before = snapshot(tmp_path / "out")
    _full_disk(monkeypatch)
    fails("predict", photo, "--model", model, "--csv", table, says=(str(table), "no space left", "unchanged"))
    assert snapshot(tmp_path / "out") == before  # the old table, and no temporary file


def _tiny_meta() -> CheckpointMeta:
    taxonomy = Taxonomy({"model": ["x"]})
    return CheckpointMeta(
        arch="x", head="linear", img_size=32, mean=[0] * 3, std=[1] * 3, tasks=taxonomy.tasks, taxonomy=taxonomy
    )


def test_a_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    import safetensors.torch

    path = tmp_path / "last.st"
    save_checkpoint(path, {"w": torch.ones(3)}, _tiny_meta())
    before = snapshot(tmp_path)

    def full(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise safetensors.SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(CarcliError, match=r"last\.st: no space left on the device; the previous last\.st"):
        save_checkpoint(path, {"w": torch.zeros(3)}, _tiny_meta())
    assert snapshot(tmp_path) == before


def test_temporary_files_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = _write_file(tmp_path / ".last.st.carcli-999999999-abcdefgh.st", "half")
    alive = _write_file(tmp_path / f".best.st.carcli-{os.getppid()}-abcdefgh.st", "in progress")
    write_text(tmp_path / "metrics.csv", "epoch\n1\n")
    assert not dead.exists() and alive.exists()
    assert (tmp_path / "metrics.csv").read_text() == "epoch\n1\n"
    assert remove_stale_temps(tmp_path) == []


# ---------------------------------------------------------------- faults during training


def _nan_after(calls: int, monkeypatch) -> None:
    from carcli.train import steps

    real, count = steps.multitask_loss, [0]

    def loss(*args, **kwargs):
        count[0] += 1
        value, parts = real(*args, **kwargs)
        return (value * float("nan"), parts) if count[0] > calls else (value, parts)

    monkeypatch.setattr(steps, "multitask_loss", loss)


FAST = ("--arch", "ghostnet", "--img-size", "32", "--batch-size", "16", "--workers", "0")


def test_nan_in_the_first_epoch_says_nothing_was_kept(tiny_set, tmp_path, monkeypatch):
    _nan_after(0, monkeypatch)
    run = tmp_path / "run"
    fails("train", "--data", tiny_set, "--out", run, "--epochs", "2", *FAST, says=("no epoch had finished",))
    assert not list(run.glob("*.st"))


@pytest.mark.slow
def test_nan_in_epoch_two_keeps_epoch_ones_files(tiny_set, tmp_path, monkeypatch):
    _nan_after(3, monkeypatch)  # 48 train images / 16 = 3 steps an epoch
    run = tmp_path / "run"
    fails("train", "--data", tiny_set, "--out", run, "--epochs", "2", *FAST, says=("keeps epoch 1's files",))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in metrics] == [1] and (run / "last.st").is_file()


def test_a_loader_workers_error_is_one_line(tiny_set, tmp_path, monkeypatch):
    from carcli.data.images import ImageDataset

    def broken(self, index):
        raise ValueError("the decoder gave up on this file")

    monkeypatch.setattr(ImageDataset, "__getitem__", broken)
    args = ("--data", tiny_set, "--out", tmp_path / "run", "--epochs", "1", "--arch", "ghostnet", "--img-size", "32")
    fails("train", *args, "--workers", "1", says=("data loader worker", "the decoder gave up on this file"))


def test_faults_become_one_line():
    worker = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\nValueError: bad pixels\n'
    )
    assert str(fault(worker)) == "a data loader worker failed: bad pixels"
    assert "out of memory" in str(fault(MemoryError()))
    assert str(fault(OSError(errno.EROFS, "Read-only file system", "/mnt/x"))) == (
        "cannot use /mnt/x: read-only file system"
    )
    assert one_line("\x1b[1mbold\x1b[0m text\nsecond line") == "bold text"
    assert fault(KeyError("x")) is None
