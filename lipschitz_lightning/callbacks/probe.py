"""The probe: no-grad passes of ``LipschitzLR`` that feed the head's hooks like training does.

Two passes use it: the first-epoch probe (a few *training* batches through the initial weights,
when ``first_epoch_lr="auto"``) and ``source="probe"`` (the reference code's extra pass over the
un-augmented training data at each epoch's end). Each batch goes through ``pl_module(inputs)``
where the module defines ``forward``, else through its own ``training_step(batch, batch_idx)``
(:func:`probe_pass`); either way the head's hooks take its input, and the module is left as if the
pass had not run (:func:`probe_isolation`).
"""

from __future__ import annotations

import random
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import nn
from torchmetrics import Metric

from lipschitz_lightning.callbacks.errors import LipschitzLRError

if TYPE_CHECKING:  # the gatherer imports this module
    from lipschitz_lightning.callbacks.gathering import HeadGatherer

__all__ = ["probe_isolation", "probe_pass", "run_probe"]


def run_probe(trainer: pl.Trainer, pl_module: pl.LightningModule, gatherer: "HeadGatherer", initial: bool,
              max_batches: Optional[int]) -> None:
    """Run the probe's batches through the model, recording into ``gatherer``'s current record.

    ``initial``: the first-epoch probe over ``max_batches`` *training* batches per rank, in train
    mode (the activations training will see), with buffers (BatchNorm statistics) restored
    afterwards. Otherwise the ``source='probe'`` pass over ``probe_dataloader()`` in eval mode
    (the reference code's Keras ``predict``). Under DDP rank r takes loader batches r, r+N, ...
    and every rank contributes the same number of steps.
    """
    world = trainer.world_size
    accumulate = trainer.accumulate_grad_batches
    # The training loader already carries the DistributedSampler; the probe loader does not.
    loader = trainer.train_dataloader if initial else trainer.datamodule.probe_dataloader()
    sharded = initial
    if loader is None:
        raise LipschitzLRError("LipschitzLR: no training data to probe; pass first_epoch_lr=<number>")
    run_batch, through_training_step = probe_pass(trainer, pl_module, initial)
    was_training = pl_module.training
    buffers = {name: b.detach().clone() for name, b in pl_module.named_buffers()} if initial else {}
    n_local = 0
    try:
        with probe_isolation(pl_module, silence_logging=through_training_step), torch.no_grad():
            pl_module.train(initial)
            gatherer.recording = True
            for j, batch in enumerate(loader):
                if not sharded and j % world != trainer.global_rank:
                    continue
                if max_batches is not None and (j if sharded else j // world) >= max_batches:
                    break
                batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                gatherer.record_targets(batch)
                run_batch(batch, j)
                n_local += 1
                if n_local % accumulate == 0:
                    gatherer.commit_step()
            if n_local % accumulate:
                gatherer.commit_step()
    finally:
        gatherer.recording = False
        pl_module.train(was_training)
        with torch.no_grad():
            for name, b in pl_module.named_buffers():
                if name in buffers:
                    b.copy_(buffers[name])
    if n_local == 0:
        raise LipschitzLRError("LipschitzLR: the probe saw no batches; pass first_epoch_lr=<number>")
    if not sharded:
        # Keep only whole steps so that every rank contributes the same number of entries.
        n_total = len(loader) if max_batches is None else min(len(loader), max_batches * world)
        gatherer.record.fit_steps(max(1, n_total // (world * accumulate)), gatherer.step_size, pl_module.device)


def _defines_forward(pl_module: pl.LightningModule) -> bool:
    """The module has a ``forward`` of its own (LightningModule's raises NotImplementedError)."""
    if "forward" in vars(pl_module):
        return True
    return getattr(type(pl_module), "forward", None) not in (pl.LightningModule.forward, nn.Module.forward)


def probe_pass(
    trainer: pl.Trainer, pl_module: pl.LightningModule, initial: bool
) -> Tuple[Callable[[Any, int], Any], bool]:
    """How the probe runs one batch, and whether that is through ``training_step``:
    ``pl_module(inputs)`` where the module defines ``forward`` (the first element of a
    list/tuple batch), else the module's ``training_step(batch, batch_idx)`` (under no_grad; no
    backward or optimizer step follows it).

    Raises:
        LipschitzLRError: neither can run (no ``forward``, and a ``training_step`` that steps its
            optimizers itself or takes a ``dataloader_iter``); the message says what to add.
    """
    if _defines_forward(pl_module):
        return (lambda batch, batch_idx: pl_module(batch[0] if isinstance(batch, (list, tuple)) else batch)), False
    name = type(pl_module).__name__
    training_step = pl_module.training_step
    if getattr(type(pl_module), "training_step", None) is pl.LightningModule.training_step:
        problem = "no training_step"
    elif not pl_module.automatic_optimization:
        problem = "a training_step that steps its optimizers itself (automatic_optimization=False)"
    elif is_param_in_hook_signature(training_step, "dataloader_iter", explicit=True):
        problem = "a training_step that takes a dataloader_iter"
    else:
        problem = None
    if problem is not None:
        what = ("the first-epoch probe" if initial else "the source='probe' pass")
        fix = ("define forward(self, x) (the batch's inputs to the logits), or pass first_epoch_lr=<a positive number>"
               if initial else "define forward(self, x) (the batch's inputs to the logits), or use source='hooks'")
        raise LipschitzLRError(f"LipschitzLR: {what} runs batches through {name}, which has no forward and {problem}; {fix}")
    takes_index = is_param_in_hook_signature(training_step, "batch_idx", min_args=2)
    precision = trainer.precision_plugin

    def run(batch: Any, batch_idx: int) -> Any:
        with precision.train_step_context():
            return training_step(batch, batch_idx) if takes_index else training_step(batch)

    return run, True


def _no_log(*args: Any, **kwargs: Any) -> None:
    """``log`` / ``log_dict`` while the probe runs: its values are not training's."""


@contextmanager
def probe_isolation(pl_module: pl.LightningModule, silence_logging: bool) -> Iterator[None]:
    """Run the probe as if it had not run: the RNGs (torch's, the model's CUDA device's, Python's
    and NumPy's) and every module's Python state are restored on exit; with ``silence_logging``
    (a pass through ``training_step``) ``log`` / ``log_dict`` do nothing meanwhile.

    A module's state is its ``__dict__`` (torch's own entries aside: parameters, buffers,
    submodules, hooks, the training flag): attributes
    rebound are bound back, lists and dicts get their items back (``self.outputs.append(loss)``),
    and the tensor states of torchmetrics metrics (``self.accuracy(logits, y)``) their values,
    in place, so that metrics sharing state (a MetricCollection's compute groups) still share it.
    Nothing is written back where nothing changed (a compiled model's guards stay valid).
    """
    devices = [pl_module.device] if pl_module.device.type == "cuda" else []
    numpy = sys.modules.get("numpy")
    python_rng = random.getstate()
    numpy_rng = numpy.random.get_state() if numpy is not None else None
    saved = [(module, _module_state(module)) for module in pl_module.modules()]
    try:
        with torch.random.fork_rng(devices=devices):
            if silence_logging:  # instance attributes, removed by the restore below
                pl_module.log = _no_log
                pl_module.log_dict = _no_log
            yield
    finally:
        random.setstate(python_rng)
        if numpy_rng is not None:
            numpy.random.set_state(numpy_rng)
        with torch.no_grad():
            for module, state in saved:
                _restore_module_state(module, state)


# What nn.Module keeps in every module's __dict__ (parameters, buffers, submodules, hooks, the
# training flag): torch's own bookkeeping, left alone.
_MODULE_SLOTS = frozenset(vars(nn.Module()))


def _module_state(module: nn.Module) -> Dict[str, Tuple[Any, Any]]:
    """``{attribute: (value, copy of its contents)}`` of one module's ``__dict__``."""
    metric = isinstance(module, Metric)
    state = {}
    for key, value in vars(module).items():
        if key in _MODULE_SLOTS:
            continue
        if isinstance(value, list):
            contents: Any = list(value)
        elif isinstance(value, dict):
            contents = dict(value)
        elif metric and torch.is_tensor(value):
            contents = value.detach().clone()
        else:
            contents = None
        state[key] = (value, contents)
    return state


def _restore_module_state(module: nn.Module, state: Dict[str, Tuple[Any, Any]]) -> None:
    attributes = vars(module)
    for key in [k for k in attributes if k not in state and k not in _MODULE_SLOTS]:
        del attributes[key]
    for key, (value, contents) in state.items():
        if attributes.get(key, state) is not value:
            attributes[key] = value
        if isinstance(value, list):
            if len(value) != len(contents) or any(a is not b for a, b in zip(value, contents)):
                value[:] = contents
        elif isinstance(value, dict):
            if len(value) != len(contents) or any(value.get(k, state) is not v for k, v in contents.items()):
                value.clear()
                value.update(contents)
        elif torch.is_tensor(contents):
            if value.shape == contents.shape:
                value.copy_(contents)
            else:
                value.set_(contents)
