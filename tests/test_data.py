"""Datamodules on generated files in the official formats (no real data, no network)."""

from __future__ import annotations

import tarfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision

import lipschitz_lightning.data.cifar as cifar_module
from lipschitz_lightning.data import (
    CIFAR10_BINARY_MD5,
    CIFAR10DataModule,
    CIFAR100DataModule,
    DatasetCorruptError,
    DatasetNotFoundError,
    MNISTDataModule,
    SklearnDataModule,
    SyntheticDataModule,
    file_md5,
    read_cifar10_binary,
    scale_features,
)
from lipschitz_lightning.models import SoftmaxRegression
from tests._dataset_files import write_cifar10_binary, write_cifar_python, write_mnist_raw

# --------------------------------------------------------------------------- helpers


def _offline(monkeypatch: pytest.MonkeyPatch, module: str) -> list[str]:
    """Make torchvision's downloader in `module` fail as it does without network; record URLs."""
    calls: list[str] = []

    def fail(url: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        raise URLError("offline (test)")

    monkeypatch.setattr(f"torchvision.datasets.{module}.download_and_extract_archive", fail)
    return calls


def _all_batches(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader)
    return torch.cat(xs), torch.cat(ys)


def _is_flip_translation(augmented: torch.Tensor, original: torch.Tensor, pad: int = 4) -> bool:
    """True if `augmented` is a pad-`pad` crop of `original`, possibly flipped horizontally."""
    height, width = original.shape[-2:]
    padded = torch.nn.functional.pad(original, (pad, pad, pad, pad))
    for candidate in (padded, padded.flip(-1)):
        for dy in range(2 * pad + 1):
            for dx in range(2 * pad + 1):
                if torch.equal(candidate[:, dy : dy + height, dx : dx + width], augmented):
                    return True
    return False


# --------------------------------------------------------------------------- CIFAR-10 binary reader


def test_read_cifar10_binary_exact_values_and_channel_order(tmp_path: Path) -> None:
    records = []
    for label, planes in ((3, (10, 20, 30)), (9, (0, 0, 0))):
        data = bytearray([label])
        for value in planes:
            data += bytes([value]) * 1024
        records.append(data)
    records[0][1 + 1 * 32 + 2] = 200  # red plane, row 1, column 2
    records[0][1 + 2 * 1024 + 31 * 32] = 255  # blue plane, row 31, column 0
    records[1][1 + 1024 + 31] = 77  # green plane, row 0, column 31
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_1.bin"
    path.parent.mkdir()
    path.write_bytes(b"".join(records))

    images, labels = read_cifar10_binary(path)
    assert images.dtype == np.uint8 and images.shape == (2, 3, 32, 32)
    assert labels.dtype == np.int64 and labels.tolist() == [3, 9]
    assert images[0, 0, 1, 2] == 200 and images[0, 0, 0, 0] == 10 and images[0, 0, 1, 3] == 10
    assert images[0, 1].min() == images[0, 1].max() == 20
    assert images[0, 2, 31, 0] == 255 and images[0, 2, 30, 0] == 30
    assert images[1, 1, 0, 31] == 77 and images[1].sum() == 77


def test_read_cifar10_binary_rejects_bad_size_and_labels(tmp_path: Path) -> None:
    bad = tmp_path / "short.bin"
    bad.write_bytes(b"\x01" * 3000)
    with pytest.raises(DatasetCorruptError, match="corrupt file: .*short.bin"):
        read_cifar10_binary(bad)
    wrong_label = tmp_path / "label.bin"
    wrong_label.write_bytes(b"\x0c" + b"\x00" * 3072)
    with pytest.raises(DatasetCorruptError, match="label 12 outside 0-9"):
        read_cifar10_binary(wrong_label)


# --------------------------------------------------------------------------- CIFAR-10 datamodule


def test_cifar10_contract_needs_no_files() -> None:
    dm = CIFAR10DataModule(data_dir="/nonexistent/cifar", batch_size=64)
    assert (dm.input_shape, dm.num_outputs, dm.loss, dm.batch_size) == ((3, 32, 32), 10, "softmax_ce", 64)
    dm100 = CIFAR100DataModule(data_dir="/nonexistent/cifar")
    assert (dm100.input_shape, dm100.num_outputs, dm100.loss, dm100.batch_size) == ((3, 32, 32), 100, "softmax_ce", 128)


def test_cifar10_binary_datamodule(tmp_path: Path) -> None:
    content = write_cifar10_binary(tmp_path, per_file=4)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), batch_size=8, shuffle=False, verify_checksums=False)
    dm.prepare_data()
    dm.setup("fit")
    train_images = np.concatenate([content[f"data_batch_{i}.bin"][0] for i in range(1, 6)])
    train_labels = np.concatenate([content[f"data_batch_{i}.bin"][1] for i in range(1, 6)])
    expected_mean = train_images.astype(np.float64).mean(axis=(0, 2, 3))
    assert dm.channel_mean == pytest.approx(expected_mean.tolist(), abs=1e-9)
    assert len(dm.train_dataset) == 20 and len(dm.test_dataset) == 4

    mean = torch.tensor(expected_mean, dtype=torch.float32).view(1, 3, 1, 1)
    probe_x, probe_y = _all_batches(dm.probe_dataloader())
    assert probe_x.dtype == torch.float32 and probe_y.dtype == torch.int64
    assert probe_y.tolist() == train_labels.tolist()
    torch.testing.assert_close(probe_x, (torch.from_numpy(train_images).float() - mean) / 255)
    again_x, _ = _all_batches(dm.probe_dataloader())
    assert torch.equal(probe_x, again_x), "the probe loader must not augment"

    test_x, test_y = _all_batches(dm.val_dataloader())
    assert test_y.tolist() == content["test_batch.bin"][1].tolist()
    torch.testing.assert_close(test_x, (torch.from_numpy(content["test_batch.bin"][0]).float() - mean) / 255)
    assert torch.equal(_all_batches(dm.test_dataloader())[0], test_x)

    train_x, train_y = _all_batches(dm.train_dataloader())
    assert train_y.tolist() == train_labels.tolist()  # shuffle=False keeps the order
    assert torch.equal(train_x, probe_x), "the loader serves plain images; the batch hook augments"
    augmented = torch.cat([dm.augment_batch(x, epoch=0, batch=i) for i, x in enumerate(train_x.split(8))])
    assert not torch.equal(augmented, probe_x), "training batches must be augmented"
    assert all(_is_flip_translation(a, p) for a, p in zip(augmented, probe_x))
    # A pure function of (seed, epoch, batch, rank): what makes a resumed run see the same data.
    batch = train_x[:8]
    assert torch.equal(dm.augment_batch(batch, 3, 1), dm.augment_batch(batch, 3, 1))
    assert not torch.equal(dm.augment_batch(batch, 3, 1), dm.augment_batch(batch, 4, 1))
    assert not torch.equal(dm.augment_batch(batch, 3, 1), dm.augment_batch(batch, 3, 1, rank=1))


