"""lipschitz-lightning: PyTorch Lightning training with theoretically computed learning rates."""

__version__ = "0.1.0"
