"""--val-fraction 0: a final model trained on every image, without validation; best.st is last.st."""

from __future__ import annotations

import json

import pytest
from conftest import assert_same_weights

from carcli.progress import SilentReporter
from carcli.train import TrainConfig, train


class Notes(SilentReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)


@pytest.mark.slow
def test_val_fraction_zero_trains_on_every_image(tiny_set, tmp_path):
    notes = Notes()
    config = TrainConfig(
        data=str(tiny_set), arch="ghostnet", img_size=32, epochs=2, batch_size=16, workers=0, val_fraction=0.0,
        out=str(tmp_path / "run"),
    )  # fmt: skip
    result = train(config, notes)
    said = [line for line in notes.lines if line.startswith("--val-fraction 0")]
    assert len(said) == 1 and "all 64 train and val images" in said[0] and "best.st" in said[0]
    assert any("64 train / 0" in line for line in notes.lines)
    assert result.best_epoch == 2 and result.best_top1 == {}
    assert_same_weights(tmp_path / "run" / "best.st", tmp_path / "run" / "last.st")
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_loss"] for r in records] == [None, None] and all(r["train_loss"] > 0 for r in records)
    assert (tmp_path / "run" / "curves.png").stat().st_size > 0