def test_cifar10_shuffle_is_seeded_and_differs_from_probe(tmp_path: Path) -> None:
    write_cifar10_binary(tmp_path, per_file=4)

    def order(seed: int) -> list[int]:
        dm = CIFAR10DataModule(str(tmp_path), batch_size=20, seed=seed, verify_checksums=False, augment=False)
        dm.setup()
        x, _ = next(iter(dm.train_dataloader()))
        probe, _ = next(iter(dm.probe_dataloader()))
        return [int(torch.nonzero((probe == row).flatten(1).all(1))[0]) for row in x]

    assert order(0) == order(0)
    assert sorted(order(0)) == list(range(20))
    assert order(0) != list(range(20)) and order(0) != order(1)


def test_training_order_is_a_function_of_seed_and_epoch() -> None:
    """Lightning calls set_epoch; a fresh datamodule (a resumed run) gives the same epoch order."""
    def epoch_order(epoch: int, seed: int = 0) -> list[int]:
        dm = SyntheticDataModule(input_shape=(1,), num_classes=2, num_train=16, num_test=4, batch_size=4, seed=seed)
        dm.setup()
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    assert epoch_order(2) == epoch_order(2) and sorted(epoch_order(2)) == list(range(16))
    assert epoch_order(2) != epoch_order(3) and epoch_order(2) != epoch_order(2, seed=1)


