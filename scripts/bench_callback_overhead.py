"""Benchmark: what does the LipschitzLR callback cost per training step?

Trains ResNet20 on random CIFAR-shaped data (batch 128 by default) several ways, interleaved
round by round with the same seed: without the callback (plain SGD at a fixed rate), with the
callback in hook mode (the default), with the callback in probe mode (the reference code's
extra pass over the un-augmented training data each epoch), and the pairs without / with the
callback for a ``torch.compile``d network (``compiled``) and for ``precision="bf16-mixed"``
(``bf16``). Each pair's ratio is measured side by side in the same run. It prints:

* the median per-step time of each mode and its ratio to the run without the callback
  (steps timed from one ``on_train_batch_start`` to the next, so the callback's per-step hooks are
  inside the timed interval; the first steps of each run are warm-up and skipped),
* the whole-epoch time ratio (this includes the once-per-epoch reduction and, for probe mode, the
  extra pass),
* the memory the callback holds: the bytes of its per-step statistics at the end of an epoch,
  and, on CUDA, the difference in peak allocated memory.

The compiled runs are timed after their warm-up steps (the compilation); inside them the
callback's eager per-step code (its Lightning hooks) is timed directly, while its pre-hook runs
inside the compiled forward (a timer there would break the graph) and shows in the wall-clock
ratio only.

Usage::

    python scripts/bench_callback_overhead.py                 # CPU, 12 steps per run, 3 rounds
    python scripts/bench_callback_overhead.py --device cuda --steps 100 --rounds 5
    python scripts/bench_callback_overhead.py --modes compiled,compiled+hooks --warmup 4
    python scripts/bench_callback_overhead.py --rule precond --per-step   # the per-step rate (AdamW)
    python scripts/bench_callback_overhead.py --rule precond --polyak     # the Polyak step (Schedule-Free SGD)
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import statistics
import tempfile
import time
import warnings
from typing import Dict, List

import pytorch_lightning as pl
import torch
import torch._dynamo
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lipschitz_lightning import LipschitzLR
from lipschitz_lightning.math.rules import OptimizerKind, get_rule
from lipschitz_lightning.models import CifarResNet


class Classifier(pl.LightningModule):
    def __init__(self, seed: int, optimizer: str = "sgd") -> None:
        super().__init__()
        self.optimizer_name = optimizer
        torch.manual_seed(seed)
        self.net = CifarResNet((3, 32, 32), 10, depth=20)
        self.criterion = nn.CrossEntropyLoss()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return self.criterion(self(x), y)

    def on_train_epoch_start(self) -> None:
        optimizer = self.optimizers().optimizer
        if hasattr(optimizer, "train"):  # Schedule-Free: train mode for the steps
            optimizer.train()

    def configure_optimizers(self):
        if self.optimizer_name == "adamw":  # the Adam-family rules (precond, auto_adam)
            return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-3)
        if self.optimizer_name == "sf_sgd":  # the Polyak step (conf/optim/polyak_sf.yaml)
            import schedulefree

            return schedulefree.SGDScheduleFree(self.parameters(), lr=1e-3, momentum=0.9, warmup_steps=0,
                                                weight_decay=1e-3)
        return torch.optim.SGD(self.parameters(), lr=0.01, weight_decay=1e-3)


class Data(pl.LightningDataModule):
    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.dataset = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g))
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def probe_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=False, drop_last=True)


class StepTimer(pl.Callback):
    """Times consecutive step starts; must come first in the callback list."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.starts: List[float] = []
        self.epoch_time = 0.0
        self.peak = 0

    def _now(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter()

    def on_train_epoch_start(self, trainer, pl_module):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        self.epoch_start = self._now()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.starts.append(self._now())

    def on_train_epoch_end(self, trainer, pl_module):
        end = self._now()
        self.starts.append(end)
        self.epoch_time = end - self.epoch_start
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated()


class CallbackClock:
    """Times the callback's own code in a real run: its per-step methods and its epoch-end work.

    Wall-clock A/B comparisons on a shared machine swing by several percent from run to run; the
    time spent inside the callback is measured directly, so its share of a step is exact.
    Also reads the bytes of per-step statistics the callback holds just before it reduces them.
    """

    PER_STEP = ("on_train_batch_start", "on_before_backward", "on_before_optimizer_step", "on_train_batch_end")

    def __init__(self, lipschitz: LipschitzLR, device: torch.device, hook: bool = True) -> None:
        self.device = device
        self.per_step = 0.0
        self.epoch_end = 0.0
        self.bytes = 0
        self._depth = 0
        for name in self.PER_STEP:
            setattr(lipschitz, name, self._timed(getattr(lipschitz, name), "per_step"))
        # The head's pre-hook, wrapped before setup registers it (not in a compiled network, whose
        # graph holds the hook: a timer there would break the graph; its cost is in the step ratio).
        gatherer = lipschitz.gatherer
        if hook:
            gatherer._record_input = self._timed(gatherer._record_input, "per_step")
        finish = lipschitz._finish_epoch

        def finish_epoch(*args):
            held = list(gatherer.record.steps) + [t for t in (gatherer.record.grad_max, gatherer._acc, gatherer._gram)
                                                  if t is not None]
            self.bytes = sum(t.numel() * t.element_size() for t in held)
            return finish(*args)

        lipschitz._finish_epoch = self._timed(finish_epoch, "epoch_end")

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()

    def _timed(self, method, bucket: str):
        """Adds the method's time to ``bucket``; epoch-end work nested in a per-step method
        (``on_train_batch_end`` of the last batch) is counted as epoch end only."""

        def timed(*args, **kwargs):
            self._sync()
            start = time.perf_counter()
            nested_before = self._nested
            try:
                return method(*args, **kwargs)
            finally:
                self._sync()
                elapsed = time.perf_counter() - start
                if bucket == "epoch_end":
                    self.epoch_end += elapsed
                    self._nested += elapsed
                else:
                    self.per_step += elapsed - (self._nested - nested_before)

        return timed

    _nested = 0.0


def _reduce_worker(rank: int, world: int, port: int, n: int, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    x = torch.ones(())
    for _ in range(10):  # warm-up
        torch.distributed.all_reduce(x)
    times = []
    for _ in range(n):
        torch.distributed.barrier()
        start = time.perf_counter()
        torch.distributed.all_reduce(x)
        times.append(time.perf_counter() - start)
    if rank == 0:
        with open(out, "w") as f:
            f.write(str(statistics.median(times)))
    torch.distributed.destroy_process_group()


def scalar_allreduce_seconds(world: int = 2, n: int = 200) -> float:
    """Median time of one all-reduce of one float over ``world`` CPU processes (gloo): the Polyak
    step's per-step collective under DDP (the batch loss averaged over the ranks)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "median")
        torch.multiprocessing.spawn(_reduce_worker, args=(world, port, n, out), nprocs=world)
        with open(out) as f:
            return float(f.read())


#: mode -> (callback source or None, torch.compile the network, precision)
MODES = {
    "none": (None, False, "32-true"),
    "hooks": ("hooks", False, "32-true"),
    "probe": ("probe", False, "32-true"),
    "compiled": (None, True, "32-true"),
    "compiled+hooks": ("hooks", True, "32-true"),
    "bf16": (None, False, "bf16-mixed"),
    "bf16+hooks": ("hooks", False, "bf16-mixed"),
}
#: mode -> the mode it is compared with
BASELINES = {"hooks": "none", "probe": "none", "compiled+hooks": "compiled", "bf16+hooks": "bf16"}


def run(mode: str, args: argparse.Namespace, device: torch.device) -> Dict[str, float]:
    source, compiled, precision = MODES[mode]
    adam = get_rule(args.rule).optimizer in (OptimizerKind.ADAM, OptimizerKind.PRECONDITIONED)
    timer = StepTimer(device)
    callbacks: List[pl.Callback] = [timer]
    clock = None
    if source is not None:
        extra = {"per_step": True} if args.per_step else {}
        extra.update({"polyak": True} if args.polyak else {})
        lipschitz = LipschitzLR(rule=args.rule, loss="softmax_ce", first_epoch_lr=1e-3 if adam else 0.01,
                                source=source, **extra)
        clock = CallbackClock(lipschitz, device, hook=not compiled)
        callbacks.append(lipschitz)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, max_epochs=1, limit_train_batches=args.steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, num_sanity_val_steps=0, precision=precision,
    )
    data = Data(args.steps * args.batch_size, args.batch_size, args.seed)
    module = Classifier(args.seed, optimizer="sf_sgd" if args.polyak else "adamw" if adam else "sgd")
    if compiled:
        torch._dynamo.reset()
        module.net = torch.compile(module.net)
    trainer.fit(module, datamodule=data)
    steps = [b - a for a, b in zip(timer.starts[:-1], timer.starts[1:])]
    timed = steps[args.warmup:-1]  # the last interval holds the epoch-end work
    n_steps = len(steps)
    return {
        "step": statistics.median(timed),
        "epoch": timer.epoch_time,
        "held_bytes": float(clock.bytes) if clock else 0.0,
        "inside_per_step": clock.per_step / n_steps if clock else 0.0,
        "epoch_end": clock.epoch_end if clock else 0.0,
        "peak": float(timer.peak),
    }


def main() -> None:
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=12, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=2, help="steps skipped at the start of each run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the three modes")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rule", default="sgd", help="LipschitzLR rule of the runs with the callback")
    parser.add_argument("--per-step", action="store_true",
                        help="the rule's per-step rate (precond): a device tensor written at every step")
    parser.add_argument("--polyak", action="store_true",
                        help="the capped Polyak step on Schedule-Free SGD (rule precond): the gradients scaled at every step")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {list(MODES)}")
    args = parser.parse_args()
    if args.steps <= args.warmup + 1:
        parser.error("--steps must exceed --warmup + 1")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda but CUDA is not available")

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; expected some of {list(MODES)}")
    for mode in list(modes):  # every compared mode brings its baseline
        if mode in BASELINES and BASELINES[mode] not in modes:
            modes.insert(0, BASELINES[mode])
    results: Dict[str, List[Dict[str, float]]] = {m: [] for m in modes}
    for r in range(args.rounds):
        # alternate the order round by round so that a slow drift of the machine cancels out
        for mode in modes if r % 2 == 0 else modes[::-1]:
            results[mode].append(run(mode, args, device))
            print(f"round {r + 1}/{args.rounds} {mode:>14}: median step {results[mode][-1]['step'] * 1e3:8.1f} ms,"
                  f" epoch {results[mode][-1]['epoch']:7.2f} s", flush=True)

    def median(mode: str, key: str) -> float:
        return statistics.median(x[key] for x in results[mode])

    print(f"\nResNet20, batch {args.batch_size}, {args.steps} steps/run ({args.warmup} warm-up), {args.rounds} "
          f"interleaved rounds, rule {args.rule}{' per step' if args.per_step else ''}{' polyak' if args.polyak else ''}, device {device.type}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("wall clock, median over rounds; ratio = mode / its baseline measured in the same rounds:")
    print(f"{'mode':>14} {'baseline':>9} {'step ms':>9} {'step ratio':>11} {'epoch s':>9} {'epoch ratio':>12} {'held bytes':>11}")
    for mode in modes:
        base = BASELINES.get(mode, mode)
        step, epoch = median(mode, "step"), median(mode, "epoch")
        print(f"{mode:>14} {base:>9} {step * 1e3:9.1f} {step / median(base, 'step'):11.4f} {epoch:9.2f}"
              f" {epoch / median(base, 'epoch'):12.4f} {median(mode, 'held_bytes'):11.0f}")
    print("time inside the callback (measured directly; compiled: its eager code, the hook is in the graph):")
    for mode in modes:
        if mode not in BASELINES:
            continue
        base_step = median(BASELINES[mode], "step")
        inside = median(mode, "inside_per_step")
        end = median(mode, "epoch_end")
        print(f"{mode:>14}: {inside * 1e6:8.1f} us per step = {inside / base_step * 100:.3f}% of a step without it;"
              f" epoch end {end * 1e3:8.1f} ms = {end / (base_step * args.steps) * 100:.2f}% of a {args.steps}-step epoch")
    # per-round paired ratios show the spread
    for mode in modes:
        if mode in BASELINES:
            ratios = [a["step"] / b["step"] for a, b in zip(results[mode], results[BASELINES[mode]])]
            print(f"per-round step ratio {mode}: " + ", ".join(f"{x:.4f}" for x in ratios))
    if args.polyak:
        reduce = scalar_allreduce_seconds()
        base_step = median("none", "step") if "none" in results else float("nan")
        print(f"DDP: the Polyak step's all-reduce of one float per step (gloo, 2 CPU processes, median of 200): "
              f"{reduce * 1e6:.1f} us = {reduce / base_step * 100:.3f}% of a step without the callback")
    if device.type == "cuda":
        print("peak allocated (MiB): " + ", ".join(f"{m} {median(m, 'peak') / 2**20:.1f}" for m in modes))


if __name__ == "__main__":
    main()
