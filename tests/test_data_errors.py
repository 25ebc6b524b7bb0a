"""Bad inputs and data problems of issue 15 (seed, data folders, archives, truncated and
booby-trapped files, a batch of one): one ``error:`` line naming the real cause and what to do,
or a run that works. Datasets are generated files in the official formats (no download).
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch
import torchvision

from lipschitz_lightning.data import (
    CIFAR10DataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    MNISTDataModule,
    SyntheticDataModule,
    file_md5,
)
from lipschitz_lightning.models import MnistCNN
from tests._dataset_files import (
    unwritable_folder,
    write_booby_trapped_pickle,
    write_cifar10_binary_archive,
    write_cifar_python,
    write_mnist_raw,
)
from tests.conftest import run_cli

CIFAR_NAMES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
TINY_TRAINER = ["trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                "+trainer.enable_model_summary=false", "+trainer.num_sanity_val_steps=0", "~logger",
                "dataset.num_workers=0"]
TINY_MLP = ["model=mlp", "model.hidden_sizes=[8]"]


def cli(tmp_path: Path, *args: str):
    return run_cli([*args, f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path)


def one_error_line(result) -> str:
    """The run failed with exit status 2 and one ``error:`` line, no traceback; return the line."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.stderr[-3000:]
    return errors[0]


# --------------------------------------------------------------------------- seed


@pytest.mark.slow
@pytest.mark.parametrize("seed", ["-5", "4294967296"])
def test_seed_out_of_range_is_one_line(seed: str, tmp_path: Path):
    result = cli(tmp_path, "dataset=synthetic", "dataset.input_shape=[10]", *TINY_MLP, *TINY_TRAINER, f"seed={seed}")
    assert one_error_line(result) == f"error: seed must be an integer from 0 to 4294967295 or null; got {seed}"


def test_datamodule_refuses_a_seed_numpy_cannot_take():
    with pytest.raises(ValueError, match="seed must be an integer from 0 to 4294967295; got -5"):
        SyntheticDataModule(seed=-5)
    SyntheticDataModule(seed=2**32 - 1, num_train=4, num_test=2).setup()  # the largest one works


# --------------------------------------------------------------------------- data folders


@pytest.mark.slow
@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_data_dir_that_is_a_file(dataset: str, tmp_path: Path):
    blocker = tmp_path / "data"
    blocker.write_text("not a folder\n")
    result = cli(tmp_path, f"dataset={dataset}", *TINY_MLP, *TINY_TRAINER, f"paths.data_dir={blocker}")
    name = {"cifar10": "CIFAR-10", "mnist": "MNIST"}[dataset]
    line = one_error_line(result)
    assert line.startswith(f"error: the {name} data folder {blocker} is a file, not a folder: set paths.data_dir"), line


