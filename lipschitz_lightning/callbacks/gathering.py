"""Gathering the head statistics for ``LipschitzLR``: hooks, the probe pass, the epoch's reduction.

The per-step path is traceable by ``torch.compile``: the head's forward pre-hook adds its
statistics *in place* into one preallocated device vector (``_acc``, and the ``d x d`` Gram
matrix ``_gram`` for the smoothness rule); for the curvature rule its forward hook adds the
curvature-weighted Gram matrix ``_cgram`` (it needs the head's output, the logits). They read no
Python state that changes from step to step (only ``_recording``, which is ``True`` in every
training step), so a compiled model is
compiled once for training. Eager code in ``on_train_batch_end`` closes each optimizer step: it
copies the accumulator into the epoch's list of step vectors and zeroes it. Nothing moves to the
host per step and no collective runs per step.

A step enters the list only once its optimizer step has run, so a checkpoint written by a crash
mid-step holds exactly the statistics of the finished steps (``on_exception``).
"""

from __future__ import annotations

import math
import random
import sys
from contextlib import contextmanager
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.signature_utils import is_param_in_hook_signature
from torch import nn
from torchmetrics import Metric

from lipschitz_lightning.math.bounds import spectral_norm_upper_bound
from lipschitz_lightning.math.losses import curvature_weights, get_loss
from lipschitz_lightning.math.rules import Statistic
from lipschitz_lightning.math.statistics import A2, LOSS, NLOSS, OUT2, ROWS, Y2, HeadStats, StepLayout, summarize_steps

__all__ = ["LipschitzLRError", "HeadGathering", "find_head"]


class LipschitzLRError(ValueError):
    """LipschitzLR cannot produce a usable rate (e.g. the probe's bound is not positive, or the
    guard rolled back too often); the message says what to set."""


def find_head(module: nn.Module, name: Optional[str] = None) -> Tuple[str, nn.Linear]:
    """Return ``(name, layer)`` of the head: the named module, else the last ``nn.Linear``.

    Raises:
        ValueError: no ``nn.Linear`` in the model, or the named module is missing or not linear.
    """
    modules = dict(module.named_modules())
    if name is not None:
        if name not in modules:
            linears = [n for n, m in modules.items() if isinstance(m, nn.Linear)]
            raise ValueError(
                f"LipschitzLR: head {name!r} does not exist in {type(module).__name__}; "
                f"its nn.Linear modules are {linears}"
            )
        if not isinstance(modules[name], nn.Linear):
            raise ValueError(
                f"LipschitzLR: head {name!r} is a {type(modules[name]).__name__}, not an nn.Linear"
            )
        return name, modules[name]
    linears = [(n, m) for n, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"LipschitzLR needs a model ending in an nn.Linear head; "
            f"{type(module).__name__} has no nn.Linear"
        )
    return linears[-1]


