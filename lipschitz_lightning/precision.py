"""The trainer's default numeric precision: bf16-mixed where the GPU computes bf16 natively, else fp32.

``conf/trainer/default.yaml`` builds ``trainer.precision`` from :func:`default_precision`, so
``trainer=gpu`` (and ``trainer=ddp``) train in bf16-mixed on Ampere and newer GPUs and in fp32
on the CPU and on older GPUs; ``trainer.precision=32-true`` (or ``16-mixed``, ...) picks one
explicitly. LipschitzLR is unaffected: it gathers its statistics in float32 either way.
"""

from __future__ import annotations

import logging

import torch

__all__ = ["default_precision"]

log = logging.getLogger(__name__)

# Compute capability from which CUDA GPUs run bf16 natively (Ampere); older ones emulate it slowly.
_BF16_MIN_CAPABILITY = 8


def default_precision(accelerator: str = "auto") -> str:
    """Return Lightning's ``precision`` flag for ``accelerator``: ``"bf16-mixed"`` or ``"32-true"``.

    Args:
        accelerator: the trainer's ``accelerator`` (``"auto"``, ``"gpu"``, ``"cuda"``, ``"cpu"``,
            ...); ``"auto"`` means the GPU when there is one, as Lightning decides.

    Returns:
        ``"bf16-mixed"`` when the run goes to a CUDA GPU of compute capability 8.0 or newer,
        ``"32-true"`` otherwise (a GPU without native bf16 is said so in the log).
    """
    if str(accelerator) not in ("auto", "gpu", "cuda") or not torch.cuda.is_available():
        return "32-true"
    major, minor = torch.cuda.get_device_capability()
    if major >= _BF16_MIN_CAPABILITY:
        return "bf16-mixed"
    log.info(
        f"trainer.precision: 32-true ({torch.cuda.get_device_name()}, compute capability {major}.{minor}, "
        "has no native bf16; trainer.precision=16-mixed for fp16 autocast)"
    )
    return "32-true"