def test_resumed_epoch_skips_the_finished_batches() -> None:
    """load_state_dict(batches_done=k): the next training iteration starts at batch k."""
    dm = SyntheticDataModule(input_shape=(1,), num_classes=2, num_train=16, num_test=4, batch_size=4)
    dm.setup()
    full = [y.tolist() for _, y in dm.train_dataloader()]
    state = dm.state_dict()
    assert state["seed"] == 0 and state["batches_done"] == 0 and "torch" in state["rng"]
    resumed = SyntheticDataModule(input_shape=(1,), num_classes=2, num_train=16, num_test=4, batch_size=4)
    resumed.setup()
    resumed.load_state_dict({**state, "batches_done": 3})
    loader = resumed.train_dataloader()
    assert [y.tolist() for _, y in loader] == full[3:]
    assert [y.tolist() for _, y in loader] == full, "only the first iteration skips"
    with pytest.raises(ValueError, match="trained with seed=0, this run has seed=5"):
        SyntheticDataModule(seed=5).load_state_dict(state)


def test_loaders_leave_the_global_random_stream_alone() -> None:
    """Creating and running any loader draws nothing from torch's global generator (dropout's)."""
    dm = SyntheticDataModule(input_shape=(2,), num_classes=2, num_train=8, num_test=4, batch_size=4)
    dm.setup()
    before = torch.get_rng_state()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader(), dm.probe_dataloader()):
        list(loader)
    assert torch.equal(before, torch.get_rng_state())


