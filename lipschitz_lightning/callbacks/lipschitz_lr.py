"""The ``LipschitzLR`` callback: each epoch, set the learning rate to the LipschitzLR rule.

Contract (spec ``lipschitz-lr-spec.md``): statistics gathered while epoch ``t`` trains decide the
rate of epoch ``t + 1``. The rate is computed at the end of epoch ``t``'s last training batch
(before validation and before any end-of-epoch checkpoint, so a checkpoint always holds the rate
the next epoch will use) and written into every param group, times the group's ``lr_scale`` if it
has one. The math lives in :mod:`lipschitz_lightning.math`.

The callback wires five parts of ``callbacks/``, each with its own small state (a dataclass, saved
flat into the callback's ``state_dict``, read back with ``.get``): ``gathering.HeadGatherer`` (hooks,
the epoch's record, the reduction), ``scheduler.RateScheduler`` (the rule's update, caps, the one
write of the rate, logging), ``rollback.RollbackGuard``, ``first_epoch.FirstEpochRate`` (the probe
and the re-checks) and ``polyak.PolyakStep`` (the capped Polyak step, ``polyak=True``).
A rule is looked up in :data:`lipschitz_lightning.math.rules.RULES`; the epoch's bound is
:func:`lipschitz_lightning.math.rules.epoch_bound`, the function the tests check.

Gathering costs no extra forward pass: a forward pre-hook on the head ``nn.Linear`` adds what the
rule needs into one preallocated device vector per optimizer step, in place (a compiled model
compiles once). No host sync per step, no collective (``polyak``: one number's under DDP); at epoch
end one ``all_reduce(SUM)`` makes ``K_z`` the norm of the *global* batch (N devices x batch b: the
rate of one device x batch N*b).

The guard (:mod:`~lipschitz_lightning.callbacks.rollback`) is on by default for every rule, the
paper's four included; ``guard=False`` (``optim.callback.guard=false`` in the app) is the raw rule.
It changes no rate until an epoch fails; each rollback is one WARNING log line. The keys logged
once per epoch (``lipschitz/lr``, ``next_lr``, ``L``, ...) are listed in the scheduler, which logs them.

Example (``MyLitModel.configure_optimizers`` returns ``torch.optim.SGD(params, lr=0.1)``)::

    trainer = pl.Trainer(max_epochs=10, callbacks=[LipschitzLR(rule="sgd", loss="softmax_ce")])
    trainer.fit(MyLitModel(), datamodule=dm)
"""

from __future__ import annotations

from functools import partial
from typing import Any, Dict, Optional, Sequence, Set, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from lipschitz_lightning.callbacks.errors import LipschitzLRError
from lipschitz_lightning.callbacks.first_epoch import FirstEpochRate
from lipschitz_lightning.callbacks.gathering import EpochRecord, HeadGatherer, find_head
from lipschitz_lightning.callbacks.policy import check_optimizer, optimizer_fit, policy_of
from lipschitz_lightning.callbacks.polyak import PolyakStep
from lipschitz_lightning.callbacks.rollback import RollbackGuard
from lipschitz_lightning.callbacks.scheduler import RateScheduler
from lipschitz_lightning.math.guard import retry_rate
from lipschitz_lightning.math.losses import get_loss
from lipschitz_lightning.math.rules import RULE_ALIASES, RULES, RuleState, canonical_rule, get_rule, initial_state

__all__ = ["LipschitzLR", "LipschitzLRError", "check_optimizer", "find_head"]


