"""Experiment tracking: a real MLflow store and a W&B offline run, read back after a tiny training run."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from carcli.errors import CarcliError, UsageError
from carcli.progress import SilentReporter
from carcli.train import TrainConfig, train
from carcli.train.config import check_logger
from carcli.train.tracking import tracking, wandb_mode


def _train(tiny_set: Path, out: Path, log: str, log_uri: str | None = None):
    config = TrainConfig(
        data=str(tiny_set), arch="ghostnet", head="mtl", img_size=32, epochs=2, batch_size=16, workers=0,
        out=str(out), log=log, log_uri=log_uri,
    )  # fmt: skip
    with tracking(config, SilentReporter()) as reporter:
        return train(config, reporter)


@pytest.mark.slow
def test_mlflow_run_holds_params_every_task_per_epoch_and_the_files(tiny_set, tmp_path):
    from mlflow.tracking import MlflowClient

    result = _train(tiny_set, tmp_path / "runs" / "r1", "mlflow")
    client = MlflowClient(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("carcli").experiment_id])
    assert run.info.run_name == "r1" and run.info.status == "FINISHED"
    assert run.data.params["arch"] == "ghostnet" and run.data.params["epochs"] == "2"
    tasks = result.records[-1]["val_top1"]
    assert len(tasks) >= 3  # model, make, type: every task is tracked
    for task in tasks:
        history = client.get_metric_history(run.info.run_id, f"val_top1_{task}")
        assert [m.step for m in history] == [1, 2]
        assert history[-1].value == pytest.approx(result.records[-1]["val_top1"][task])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert {f.path for f in client.list_artifacts(run.info.run_id)} == {"curves.png", "best.st"}


def _wandb_records(run_file: Path) -> list:
    """The protobuf records of a W&B transaction log (.wandb: a LevelDB-style log of 32 KiB blocks)."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, pending, records = run_file.read_bytes(), 7, b"", []
    assert raw[:4] == b":W&B"
    while pos + 7 <= len(raw):
        room = 32768 - pos % 32768
        if room < 7:
            pos += room
            continue
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pending += raw[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_holds_params_metrics_and_the_files(tiny_set, tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    result = _train(tiny_set, tmp_path / "runs" / "r2", "wandb")
    (run_file,) = (tmp_path / "runs" / "r2" / "wandb").glob("offline-run-*/run-*.wandb")
    records = _wandb_records(run_file)
    kinds = [r.WhichOneof("record_type") for r in records]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    config = {_key(item): json.loads(item.value_json) for item in run.config.update}
    assert run.display_name == "r2" and config["arch"] == "ghostnet" and config["head"] == "mtl"
    rows = [{_key(i): json.loads(i.value_json) for i in r.history.item} for r in records if r.HasField("history")]
    history = [row for row in rows if "val_loss" in row]  # the epochs' rows
    assert [h["_step"] for h in history] == [1, 2], (kinds, rows)
    assert len(result.records[-1]["val_top1"]) >= 3
    for task in result.records[-1]["val_top1"]:
        assert history[-1][f"val_top1_{task}"] == pytest.approx(result.records[-1]["val_top1"][task])
    (artifact,) = [r.artifact for r in records if r.HasField("artifact")]
    assert sorted(entry.path for entry in artifact.manifest.contents) == ["best.st", "curves.png"]
    assert kinds[-1] == "exit"


def test_wandb_is_offline_unless_logged_in(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert wandb_mode() == "offline"
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password abc\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert wandb_mode() == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode() == "disabled"


def test_logger_values_and_a_missing_extra(monkeypatch):
    with pytest.raises(UsageError, match="--log must be one of none, mlflow, wandb"):
        check_logger("tensorboard", None)
    with pytest.raises(UsageError, match="--log-uri needs"):
        check_logger("none", "http://localhost:5000")
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(CarcliError, match=r'pip install "carcli\[mlflow\]"'):
        check_logger("mlflow", None)
