"""Ensembles: the file's predictions are the members' weighted mean; weights on the simplex; refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import write_untrained_checkpoint
from typer.testing import CliRunner

from carcli.checkpoint import read_metadata
from carcli.cli import app
from carcli.ensemble import build_ensemble, fit_weights
from carcli.errors import CarcliError
from carcli.inference import eval_samples, predict_samples
from carcli.models.builder import load_model

runner = CliRunner()


def _probs(path, samples, class_names):
    model, meta = load_model(path)
    return predict_samples(model, meta, samples, class_names).probs


def test_mean_ensemble_equals_the_average_of_its_members(untrained_members, real_folder_set, tmp_path):
    a, b, _ = untrained_members  # both 64 px, each with its own mean/std
    out = tmp_path / "ens.st"
    result = build_ensemble([a, b], real_folder_set, "mean", out)
    samples, class_names, split = eval_samples(read_metadata(a), real_folder_set)
    assert split == "val" and result.images == len(samples) == 20
    pa, pb = _probs(a, samples, class_names), _probs(b, samples, class_names)
    ensemble = _probs(out, samples, class_names)
    assert set(ensemble) == {"model"}  # b's linear head predicts only the fine task
    torch.testing.assert_close(ensemble["model"], (pa["model"] + pb["model"]) / 2, atol=1e-5, rtol=0)
    assert result.weights == [0.5, 0.5]
    assert result.rows()[-1][0] == "ensemble (mean)"


def test_members_of_different_sizes_each_get_their_own_input(untrained_members, real_folder_set, tmp_path):
    a, _, c = untrained_members  # 64 px and 48 px
    result = build_ensemble([c, a], real_folder_set, "mean", tmp_path / "mixed.st")
    model, meta = load_model(tmp_path / "mixed.st")
    assert meta.img_size == 64 and meta.mean == [0.0, 0.0, 0.0] and meta.std == [1.0, 1.0, 1.0]
    assert [m.img_size for m in meta.members] == [48, 64]
    assert result.tasks == ["model", "make", "type", "year"]
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model(images)
        member_c = model.member0(model.member_inputs(images, 0))
    assert model.member_inputs(images, 0).shape == (2, 3, 48, 48)
    expected = (member_c["make"].softmax(1) + model.member1(model.member_inputs(images, 1))["make"].softmax(1)) / 2
    torch.testing.assert_close(out["make"].exp(), expected, atol=1e-5, rtol=0)


def test_weighted_weights_lie_on_the_simplex_and_favour_the_better_member():
    rng = np.random.default_rng(0)
    good = rng.uniform(0.6, 0.9, 200)  # probability each member gives the true class, per sample
    poor = rng.uniform(0.05, 0.3, 200)
    for method in ("weighted", "greedy"):
        weights = fit_weights(method, {"model": np.stack([poor, good, poor])})
        assert weights.sum() == pytest.approx(1.0, abs=1e-9) and (weights >= 0).all()
        assert weights[1] == weights.max() > 0.5


def test_complementary_members_share_the_weight():
    # member 0 is right on the first half, member 1 on the second: the mixture beats either alone
    first = np.r_[np.full(50, 0.9), np.full(50, 0.05)]
    weights = fit_weights("weighted", {"model": np.stack([first, first[::-1]])})
    assert weights == pytest.approx([0.5, 0.5], abs=0.01)


def test_weighted_ensemble_file_holds_weights_that_sum_to_one(untrained_members, real_folder_set, tmp_path):
    args = ["ensemble", *map(str, untrained_members), "--data", str(real_folder_set), "--method", "weighted"]
    result = runner.invoke(app, [*args, "-o", str(tmp_path / "w.st")])
    assert result.exit_code == 0, result.output
    assert "ensemble (weighted)" in result.output and "fitted on the same" in result.output
    meta = read_metadata(tmp_path / "w.st")
    assert sum(meta.weights) == pytest.approx(1.0) and all(w > 0 for w in meta.weights)
    assert meta.ensemble["method"] == "weighted"


def test_greedy_leaves_unselected_members_out_of_the_file(untrained_members, real_folder_set, tmp_path):
    a = untrained_members[0]
    result = build_ensemble([a, a], real_folder_set, "greedy", tmp_path / "g.st")
    assert sorted(result.weights) == [0.0, 1.0]  # a tie: the first pick is kept, its twin never helps
    assert len(read_metadata(tmp_path / "g.st").members) == 1


def test_different_class_lists_are_refused(untrained_members, real_folder_set, tmp_path):
    other = write_untrained_checkpoint(tmp_path / "other.st", ["Audi S4 Sedan 2012", "BMW X3 SUV 2012"])
    with pytest.raises(CarcliError, match="different class list"):
        build_ensemble([untrained_members[0], other], real_folder_set, "mean", tmp_path / "e.st")
    result = runner.invoke(app, ["ensemble", str(untrained_members[0]), str(other), "--data", str(real_folder_set)])
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and "different class list" in lines[0]
    assert not (tmp_path / "e.st").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [(["--method", "median"], "--method must be one of"), (["--rate", "1"], "No such option")],
)
def test_bad_flags(untrained_members, real_folder_set, args, words):
    result = runner.invoke(app, ["ensemble", *map(str, untrained_members[:2]), "--data", str(real_folder_set), *args])
    assert result.exit_code == 2 and words in result.output


def test_one_member_is_not_an_ensemble(untrained_members, real_folder_set):
    result = runner.invoke(app, ["ensemble", str(untrained_members[0]), "--data", str(real_folder_set)])
    assert result.exit_code == 2 and "two or more" in result.output


def test_a_channel_pruned_member_loads_inside_the_ensemble(untrained_members, real_folder_set, tmp_path):
    from carcli.checkpoint import save_checkpoint
    from carcli.models.pruned import apply_pruning, pruned_metadata

    model, meta = load_model(untrained_members[1])
    apply_pruning(model, "channel", 0.5, meta.img_size)
    save_checkpoint(tmp_path / "small.st", model.state_dict(), pruned_metadata(model, meta, "channel", 0.5))
    build_ensemble([untrained_members[1], tmp_path / "small.st"], real_folder_set, "mean", tmp_path / "e.st")
    ensemble, _ = load_model(tmp_path / "e.st")
    widths = [m.head.classifier("model").in_features for m in (ensemble.member0, ensemble.member1)]
    assert widths[1] < widths[0]  # the pruned member keeps its narrower features
    with torch.no_grad():
        assert ensemble(torch.rand(1, 3, 64, 64))["model"].shape == (1, 5)


def test_repeated_file_names_show_their_folder():
    from pathlib import Path

    from carcli.ensemble import display_names

    assert display_names([Path("r1/best.st"), Path("r2/best.st")]) == ["r1/best.st", "r2/best.st"]
    assert display_names([Path("r/a.st"), Path("r/b.st")]) == ["a.st", "b.st"]
