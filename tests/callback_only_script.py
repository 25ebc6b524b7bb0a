"""Run by tests/conftest.py's fresh_venv in a venv holding only the wheel's core install:
LipschitzLR trains a small model (no ``forward``, as in the README) with torch and Lightning alone,
with a given first-epoch rate and on the default path (the first-epoch probe); prints where the
package came from, the last rates and the top-level modules imported."""

import sys
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset
from lipschitz_lightning import LipschitzLR

class Module(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    def training_step(self, batch, batch_idx):
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

g = torch.Generator().manual_seed(0)
data = TensorDataset(torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g))
rates = {}
for name, first_epoch_lr in (("rate", 0.1), ("probe rate", None)):
    callback = LipschitzLR(rule="sgd", loss="softmax_ce", first_epoch_lr=first_epoch_lr)
    pl.Trainer(max_epochs=2, callbacks=[callback], logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False).fit(Module(), DataLoader(data, batch_size=16))
    rates[name] = callback.lr
import lipschitz_lightning
print("package:", lipschitz_lightning.__file__)
for name, rate in rates.items():
    print(f"{name}:", rate)
print("imported:", sorted({m.split(".")[0] for m in sys.modules}))
