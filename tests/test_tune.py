"""`carcli tune`: space-file errors before training, pruned and failed trials, best.toml, kills and reruns,
and two processes sharing one study on a throwaway PostgreSQL server."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carcli.cli import app
from carcli.errors import CarcliError, UsageError
from carcli.progress import Event, SilentReporter
from carcli.train.config import from_cli
from carcli.tune import TrialEnd, TuneRequest, tune

pytest.importorskip("optuna")
TINY = {"arch": "timm:test_efficientnet", "img_size": 32, "batch_size": 16, "workers": 0, "epochs": 1}
TINY_FLAGS = ["--arch", "timm:test_efficientnet", "--img-size", "32", "--batch-size", "16", "--workers", "0"]


class Quiet(SilentReporter):
    """A Reporter that keeps the lines and the trials' ends it is told."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str) -> None:
        self.lines.append(message)

    warn = info

    def progress(self, event: Event) -> None:
        if isinstance(event, TrialEnd):
            self.lines.append(f"trial {event.row.number} {event.row.state}")


def _space(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(text)
    return path


def _request(data: Path, out: Path, trials: int, space: Path | None, **options) -> TuneRequest:
    return TuneRequest({"data": str(data), **TINY, **options}, trials, space_file=space, out=out)


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "trials.csv").open()))


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("lrr = {low = 1e-4, high = 1e-2}\n", "unknown option 'lrr'"),
        ("lr = {low = 1e-2, high = 1e-4}\n", "low (0.01) must be below high"),
        ("drop-rate = {low = 0.2, high = 1.5}\n", "leaves --drop-rate's allowed values"),
        ("lr = {low = 0, high = 0.1, log = true}\n", "--lr's allowed values (positive)"),
        ("augment = {choices = ['standard', 'brutal']}\n", "unknown augment 'brutal'"),
        ("epochs = {low = 1.5, high = 3}\n", "epochs cannot be 1.5"),
        ("data = {choices = ['a', 'b']}\n", "--data cannot be searched"),
        ("lr = 0.1\n", "lr must be {low"),
        ("lr = {low = 1e-4}\n", "needs both low and high"),
        ("lr = {low = 1e-4, high = \n", "cannot be parsed"),
        ("epochs = {low = 1, high = 2}\n", "--epochs is given as a fixed flag and searched"),
    ],
)
def test_space_mistakes_are_one_line_errors_before_training(tiny_set, tmp_path, text, words):
    out = tmp_path / "tune"
    with pytest.raises(UsageError) as caught:
        tune(_request(tiny_set, out, 2, _space(tmp_path, text)), Quiet())
    assert words in str(caught.value) and "\n" not in str(caught.value)
    assert not (out / "trials").exists()


