"""Usage errors answer before torch is imported, as one line with nothing printed before it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from carcli.cli import app

PROBE = """
import json, sys
from carcli.cli import app
code = app(sys.argv[1:], standalone_mode=False)
print(json.dumps({"code": code, "torch": "torch" in sys.modules}), file=sys.stderr)
"""


def _run_cli(args: list[str], cwd: Path) -> tuple[int, bool, list[str]]:
    """(exit code, whether torch was imported, the lines printed before the probe's own) of `carcli ARGS`."""
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=cwd, env=env, capture_output=True, text=True)
    *lines, probe = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
    answer = json.loads(probe)
    return answer["code"], answer["torch"], lines


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["eval", "missing.st"], 1, "checkpoint not found: missing.st"),
        (["eval", "model.st", "--split", "tests"], 2, "--split must be one of val, test, all"),
        (["eval", "model.st", "--data", "nowhere"], 1, "data set not found: nowhere"),
        (["eval", "model.st", "--tta", "--crop", "cam"], 2, "cannot be combined"),
        (["predict", "x.jpg", "--model", "missing.st"], 1, "checkpoint not found"),
        (["predict", "x.jpg"], 1, "no --model given and no best.st under runs/"),
        (["predict", "x.jpg", "--top-k", "0"], 2, "--top-k must be at least 1"),
        (["predict", "x.jpg", "--device", "tpu"], 2, "--device must be one of"),
        (["predict", "x.jpg", "--json", "true"], 2, "on/off options such as --json take no value"),
        (["bench"], 2, "give either a CHECKPOINT or --arch NAME"),
        (["bench", "--arch", "alexnet9000"], 2, "unknown architecture"),
        (["bench", "model.st", "--img-size", "8"], 2, "--img-size must be at least 32"),
        (["export", "missing.st", "--format", "onnx"], 1, "checkpoint not found"),
        (["export", "model.st", "--format", "tflite"], 2, "--format must be one of"),
        (["prune", "missing.st", "--rate", "0.5"], 1, "checkpoint not found"),
        (["prune", "model.st", "--rate", "1.5"], 2, "--rate must be between 0 and 1"),
        (["prune", "model.st"], 2, "give either --rate R or --sweep"),
        (["ensemble", "model.st", "missing.st"], 1, "checkpoint not found: missing.st"),
        (["ensemble", "model.st", "model.st", "--method", "vote"], 2, "--method must be one of"),
    ],
)
def test_usage_errors_come_before_torch_and_alone(tmp_path, args, code, words):
    (tmp_path / "model.st").write_bytes(b"not read: the values are refused first")
    exit_code, torch_loaded, lines = _run_cli(args, tmp_path)
    assert exit_code == code
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:") and words in lines[0]
    assert not torch_loaded


def test_an_unknown_arch_is_refused_before_the_demo_set_notice(tmp_path, monkeypatch):
    monkeypatch.setenv("CARCLI_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["train", "--arch", "alexnet9000", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown architecture" in lines[0], result.output
    assert not (tmp_path / "home").exists()  # the demo set was not generated either


def test_ctrl_c_is_not_labelled_an_error(monkeypatch):
    from carcli import usage
    from carcli.errors import Interrupted

    def stop(*args: object) -> None:
        raise Interrupted("interrupted in epoch 2; resumable state saved")

    monkeypatch.setattr(usage, "check_export", stop)
    result = CliRunner().invoke(app, ["export", "x.st", "--format", "onnx"])
    assert result.exit_code == 130
    assert "stopped: interrupted in epoch 2" in result.output and "error" not in result.output


COMMANDS = ["fetch-data", "train", "eval", "predict", "prune", "ensemble", "export", "bench", "archs", "serve", "tune"]


@pytest.mark.parametrize("command", [None, *COMMANDS])
def test_help_names_values_plainly(command):
    """No `<bool>` after on/off flags, no Python types such as `<list[Path]>`, no `{checkpoint}` in usage lines."""
    result = CliRunner().invoke(app, [*([command] if command else []), "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for leftover in ("<bool>", "<list[", "{"):
        assert leftover not in result.output, (command, leftover)
