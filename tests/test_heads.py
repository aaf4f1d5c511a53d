"""Heads: output shapes, what feeds what, parameter parity of mtl-aux with linear, and the loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from carcli.errors import UsageError
from carcli.models.heads import create_head
from carcli.train.losses import multitask_loss

TASKS = {"model": 10, "make": 4, "type": 3, "year": 5}
D = 16


def _params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize(
    ("head", "expected"),
    [("linear", {"model": 10}), ("mtl", TASKS), ("mtl-aux", TASKS)],
)
def test_output_shapes(head, expected):
    out = create_head(head, D, TASKS)(torch.randn(6, D))
    assert {t: tuple(z.shape) for t, z in out.items()} == {t: (6, n) for t, n in expected.items()}


def test_mtl_fine_classifier_sees_make_and_type_priors():
    head = create_head("mtl", D, TASKS)
    assert head.classifier("model").in_features == D + TASKS["make"] + TASKS["type"]
    # changing only the make classifier changes the fine logits: the priors really feed it
    features = torch.randn(3, D)
    before = head(features)["model"].detach().clone()
    with torch.no_grad():
        head.classifier("make").weight.add_(1.0)
    assert not torch.allclose(before, head(features)["model"])


def test_mtl_aux_fine_classifier_has_the_linear_heads_parameters():
    linear, aux = create_head("linear", D, TASKS), create_head("mtl-aux", D, TASKS)
    assert _params(aux.classifier("model")) == _params(linear.classifier("model")) == D * 10 + 10
    # the auxiliary heads do not reach the fine logits
    features = torch.randn(3, D)
    before = aux(features)["model"].detach().clone()
    with torch.no_grad():
        aux.classifier("make").weight.add_(1.0)
    assert torch.allclose(before, aux(features)["model"])


def test_multitask_heads_need_coarse_tasks():
    for head in ("mtl", "mtl-aux"):
        with pytest.raises(UsageError, match="--head linear"):
            create_head(head, D, {"model": 5})
    assert set(create_head("linear", D, {"model": 5})(torch.randn(2, D))) == {"model"}


def test_unknown_head_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown head"):
        create_head("quadratic", D, TASKS)


def test_loss_is_weighted_sum_of_cross_entropies():
    torch.manual_seed(0)
    logits = {t: torch.randn(8, n) for t, n in TASKS.items()}
    targets = {t: torch.randint(0, n, (8,)) for t, n in TASKS.items()}
    weights = {"make": 0.5, "year": 0.0}
    total, per_task = multitask_loss(logits, targets, weights, label_smoothing=0.1)
    expected = {t: F.cross_entropy(logits[t], targets[t], label_smoothing=0.1) for t in TASKS}
    for task in TASKS:
        assert torch.isclose(per_task[task], expected[task])
    manual = expected["model"] + 0.5 * expected["make"] + expected["type"]
    assert torch.isclose(total, manual)


def test_gradients_of_aux_losses_reach_the_features():
    head = create_head("mtl-aux", D, TASKS)
    features = torch.randn(4, D, requires_grad=True)
    out = head(features)
    F.cross_entropy(out["make"], torch.zeros(4, dtype=torch.long)).backward()
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert head.classifier("model").weight.grad is None
