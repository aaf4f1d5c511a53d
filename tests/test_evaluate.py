"""Evaluation core: predictions over samples with the checkpoint's preprocessing, label alignment, top-k."""

from __future__ import annotations

import pytest
import torch

from carcli.data.layouts import load_dataset
from carcli.data.taxonomy import FINE, Taxonomy
from carcli.errors import CarcliError
from carcli.evaluate import align_labels, predict_samples, topk_accuracy
from carcli.models.registry import create_model


def _meta(class_names: list[str]) -> dict:
    taxonomy = Taxonomy.from_class_names(class_names)
    norm = {"mean": [0.5] * 3, "std": [0.5] * 3}
    return {"tasks": taxonomy.tasks, "taxonomy": taxonomy.to_dict(), "img_size": 32, **norm}


def test_predictions_follow_the_checkpoint_class_order(real_folder_set):
    dataset = load_dataset(real_folder_set, 0.2, 0)
    ckpt_names = list(reversed(dataset.class_names))  # the checkpoint lists the same classes in another order
    meta = _meta(ckpt_names)
    tasks = {task: len(names) for task, names in meta["tasks"].items()}
    model = create_model("ghostnet", "mtl", tasks)
    samples = dataset.split("val")
    seen: list[int] = []
    preds = predict_samples(model, meta, samples, dataset.class_names, batch_size=8, progress=seen.append)
    assert seen[-1] == len(samples) and set(preds.probs) == set(tasks)
    for task, probs in preds.probs.items():
        assert probs.shape == (len(samples), tasks[task])
        assert torch.allclose(probs.sum(1), torch.ones(len(samples)), atol=1e-5)
    expected_fine = [ckpt_names.index(dataset.class_names[s.label]) for s in samples]
    assert preds.targets[FINE].tolist() == expected_fine
    make_of = meta["taxonomy"]["fine_to"]["make"]
    assert preds.targets["make"].tolist() == [make_of[i] for i in expected_fine]


def test_unknown_classes_are_refused():
    with pytest.raises(CarcliError, match="not among the checkpoint"):
        align_labels(["Audi S4 Sedan 2012", "Unknown Thing"], _meta(["Audi S4 Sedan 2012", "BMW X3 SUV 2012"]))


def test_topk_accuracy_counts_rows_with_the_truth_among_the_k_best():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.5, 0.4, 0.1]])
    targets = torch.tensor([0, 1, 2])
    assert topk_accuracy(probs, targets, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(probs, targets, 2) == pytest.approx(2 / 3)
    assert topk_accuracy(probs, targets, 10) == 1.0
