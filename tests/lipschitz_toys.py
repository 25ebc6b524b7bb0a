"""Small models and data for the callback tests (module level, so ddp_spawn can pickle them)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Callable, List, Optional

import pytorch_lightning as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset


def make_data(n: int = 64, d: int = 6, k: int = 3, seed: int = 0, loss: str = "softmax_ce") -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    if loss == "softmax_ce":
        y = torch.randint(0, k, (n,), generator=g)
    elif loss == "bce":
        y = (x[:, :1] > 0).float()
    else:
        y = x[:, :1] * 2.0 + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


class ToyNet(nn.Module):
    def __init__(self, d: int = 6, hidden: int = 8, k: int = 3, batchnorm: bool = False, dropout: float = 0.0):
        super().__init__()
        layers: List[nn.Module] = [nn.Linear(d, hidden)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden))
        layers += [nn.ReLU(), nn.Dropout(dropout)]
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(hidden, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def sgd(params, momentum: float = 0.0, weight_decay: float = 0.0):
    return torch.optim.SGD(params, lr=0.123, momentum=momentum, dampening=momentum, weight_decay=weight_decay)


OPTIMIZERS = {
    "sgd": partial(sgd, weight_decay=1e-3),
    "adamo": partial(sgd, momentum=0.9, weight_decay=1e-3),
    "rmsprop": lambda p: torch.optim.RMSprop(p, lr=0.123, alpha=0.9, weight_decay=1e-3),
    "auto_adam": lambda p: torch.optim.Adam(p, lr=0.123, weight_decay=1e-3),
}


def sf_sgd(params):
    """Schedule-Free SGD (interpolation 0.8, no warm-up, no decay), picklable for ddp_spawn."""
    import schedulefree

    return schedulefree.SGDScheduleFree(params, lr=0.5, momentum=0.8, warmup_steps=0, weight_decay=0.0)


class HalfMSE(nn.Module):
    """The paper's least-squares loss 1/(2m) sum (a - y)^2, for which its bound is derived."""

    def forward(self, output, target):
        return 0.5 * nn.functional.mse_loss(output, target)


class ToyModule(pl.LightningModule):
    def __init__(self, net: nn.Module, optimizer: Callable, loss: str = "softmax_ce"):
        super().__init__()
        self.net = net
        self.optimizer_fn = optimizer
        self.criterion = {"softmax_ce": nn.CrossEntropyLoss(), "bce": nn.BCEWithLogitsLoss(),
                          "mse": HalfMSE()}[loss]

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def configure_optimizers(self):
        return self.optimizer_fn(self.parameters())


class TrainModeToyModule(ToyModule):
    """A toy module that puts a Schedule-Free optimizer in train mode for training (as
    SupervisedModule does)."""

    def on_train_epoch_start(self):
        optimizer = self.optimizers().optimizer
        if hasattr(optimizer, "train"):
            optimizer.train()


class ToyDataModule(pl.LightningDataModule):
    def __init__(self, dataset: TensorDataset, batch_size: int):
        super().__init__()
        self.dataset = dataset
        self.batch_size = batch_size

    def train_dataloader(self):
        # Lightning's own DistributedSampler always shuffles training data; the DDP test needs
        # the unshuffled split (rank r gets examples r, r+N, ...), so it brings its own sampler.
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            sampler = DistributedSampler(self.dataset, shuffle=False)
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, sampler=sampler)

    def probe_dataloader(self):
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False)


class ResumableLoader(DataLoader):
    """An unshuffled loader that resumes mid-epoch where Lightning does: after the batches its
    epoch loop has processed (Lightning saves ``state_dict`` of a loader that has one)."""

    def __init__(self, dataset, batch_size: int, processed: Callable[[], int]):
        super().__init__(dataset, batch_size=batch_size, shuffle=False)
        self._processed = processed
        self._skip = 0

    def state_dict(self) -> dict:
        return {"skip": int(self._processed())}

    def load_state_dict(self, state: dict) -> None:
        self._skip = int(state.get("skip", 0))

    def __iter__(self):
        it = super().__iter__()
        for _ in range(self._skip):
            next(it)
        self._skip = 0
        return it


class ResumableDataModule(ToyDataModule):
    def train_dataloader(self):
        progress = lambda: self.trainer.fit_loop.epoch_loop.batch_progress.current.processed  # noqa: E731
        return ResumableLoader(self.dataset, self.batch_size, progress)


class RateRecorder(pl.Callback):
    """Records the optimizer's rate at each epoch's first step, and writes it per rank if asked."""

    def __init__(self, out_dir: Optional[str] = None):
        self.rates: List[float] = []
        self.stats: List[dict] = []
        self.out_dir = out_dir

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx == 0:
            self.rates.append(float(trainer.optimizers[0].param_groups[0]["lr"]))  # a value, also of a tensor rate

    def on_train_epoch_end(self, trainer, pl_module):
        lipschitz = next(c for c in trainer.callbacks if type(c).__name__ == "LipschitzLR")
        self.stats.append(dict(lipschitz.last_stats))

    def on_train_end(self, trainer, pl_module):
        if self.out_dir is not None:
            path = Path(self.out_dir) / f"rank{trainer.global_rank}.json"
            path.write_text(json.dumps({"rates": self.rates, "stats": self.stats}))


def trainer(callbacks, max_epochs: int = 3, **kwargs) -> pl.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    defaults.update(kwargs)
    return pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, **defaults)


def max_param_norm(module):
    return max(float(p.detach().norm()) for p in module.parameters())


class InputRecorder(pl.Callback):
    """An independent record of the head input in training steps, and of W at each epoch end."""

    def __init__(self):
        self.epochs = []

    def on_fit_start(self, trainer, pl_module):
        def hook(module, args):
            if module.training and torch.is_grad_enabled():
                self.epochs[-1]["A"].append(args[0].detach().clone())

        self.handle = pl_module.net.head.register_forward_pre_hook(hook)

    def on_train_epoch_start(self, trainer, pl_module):
        self.epochs.append({"A": []})

    def on_train_epoch_end(self, trainer, pl_module):
        self.epochs[-1]["W"] = max_param_norm(pl_module)
        self.epochs[-1]["head"] = pl_module.net.head.weight.detach().clone()


class ScriptedLoss(ToyModule):
    """A toy whose training loss per step is scripted per epoch and whose gradient is zero: the
    weights, the features and so the rule's rate stay the same in every epoch, and the guard's loss
    test is seen through the callback's logged ``lipschitz/rollbacks`` alone. ``scales`` (one per
    epoch) scales the inputs: features that shrink make the rule's rate rise."""

    def __init__(self, script, scales=None):
        super().__init__(ToyNet(), OPTIMIZERS["sgd"])
        self.script = script
        self.scales = scales

    def training_step(self, batch, batch_idx):
        x, _ = batch
        epoch = min(self.trainer.current_epoch, len(self.script) - 1)
        scale = 1.0 if self.scales is None else self.scales[epoch]
        return self(x * scale).sum() * 0.0 + self.script[epoch][batch_idx]
