"""At 80 columns every table keeps names and paths whole: nothing is cut short with an ellipsis."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from carcli import console as carcli_console
from carcli.console import render_eval, render_train_summary
from carcli.evaluate import EvalResult
from carcli.models.registry import list_archs
from carcli.train import TrainResult

LONG_CLASS = "Mercedes-Benz Sprinter Van 2012"
LONG_DATA = "/home/someone/.cache/carcli/data/stanford-cars-448px"


def _carcli(*args: str, home: Path) -> str:
    env = {**os.environ, "COLUMNS": "80", "CARCLI_HOME": str(home)}
    command = [sys.executable, "-m", "carcli", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout


@pytest.fixture
def narrow(monkeypatch) -> io.StringIO:
    """carcli's console as an 80-column terminal (what COLUMNS=80 gives); returns what it printed."""
    out = io.StringIO()
    monkeypatch.setattr(carcli_console, "console", Console(file=out, width=80, force_terminal=False))
    return out


def _assert_whole(text: str, names: list[str]) -> None:
    assert "…" not in text
    table_lines = [line for line in text.splitlines() if line[:1] in "┏┃┡│└"]
    assert table_lines and max(len(line) for line in table_lines) <= 80
    for name in names:
        assert any(name in line for line in text.splitlines()), name


def test_archs_names_whole_at_80_columns(tmp_path):
    text = _carcli("archs", home=tmp_path)
    _assert_whole(text, [spec.name for spec in list_archs()] + [spec.model_name for spec in list_archs()])


def test_data_list_paths_whole_at_80_columns(tmp_path):
    text = _carcli("fetch-data", "--list", home=tmp_path / "a-rather-long-home-folder-name")
    _assert_whole(text, ["stanford-cars", "demo", str(tmp_path / "a-rather-long-home-folder-name" / "data")])


def test_train_summary_whole_at_80_columns(narrow, tmp_path):
    run_dir = tmp_path / "runs" / "20260101-120000-efficientnet_lite0-mtl-aux"
    run_dir.mkdir(parents=True)
    for name in ("best.st", "last.st", "metrics.jsonl", "metrics.csv", "curves.png"):
        (run_dir / name).touch()
    top1 = {"model": 0.5, "make": 0.6, "type": 0.7, "year": 0.8}
    result = TrainResult(run_dir, 3, top1, 30, 4_000_000, 123.0, 600.0, [], hints=["next: carcli eval x"])
    render_train_summary(result)
    text = narrow.getvalue()
    _assert_whole(text, ["parameters", "images/s", "wall time", *(f"{t} top-1" for t in top1)])
    assert "metrics.csv, curves.png" in text


def test_eval_tables_whole_at_80_columns(narrow, tmp_path):
    metrics = {"source": "head", "classes": 196, "loss": 1.0, "implied_top1": 0.5, "agreement": 0.9}
    metrics.update(dict.fromkeys(("top1", "top5", "macro_precision", "macro_recall", "macro_f1", "plain_top1"), 0.5))
    tasks = {"model": dict(metrics, source="head"), "make": metrics, "type": dict(metrics, source="fine")}
    report = {"checkpoint": "runs/x/best.st", "data": LONG_DATA, "split": "val", "n_images": 1, "tasks": tasks}
    pair = {"true": LONG_CLASS, "predicted": "Chevrolet Express Cargo Van 2007", "count": 3, "share": 0.2}
    render_eval(EvalResult({**report, "seconds": 1.0}, tmp_path, [tmp_path / "eval.json"], [pair]))
    text = narrow.getvalue()
    _assert_whole(text, [LONG_CLASS, "Chevrolet Express Cargo Van 2007", "type (from fine)"])
    assert "on 1 image (val)" in text  # the checkpoint line, once, singular
    assert text.count("runs/x/best.st") == 1
