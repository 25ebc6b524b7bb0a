"""LightningModules: the training step, the loss and the metrics around a plain ``nn.Module``."""

from lipschitz_lightning.modules.supervised import CRITERIA, SupervisedModule

__all__ = ["CRITERIA", "SupervisedModule"]
