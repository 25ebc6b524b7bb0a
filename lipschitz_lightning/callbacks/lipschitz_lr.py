"""The ``LipschitzLR`` callback: each epoch, set the learning rate to the LipschitzLR rule.

Contract (spec ``lipschitz-lr-spec.md``): statistics gathered while epoch ``t`` trains decide the
rate of epoch ``t + 1``. The rate is computed at the end of epoch ``t``'s last training batch
(before validation and before any end-of-epoch checkpoint, so a checkpoint always holds the rate
the next epoch will use) and written into every param group, times the group's ``lr_scale`` if it
has one. The math lives in :mod:`lipschitz_lightning.math`; this class gathers, reduces, calls the
math, writes the rate and logs.

The class has two halves: gathering (:class:`~lipschitz_lightning.callbacks.gathering.HeadGathering`:
hooks, probe, the epoch's reduction) and scheduling (here: the rule, caps, the guard, writing the
rate, logging, state). A rule is looked up in :data:`lipschitz_lightning.math.rules.RULES`; the
epoch's bound is :func:`lipschitz_lightning.math.rules.epoch_bound`, the function the tests check.

Gathering costs no extra forward pass: a forward pre-hook on the head ``nn.Linear`` adds the
squared Frobenius norm of its input batch (and what else the rule needs) into one preallocated
device vector per optimizer step, in place, so a ``torch.compile``d model compiles once. Nothing
moves to the host and no collective runs per step; at epoch end one ``all_reduce(SUM)`` of the
per-step vectors makes ``K_z`` the norm of the *global* batch, so N devices x batch b give the
rate of one device x batch N*b (spec section 4).

The guard (on by default for every rule, the paper's four included; ``guard=False``, or
``optim.callback.guard=false`` in the app, is the raw rule): it changes no rate until an epoch
fails, and each rollback is one WARNING log line. When an
epoch's training loss turns non-finite or its mean or end rises above ``guard_loss_factor`` times where it started
(the previous epoch's end; in the first epoch, the loss of the initial weights) by more than its
noise (``guard_loss_z`` standard errors; ``math.guard.loss_rose``), or the
head input's norm collapses below ``guard_collapse`` times its start, the weights and optimizer
state of the epoch's start are restored and the next epoch runs at ``guard_shrink`` times the
largest rate of the failed epoch (in the first epoch at most the rule's rate for the initial
weights, and with the first-epoch checks again), ``math.guard.retry_rate``. That rate caps the later
ones, a ceiling that each healthy epoch lifts by ``guard_lift`` until the rule's rate no longer
reaches it, when it is removed (``math.guard.lift_ceiling``).

Logged once per epoch (through ``pl_module.log``, so they reach the logger and
``trainer.callback_metrics``):

* ``lipschitz/lr`` -- the rate used during the epoch that just ended (with first-epoch checks, the
  last rate in force in the first epoch),
* ``lipschitz/next_lr`` -- the rate computed for the coming epoch,
* ``lipschitz/L``, ``lipschitz/K_z``, ``lipschitz/W`` -- this epoch's bound and statistics,
* ``lipschitz/K1``, ``lipschitz/K2`` -- the EWMA states (AdaMo, RMSprop, Auto-Adam),
* ``lipschitz/grad_max_over_L`` -- the largest last-layer gradient entry seen this epoch (weight
  decay included) over this epoch's bound; the theory holds while it stays <= 1,
* ``lipschitz/capped`` and ``lipschitz/bound_invalid`` -- 1 when a safety cap bound, or when the
  bound was non-positive/NaN/inf and the previous rate was kept,
* ``lipschitz/rollbacks`` -- (guard on) the number of epochs rolled back so far,
* ``lipschitz/ceiling_bound`` -- (guard on) 1 when the coming epoch's rate is held at the guard's
  ceiling (after a rollback, or because the rule's rate is above the ceiling).

Example::

    import pytorch_lightning as pl
    from lipschitz_lightning import LipschitzLR

    model = MyLitModel()  # configure_optimizers returns torch.optim.SGD(params, lr=0.1)
    trainer = pl.Trainer(max_epochs=10, callbacks=[LipschitzLR(rule="sgd", loss="softmax_ce")])
    trainer.fit(model, datamodule=dm)
"""

from __future__ import annotations

import copy
import logging
import math
import warnings
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_only, rank_zero_warn

from lipschitz_lightning.callbacks.gathering import HeadGathering, LipschitzLRError, find_head
from lipschitz_lightning.callbacks.policy import check_optimizer, optimizer_fit, policy_of
from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.losses import get_loss
from lipschitz_lightning.math.rules import (
    RULES,
    EpochStats,
    Rule,
    RuleHyper,
    RuleState,
    apply_caps,
    epoch_bound,
    get_rule,
    initial_state,
    next_rate,
    time_decay,
)
from lipschitz_lightning.math.guard import lift_ceiling, loss_rose, mean_and_se, retry_rate
from lipschitz_lightning.math.statistics import HeadStats

__all__ = ["LipschitzLR", "LipschitzLRError", "check_optimizer", "find_head"]

