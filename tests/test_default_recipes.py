"""Issue 14's default recipes: which one a run takes, that flags and --config values win, the one line
that names it, and config.json recording every value it gave."""

from __future__ import annotations

import json
from pathlib import Path

import timm
from safetensors.torch import save_file
from typer.testing import CliRunner

from carcli.cli import app
from carcli.train import TrainConfig
from carcli.train.config import check_config
from carcli.train.recipe import DEMO, FINE_TUNE, FROM_SCRATCH, RECIPES, apply_recipe, choose_recipe, recipe_line

TINY_FLAGS = ["--arch", "ghostnet", "--img-size", "32", "--batch-size", "8", "--workers", "0", "--device", "cpu"]


def test_the_start_chooses_the_recipe() -> None:
    assert choose_recipe(TrainConfig(data="cars", weights="lite0.pth")) is FINE_TUNE
    assert choose_recipe(TrainConfig(data="cars", pretrained=True)) is FINE_TUNE
    assert choose_recipe(TrainConfig(data="cars", init="runs/a/best.st")) is FINE_TUNE
    assert choose_recipe(TrainConfig(data="cars")) is FROM_SCRATCH
    assert choose_recipe(TrainConfig()) is DEMO  # no --data: the generated demo set


def test_every_recipe_names_real_options_with_allowed_values() -> None:
    for recipe in RECIPES.values():
        config = TrainConfig(data="cars", epochs=10)
        filled = apply_recipe(config, recipe)
        assert set(filled) == set(recipe.values) - {"epochs"}, recipe.name
        check_config(config)  # every value inside its option's range and choices


def test_a_recipe_fills_only_the_options_left_unset() -> None:
    config = TrainConfig(data="cars", weights="lite0.pth", epochs=20, weight_decay=0.01, ema=False)
    filled = apply_recipe(config, FINE_TUNE)
    assert config.weight_decay == 0.01 and config.ema is False and config.epochs == 20
    assert "weight_decay" not in filled and "ema" not in filled and "epochs" not in filled
    assert config.warmup_epochs == filled["warmup_epochs"] == 2.0  # a tenth of the 20 epochs given
    assert config.schedule == filled["schedule"] == FINE_TUNE.values["schedule"]
    sgd = TrainConfig(data="cars", optimizer="sgd")
    assert "lr" not in apply_recipe(sgd, FROM_SCRATCH) and sgd.lr is None  # the recipes' lr is AdamW's
    line = recipe_line(FINE_TUNE, filled)
    assert line.startswith("recipe fine-tune (a pretrained start") and "weight_decay" not in line
    assert f"schedule {FINE_TUNE.values['schedule']}" in line and "\n" not in line


CAR_TASKS = ("model", "make", "type", "year")


def test_fine_tuning_on_car_names_takes_the_mtl_head() -> None:
    assert apply_recipe(TrainConfig(data="cars", weights="w.pth"), FINE_TUNE, CAR_TASKS)["head"] == "mtl"
    assert apply_recipe(TrainConfig(data="birds", weights="w.pth"), FINE_TUNE, ("model",))["head"] == "linear"
    assert apply_recipe(TrainConfig(data="cars"), FROM_SCRATCH, CAR_TASKS)["head"] == "linear"  # not measured
    given = TrainConfig(data="cars", weights="w.pth", head="mtl-aux")
    assert "head" not in apply_recipe(given, FINE_TUNE, CAR_TASKS) and given.head == "mtl-aux"


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.output


def test_a_run_says_its_recipe_and_config_json_records_every_value(tiny_set: Path, tmp_path: Path) -> None:
    scratch = tmp_path / "scratch"
    code, output = invoke("train", "--data", str(tiny_set), "--epochs", "1", "--weight-decay", "0.01",
                          "--out", str(scratch), *TINY_FLAGS)  # fmt: skip
    assert code == 0, output
    line = next(line for line in output.splitlines() if "recipe " in line)
    assert "recipe from-scratch" in line and "weight_decay" not in line  # given on the command line
    config = json.loads((scratch / "config.json").read_text())
    assert config["weight_decay"] == 0.01
    for name in ("drop_rate", "schedule", "affine_degrees", "label_smoothing", "augment"):
        assert config[name] == FROM_SCRATCH.values[name], name
    assert config["warmup_epochs"] == 0.1  # a tenth of one epoch
    assert config["head"] == "linear"  # from scratch, even on car names

    stage = tmp_path / "stage"
    code, output = invoke("train", "--data", str(tiny_set), "--epochs", "1", "--init", str(scratch / "best.st"),
                          "--out", str(stage), *TINY_FLAGS)  # fmt: skip
    assert code == 0, output
    assert "recipe fine-tune" in output
    config = json.loads((stage / "config.json").read_text())
    for name in ("schedule", "crop_scale", "hflip", "weight_decay", "drop_rate", "ema"):
        assert config[name] == FINE_TUNE.values[name], name
    assert config["head"] == "linear"  # a later stage keeps its checkpoint's head

    tuned = tmp_path / "tuned"  # backbone weights on car class names: the fine-tune recipe's mtl head
    save_file(timm.create_model("ghostnet_100", num_classes=0).state_dict(), tmp_path / "ghostnet.safetensors")
    code, output = invoke("train", "--data", str(tiny_set), "--epochs", "1", "--weights",
                          str(tmp_path / "ghostnet.safetensors"), "--out", str(tuned), *TINY_FLAGS)  # fmt: skip
    assert code == 0, output
    assert "head mtl" in next(line for line in output.splitlines() if "recipe fine-tune" in line)
    assert json.loads((tuned / "config.json").read_text())["head"] == "mtl"
    assert "make" in json.loads((tuned / "metrics.jsonl").read_text().splitlines()[-1])["val_top1"]