class LipschitzLR(pl.Callback):
    """Schedule the learning rate by a LipschitzLR rule (Yedida & Saha, and ours); see module docstring.

    Args:
        rule: a name in :data:`lipschitz_lightning.math.rules.RULES`: the paper's ``"sgd"``
            (adaptive SGD), ``"adamo"`` (momentum), ``"rmsprop"``, ``"auto_adam"`` (Auto-Adam; its
            earlier name ``"adam"`` is accepted); ours ``"adamo_consistent"``, ``"gradbound"``,
            ``"smooth"``, ``"curvature"``, ``"precond"`` (``docs/rules.md``).
        loss: ``"softmax_ce"``, ``"bce"`` (one sigmoid output) or ``"mse"`` (least squares).
        head: module name of the head ``nn.Linear``; default the model's last ``nn.Linear``.
        k: number of classes; default the head's ``out_features``.
        weight_decay: L2 coefficient lambda; default the optimizer's largest ``weight_decay``.
        first_epoch_lr: rate of the first epoch: a positive float, ``"auto"`` (the rule's first update
            on a no-grad probe of the initial weights), or ``None``: the rule's (``Rule.first_epoch_lr``).
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
        guard_loss_factor, guard_loss_z, guard_collapse, guard_shrink, guard_snapshot, max_rollbacks,
            guard_lift, guard_drift: the guard's settings
            (:class:`~lipschitz_lightning.callbacks.rollback.RollbackGuard` describes each).
        first_epoch_checks, first_epoch_growth: re-check the first epoch's rate at its steps 1, 2,
            4, ... (one host sync each, first epoch only), and the factor by which a check may raise
            it (:class:`~lipschitz_lightning.callbacks.first_epoch.FirstEpochRate`); ``None``: the
            rule's default. The app sets them, ``max_growth`` and ``guard`` from ``conf/optim``.
        per_step: (``precond``) rescale the rate at every optimizer step by that step's statistic,
            a device tensor written in place (``RateScheduler.on_step``; torch's Adam/AdamW only).
        polyak: scale each step to the Polyak step of its batch loss, at most the rule's rate
            (:mod:`~lipschitz_lightning.callbacks.polyak`; Schedule-Free SGD or plain SGD).

    Raises:
        ValueError: a bad argument (here), or before training: no ``nn.Linear`` head, a missing
            named head, ``k < 2`` with ``softmax_ce``, an optimizer that does not fit the rule.

    Attributes:
        gatherer, scheduler, rollback, first_epoch: the four parts (module docstring); ``lr``,
        ``state``, ``epochs_done``, ``rollbacks`` and ``last_stats`` (the last epoch's logged values
        and raw statistics) read their states.
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
        guard_drift: float = 0.1,
        first_epoch_checks: Optional[bool] = None,
        first_epoch_growth: Optional[float] = None,
        per_step: bool = False,
        polyak: bool = False,
    ) -> None:
        super().__init__()
        try:
            rule = canonical_rule(rule)  # an earlier name (``adam``) resolves to the registry's
        except ValueError as exc:
            raise ValueError(f"LipschitzLR: {exc}") from None
        entry = RULES[rule]
        get_loss(loss, "LipschitzLR")
        if loss not in entry.losses:
            raise ValueError(f"LipschitzLR: rule {rule!r} is derived for the losses {list(entry.losses)}; "
                             f"got loss {loss!r}")
        self.rule, self.loss = rule, loss
        policy = policy_of(rule)  # the drop-in defaults; the app passes conf/optim's values
        # Each part checks its own arguments.
        self.gatherer = HeadGatherer(loss, head, source, probe_batches, entry.statistics)
        self.first_epoch = FirstEpochRate(
            entry.first_epoch_lr if first_epoch_lr is None else first_epoch_lr,
            policy.first_epoch_checks if first_epoch_checks is None else first_epoch_checks,
            policy.first_epoch_growth if first_epoch_growth is None else first_epoch_growth,
            init_probe_batches, follow=entry.first_epoch_from_steps,
        )
        self.scheduler = RateScheduler(rule, loss, k, weight_decay, betas, eps, bias_correction, decay, max_lr,
                                       policy.max_growth if max_growth is None else max_growth, per_step)
        self.rollback = RollbackGuard(policy.guard if guard is None else guard, guard_loss_factor, guard_loss_z,
                                      guard_collapse, guard_shrink, guard_snapshot, max_rollbacks, guard_lift,
                                      guard_drift)
        self.polyak = PolyakStep(polyak)
        self.last_stats: Dict[str, float] = {}
        self._epoch_finished = self._restored = self._restored_mid_epoch = False
        self._started_epoch: Optional[int] = None  # the epoch whose start has run

    # ------------------------------------------------------------------ the settings, read back

    guard = property(lambda self: self.rollback.enabled, doc="The rollback guard is on.")
    max_growth = property(lambda self: self.scheduler.max_growth, doc="The cap on the rate's growth per epoch.")
    first_epoch_lr = property(lambda self: self.first_epoch.lr, doc="The first epoch's rate, or 'auto'.")
    first_epoch_checks = property(lambda self: self.first_epoch.checks, doc="The first epoch's rate is re-checked.")
    first_epoch_growth = property(lambda self: self.first_epoch.growth, doc="The checks' growth factor (None: off).")
    head_name = property(lambda self: self.gatherer.head_name, doc="The head's module name (after setup).")
    lr = property(lambda self: self.scheduler.lr, doc="The rate in force for the current epoch.")
    state = property(lambda self: self.scheduler.rule_state, doc="The rule's EWMA state.")
    epochs_done = property(lambda self: self.scheduler.state.epochs_done, doc="Epochs finished, rolled back ones included.")
    rollbacks = property(lambda self: self.rollback.state.rollbacks, doc="Epochs rolled back so far.")

    @property
    def accepted_epochs(self) -> int:
        """Epochs finished and not rolled back (0 while the first epoch is being retried)."""
        return self.epochs_done - self.rollbacks

    @property
    def state_key(self) -> str:
        # Filed under the rule's state name (``adam`` for ``auto_adam``), so older checkpoints load.
        return self._generate_state_key(rule=get_rule(self.rule).state_name, loss=self.loss, head=self.head_name)

    @staticmethod
    def rules_of(checkpoint: Dict[str, Any]) -> Set[str]:
        """The rules (registry names) of the ``LipschitzLR`` states a checkpoint holds (empty: none);
        the one reader of this callback's keys outside it (the app's resume check asks it)."""
        names = [str(state.get("rule")) for key, state in (checkpoint.get("callbacks") or {}).items()
                 if str(key).startswith("LipschitzLR") and isinstance(state, dict)]
        return {RULE_ALIASES.get(name, name) for name in names}  # an unknown name compares as it is

    # ------------------------------------------------------------------ setup

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.gatherer.install(pl_module)
        try:
            self.scheduler.set_classes(self.gatherer.head.out_features, self.head_name)
            self.gatherer.check_datamodule(trainer)
        except ValueError:
            self.gatherer.remove()
            raise

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.scheduler.fit_start(trainer)
        self.polyak.check(trainer.optimizers[0])
        self.gatherer.allocate(pl_module.device, trainer.optimizers[0])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.gatherer.remove()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored:  # a checkpoint's rate; no probe
            self.gatherer.record.to(pl_module.device)
            self.scheduler.write(trainer, self.lr)
            if self._restored_mid_epoch:
                # Lightning does not call on_train_epoch_start for an epoch resumed mid-way: its
                # start is here, with the guard's snapshot that the checkpoint held.
                self._start_epoch(trainer, pl_module, resumed=True)
            return
        if self.first_epoch.lr == "auto":
            # The rule's first update on the probe's statistics, bias-corrected (t = 1): 1/L for
            # sgd and adamo, (sqrt(G2) + eps)/K_z for rmsprop, (sqrt(G2) + eps)/L for auto_adam.
            stats = self.gatherer.probe(trainer, pl_module, initial=True, max_batches=self.first_epoch.probe_batches)
            bound = self.scheduler.bound(stats)
            lr = self.first_epoch.probe_rate(self.scheduler.plain_update(bound), bound, stats, self.loss)
            # AdaMo's K is seeded with the Lipschitz constant whose inverse is the first rate.
            self.scheduler.start(trainer, lr, initial_state(self.rule, lr, probe_L=bound.L))
            rank_zero_info(
                f"LipschitzLR: first-epoch rate {lr:.6g} from a probe of the initial weights "
                f"(K_z={stats.k_z:.6g}, W={stats.w_max:.6g}, L={bound.L:.6g})"
            )
        else:
            lr = float(self.first_epoch.lr)
            self.scheduler.start(trainer, lr, initial_state(self.rule, lr))
        self.first_epoch.begin(self.lr)

    # ------------------------------------------------------------------ per-step hooks (no host sync)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._started_epoch != trainer.current_epoch:  # not the epoch resumed in on_train_start
            self._start_epoch(trainer, pl_module, resumed=False)

    def _start_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule, resumed: bool) -> None:
        """An epoch begins, or (``resumed``) continues from a mid-epoch checkpoint with the
        statistics of its finished steps and its start's snapshot."""
        if resumed:
            self.gatherer.discard_in_flight()
        else:
            self.gatherer.reset_epoch()
            self.scheduler.start_epoch()
            self.first_epoch.start_epoch()
        self._epoch_finished = False
        self.rollback.start_epoch(trainer, pl_module, self.state, resumed_mid_epoch=resumed)
        self._restored_mid_epoch = False
        self._started_epoch = trainer.current_epoch

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.gatherer.start_batch(batch)
        self.scheduler.on_batch_start(trainer)

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: torch.Tensor) -> None:
        self.polyak.add_loss(loss)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        head = self.gatherer.head_optimizer_state(optimizer) if self.gatherer.needs_preconditioner else None
        terms = partial(optimizer_fit(self.rule, optimizer).step_terms, *head) if head is not None else None
        self.gatherer.observe_gradient(self.scheduler.weight_decay_in_use, terms)
        self.polyak.scale_gradients(trainer, optimizer)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._end_batch(trainer, pl_module, outputs, batch_idx)

    def _end_batch(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch_idx: int, finish: bool = True
    ) -> None:
        """A micro-batch whose optimizer step (if it ends one) has run: count it, close the step."""
        self.gatherer.end_batch(outputs)
        last = batch_idx + 1 == trainer.num_training_batches
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0 or last:
            self.gatherer.commit_step()
            self.scheduler.on_step(trainer, self.gatherer.last_step_terms())
            steps = len(self.gatherer.record.steps)
            if finish and self.first_epoch.due(steps, self.accepted_epochs, last):
                self._check_first_epoch_rate(trainer, pl_module, steps)
        if last and finish:
            self._finish_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Normally done at the last batch; this covers epochs cut short (max_steps, iterable data).
        if not self._epoch_finished and (self.gatherer.record.steps or self.gatherer.source == "probe"):
            self._finish_epoch(trainer, pl_module)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        """Make the pending statistics those of the steps that finished, before the on-exception
        checkpoint is written (Lightning runs checkpoint callbacks last)."""
        self.gatherer.recording = False
        if not self.gatherer.allocated or self._epoch_finished:
            return
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        if progress.processed > self.gatherer.record.micro_done:
            # Its optimizer step ran, but the exception came before our on_train_batch_end:
            # Lightning counts the batch as done and will not run it again.
            self._end_batch(trainer, pl_module, None, progress.processed - 1, finish=False)
        else:
            self.gatherer.discard_in_flight()

    # ------------------------------------------------------------------ epoch boundaries

    def _check_first_epoch_rate(self, trainer: pl.Trainer, pl_module: pl.LightningModule, steps: int) -> None:
        """The first epoch's check at step ``steps`` (:mod:`~lipschitz_lightning.callbacks.first_epoch`);
        one host sync each, first epoch only."""
        stats = self.gatherer.gather(trainer, pl_module)
        bound = self.scheduler.bound(stats)
        plain = self.scheduler.plain_update(bound)
        lr = self.first_epoch.check(steps, stats, bound, plain, self.scheduler.full_update(bound),
                                    self.rollback.ceiling)
        if lr is not None and lr != self.lr:
            self.scheduler.set_within_epoch(trainer, lr)
            self.scheduler.set_reference(stats.precond_ratio)

    def _finish_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather, reduce, compute the next rate, write it and log (once per epoch)."""
        self._epoch_finished = True
        self.gatherer.recording = False
        gatherer, scheduler, guard = self.gatherer, self.scheduler, self.rollback
        if gatherer.source == "probe":
            stats = gatherer.probe(trainer, pl_module, initial=False)
        else:
            stats = gatherer.gather(trainer, pl_module)
        bound = scheduler.bound(stats)
        used_lr = self.lr
        epoch = trainer.current_epoch
        epoch_max = max(used_lr, scheduler.state.epoch_max_lr or used_lr)  # the largest rate in force
        failure = guard.failure(stats, epoch_max)
        invalid = capped = False
        if failure is not None:
            first = self.accepted_epochs == 0
            new_lr = retry_rate(epoch_max, guard.shrink, self.first_epoch.state.start_rate if first else None)
            new_state: Optional[RuleState] = guard.roll_back(trainer, pl_module, failure, new_lr)
            if first:  # the retry is a first epoch again: its checks start from the retry's rate
                self.first_epoch.begin(new_lr)
        else:
            guard.accept(stats, epoch_max)
            new_lr, new_state = scheduler.candidate(bound, stats, epoch)
            invalid = new_state is None
            if not invalid:
                # A healthy epoch lifts the guard's ceiling (removed once the rule's rate is below it).
                new_lr, capped = scheduler.capped(new_lr, guard.lift_ceiling(new_lr), epoch)
        if failure is None and not invalid:
            scheduler.set_reference(stats.precond_ratio)
        scheduler.end_epoch(trainer, new_lr, new_state)
        gatherer.reset_epoch()
        ceiling = guard.ceiling if guard.ceiling is not None else float("nan")
        self.last_stats = scheduler.log(pl_module, stats, bound, used_lr, capped, invalid,
                                        {**guard.metrics(), **self.polyak.metrics()},
                                        {"ceiling": ceiling})

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> Dict[str, Any]:
        """The parts' states, flat (the keys of earlier versions), plus an interrupted epoch's
        statistics so far (empty at epoch boundaries) and the guard's snapshot of its start."""
        mid_epoch = not self._epoch_finished
        state: Dict[str, Any] = {"rule": self.rule}
        state.update(self.scheduler.state_dict())
        state.update(self.rollback.state_dict(mid_epoch))
        state.update(self.first_epoch.state_dict())
        state.update(self.polyak.state_dict())
        record = self.gatherer.record if mid_epoch else EpochRecord()
        state.update(record.state_dict())
        return state

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state_dict)
        self.first_epoch.load_state_dict(state_dict, self.lr)
        self.polyak.load_state_dict(state_dict)
        self.gatherer.record = EpochRecord.from_state(state_dict)
        self._restored_mid_epoch = bool(self.gatherer.record.steps)
        self.rollback.load_state_dict(state_dict, mid_epoch=self._restored_mid_epoch)
        self._restored = self.lr is not None
