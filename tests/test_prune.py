"""Pruning: magnitude sparsity equals the rate, channel pruning really shrinks the model and reloads, sweeps, CLI."""

from __future__ import annotations

import csv

import pytest
import torch
from typer.testing import CliRunner

from carcli.checkpoint import load_checkpoint, save_checkpoint
from carcli.cli import app
from carcli.measure import count_parameters
from carcli.models.builder import load_model
from carcli.models.pruned import apply_pruning, fold_masks, pruned_metadata, weight_sparsity
from carcli.prune import prune_checkpoint, sweep

runner = CliRunner()


def _outputs(model: torch.nn.Module, size: int) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("rate", [0.3, 0.75])
def test_magnitude_sparsity_equals_the_rate_and_survives_saving(untrained_members, tmp_path, rate):
    model, meta = load_model(untrained_members[0])
    assert weight_sparsity(model) < 0.01
    apply_pruning(model, "magnitude", rate, meta.img_size)
    assert weight_sparsity(model) == pytest.approx(rate, abs=0.01)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())  # made permanent
    save_checkpoint(tmp_path / "m.st", model.state_dict(), pruned_metadata(model, meta, "magnitude", rate))
    reloaded, reloaded_meta = load_model(tmp_path / "m.st")
    assert weight_sparsity(reloaded) == pytest.approx(rate, abs=0.01)
    assert reloaded_meta.pruned["method"] == "magnitude" and "structure" not in reloaded_meta.pruned


def test_masks_fold_into_plain_weights():
    layer = torch.nn.Linear(4, 3)
    torch.nn.utils.prune.l1_unstructured(layer, "weight", amount=0.5)
    folded = fold_masks(layer.state_dict())
    assert set(folded) == {"weight", "bias"}
    assert torch.equal(folded["weight"], layer.weight)
    assert int((folded["weight"] == 0).sum()) == 6


def test_channel_pruning_shrinks_the_model_and_reloads_through_load_model(untrained_members, tmp_path):
    model, meta = load_model(untrained_members[0])
    before = count_parameters(model)[0]
    apply_pruning(model, "channel", 0.4, meta.img_size)
    after = count_parameters(model)[0]
    assert after < 0.6 * before
    expected = _outputs(model, 64)
    pruned_meta = pruned_metadata(model, meta, "channel", 0.4)
    assert pruned_meta.pruned["structure"]  # new channel counts recorded
    save_checkpoint(tmp_path / "c.st", model.state_dict(), pruned_meta)
    reloaded, _ = load_model(tmp_path / "c.st")
    assert count_parameters(reloaded)[0] == after
    got = _outputs(reloaded, 64)
    shapes = {task: tuple(t.shape) for task, t in got.items()}
    assert shapes == {"model": (2, 5), "make": (2, 3), "type": (2, 4), "year": (2, 2)}
    for task in expected:
        torch.testing.assert_close(got[task], expected[task])


def test_prune_checkpoint_reports_before_and_after(untrained_members, real_folder_set, tmp_path):
    result = prune_checkpoint(untrained_members[1], real_folder_set, "channel", 0.5, out=tmp_path / "p.st")
    assert result.after.parameters < result.before.parameters
    assert result.after.file_bytes == (tmp_path / "p.st").stat().st_size < result.before.file_bytes
    assert set(result.before.top1) == set(result.after.top1) == {"model"}  # a linear head predicts the fine task
    assert result.before.latency_ms > 0 and result.after.latency_ms > 0
    assert [row[0] for row in result.rows()][:4] == [
        "parameters",
        "non-zero parameters",
        "file size",
        "CPU latency / image, 1 thread",
    ]


def test_sweep_writes_a_table_and_a_plot(untrained_members, real_folder_set, tmp_path):
    lines: list[str] = []
    out = tmp_path / "sweep.csv"
    result = sweep(untrained_members[1], real_folder_set, "magnitude", out, lines.append, rates=(0.2, 0.6))
    assert result.rates == [0.0, 0.2, 0.6] and len(lines) == 3
    assert result.nonzero == sorted(result.nonzero, reverse=True)
    rows = list(csv.reader((tmp_path / "sweep.csv").open()))
    assert rows[0] == ["task", "0", "0.2", "0.6"]
    assert rows[1][0] == "model" and all(0 <= float(v) <= 1 for v in rows[1][1:])
    assert (tmp_path / "sweep.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        ([], 2, "either --rate R or --sweep"),
        (["--rate", "0.5", "--sweep"], 2, "either --rate R or --sweep"),
        (["--rate", "1.5"], 2, "--rate must be between 0 and 1"),
        (["--rate", "0.5", "--method", "random"], 2, "--method must be one of"),
        (["--sweep", "--finetune-epochs", "1"], 2, "--finetune-epochs needs --rate"),
    ],
)
def test_bad_flags_are_one_line(untrained_members, real_folder_set, args, code, words):
    result = runner.invoke(app, ["prune", str(untrained_members[0]), "--data", str(real_folder_set), *args])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code and len(lines) == 1 and words in lines[0], result.output


def test_the_checkpoint_is_never_overwritten(untrained_members, real_folder_set):
    original = untrained_members[0].read_bytes()
    args = ["prune", str(untrained_members[0]), "--data", str(real_folder_set), "--rate", "0.5"]
    result = runner.invoke(app, [*args, "-o", str(untrained_members[0])])
    assert result.exit_code == 2 and "overwrite" in result.output
    assert untrained_members[0].read_bytes() == original


@pytest.mark.parametrize("method", ["magnitude", "channel"])
def test_finetuning_keeps_the_pruned_shape(untrained_members, real_folder_set, tmp_path, method):
    out = tmp_path / "ft.st"
    args = ["prune", str(untrained_members[0]), "--data", str(real_folder_set), "--method", method, "--rate", "0.5"]
    result = runner.invoke(app, [*args, "--finetune-epochs", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "before" in result.output and "after" in result.output and "model top-1" in result.output
    assert (tmp_path / "ft-finetune" / "metrics.jsonl").exists()
    model, meta = load_model(out)
    assert meta.pruned["method"] == method and meta.train["epochs"] == 1
    state, _ = load_checkpoint(tmp_path / "ft-finetune" / "last.st")
    assert not any(key.endswith("_mask") for key in state)  # the run folder's files load like any checkpoint
    if method == "magnitude":  # training could not regrow the pruned weights
        assert weight_sparsity(model) == pytest.approx(0.5, abs=0.01)
    else:
        assert count_parameters(model)[0] < count_parameters(load_model(untrained_members[0])[0])[0]
