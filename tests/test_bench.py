"""bench/: every benchmark says where it was measured (bench/machine.py)."""
from __future__ import annotations

import datetime
import glob
import os
import re
import subprocess
import sys

import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.subprocess
def test_machine_line_names_cpu_cores_tensorflow_and_date():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "machine.py")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    m = re.fullmatch(r"machine: (.+), (\d+) cores usable of (\d+), TensorFlow (\S+), "
                     r"Python (\S+), (\d{4}-\d\d-\d\d) \d\d:\d\d UTC", line)
    assert m, line
    cpu, usable, total, tf_version, _, day = m.groups()
    assert cpu.strip() and 1 <= int(usable) <= int(total) == os.cpu_count()
    assert tf_version == tf.__version__
    today = datetime.datetime.now(datetime.timezone.utc).date()
    assert abs((datetime.date.fromisoformat(day) - today).days) <= 1


def test_every_benchmark_prints_the_machine_line():
    scripts = [p for p in glob.glob(os.path.join(ROOT, "bench", "*.py"))
               if os.path.basename(p) not in ("machine.py", "sides.py")]  # helpers
    assert len(scripts) >= 4
    for path in scripts:
        assert "print(machine_line()" in open(path).read(), path
