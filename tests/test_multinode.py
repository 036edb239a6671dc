"""Two nodes x one process on localhost, set up as a cluster would: Lightning's environment variables.

Each "node" is its own ``python -m research fit`` in its own working folder (as on two machines), with
MASTER_ADDR, MASTER_PORT, NODE_RANK and WORLD_SIZE in its environment; Lightning's
``LightningEnvironment`` reads the node rank and the rendezvous address from them and derives the world
size from ``--trainer.num_nodes 2 --trainer.devices 1`` (configs/strategies/multinode.yaml). The two
processes meet over gloo and must end with the same weights.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import torch
from cluster_callbacks import free_port, tiny_run

from research.data import SyntheticDataModule

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/resnet/mnist_resnet20.yaml"
TINY = [*tiny_run(num_samples=96, max_epochs=2), "--experiment", "multinode"]


def test_two_nodes_on_localhost_end_with_the_same_weights(tmp_path):
    port = free_port()
    nodes = []
    for node_rank in range(2):
        folder = tmp_path / f"node{node_rank}"
        folder.mkdir()
        env = {
            **os.environ,
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node_rank), "WORLD_SIZE": "2",
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled",
        }
        command = [sys.executable, "-m", "research", "fit", "--config", str(CONFIG),
                   "--config", str(ROOT / "configs/strategies/multinode.yaml"), *TINY,
                   "--trainer.devices", "1",
                   "--trainer.callbacks+", "cluster_callbacks.SaveWeights",
                   "--trainer.callbacks.dirpath", str(tmp_path / "weights")]
        nodes.append(subprocess.Popen(command, env=env, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
    for node in nodes:
        output, _ = node.communicate(timeout=120)  # a hang (a node waiting for the other forever) fails here
        assert node.returncode == 0, output[-3000:]
    ranks = [torch.load(tmp_path / "weights" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0].items():
        assert torch.equal(value, ranks[1][name]), name
    # each node trains on its half of the training split (Lightning's DistributedSampler over the two ranks)
    data = SyntheticDataModule(num_samples=96, num_classes=4, img_size=16, batch_size=16, in_chans=1)
    data.setup("fit")
    steps_per_epoch = math.ceil(len(data.train_set) / 2) // 16  # the last incomplete batch is dropped
    checkpoint = torch.load(tmp_path / "node0/checkpoints/multinode/last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2 * steps_per_epoch
    assert not (tmp_path / "node1/checkpoints/multinode/last.ckpt").exists()  # written by global rank 0 only
