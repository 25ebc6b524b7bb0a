"""Models with a uniform contract: ``Model(input_shape, num_outputs, **specific)``, the final
``nn.Linear`` registered last and exposed as ``model.head``, raw outputs from ``forward`` and a
``supported_losses`` class attribute."""

from lipschitz_lightning.models.densenet import DenseNet
from lipschitz_lightning.models.linear import LinearRegression, LogisticRegression, SoftmaxRegression
from lipschitz_lightning.models.mlp import MLP
from lipschitz_lightning.models.mnist_cnn import MnistCNN
from lipschitz_lightning.models.resnet import CifarResNet, PreActResNet

__all__ = [
    "CifarResNet",
    "DenseNet",
    "LinearRegression",
    "LogisticRegression",
    "MLP",
    "MnistCNN",
    "PreActResNet",
    "SoftmaxRegression",
]
