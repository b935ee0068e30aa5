"""Where a benchmark was measured: CPU model, cores, TensorFlow version and date. Every
script in bench/ prints ``machine_line()`` before its numbers, so a number copied into
the README carries the machine it came from.

    python bench/machine.py          # the line alone
"""
from __future__ import annotations

import datetime
import os
import platform


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux; platform's guess elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe() -> dict:
    """{"cpu", "cores" (this process may use), "cpu_count" (the machine's), "tensorflow",
    "python", "date" (UTC)}."""
    try:
        import tensorflow as tf
        tf_version = tf.__version__
    except ImportError:
        tf_version = "not installed"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {"cpu": cpu_model(), "cores": cores or os.cpu_count() or 1,
            "cpu_count": os.cpu_count() or 1, "tensorflow": tf_version,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


def machine_line() -> str:
    d = describe()
    return (f"machine: {d['cpu']}, {d['cores']} cores usable of {d['cpu_count']}, "
            f"TensorFlow {d['tensorflow']}, Python {d['python']}, {d['date']}")


if __name__ == "__main__":
    print(machine_line())
