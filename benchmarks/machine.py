"""What machine a benchmark ran on, for the rows of benchmarks/README.md."""

from __future__ import annotations

import os
import platform

__all__ = ["cpu_name", "describe"]


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo where there is one, else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass  # not Linux: fall back to platform below
    return platform.processor() or platform.machine()


def describe(*, load_before: float) -> dict:
    """The trailer of a benchmark's JSON line: load average before/after and the machine."""
    import torch

    return {
        "load_average_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "machine": f"{cpu_name()}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}, torch {torch.__version__}",
    }