def test_cli_errors_are_one_line(tmp_path):
    space = _space(tmp_path, "weight-decay = {low = 0.1, high = 0.01}\n")
    result = CliRunner().invoke(app, ["tune", "--trials", "2", "--space", str(space), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "weight_decay: low (0.1) must be below high" in lines[0]
    assert CliRunner().invoke(app, ["tune", "--trials", "2", "--pruner", "sometimes"]).exit_code == 2
    assert "--study" in CliRunner().invoke(app, ["tune", "--trials", "2", "--storage", "sqlite:///x.db"]).output


def test_tune_accepts_every_train_option():
    train_help = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    tune_help = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"}).output
    flags = {word for word in train_help.split() if word.startswith("--")} - {"--out", "--resume"}
    assert flags and flags <= {word for word in tune_help.split() if word.startswith("--")}


@pytest.mark.slow
def test_best_toml_reproduces_the_best_trial_and_a_rerun_only_reports(tiny_set, tmp_path):
    out = tmp_path / "tune"
    space = _space(tmp_path, "lr = {low = 1e-3, high = 1e-2, log = true}\naugment = {choices = ['none', 'light']}\n")
    result = tune(_request(tiny_set, out, 2, space), Quiet())
    assert result.ran == 2 and [r.state for r in result.rows] == ["complete", "complete"]
    rows = _rows(out)
    assert [r["number"] for r in rows] == ["0", "1"] and {"lr", "augment", "top1_model", "epochs"} <= set(rows[0])
    assert {"trials.csv", "best.toml", "history.png", "importance.png"} <= {p.name for p in out.iterdir()}
    best = max(result.rows, key=lambda r: r.value or 0)
    trial_config = json.loads((out / "trials" / f"{best.number:03d}" / "config.json").read_text())

    run = tmp_path / "again"
    done = CliRunner().invoke(app, ["train", "--config", str(out / "best.toml"), "--out", str(run)])
    assert done.exit_code == 0, done.output
    again = json.loads((run / "config.json").read_text())
    for config in (trial_config, again):
        config.pop("out"), config.pop("run")
    assert again == trial_config and again["lr"] == best.params["lr"]

    rerun = tune(_request(tiny_set, out, 2, space), Quiet())
    assert rerun.ran == 0 and len(rerun.rows) == 2


@pytest.mark.slow
def test_pruned_and_failed_trials_are_recorded_and_the_search_goes_on(tiny_set, tmp_path, monkeypatch):
    import optuna

    import carcli.train
    import carcli.tune

    real_train = carcli.train.train

    def failing_first(config, reporter):
        if config.out.endswith("000"):
            raise CarcliError("the loss became nan (not finite); the run stopped")
        return real_train(config, reporter)

    monkeypatch.setattr(carcli.train, "train", failing_first)
    monkeypatch.setattr(carcli.tune, "_pruner", lambda *args: optuna.pruners.ThresholdPruner(lower=2.0))
    out = tmp_path / "tune"
    space = _space(tmp_path, "lr = {low = 1e-3, high = 1e-2}\n")
    result = tune(_request(tiny_set, out, 2, space, epochs=2), Quiet())
    assert [(r.state, r.epochs) for r in result.rows] == [("fail", 0), ("pruned", 1)]
    rows = _rows(out)
    assert "loss became nan" in rows[0]["error"] and rows[1]["state"] == "pruned"
    pruned = out / "trials" / "001"
    assert len((pruned / "metrics.jsonl").read_text().splitlines()) == 1 and (pruned / "last.st").is_file()
    assert not (out / "best.toml").exists()  # no trial completed


def _tune_command(data: Path, out: Path, trials: int, *extra: str) -> list[str]:
    space = out.parent / "space.toml"
    space.write_text("lr = {low = 1e-3, high = 1e-2, log = true}\n")
    flags = ["--data", str(data), *TINY_FLAGS, "--trials", str(trials), "--space", str(space), "--out", str(out)]
    return [sys.executable, "-m", "carcli", "tune", *flags, *extra]


@pytest.mark.slow
def test_a_killed_study_continues_where_it_stopped(tiny_set, tmp_path):
    out = tmp_path / "tune"
    command = _tune_command(tiny_set, out, 2, "--epochs", "2")
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "trials" / "001" / "metrics.jsonl").is_file():  # trial 1 is half way
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    states = {int(r["number"]): r["state"] for r in _rows(out)}
    assert states == {0: "complete", 1: "interrupted", 2: "complete"}
    assert "best trials of 2" in finished.stdout


# ------------------------------------------------------------ two processes, one PostgreSQL study


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


@pytest.fixture
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (Debian's postgresql package), removed afterwards."""
    import shutil
    import socket
    import tempfile

    bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not bins:
        if os.environ.get("CI") == "true":
            pytest.fail("PostgreSQL is not installed; .ci/run installs the postgresql package")
        pytest.skip("PostgreSQL binaries (Debian's postgresql package) are not installed")
    bindir = bins[-1].parent
    home = Path(tempfile.mkdtemp(prefix="carcli-pg-"))
    if os.geteuid() == 0:
        shutil.chown(home, "postgres")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    data, options = home / "data", f"-p {port} -k {home} -c listen_addresses=127.0.0.1 -F"
    run = {"check": True, "capture_output": True, "timeout": 120}
    subprocess.run(_as_postgres(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-N"), **run)
    subprocess.run(_as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(home / "log"), "-o", options, "-w",
                                "start"), **run)  # fmt: skip
    try:
        subprocess.run(_as_postgres(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
                                    "carcli"), **run)  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/carcli"
    finally:
        subprocess.run(_as_postgres(str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"), **run)
        shutil.rmtree(home, ignore_errors=True)


@pytest.mark.slow
def test_two_processes_share_one_postgresql_study(tiny_set, tmp_path, postgres_url):
    shared = ["--storage", postgres_url, "--study", "shared", "--epochs", "1", "--pruner", "none"]
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    commands = [_tune_command(tiny_set, tmp_path / name / "tune", 4, *shared) for name in ("a", "b")]
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
    outputs = [proc.communicate(timeout=400) for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs
    ran = [sorted(p.name for p in (tmp_path / name / "tune" / "trials").iterdir()) for name in ("a", "b")]
    assert sorted(ran[0] + ran[1]) == ["000", "001", "002", "003"]  # every trial once, shared between both
    import optuna

    study = optuna.load_study(study_name="shared", storage=postgres_url.replace("postgresql:", "postgresql+psycopg2:"))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert {t.state.name for t in study.trials} == {"COMPLETE"}


def test_from_cli_keeps_unset_options_unset():
    assert from_cli({"lr": None, "milestones": "3,5", "data": Path("x")}) == {
        "lr": None,
        "milestones": [3, 5],
        "data": "x",
    }
