"""After training: the eval and predict commands for the run; the pretrained-weights hint when it is due."""

from __future__ import annotations

from pathlib import Path

import pytest

from carcli.train import TrainConfig, TrainResult, next_steps


def _result(top1: float) -> TrainResult:
    return TrainResult(Path("runs/r"), 5, {"model": top1}, 5, 1_000_000, 10.0, 60.0, [])


def test_next_commands_name_this_run():
    hints = next_steps(TrainConfig(data="cars"), _result(0.9), on_demo=False)
    assert hints == ["next: carcli eval runs/r/best.st", "      carcli predict IMAGES... --model runs/r/best.st"]


@pytest.mark.parametrize(
    ("config", "top1", "on_demo", "hinted"),
    [
        (TrainConfig(data="cars"), 0.2, False, True),  # from scratch, real data, low: hint
        (TrainConfig(data="cars"), 0.8, False, False),  # high enough
        (TrainConfig(data="cars", pretrained=True), 0.2, False, False),  # already pretrained
        (TrainConfig(data="cars", weights="w.pth"), 0.2, False, False),  # already has weights
        (TrainConfig(), 0.2, True, False),  # the demo set learns from scratch
    ],
)
def test_the_pretrained_hint_follows_a_weak_from_scratch_run_on_real_data(config, top1, on_demo, hinted):
    hints = next_steps(config, _result(top1), on_demo)
    assert any("--pretrained" in h and "--weights" in h for h in hints) == hinted
