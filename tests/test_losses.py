"""The loss registry: each entry's fields against hand-computed values, and the one unknown-name message."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipschitz_lightning.math.losses import LOSSES, HalfMSELoss, get_loss


def test_registry_names():
    assert list(LOSSES) == ["softmax_ce", "bce", "mse"]
    assert all(get_loss(name).name == name for name in LOSSES)


def test_softmax_ce_entry():
    loss = get_loss("softmax_ce")
    assert loss.coefficient(10, 4.0, 0.0, 0.0) == pytest.approx(9 / 40)  # (k-1)/(k m)
    assert loss.hessian_factor == 0.5
    assert isinstance(loss.criterion(), nn.CrossEntropyLoss)
    assert loss.target_dtype is torch.int64
    assert loss.is_classification and loss.metric == "multiclass"
    assert (loss.num_outputs(5), loss.num_classes(5)) == (5, 5)
    assert not loss.bound_needs_targets
    t = loss.targets([0, 2, 1])
    assert t.dtype is torch.int64 and t.tolist() == [0, 2, 1]
    assert loss.decide(torch.tensor([[0.1, 2.0], [3.0, -1.0]])).tolist() == [1, 0]
    curvature = loss.curvature(torch.log(torch.tensor([[0.6, 0.3, 0.1]])))
    assert curvature.item() == pytest.approx(0.48)  # min(max p, max 2p(1-p))


def test_bce_entry():
    loss = get_loss("bce")
    assert loss.coefficient(2, 4.0, 0.0, 0.0) == pytest.approx(1 / 8)  # 1/(2m)
    assert loss.hessian_factor == 0.25
    assert isinstance(loss.criterion(), nn.BCEWithLogitsLoss)
    assert loss.target_dtype is torch.float32
    assert loss.is_classification and loss.metric == "binary"
    assert (loss.num_outputs(2), loss.num_classes(2)) == (1, 2)
    assert loss.single_output and not loss.bound_needs_targets
    t = loss.targets([0, 1, 1])
    assert t.dtype is torch.float32 and t.shape == (3, 1)
    assert loss.decide(torch.tensor([[-0.5], [0.5]])).tolist() == [False, True]
    assert loss.curvature(torch.zeros(3, 1)).tolist() == [0.25] * 3
    logits, target, preds, labels = loss.prepare(torch.zeros(2, 1), torch.tensor([[1.0], [0.0]]))
    assert logits.shape == (2,) and preds.tolist() == [0.5, 0.5] and labels.tolist() == [1, 0]


def test_mse_entry():
    loss = get_loss("mse")
    assert loss.coefficient(1, 4.0, 3.0, 1.0) == pytest.approx(0.5)  # (K_a - |y|)/m
    assert loss.hessian_factor is None and loss.curvature is None
    assert isinstance(loss.criterion(), HalfMSELoss)
    assert loss.criterion()(torch.tensor([[2.0]]), torch.tensor([[0.0]])).item() == pytest.approx(2.0)  # (a-y)^2 / 2
    assert loss.target_dtype is torch.float32
    assert not loss.is_classification and loss.metric is None and loss.decide is None
    assert (loss.num_outputs(7), loss.num_classes(7)) == (1, 0)
    assert loss.bound_needs_targets
    t = loss.targets([0.5, 1.5], torch.float64)
    assert t.dtype is torch.float64 and t.shape == (2, 1)


def test_unknown_loss_message():
    with pytest.raises(ValueError) as exc:
        get_loss("hinge")
    assert str(exc.value) == "unknown loss 'hinge'; expected one of ['softmax_ce', 'bce', 'mse']"
    with pytest.raises(ValueError, match=r"^LipschitzLR: unknown loss 'hinge'; expected one of"):
        get_loss("hinge", "LipschitzLR")
