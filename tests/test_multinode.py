"""Two "nodes" through torchrun on this machine: the real command line, Lightning's DDP, gloo.

Each node is its own ``torchrun --nnodes=2 --node-rank=<r>`` (one CPU process, loopback
rendezvous on 127.0.0.1), exactly as two machines would start it, each with its own run folder.
Both ranks must use the rates of one process with the doubled batch.

The reference is one process under ``strategy=ddp`` (a world of one): Lightning then gives it
the same ``DistributedSampler`` as the two nodes (shuffled with the same seed and epoch), so the
one process sees in each step exactly the union of the two ranks' batches, in a shuffled order
as in any real run. (Without a distributed strategy Lightning keeps the datamodule's own
sampler, whose order differs.)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

from tests.conftest import ROOT

# Under pytest-xdist (make test), one worker runs this module: the module's one-process reference run is made once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("multinode")]

COMMON = [
    "dataset=synthetic", "dataset.input_shape=[10]", "dataset.num_classes=3", "dataset.num_train=64",
    "dataset.num_test=16", "model=mlp", "trainer=ddp_sim", "trainer.devices=1", "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false", "+trainer.num_sanity_val_steps=0", "+trainer.enable_model_summary=false",
    "~logger", "+callbacks.rates._target_=tests.lipschitz_toys.RateRecorder",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def env() -> Dict[str, str]:
    out = dict(os.environ, PYTHONWARNINGS="ignore", HYDRA_FULL_ERROR="1")
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    out.pop("LIPSCHITZ_DATA", None)
    return out


def read_rates(folder: Path, ranks: int) -> List[dict]:
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in range(ranks)]


def check_against_one_process(ranks: List[dict], reference: dict) -> None:
    assert len(reference["rates"]) == 3
    assert ranks[0]["rates"] == ranks[1]["rates"]  # every rank of every node holds the same rate
    for rank in ranks:
        for two_nodes, one in zip(rank["stats"], reference["stats"]):
            assert two_nodes["m"] == one["m"] == 16  # the global batch: 8 per node
            assert two_nodes["K_z"] == pytest.approx(one["K_z"], rel=1e-5)
            assert two_nodes["L"] == pytest.approx(one["L"], rel=1e-5)
        assert rank["rates"] == pytest.approx(reference["rates"], rel=1e-5)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    """The rates of one process (a DDP world of one) with the batch of both nodes together."""
    tmp_path = tmp_path_factory.mktemp("one_process")
    single = subprocess.run(
        [sys.executable, "-m", "lipschitz_lightning.train", *COMMON, "dataset.batch_size=16",
         f"+callbacks.rates.out_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=300,
    )
    assert single.returncode == 0, single.stderr[-3000:]
    (reference,) = read_rates(tmp_path, 1)
    return reference


def test_two_torchrun_nodes_match_one_process_with_double_batch(tmp_path: Path, one_process: dict):
    port = free_port()
    (tmp_path / "rates").mkdir()
    nodes = []
    for rank in range(2):
        command = [
            sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc-per-node=1", f"--node-rank={rank}",
            "--master-addr=127.0.0.1", f"--master-port={port}",
            "-m", "lipschitz_lightning.train", *COMMON, "dataset.batch_size=8", "trainer.num_nodes=2",
            f"+callbacks.rates.out_dir={tmp_path / 'rates'}", f"hydra.run.dir={tmp_path / f'node{rank}'}",
        ]
        log = open(tmp_path / f"node{rank}.out", "w")
        nodes.append((subprocess.Popen(command, cwd=tmp_path, env=env(), stdout=log, stderr=subprocess.STDOUT), log))
    try:
        for rank, (process, _) in enumerate(nodes):
            assert process.wait(timeout=300) == 0, (tmp_path / f"node{rank}.out").read_text()[-3000:]
    finally:
        for process, log in nodes:
            if process.poll() is None:
                process.kill()
            log.close()
    check_against_one_process(read_rates(tmp_path / "rates", 2), one_process)
    # Each node ran in its own folder, as on two machines without a shared disk; rank 0 checkpoints.
    assert (tmp_path / "node0" / "checkpoints" / "last.ckpt").is_file()


# srun as SLURM starts the job's tasks: SLURM_NTASKS copies of the command, each with its rank.
FAKE_SRUN = """#!/bin/bash
pids=()
for ((rank = 0; rank < SLURM_NTASKS; rank++)); do
    SLURM_PROCID=$rank SLURM_LOCALID=0 SLURM_NODEID=$rank "$@" > "task$rank.out" 2>&1 &
    pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
"""


def test_sbatch_script_on_two_simulated_nodes(tmp_path: Path, one_process: dict):
    """scripts/slurm/train.sbatch itself, under a stand-in `srun` that starts one task per node
    with the variables SLURM sets (2 nodes x 1 task): Lightning's SLURM environment takes over."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(FAKE_SRUN)
    (bin_dir / "srun").chmod(0o755)
    slurm = {
        "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lipschitz", "SLURM_NNODES": "2", "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1", "SLURM_CPUS_PER_TASK": "1", "SLURM_NODELIST": "127.0.0.1",
        "SLURM_SUBMIT_DIR": str(tmp_path), "MASTER_PORT": str(free_port()),
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHON": sys.executable,
    }
    (tmp_path / "rates").mkdir()
    overrides = [o for o in COMMON if o not in ("trainer=ddp_sim", "trainer.devices=1")]
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "slurm" / "train.sbatch"), *overrides, "trainer.accelerator=cpu",
         "dataset.batch_size=8", f"+callbacks.rates.out_dir={tmp_path / 'rates'}"],
        cwd=tmp_path, env=dict(env(), **slurm), capture_output=True, text=True, timeout=300,
    )
    outputs = "".join((tmp_path / f"task{r}.out").read_text()[-2000:] for r in range(2) if (tmp_path / f"task{r}.out").exists())
    assert result.returncode == 0, result.stderr[-2000:] + outputs
    check_against_one_process(read_rates(tmp_path / "rates", 2), one_process)
    run_dir = tmp_path / "logs" / "slurm" / "lipschitz-4242"
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
