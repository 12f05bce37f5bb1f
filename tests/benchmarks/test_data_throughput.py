"""benchmarks/data_throughput.py end to end on a tiny fleet: the sides asked for, and only those, on
file:// and the local SeaweedFS; its flags checked where they enter."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "data_throughput.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


def test_the_goal_sides_alone_give_both_goals_and_nothing_else():
    proc = _run("--clips", "3", "--clips-per-shard", "2", "--rounds", "1", "--sides", "raw,loader,s3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["ratio"]["goal"] == 0.9 and result["s3_vs_file"]["goal"] == 0.95
    assert result["ratio"]["rounds"] == 1 and result["ratio"]["undecided"]  # one round decides nothing
    assert 0 < result["loader_windows"] <= result["windows"] and result["clips_per_shard"] == 2  # streams drop a tail
    assert result["store_cpu_s_per_s3_pass"] > 0 and result["loader_s3_windows_per_s"] > 0
    assert not {"warm_ratio", "ahead_vs_on_touch", "cached_vs_uncached_store", "loader_2_workers_windows_per_s"} & result.keys()
    ran = {line.split()[2].rstrip(":") for line in proc.stdout.splitlines() if line.startswith("round ")}
    assert ran == {"raw", "loader", "s3"}


def test_an_unknown_side_is_a_usage_error_naming_the_choices():
    proc = _run("--sides", "raw,loader,s4")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--sides: unknown s4; choose from raw, loader," in proc.stderr.splitlines()[-1]


def test_a_count_below_one_is_a_usage_error():
    proc = _run("--clips-per-shard", "0")
    assert proc.returncode == 2 and proc.stderr.splitlines()[-1].endswith("--clips-per-shard 0: want at least 1")
