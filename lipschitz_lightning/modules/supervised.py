"""``SupervisedModule``: one LightningModule for every (network, loss) pair of the project.

It knows nothing of Lipschitz constants: the ``LipschitzLR`` callback finds the network's head
``nn.Linear`` itself and writes the learning rate into the optimizer this module creates.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterable, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, Metric, MinMetric
from torchmetrics.classification import BinaryAccuracy, MulticlassAccuracy

from lipschitz_lightning.math.losses import LOSSES, HalfMSELoss, get_loss
from lipschitz_lightning.modules.batchnorm import batchnorm_layers, has_train_eval_modes, recompute_running_stats

__all__ = ["CRITERIA", "HalfMSELoss", "SupervisedModule"]

# Loss name (the datamodule's ``loss``) -> criterion: the losses LipschitzLR's bounds are derived for.
CRITERIA: Dict[str, Callable[[], nn.Module]] = {name: entry.criterion for name, entry in LOSSES.items()}

# Accuracy metric kind (``Loss.metric``) -> its constructor, from the number of outputs.
ACCURACY: Dict[str, Callable[[int], Metric]] = {
    "binary": lambda num_outputs: BinaryAccuracy(),
    "multiclass": lambda num_outputs: MulticlassAccuracy(num_outputs, average="micro"),
}

OptimizerFactory = Callable[..., torch.optim.Optimizer]

# Optimizer settings that stay as configured during training (the rate itself is LipschitzLR's or a
# scheduler's): a checkpoint of the same optimizer class with other values is another run.
OPTIMIZER_SETTINGS = ("momentum", "dampening", "nesterov", "weight_decay", "betas", "eps", "alpha", "centered",
                      "amsgrad", "maximize", "rho", "lr_decay", "decoupled_weight_decay")


class SupervisedModule(pl.LightningModule):
    """Train ``net`` on ``(inputs, targets)`` batches with the loss the datamodule names.

    Logged (per epoch; ``prog_bar`` marks what the progress bar shows):
    ``train/loss``, ``val/loss`` (bar), ``test/loss``; for the classification losses also
    ``train/acc`` (bar), ``val/acc`` (bar), ``test/acc`` and ``val/acc_best`` (best epoch so far:
    the paper's "validation accuracy", spec section 6); for ``mse`` ``val/loss_best`` instead.

    Optimizers with ``train()``/``eval()`` methods (schedule-free SGD) are switched to train mode
    before every training step and to eval mode before validation, testing, checkpointing and at
    the end of fit, so evaluation and checkpoints see the averaged weights. This is duck typing:
    ``torch.optim`` optimizers have no such methods and are left alone. The BatchNorm running
    statistics were gathered at the training weights, so before each validation and test (not the
    sanity check) they are recomputed at the averaged ones, as the Schedule-Free authors ask: the
    first ``bn_recompute_batches`` training batches of the epoch run through the network in train
    mode without gradients, their statistics averaged cumulatively (see
    :mod:`~lipschitz_lightning.modules.batchnorm`); nothing else of the run changes (no step, the
    same random streams and training iterator). Its cost is logged as ``bench/bn_recompute_seconds``
    (seconds per validation or test).

    GPU speed-ups (config keys ``compile`` and ``channels_last``): ``compile=True`` compiles the
    network in place with ``nn.Module.compile`` (``torch.compile`` of its forward, hooks included;
    parameter names and checkpoints stay those of the plain network); ``channels_last=True`` stores
    the convolution weights and the 4-D input batches in the channels-last memory format, which
    tensor cores prefer under bf16/fp16 (on a CPU it is usually slower).

    Args:
        net: the network; outputs raw scores of shape ``(batch, num_outputs)``.
        optimizer: a factory called as ``optimizer(params=...)`` (a Hydra ``_partial_`` config).
        loss: ``"softmax_ce"`` (integer class targets), ``"bce"`` (0/1 targets, one output) or
            ``"mse"`` (real targets).
        num_outputs: the head's size (number of classes for ``softmax_ce``).
        compile: compile the network with ``torch.compile`` (lazily, at its first call).
        channels_last: channels-last memory format for the network and the input batches;
            only for networks with ``nn.Conv2d`` layers.
        bn_recompute_batches: training batches that recompute the BatchNorm statistics at the
            evaluated weights of an optimizer with train/eval modes; 0 turns it off.

    Raises:
        ValueError: an unknown ``loss``, ``num_outputs`` that does not fit it,
            ``channels_last`` for a network without 2-D convolutions, or a
            ``bn_recompute_batches`` that is not an int >= 0.
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        loss: str,
        num_outputs: int,
        compile: bool = False,
        channels_last: bool = False,
        bn_recompute_batches: int = 8,
    ) -> None:
        super().__init__()
        spec = get_loss(loss)
        if spec.output_per_class and num_outputs < 2:
            raise ValueError(f"loss {loss!r} needs num_outputs >= 2; got {num_outputs}")
        if spec.single_output and num_outputs != 1:
            raise ValueError(f"loss {loss!r} needs one output (a logit); got num_outputs={num_outputs}")
        for flag, value in (("compile", compile), ("channels_last", channels_last)):
            if not isinstance(value, bool):
                raise ValueError(f"{flag} must be true or false; got {value!r}")
        if isinstance(bn_recompute_batches, bool) or not isinstance(bn_recompute_batches, int) \
                or bn_recompute_batches < 0:
            raise ValueError(f"bn_recompute_batches must be an int >= 0 (0: off); got {bn_recompute_batches!r}")
        # The network is saved in the checkpoint's state_dict, not as a hyperparameter. The
        # optimizer factory (a Hydra partial) is kept as an attribute, not a hyperparameter, so
        # that checkpoints hold only plain values and load with torch.load(weights_only=True);
        # train() logs the whole config to the loggers instead.
        self.save_hyperparameters(ignore=["net", "optimizer"], logger=False)
        if channels_last:
            if not any(isinstance(m, nn.Conv2d) for m in net.modules()):
                raise ValueError(
                    f"channels_last=true is for convolutional networks; {type(net).__name__} has no nn.Conv2d"
                )
            net = net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()  # in place: state_dict keys and the head's name stay those of the plain net
        self.net = net
        self.optimizer_factory = optimizer
        self.criterion = spec.criterion()
        self.classify = spec.is_classification
        self.train_loss, self.val_loss, self.test_loss = MeanMetric(), MeanMetric(), MeanMetric()
        if self.classify:
            make_acc = ACCURACY[spec.metric]
            self.train_acc, self.val_acc, self.test_acc = (make_acc(num_outputs) for _ in range(3))
            self.val_best = MaxMetric()
        else:
            self.val_best = MinMetric()
        # The best epoch so far is part of the run: saved in checkpoints, so a resumed run goes on
        # from it instead of starting over (the sanity check never reaches it, see below).
        self.val_best.persistent(True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.get("channels_last") and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)  # free when the batch already is
        return self.net(x)

    # ---------------------------------------------------------------- steps

    def _step(self, batch: Tuple[torch.Tensor, ...]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return (loss, predictions for the accuracy metric, targets for it)."""
        x, y = batch[0], batch[1]
        inputs, target, preds, metric_target = get_loss(self.hparams.loss).prepare(self(x), y)
        return self.criterion(inputs, target), preds, metric_target

    def _update(self, stage: str, batch: Tuple[torch.Tensor, ...]) -> torch.Tensor:
        loss, preds, targets = self._step(batch)
        mean_loss = getattr(self, f"{stage}_loss")
        mean_loss(loss.detach())
        self.log(f"{stage}/loss", mean_loss, on_step=False, on_epoch=True, prog_bar=stage != "test")
        if self.classify:
            acc = getattr(self, f"{stage}_acc")
            acc(preds.detach(), targets)
            self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "test")
        return loss

    def training_step(self, batch: Tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        return self._update("train", batch)

    def validation_step(self, batch: Tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._update("val", batch)

    def test_step(self, batch: Tuple[torch.Tensor, ...], batch_idx: int) -> None:
        self._update("test", batch)

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        # Checkpoints written before val_best was saved lack its state: start it afresh.
        state = checkpoint.get("state_dict")
        if state is not None:
            for key, value in self.val_best.state_dict(prefix="val_best.").items():
                state.setdefault(key, value)

    def check_resume(self, checkpoint: Dict[str, Any]) -> None:
        """Whether a Lightning checkpoint continues this module, checked before fit: the same
        network (parameter names and shapes) and the same optimizer (its class, by the keys of its
        parameter group, and the values in :data:`OPTIMIZER_SETTINGS`).

        Raises:
            ValueError: saying what differs and what to resume with.
        """
        ours = {k: tuple(v.shape) for k, v in self.state_dict().items()}
        theirs = {k: tuple(v.shape) for k, v in checkpoint.get("state_dict", {}).items()}
        if ours != theirs:
            diff = sorted(set(ours.items()) ^ set(theirs.items()))[:2]
            raise ValueError(f"holds another model than this run's (first differences: {diff}); "
                             "resume with the overrides of the run that wrote it")
        saved_groups = [s.get("param_groups", [{}])[0] for s in checkpoint.get("optimizer_states", [])]
        if not saved_groups:
            return
        optimizer = self.optimizer_factory(params=[nn.Parameter(torch.zeros(1))])  # a stand-in, for its settings
        saved, group, name = saved_groups[0], optimizer.param_groups[0], type(optimizer).__name__
        if set(saved) - {"params", "initial_lr"} != set(group) - {"params", "initial_lr"}:
            raise ValueError(f"was trained with another optimizer than {name}; pass the run's own optim=")
        plain = lambda v: list(v) if isinstance(v, tuple) else v  # noqa: E731
        differ = [k for k in OPTIMIZER_SETTINGS if k in saved and k in group and plain(saved[k]) != plain(group[k])]
        if differ:
            there = ", ".join(f"{k}={saved[k]!r}" for k in differ)
            here = ", ".join(f"{k}={group[k]!r}" for k in differ)
            raise ValueError(f"was trained with {name}({there}), this run has {name}({here}); "
                             "pass the run's own optim= and its overrides")

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            return
        metric = self.val_acc if self.classify else self.val_loss
        self.val_best(metric.compute())
        name = "val/acc_best" if self.classify else "val/loss_best"
        self.log(name, self.val_best.compute(), sync_dist=True, prog_bar=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        # The learning rate in the optimizer's config is only a start value: LipschitzLR
        # overwrites it before the first step when it is in use.
        return self.optimizer_factory(params=self.parameters())

    # ---------------------------------------------------------------- train/eval optimizers

    def _optimizers_to(self, mode: str) -> None:
        trainer = self._trainer
        if trainer is None:
            return
        for optimizer in trainer.optimizers:
            switch = getattr(optimizer, mode, None)
            if callable(switch):
                switch()

    def _recompute_batchnorm(self) -> None:
        """BatchNorm statistics at the eval-mode weights, for optimizers with train/eval modes."""
        trainer = self._trainer
        count = self.hparams.get("bn_recompute_batches", 8)
        if trainer is None or trainer.sanity_checking or not count:
            return
        if not any(has_train_eval_modes(o) for o in trainer.optimizers):
            return
        layers = batchnorm_layers(self.net)
        if not layers:
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the timing starts after the training's kernels
        start = time.perf_counter()
        if not recompute_running_stats(self, layers, count):
            return
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.log("bench/bn_recompute_seconds", time.perf_counter() - start, on_step=False, on_epoch=True,
                 sync_dist=False)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._optimizers_to("train")  # a no-op when already in train mode

    def on_train_epoch_end(self) -> None:
        self._optimizers_to("eval")  # before the end-of-epoch checkpoint

    def on_validation_epoch_start(self) -> None:
        self._optimizers_to("eval")
        self._recompute_batchnorm()

    def on_test_epoch_start(self) -> None:
        self._optimizers_to("eval")
        self._recompute_batchnorm()

    def on_predict_epoch_start(self) -> None:
        self._optimizers_to("eval")

    def on_fit_end(self) -> None:
        self._optimizers_to("eval")
