"""SIGTERM and SIGINT: a stopped command leaves nothing running (fsdtrain/stopping.py).

Each test starts a real command with a marker in its environment, which every process it starts
inherits (ranks, loader workers, the store), sends the signal at a point of its run, and then checks
the exit (128 + signal, one line, no traceback), that no process with the marker is left, and that the
store's port is free.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

from fsdtrain import stopping

REPO = Path(__file__).resolve().parents[1]
MARK = "FSDTRAIN_TEST_MARK"


class Command:
    """A command run in the background, its output collected line by line."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.mark = uuid.uuid4().hex
        env = {**os.environ, MARK: self.mark, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO / "tests")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fsdtrain", *args], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout_s: float) -> re.Match:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-60:]))

    def wait_for_file(self, folder: Path, name: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not (folder / name).exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"no {folder / name}; output:\n" + "\n".join(self.lines[-60:]))
            time.sleep(0.2)

    def stop(self, signum: int, timeout_s: float = 180) -> int:
        self.proc.send_signal(signum)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"still running {timeout_s} s after {signal.Signals(signum).name}; output:\n" + "\n".join(self.lines[-60:])) from None
        finally:
            self.kill_leftovers()
        self._reader.join(timeout=10)
        return code

    def marked(self) -> list[psutil.Process]:
        """Processes alive with this command's marker (its own, its children's, orphans')."""
        out = []
        for p in psutil.process_iter():
            try:
                if p.environ().get(MARK) == self.mark and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return out

    def left_running(self, settle_s: float = 20) -> list[str]:
        """What is still running ``settle_s`` seconds after the command exited (loader workers notice
        their parent is gone within a few seconds)."""
        deadline = time.monotonic() + settle_s
        while (left := self.marked()) and time.monotonic() < deadline:
            time.sleep(0.5)
        return [" ".join(p.cmdline()[:4]) for p in left if p.is_running()]

    def kill_leftovers(self) -> None:
        self._leftovers = self.left_running()
        for p in self.marked():
            p.kill()

    def output(self) -> str:
        return "\n".join(self.lines)


def assert_stopped(cmd: Command, code: int, signum: int) -> None:
    out = cmd.output()
    assert code == 128 + signum, out[-4000:]
    assert "Traceback" not in out, out[-6000:]
    assert f"fsdtrain: stopped by {signal.Signals(signum).name}" in out, out[-3000:]
    assert cmd._leftovers == [], f"left running: {cmd._leftovers}"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


class SignalsInDel:
    """Sends ``signum`` to this process from its ``__del__`` and stays there until the handler ran."""

    def __init__(self, signum: int) -> None:
        self.signum = signum

    def __del__(self) -> None:
        os.kill(os.getpid(), self.signum)
        time.sleep(0.05)  # the handler runs here, inside __del__, where a raised exception is dropped


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_command(signum, capfd):
    """A DataLoader iterator's __del__ joins its workers, and a stop signal often lands there: the
    interpreter would print the exception and run on (a training job that never stops)."""
    ran_on = 0.0
    with pytest.raises(stopping.Stopped) as info, stopping.stop_on_signals():
        SignalsInDel(signum)  # dropped at once: __del__ runs now
        start = time.monotonic()
        while time.monotonic() - start < 5:
            ran_on = time.monotonic() - start
            time.sleep(0.01)
    assert info.value.signum == signum and stopping.received() == signum
    assert ran_on < 2, f"stopped {ran_on:.1f} s after the signal"
    assert "Exception ignored" not in capfd.readouterr().err  # no traceback printed on the way


def _dispositions(_: int) -> list:
    return [signal.getsignal(s) for s in stopping.STOP_SIGNALS]


def test_forked_children_take_the_stop_signals_default_action():
    """A pool worker must die on the kernel's default action: with the Python handler inherited, a
    worker that blocked on the pool's queue lock as Pool.terminate signalled it never ran the handler,
    and the parent's join waited forever (CI's demo hung so)."""
    import multiprocessing

    with stopping.stop_on_signals(), multiprocessing.get_context("fork").Pool(1) as pool:
        assert signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL  # the command's own handler
        assert pool.map(_dispositions, [0]) == [[signal.SIG_DFL, signal.SIG_DFL]]
    with multiprocessing.get_context("fork").Pool(1) as pool:  # outside a command: as the parent has them
        assert pool.map(_dispositions, [0]) == [_dispositions(0)]


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_fit_on_two_ranks_with_loader_workers_stops_and_leaves_nothing(tiny_fleet, tmp_path, signum):
    cmd = Command(
        ["fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--data.window.window_stride", "2",
         "--data.batch_size", "2", "--data.num_workers", "1", "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.max_steps", "100000", "--trainer.max_epochs", "100000", "--checkpoint.every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--workdir", str(tmp_path / "run")],
        cwd=REPO,
    )  # fmt: skip
    cmd.wait_for_file(tmp_path / "run" / "checkpoints", "last.ckpt", timeout_s=300)  # training is under way
    assert_stopped(cmd, cmd.stop(signum), signum)


