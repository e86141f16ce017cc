"""The machine a benchmark ran on: CPU model, cores, RAM, Python, OS, load."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _first(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip() if ":" in line else line.split("=", 1)[1].strip().strip('"')
    except OSError:
        return None
    return None


def describe() -> dict:
    """What the report prints about the machine (Linux /proc first, ``platform`` as a fallback)."""
    mem_kb = _first("/proc/meminfo", "MemTotal")
    return {
        "cpu": _first("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kb.split()[0]) / 1024 / 1024, 1) if mem_kb else None,
        "python": platform.python_version(),
        "os": _first("/etc/os-release", "PRETTY_NAME=") or platform.platform(),
        "kernel": platform.release(),
    }


def load_average() -> tuple[float, float, float] | None:
    """1, 5 and 15-minute load averages (other work on the machine skews every figure)."""
    try:
        return tuple(round(x, 2) for x in os.getloadavg())
    except OSError:
        return None