def test_cifar10_md5_mismatch_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10_binary(tmp_path, per_file=2)
    folder = tmp_path / "cifar-10-batches-bin"
    # Against the official table, generated files fail on the first one loaded.
    with pytest.raises(DatasetCorruptError, match=r"corrupt file: .*data_batch_1\.bin \(md5 [0-9a-f]{32}, expected "
                       + CIFAR10_BINARY_MD5["data_batch_1.bin"]):
        CIFAR10DataModule(str(tmp_path)).setup()
    # With the table pointing at the generated files, md5 checking passes ...
    for name in CIFAR10_BINARY_MD5:
        monkeypatch.setitem(cifar_module.CIFAR10_BINARY_MD5, name, file_md5(folder / name))
    CIFAR10DataModule(str(tmp_path)).setup()
    # ... until one byte of one file changes.
    path = folder / "data_batch_3.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetCorruptError, match=r"corrupt file: .*data_batch_3\.bin \(md5 "):
        CIFAR10DataModule(str(tmp_path)).setup()


def test_cifar10_extracts_archive_from_data_dir(tmp_path: Path) -> None:
    source = tmp_path / "source"
    content = write_cifar10_binary(source, per_file=2)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with tarfile.open(data_dir / "cifar-10-binary.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    dm = CIFAR10DataModule(str(data_dir), verify_checksums=False)
    dm.prepare_data()
    assert (data_dir / "cifar-10-batches-bin" / "test_batch.bin").is_file()
    dm.setup()
    assert dm.test_dataset.targets.tolist() == content["test_batch.bin"][1].tolist()


def test_cifar10_extracts_explicit_archive_into_data_dir(tmp_path: Path) -> None:
    source = tmp_path / "source"
    write_cifar10_binary(source, per_file=2)
    archive = tmp_path / "elsewhere" / "cifar-10-binary.tar.xz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    data_dir = tmp_path / "fresh" / "data"
    dm = CIFAR10DataModule(str(data_dir), archive=str(archive), verify_checksums=False)
    dm.setup()  # setup alone also acquires the data when prepare_data was not called
    assert len(dm.train_dataset) == 10
    assert (data_dir / "cifar-10-batches-bin" / "data_batch_5.bin").is_file()
    assert not (archive.parent / "cifar-10-batches-bin").exists()


def test_cifar10_bad_archive(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(b"not a tar file")
    with pytest.raises(DatasetCorruptError, match="corrupt file: .*cifar-10-binary.tar.gz"):
        CIFAR10DataModule(str(tmp_path)).prepare_data()
    with pytest.raises(DatasetNotFoundError, match="archive not found"):
        CIFAR10DataModule(str(tmp_path), archive=str(tmp_path / "missing.tar.xz")).prepare_data()


def test_cifar10_python_layout(tmp_path: Path) -> None:
    content = write_cifar_python(tmp_path, hundred=False, per_file=3)
    dm = CIFAR10DataModule(str(tmp_path), batch_size=4, shuffle=False, verify_checksums=False)
    dm.setup()
    _, labels = _all_batches(dm.probe_dataloader())
    assert labels.tolist() == np.concatenate([content[f"data_batch_{i}"][1] for i in range(1, 6)]).tolist()
    with pytest.raises(DatasetCorruptError, match=r"cifar-10-batches-py/data_batch_1 \(md5 .*expected c99cafc1"):
        CIFAR10DataModule(str(tmp_path)).setup()


@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_missing_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cls: type) -> None:
    calls = _offline(monkeypatch, "cifar")
    data_dir = tmp_path / "empty"
    dm = cls(data_dir=str(data_dir))
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert calls and calls[0].startswith("https://www.cs.toronto.edu/~kriz/cifar-10")
    assert isinstance(info.value, RuntimeError)
    assert isinstance(info.value.__cause__, URLError)
    assert str(data_dir) in message and "could not be downloaded" in message
    assert "https://www.cs.toronto.edu/~kriz/cifar.html" in message
    if cls is CIFAR10DataModule:
        assert message.startswith("CIFAR-10 not found in")
        assert "cifar-10-batches-py/" in message and "cifar-10-batches-bin/" in message
    else:
        assert message.startswith("CIFAR-100 not found in") and "cifar-100-python/" in message
    with pytest.raises(DatasetNotFoundError):
        cls(data_dir=str(data_dir)).setup()


# --------------------------------------------------------------------------- CIFAR-100


def test_cifar100_generated_python_layout(tmp_path: Path) -> None:
    content = write_cifar_python(tmp_path, hundred=True, per_file=6)
    folder = tmp_path / "cifar-100-python"

    # The generated files are what torchvision itself reads (md5 table swapped, not disabled).
    class GeneratedCIFAR100(torchvision.datasets.CIFAR100):
        train_list = [["train", file_md5(folder / "train")]]
        test_list = [["test", file_md5(folder / "test")]]
        meta = {"filename": "meta", "key": "fine_label_names", "md5": file_md5(folder / "meta")}

    reference = GeneratedCIFAR100(root=str(tmp_path), train=True)
    assert reference.targets == content["train"][1].tolist()
    assert len(reference.classes) == 100

    dm = CIFAR100DataModule(str(tmp_path), batch_size=4, shuffle=False, verify_checksums=False)
    dm.setup()
    assert dm.num_outputs == 100
    x, y = _all_batches(dm.probe_dataloader())
    assert y.tolist() == reference.targets
    mean = torch.tensor(dm.channel_mean).view(1, 3, 1, 1)
    hwc = torch.from_numpy(reference.data).permute(0, 3, 1, 2).float()
    torch.testing.assert_close(x, (hwc - mean) / 255)
    _, test_y = _all_batches(dm.test_dataloader())
    assert test_y.tolist() == content["test"][1].tolist()

    # The real path keeps torchvision's md5 checks.
    with pytest.raises(DatasetCorruptError, match=r"cifar-100-python/train \(md5 .*expected 16019d7e3df5f24257cddd939b257f8d"):
        CIFAR100DataModule(str(tmp_path)).setup()


# --------------------------------------------------------------------------- MNIST


def test_mnist_missing_data_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _offline(monkeypatch, "mnist")
    data_dir = tmp_path / "nothing"
    dm = MNISTDataModule(data_dir=str(data_dir))
    assert (dm.input_shape, dm.num_outputs, dm.loss) == ((1, 28, 28), 10, "softmax_ce")
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
    message = str(info.value)
    assert len(calls) == 2  # both mirrors tried for the first file, then it gives up
    assert isinstance(info.value.__cause__, RuntimeError)
    assert message.startswith(f"MNIST not found in {data_dir}")
    assert str(data_dir / "MNIST" / "raw") in message and "writable" in message
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        assert name in message
    with pytest.raises(DatasetNotFoundError):
        MNISTDataModule(data_dir=str(data_dir)).setup()


def test_mnist_generated_raw_files(tmp_path: Path) -> None:
    write_mnist_raw(tmp_path, num_train=12, num_test=6)
    dm = MNISTDataModule(str(tmp_path), batch_size=5, shuffle=False)
    dm.prepare_data()
    dm.setup()
    raw = torchvision.datasets.MNIST(str(tmp_path), train=True)
    probe_x, probe_y = _all_batches(dm.probe_dataloader())
    assert probe_x.shape == (12, 1, 28, 28) and probe_y.tolist() == raw.targets.tolist()
    torch.testing.assert_close(probe_x, raw.data.unsqueeze(1).float() / 255)
    assert torch.equal(_all_batches(dm.probe_dataloader())[0], probe_x)
    train_x, train_y = _all_batches(dm.train_dataloader())
    assert train_y.tolist() == probe_y.tolist() and train_x.shape == probe_x.shape
    augmented = dm.augment_batch(train_x, epoch=0, batch=0)
    assert augmented.shape == probe_x.shape and not torch.equal(augmented, probe_x)
    assert 0.0 <= augmented.min() and augmented.max() <= 1.0
    # Rotation, shift and zoom are small: most of each digit stays where it was.
    assert (augmented - probe_x).abs().mean() < (probe_x - probe_x.roll(1, 0)).abs().mean()
    test_x, _ = _all_batches(dm.val_dataloader())
    assert test_x.shape == (6, 1, 28, 28)


# --------------------------------------------------------------------------- scikit-learn


@pytest.mark.parametrize(
    ("name", "shape", "outputs", "loss", "size"),
    [
        ("iris", (4,), 3, "softmax_ce", 150),
        ("digits", (64,), 10, "softmax_ce", 1797),
        ("breast_cancer", (30,), 1, "bce", 569),
        ("wine", (13,), 3, "softmax_ce", 178),
        ("diabetes", (10,), 1, "mse", 442),
    ],
)
def test_sklearn_shapes(name: str, shape: tuple[int, ...], outputs: int, loss: str, size: int) -> None:
    dm = SklearnDataModule(name, batch_size=32)
    assert (dm.input_shape, dm.num_outputs, dm.loss) == (shape, outputs, loss)
    dm.setup()
    assert len(dm.train_dataset) + len(dm.test_dataset) == size
    assert len(dm.test_dataset) == pytest.approx(0.3 * size, abs=1)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, *shape) and x.dtype == torch.float32
    if loss == "softmax_ce":
        assert y.shape == (32,) and y.dtype == torch.int64
    else:
        assert y.shape == (32, 1) and y.dtype == torch.float32
    if loss == "bce":
        assert set(dm.train_dataset.tensors[1].unique().tolist()) == {0.0, 1.0}


def test_sklearn_split_is_reproducible_and_stratified() -> None:
    def split(seed: int) -> torch.Tensor:
        dm = SklearnDataModule("iris", seed=seed)
        dm.setup()
        return dm.test_dataset.tensors[0]

    assert torch.equal(split(3), split(3))
    assert not torch.equal(split(3), split(4))
    dm = SklearnDataModule("iris", seed=5)
    dm.setup()
    assert torch.bincount(dm.test_dataset.tensors[1]).tolist() == [15, 15, 15]


def test_sklearn_scalings() -> None:
    dm = SklearnDataModule("wine", scale="unit_sum")
    dm.setup()
    torch.testing.assert_close(dm.train_dataset.tensors[0].sum(0), torch.ones(13))
    digits = SklearnDataModule("digits", scale="unit_sum")
    digits.setup()
    sums = digits.train_dataset.tensors[0].sum(0)
    nonzero = sums != 0  # some border pixels are always 0
    torch.testing.assert_close(sums[nonzero], torch.ones(int(nonzero.sum())))
    standard = SklearnDataModule("breast_cancer", scale="standard")
    standard.setup()
    x = standard.train_dataset.tensors[0].double()
    torch.testing.assert_close(x.mean(0), torch.zeros(30, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(x.std(0, unbiased=False), torch.ones(30, dtype=torch.float64), atol=1e-5, rtol=0)
    train, test = scale_features(np.array([[1.0, 0.0], [3.0, 0.0]]), np.array([[2.0, 5.0]]), "unit_sum")
    assert train.tolist() == [[0.25, 0.0], [0.75, 0.0]] and test.tolist() == [[0.5, 5.0]]


def test_sklearn_digits_as_image() -> None:
    dm = SklearnDataModule("digits", as_image=True, batch_size=16)
    assert dm.input_shape == (1, 8, 8)
    dm.setup()
    x, y = next(iter(dm.probe_dataloader()))
    assert x.shape == (16, 1, 8, 8) and y.shape == (16,)
    flat = SklearnDataModule("digits", batch_size=16)
    flat.setup()
    torch.testing.assert_close(next(iter(flat.probe_dataloader()))[0], x.reshape(16, 64))


def test_sklearn_bad_arguments() -> None:
    with pytest.raises(ValueError, match="valid names: iris, digits, breast_cancer, wine, diabetes"):
        SklearnDataModule("boston")
    with pytest.raises(ValueError, match="as_image=True only works for digits"):
        SklearnDataModule("iris", as_image=True)
    with pytest.raises(ValueError, match="test_fraction"):
        SklearnDataModule("iris", test_fraction=1.0)
    with pytest.raises(ValueError, match="unknown scale"):
        SklearnDataModule("iris", scale="minmax")


# --------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize(
    ("loss", "shape", "outputs", "target_shape", "dtype"),
    [
        ("softmax_ce", (3, 8, 8), 5, (), torch.int64),
        ("bce", (3, 8, 8), 1, (1,), torch.float32),
        ("mse", (12,), 1, (1,), torch.float32),
    ],
)
def test_synthetic_shapes_and_determinism(loss, shape, outputs, target_shape, dtype) -> None:
    def make(seed: int) -> SyntheticDataModule:
        dm = SyntheticDataModule(shape, num_classes=5, num_train=40, num_test=20, loss=loss, seed=seed, batch_size=16)
        dm.setup()
        return dm

    dm = make(0)
    assert (dm.input_shape, dm.num_outputs, dm.loss) == (shape, outputs, loss)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (16, *shape) and y.shape == (16, *target_shape) and y.dtype == dtype
    assert len(dm.test_dataset) == 20
    same, other = make(0), make(1)
    for a, b in zip(dm.train_dataset.tensors + dm.test_dataset.tensors, same.train_dataset.tensors + same.test_dataset.tensors):
        assert torch.equal(a, b)
    assert not torch.equal(dm.train_dataset.tensors[0], other.train_dataset.tensors[0])
    if loss == "bce":
        assert set(dm.train_dataset.tensors[1].unique().tolist()) == {0.0, 1.0}
    probe = [torch.cat(p) for p in zip(*dm.probe_dataloader())]
    assert torch.equal(probe[0], dm.train_dataset.tensors[0]), "probe: training data in order"


def test_synthetic_is_learnable() -> None:
    torch.manual_seed(0)
    dm = SyntheticDataModule((1, 8, 8), num_classes=4, num_train=256, num_test=128, noise_std=2.0, batch_size=32)
    dm.setup()
    model = SoftmaxRegression(dm.input_shape, dm.num_outputs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)

    def accuracy() -> float:
        x, y = dm.test_dataset.tensors
        with torch.no_grad():
            return (model(x).argmax(1) == y).float().mean().item()

    before = accuracy()
    for _ in range(5):
        for x, y in dm.train_dataloader():
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert accuracy() > max(0.6, before + 0.2)


def test_synthetic_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown loss"):
        SyntheticDataModule(loss="hinge")
    with pytest.raises(ValueError, match="num_classes must be >= 2"):
        SyntheticDataModule(num_classes=1)
    with pytest.raises(ValueError, match="input_shape"):
        SyntheticDataModule(input_shape=(3, 0, 4))
    with pytest.raises(ValueError, match="num_train"):
        SyntheticDataModule(num_train=0)


# --------------------------------------------------------------------------- common behaviour


@pytest.mark.parametrize(
    "factory",
    [
        lambda **kw: CIFAR10DataModule(**kw),
        lambda **kw: CIFAR100DataModule(**kw),
        lambda **kw: MNISTDataModule(**kw),
        lambda **kw: SklearnDataModule("iris", **kw),
        lambda **kw: SyntheticDataModule(**kw),
    ],
    ids=["cifar10", "cifar100", "mnist", "sklearn", "synthetic"],
)
def test_common_argument_validation(factory) -> None:
    with pytest.raises(ValueError, match="batch_size must be an int >= 1; got 0"):
        factory(batch_size=0)
    with pytest.raises(ValueError, match="num_workers must be an int >= 0; got -1"):
        factory(num_workers=-1)


def test_loaders_need_setup_and_workers_persist() -> None:
    dm = SyntheticDataModule(num_train=8, num_test=4, num_workers=1)
    with pytest.raises(RuntimeError, match="call setup"):
        dm.train_dataloader()
    dm.setup()
    assert dm.train_dataloader().persistent_workers and dm.train_dataloader().num_workers == 1
    assert dm.probe_dataloader().batch_size == dm.batch_size
    serial = SyntheticDataModule(num_train=8, num_test=4)
    serial.setup()
    assert not serial.train_dataloader().persistent_workers


def test_datamodule_pickles_with_its_shuffle_order():
    """ddp_spawn pickles the datamodule into each process; the shuffle order must survive."""
    import pickle

    dm = SyntheticDataModule(input_shape=(4,), num_classes=2, num_train=32, num_test=8, batch_size=8)
    dm.setup("fit")
    copy = pickle.loads(pickle.dumps(dm))
    copy.setup("fit")
    first = [y.tolist() for _, y in dm.train_dataloader()]
    again = [y.tolist() for _, y in copy.train_dataloader()]
    assert first == again


def test_truncated_cifar_archive_leaves_no_partial_folder(tmp_path: Path) -> None:
    """A half archive is 'corrupt', and the next run does not find half a dataset."""
    source = tmp_path / "source"
    write_cifar10_binary(source, per_file=50)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-10-binary.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(source / "cifar-10-batches-bin", arcname="cifar-10-batches-bin")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DatasetCorruptError, match="corrupt file: .*cifar-10-binary.tar.gz"):
        CIFAR10DataModule(str(data_dir), verify_checksums=False).prepare_data()
    assert not (data_dir / "cifar-10-batches-bin").exists()


def test_corrupt_mnist_gz_says_corrupt_not_missing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _offline(monkeypatch, "mnist")
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name, _ in torchvision.datasets.MNIST.resources:
        (raw / name).write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DatasetCorruptError, match=r"corrupt file: .*train-images-idx3-ubyte\.gz \(md5 "):
        MNISTDataModule(str(tmp_path)).prepare_data()


def test_workers_never_exceed_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """num_workers=4 (the CIFAR and MNIST configs) on a 2-core machine: 2 workers; with 2 DDP processes: 1 each."""
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    dm = SyntheticDataModule(num_train=8, num_test=4, num_workers=4)
    dm.setup()
    assert dm.train_dataloader().num_workers == 2

    class TwoDevices:
        num_devices = 2

    dm.trainer = TwoDevices()
    assert dm.val_dataloader().num_workers == 1
