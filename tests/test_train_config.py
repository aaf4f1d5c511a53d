"""Training options declared once (carcli.train.config): the names the torch modules act on, checks before torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import fields

import pytest
from typer.testing import CliRunner

from carcli.cli import app
from carcli.errors import UsageError
from carcli.train.config import TrainConfig, check_config, flag_name, make_config


def test_choices_match_the_modules_that_act_on_them():
    from carcli import device
    from carcli.data import transforms
    from carcli.models import heads
    from carcli.train import config as train_config
    from carcli.train import losses, optim

    assert tuple(heads.HEADS) == train_config.HEADS
    assert (train_config.OPTIMIZERS, train_config.SCHEDULES) == (optim.OPTIMIZERS, optim.SCHEDULES)
    assert train_config.LOSSES == losses.LOSSES and train_config.DEVICES == device.DEVICES
    assert tuple(transforms.PRESETS) == train_config.PRESETS and train_config.AUTO_AUGMENTS == transforms.AUTO_AUGMENTS
    assert train_config.AUGMENT_PARTS == transforms.AUGMENT_PARTS


def test_an_unknown_optimizer_never_becomes_adamw():
    import torch

    from carcli.train.config import OPTIMIZERS
    from carcli.train.optim import build_optimizer

    model = torch.nn.Module()
    model.backbone, model.head = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    assert [type(build_optimizer(model, name, 0.1, 0.0)).__name__ for name in OPTIMIZERS] == ["AdamW", "SGD"]
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(model, "adam", 0.1, 0.0)
    with pytest.raises(UsageError, match="--optimizer must be one of"):
        make_config({"optimizer": "adam"})


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"lr": 0.0}, "--lr must be positive"),
        ({"backbone_lr_scale": 11.0}, "--backbone-lr-scale must be in (0, 10]"),
        ({"val_fraction": 1.0}, "--val-fraction must be in [0, 1)"),
        ({"schedule": "linear"}, "unknown schedule 'linear': --schedule must be one of"),
        ({"augment": "heavy"}, "--augment must be one of none, light, standard, strong"),
        ({"auto_augment": "autoaugment"}, "--auto-augment must be one of"),
        ({"arch": "alexnet9000"}, "unknown architecture"),
        ({"milestones": [0, 3]}, "--milestones"),
        ({"weights": "w.pth", "pretrained": True}, "either --weights or --pretrained"),
    ],
)
def test_checks_come_from_the_declaration(options, words):
    with pytest.raises(UsageError) as caught:
        check_config(TrainConfig(**options))
    assert words in str(caught.value)


def test_every_option_is_on_the_command_line_once():
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for item in fields(TrainConfig):
        assert result.output.count(f"{flag_name(item.name)} ") == 1, item.name
    assert "<bool>  " not in result.output.split("--data")[1]  # on/off options are plain flags
    assert "list[" not in result.output and "dict[" not in result.output


@pytest.mark.parametrize("args", [["--epochs", "0"], ["--optimizer", "foo"], ["--arch", "foo"], ["--head", "x"]])
def test_value_errors_come_before_torch_is_imported(args):
    code = (
        "import sys\nfrom carcli.cli import app\n"
        f"code = app(['train', *{args!r}], standalone_mode=False)\n"
        "print(code, 'torch' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["2", "False"], proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:")
