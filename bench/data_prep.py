"""Benchmark: data_prep's local runner vs. the I/O limit, on pass-through JPEGs.

Writes N HAM10000-sized JPEGs (600x450) in the folders layout, then measures side by
side in one process:
  io     : a plain read of every file and a write of its bytes into one output file
  local  : data_prep.convert (manifest, split, decode-to-validate, encode, shards,
           dataset.json) with the local runner on all cores
and prints images/s of each and the ratio local / io.

  python bench/data_prep.py [--images 600] [--workers 0] [--repeats 2]
"""
from __future__ import annotations

import argparse
import io
import logging
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_images(root: str, n: int, size=(600, 450)) -> int:
    """Smooth random images (JPEG sizes like dermoscopy, not like noise); returns bytes."""
    rng = np.random.default_rng(0)
    total = 0
    yy, xx = np.mgrid[0:size[1], 0:size[0]] / max(size)
    for i in range(n):
        cls = ["benign", "malignant"][i % 2]
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        f = rng.uniform(2, 8, 3)
        ph = rng.uniform(0, 6.3, 3)
        img = np.stack([127 + 100 * np.sin(f[c] * (xx + yy * (c + 1)) + ph[c]) for c in range(3)],
                       axis=-1)
        img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, "JPEG", quality=90)
        path = os.path.join(root, cls, f"img{i:05d}.jpg")
        with open(path, "wb") as fh:
            fh.write(buf.getvalue())
        total += len(buf.getvalue())
    return total


def plain_io(root: str, out_file: str) -> int:
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs)
    with open(out_file, "wb") as out:
        for p in files:
            with open(p, "rb") as fh:
                out.write(fh.read())
    return len(files)


def run_local(root: str, out: str, workers: int) -> int:
    from data_prep.convert import ConvertConfig, convert
    info = convert(ConvertConfig(format="folders", input=root, out=out, workers=workers,
                                 overwrite=True))
    return sum(s["images"] for s in info["splits"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, default=0, help="0: all cores")
    ap.add_argument("--repeats", type=int, default=2, help="best of R timed runs each")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow  # noqa: F401  (imported before timing: both sides pay nothing for it)
    from machine import machine_line
    print(machine_line(), flush=True)

    tmp = tempfile.mkdtemp(prefix="bench_data_prep_")
    try:
        src = os.path.join(tmp, "src")
        nbytes = make_images(src, args.images)
        best = {"io": float("inf"), "local": float("inf")}
        plain_io(src, os.path.join(tmp, "warm.bin"))                 # page cache warm
        for _ in range(args.repeats):
            t = time.perf_counter()
            n_io = plain_io(src, os.path.join(tmp, "plain.bin"))
            best["io"] = min(best["io"], time.perf_counter() - t)
            t = time.perf_counter()
            n_local = run_local(src, os.path.join(tmp, "out"), args.workers)
            best["local"] = min(best["local"], time.perf_counter() - t)
        assert n_io == n_local == args.images, (n_io, n_local)
        from data_prep.local_runner import default_workers
        io_rate = args.images / best["io"]
        local_rate = args.images / best["local"]
        print(f"{args.images} pass-through JPEGs 600x450, {nbytes / 2**20:.1f} MiB, "
              f"{args.workers or default_workers()} worker(s), best of {args.repeats}")
        print(f"  plain read+write : {io_rate:10.0f} images/s  ({nbytes / 2**20 / best['io']:.0f} MiB/s)")
        print(f"  data_prep local  : {local_rate:10.0f} images/s  ({nbytes / 2**20 / best['local']:.1f} MiB/s)")
        print(f"ratio local / io = {local_rate / io_rate:.3f}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