def test_data_dir_below_a_file(tmp_path: Path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    message = f"cannot create the CIFAR-10 data folder {blocker}/data .*Not a directory"
    with pytest.raises(DatasetNotFoundError, match=message):
        CIFAR10DataModule(str(blocker / "data")).prepare_data()


@pytest.mark.slow
def test_read_only_data_dir_with_a_good_archive(tmp_path: Path):
    """A good archive in a folder the run cannot write in is not 'corrupt': say what to change."""
    data = tmp_path / "data"
    archive = data / "cifar-10-binary.tar.gz"
    write_cifar10_binary_archive(archive, per_file=2)
    with unwritable_folder(data) as unwritable:
        if not unwritable:
            pytest.skip("no way to make a folder unwritable here")
        result = cli(tmp_path, "dataset=cifar10", *TINY_MLP, *TINY_TRAINER, f"paths.data_dir={data}",
                     "dataset.verify_checksums=false")
    line = one_error_line(result)
    assert line.startswith(f"error: cannot extract {archive} into {data} ("), line
    assert "the folder is not writable" in line and f"dataset.archive={archive}" in line, line
    assert "corrupt" not in line
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-binary.tar.gz"]
    # The advice works: a writable data folder, the archive left where it is.
    elsewhere = tmp_path / "writable"
    dm = CIFAR10DataModule(str(elsewhere), archive=str(archive), verify_checksums=False)
    dm.setup()
    assert len(dm.train_dataset) == 10


def test_two_runs_extracting_into_one_fresh_folder(tmp_path: Path):
    """The extracted folder appears whole or not at all, and both runs end with the same data."""
    per_file = 1500
    data = tmp_path / "data"
    write_cifar10_binary_archive(data / "cifar-10-binary.tar.gz", per_file=per_file)
    folder = data / "cifar-10-batches-bin"
    partial: list[dict] = []
    results: list[object] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if folder.is_dir():
                sizes = {name: (folder / name).stat().st_size if (folder / name).exists() else None
                         for name in CIFAR_NAMES}
                if any(size != per_file * 3073 for size in sizes.values()):
                    partial.append(sizes)
                    return

    def run() -> None:
        dm = CIFAR10DataModule(str(data), verify_checksums=False)
        try:
            dm.setup()
            results.append(len(dm.train_dataset))
        except Exception as error:  # noqa: BLE001 - reported by the assertion below
            results.append(error)

    watcher = threading.Thread(target=watch)
    runs = [threading.Thread(target=run) for _ in range(2)]
    watcher.start()
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join()
    done.set()
    watcher.join()
    assert not partial, f"another run could see a half-extracted folder: {partial[0]}"
    assert results == [5 * per_file, 5 * per_file]
    assert sorted(p.name for p in data.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


# --------------------------------------------------------------------------- MNIST files


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.mark.slow
def test_truncated_extracted_mnist_file_is_named(tmp_path: Path):
    write_mnist_raw(tmp_path / "data", num_train=8, num_test=4)
    images = tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte"
    _truncate(images, 1000)
    result = cli(tmp_path, "dataset=mnist", *TINY_MLP, *TINY_TRAINER, f"paths.data_dir={tmp_path / 'data'}")
    line = one_error_line(result)
    assert line.startswith(f"error: corrupt file: {images} (truncated: 1000 of the 6288 bytes its header announces); "
                           "delete it"), line
    assert "not found" not in line


def test_truncated_extracted_mnist_file_is_extracted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """With the .gz files beside them (md5 as in torchvision's table), a truncated file is extracted again."""
    import gzip

    write_mnist_raw(tmp_path, num_train=8, num_test=4)
    raw = tmp_path / "MNIST" / "raw"
    resources = []
    for url, _ in torchvision.datasets.MNIST.resources:
        gz = raw / url
        gz.write_bytes(gzip.compress((raw / gz.stem).read_bytes()))
        resources.append((url, file_md5(gz)))
    monkeypatch.setattr(torchvision.datasets.MNIST, "resources", resources)
    whole = (raw / "t10k-labels-idx1-ubyte").read_bytes()
    _truncate(raw / "t10k-labels-idx1-ubyte", 9)
    dm = MNISTDataModule(str(tmp_path))
    dm.prepare_data()
    assert (raw / "t10k-labels-idx1-ubyte").read_bytes() == whole
    dm.setup()
    assert dm.test_dataset.targets.tolist() == list(whole[8:])
    # A damaged .gz as well: both are named.
    _truncate(raw / "t10k-labels-idx1-ubyte", 9)
    _truncate(raw / "t10k-labels-idx1-ubyte.gz", 20)
    with pytest.raises(DatasetCorruptError, match=r"t10k-labels-idx1-ubyte \(truncated: 9 of the 12 bytes .*\), and "
                       r"t10k-labels-idx1-ubyte\.gz beside it fails its md5 too; delete both"):
        MNISTDataModule(str(tmp_path)).setup()


# --------------------------------------------------------------------------- booby-trapped pickle


@pytest.mark.slow
def test_booby_trapped_cifar_batch_runs_nothing(tmp_path: Path):
    """The python version's batches are pickles: one that calls os.system is refused unopened."""
    data = tmp_path / "data"
    write_cifar_python(data, hundred=False, per_file=3)
    marker = tmp_path / "PWNED"
    batch = data / "cifar-10-batches-py" / "data_batch_1"
    write_booby_trapped_pickle(batch, marker)
    result = cli(tmp_path, "dataset=cifar10", *TINY_MLP, *TINY_TRAINER, f"paths.data_dir={data}",
                 "dataset.verify_checksums=false")
    assert not marker.exists(), "the pickle's command ran"
    line = one_error_line(result)
    assert line.startswith(f"error: corrupt file: {batch} (not a CIFAR batch: it refers to posix.system"), line


# --------------------------------------------------------------------------- a batch of one


@pytest.mark.slow
def test_mnist_cnn_batch_of_one_is_refused_up_front(tmp_path: Path):
    write_mnist_raw(tmp_path / "data", num_train=8, num_test=4)
    result = cli(tmp_path, "dataset=mnist", "model=mnist_cnn", "dataset.batch_size=1", *TINY_TRAINER,
                 f"paths.data_dir={tmp_path / 'data'}")
    line = one_error_line(result)
    assert line.startswith("error: model 'mnist_cnn' on dataset 'mnist': dataset.batch_size=1 is too small, the model "
                           "needs at least 2 samples per batch (its BatchNorm"), line
    assert line.endswith("use dataset.batch_size=2 or more"), line


@pytest.mark.slow
def test_mnist_cnn_trains_a_last_batch_of_one(tmp_path: Path):
    """31 samples in batches of 2: the last batch of each epoch holds one sample (normalized with
    the running statistics of the 15 batches before it)."""
    write_mnist_raw(tmp_path / "data", num_train=31, num_test=4)
    result = cli(tmp_path, "dataset=mnist", "model=mnist_cnn", "dataset.batch_size=2", *TINY_TRAINER,
                 "trainer.max_epochs=2", f"paths.data_dir={tmp_path / 'data'}", "test=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


def test_mnist_cnn_one_sample_uses_the_running_statistics():
    torch.manual_seed(0)
    net = MnistCNN((1, 28, 28), 10).train()
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm1d))
    net(torch.rand(4, 1, 28, 28))  # a batch of 4 updates the running statistics
    mean, var = bn.running_mean.clone(), bn.running_var.clone()
    x = torch.rand(1, 1, 28, 28)
    torch.manual_seed(1)
    out = net(x)
    assert torch.equal(bn.running_mean, mean) and torch.equal(bn.running_var, var)
    out.sum().backward()
    assert bn.weight.grad is not None and net.head.weight.grad.abs().sum() > 0
    torch.manual_seed(1)
    net.eval()
    for module in net.modules():  # the same dropout draws: train mode except the BatchNorm
        if isinstance(module, torch.nn.Dropout):
            module.train()
    torch.testing.assert_close(net(x), out)
