"""Resume: an interrupted run continues exactly; Ctrl-C and SIGKILL lose nothing; torchrun runs DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import assert_same_weights

from carcli.errors import CarcliError, Interrupted, UsageError
from carcli.models.builder import load_model
from carcli.progress import Event, SilentReporter
from carcli.train import Step, TrainConfig, resume_config, train
from carcli.train.run_state import read_progress

# a constant learning rate after no warmup: the schedule does not depend on the total number of epochs
TINY = {"arch": "ghostnet", "img_size": 32, "batch_size": 8, "workers": 0, "device": "cpu", "warmup_epochs": 0.0}
CONSTANT = {**TINY, "schedule": "multistep", "augment": "strong", "ema": True}


def _config(data: Path, out: Path, epochs: int) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), epochs=epochs, **CONSTANT)


def test_extending_a_finished_run_equals_one_long_run(tiny_set, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(_config(tiny_set, straight, 2))
    train(_config(tiny_set, resumed, 1))
    with pytest.raises(UsageError, match="finished its 1 epochs"):
        resume_config(resumed, {"epochs": 1})
    train(resume_config(resumed, {"epochs": 2}), resume=True)
    assert_same_weights(straight / "last.st", resumed / "last.st")
    assert_same_weights(straight / "state.st", resumed / "state.st")
    lines = [json.loads(x) for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2]


class _CtrlCAfter(SilentReporter):
    """Sends this process a SIGINT after `steps` training steps, as a user's Ctrl-C would."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def progress(self, event: Event) -> None:
        if not isinstance(event, Step):
            return
        self.steps -= 1
        if self.steps == 0:
            os.kill(os.getpid(), signal.SIGINT)


def test_ctrl_c_mid_epoch_saves_a_state_that_resumes_exactly(tiny_set, tmp_path):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    train(_config(tiny_set, straight, 2))
    handler = signal.getsignal(signal.SIGINT)  # the default, or SIG_IGN in a background job
    with pytest.raises(Interrupted, match="--resume"):
        train(_config(tiny_set, stopped, 2), _CtrlCAfter(steps=8))  # 6 steps per epoch: stops in epoch 2
    progress = read_progress(stopped)
    assert (progress.epoch, progress.step) == (1, 2)
    train(resume_config(stopped, {}), resume=True)
    assert_same_weights(straight / "last.st", stopped / "last.st")
    assert signal.getsignal(signal.SIGINT) is handler  # the handler is given back


def test_resume_refuses_changed_options_and_non_runs(tiny_set, tmp_path):
    with pytest.raises(CarcliError, match="not a carcli run folder"):
        resume_config(tmp_path, {})
    run = tmp_path / "run"
    train(_config(tiny_set, run, 1))
    with pytest.raises(UsageError, match="--lr"):
        resume_config(run, {"epochs": 3, "lr": 0.5})


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "carcli", *args]


def _start(tiny_set: Path, run: Path, epochs: int) -> subprocess.Popen:
    args = ["train", "--data", str(tiny_set), "--out", str(run), "--epochs", str(epochs), "--img-size", "32"]
    args += ["--batch-size", "4", "--workers", "1", "--device", "cpu"]
    return subprocess.Popen(_cli(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_epochs(run: Path, epochs: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run / "metrics.jsonl"
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= epochs and (run / "state.st").is_file():
            return
        assert process.poll() is None, process.communicate()[0]
        time.sleep(0.2)
    pytest.fail("the run did not reach its first epoch in time")


def _finish_with_resume(run: Path, epochs: int) -> None:
    done = subprocess.run(_cli("train", "--resume", str(run)), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == list(range(1, epochs + 1))
    assert load_model(run / "best.st")[1].train_option("epochs", None) == epochs


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_a_killed_run_resumes_to_the_end(tiny_set, tmp_path, sig):
    run, epochs = tmp_path / "run", 3
    process = _start(tiny_set, run, epochs)
    _wait_for_epochs(run, 1, process)
    before = {name: (run / name).read_bytes() for name in ("best.st", "config.json")}
    process.send_signal(sig)
    output = process.communicate(timeout=120)[0]
    if sig == signal.SIGINT:
        assert process.returncode == 130 and "--resume" in output and "Traceback" not in output
    else:
        assert process.returncode == -signal.SIGKILL
    load_model(run / "last.st")  # nothing half-written
    read_progress(run)
    assert (run / "config.json").read_bytes() == before["config.json"]
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temporary file left behind
    _finish_with_resume(run, epochs)


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tiny_set, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "carcli"]
    command += ["train", "--data", str(tiny_set), "--out", str(run), "--epochs", "2", "--img-size", "32"]
    command += ["--batch-size", "4", "--workers", "0", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    # 48 training images, 24 per process, batches of 4: 6 steps per epoch on each process
    assert read_progress(run).global_step == 2 * 6
    assert done.stdout.count("epoch 2/2: train loss") == 1  # only rank 0 reports (one end-of-epoch line)
    config = json.loads((run / "config.json").read_text())
    assert config["run"]["processes"] == 2
    load_model(run / "best.st")