@pytest.mark.slow
@pytest.mark.distributed
def test_sigterm_while_the_other_rank_waits_in_a_barrier_stops_both(tiny_fleet, tmp_path):
    """Rank 0 gets SIGTERM while rank 1 already waits in the step checkpoint's barrier: no handler may
    start a collective of its own then (Lightning's SIGTERM handler broadcasts, and both ranks waited
    forever); the job stops as from anywhere else."""
    marker = tmp_path / "held"
    cmd = Command(
        ["fit", "--config", "configs/demo.yaml", "--model.net", "configs/model/tiny.yaml",
         "--data.train", f"[{tiny_fleet['US']['train']}]", "--data.val", "[]", "--data.window.window_stride", "2",
         "--data.batch_size", "2", "--data.num_workers", "0", "--trainer.strategy", "ddp", "--trainer.devices", "2",
         "--trainer.max_steps", "100000", "--trainer.max_epochs", "100000", "--checkpoint.every_n_steps", "1",
         "--trainer.enable_progress_bar", "false", "--wandb.mode", "disabled", "--workdir", str(tmp_path / "run"),
         "--trainer.callbacks+=helpers.pace.HoldRankZero", f"--trainer.callbacks.marker={marker}"],
        cwd=REPO,
    )  # fmt: skip
    cmd.wait_for_file(tmp_path, marker.name, timeout_s=300)
    time.sleep(2)  # rank 1 reaches the barrier
    assert_stopped(cmd, cmd.stop(signal.SIGTERM, timeout_s=90), signal.SIGTERM)


@pytest.mark.slow
@pytest.mark.distributed
@pytest.mark.parametrize("at", [r"\[demo 2/6\]", r"\[demo 3/6\]"])
def test_demo_stopped_by_sigterm_stops_its_store_and_jobs(tmp_path, at):
    cmd = Command(["demo", "--workdir", str(tmp_path / "demo"), "--clips", "6"], cwd=REPO)
    port = int(cmd.wait_for(r"S3 endpoint http://127\.0\.0\.1:(\d+)", timeout_s=180).group(1))
    cmd.wait_for(at, timeout_s=600)
    if at.endswith(r"3/6\]"):
        cmd.wait_for(r"global batch", timeout_s=300)  # the fit child and its ranks are up
    assert_stopped(cmd, cmd.stop(signal.SIGTERM), signal.SIGTERM)
    assert port_free(port)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_data_synth_stops_its_worker_pool_and_publishes_nothing(tmp_path, signum):
    out = tmp_path / "fleet"
    cmd = Command(
        ["data", "synth", "--out", f"file://{out}", "--countries", "US", "--clips", "400", "--clips-per-shard", "2",
         "--seconds", "4", "--cameras", "CAM_FRONT", "--workers", "2"],
        cwd=REPO,
    )  # fmt: skip
    cmd.wait_for(r"US: clip 3/400", timeout_s=300)  # both workers rendering, shards being written
    assert_stopped(cmd, cmd.stop(signum), signum)
    assert (out / "train" / "US").is_dir() and not list(out.rglob("manifest.json"))  # nothing looks complete


@pytest.mark.slow
def test_data_write_stops_its_worker_pool_and_publishes_nothing(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "shards"
    made = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "data", "synth", "--raw", "--out", str(raw), "--countries", "US", "--clips", "6",
         "--seconds", "12", "--cameras", "CAM_FRONT"],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    cmd = Command(["data", "write", "--raw", str(raw), "--out", f"file://{out}", "--workers", "2"], cwd=REPO)
    cmd.wait_for(r"US: drive \S+: \d+ clips", timeout_s=300)  # the first drive is in, five are left
    assert_stopped(cmd, cmd.stop(signal.SIGTERM), signal.SIGTERM)
    assert not list(out.rglob("manifest.json"))


@pytest.fixture(scope="module")
def long_val_fleet(tmp_path_factory) -> str:
    """One camera, 80 clips of 20 s in 20 shards: long enough that `eval` and `data verify` are
    still working seconds after their first progress line."""
    out = tmp_path_factory.mktemp("stop-fleet") / "fleet"
    made = subprocess.run(
        [sys.executable, "-m", "fsdtrain", "data", "synth", "--out", f"file://{out}", "--countries", "US", "--clips", "80",
         "--clips-per-shard", "4", "--seconds", "20", "--cameras", "CAM_FRONT", "--split", "val", "--workers", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert made.returncode == 0, made.stdout + made.stderr
    return f"file://{out}/val/US"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_eval_stops_its_loader_workers_and_writes_no_report(long_val_fleet, tmp_path, signum):
    report = tmp_path / "report.json"
    cmd = Command(["eval", "--baselines", "--data", long_val_fleet, "--num-workers", "2", "--out", str(report)], cwd=REPO)
    cmd.wait_for(r"eval: \d+/\d+ windows", timeout_s=300)  # the first batch is in: workers decoding the rest
    assert_stopped(cmd, cmd.stop(signum), signum)
    assert not report.exists() and not list(tmp_path.glob("report.json*"))  # no report, not even a partial one


@pytest.mark.slow
def test_data_verify_stops_mid_way_with_one_line(long_val_fleet, tmp_path):
    cmd = Command(["data", "verify", long_val_fleet], cwd=REPO)
    cmd.wait_for(r"data verify: \d+/\d+ shards", timeout_s=300)
    assert_stopped(cmd, cmd.stop(signal.SIGTERM), signal.SIGTERM)
    verdicts = [line for line in cmd.lines if re.fullmatch(r"\d+ problem\(s\)", line)]
    assert verdicts == [], cmd.output()  # stopped: no verdict on shards it did not read
