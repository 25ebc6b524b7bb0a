"""Gathering the head statistics for ``LipschitzLR``: hooks, the epoch's record, its reduction.

The per-step path is traceable by ``torch.compile``: the head's forward pre-hook adds its
statistics *in place* into one preallocated device vector (``_acc``, and the ``d x d`` Gram
matrix ``_gram`` for the smoothness rule); for the curvature rule its forward hook adds the
curvature-weighted Gram matrix ``_cgram`` (it needs the head's output, the logits). They read no
Python state that changes from step to step (only ``recording``, which is ``True`` in every
training step), so a compiled model is compiled once for training. Eager code at each batch's end
closes each optimizer step (:meth:`HeadGatherer.commit_step`): it copies the accumulator into the
epoch's :class:`EpochRecord` and zeroes it. Nothing moves to the host per step and no collective
runs per step.

A step enters the record only once its optimizer step has run, so a checkpoint written by a crash
mid-step holds exactly the statistics of the finished steps.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, FrozenSet, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import nn

from lipschitz_lightning.callbacks.errors import LipschitzLRError
from lipschitz_lightning.callbacks.probe import run_probe
from lipschitz_lightning.math.bounds import spectral_norm_upper_bound
from lipschitz_lightning.math.losses import curvature_weights, get_loss
from lipschitz_lightning.math.rules import Statistic
from lipschitz_lightning.math.statistics import A2, LOSS, NLOSS, OUT2, ROWS, Y2, HeadStats, StepLayout, summarize_steps

__all__ = ["EpochRecord", "HeadGatherer", "LipschitzLRError", "find_head"]

SOURCES = ("hooks", "probe")


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


@dataclass
class EpochRecord:
    """What one epoch (or one probe) has gathered so far, on the device.

    Attributes:
        steps: one vector per finished optimizer step (columns: ``StepLayout``).
        grad_max: the largest last-layer gradient entry seen (weight decay included).
        head_abs: the largest ``|W|`` of the head at the steps (the gradient bound's term).
        micro_done: micro-batches whose ``on_train_batch_end`` ran.
    """

    steps: List[torch.Tensor] = field(default_factory=list)
    grad_max: Optional[torch.Tensor] = None
    head_abs: Optional[torch.Tensor] = None
    micro_done: int = 0

    def fit_steps(self, n: int, size: int, device: torch.device) -> None:
        """Exactly ``n`` steps: the first ``n``, padded with zero vectors."""
        del self.steps[n:]
        while len(self.steps) < n:
            self.steps.append(torch.zeros(size, device=device))

    def to(self, device: torch.device) -> None:
        self.steps = [s.to(device) for s in self.steps]
        self.grad_max = self.grad_max.to(device) if self.grad_max is not None else None
        self.head_abs = self.head_abs.to(device) if self.head_abs is not None else None

    def state_dict(self) -> Dict[str, Any]:
        """On the host, plain tensors (a ``weights_only`` load reads it back)."""
        return {
            "pending_steps": [s.detach().cpu() for s in self.steps],
            "pending_grad_max": self.grad_max.detach().cpu() if self.grad_max is not None else None,
            "pending_head_abs": self.head_abs.detach().cpu() if self.head_abs is not None else None,
            "micro_done": self.micro_done,
        }

    @classmethod
    def from_state(cls, state: Dict[str, Any]) -> "EpochRecord":
        """Read with ``.get``: a checkpoint of an older format lacks some keys."""
        steps = list(state.get("pending_steps", []))
        if steps and "micro_done" not in state:
            steps = [_from_old_layout(s, int(state.get("local_batch", 0))) for s in steps]
        return cls(steps, state.get("pending_grad_max"), state.get("pending_head_abs"),
                   int(state.get("micro_done", len(steps))))


class HeadGatherer:
    """Hooks on the head, the epoch's :class:`EpochRecord`, and its reduction across ranks.

    Args:
        loss: the loss's name (whether the bound needs the outputs and the targets).
        head: module name of the head ``nn.Linear``; default the model's last ``nn.Linear``.
        source: ``"hooks"`` (statistics from the training forward passes) or ``"probe"`` (an
            extra no-grad pass at each epoch's end).
        probe_batches: batches per rank of the ``"probe"`` pass (default: all).
        statistics: the rule's optional statistics (:class:`~lipschitz_lightning.math.rules.Statistic`).
    """

    def __init__(self, loss: str, head: Optional[str] = None, source: str = "hooks",
                 probe_batches: Optional[int] = None, statistics: FrozenSet[Statistic] = frozenset()) -> None:
        if source not in SOURCES:
            raise ValueError(f"LipschitzLR: unknown source {source!r}; expected one of {list(SOURCES)}")
        if probe_batches is not None and (not isinstance(probe_batches, int) or probe_batches < 1):
            raise ValueError(f"LipschitzLR: probe_batches must be a positive integer; got {probe_batches!r}")
        self.loss = loss
        self.head_name = head
        self.source = source
        self.probe_batches = probe_batches
        self.statistics = frozenset(statistics)
        self.head: Optional[nn.Linear] = None
        self.record = EpochRecord()
        self.recording = False  # read by the hooks: True inside training steps and probes
        self._handles: List[Any] = []
        self._layout = StepLayout()
        self._needs_s = False  # a plain bool for the traced hook
        self._group_index: Optional[int] = None  # the optimizer's param group of the head
        self._acc: Optional[torch.Tensor] = None  # the current optimizer step's sums
        self._gram: Optional[torch.Tensor] = None  # the current optimizer step's A^T A
        self._cgram: Optional[torch.Tensor] = None  # the current optimizer step's A^T C A

    # ------------------------------------------------------------------ wiring

    @property
    def step_size(self) -> int:
        return self._layout.size

    @property
    def allocated(self) -> bool:
        return self._acc is not None

    def install(self, pl_module: pl.LightningModule) -> None:
        """Find the head and hook it (``setup``)."""
        self.head_name, self.head = find_head(pl_module, self.head_name)
        needs = self.statistics
        self._needs_s = Statistic.SQUARES in needs
        self._layout = StepLayout(
            width=self.head.in_features, colabs=Statistic.COLUMN_L1 in needs, spec=Statistic.SPECTRAL in needs,
            curv=Statistic.CURVATURE in needs, precond=Statistic.PRECONDITIONED in needs,
        )
        self.remove()
        self._handles.append(self.head.register_forward_pre_hook(self._record_input))
        if get_loss(self.loss).bound_needs_targets:
            self._handles.append(self.head.register_forward_hook(self._record_output))
        if self._layout.curv:
            self._handles.append(self.head.register_forward_hook(self._record_curvature))

    def check_datamodule(self, trainer: pl.Trainer) -> None:
        """``source='probe'`` needs the datamodule's un-augmented training data."""
        if self.source != "probe":
            return
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is None or not callable(getattr(datamodule, "probe_dataloader", None)):
            raise ValueError(
                "LipschitzLR(source='probe') needs a datamodule with probe_dataloader() "
                "(the un-augmented training data); use source='hooks' otherwise"
            )

    def allocate(self, device: torch.device, optimizer: Optional[torch.optim.Optimizer] = None) -> None:
        """The step accumulators, once per fit, on the model's device (never inside the hook), and
        which of ``optimizer``'s param groups holds the head (looked up here, not per step)."""
        if optimizer is not None and self.head is not None:
            self._group_index = next((i for i, g in enumerate(optimizer.param_groups)
                                      if any(p is self.head.weight for p in g["params"])), None)
        self._acc = torch.zeros(self._layout.size, device=device, dtype=torch.float32)
        d = self._layout.width
        self._gram = torch.zeros(d, d, device=device, dtype=torch.float32) if self._layout.spec else None
        self._cgram = torch.zeros(d, d, device=device, dtype=torch.float32) if self._layout.curv else None

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ per-step path (traceable, no sync)

    def _record_input(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not self.recording:
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
        if not self.recording:
            return
        flat = _head_input(args).reshape(-1, self._layout.width)
        c = curvature_weights(output.reshape(flat.shape[0], -1), self.loss)
        self._cgram.add_((flat * c.unsqueeze(1)).T @ flat)

    def _record_output(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> None:
        if self.recording:
            self._acc[OUT2].add_(output.detach().float().square().sum())

    # ------------------------------------------------------------------ eager per-step bookkeeping

    def start_batch(self, batch: Any) -> None:
        """A training batch begins: with ``source='hooks'`` its forward pass is recorded."""
        if self.source == "hooks":
            self.recording = True
            self.record_targets(batch)

    def record_targets(self, batch: Any) -> None:
        if not get_loss(self.loss).bound_needs_targets:
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not torch.is_tensor(batch[1]):
            raise LipschitzLRError("LipschitzLR(loss='mse') needs batches of the form (inputs, targets, ...)")
        self._acc[Y2].add_(batch[1].detach().float().square().sum())

    @property
    def needs_preconditioner(self) -> bool:
        return self._layout.precond

    def head_optimizer_state(self, optimizer: torch.optim.Optimizer) -> Optional[Tuple[dict, dict]]:
        """The head weight's param group and optimizer state (None: the head is not optimized).
        By index: a rollback or a resume replaces the group dicts, not their order."""
        if self._group_index is None:
            return None
        return optimizer.param_groups[self._group_index], optimizer.state.get(self.head.weight, {})

    def last_step_terms(self) -> Optional[torch.Tensor]:
        """The last finished step's ``[g^T D g, ||D g||^2]`` (a device view), or None."""
        if not self._layout.precond or not self.record.steps:
            return None
        i = self._layout.precond_index
        return self.record.steps[-1][i : i + 2]

    def observe_gradient(self, weight_decay: float,
                         step_terms: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> None:
        """Before the optimizer step: the head's largest gradient entry (weight decay included),
        for the gradient bound its largest ``|W|``, and with ``step_terms`` (``grad -> [g^T D g,
        ||D g||^2]`` under the optimizer's preconditioner of the head) the step's two terms
        (device tensors, no sync)."""
        weight = self.head.weight
        if weight.grad is None:
            return
        if self._layout.precond and step_terms is not None:
            i = self._layout.precond_index
            self._acc[i : i + 2].add_(step_terms(weight.grad))
        grad = weight.grad.detach()
        if weight_decay:
            grad = torch.add(grad, weight.detach(), alpha=weight_decay)
        record = self.record
        g = torch.linalg.vector_norm(grad, ord=math.inf, dtype=torch.float32)  # max |entry|
        record.grad_max = g if record.grad_max is None else torch.maximum(record.grad_max, g)
        if self._layout.colabs:  # the gradient bound's lambda max|W| term, over the epoch's steps
            w = torch.linalg.vector_norm(weight.detach(), ord=math.inf, dtype=torch.float32)
            record.head_abs = w if record.head_abs is None else torch.maximum(record.head_abs, w)

    def end_batch(self, outputs: Any) -> None:
        """A micro-batch whose optimizer step (if it ends one) has run: its loss, and its count."""
        self.recording = False
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if torch.is_tensor(loss) and loss.numel() == 1:
            self._acc[LOSS].add_(loss.detach().float().reshape(()))
            self._acc[NLOSS].add_(1.0)
        self.record.micro_done += 1

    def commit_step(self) -> None:
        """Close an optimizer step: its vector joins the record; the accumulators restart."""
        step = self._acc.clone()
        if self._layout.spec:
            step[self._layout.spec_index] = spectral_norm_upper_bound(self._gram)
            self._gram.zero_()
        if self._layout.curv:
            step[self._layout.curv_index] = spectral_norm_upper_bound(self._cgram)
            self._cgram.zero_()
        self.record.steps.append(step)
        self._acc.zero_()

    def discard_in_flight(self) -> None:
        """Drop the statistics of a step that did not finish (its gradient is lost as well)."""
        for acc in (self._acc, self._gram, self._cgram):
            if acc is not None:
                acc.zero_()

    def reset_epoch(self) -> None:
        self.record = EpochRecord()
        self.discard_in_flight()

    # ------------------------------------------------------------------ probe and reduction

    @contextmanager
    def _recording_into(self, record: EpochRecord) -> Iterator[EpochRecord]:
        kept, self.record = self.record, record
        self.discard_in_flight()
        try:
            yield record
        finally:
            self.record = kept

    def probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, initial: bool,
              max_batches: Optional[int] = None) -> HeadStats:
        """The statistics of a no-grad probe (:func:`~lipschitz_lightning.callbacks.probe.run_probe`):
        the first-epoch probe of the initial weights (``initial``), or the ``source='probe'``
        pass, which keeps the epoch's gradient maxima. The epoch's own record is left as it was."""
        carried = EpochRecord() if initial else EpochRecord(grad_max=self.record.grad_max, head_abs=self.record.head_abs)
        with self._recording_into(carried) as record:
            run_probe(trainer, pl_module, self, initial, max_batches if initial else self.probe_batches)
            return self.reduce(trainer, pl_module, record)

    def gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> HeadStats:
        """The epoch's statistics so far: with ``source='probe'``, at the epoch's end, the probe's."""
        return self.reduce(trainer, pl_module, self.record)

    def reduce(self, trainer: pl.Trainer, pl_module: pl.LightningModule, record: EpochRecord) -> HeadStats:
        """Reduce a record's steps across ranks (one collective, one host transfer) into
        :class:`~lipschitz_lightning.math.statistics.HeadStats`."""
        device = pl_module.device
        size = self._layout.size
        steps = torch.stack(record.steps).to(device) if record.steps else torch.zeros(1, size, device=device)
        with torch.no_grad():
            w_max = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in pl_module.parameters()]).max()
            head_abs = self.head.weight.detach().float().abs().max()
            if record.head_abs is not None:
                head_abs = torch.maximum(head_abs, record.head_abs.to(head_abs.device))
        grad = record.grad_max if record.grad_max is not None else torch.full((), math.nan, device=device)
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
