"""Cluster detection (fsdtrain/train/cluster.py): the launcher from its environment variables, the
ClusterEnvironment the Trainer gets, and node/task counts that do not match: one line, no hang."""

import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment

from fsdtrain.errors import ConfigError
from fsdtrain.train.cluster import (
    ClusterInfo,
    DeepSpeedLauncherEnvironment,
    KubeflowEnvironment,
    cluster_environment,
    cluster_setup,
    detect_cluster,
)
from fsdtrain.train.requeue import RequeueOnSignal

REPO = Path(__file__).resolve().parents[2]

TORCHRUN = {"TORCHELASTIC_RUN_ID": "job", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8", "RANK": "9", "LOCAL_RANK": "1", "GROUP_RANK": "1",
            "TORCHELASTIC_RESTART_COUNT": "2", "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}  # fmt: skip
SLURM = {"SLURM_NTASKS": "16", "SLURM_NTASKS_PER_NODE": "8", "SLURM_NNODES": "2", "SLURM_NODEID": "1", "SLURM_PROCID": "9",
         "SLURM_LOCALID": "1", "SLURM_JOB_NAME": "train", "SLURM_JOB_ID": "42", "SLURM_NODELIST": "n[0-1]"}  # fmt: skip
DEEPSPEED = {"RANK": "9", "LOCAL_RANK": "1", "WORLD_SIZE": "16", "CROSS_RANK": "1", "CROSS_SIZE": "2", "LOCAL_SIZE": "8",
             "MASTER_ADDR": "n0", "MASTER_PORT": "29500"}  # fmt: skip
KUBEFLOW = {"MASTER_ADDR": "job-master-0", "MASTER_PORT": "23456", "WORLD_SIZE": "2", "RANK": "1", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}
ALL = {*TORCHRUN, *SLURM, *DEEPSPEED, *KUBEFLOW, "NODE_RANK", "PET_NNODES", "PET_NODE_RANK"}


@pytest.fixture
def environ(monkeypatch):
    """Sets a launcher's variables in os.environ (the Trainer reads them there), all others removed."""
    for name in ALL:
        monkeypatch.delenv(name, raising=False)

    def apply(values: dict[str, str]) -> None:
        for name, value in values.items():
            monkeypatch.setenv(name, value)

    return apply


def test_each_launcher_is_detected_from_its_variables():
    assert detect_cluster(TORCHRUN) == ClusterInfo("torchelastic", nodes=2, tasks_per_node=8, world_size=16, node_rank=1, restart=2)
    assert detect_cluster(SLURM) == ClusterInfo("slurm", nodes=2, tasks_per_node=8, world_size=16, node_rank=1)
    assert detect_cluster(DEEPSPEED) == ClusterInfo("deepspeed", nodes=2, tasks_per_node=8, world_size=16, node_rank=1)
    assert detect_cluster(KUBEFLOW) == ClusterInfo("kubeflow", nodes=2, node_rank=1)
    assert detect_cluster({}) == ClusterInfo("local")
    # torchrun inside a SLURM allocation or a pod: torchrun started the processes (as Lightning decides)
    assert detect_cluster({**SLURM, **KUBEFLOW, **TORCHRUN}).kind == "torchelastic"
    # an interactive SLURM shell is not a SLURM launch
    assert detect_cluster({**SLURM, "SLURM_JOB_NAME": "interactive"}).kind == "local"
    # newer operators count WORLD_SIZE in processes and name the pods in PET_NNODES/PET_NODE_RANK
    assert detect_cluster({**KUBEFLOW, "WORLD_SIZE": "16", "PET_NNODES": "2", "PET_NODE_RANK": "1"}) == ClusterInfo("kubeflow", nodes=2, node_rank=1)
    # a rank Lightning started inside a pod: its launcher set NODE_RANK, LOCAL_RANK and the job's WORLD_SIZE
    child = {**KUBEFLOW, "WORLD_SIZE": "16", "LOCAL_RANK": "3", "NODE_RANK": "1"}
    assert detect_cluster(child) == ClusterInfo("kubeflow", world_size=16, node_rank=1)
    assert "restart 2" in detect_cluster(TORCHRUN).describe()


def test_kubeflow_pods_are_nodes_and_lightning_starts_the_gpus_in_each(environ):
    environ(KUBEFLOW)  # pod 1 of 2; Lightning lacks a detector for it and would take RANK=1 for a process rank
    env = cluster_environment(num_nodes=2, devices=4)
    assert isinstance(env, KubeflowEnvironment) and not env.creates_processes_externally
    assert (env.main_address, env.main_port, env.node_rank(), env.local_rank()) == ("job-master-0", 23456, 1, 0)
    trainer = pl.Trainer(accelerator="cpu", devices=4, num_nodes=2, strategy="ddp", plugins=[env], logger=False)
    trainer.strategy.set_world_ranks()
    assert (trainer.world_size, trainer.node_rank, trainer.global_rank, trainer.local_rank) == (8, 1, 4, 0)

    environ({"WORLD_SIZE": "8", "LOCAL_RANK": "3", "NODE_RANK": "1"})  # the pod's 4th process, started by Lightning
    child = cluster_environment(num_nodes=2, devices=4)
    assert isinstance(child, KubeflowEnvironment) and child.creates_processes_externally
    trainer = pl.Trainer(accelerator="cpu", devices=4, num_nodes=2, strategy="ddp", plugins=[child], logger=False)
    trainer.strategy.set_world_ranks()
    assert (trainer.world_size, trainer.node_rank, trainer.global_rank, trainer.local_rank) == (8, 1, 7, 3)


def test_deepspeed_launcher_ranks_come_from_its_variables(environ):
    environ(DEEPSPEED)
    env = cluster_environment(num_nodes=2, devices=8)
    assert isinstance(env, DeepSpeedLauncherEnvironment) and env.creates_processes_externally
    assert (env.world_size(), env.global_rank(), env.local_rank(), env.node_rank()) == (16, 9, 1, 1)


def test_slurm_gets_requeue_at_a_step_boundary(environ):
    environ(SLURM)
    config = {"num_nodes": 2, "devices": 8, "plugins": None}
    callbacks = cluster_setup(config)
    [env] = config["plugins"]
    assert isinstance(env, SLURMEnvironment) and not env.auto_requeue  # Lightning's handler off: ours saves at a step
    assert [type(c) for c in callbacks] == [RequeueOnSignal]


def test_no_plugin_where_lightning_is_right_or_one_was_given(environ):
    assert cluster_environment(1, 2) is None  # a plain fit: Lightning starts the ranks
    environ(TORCHRUN)
    assert cluster_environment(2, 8) is None  # Lightning detects torchelastic itself
    environ(KUBEFLOW)
    given = SLURMEnvironment()
    config = {"num_nodes": 2, "devices": 8, "plugins": [given]}
    assert cluster_setup(config) == [] and config["plugins"] == [given]


@pytest.mark.parametrize(
    ("launcher", "num_nodes", "devices", "message"),
    [
        (SLURM, 2, 4, "slurm started 8 task(s) per node (#SBATCH --ntasks-per-node) but trainer.devices is 4: set --trainer.devices 8"),
        (SLURM, 1, 8, "slurm started 2 node(s) (#SBATCH --nodes) but trainer.num_nodes is 1: set --trainer.num_nodes 2"),
        (TORCHRUN, 2, 4, "torchelastic started 8 task(s) per node (torchrun --nproc-per-node) but trainer.devices is 4"),
        (DEEPSPEED, 3, 8, "deepspeed started 2 node(s) (the hosts in the hostfile (--num_nodes)) but trainer.num_nodes is 3"),
        (KUBEFLOW, 3, 4, "kubeflow started 2 node(s) (the PyTorchJob's Master + Worker replicas) but trainer.num_nodes is 3"),
    ],
    ids=["slurm-tasks", "slurm-nodes", "torchrun", "deepspeed", "kubeflow"],
)
def test_counts_that_do_not_match_fail_in_one_line(environ, launcher, num_nodes, devices, message):
    environ(launcher)
    with pytest.raises(ConfigError) as info:
        cluster_environment(num_nodes, devices)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_fit_under_a_mismatched_torchrun_stops_before_any_process_group(tiny_fleet):
    """What used to hang (ranks waiting for peers that never come) is one line from the CLI."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "WANDB_MODE": "disabled", **TORCHRUN, "WORLD_SIZE": "3", "LOCAL_WORLD_SIZE": "3",
           "RANK": "0", "LOCAL_RANK": "0", "GROUP_RANK": "0", "MASTER_ADDR": "127.0.0.1"}  # fmt: skip
    args = ["fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml", "--data.train", f"[{tiny_fleet['US']['train']}]",
            "--data.val", "[]", "--wandb.mode", "disabled", "--trainer.devices", "2"]  # fmt: skip
    proc = subprocess.run([sys.executable, "-m", "fsdtrain", *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("fsdtrain: error: torchelastic started 3 task(s) per node (torchrun --nproc-per-node) but trainer.devices is 2"), proc.stderr[-2000:]
