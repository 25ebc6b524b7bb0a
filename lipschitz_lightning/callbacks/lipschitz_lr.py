"""The ``LipschitzLR`` callback: each epoch, set the learning rate to the LipschitzLR rule.

Contract (spec ``lipschitz-lr-spec.md``): statistics gathered while epoch ``t`` trains decide the
rate of epoch ``t + 1``. The rate is computed at the end of epoch ``t``'s last training batch
(before validation and before any end-of-epoch checkpoint, so a checkpoint always holds the rate
the next epoch will use) and written into every param group, times the group's ``lr_scale`` if it
has one. The math lives in :mod:`lipschitz_lightning.math`; this class gathers, reduces, calls the
math, writes the rate and logs.

Gathering costs no extra forward pass: a forward pre-hook on the head ``nn.Linear`` adds the
squared Frobenius norm of its input batch (and of its element-wise square for the RMSprop/Adam
rules) into one running scalar per optimizer step, on the device. Nothing moves to the host and
no collective runs per step; at epoch end one ``all_reduce(SUM)`` of the per-step vector makes
``K_z`` the norm of the *global* batch, so N devices x batch b give the rate of one device x batch
N*b (spec section 4).

Logged once per epoch (through ``pl_module.log``, so they reach the logger and
``trainer.callback_metrics``):

* ``lipschitz/lr`` -- the rate used during the epoch that just ended,
* ``lipschitz/next_lr`` -- the rate computed for the coming epoch,
* ``lipschitz/L``, ``lipschitz/K_z``, ``lipschitz/W`` -- this epoch's bound and statistics,
* ``lipschitz/K1``, ``lipschitz/K2`` -- the EWMA states (AdaMo, RMSprop, Auto-Adam),
* ``lipschitz/grad_max_over_L`` -- the largest last-layer gradient entry seen this epoch (weight
  decay included) over this epoch's bound; the theory holds while it stays <= 1,
* ``lipschitz/capped`` and ``lipschitz/bound_invalid`` -- 1 when a safety cap bound, or when the
  bound was non-positive/NaN/inf and the previous rate was kept.

Example::

    import pytorch_lightning as pl
    from lipschitz_lightning import LipschitzLR

    model = MyLitModel()  # configure_optimizers returns torch.optim.SGD(params, lr=0.1)
    trainer = pl.Trainer(max_epochs=10, callbacks=[LipschitzLR(rule="sgd", loss="softmax_ce")])
    trainer.fit(model, datamodule=dm)
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from lipschitz_lightning.math import bounds
from lipschitz_lightning.math.bounds import LOSSES
from lipschitz_lightning.math.rules import (
    RULES,
    EpochStats,
    RuleHyper,
    RuleState,
    apply_caps,
    default_first_epoch_lr,
    initial_state,
    next_rate,
    time_decay,
)

__all__ = ["LipschitzLR", "LipschitzLRError", "check_optimizer", "find_head"]


class LipschitzLRError(ValueError):
    """LipschitzLR cannot produce a first rate (e.g. the probe's bound is not positive); raised
    before the first training step, with a message that says what to set."""

SOURCES = ("hooks", "probe")

# Columns of the per-step statistics vector: squared Frobenius norms, summed over the
# micro-batches (and, at epoch end, the ranks) of one optimizer step.
_A2, _A4, _OUT2, _Y2 = range(4)
_N_STATS = 4


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


_RULE_OPTIMIZERS = {
    "sgd": "torch.optim.SGD without momentum",
    "adamo": "torch.optim.SGD with momentum > 0",
    "rmsprop": "torch.optim.RMSprop",
    "adam": "torch.optim.Adam or torch.optim.AdamW",
}


def check_optimizer(rule: str, optimizer: torch.optim.Optimizer) -> None:
    """Raise ``ValueError`` if ``optimizer`` does not fit ``rule`` (spec section 3).

    Adaptive SGD needs plain SGD, AdaMo SGD with momentum (ideally ``dampening=momentum``, the
    EWMA velocity of the paper; a warning says so otherwise), adaptive RMSprop needs RMSprop and
    Auto-Adam Adam or AdamW.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; expected one of {sorted(RULES)}")
    group = optimizer.param_groups[0]
    momentum = group.get("momentum", 0.0)
    fits = {
        "sgd": isinstance(optimizer, torch.optim.SGD) and momentum == 0,
        "adamo": isinstance(optimizer, torch.optim.SGD) and momentum > 0,
        "rmsprop": isinstance(optimizer, torch.optim.RMSprop),
        "adam": isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)),
    }[rule]
    if not fits:
        detail = f" (momentum={momentum})" if isinstance(optimizer, torch.optim.SGD) else ""
        raise ValueError(
            f"LipschitzLR rule {rule!r} needs {_RULE_OPTIMIZERS[rule]}; "
            f"got {type(optimizer).__name__}{detail}"
        )
    if rule == "adamo" and group.get("dampening", 0.0) != momentum:
        rank_zero_warn(
            f"LipschitzLR rule 'adamo': SGD(momentum={momentum}, dampening="
            f"{group.get('dampening', 0.0)}) is not the EWMA velocity v <- b v + (1-b) g the "
            f"paper assumes; use dampening={momentum}"
        )


