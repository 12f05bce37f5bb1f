"""The rendered torchrun job, run as 2 "nodes" x 1 process on loopback (two torchrun agents, c10d
rendezvous, gloo, DeepSpeed ZeRO-2): it trains to the end; and with one node's worker SIGKILLed
after a checkpoint, torchrun restarts the group, ``--ckpt_path last`` resumes it, and the job ends at
the right step with the weights of the uninterrupted run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fsdtrain.weights.checkpoint_files import META_NAME, last_checkpoint

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 10
pytestmark = [pytest.mark.slow, pytest.mark.distributed]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tagged(tag: str) -> list[int]:
    """Live processes started for one test (they carry its tag in their environment)."""
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"FSDTRAIN_TEST_TAG={tag}".encode() in environ.read_bytes().split(b"\0"):
                state = (environ.parent / "stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z":
                    found.append(int(environ.parent.name))
        except OSError:  # ended while we looked, or not ours to read
            continue
    return found


def cmdline(pid: int) -> list[str]:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().decode().split("\0")
    except OSError:
        return []


def env(tmp_path: Path, tag: str) -> dict[str, str]:
    out = {**os.environ, "PYTHONPATH": str(REPO / "tests"), "WANDB_MODE": "disabled", "PYTHON": sys.executable,
           "TMPDIR": str(tmp_path), "FSDTRAIN_TEST_TAG": tag}  # fmt: skip
    out.pop("FSDTRAIN_SITE_ZONE", None)
    return out


def render(tiny_fleet, tmp_path: Path, workdir: Path, *extra: str) -> Path:
    train = f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]"
    args = [
        "--model.net", "configs/model/tiny.yaml", "--model.net.dropout", "0.0", "--data.train", train, "--data.val", "[]",
        "--data.window.window_stride", "2", "--data.batch_size", "2", "--data.num_workers", "0",
        "--trainer.strategy", "deepspeed_stage_2", "--trainer.max_steps", str(MAX_STEPS), "--trainer.enable_progress_bar", "false",
        "--wandb.mode", "disabled", "--checkpoint.every_n_steps", "2", "--site.zone", "global", "--workdir", str(workdir), *extra,
    ]  # fmt: skip
    job = tmp_path / "job"
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "launch", "torchrun", "--config", "configs/demo.yaml", "--nodes", "2", "--gpus-per-node", "1",
         "--out", f"{job}/", "--", *args],
        capture_output=True, text=True, cwd=REPO, env=env(tmp_path, "render"), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"wrote {job / 'multinode.sh'}" in proc.stdout
    return job / "multinode.sh"


class Nodes:
    """Two torchrun agents (node ranks 0 and 1) running the rendered job on loopback."""

    def __init__(self, script: Path, tmp_path: Path, max_restarts: int) -> None:
        self.tag = uuid.uuid4().hex
        port = free_port()
        self.logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
        self.procs = []
        for rank, log in enumerate(self.logs):
            node_env = {**env(tmp_path, self.tag), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(rank),
                        "MAX_RESTARTS": str(max_restarts), "RDZV_ID": self.tag}  # fmt: skip
            with open(log, "w") as f:
                self.procs.append(subprocess.Popen(["bash", str(script)], cwd=REPO, env=node_env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True))

    def output(self) -> str:
        return "\n".join(log.read_text() for log in self.logs)

    def wait(self, timeout: float = 420) -> list[int]:
        deadline = time.monotonic() + timeout
        for p in self.procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
        return [p.returncode for p in self.procs]

    def workers(self, node: int) -> list[int]:
        """The training processes torchrun started for ``node`` (its agent's children)."""
        agents = [pid for pid in tagged(self.tag) if "torch.distributed.run" in cmdline(pid) and f"NODE_RANK={node}".encode() in _environ(pid)]
        return [pid for pid in tagged(self.tag) if _ppid(pid) in agents]

    def stop(self) -> None:
        """Kills every process of the job: agents, workers (each in a session of its own) and anything they started."""
        for pid in tagged(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in self.procs:
            p.wait(timeout=30)
        deadline = time.monotonic() + 30
        while tagged(self.tag):
            assert time.monotonic() < deadline, f"processes survived: {tagged(self.tag)}"
            time.sleep(0.1)


def _environ(pid: int) -> list[bytes]:
    try:
        return (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    except OSError:
        return []


def _ppid(pid: int) -> int:
    try:
        return int((Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def final_step(workdir: Path) -> int:
    ckpt = last_checkpoint(workdir / "checkpoints")
    assert ckpt is not None, f"no checkpoint in {workdir}"
    return json.loads((ckpt / META_NAME).read_text())["global_step"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_fleet, tmp_path_factory):
    """The rendered job run to the end on 2 nodes x 1 process: (workdir, output of both nodes)."""
    tmp_path = tmp_path_factory.mktemp("uninterrupted")
    workdir = tmp_path / "run"
    nodes = Nodes(render(tiny_fleet, tmp_path, workdir), tmp_path, max_restarts=0)
    try:
        codes = nodes.wait()
    finally:
        nodes.stop()
    assert codes == [0, 0], nodes.output()[-6000:]
    return workdir, nodes.output()


def test_two_torchrun_nodes_train_zero2_to_the_end(uninterrupted):
    workdir, output = uninterrupted
    assert final_step(workdir) == MAX_STEPS
    assert (workdir / "model.safetensors").is_file()
    meta = json.loads((workdir / "checkpoints" / f"step={MAX_STEPS}.ckpt" / META_NAME).read_text())
    assert meta["world_size"] == 2 and meta["strategy"] == "FleetDeepSpeedStrategy"
    # one optimizer shard per rank: the two nodes wrote into the same (shared) checkpoint folder
    assert len(list((workdir / "checkpoints" / f"step={MAX_STEPS}.ckpt" / "checkpoint").glob("*optim_states.pt"))) == 2
    assert "global batch 4 = micro batch 2 x accumulation 1 x 2 ranks" in output
    assert "no checkpoint in" in output and "starting from the beginning" in output  # --ckpt_path last on a fresh workdir


def test_a_killed_rank_restarts_the_group_and_resumes_from_the_last_checkpoint(uninterrupted, tiny_fleet, tmp_path):
    workdir = tmp_path / "run"
    script = render(tiny_fleet, tmp_path, workdir, "--trainer.callbacks+=helpers.pace.SlowSteps")
    nodes = Nodes(script, tmp_path, max_restarts=1)
    try:
        deadline = time.monotonic() + 300
        while not (workdir / "checkpoints" / "step=4.ckpt").exists():
            assert all(p.poll() is None for p in nodes.procs), f"the job ended before step 4: {nodes.output()[-6000:]}"
            assert time.monotonic() < deadline, "no step=4.ckpt after 300 s"
            time.sleep(0.05)
        victims = nodes.workers(1)
        assert len(victims) == 1, f"node 1 has workers {victims}"
        os.kill(victims[0], signal.SIGKILL)
        codes = nodes.wait()
    finally:
        nodes.stop()
    output = nodes.output()
    assert codes == [0, 0], output[-6000:]
    assert final_step(workdir) == MAX_STEPS
    resumed = [line for line in output.splitlines() if "fsdtrain[rank 0]: resuming from" in line]  # torchrun: RANK/WORLD_SIZE set
    assert len(resumed) == 1, output[-6000:]  # rank 0, after the restart
    # torchrun saw the killed process and restarted (each agent counts restarts of its own: rank 0's may say 0)
    assert "failed (exitcode: -9)" in nodes.logs[1].read_text()
    step = int(resumed[0].split("step=")[1].split(".ckpt")[0])
    assert 4 <= step < MAX_STEPS
    # the resumed job ends with the weights of the job that was never interrupted
    want, got = load_file(uninterrupted[0] / "model.safetensors"), load_file(workdir / "model.safetensors")
    assert want.keys() == got.keys()
    for key in want:
        torch.testing.assert_close(got[key], want[key], msg=lambda m, key=key: f"{key}: {m}")


def test_the_deepspeed_launcher_ranks_two_nodes_by_their_node_index(tiny_fleet, tmp_path):
    """The rendered DeepSpeed job's config under the per-node launcher its runner starts on each host
    (pdsh needs ssh, so the two node launchers are started here): node 1's rank comes from CROSS_RANK."""
    import base64

    workdir = tmp_path / "run"
    train = f"[{tiny_fleet['US']['train']},{tiny_fleet['DE']['train']}]"
    proc = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "launch", "deepspeed", "--config", "configs/demo.yaml", "--nodes", "2", "--gpus-per-node", "1", "--dry-run",
         "--", "--model.net", "configs/model/tiny.yaml", "--data.train", train, "--data.val", "[]", "--data.window.window_stride", "2",
         "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.max_steps", "4", "--trainer.enable_progress_bar", "false",
         "--wandb.mode", "disabled", "--site.zone", "global", "--workdir", str(workdir)],
        capture_output=True, text=True, cwd=REPO, env=env(tmp_path, "render"), timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = tmp_path / "config.yaml"
    config.write_text(proc.stdout.split("<<'FSDTRAIN_CONFIG'\n", 1)[1].split("\nFSDTRAIN_CONFIG\n", 1)[0] + "\n")
    world_info = base64.urlsafe_b64encode(json.dumps({"node0": [0], "node1": [0]}).encode()).decode()
    tag, port = uuid.uuid4().hex, free_port()
    logs = [tmp_path / f"node{rank}.log" for rank in (0, 1)]
    procs = []
    try:
        for rank, log in enumerate(logs):
            with open(log, "w") as f:
                procs.append(subprocess.Popen(
                    [sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}", f"--node_rank={rank}",
                     "--master_addr=127.0.0.1", f"--master_port={port}", "--no_local_rank", "--module",
                     "fsdtrain", "fit", "--config", str(config), "--trainer.num_nodes", "2", "--trainer.devices", "1", "--ckpt_path", "last"],
                    cwd=REPO, env=env(tmp_path, tag), stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                ))  # fmt: skip
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for pid in tagged(tag):
            os.kill(pid, signal.SIGKILL)
        for p in procs:
            p.wait(timeout=30)
    output = "\n".join(log.read_text() for log in logs)
    assert codes == [0, 0], output[-6000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in logs[0].read_text() and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1].read_text()
    assert final_step(workdir) == 4
    assert not tagged(tag)
