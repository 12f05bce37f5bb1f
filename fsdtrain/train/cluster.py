"""Which cluster started this process, and the Lightning ``ClusterEnvironment`` that matches it.

Lightning detects torchelastic (``torchrun``) and SLURM by itself. Two launchers it gets wrong:

- **Kubeflow PyTorchJob.** The operator sets ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK`` (the pod's
  index) and ``WORLD_SIZE`` (the number of pods; newer operators: pods x ``nprocPerNode`` with
  ``PET_NNODES`` = pods). Lightning does not detect it, and its default environment would take
  that ``RANK`` for a process rank. :class:`KubeflowEnvironment` reads them as *pod* numbers: node
  rank = pod index, and Lightning starts ``trainer.devices`` processes in each pod, so one pod per
  node runs any number of GPUs.
- **The DeepSpeed launcher** (``deepspeed --hostfile``). It sets ``RANK``, ``LOCAL_RANK``,
  ``WORLD_SIZE`` and the node index as ``CROSS_RANK``; Lightning's default environment would read
  the node rank from ``NODE_RANK`` (unset) and give two nodes the same ranks.
  :class:`DeepSpeedLauncherEnvironment` reads them as they are.

:func:`detect_cluster` names the launcher from the environment (torchelastic first: it can run
inside SLURM or a pod, as in Lightning); :func:`cluster_environment` returns the environment the
Trainer gets and checks the job's node and task counts against ``trainer.num_nodes`` x
``trainer.devices`` first, so a mismatch is one line before any process group is formed, not a
hang. On SLURM the environment's own requeue handler is off: :mod:`fsdtrain.train.requeue` saves
a complete checkpoint at a step boundary instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from lightning.fabric.plugins.environments import (
    ClusterEnvironment,
    SLURMEnvironment,
    TorchElasticEnvironment,
)
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from fsdtrain.errors import ConfigError

__all__ = [
    "CLUSTER_KINDS",
    "ClusterInfo",
    "KubeflowEnvironment",
    "DeepSpeedLauncherEnvironment",
    "detect_cluster",
    "cluster_environment",
    "cluster_setup",
]

#: what :func:`detect_cluster` can answer; ``local`` is a plain ``fsdtrain fit`` (Lightning starts the ranks).
CLUSTER_KINDS = ("torchelastic", "slurm", "deepspeed", "kubeflow", "local")

_KUBEFLOW_VARS = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK")


@dataclass(frozen=True)
class ClusterInfo:
    """The launcher of this process and the counts it was started with.

    Args:
        kind: one of :data:`CLUSTER_KINDS`.
        nodes: nodes (SLURM), pods (Kubeflow) or agents (torchelastic, DeepSpeed) in the job; None when unknown.
        tasks_per_node: processes the launcher starts per node; None when Lightning starts them (Kubeflow, local).
        world_size: processes in the job as the launcher counts them; None when unknown.
        node_rank: this node's (pod's) index.
        restart: how many times torchelastic restarted the worker group (0 elsewhere).
    """

    kind: str
    nodes: int | None = None
    tasks_per_node: int | None = None
    world_size: int | None = None
    node_rank: int = 0
    restart: int = 0

    def describe(self) -> str:
        """``torchelastic: 2 node(s) x 1 task(s), node 1, restart 1``."""
        if self.kind == "local":
            return "local: Lightning starts the ranks"
        tasks = f" x {self.tasks_per_node} task(s)" if self.tasks_per_node is not None else ""
        restart = f", restart {self.restart}" if self.restart else ""
        return f"{self.kind}: {self.nodes} node(s){tasks}, node {self.node_rank}{restart}"


def _int(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"the environment variable {name}={value!r} is not an integer; the launcher sets it, so unset it or fix the job file") from None


def _slurm_tasks_per_node(environ: Mapping[str, str]) -> int | None:
    """``SLURM_NTASKS_PER_NODE`` as an int; SLURM writes a mixed layout as ``2(x3),1``: None then."""
    value = environ.get("SLURM_NTASKS_PER_NODE")
    return int(value) if value and value.isdigit() else None


def detect_cluster(environ: Mapping[str, str] | None = None) -> ClusterInfo:
    """The launcher that started this process, from its environment variables (``os.environ`` by default)."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env:
        world, local = _int(env, "WORLD_SIZE"), _int(env, "LOCAL_WORLD_SIZE")
        nodes = world // local if world and local else None
        return ClusterInfo("torchelastic", nodes, local, world, _int(env, "GROUP_RANK") or 0, _int(env, "TORCHELASTIC_RESTART_COUNT") or 0)
    if "SLURM_NTASKS" in env and env.get("SLURM_JOB_NAME") not in ("bash", "interactive"):  # as Lightning's SLURMEnvironment
        return ClusterInfo("slurm", _int(env, "SLURM_NNODES"), _slurm_tasks_per_node(env), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_NODEID") or 0)
    if "CROSS_RANK" in env and "LOCAL_RANK" in env:
        return ClusterInfo("deepspeed", _int(env, "CROSS_SIZE"), _int(env, "LOCAL_SIZE"), _int(env, "WORLD_SIZE"), _int(env, "CROSS_RANK") or 0)
    if all(name in env for name in _KUBEFLOW_VARS) and ("KUBERNETES_SERVICE_HOST" in env or "PET_NNODES" in env):
        if "LOCAL_RANK" in env:  # a rank Lightning started inside the pod: WORLD_SIZE is then the whole job's
            return ClusterInfo("kubeflow", _int(env, "PET_NNODES"), None, _int(env, "WORLD_SIZE"), _int(env, "NODE_RANK") or 0)
        pods = _int(env, "PET_NNODES") or _int(env, "WORLD_SIZE")
        return ClusterInfo("kubeflow", pods, None, None, _int(env, "PET_NODE_RANK") or _int(env, "RANK") or 0)
    return ClusterInfo("local")


class KubeflowEnvironment(ClusterEnvironment):
    """A Kubeflow PyTorchJob pod: one node; Lightning starts ``trainer.devices`` processes in it.

    The operator's ``RANK`` and ``WORLD_SIZE`` count pods (see the module docstring); the process
    ranks are Lightning's (node rank x devices + local rank), as on a machine of its own.
    """

    def __init__(self) -> None:
        super().__init__()
        self._global_rank = 0
        self._world_size = 1
        # read once: Lightning later rewrites RANK, WORLD_SIZE and LOCAL_RANK in this process for the process group
        self._info = detect_cluster()

    @property
    def creates_processes_externally(self) -> bool:
        return "LOCAL_RANK" in os.environ  # the pod's first process starts the others, which get LOCAL_RANK

    @property
    def main_address(self) -> str:
        return os.environ["MASTER_ADDR"]

    @property
    def main_port(self) -> int:
        return int(os.environ["MASTER_PORT"])

    @staticmethod
    def detect() -> bool:
        return detect_cluster().kind == "kubeflow"

    def world_size(self) -> int:
        return self._world_size

    def set_world_size(self, size: int) -> None:
        self._world_size = size

    def global_rank(self) -> int:
        return self._global_rank

    def set_global_rank(self, rank: int) -> None:
        self._global_rank = rank
        rank_zero_only.rank = rank

    def local_rank(self) -> int:
        return int(os.environ.get("LOCAL_RANK", 0))

    def node_rank(self) -> int:
        return self._info.node_rank

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_counts(self._info, num_nodes, num_devices)


class DeepSpeedLauncherEnvironment(TorchElasticEnvironment):
    """Processes started by the ``deepspeed`` launcher: ranks as it sets them, node rank from ``CROSS_RANK``."""

    @staticmethod
    def detect() -> bool:
        return detect_cluster().kind == "deepspeed"

    def node_rank(self) -> int:
        return int(os.environ["CROSS_RANK"])

    def validate_settings(self, num_devices: int, num_nodes: int) -> None:
        _check_counts(detect_cluster(), num_nodes, num_devices)


_HOW = {
    "slurm": ("#SBATCH --nodes", "#SBATCH --ntasks-per-node"),
    "torchelastic": ("torchrun --nnodes", "torchrun --nproc-per-node"),
    "deepspeed": ("the hosts in the hostfile (--num_nodes)", "slots per host (--num_gpus)"),
    "kubeflow": ("the PyTorchJob's Master + Worker replicas", "trainer.devices (GPUs per pod)"),
}


def _check_counts(info: ClusterInfo, num_nodes: int, devices: int) -> None:
    """The launcher's node and task counts equal ``trainer.num_nodes`` and ``trainer.devices``: a
    mismatch would leave ranks waiting for peers that never come."""
    if info.kind not in _HOW:
        return
    nodes_flag, tasks_flag = _HOW[info.kind]
    fix = "; `fsdtrain launch` writes both consistently (docs/multi-node.md)"
    if info.nodes is not None and info.nodes != num_nodes:
        raise ConfigError(f"{info.kind} started {info.nodes} node(s) ({nodes_flag}) but trainer.num_nodes is {num_nodes}: set --trainer.num_nodes {info.nodes} or change {nodes_flag}{fix}")
    if info.tasks_per_node is not None and info.tasks_per_node != devices:
        raise ConfigError(f"{info.kind} started {info.tasks_per_node} task(s) per node ({tasks_flag}) but trainer.devices is {devices}: set --trainer.devices {info.tasks_per_node} or change {tasks_flag}{fix}")
    if info.world_size is not None and info.world_size != num_nodes * devices:
        raise ConfigError(f"{info.kind} started {info.world_size} process(es) in all but trainer.num_nodes x trainer.devices is {num_nodes} x {devices}: make them agree{fix}")


def _count(value) -> int | None:
    """``trainer.num_nodes``/``devices`` as a number of processes; None for ``auto``, a device list and the like."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


def cluster_environment(num_nodes, devices, plugins=None, environ: Mapping[str, str] | None = None) -> ClusterEnvironment | None:
    """The ``ClusterEnvironment`` for the Trainer (None: Lightning's own choice is right).

    Checks the launcher's node and task counts against ``num_nodes`` x ``devices`` (one-line
    :class:`ConfigError`). A ``ClusterEnvironment`` already among ``plugins`` is left alone.
    """
    given = plugins if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
    if any(isinstance(p, ClusterEnvironment) for p in given):
        return None
    info = detect_cluster(environ)
    nodes, per_node = _count(num_nodes) or 1, _count(devices)
    if per_node is not None:
        _check_counts(info, nodes, per_node)
    if info.kind == "slurm":
        return SLURMEnvironment(auto_requeue=False)  # fsdtrain.train.requeue handles SIGUSR1 at a step boundary
    if info.kind == "kubeflow":
        return KubeflowEnvironment()
    if info.kind == "deepspeed":
        return DeepSpeedLauncherEnvironment()
    return None


def cluster_setup(trainer_config: dict) -> list:
    """Fits the Trainer's keyword arguments to the launcher: adds the matching ``ClusterEnvironment``
    to ``plugins`` and returns the callbacks the launcher needs (SLURM: :class:`~fsdtrain.train.requeue.RequeueOnSignal`)."""
    plugins = trainer_config.get("plugins")
    environment = cluster_environment(trainer_config.get("num_nodes", 1), trainer_config.get("devices", "auto"), plugins)
    if environment is None:
        return []
    listed = list(plugins) if isinstance(plugins, (list, tuple)) else [plugins] if plugins is not None else []
    trainer_config["plugins"] = [*listed, environment]
    if isinstance(environment, SLURMEnvironment):
        from fsdtrain.train.requeue import RequeueOnSignal

        return [RequeueOnSignal()]
    return []
