"""lipschitz-lightning: PyTorch Lightning training with theoretically computed learning rates.

``from lipschitz_lightning import LipschitzLR`` is the callback; the math is in
``lipschitz_lightning.math``.
"""

__version__ = "0.1.0"
__all__ = ["LipschitzLR", "__version__"]


def __getattr__(name: str):
    # The callback (torch, Lightning) is imported on first use: the application's commands can
    # then say at once which extra a bare install lacks (lipschitz_lightning.app.cli).
    if name == "LipschitzLR":
        from lipschitz_lightning.callbacks import LipschitzLR

        return LipschitzLR
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