def _optimizer_betas(rule: str, optimizer: torch.optim.Optimizer) -> Tuple[float, float]:
    group = optimizer.param_groups[0]
    if rule == "adamo":
        return float(group["momentum"]), 0.999
    if rule == "rmsprop":
        return 0.9, float(group["alpha"])
    if rule == "adam":
        b1, b2 = group["betas"]
        return float(b1), float(b2)
    return 0.9, 0.999


def _is_positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


class LipschitzLR(pl.Callback):
    """Schedule the learning rate by the LipschitzLR rule (Yedida & Saha); see module docstring.

    Args:
        rule: ``"sgd"`` (adaptive SGD), ``"adamo"`` (momentum), ``"rmsprop"`` or ``"adam"``
            (Auto-Adam).
        loss: ``"softmax_ce"``, ``"bce"`` (one sigmoid output) or ``"mse"`` (least squares).
        head: module name of the head ``nn.Linear``; default the model's last ``nn.Linear``.
        k: number of classes; default the head's ``out_features``.
        weight_decay: L2 coefficient lambda; default the optimizer's largest ``weight_decay``.
        first_epoch_lr: rate of the first epoch: a positive float, ``"auto"`` (computed from a
            no-grad probe of the initial weights), or ``None`` for the rule's default (probe for
            sgd/rmsprop, 0.1 for adamo, 1e-3 for adam; paper 7.3-7.4).
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
        max_growth: optional cap on the growth factor of the rate from one epoch to the next.

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
    ) -> None:
        super().__init__()
        if rule not in RULES:
            raise ValueError(f"LipschitzLR: unknown rule {rule!r}; expected one of {sorted(RULES)}")
        if loss not in LOSSES:
            raise ValueError(f"LipschitzLR: unknown loss {loss!r}; expected one of {list(LOSSES)}")
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
        for name, value in (("probe_batches", probe_batches), ("init_probe_batches", init_probe_batches)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"LipschitzLR: {name} must be a positive integer; got {value!r}")
        if not decay >= 0:
            raise ValueError(f"LipschitzLR: decay must be >= 0; got {decay!r}")
        if max_lr is not None and not _is_positive_number(max_lr):
            raise ValueError(f"LipschitzLR: max_lr must be a positive number; got {max_lr!r}")
        if max_growth is not None and not _is_positive_number(max_growth):
            raise ValueError(f"LipschitzLR: max_growth must be a positive number; got {max_growth!r}")

        self.rule = rule
        self.loss = loss
        self.head_name = head
        self.k = k
        self.weight_decay = weight_decay
        self.first_epoch_lr = default_first_epoch_lr(rule) if first_epoch_lr is None else first_epoch_lr
        self.betas = betas
        self.eps = float(eps)
        self.bias_correction = bool(bias_correction)
        self.source = source
        self.probe_batches = probe_batches
        self.init_probe_batches = init_probe_batches
        self.decay = float(decay)
        self.max_lr = max_lr
        self.max_growth = max_growth
        # S (norm of A*A) is needed only by the rules that use the second-moment estimate G2.
        self._needs_s = rule in ("rmsprop", "adam")

        # Scheduling state (saved in checkpoints).
        self.lr: Optional[float] = None  # the rate in force for the current epoch
        self.state = RuleState()
        self.epochs_done = 0
        self._warned_invalid = False
        self._restored = False

        # Per-run wiring (set in setup / on_fit_start).
        self._head: Optional[nn.Linear] = None
        self._handles: List[Any] = []
        self._hyper = RuleHyper(eps=self.eps, bias_correction=self.bias_correction)
        self._lambda = 0.0
        self._k = 0
        # Per-epoch gathering: one device vector of _N_STATS per optimizer step.
        self._steps: List[torch.Tensor] = []
        self._grad_max: Optional[torch.Tensor] = None
        self._local_batch = 0
        self._recording = False
        self._step_index = 0
        self._epoch_finished = False
        self._restored_mid_epoch = False
        self.last_stats: Dict[str, float] = {}

    # ------------------------------------------------------------------ setup / validation

    @property
    def state_key(self) -> str:
        return self._generate_state_key(rule=self.rule, loss=self.loss, head=self.head_name)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.head_name, self._head = find_head(pl_module, self.head_name)
        self._k = self.k if self.k is not None else self._head.out_features
        if self.loss == "softmax_ce" and self._k < 2:
            raise ValueError(
                f"LipschitzLR: loss 'softmax_ce' needs k >= 2 classes; the head {self.head_name!r} "
                f"has {self._head.out_features} output(s) (use loss='bce' for one sigmoid output)"
            )
        if self.source == "probe":
            datamodule = getattr(trainer, "datamodule", None)
            if datamodule is None or not callable(getattr(datamodule, "probe_dataloader", None)):
                raise ValueError(
                    "LipschitzLR(source='probe') needs a datamodule with probe_dataloader() "
                    "(the un-augmented training data); use source='hooks' otherwise"
                )
        self._remove_hooks()
        self._handles.append(self._head.register_forward_pre_hook(self._record_input))
        if self.loss == "mse":
            self._handles.append(self._head.register_forward_hook(self._record_output))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise ValueError(f"LipschitzLR schedules exactly one optimizer; got {len(trainer.optimizers)}")
        optimizer = trainer.optimizers[0]
        check_optimizer(self.rule, optimizer)
        if self.weight_decay is None:
            self._lambda = max(float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups)
        else:
            self._lambda = float(self.weight_decay)
        self._hyper = RuleHyper(
            betas=self._resolve_betas(optimizer), eps=self.eps, bias_correction=self.bias_correction
        )
        if trainer.lr_scheduler_configs:
            rank_zero_warn("LipschitzLR sets the learning rate itself; the configured LR scheduler will fight it")

    def _resolve_betas(self, optimizer: torch.optim.Optimizer) -> Tuple[float, float]:
        b1, b2 = _optimizer_betas(self.rule, optimizer)
        if self.betas is None:
            return b1, b2
        if isinstance(self.betas, (int, float)):
            beta = float(self.betas)
            return (b1, beta) if self.rule == "rmsprop" else (beta, b2)
        bs = [float(b) for b in self.betas]
        return (bs[0], bs[-1])

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    # ------------------------------------------------------------------ per-step path (no host sync)

    def _add(self, column: int, value: torch.Tensor) -> None:
        """Add a device scalar into column ``column`` of the current optimizer step's vector."""
        while len(self._steps) <= self._step_index:
            self._steps.append(torch.zeros(_N_STATS, device=value.device, dtype=torch.float32))
        self._steps[self._step_index][column] += value

    def _record_input(self, module: nn.Module, args: Tuple[Any, ...]) -> None:
        if not self._recording:
            return
        a = args[0].detach()
        self._local_batch = max(self._local_batch, a.shape[0] if a.dim() > 1 else 1)
        a2 = a.float().square()
        self._add(_A2, a2.sum())
        if self._needs_s:
            self._add(_A4, a2.square().sum())

    def _record_output(self, module: nn.Module, args: Tuple[Any, ...], output: torch.Tensor) -> None:
        if self._recording:
            self._add(_OUT2, output.detach().float().square().sum())

    def _record_targets(self, batch: Any) -> None:
        if self.loss != "mse":
            return
        if not isinstance(batch, (list, tuple)) or len(batch) < 2 or not torch.is_tensor(batch[1]):
            raise LipschitzLRError("LipschitzLR(loss='mse') needs batches of the form (inputs, targets, ...)")
        self._add(_Y2, batch[1].detach().float().square().sum())

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self._restored_mid_epoch:
            self._steps = []
            self._grad_max = None
        self._restored_mid_epoch = False
        self._epoch_finished = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._step_index = batch_idx // trainer.accumulate_grad_batches
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

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._recording = False
        if batch_idx + 1 == trainer.num_training_batches:
            self._finish_epoch(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Normally done at the last batch; this covers epochs cut short (max_steps, iterable data).
        if not self._epoch_finished and (self._steps or self.source == "probe"):
            self._finish_epoch(trainer, pl_module)

    # ------------------------------------------------------------------ epoch boundaries

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._restored:  # a checkpoint's rate; no probe
            for i, step in enumerate(self._steps):
                self._steps[i] = step.to(pl_module.device)
            if self._grad_max is not None:
                self._grad_max = self._grad_max.to(pl_module.device)
            self._write_lr(trainer, self.lr)
            return
        if self.first_epoch_lr == "auto":
            # The rule's first update on the probe's statistics, bias-corrected (t = 1): 1/L for
            # sgd and adamo, (sqrt(G2) + eps)/K_z for rmsprop, (sqrt(G2) + eps)/L for adam.
            self._run_probe(trainer, pl_module, initial=True)
            stats = self._gather(trainer, pl_module)
            probe_stats = self._epoch_stats(stats)
            first_update = RuleHyper(betas=self._hyper.betas, eps=self.eps, bias_correction=True)
            lr, _ = next_rate(self.rule, RuleState(), probe_stats, first_update)
            if not (bounds.is_valid_bound(lr) and bounds.is_valid_bound(probe_stats.L)):
                detail = (
                    f"the least-squares bound (K_a - |y|) K_z / m is negative while the outputs "
                    f"(K_a={stats['K_a']:.4g}) are smaller than the targets (|y|={stats['y_norm']:.4g})"
                    if self.loss == "mse" else f"L={probe_stats.L:.4g}, K_z={stats['K_z']:.4g}"
                )
                raise LipschitzLRError(
                    f"LipschitzLR: the first-epoch probe of the initial weights gave no usable rate ({detail}); "
                    f"give the first epoch a rate: first_epoch_lr=<a positive number> (lr.first_epoch=... "
                    f"on the command line)"
                )
            # AdaMo's K is seeded with the Lipschitz constant whose inverse is the first rate.
            self.state = RuleState(K1=probe_stats.L) if self.rule == "adamo" else RuleState()
            self.lr = float(lr)
            rank_zero_info(
                f"LipschitzLR: first-epoch rate {self.lr:.6g} from a probe of the initial weights "
                f"(K_z={stats['K_z']:.6g}, W={stats['W']:.6g}, L={stats['L']:.6g})"
            )
        else:
            self.lr = float(self.first_epoch_lr)
            self.state = initial_state(self.rule, self.lr)
        self._write_lr(trainer, self.lr)

    def _run_probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, initial: bool) -> None:
        """No-grad forward passes that feed the same per-step gathering as training.

        ``initial``: the first-epoch probe over a few *training* batches, in train mode (the
        activations training will see), with RNG and buffers (BatchNorm statistics) restored
        afterwards. Otherwise the ``source='probe'`` pass over ``probe_dataloader()`` in eval mode
        (the reference code's Keras ``predict``). Under DDP rank r takes loader batches r, r+N, ...
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
        was_training = pl_module.training
        buffers = {name: b.detach().clone() for name, b in pl_module.named_buffers()} if initial else {}
        devices = [pl_module.device] if pl_module.device.type == "cuda" else []
        self._steps = []
        n_local = 0
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                pl_module.train(initial)
                self._recording = True
                for j, batch in enumerate(loader):
                    rank_batch = j if sharded else j // world
                    if not sharded and j % world != trainer.global_rank:
                        continue
                    if max_batches is not None and rank_batch >= max_batches:
                        break
                    self._step_index = rank_batch // accumulate
                    batch = trainer.strategy.batch_to_device(batch, pl_module.device)
                    self._record_targets(batch)
                    pl_module(batch[0] if isinstance(batch, (list, tuple)) else batch)
                    n_local += 1
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
                self._steps.append(torch.zeros(_N_STATS, device=pl_module.device))

    def _gather(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Dict[str, float]:
        """Reduce the epoch's per-step vectors across ranks (one collective) and derive the stats."""
        device = pl_module.device
        steps = torch.stack(self._steps) if self._steps else torch.zeros(1, _N_STATS, device=device)
        with torch.no_grad():
            w_max = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in pl_module.parameters()]).max()
        grad = self._grad_max if self._grad_max is not None else torch.full((), float("nan"), device=device)
        packed = torch.cat([steps.to(device).flatten(), w_max.reshape(1).to(device), grad.reshape(1).to(device)])
        world = trainer.world_size
        if world > 1:
            packed = trainer.strategy.reduce(packed, reduce_op="sum")
        values = packed.double().cpu()  # the one host transfer of the epoch
        per_step = values[:-2].reshape(-1, _N_STATS)
        maxima = per_step.max(dim=0).values.clamp_min(0).sqrt()
        m = self._local_batch * world * trainer.accumulate_grad_batches
        return {
            "K_z": float(maxima[_A2]),
            "S": float(maxima[_A4]),
            "K_a": float(maxima[_OUT2]),
            "y_norm": float(maxima[_Y2]),
            # W and the gradient are identical on every rank (DDP keeps replicas in sync).
            "W": float(values[-2]) / world,
            "grad_max": float(values[-1]) / world,
            "m": float(m),
        }

    def _epoch_stats(self, stats: Dict[str, float]) -> EpochStats:
        """Compute L and G2 from gathered statistics (adds L to ``stats``)."""
        m = max(stats["m"], 1.0)
        if self.loss == "softmax_ce":
            coefficient = bounds.softmax_ce_coefficient(self._k, m)
        elif self.loss == "bce":
            coefficient = bounds.bce_coefficient(m)
        else:
            coefficient = bounds.least_squares_coefficient(stats["K_a"], stats["y_norm"], m)
        L = coefficient * stats["K_z"] + bounds.l2_term(self._lambda, stats["W"])
        stats["L"] = L
        G2 = bounds.second_moment_estimate(coefficient, stats["K_z"], stats["S"], self._lambda, stats["W"])
        return EpochStats(L=L, G2=G2, k_z=stats["K_z"])

    def _finish_epoch(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Gather, reduce, compute the next rate, write it and log (once per epoch)."""
        self._epoch_finished = True
        self._recording = False
        if self.source == "probe":
            grad_max = self._grad_max
            self._run_probe(trainer, pl_module, initial=False)
            self._grad_max = grad_max
        stats = self._gather(trainer, pl_module)
        epoch_stats = self._epoch_stats(stats)
        used_lr = self.lr
        new_lr, new_state = next_rate(self.rule, self.state, epoch_stats, self._hyper)
        invalid = not (bounds.is_valid_bound(epoch_stats.L) and stats["K_z"] > 0 and bounds.is_valid_bound(new_lr))
        capped = False
        if invalid:
            if not self._warned_invalid:
                rank_zero_warn(
                    f"LipschitzLR: epoch {trainer.current_epoch} gave an unusable bound (L={epoch_stats.L}, "
                    f"K_z={stats['K_z']}, W={stats['W']}, K_a={stats['K_a']}, |y|={stats['y_norm']}, "
                    f"candidate lr={new_lr}); keeping lr={self.lr}"
                )
                self._warned_invalid = True
            new_lr = self.lr
        else:
            self.state = new_state
            new_lr, capped = apply_caps(new_lr, self.lr, self.max_lr, self.max_growth)
            if capped:
                rank_zero_info(f"LipschitzLR: capped the rate of epoch {trainer.current_epoch + 1} at {new_lr:.6g}")
        self.lr = float(new_lr)
        self.epochs_done += 1
        self._steps = []
        self._grad_max = None
        self._write_lr(trainer, time_decay(self.lr, self.decay, trainer.global_step) if self.decay else self.lr)

        metrics = {
            "lipschitz/lr": used_lr,
            "lipschitz/next_lr": self.lr,
            "lipschitz/L": epoch_stats.L,
            "lipschitz/K_z": stats["K_z"],
            "lipschitz/W": stats["W"],
            "lipschitz/capped": float(capped),
            "lipschitz/bound_invalid": float(invalid),
        }
        if self.rule in ("adamo", "adam"):
            metrics["lipschitz/K1"] = self.state.K1
        if self.rule in ("rmsprop", "adam"):
            metrics["lipschitz/K2"] = self.state.K2
        if math.isfinite(stats["grad_max"]) and bounds.is_valid_bound(epoch_stats.L):
            metrics["lipschitz/grad_max_over_L"] = stats["grad_max"] / epoch_stats.L
        self.last_stats = dict(stats, **{k.split("/")[1]: v for k, v in metrics.items()})
        with warnings.catch_warnings():
            # The values are identical on every rank: no need for Lightning's sync_dist advice.
            warnings.filterwarnings("ignore", message=".*sync_dist=True.*")
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1, sync_dist=False)

    def _write_lr(self, trainer: pl.Trainer, lr: float) -> None:
        """The one place the rate enters the optimizer (times each group's ``lr_scale``)."""
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> Dict[str, Any]:
        return {
            "rule": self.rule,
            "lr": self.lr,
            "K1": self.state.K1,
            "K2": self.state.K2,
            "t": self.state.t,
            "epochs_done": self.epochs_done,
            "warned_invalid": self._warned_invalid,
            "local_batch": self._local_batch,
            # An interrupted epoch's statistics so far (empty at epoch boundaries).
            "pending_steps": [s.detach().cpu() for s in self._steps] if not self._epoch_finished else [],
            "pending_grad_max": (
                self._grad_max.detach().cpu() if self._grad_max is not None and not self._epoch_finished else None
            ),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.lr = state_dict.get("lr")
        self.state = RuleState(
            K1=float(state_dict.get("K1", 0.0)), K2=float(state_dict.get("K2", 0.0)), t=int(state_dict.get("t", 0))
        )
        self.epochs_done = int(state_dict.get("epochs_done", 0))
        self._warned_invalid = bool(state_dict.get("warned_invalid", False))
        self._local_batch = int(state_dict.get("local_batch", 0))
        self._steps = list(state_dict.get("pending_steps", []))
        self._grad_max = state_dict.get("pending_grad_max")
        self._restored_mid_epoch = bool(self._steps)
        self._restored = self.lr is not None
