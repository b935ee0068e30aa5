"""Side-by-side measurement that cannot flatter one side.

Each side runs in its own process, one side at a time, in interleaved rounds (A B C, A B
C, ...), with a pause between runs; a side's process does its warm-up, then times a
window and prints one JSON line. What is reported per side:

- rate: the median over rounds, and the rounds' spread ((max - min) / median); a spread
  over 20 % marks the figure as noise, not a result;
- CPU use: the side's process CPU seconds (all its threads) / wall seconds of its timed
  window, in cores (2.0 = both cores of a 2-core machine busy);
- interference: CPU seconds that the rest of the machine used during the window (from
  /proc/stat: all busy time less the side's own), per wall second; above ~0.1 core
  another job shared the machine.

A ratio of two sides is taken within each round (so slow drift cancels) and its median
and spread are reported.

The child side of the protocol: `timed_window(fn)` runs fn and returns the numbers above;
`emit(rate, unit, window)` prints them as the one JSON line the parent reads.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Callable, Sequence

NOISE = 0.20           # rounds that disagree by more than this are noise
PAUSE_S = 2.0          # between two side processes: caches and turbo settle
MIN_WINDOW_S = 2.0     # a shorter timed window measures prefetch and clock ticks


def machine_busy_seconds() -> float | None:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, all cores:
    everything but idle and iowait); None where there is no /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / ticks


def timed_window(fn: Callable[[], float]) -> dict:
    """Runs fn (which does the timed work and returns its amount, e.g. views) after a gc;
    returns {"amount", "wall_s", "cpu_s" (this process, all threads), "other_cpu_s"
    (the rest of the machine in the window; None without /proc/stat)}."""
    gc.collect()
    m0, c0, t0 = machine_busy_seconds(), time.process_time(), time.perf_counter()
    amount = fn()
    t1, c1, m1 = time.perf_counter(), time.process_time(), machine_busy_seconds()
    own = c1 - c0
    other = None if m0 is None or m1 is None else max((m1 - m0) - own, 0.0)
    return {"amount": amount, "wall_s": t1 - t0, "cpu_s": own, "other_cpu_s": other}


def emit(rate: float, unit: str, window: dict) -> None:
    """The child's one result line (the parent reads the last line starting with '{')."""
    print(json.dumps({"rate": rate, "unit": unit, **window}), flush=True)


def run_side(argv: Sequence[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """One side in its own process; its JSON result (RuntimeError with its stderr tail
    when it fails)."""
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})})
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    if r.returncode != 0 or not lines:
        raise RuntimeError(f"side {' '.join(argv)} failed ({r.returncode}): {r.stderr[-1500:]}")
    return json.loads(lines[-1])


def interleave(sides: dict[str, Sequence[str]], rounds: int, pause_s: float = PAUSE_S,
               env: dict | None = None, log: Callable[[str], None] = print) -> dict[str, list[dict]]:
    """{side: [result per round]}: the sides run one at a time, in the same order every
    round, with a pause between any two runs."""
    results: dict[str, list[dict]] = {k: [] for k in sides}
    for i in range(rounds):
        for name, argv in sides.items():
            time.sleep(pause_s)
            res = run_side(argv, env)
            results[name].append(res)
            log(f"  round {i + 1}/{rounds} {name}: {res['rate']:.4g} {res['unit']}, "
                f"{res['cpu_s'] / res['wall_s']:.2f} cores"
                + ("" if res.get("other_cpu_s") is None
                   else f", others {res['other_cpu_s'] / res['wall_s']:.2f} cores"))
    return results


def spread(values: Sequence[float]) -> float:
    return (max(values) - min(values)) / statistics.median(values)


def summary_line(name: str, runs: list[dict]) -> str:
    rates = [r["rate"] for r in runs]
    cores = [r["cpu_s"] / r["wall_s"] for r in runs]
    others = [r["other_cpu_s"] / r["wall_s"] for r in runs if r.get("other_cpu_s") is not None]
    s = spread(rates)
    short = statistics.median(r["wall_s"] for r in runs) < MIN_WINDOW_S
    return (f"{name:22s} {statistics.median(rates):9.4g} {runs[0]['unit']}"
            f"  spread {s:4.0%}{' NOISE' if s > NOISE else ''}"
            f"{' SHORT WINDOW (not a result)' if short else ''}"
            f"  cpu {statistics.median(cores):.2f} cores"
            + (f"  others {max(others):.2f} cores (max)" if others else ""))


def ratio_line(a: str, b: str, results: dict[str, list[dict]]) -> str:
    """a / b within each round: the median and spread over rounds."""
    ratios = [x["rate"] / y["rate"] for x, y in zip(results[a], results[b])]
    s = spread(ratios)
    return (f"{a} / {b}: {statistics.median(ratios):.2f}x (rounds: "
            f"{', '.join(f'{r:.2f}' for r in ratios)}; spread {s:.0%}"
            f"{', NOISE: not a result' if s > NOISE else ''})")


def child_argv(script: str, *args: str) -> list[str]:
    return [sys.executable, script, *args]
