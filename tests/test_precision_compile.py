"""GPU-ready options on the CPU: ``trainer.precision``, ``compile=true``, ``channels_last=true``.

Whether the compiled step recompiles with LipschitzLR is the callback's own test; here the
options reach the trainer and the network, and training through them gives the same rates.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Dict, List

import hydra
import pytest
import torch
from torch import nn

from lipschitz_lightning.models import CifarResNet, MLP
from lipschitz_lightning.modules import SupervisedModule
from lipschitz_lightning.precision import default_precision
from lipschitz_lightning.train import train
from tests.conftest import compose_train, path_overrides, run_cli, tiny_cfg, tiny_data, tiny_trainer


def csv_rates(run_dir: Path) -> List[float]:
    """``lipschitz/lr`` per epoch from the CSV logger of a run."""
    with open(run_dir / "csv" / "metrics.csv", newline="") as handle:
        return [float(row["lipschitz/lr"]) for row in csv.DictReader(handle) if row.get("lipschitz/lr")]


def test_default_precision_is_fp32_without_a_gpu():
    """bf16-mixed needs a CUDA GPU with native bf16; this machine (and every CPU run) gets fp32."""
    for accelerator in ("auto", "gpu", "cpu"):
        expected = "bf16-mixed" if accelerator != "cpu" and torch.cuda.is_available() \
            and torch.cuda.get_device_capability()[0] >= 8 else "32-true"
        assert default_precision(accelerator) == expected
    assert default_precision("cpu") == "32-true"


@pytest.mark.parametrize("trainer_option", ["default", "cpu", "gpu", "ddp", "ddp_sim"])
def test_precision_option_reaches_the_trainer(trainer_option: str, tmp_path: Path):
    cfg = compose_train(path_overrides(tmp_path) + [f"trainer={trainer_option}"])
    built = hydra.utils.instantiate(cfg.trainer.precision)
    assert built == default_precision(cfg.trainer.accelerator)
    explicit = compose_train(path_overrides(tmp_path) + [f"trainer={trainer_option}", "trainer.precision=16-mixed"])
    assert explicit.trainer.precision == "16-mixed"


def test_bf16_mixed_on_cpu_gives_the_fp32_rates(tmp_path: Path):
    """trainer.precision=bf16-mixed reaches Lightning (CPU autocast) and the rates stay within 1%:
    LipschitzLR's statistics are float32 either way."""
    rates: Dict[str, float] = {}
    for precision in ("32-true", "bf16-mixed"):
        cfg = tiny_cfg(tmp_path / precision, "model=mnist_cnn", "dataset.input_shape=[1,28,28]", "lr.first_epoch=0.05",
                       f"trainer.precision={precision}", epochs=2)
        rates[precision] = train(cfg)["lipschitz/lr"]
    assert rates["bf16-mixed"] == pytest.approx(rates["32-true"], rel=1e-2)
    assert rates["bf16-mixed"] != rates["32-true"]  # autocast really ran


def test_channels_last_converts_convolutions_and_batches():
    net = CifarResNet(depth=20, input_shape=(3, 8, 8), num_outputs=3)
    module = SupervisedModule(net, lambda params: torch.optim.SGD(params, lr=0.1), "softmax_ce", 3, channels_last=True)
    conv = next(m for m in module.net.modules() if isinstance(m, nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    seen = []
    conv.register_forward_pre_hook(lambda mod, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    module(torch.randn(4, 3, 8, 8))
    assert seen == [True]


def test_channels_last_trains_a_conv_model(tmp_path: Path):
    metrics = train(tiny_cfg(tmp_path, "model=resnet20", "channels_last=true", epochs=2))
    assert metrics["lipschitz/lr"] > 0 and torch.isfinite(torch.tensor(metrics["test/loss"]))


@pytest.mark.parametrize("kwargs, match", [
    ({"channels_last": True}, "no nn.Conv2d"),
    ({"compile": "yes"}, "compile must be true or false"),
])
def test_bad_speedup_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SupervisedModule(MLP(input_shape=(10,), num_outputs=3), lambda p: torch.optim.SGD(p, lr=0.1), "softmax_ce", 3,
                         **kwargs)


def test_compile_keeps_parameter_names():
    """nn.Module.compile works in place: checkpoints and the head's name are those of the plain net."""
    plain = MLP(input_shape=(10,), num_outputs=3)
    names = list(SupervisedModule(plain, torch.optim.SGD, "softmax_ce", 3).state_dict())
    compiled = SupervisedModule(MLP(input_shape=(10,), num_outputs=3), torch.optim.SGD, "softmax_ce", 3, compile=True)
    assert list(compiled.state_dict()) == names and not any("_orig_mod" in n for n in names)


@pytest.mark.slow
def test_compile_trains_through_the_cli(tmp_path: Path):
    """`compile=true` compiles the network (Dynamo traces its forward) and gives the rates of the
    uncompiled run. About a minute on 2 CPU cores (Inductor compiles C++ kernels)."""
    base = [*tiny_data("tabular"), *tiny_trainer(epochs=2, logger=True), "model=mlp", "logger=csv",
            f"paths.root_dir={tmp_path}"]
    runs = {}
    env_logs = os.environ.get("TORCH_LOGS")
    os.environ["TORCH_LOGS"] = "dynamo"
    try:
        for flag in ("false", "true"):
            run_dir = tmp_path / f"compile_{flag}"
            result = run_cli([*base, f"compile={flag}", f"hydra.run.dir={run_dir}"], cwd=tmp_path)
            assert result.returncode == 0, result.stderr[-3000:]
            runs[flag] = (csv_rates(run_dir), "torchdynamo start tracing" in result.stderr)
    finally:
        if env_logs is None:
            os.environ.pop("TORCH_LOGS")
        else:
            os.environ["TORCH_LOGS"] = env_logs
    (plain, plain_traced), (compiled, compiled_traced) = runs["false"], runs["true"]
    assert compiled_traced and not plain_traced
    assert len(compiled) == len(plain) == 2
    assert compiled == pytest.approx(plain, rel=1e-4)
