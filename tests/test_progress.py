"""Training progress: an overall bar with an ETA, epochs named on validation lines, plain lines in a pipe."""

from __future__ import annotations

import io

from rich.console import Console

from carcli import console as carcli_console
from carcli.console import TrainProgress
from carcli.train.reporting import EpochEnd, EpochStart, Step

STATS = Step(loss=1.25, top1=0.5, images_per_s=40.0)


def _record(epoch: int) -> dict:
    return {
        "epoch": epoch, "train_loss": 1.0, "train_top1": 0.5, "images_per_s": 40.0, "val_loss": 0.9,
        "val_top1": {"model": 0.25, "make": 0.5}, "seconds": 3.0,
    }  # fmt: skip


def _reporter(monkeypatch, terminal: bool) -> tuple[TrainProgress, io.StringIO]:
    out = io.StringIO()
    monkeypatch.setattr(carcli_console, "console", Console(file=out, width=120, force_terminal=terminal))
    return TrainProgress(), out


def test_in_a_pipe_a_plain_line_every_tenth_of_an_epoch(monkeypatch):
    reporter, out = _reporter(monkeypatch, terminal=False)
    with reporter:
        for epoch in (1, 2):
            reporter.progress(EpochStart(epoch, 2, 20))
            for _ in range(20):
                reporter.progress(STATS)
            reporter.progress(EpochEnd(_record(epoch)))
    lines = out.getvalue().splitlines()
    steps = [line for line in lines if " step " in line]
    assert len(steps) == 2 * 9  # steps 2, 4, ... 18 of each epoch; step 20 is the epoch's own line
    assert steps[0].startswith("epoch 1/2 step 2/20: loss 1.250  top1 50.0%  40 img/s")
    assert all(", run ETA " in line for line in steps)
    ends = [line for line in lines if "val loss" in line]
    assert [line.split(":")[0] for line in ends] == ["epoch 1/2", "epoch 2/2"]


def test_in_a_pipe_a_plain_line_every_30_seconds(monkeypatch):
    clock = iter(range(0, 10_000, 31))
    monkeypatch.setattr(carcli_console.time, "perf_counter", lambda: float(next(clock)))
    reporter, out = _reporter(monkeypatch, terminal=False)
    with reporter:
        reporter.progress(EpochStart(1, 1, 1000))
        for _ in range(5):
            reporter.progress(STATS)
    assert out.getvalue().count(" step ") == 5  # every step is 31 s after the last line


def test_live_bars_the_run_with_an_eta_and_no_loss_before_the_first_step(monkeypatch):
    reporter, out = _reporter(monkeypatch, terminal=True)
    with reporter:
        reporter.progress(EpochStart(1, 3, 4))
        for _ in range(4):
            reporter.progress(STATS)
        reporter.progress(EpochEnd(_record(1)))
        reporter.progress(EpochStart(2, 3, 4))
        run, first, second = reporter.bars.tasks
        assert run.description == "run" and run.total == 12 and run.completed == 4
        assert second.fields["stats"] == ""  # not "loss 0.000" before the epoch's first step
        assert not first.visible
    text = out.getvalue()
    assert "epoch 1/3 val loss 0.900  top-1: model 25.0%  make 50.0%" in text
    assert "ETA" in text
