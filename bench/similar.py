"""Similar-case search: latency of one query and memory, exact (tfmicle.caseindex) and,
when faiss-cpu is installed (the ``similar-ann`` extra), tfmicle.caseindex.ann's IVF.

    python bench/similar.py [--sizes 10000,100000,1000000 --dim 512 --rounds 5 --queries 20]

Reference vectors are synthetic (speed does not depend on their values): unit vectors
around ``--clusters`` random centres, so that ANN recall is not judged on structureless
noise. Every round runs every configuration once, in turn (interleaved: a slow minute
of the machine hits all of them), ``--queries`` single queries each. Prints the machine
line, per configuration p50 / p99 latency over all rounds, the spread of the round
medians and whether rounds disagree by more than 20 %, the index size, the RSS growth
while searching (the peak above the resident index), recall@10 of a float16 index and
of ANN against float32 exact search on the same vectors. Not a test.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.machine import machine_line  # noqa: E402
from tfmicle.caseindex.ann import CANDIDATES, NPROBE, IvfIndex  # noqa: E402
from tfmicle.caseindex.search import cosine_top_k  # noqa: E402

DISAGREE = 0.20  # rounds whose medians differ by more than this are flagged
K = 10


def rss_kib(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    """Resets VmHWM (Linux >= 4.0), so the peak seen next is this search's."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def synthetic(n: int, dim: int, clusters: int, seed: int, draw_seed: int) -> np.ndarray:
    """[n, dim] float32 unit vectors near ``clusters`` centres (drawn from ``seed``; the
    points from ``draw_seed``), made in pieces (no float64 copy of the whole)."""
    centres = np.random.default_rng(seed).normal(size=(clusters, dim)).astype(np.float32)
    rng = np.random.default_rng(draw_seed)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        m = min(65536, n - s)
        x = centres[rng.integers(0, clusters, m)] + rng.normal(scale=0.8, size=(m, dim)).astype(np.float32)
        out[s:s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def recall(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([len(set(x) & set(y)) / len(x) for x, y in zip(a, b)]))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10000,100000,1000000")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--queries", type=int, default=20, help="single queries per configuration and round")
    p.add_argument("--clusters", type=int, default=1000)
    p.add_argument("--dtypes", default="float32,float16")
    p.add_argument("--float16-max", type=int, default=100_000,
                   help="float16 only up to this N (each search copies chunks to float32, slowly)")
    p.add_argument("--ann", choices=["auto", "off"], default="auto", help="auto: faiss IVF when importable")
    p.add_argument("--nprobe", type=int, default=NPROBE)
    args = p.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    dtypes = args.dtypes.split(",")
    print(machine_line())
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())}; BLAS threads: "
          f"{os.environ.get('OPENBLAS_NUM_THREADS', 'default (one per core)')}; D = {args.dim}, k = {K}, {args.rounds} rounds x "
          f"{args.queries} single queries per configuration, interleaved")
    data, configs = {}, []
    for n in sizes:
        x = synthetic(n, args.dim, args.clusters, seed=n, draw_seed=1)
        for dt in dtypes:
            if dt != "float32" and n > args.float16_max:
                continue
            data[(n, dt)] = x if dt == "float32" else x.astype(dt)
            configs.append(("exact", n, dt))
    ann = {}
    if args.ann == "auto":
        if importlib.util.find_spec("faiss") is None:
            print("ANN: faiss-cpu not importable (pip install tfmicle[similar-ann]); exact only")
        else:
            for n in sizes:
                t0 = time.perf_counter()
                ann[n] = IvfIndex(data[(n, "float32")], nprobe=args.nprobe)
                print(f"ANN n={n}: IVF-Flat nlist={ann[n].nlist} nprobe={ann[n].index.nprobe}, "
                      f"{CANDIDATES} x k candidates re-scored exactly, built in {time.perf_counter() - t0:.1f} s")
                configs.append(("ivf", n, "float32"))
    # queries: new points around the index's centres (none is a copy of a reference vector)
    queries = {n: synthetic(args.rounds * args.queries, args.dim, args.clusters, seed=n, draw_seed=2) for n in sizes}
    lat = {c: [] for c in configs}
    growth = {c: 0 for c in configs}
    can_peak = reset_peak()
    for r in range(args.rounds):
        for c in configs:
            kind, n, dt = c
            qs = queries[n][r * args.queries:(r + 1) * args.queries]
            reset_peak()
            base = rss_kib()
            times = []
            for q in qs:
                t0 = time.perf_counter()
                if kind == "exact":
                    cosine_top_k(data[(n, dt)], q[None], K)
                else:
                    ann[n].search(q[None], K)
                times.append(time.perf_counter() - t0)
            growth[c] = max(growth[c], rss_kib("VmHWM") - base if can_peak else 0)
            lat[c].append(times)
    print(f"\n| search | N | dtype | index MiB | p50 ms | p99 ms | RSS growth MiB | round medians ms | spread | "
          f"recall@{K} vs exact float32 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    disagree = []
    for c in configs:
        kind, n, dt = c
        allt = np.concatenate(lat[c]) * 1000
        meds = [float(np.median(t)) * 1000 for t in lat[c]]
        spread = (max(meds) - min(meds)) / min(meds)
        if spread > DISAGREE:
            disagree.append(f"{kind} {n} {dt}")
        q = queries[n][:50]
        ref = cosine_top_k(data[(n, "float32")], q, K)[0]
        if kind == "exact":
            got = cosine_top_k(data[(n, dt)], q, K)[0] if dt != "float32" else ref
            size = data[(n, dt)].nbytes
        else:
            got = ann[n].search(q, K)[0]
            size = 2 * data[(n, "float32")].nbytes  # the index's rows + IVF-Flat's float32 copy
        print(f"| {kind} | {n:,} | {dt} | {size / 2**20:.0f} | {np.percentile(allt, 50):.2f} | "
              f"{np.percentile(allt, 99):.2f} | {growth[c] / 1024:.0f} | {', '.join(f'{m:.1f}' for m in meds)} | "
              f"{spread:.0%} | {recall(ref, got):.3f} |")
    print("\nrounds disagree by more than 20 %: " + ("; ".join(disagree) if disagree else "no"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
