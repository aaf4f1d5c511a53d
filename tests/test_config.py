"""`--config FILE`: TOML or YAML sets options, flags override, mistakes are one-line usage errors."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from carcli.cli import app
from carcli.errors import UsageError
from carcli.train.config import make_config


def test_toml_and_yaml_set_options_and_flags_win(tmp_path):
    toml = tmp_path / "recipe.toml"
    toml.write_text('[train]\narch = "resnet34"\nimg-size = 448\nlr = 1\nmilestones = [10, 20]\nema = true\n')
    yaml = tmp_path / "recipe.yaml"
    yaml.write_text("arch: resnet34\nimg_size: 448\nlr: 1\nmilestones: [10, 20]\nema: true\n")
    for path in (toml, yaml):
        config = make_config({"img_size": 224, "epochs": None}, path)
        assert (config.arch, config.img_size, config.lr, config.milestones, config.ema) == (
            "resnet34",
            224,
            1.0,
            [10, 20],
            True,
        )
        assert config.epochs is None


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("arhc = 'ghostnet'\n", "unknown option 'arhc'"),
        ("epochs = 'ten'\n", "option 'epochs' cannot be"),
        ("ema = 1\n", "option 'ema' cannot be"),
        ("epochs = \n", "cannot be parsed"),
    ],
)
def test_config_mistakes_are_usage_errors(tmp_path, text, words):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UsageError, match=words):
        make_config({}, path)


def test_cli_config_file_is_resolved_into_the_run(tiny_set, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("img_size: 32\nbatch_size: 8\nepochs: 3\nworkers: 0\nschedule: exponential\naugment: light\n")
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny_set), "--config", str(recipe), "--epochs", "1", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "config.json").read_text())
    assert (saved["epochs"], saved["img_size"], saved["schedule"], saved["augment"]) == (1, 32, "exponential", "light")
    assert saved["crop_scale"] == 0.5  # the light preset's value, resolved and recorded
    bad = CliRunner().invoke(app, ["train", "--config", str(tmp_path / "missing.toml")])
    assert bad.exit_code == 2 and "does not exist" in bad.output
