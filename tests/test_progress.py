"""Progress of long commands (fsdtrain/progress.py): a bar redrawn in place on a terminal (a real pty
here), plain log lines at most every N seconds elsewhere, the last state always shown; ``data verify``
tells its bar how many shards there are."""

import io
import logging
import os
import select

import pytest

from fsdtrain.cli import main
from fsdtrain.format.verify import verify
from fsdtrain.progress import Progress


class Clock:
    """Seconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def read_all(fd: int) -> str:
    """Everything written to the pty so far (a read returns what one write put there)."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        data += os.read(fd, 65536)
    return data.decode()


def progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "fsdtrain.progress"]


def test_plain_lines_at_most_every_n_seconds_and_the_last_one(caplog):
    caplog.set_level(logging.INFO, logger="fsdtrain")
    clock = Clock()
    with Progress("data verify", unit="shards", total=10, every_s=10, stream=io.StringIO(), clock=clock) as bar:
        assert not bar.tty
        for i in range(10):
            clock.now += 4  # one shard every 4 s: a line at 4 s (the first), 16 s, 28 s, then the last at 40 s
            bar(f"checked shard-{i}.tar\nsecond line never shown")
    assert progress_lines(caplog) == [
        "data verify: 1/10 shards (10%) in 4 s, 0.25/s, about 36 s left; last: checked shard-0.tar",
        "data verify: 4/10 shards (40%) in 16 s, 0.25/s, about 24 s left; last: checked shard-3.tar",
        "data verify: 7/10 shards (70%) in 28 s, 0.25/s, about 12 s left; last: checked shard-6.tar",
        "data verify: 10/10 shards (100%) in 40 s, 0.25/s; last: checked shard-9.tar",
    ]
    bar.close()  # closing twice adds nothing
    assert len(progress_lines(caplog)) == 4


def test_without_a_total_it_counts_and_a_dropped_one_closes_itself(caplog):
    caplog.set_level(logging.INFO, logger="fsdtrain")
    clock = Clock()

    def write(progress) -> None:  # as data write calls its progress callback, once per drive
        for name in ("CN: drive a: 3 clips", "CN: drive b: 2 clips", "skipped: drive c: no poses.csv"):
            clock.now += 200
            progress(name)

    write(Progress("data write", unit="drives", stream=io.StringIO(), clock=clock))  # dropped as the call returns
    assert progress_lines(caplog) == [
        "data write: 1 drives in 3 min 20 s, 0.005/s; last: CN: drive a: 3 clips",
        "data write: 2 drives in 6 min 40 s, 0.005/s; last: CN: drive b: 2 clips",
        "data write: 3 drives in 10 min 00 s, 0.005/s; last: skipped: drive c: no poses.csv",
    ]


def test_on_a_terminal_a_bar_redrawn_in_place_then_its_line_ended(caplog):
    caplog.set_level(logging.INFO, logger="fsdtrain")
    master, slave = os.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            clock = Clock()
            bar = Progress("data verify", unit="shards", every_s=10, stream=tty, clock=clock)
            assert bar.tty
            bar.set_total(4)
            for i in range(3):
                clock.now += 2
                bar(f"checked shard-{i}.tar")
            shown = read_all(master)
            bar.close()
            ended = read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    redraws = shown.split("\r")[1:]  # each item redraws the one line
    assert len(redraws) == 3 and "\n" not in shown
    assert redraws[-1].startswith("data verify [##################------] 3/4 shards (75%) 0.5/s 6 s 2 s left | checked shard-2.tar")
    assert ended.startswith("\rdata verify [") and ended.endswith("\r\n")  # drawn once more, then the line ends (the pty maps \n to \r\n)
    assert progress_lines(caplog) == []  # a bar on a terminal, no log lines besides it


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="every_s must be > 0"):
        Progress("x", every_s=0)
    with pytest.raises(ValueError, match="total must be >= 0"):
        Progress("x", total=-1)


def test_data_verify_tells_its_bar_the_number_of_shards(tmp_path, caplog, capsys):
    url = f"file://{tmp_path}/fleet"
    args = ["--countries", "DE", "--clips", "2", "--clips-per-shard", "1", "--width", "64", "--height", "48", "--seconds", "5"]
    assert main(["data", "synth", "--out", url, *args]) == 0
    caplog.set_level(logging.INFO, logger="fsdtrain")
    bar = Progress("data verify", unit="shards", every_s=3600, stream=io.StringIO())
    assert verify(f"{url}/train/DE", fast=True, progress=bar) == []
    bar.close()
    first, last = progress_lines(caplog)
    assert first.startswith("data verify: 1/2 shards (50%) in ") and first.endswith(f"; last: checked {url}/train/DE/shard-000000.tar (1 clips, 0 problem(s))")
    assert last.startswith("data verify: 2/2 shards (100%) in ") and "shard-000001.tar" in last
    capsys.readouterr()


def test_data_write_logs_its_progress_per_drive(tmp_path, capsys):
    raw = tmp_path / "raw"
    assert main(["data", "synth", "--raw", "--out", str(raw), "--countries", "DE", "--clips", "2", "--seconds", "6"]) == 0
    capsys.readouterr()
    assert main(["data", "write", "--raw", str(raw), "--out", f"file://{tmp_path}/fleet", "--clip-seconds", "5"]) == 0
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.startswith("fsdtrain: data write: ")]
    assert lines[0].startswith("fsdtrain: data write: 1 drives in ") and lines[-1].startswith("fsdtrain: data write: 2 drives in "), err
    assert lines[-1].endswith(" clips") and "drive" in lines[-1].split("; last: ")[1]
    assert out.startswith("wrote ")  # the result, on stdout
