"""Model contract, parameter counts against the papers, and argument validation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lipschitz_lightning.models import (
    MLP,
    CifarResNet,
    DenseNet,
    LinearRegression,
    LogisticRegression,
    MnistCNN,
    PreActResNet,
    SoftmaxRegression,
)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize(
    ("factory", "expected"),
    [
        (lambda: MnistCNN((1, 28, 28), 10), 730_000),  # paper section 7.3.1: "730K parameters"
        (lambda: CifarResNet((3, 32, 32), 10, depth=20), 270_000),  # He et al. 2016: 0.27M
        (lambda: CifarResNet((3, 32, 32), 10, depth=56), 850_000),  # He et al. 2016: 0.85M
        (lambda: PreActResNet((3, 32, 32), 10, depth=164), 1_700_000),  # He et al. (v2): 1.7M
        (lambda: DenseNet((3, 32, 32), 10, depth=40, growth_rate=12), 1_000_000),  # Huang et al.: 1.0M
    ],
    ids=["mnist_cnn", "resnet20", "resnet56", "resnet164", "densenet40"],
)
def test_parameter_counts_match_papers(factory, expected: int) -> None:
    assert _num_params(factory()) == pytest.approx(expected, rel=0.02)


def test_mnist_cnn_exact_count() -> None:
    # 320 + 9,248 + 18,496 + 36,928 + 73,856 (convs) + 589,952 (dense) + 256 (BN) + 1,290 (head)
    assert _num_params(MnistCNN((1, 28, 28), 10)) == 730_346


def test_classical_counts() -> None:
    assert _num_params(SoftmaxRegression((1, 28, 28), 10)) == 784 * 10 + 10
    assert _num_params(LogisticRegression((30,))) == 31
    assert _num_params(LinearRegression((10,), 2)) == 22


# Small inputs keep the forwards cheap; the big nets run at 3x8x8 / 3x16x16.
CASES = [
    ("mnist_cnn", lambda: MnistCNN((1, 28, 28), 10), (1, 28, 28), 10),
    ("mnist_cnn_min", lambda: MnistCNN((1, 8, 8), 3), (1, 8, 8), 3),
    ("mnist_cnn_rect", lambda: MnistCNN((3, 12, 20), 4), (3, 12, 20), 4),
    ("resnet20", lambda: CifarResNet((3, 16, 16), 10), (3, 16, 16), 10),
    ("resnet8_bn", lambda: CifarResNet((1, 8, 8), 5, depth=8, shortcut_bn=True), (1, 8, 8), 5),
    ("resnet164", lambda: PreActResNet((3, 8, 8), 100), (3, 8, 8), 100),
    ("preact29", lambda: PreActResNet((3, 16, 16), 7, depth=29), (3, 16, 16), 7),
    ("densenet40", lambda: DenseNet((3, 8, 8), 10), (3, 8, 8), 10),
    ("densenet_drop", lambda: DenseNet((3, 16, 16), 2, depth=10, growth_rate=4, dropout=0.2), (3, 16, 16), 2),
    ("mlp_image", lambda: MLP((1, 8, 8), 10, hidden_sizes=(32, 16), dropout=0.1), (1, 8, 8), 10),
    ("mlp_tabular", lambda: MLP((13,), 3), (13,), 3),
    ("mlp_no_hidden", lambda: MLP((4,), 1, hidden_sizes=()), (4,), 1),
    ("linreg", lambda: LinearRegression((10,)), (10,), 1),
    ("logreg", lambda: LogisticRegression((30,)), (30,), 1),
    ("softmax", lambda: SoftmaxRegression((1, 8, 8), 10), (1, 8, 8), 10),
]


@pytest.mark.parametrize(("name", "factory", "shape", "outputs"), CASES, ids=[c[0] for c in CASES])
def test_forward_shape_and_head_contract(name: str, factory, shape: tuple[int, ...], outputs: int) -> None:
    torch.manual_seed(0)
    model = factory()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert list(model.modules())[-1] is model.head, "head must be the last registered module"
    assert linears[-1] is model.head
    assert model.head.out_features == outputs

    seen: list[torch.Tensor] = []
    handle = model.head.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        model.train()
        out = model(torch.randn(2, *shape))
    finally:
        handle.remove()
    assert out.shape == (2, outputs)
    assert torch.isfinite(out).all()
    assert len(seen) == 1
    assert seen[0].shape == (2, model.head.in_features), "head input must be the flattened features"

    model.eval()
    with torch.no_grad():
        assert model(torch.randn(3, *shape)).shape == (3, outputs)


def test_supported_losses() -> None:
    for cls in (MnistCNN, CifarResNet, PreActResNet, DenseNet, MLP):
        assert set(cls.supported_losses) == {"softmax_ce", "bce", "mse"}
    assert LinearRegression.supported_losses == ("mse",)
    assert LogisticRegression.supported_losses == ("bce",)
    assert SoftmaxRegression.supported_losses == ("softmax_ce",)


def test_convs_use_he_normal_init() -> None:
    torch.manual_seed(0)
    model = CifarResNet((3, 32, 32), 10, depth=56)
    conv = model.features[-3].conv1  # a 64->64 3x3 conv: fan_in 576
    expected_std = (2.0 / conv.weight[0].numel()) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.05)


BAD_ARGS = [
    (lambda: CifarResNet((64,), 10), "ResNet needs image input \\(C, H, W\\); got input_shape \\(64,\\)"),
    (lambda: PreActResNet((3, 32), 10), "PreActResNet needs image input"),
    (lambda: DenseNet((30,), 10), "DenseNet needs image input"),
    (lambda: MnistCNN((784,), 10), "MnistCNN needs image input"),
    (lambda: MnistCNN((1, 7, 28), 10), "MnistCNN needs images of at least 8x8"),
    (lambda: MnistCNN((1, 28, 28), 0), "MnistCNN needs num_outputs >= 1"),
    (lambda: DenseNet((3, 3, 3), 10), "DenseNet needs images of at least 4x4"),
    (lambda: CifarResNet((3, 32, 32), 10, depth=21), "depth must be 6n\\+2"),
    (lambda: CifarResNet((3, 32, 32), 10, depth=2), "depth must be 6n\\+2"),
    (lambda: CifarResNet((3, 32, 32), -1), "ResNet needs num_outputs >= 1"),
    (lambda: PreActResNet((3, 32, 32), 10, depth=21), "depth must be 9n\\+2"),
    (lambda: PreActResNet((3, 32, 32), 10, depth=2), "depth must be 9n\\+2"),
    (lambda: DenseNet((3, 32, 32), 10, depth=41), "depth must be 3n\\+4"),
    (lambda: DenseNet((3, 32, 32), 10, growth_rate=0), "growth_rate"),
    (lambda: DenseNet((3, 32, 32), 10, dropout=1.0), "dropout"),
    (lambda: DenseNet((3, 32, 32), 0), "DenseNet needs num_outputs >= 1"),
    (lambda: MLP((4,), 0), "MLP needs num_outputs >= 1"),
    (lambda: MLP((4,), 3, hidden_sizes=(8, 0)), "hidden_sizes"),
    (lambda: MLP((4,), 3, dropout=-0.1), "dropout"),
    (lambda: MLP((0,), 3), "positive ints"),
    (lambda: MLP((), 3), "positive ints"),
    (lambda: LinearRegression((4,), 0), "LinearRegression needs num_outputs >= 1"),
    (lambda: LogisticRegression((4,), 2), "LogisticRegression is binary and needs num_outputs == 1"),
    (lambda: SoftmaxRegression((4,), 1), "SoftmaxRegression needs num_outputs >= 2"),
    (lambda: SoftmaxRegression((4, -2), 3), "SoftmaxRegression needs input_shape of positive ints"),
]


@pytest.mark.parametrize(("factory", "message"), BAD_ARGS)
def test_bad_arguments_raise_clear_value_error(factory, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()
