"""Exact resume through the real command line: a training subprocess stopped mid-epoch by SIGTERM
or Ctrl-C (SIGINT), or after a clean stop, then resumed, logs the same per-epoch values as an
uninterrupted run, on the default shuffled, augmented CIFAR-10 datamodule (generated files), in
one run folder with one TensorBoard run.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests._dataset_files import write_cifar10_binary
from tests.conftest import run_cli

TAGS = ("lipschitz/lr", "lipschitz/K_z", "train/loss", "train/acc", "val/loss", "val/acc", "val/acc_best")
EPOCHS = 4
STEPS_PER_EPOCH = 13  # 200 generated training images, batch 16


def epoch_scalars(run_dir: Path) -> Dict[str, List[float]]:
    """Every epoch-level scalar of ``TAGS`` in the run folder's TensorBoard files, by step order."""
    folders = sorted({f.parent for f in run_dir.rglob("events.out.tfevents.*")})
    assert len(folders) == 1, f"one TensorBoard run expected, found {folders}"
    accumulator = EventAccumulator(str(folders[0]))
    accumulator.Reload()
    tags = [tag for tag in TAGS if tag in accumulator.Tags()["scalars"]]
    return {tag: [e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.step)] for tag in tags}


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar10_binary(root, per_file=40)  # 200 train / 40 test images in the official binary format
    return root


def args(cifar_dir: Path, run_dir: Path, *extra: str, optim: str = "sgd") -> List[str]:
    """The CIFAR-10 datamodule as configured (shuffle and augmentation on), a small MLP, 2 epochs of logs."""
    return [
        "dataset=cifar10", f"paths.data_dir={cifar_dir}", "dataset.verify_checksums=false",
        "dataset.batch_size=16", "dataset.num_workers=0", "model=mlp", "model.hidden_sizes=[32]", f"optim={optim}",
        "trainer=cpu", f"trainer.max_epochs={EPOCHS}", "trainer.enable_progress_bar=false",
        "+trainer.enable_model_summary=false", "seed=3", f"hydra.run.dir={run_dir}",
        # The paper's sgd on these random images diverges (epoch 2's loss is 5e3 times its start), which
        # RunHealth rightly stops; this test is about exact resume of every value, so the verdict is off.
        "~callbacks.run_health", *extra,
    ]


@pytest.fixture(scope="module")
def uninterrupted(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The uninterrupted run's per-epoch values, per optim option (run once each)."""
    runs: Dict[str, Dict[str, List[float]]] = {}

    def get(optim: str) -> Dict[str, List[float]]:
        if optim not in runs:
            run_dir = tmp_path_factory.mktemp("whole") / "run"
            result = run_cli(args(cifar_dir, run_dir, optim=optim), cwd=run_dir.parent)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[optim] = epoch_scalars(run_dir)
            assert all(len(values) == EPOCHS for values in runs[optim].values()), runs[optim]
        return runs[optim]

    return get


def assert_same(resumed: Dict[str, List[float]], whole: Dict[str, List[float]]) -> None:
    assert set(resumed) == set(whole)
    for tag in whole:
        assert resumed[tag] == pytest.approx(whole[tag], rel=1e-6, abs=1e-9), tag


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "optim"), [("SIGTERM", "sgd"), ("SIGINT", "sgd"), ("SIGTERM", "sgd_fixed")])
def test_signal_mid_epoch_then_resume_is_exact(signum, optim, cifar_dir, uninterrupted, tmp_path):
    """Stopped in the middle of epoch 2: non-zero status, one line with the resume command; that
    command continues in the same folder and gives the uninterrupted run's values epoch by epoch
    (LipschitzLR's rates and statistics, losses, accuracies; sgd_fixed: everything but the callback)."""
    run_dir = tmp_path / "run"
    step = STEPS_PER_EPOCH + 5  # the 6th step of the second epoch
    stop = run_cli(args(cifar_dir, run_dir, "+callbacks.signal._target_=tests._signal_at_step.SignalAtStep",
                        f"+callbacks.signal.step={step}", f"+callbacks.signal.signum={signum}", optim=optim),
                   cwd=tmp_path)
    assert stop.returncode == (143 if signum == "SIGTERM" else 130), stop.stderr[-3000:]
    last = stop.stderr.strip().splitlines()[-1]
    how = "SIGTERM" if signum == "SIGTERM" else "Ctrl-C"
    assert last.startswith(f"stopped by {how}; checkpoint written; resume with: ") and f"resume={run_dir}" in last
    checkpoint = torch.load(run_dir / "checkpoints" / "on_exception.ckpt", weights_only=True)
    assert checkpoint["global_step"] == step
    assert checkpoint["CIFAR10DataModule"]["batches_done"] == 5

    command = last.split("resume with: ", 1)[1]
    resumed = run_cli(shlex.split(command)[3:], cwd=tmp_path)  # the printed command, run as printed
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(epoch_scalars(run_dir), uninterrupted(optim))
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] == EPOCHS - 1 and final["global_step"] == EPOCHS * STEPS_PER_EPOCH


@pytest.mark.slow
def test_clean_stop_then_resume_from_last_checkpoint_is_exact(cifar_dir, uninterrupted, tmp_path):
    """Table row 1: 2 epochs, then ckpt_path=<run>/checkpoints/last.ckpt with the full epoch count."""
    run_dir = tmp_path / "run"
    first = run_cli(args(cifar_dir, run_dir, "trainer.max_epochs=2", "test=false"), cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    again = run_cli(args(cifar_dir, run_dir, "test=false"), cwd=tmp_path)  # a new run may not reuse the folder
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir} already holds a run's checkpoints: continue it with resume={run_dir}, "
        "or start a new run in another folder")
    resumed = run_cli([a for a in args(cifar_dir, run_dir) if not a.startswith("hydra.run.dir")]
                      + [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same(epoch_scalars(run_dir), uninterrupted("sgd"))


@pytest.mark.slow
def test_ddp_resume_from_last_checkpoint_is_exact(cifar_dir, tmp_path):
    """Two gloo processes (ddp_spawn) with Lightning's DistributedSampler: resuming from
    last.ckpt gives the rates and metrics of the uninterrupted DDP run."""
    from lipschitz_lightning.train import train
    from tests.conftest import compose_train

    def run(folder: Path, *extra: str) -> Dict[str, List[float]]:
        overrides = [a for a in args(cifar_dir, folder) if not a.startswith(("hydra.", "trainer=", "trainer.max"))]
        cfg = compose_train(overrides + [
            f"paths.output_dir={folder}", f"paths.log_dir={folder.parent}", "trainer=cpu", "+trainer.strategy=ddp_spawn",
            "trainer.devices=2", "trainer.max_epochs=3", "test=false", *extra])
        train(cfg)
        return epoch_scalars(folder)

    whole = run(tmp_path / "whole")
    assert all(len(values) == 3 for values in whole.values())
    run(tmp_path / "split", "trainer.max_epochs=1")
    resumed = run(tmp_path / "split", f"ckpt_path={tmp_path / 'split' / 'checkpoints' / 'last.ckpt'}")
    assert_same(resumed, whole)
