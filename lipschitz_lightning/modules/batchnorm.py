"""BatchNorm running statistics recomputed at the weights that are evaluated.

A Schedule-Free optimizer (Defazio et al., 2024) takes its gradients at ``y`` and is evaluated at
``x``, the average of its iterates; the BatchNorm running statistics it trains with are those of
``y``. Its authors ask for them to be recomputed at ``x`` before evaluation: a few training batches
through the network in train mode, with no gradient. :func:`recompute_running_stats` does that
without touching anything else of the run: no optimizer step, the same random streams, the
training loader's epoch iterator untouched (the batches are built from its batch sampler and
dataset, which are pure functions of the epoch for this project's loaders), and each layer's
momentum and ``num_batches_tracked`` as they were.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Iterator, List, Optional, Sequence

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.model_helpers import is_overridden
from torch import nn
from torch.utils.data import DataLoader

__all__ = ["batchnorm_layers", "has_train_eval_modes", "recompute_running_stats", "training_batches"]


def has_train_eval_modes(optimizer: Any) -> bool:
    """Whether ``optimizer`` has Schedule-Free's ``train()``/``eval()`` modes (duck typing)."""
    return callable(getattr(optimizer, "train", None)) and callable(getattr(optimizer, "eval", None))


def batchnorm_layers(net: nn.Module) -> List[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``net`` that keep running statistics (any dimension, SyncBatchNorm too)."""
    return [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats and m.running_mean is not None]


def _train_loader(trainer: pl.Trainer) -> Optional[DataLoader]:
    """The fit's training DataLoader; in a test after fit (Lightning has let go of it) a new one
    from the datamodule, used for its sampler and dataset only, never iterated."""
    loaders: Any = trainer.train_dataloader
    datamodule = trainer.datamodule
    if loaders is None and datamodule is not None and is_overridden("train_dataloader", datamodule):
        try:
            loaders = datamodule.train_dataloader()
        except RuntimeError:  # the training split was never set up (a datamodule of this package says so)
            return None
    if isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    elif isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    return loaders if isinstance(loaders, DataLoader) else None


def _rng_devices(device: torch.device) -> List[int]:
    return [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []


def training_batches(trainer: pl.Trainer, count: int, device: torch.device) -> List[Any]:
    """The first ``count`` training batches of the current epoch, as the training loop builds them
    (before their transfer to the device), or fewer when the epoch has fewer; empty when there is
    no training loader or it cannot be read without disturbing the run's own iteration.

    A map-style loader's batches are built from its batch sampler, dataset and collate function,
    so the epoch's iterator (and a resumed epoch's batches to skip, persistent workers) is left as
    it is; an iterable dataset is read through a fresh iterator, unless its workers are
    persistent (a new iterator would reset the epoch's). Random streams drawn meanwhile (a
    sampler without a generator of its own) are restored. A datamodule with the project's
    ``augment_batch(x, epoch, batch, rank)`` augments each batch as in training.
    """
    loader = _train_loader(trainer)
    if loader is None or count <= 0:
        return []
    with torch.random.fork_rng(devices=_rng_devices(device)):
        if loader.batch_sampler is not None:
            groups = list(itertools.islice(iter(loader.batch_sampler), count))
            dataset = loader.dataset
            getitems = getattr(dataset, "__getitems__", None)
            batches = [loader.collate_fn(getitems(list(g)) if callable(getitems) else [dataset[i] for i in g])
                       for g in groups]
        elif loader.batch_size is None or getattr(loader, "persistent_workers", False):
            return []
        else:
            iterator = iter(loader)
            batches = list(itertools.islice(iterator, count))
            del iterator
    augment = getattr(trainer.datamodule, "augment_batch", None)
    if callable(augment):
        batches = [(augment(b[0], trainer.current_epoch, i, trainer.global_rank), *b[1:])
                   if isinstance(b, (tuple, list)) else b for i, b in enumerate(batches)]
    return batches


@contextmanager
def cumulative_statistics(layers: Sequence[nn.modules.batchnorm._BatchNorm]) -> Iterator[None]:
    """Running statistics reset and averaged cumulatively (momentum None) inside the block; each
    layer's momentum and ``num_batches_tracked`` restored after it."""
    saved = [(bn, bn.momentum, bn.num_batches_tracked.clone()) for bn in layers]
    for bn in layers:
        bn.momentum = None
        bn.reset_running_stats()
    try:
        yield
    finally:
        for bn, momentum, tracked in saved:
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)


def recompute_running_stats(module: pl.LightningModule, layers: Sequence[nn.modules.batchnorm._BatchNorm],
                            count: int) -> int:
    """Recompute the running statistics of ``layers`` (BatchNorm layers of ``module``) at the
    module's current weights, as the mean over the first ``count`` training batches of the epoch
    (each batch's mean and unbiased variance, as BatchNorm's cumulative average computes them).
    The batches run through ``module`` in train mode, under ``torch.no_grad`` and the trainer's
    precision, on the module's device; every submodule's train/eval mode is restored after. A
    compiled network runs them eagerly: BatchNorm's cumulative average reads its batch count on
    the host, a graph break per layer, and a few batches do not repay the compilations.

    Returns:
        The number of batches used (0: no training batches to use, nothing changed).
    """
    trainer = module.trainer
    batches = training_batches(trainer, count, module.device)
    if not batches:
        return 0
    precision = trainer.precision_plugin
    modes = [(m, m.training) for m in module.modules()]
    module.train()
    try:
        with torch.random.fork_rng(devices=_rng_devices(module.device)), torch.no_grad(), \
                torch.compiler.set_stance("force_eager"), cumulative_statistics(layers):
            for batch in batches:
                batch = trainer.strategy.batch_to_device(precision.convert_input(batch), module.device)
                with precision.forward_context():
                    module(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for m, training in modes:
            m.training = training
    return len(batches)
