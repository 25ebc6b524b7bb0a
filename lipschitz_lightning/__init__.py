"""lipschitz-lightning: PyTorch Lightning training with theoretically computed learning rates.

``from lipschitz_lightning import LipschitzLR`` is the callback; the math is in
``lipschitz_lightning.math``.
"""

from lipschitz_lightning.callbacks import LipschitzLR

__version__ = "0.1.0"
__all__ = ["LipschitzLR", "__version__"]