log = logging.getLogger(__name__)

SOURCES = ("hooks", "probe")
SNAPSHOTS = ("device", "cpu")
#: A first-epoch check may raise the rate (``first_epoch_growth``) only while the largest
#: ``||A||_F^2`` of its last window of steps stays below ``1/STEADY`` times the window before's:
#: the features are not growing (the largest of a few more batches scatters by a few percent; the
#: digits MLP's features grow several-fold between checks). See :func:`_steady`.
STEADY = 0.9


def _is_positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


class LipschitzLR(HeadGathering, pl.Callback):
    """Schedule the learning rate by a LipschitzLR rule (Yedida & Saha, and ours); see module docstring.

    Args:
        rule: a name in :data:`lipschitz_lightning.math.rules.RULES`: the paper's ``"sgd"``
            (adaptive SGD), ``"adamo"`` (momentum), ``"rmsprop"``, ``"adam"`` (Auto-Adam); ours
            ``"adamo_consistent"``, ``"gradbound"``, ``"smooth"``, ``"curvature"`` (``docs/rules.md``).
        loss: ``"softmax_ce"``, ``"bce"`` (one sigmoid output) or ``"mse"`` (least squares).
        head: module name of the head ``nn.Linear``; default the model's last ``nn.Linear``.
        k: number of classes; default the head's ``out_features``.
        weight_decay: L2 coefficient lambda; default the optimizer's largest ``weight_decay``.
        first_epoch_lr: rate of the first epoch: a positive float, ``"auto"`` (the rule's first
            update on a no-grad probe of the initial weights), or ``None`` for the rule's default
            (probe for sgd/rmsprop/gradbound/smooth/curvature, 0.1 for the AdaMos, 1e-3 for adam).
        betas: EWMA betas; a float (one-beta rules) or ``(beta1, beta2)``. Default: the
            optimizer's own (SGD momentum, RMSprop alpha, Adam betas).
        eps: epsilon of the RMSprop / Auto-Adam rates.
        bias_correction: divide each EWMA by ``1 - beta^t`` (paper 6.4).
        source: ``"hooks"`` (statistics from the training forward passes, free) or ``"probe"``
            (the reference code's extra no-grad pass over the un-augmented training data,
            ``trainer.datamodule.probe_dataloader()``, in eval mode, at each epoch's end).
        probe_batches: batches per rank of the ``"probe"`` pass (default: all).
        init_probe_batches: training batches per rank of the first-epoch probe.
        decay: Keras time-based decay ``lr / (1 + decay * step)`` on top (reference code; 0=off).
        max_lr: optional cap on the rate (off by default).
        max_growth: optional cap on the growth factor of the rate from one epoch to the next;
            ``None``: the rule's default (:data:`~lipschitz_lightning.callbacks.policy.POLICIES`:
            4 for ``smooth`` and ``curvature``, off for the others).
        guard: roll an epoch back when it fails (see module docstring); ``None``: the rule's
            default, on for every rule (the paper's included: no rate changes until it fires);
            ``False``: the raw rule.
        guard_loss_factor: an epoch fails when the mean loss of its steps, or of its last quarter,
            exceeds this times the reference: the previous accepted epoch's last-quarter mean, or in the
            first epoch the first step's loss (the loss of the initial weights)...
        guard_loss_z: ... and exceeds the reference by more than this many standard errors of the
            difference (from the spread of the step losses), or by more than ``guard_loss_factor - 1``
            times the run's initial loss, so that batch noise around a small loss is not taken for
            a rise (``math.guard.loss_rose``).
        guard_collapse: an epoch fails when the mean ``||A||`` of its last quarter of steps falls
            below this times the mean of its first quarter (dead ReLUs).
        guard_shrink: the retried epoch's rate, as a fraction of the failed one.
        guard_snapshot: keep the epoch-start weights and optimizer state on the ``"device"``
            (fast) or on the ``"cpu"`` (for models whose copy does not fit next to them).
        max_rollbacks: consecutive rollbacks after which the run stops with a ``LipschitzLRError``.
        guard_lift: after a rollback, each healthy epoch multiplies the guard's ceiling by this
            until the rule's rate no longer reaches it, and then removes it; 1: the ceiling stays
            for the rest of the run.
        first_epoch_checks: re-check the first epoch's rate at its optimizer steps 1, 2, 4, 8, ...
            on the statistics so far, lowering it when the features grew (one host sync each,
            first epoch only); ``None``: the rule's default (on for gradbound, smooth, curvature).
            The training app sets ``max_growth``, ``guard``, ``first_epoch_checks`` and
            ``first_epoch_growth`` from ``conf/optim/<rule>.yaml``.
        first_epoch_growth: with the checks, let each raise the first epoch's rate by at most this
            factor towards the rule's full update (momentum's gain included) on the statistics so
            far, instead of holding it at the plain step; 1: off; ``None``: the rule's default (2
            for curvature, off for the others).

    Raises:
        ValueError: a bad argument (here), or before training: no ``nn.Linear`` head, a missing
            named head, ``k < 2`` with ``softmax_ce``, an optimizer that does not fit the rule.
    """

    def __init__(
        self,
        rule: str = "sgd",
        loss: str = "softmax_ce",
        head: Optional[str] = None,
        k: Optional[int] = None,
        weight_decay: Optional[float] = None,
        first_epoch_lr: Union[float, str, None] = None,
        betas: Union[float, Sequence[float], None] = None,
        eps: float = 1e-7,
        bias_correction: bool = False,
        source: str = "hooks",
        probe_batches: Optional[int] = None,
        init_probe_batches: int = 4,
        decay: float = 0.0,
        max_lr: Optional[float] = None,
        max_growth: Optional[float] = None,
        guard: Optional[bool] = None,
        guard_loss_factor: float = 2.0,
        guard_loss_z: float = 3.0,
        guard_collapse: float = 1e-2,
        guard_shrink: float = 0.25,
        guard_snapshot: str = "device",
        max_rollbacks: int = 5,
        guard_lift: float = 2.0,
        first_epoch_checks: Optional[bool] = None,
        first_epoch_growth: Optional[float] = None,
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"LipschitzLR: unknown rule {rule!r}; expected one of {sorted(RULES)}")
        entry = RULES[rule]
        get_loss(loss, "LipschitzLR")
        if loss not in entry.losses:
            raise ValueError(
                f"LipschitzLR: rule {rule!r} is derived for the losses {list(entry.losses)}; got loss {loss!r}"
            )
        if source not in SOURCES:
            raise ValueError(f"LipschitzLR: unknown source {source!r}; expected one of {list(SOURCES)}")
        if first_epoch_lr is not None and first_epoch_lr != "auto" and not _is_positive_number(first_epoch_lr):
            raise ValueError(
                f"LipschitzLR: first_epoch_lr must be a positive number, 'auto' or None; got {first_epoch_lr!r}"
            )
        if k is not None and (not isinstance(k, int) or k < 1):
            raise ValueError(f"LipschitzLR: k must be a positive integer; got {k!r}")
        if weight_decay is not None and not (weight_decay >= 0):
            raise ValueError(f"LipschitzLR: weight_decay must be >= 0; got {weight_decay!r}")
        if betas is not None:
            bs = [betas] if isinstance(betas, (int, float)) else list(betas)
            if not 1 <= len(bs) <= 2 or not all(0.0 <= float(b) < 1.0 for b in bs):
                raise ValueError(f"LipschitzLR: betas must be one or two numbers in [0, 1); got {betas!r}")
        if not eps >= 0:
            raise ValueError(f"LipschitzLR: eps must be >= 0; got {eps!r}")
        for name, value in (("probe_batches", probe_batches), ("init_probe_batches", init_probe_batches),
                            ("max_rollbacks", max_rollbacks)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"LipschitzLR: {name} must be a positive integer; got {value!r}")
        if not decay >= 0:
            raise ValueError(f"LipschitzLR: decay must be >= 0; got {decay!r}")
        if max_lr is not None and not _is_positive_number(max_lr):
            raise ValueError(f"LipschitzLR: max_lr must be a positive number; got {max_lr!r}")
        if max_growth is not None and not _is_positive_number(max_growth):
            raise ValueError(f"LipschitzLR: max_growth must be a positive number; got {max_growth!r}")
        if first_epoch_growth is not None and not (_is_positive_number(first_epoch_growth) and first_epoch_growth >= 1):
            raise ValueError(f"LipschitzLR: first_epoch_growth must be a number >= 1 (1: off); got {first_epoch_growth!r}")
        if not (_is_positive_number(guard_loss_factor) and guard_loss_factor > 1):
            raise ValueError(f"LipschitzLR: guard_loss_factor must be a number > 1; got {guard_loss_factor!r}")
        if isinstance(guard_loss_z, bool) or not (isinstance(guard_loss_z, (int, float)) and 0 <= guard_loss_z < math.inf):
            raise ValueError(f"LipschitzLR: guard_loss_z must be a number >= 0; got {guard_loss_z!r}")
        if not (isinstance(guard_collapse, (int, float)) and 0 <= guard_collapse < 1):
            raise ValueError(f"LipschitzLR: guard_collapse must be in [0, 1); got {guard_collapse!r}")
        if not (_is_positive_number(guard_shrink) and guard_shrink < 1):
            raise ValueError(f"LipschitzLR: guard_shrink must be in (0, 1); got {guard_shrink!r}")
        if not (_is_positive_number(guard_lift) and guard_lift >= 1):
            raise ValueError(f"LipschitzLR: guard_lift must be a number >= 1 (1: never lift the ceiling); got {guard_lift!r}")
        if guard_snapshot not in SNAPSHOTS:
            raise ValueError(f"LipschitzLR: guard_snapshot must be one of {list(SNAPSHOTS)}; got {guard_snapshot!r}")

        self.rule = rule
        self.loss = loss
        self.head_name = head
        self.k = k
        self.weight_decay = weight_decay
        self.first_epoch_lr = entry.first_epoch_lr if first_epoch_lr is None else first_epoch_lr
        self.betas = betas
        self.eps = float(eps)
        self.bias_correction = bool(bias_correction)
        self.source = source
        self.probe_batches = probe_batches
        self.init_probe_batches = init_probe_batches
        self.decay = float(decay)
        self.max_lr = max_lr
        policy = policy_of(rule)  # the drop-in defaults; the app passes conf/optim's values
        self.max_growth = policy.max_growth if max_growth is None else max_growth
        self.guard = policy.guard if guard is None else bool(guard)
        self.guard_loss_factor = float(guard_loss_factor)
        self.guard_loss_z = float(guard_loss_z)
        self.guard_collapse = float(guard_collapse)
        self.guard_shrink = float(guard_shrink)
        self.guard_snapshot = guard_snapshot
        self.max_rollbacks = max_rollbacks
        self.guard_lift = float(guard_lift)
        self.first_epoch_checks = policy.first_epoch_checks if first_epoch_checks is None else bool(first_epoch_checks)
        self.first_epoch_growth = policy.first_epoch_growth if first_epoch_growth is None else float(first_epoch_growth)
        self._layout_needs = entry.statistics

        # Scheduling state (saved in checkpoints).
        self.lr: Optional[float] = None  # the rate in force for the current epoch
        self.state = RuleState()
        self.epochs_done = 0
        self.rollbacks = 0
        self._consecutive_rollbacks = 0
        self._ceiling: Optional[float] = None  # the guard's cap after a rollback
        self._ceiling_bound = False  # the coming epoch's rate is held at the ceiling
        self._epoch_max_lr: Optional[float] = None  # the largest rate in force in this epoch so far
        # The rule's plain rate on the first step's statistics (the weights the epoch started
        # from) in an epoch with first-epoch checks: the most a retry of that epoch may run at.
        self._start_rate: Optional[float] = None
        self._loss_reference: Optional[float] = None  # the last accepted epoch's final loss
        self._loss_reference_se = 0.0  # and its standard error
        self._initial_loss: Optional[float] = None  # the run's first step loss (the guard's scale)
        # The first epoch's checks: (plain base rate, momentum gain earned so far).
        self._first_epoch: Tuple[float, float] = (math.inf, 1.0)
        self._warned_invalid = False
        self._restored = False

        # Per-run wiring (set in setup / on_fit_start).
        self._hyper = RuleHyper(eps=self.eps, bias_correction=self.bias_correction)
        self._lambda = 0.0
        self._k = 0
        self._snapshot: Optional[Dict[str, Any]] = None
        self._loaded_snapshot: Optional[Dict[str, Any]] = None  # a mid-epoch checkpoint's snapshot
        self._epoch_finished = False
        self._restored_mid_epoch = False
        self.last_stats: Dict[str, float] = {}
        self._init_gathering()

    # ------------------------------------------------------------------ setup / validation

    @property
    def _rule(self) -> Rule:
        """The rule's registry entry (looked up, not stored: the callback pickles for ddp_spawn)."""
        return RULES[self.rule]

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule, loss=self.loss, head=self.head_name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._install_hooks(pl_module)
        self._k = self.k if self.k is not None else self._head.out_features
        if get_loss(self.loss).output_per_class and self._k < 2:
            self._remove_hooks()
            raise ValueError(
                f"LipschitzLR: loss {self.loss!r} needs k >= 2 classes; the head {self.head_name!r} "
                f"has {self._head.out_features} output(s) (use loss='bce' for one sigmoid output)"
            )
        if self.source == "probe":
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not callable(getattr(datamodule, "probe_dataloader", None)):
                self._remove_hooks()
                raise ValueError(
                    "LipschitzLR(source='probe') needs a datamodule with probe_dataloader() "
                    "(the un-augmented training data); use source='hooks' otherwise"
                )

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"LipschitzLR schedules exactly one optimizer; got {len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        check_optimizer(self.rule, optimizer)
        group = optimizer.param_groups[0]
        if self.weight_decay is None:
            self._lambda = max(float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups)
        else:
            self._lambda = float(self.weight_decay)
        self._hyper = RuleHyper(
            betas=self._resolve_betas(group), eps=self.eps, bias_correction=self.bias_correction,
            momentum=float(group.get("momentum", 0.0) or 0.0), dampening=float(group.get("dampening", 0.0) or 0.0),
        )
        if trainer.lr_scheduler_configs:
            rank_zero_warn("LipschitzLR sets the learning rate itself; the configured LR scheduler will fight it")
        self._allocate(pl_module.device)

    def _resolve_betas(self, group: Dict[str, Any]) -> Tuple[float, float]:
        b1, b2 = optimizer_fit(self.rule).betas(group)
        if self.betas is None:
            return b1, b2
        if isinstance(self.betas, (int, float)):
            beta = float(self.betas)
            return (b1, beta) if self._rule.single_beta == 1 else (beta, b2)
        bs = [float(b) for b in self.betas]
        return (bs[0], bs[-1])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    # ------------------------------------------------------------------ per-step hooks (no host sync)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._restored_mid_epoch:
            self._reset_epoch()
        else:
            self._discard_in_flight()
        self._epoch_finished = False
        if not self._restored_mid_epoch:
            self._epoch_max_lr = self.lr
            self._start_rate = None
        # The guard's snapshot of the epoch's start; for an epoch resumed mid-way, the one its
        # checkpoint holds (so the resumed epoch is guarded exactly as the uninterrupted one).
        if self._restored_mid_epoch:
            self._snapshot = self._saved_snapshot(pl_module) if self.guard else None
        else:
            self._snapshot = self._take_snapshot(trainer, pl_module) if self.guard else None
        self._loaded_snapshot = None
        self._restored_mid_epoch = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.source == "hooks":
            self._recording = True
            self._record_targets(batch)
        if self.decay > 0 and self.lr is not None:
            self._write_lr(trainer, time_decay(self.lr, self.decay, trainer.global_step))

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        weight = self._head.weight
        if weight.grad is None:
            return
        grad = weight.grad.detach()
        if self._lambda:
            grad = torch.add(grad, weight.detach(), alpha=self._lambda)
        g = torch.linalg.vector_norm(grad, ord=math.inf, dtype=torch.float32)  # max |entry|
        self._grad_max = g if self._grad_max is None else torch.maximum(self._grad_max, g)
        if self._layout.colabs:  # the gradient bound's lambda max|W| term, over the epoch's steps
            w = torch.linalg.vector_norm(weight.detach(), ord=math.inf, dtype=torch.float32)
            self._head_abs = w if self._head_abs is None else torch.maximum(self._head_abs, w)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recording = False
        self._end_batch(trainer, pl_module, outputs, batch_idx)

    def _end_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch_idx: int, finish: bool = True
    ) -> None:
        """A micro-batch whose optimizer step (if it ends one) has run: count it, close the step."""
        self._record_loss(outputs)
        self._micro_done += 1
        last = batch_idx + 1 == trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or last:
            self._commit_step()
            if (finish and self.first_epoch_checks and self._accepted_epochs == 0 and not last
                    and _is_power_of_two(len(self._steps))):
                self._check_first_epoch_rate(trainer, pl_module)
        if last and finish:
            self._finish_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Normally done at the last batch; this covers epochs cut short (max_steps, iterable data).
        if not self._epoch_finished and (self._steps or self.source == "probe"):
            self._finish_epoch(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Make the pending statistics those of the steps that finished, before the on-exception
        checkpoint is written (Lightning runs checkpoint callbacks last)."""
        self._recording = False
        if self._acc is None or self._epoch_finished:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if progress.processed > self._micro_done:
            # Its optimizer step ran, but the exception came before our on_train_batch_end:
            # Lightning counts the batch as done and will not run it again.
            self._end_batch(trainer, pl_module, None, progress.processed - 1, finish=False)
        else:
            self._discard_in_flight()

    # ------------------------------------------------------------------ epoch boundaries

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored:  # a checkpoint's rate; no probe
            self._steps = [step.to(pl_module.device) for step in self._steps]
            if self._grad_max is not None:
                self._grad_max = self._grad_max.to(pl_module.device)
            if self._head_abs is not None:
                self._head_abs = self._head_abs.to(pl_module.device)
            self._write_lr(trainer, self.lr)
            return
        if self.first_epoch_lr == "auto":
            # The rule's first update on the probe's statistics, bias-corrected (t = 1): 1/L for
            # sgd and adamo, (sqrt(G2) + eps)/K_z for rmsprop, (sqrt(G2) + eps)/L for adam.
            self._run_probe(trainer, pl_module, initial=True)
            stats = self._gather(trainer, pl_module)
            bound = epoch_bound(self.rule, stats, self.loss, self._k, self._lambda)
            lr = self._first_update(bound)
            if not (bounds.is_valid_bound(lr) and bounds.is_valid_bound(bound.L)):
                detail = (
                    f"the least-squares bound (K_a - |y|) K_z / m is negative while the outputs "
                    f"(K_a={stats.k_a:.4g}) are smaller than the targets (|y|={stats.y_norm:.4g})"
                    if get_loss(self.loss).bound_needs_targets else f"L={bound.L:.4g}, K_z={stats.k_z:.4g}"
                )
                raise LipschitzLRError(
                    f"LipschitzLR: the first-epoch probe of the initial weights gave no usable rate ({detail}); "
                    f"give the first epoch a rate: first_epoch_lr=<a positive number> (lr.first_epoch=... "
                    f"on the command line)"
                )
            self.lr = float(lr)
            # AdaMo's K is seeded with the Lipschitz constant whose inverse is the first rate.
            self.state = initial_state(self.rule, self.lr, probe_L=bound.L)
            rank_zero_info(
                f"LipschitzLR: first-epoch rate {self.lr:.6g} from a probe of the initial weights "
                f"(K_z={stats.k_z:.6g}, W={stats.w_max:.6g}, L={bound.L:.6g})"
            )
        else:
            self.lr = float(self.first_epoch_lr)
            self.state = initial_state(self.rule, self.lr)
        self._first_epoch = (self.lr, 1.0)
        self._write_lr(trainer, self.lr)

    def _first_update(self, bound: EpochStats) -> float:
        """The rule's first update, bias-corrected, without momentum's gain (``smooth``: the plain
        ``1/beta``; momentum earns its gain over the next epochs, under the rule's growth cap)."""
        hyper = RuleHyper(betas=self._hyper.betas, eps=self.eps, bias_correction=True)
        lr, _ = next_rate(self.rule, RuleState(), bound, hyper)
        return lr

    def _check_first_epoch_rate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Step-level estimate in the first epoch: the features of the initial weights are small,
        so a rate computed from them can be far too large once training has grown them. At steps
        1, 2, 4, 8, ... the rate is recomputed from the steps so far and lowered if it fell.

        With ``first_epoch_growth`` g the rate is ``base * gain``: ``base`` is that lowered plain
        step, and ``gain`` (from 1) is multiplied by g at each check that shows the rate in force
        to be safe (:func:`_steady`), up to the rule's full gain (momentum's ``(1+mu)/(1-d)``)."""
        stats = self._gather(trainer, pl_module)
        bound = epoch_bound(self.rule, stats, self.loss, self._k, self._lambda)
        plain = self._first_update(bound)
        if not (bounds.is_valid_bound(plain) and bounds.is_valid_bound(bound.L)):
            return
        if len(self._steps) == 1:
            self._start_rate = float(plain)
        base, gain = self._first_epoch
        if self.first_epoch_growth is not None and _steady(stats):
            full, _ = next_rate(self.rule, RuleState(), bound, self._hyper)
            gain = min(gain * self.first_epoch_growth, max(1.0, full / plain))
        base = min(base, plain)
        self._first_epoch = (base, gain)
        lr = base * gain if self._ceiling is None else min(base * gain, self._ceiling)
        if lr != self.lr:
            self.lr = float(lr)
            self._epoch_max_lr = max(self._epoch_max_lr or 0.0, self.lr)
            self._write_lr(trainer, self.lr)

    @property
    def _accepted_epochs(self) -> int:
        """Epochs finished and not rolled back (0 while the first epoch is being retried)."""
        return self.epochs_done - self.rollbacks

    def _finish_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather, reduce, compute the next rate, write it and log (once per epoch)."""
        self._epoch_finished = True
        self._recording = False
        if self.source == "probe":
            grad_max, head_abs = self._grad_max, self._head_abs
            self._run_probe(trainer, pl_module, initial=False)
            self._grad_max, self._head_abs = grad_max, head_abs
        stats = self._gather(trainer, pl_module)
        bound = epoch_bound(self.rule, stats, self.loss, self._k, self._lambda)
        used_lr = self.lr
        failure = self._guard_failure(stats) if self.guard else None
        invalid = capped = False
        self._ceiling_bound = False
        if failure is not None:
            first = self._accepted_epochs == 0
            failed_max = max(used_lr, self._epoch_max_lr or used_lr)
            new_lr = retry_rate(failed_max, self.guard_shrink, self._start_rate if first else None)
            self._roll_back(trainer, pl_module, failure, new_lr)
            self._ceiling = new_lr
            self._ceiling_bound = True
            if first:  # the retry is a first epoch again: its checks start from the retry's rate
                self._first_epoch = (new_lr, 1.0)
        else:
            self._consecutive_rollbacks = 0
            if stats.step_losses:
                self._loss_reference, self._loss_reference_se = mean_and_se(
                    stats.step_losses[-max(1, len(stats.step_losses) // 4):])
            new_lr, new_state = next_rate(self.rule, self.state, bound, self._hyper)
            invalid = not (bounds.is_valid_bound(bound.L) and stats.k_z > 0 and bounds.is_valid_bound(new_lr))
            if invalid:
                if not self._warned_invalid:
                    rank_zero_warn(
                        f"LipschitzLR: epoch {trainer.current_epoch} gave an unusable bound (L={bound.L}, "
                        f"K_z={stats.k_z}, W={stats.w_max}, K_a={stats.k_a}, |y|={stats.y_norm}, "
                        f"candidate lr={new_lr}); keeping lr={self.lr}"
                    )
                    self._warned_invalid = True
                new_lr = self.lr
            else:
                self.state = new_state
                # A healthy epoch lifts the guard's ceiling (removed once the rule's rate is below it).
                self._ceiling = lift_ceiling(self._ceiling, new_lr, self.guard_lift)
                self._ceiling_bound = self._ceiling is not None and new_lr > self._ceiling
                max_lr = self.max_lr if self._ceiling is None else min(self.max_lr or math.inf, self._ceiling)
                new_lr, capped = apply_caps(new_lr, self.lr, max_lr, self.max_growth)
                if capped:
                    rank_zero_info(f"LipschitzLR: capped the rate of epoch {trainer.current_epoch + 1} at {new_lr:.6g}")
        self.lr = float(new_lr)
        self.epochs_done += 1
        self._reset_epoch()
        self._write_lr(trainer, time_decay(self.lr, self.decay, trainer.global_step) if self.decay else self.lr)
        self._log(pl_module, stats, bound, used_lr, capped, invalid)

    def _log(self, pl_module: pl.LightningModule, stats: HeadStats, bound: EpochStats, used_lr: float,
             capped: bool, invalid: bool) -> None:
        metrics = {
            "lipschitz/lr": used_lr,
            "lipschitz/next_lr": self.lr,
            "lipschitz/L": bound.L,
            "lipschitz/K_z": stats.k_z,
            "lipschitz/W": stats.w_max,
            "lipschitz/capped": float(capped),
            "lipschitz/bound_invalid": float(invalid),
        }
        for name in self._rule.logged:
            metrics[f"lipschitz/{name}"] = getattr(self.state, name)
        if self.guard:
            metrics["lipschitz/rollbacks"] = float(self.rollbacks)
            metrics["lipschitz/ceiling_bound"] = float(self._ceiling_bound)
        if self._rule.bounds_gradient and math.isfinite(stats.grad_max) and bounds.is_valid_bound(bound.L):
            metrics["lipschitz/grad_max_over_L"] = stats.grad_max / bound.L
        raw = {"K_z": stats.k_z, "S": stats.s, "K_a": stats.k_a, "y_norm": stats.y_norm, "W": stats.w_max,
               "grad_max": stats.grad_max, "m": stats.m,
               "ceiling": self._ceiling if self._ceiling is not None else math.nan}
        self.last_stats = dict(raw, **{k.split("/")[1]: v for k, v in metrics.items()})
        with warnings.catch_warnings():
            # The values are identical on every rank: no need for Lightning's sync_dist advice.
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1, sync_dist=False)
        # TensorBoard's x axis is the global step; the same values against the epoch (0-based) line
        # up runs with different steps per epoch. Plain floats, written by rank 0's writer only.
        for logger in pl_module.loggers:
            if isinstance(logger, pl.loggers.TensorBoardLogger):
                for key, value in metrics.items():
                    logger.experiment.add_scalar(f"lipschitz_by_epoch/{key[len('lipschitz/'):]}", float(value),
                                                 global_step=pl_module.current_epoch)

    def _write_lr(self, trainer: pl.Trainer, lr: float) -> None:
        """The one place the rate enters the optimizer (times each group's ``lr_scale``)."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    # ------------------------------------------------------------------ the guard

    def _take_snapshot(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Dict[str, Any]:
        """The weights (and buffers) and optimizer state of the epoch's start: one copy of each,
        on the device or on the host (``guard_snapshot``)."""
        target = pl_module.device if self.guard_snapshot == "device" else torch.device("cpu")
        return {
            "model": _to_device(pl_module.state_dict(), target),
            "optimizers": [_to_device(o.state_dict(), target) for o in trainer.optimizers],
            "state": self.state,
        }

    def _saved_snapshot(self, pl_module: pl.LightningModule) -> Optional[Dict[str, Any]]:
        """The epoch-start snapshot a mid-epoch checkpoint held, moved where the guard keeps it."""
        saved = getattr(self, "_loaded_snapshot", None)
        if saved is None:
            return None
        target = pl_module.device if self.guard_snapshot == "device" else torch.device("cpu")
        state = saved["state"]
        return {
            "model": _to_device(saved["model"], target),
            "optimizers": _to_device(saved["optimizers"], target),
            "state": RuleState(K1=float(state["K1"]), K2=float(state["K2"]), t=int(state["t"])),
        }

    def _guard_failure(self, stats: HeadStats) -> Optional[str]:
        """Why this epoch must be rolled back, or ``None``. Identical on every rank: it reads only
        reduced statistics."""
        if self._snapshot is None:
            return None
        losses, norms = stats.step_losses, stats.step_norms
        finite = all(math.isfinite(x) for x in (*losses, *norms, stats.w_max, stats.k_z))
        if not finite:
            return "the training loss or the weights turned non-finite"
        if losses:
            first = self._loss_reference is None
            start = losses[0] if first else self._loss_reference
            if self._initial_loss is None:
                self._initial_loss = losses[0]
            end = loss_rose(start, 0.0 if first else self._loss_reference_se, losses, self.guard_loss_factor,
                            self.guard_loss_z, self._initial_loss)
            if end is not None:
                return f"the training loss rose from {start:.4g} to {end:.4g}"
        if norms and self.guard_collapse > 0:
            n = max(1, len(norms) // 4)
            start, end = _mean(norms[:n]), _mean(norms[-n:])
            if end < self.guard_collapse * start:
                return f"the head input's norm collapsed from {start:.4g} to {end:.4g}"
        return None

    def _roll_back(self, trainer: pl.Trainer, pl_module: pl.LightningModule, reason: str, retry_lr: float) -> None:
        snapshot = self._snapshot
        with torch.no_grad():
            pl_module.load_state_dict(snapshot["model"])
        for optimizer, state in zip(trainer.optimizers, snapshot["optimizers"]):
            optimizer.load_state_dict(state)
        self.state = snapshot["state"]
        self.rollbacks += 1
        self._consecutive_rollbacks += 1
        if self._consecutive_rollbacks > self.max_rollbacks:
            raise LipschitzLRError(
                f"LipschitzLR: epoch {trainer.current_epoch} failed after {self.max_rollbacks} rollbacks in a row "
                f"({reason}); lower the rate (first_epoch_lr, max_lr) or check the data"
            )
        # A log line (not a Python warning, which filters and PYTHONWARNINGS=ignore drop) each time.
        _log_rank_zero(
            f"LipschitzLR guard: in epoch {trainer.current_epoch} {reason}; restored the weights and optimizer "
            f"state of its start and retrying at lr={retry_lr:.6g} (rollback {self.rollbacks}; "
            f"guard=False for the raw rule)"
        )

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> Dict[str, Any]:
        state = {
            "rule": self.rule,
            "lr": self.lr,
            "K1": self.state.K1,
            "K2": self.state.K2,
            "t": self.state.t,
            "epochs_done": self.epochs_done,
            "warned_invalid": self._warned_invalid,
            "rollbacks": self.rollbacks,
            "consecutive_rollbacks": self._consecutive_rollbacks,
            "ceiling": self._ceiling,
            "ceiling_bound": self._ceiling_bound,
            "epoch_max_lr": self._epoch_max_lr,
            "start_rate": self._start_rate,
            "loss_reference": self._loss_reference,
            "loss_reference_se": self._loss_reference_se,
            "initial_loss": self._initial_loss,
            "first_epoch": list(self._first_epoch),
        }
        # An interrupted epoch's statistics so far: the steps that finished (empty at epoch boundaries),
        # and the guard's snapshot of its start (on the host; plain values only, for weights_only loads).
        pending = self._pending_state() if not self._epoch_finished else {"pending_steps": [], "pending_grad_max": None}
        state.update(pending)
        if not self._epoch_finished and self._snapshot is not None:
            snapshot = self._snapshot
            state["guard_snapshot"] = {
                "model": _to_host(snapshot["model"]),
                "optimizers": _to_host(snapshot["optimizers"]),
                "state": {"K1": snapshot["state"].K1, "K2": snapshot["state"].K2, "t": snapshot["state"].t},
            }
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.lr = state_dict.get("lr")
        self.state = RuleState(
            K1=float(state_dict.get("K1", 0.0)), K2=float(state_dict.get("K2", 0.0)), t=int(state_dict.get("t", 0))
        )
        self.epochs_done = int(state_dict.get("epochs_done", 0))
        self._warned_invalid = bool(state_dict.get("warned_invalid", False))
        self.rollbacks = int(state_dict.get("rollbacks", 0))
        self._consecutive_rollbacks = int(state_dict.get("consecutive_rollbacks", 0))
        self._ceiling = state_dict.get("ceiling")
        # Read with .get: checkpoints from before the ceiling's lift lack these.
        self._ceiling_bound = bool(state_dict.get("ceiling_bound", False))
        self._epoch_max_lr = state_dict.get("epoch_max_lr", self.lr)
        self._start_rate = state_dict.get("start_rate")
        self._loss_reference = state_dict.get("loss_reference")
        self._loss_reference_se = float(state_dict.get("loss_reference_se") or 0.0)
        self._initial_loss = state_dict.get("initial_loss")
        self._first_epoch = tuple(state_dict.get("first_epoch") or (self.lr if self.lr is not None else math.inf, 1.0))
        self._load_pending(state_dict)
        self._restored_mid_epoch = bool(self._steps)
        # Read with .get: checkpoints from before the snapshot was saved lack it (that epoch is unguarded).
        self._loaded_snapshot = state_dict.get("guard_snapshot") if self._restored_mid_epoch else None
        self._restored = self.lr is not None


def _to_device(obj: Any, device: torch.device) -> Any:
    """A copy of ``obj`` with every tensor copied to ``device`` (dicts, lists and tuples walked)."""
    if torch.is_tensor(obj):
        return obj.detach().to(device, copy=True)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_device(v, device) for v in obj)
    return copy.deepcopy(obj)


def _to_host(obj: Any) -> Any:
    return _to_device(obj, torch.device("cpu"))


@rank_zero_only
def _log_rank_zero(message: str) -> None:
    log.warning(message)


def _steady(stats: HeadStats) -> bool:
    """Whether the first epoch's last two windows of steps (``(n/4, n/2]`` and ``(n/2, n]`` at
    check ``n``) show the rate in force to be safe: the features did not grow (the largest
    ``||A||_F^2`` rose by less than ``1/STEADY``) and the mean loss fell, and is below the initial
    loss (the first step's). Never at check 1 (its statistics are those of the initial weights,
    before any update)."""
    n = len(stats.step_losses)
    if n < 2 or len(stats.step_norms) != n:
        return False
    now, before = slice(n // 2, n), slice(n // 4, n // 2)
    grown = max(stats.step_norms[now]) ** 2 > max(stats.step_norms[before]) ** 2 / STEADY
    loss_now, loss_before = _mean(stats.step_losses[now]), _mean(stats.step_losses[before])
    return not grown and loss_now < loss_before and loss_now < stats.step_losses[0]


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0