class HeadGathering:
    """The gathering half of :class:`~lipschitz_lightning.callbacks.LipschitzLR` (a mixin).

    Set by the scheduling half: ``head_name``, ``loss``, ``source``, ``probe_batches``,
    ``init_probe_batches`` and ``_layout_needs`` (the rule's optional statistics).
    """

    head_name: Optional[str]
    loss: str
    source: str
    probe_batches: Optional[int]
    init_probe_batches: int
    _layout_needs: FrozenSet[Statistic]

    def _init_gathering(self) -> None:
        self._head: Optional[nn.Linear] = None
        self._handles: List[Any] = []
        self._layout = StepLayout()
        self._needs_s = False
        self._acc: Optional[torch.Tensor] = None  # the current optimizer step's sums
        self._gram: Optional[torch.Tensor] = None  # the current optimizer step's A^T A
        self._cgram: Optional[torch.Tensor] = None  # the current optimizer step's A^T C A
        self._steps: List[torch.Tensor] = []  # the epoch's finished steps
        self._grad_max: Optional[torch.Tensor] = None
        self._head_abs: Optional[torch.Tensor] = None  # largest |W| of the head at the epoch's steps
        self._recording = False
        self._micro_done = 0  # micro-batches of this epoch whose on_train_batch_end ran

    # ------------------------------------------------------------------ wiring

    def _install_hooks(self, pl_module: pl.LightningModule) -> None:
        self.head_name, self._head = find_head(pl_module, self.head_name)
        needs = self._layout_needs
        self._needs_s = Statistic.SQUARES in needs
        self._layout = StepLayout(
            width=self._head.in_features, colabs=Statistic.COLUMN_L1 in needs, spec=Statistic.SPECTRAL in needs,
            curv=Statistic.CURVATURE in needs,
        )
        self._remove_hooks()
        self._handles.append(self._head.register_forward_pre_hook(self._record_input))
        if get_loss(self.loss).bound_needs_targets:
            self._handles.append(self._head.register_forward_hook(self._record_output))
        if self._layout.curv:
            self._handles.append(self._head.register_forward_hook(self._record_curvature))

    def _allocate(self, device: torch.device) -> None:
        """The step accumulators, once per fit, on the model's device (never inside the hook)."""
        self._acc = torch.zeros(self._layout.size, device=device, dtype=torch.float32)
        d = self._layout.width
        self._gram = torch.zeros(d, d, device=device, dtype=torch.float32) if self._layout.spec else None
        self._cgram = torch.zeros(d, d, device=device, dtype=torch.float32) if self._layout.curv else None

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ per-step path (traceable, no sync)

    def _record_input(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not self._recording:
            return
        a = _head_input(args)
        a2 = a.square()
        rows = a.new_ones(a.shape[0]).sum()
        a4 = a2.square().sum() if self._needs_s else a2.new_zeros(())
        self._acc[A2 : ROWS + 1].add_(torch.stack([a2.sum(), a4, rows]))  # A2, A4, ROWS are adjacent
        if self._layout.colabs or self._layout.spec:
            flat = a.reshape(-1, a.shape[-1])
            if self._layout.colabs:
                self._acc[self._layout.colabs_slice].add_(flat.abs().sum(dim=0))
            if self._layout.spec:
                self._gram.add_(flat.T @ flat)

    def _record_curvature(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> None:
        if not self._recording:
            return
        flat = _head_input(args).reshape(-1, self._layout.width)
        c = curvature_weights(output.reshape(flat.shape[0], -1), self.loss)
        self._cgram.add_((flat * c.unsqueeze(1)).T @ flat)

    def _record_output(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> None:
        if self._recording:
            self._acc[OUT2].add_(output.detach().float().square().sum())

    # ------------------------------------------------------------------ eager per-step bookkeeping

    def _record_targets(self, batch: Any) -> None:
        if not get_loss(self.loss).bound_needs_targets:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not torch.is_tensor(batch[1]):
            raise LipschitzLRError("LipschitzLR(loss='mse') needs batches of the form (inputs, targets, ...)")
        self._acc[Y2].add_(batch[1].detach().float().square().sum())

    def _record_loss(self, outputs: Any) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and loss.numel() == 1:
            self._acc[LOSS].add_(loss.detach().float().reshape(()))
            self._acc[NLOSS].add_(1.0)

    def _commit_step(self) -> None:
        """Close an optimizer step: its vector joins the epoch's list; the accumulators restart."""
        step = self._acc.clone()
        if self._layout.spec:
            step[self._layout.spec_index] = spectral_norm_upper_bound(self._gram)
            self._gram.zero_()
        if self._layout.curv:
            step[self._layout.curv_index] = spectral_norm_upper_bound(self._cgram)
            self._cgram.zero_()
        self._steps.append(step)
        self._acc.zero_()

    def _discard_in_flight(self) -> None:
        """Drop the statistics of a step that did not finish (its gradient is lost as well)."""
        if self._acc is not None:
            self._acc.zero_()
        if self._gram is not None:
            self._gram.zero_()
        if self._cgram is not None:
            self._cgram.zero_()

    def _reset_epoch(self) -> None:
        self._steps = []
        self._grad_max = None
        self._head_abs = None
        self._micro_done = 0
        self._discard_in_flight()

    # ------------------------------------------------------------------ probe

    def _run_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, initial: bool) -> None:
        """No-grad passes that feed the same per-step gathering as training.

        Each batch goes through ``pl_module(inputs)`` where the module defines ``forward``, else
        through its own ``training_step(batch, batch_idx)`` (see :func:`_probe_pass`); either way
        the head's hooks take its input. The module's state is restored afterwards
        (:func:`_probe_isolation`): RNGs, Python attributes, torchmetrics accumulators, and
        nothing the pass logs reaches Lightning.

        ``initial``: the first-epoch probe over a few *training* batches, in train mode (the
        activations training will see), with buffers (BatchNorm statistics) restored as well.
        Otherwise the ``source='probe'`` pass over ``probe_dataloader()`` in eval mode (the
        reference code's Keras ``predict``). Under DDP rank r takes loader batches r, r+N, ...
        and every rank runs the same number of steps.
        """
        world = trainer.world_size
        accumulate = trainer.accumulate_grad_batches
        if initial:
            loader = trainer.train_dataloader
            max_batches = self.init_probe_batches
            sharded = True  # the training loader already carries the DistributedSampler
        else:
            loader = trainer.datamodule.probe_dataloader()
            max_batches = self.probe_batches
            sharded = False
        if loader is None:
            raise LipschitzLRError("LipschitzLR: no training data to probe; pass first_epoch_lr=<number>")
        run_batch, through_training_step = _probe_pass(trainer, pl_module, initial)
        was_training = pl_module.training
        buffers = {name: b.detach().clone() for name, b in pl_module.named_buffers()} if initial else {}
        self._steps = []
        self._discard_in_flight()
        n_local = 0
        try:
            with _probe_isolation(pl_module, silence_logging=through_training_step), torch.no_grad():
                pl_module.train(initial)
                self._recording = True
                for j, batch in enumerate(loader):
                    rank_batch = j if sharded else j // world
                    if not sharded and j % world != trainer.global_rank:
                        continue
                    if max_batches is not None and rank_batch >= max_batches:
                        break
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                    self._record_targets(batch)
                    run_batch(batch, j)
                    n_local += 1
                    if n_local % accumulate == 0:
                        self._commit_step()
                if n_local % accumulate:
                    self._commit_step()
        finally:
            self._recording = False
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
            n_steps = max(1, n_total // (world * accumulate))
            self._steps = self._steps[:n_steps]
            while len(self._steps) < n_steps:
                self._steps.append(torch.zeros(self._layout.size, device=pl_module.device))

    # ------------------------------------------------------------------ the epoch's reduction

    def _gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> HeadStats:
        """Reduce the finished steps across ranks (one collective, one host transfer) into the
        epoch's :class:`~lipschitz_lightning.math.statistics.HeadStats`."""
        device = pl_module.device
        size = self._layout.size
        steps = torch.stack(self._steps).to(device) if self._steps else torch.zeros(1, size, device=device)
        with torch.no_grad():
            w_max = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in pl_module.parameters()]).max()
            head_abs = self._head.weight.detach().float().abs().max()
            if self._head_abs is not None:
                head_abs = torch.maximum(head_abs, self._head_abs.to(head_abs.device))
        grad = self._grad_max if self._grad_max is not None else torch.full((), math.nan, device=device)
        packed = torch.cat([steps.flatten(), w_max.reshape(1), head_abs.reshape(1).to(device), grad.reshape(1).to(device)])
        world = trainer.world_size
        if world > 1:
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
        values = packed.double().cpu()  # the one host transfer of the epoch
        # W, the head's weights and its gradient are identical on every rank (DDP keeps replicas in sync).
        return summarize_steps(
            values[:-3].reshape(-1, size),
            self._layout,
            w_max=float(values[-3]) / world,
            head_abs_max=float(values[-2]) / world,
            grad_max=float(values[-1]) / world,
        )

    # ------------------------------------------------------------------ checkpoint helpers

    def _pending_state(self) -> dict:
        return {
            "pending_steps": [s.detach().cpu() for s in self._steps],
            "pending_grad_max": self._grad_max.detach().cpu() if self._grad_max is not None else None,
            "pending_head_abs": self._head_abs.detach().cpu() if self._head_abs is not None else None,
            "micro_done": self._micro_done,
        }

    def _load_pending(self, state_dict: dict) -> None:
        steps = list(state_dict.get("pending_steps", []))
        if steps and "micro_done" not in state_dict:
            steps = [_from_old_layout(s, int(state_dict.get("local_batch", 0))) for s in steps]
        self._steps = steps
        self._grad_max = state_dict.get("pending_grad_max")
        self._head_abs = state_dict.get("pending_head_abs")
        self._micro_done = int(state_dict.get("micro_done", len(steps)))


def _defines_forward(pl_module: pl.LightningModule) -> bool:
    """The module has a ``forward`` of its own (LightningModule's raises NotImplementedError)."""
    if "forward" in vars(pl_module):
        return True
    return getattr(type(pl_module), "forward", None) not in (pl.LightningModule.forward, nn.Module.forward)


def _probe_pass(
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
def _probe_isolation(pl_module: pl.LightningModule, silence_logging: bool) -> Iterator[None]:
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


def _head_input(args: Tuple[Any, ...]) -> torch.Tensor:
    """The head's input as a detached float tensor with a batch dimension."""
    a = args[0].detach().float()
    return a.reshape(1, -1) if a.dim() < 2 else a


def _from_old_layout(step: torch.Tensor, rows: int) -> torch.Tensor:
    """A step vector of the first checkpoint format (A2, A4, OUT2, Y2; m from ``local_batch``)."""
    new = torch.zeros(NLOSS + 1)
    new[A2], new[A2 + 1], new[OUT2], new[Y2] = step[0], step[1], step[2], step[3]
    new[ROWS] = rows
    return new
