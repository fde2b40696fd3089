"""What every benchmark prints first: the machine, the library versions and how busy the CPUs were."""

import os
import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or platform.processor() elsewhere)."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def load_average() -> str:
    """1-minute load average: above the core count, other processes shared the CPUs with the benchmark."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_line() -> str:
    """One line: cores, CPU model, memory, torch/faiss versions, current load."""
    versions = []
    for name in ("torch", "faiss", "transformers"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    return (f"machine: {os.cpu_count()} cores, {cpu_model()}, {memory_gib():.0f} GiB; {', '.join(versions)}; "
            f"python {platform.python_version()}; load average {load_average()}")
