"""LightningModules: the training step, the loss and the metrics around a plain ``nn.Module``."""

from lipschitz_lightning.modules.supervised import CRITERIA, HalfMSELoss, SupervisedModule

__all__ = ["CRITERIA", "HalfMSELoss", "SupervisedModule"]
