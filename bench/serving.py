"""Benchmark of `python -m serving`: dynamic batching vs the model's own batched speed.

    python bench/serving.py [--model-base-path MODELS/<name>] [--requests 600] [--clients 32]

Side by side, in one run, on the same model and images:
  1. in-process: the SavedModel's serving_default called directly on batches of
     --max-batch-size images (the ceiling for any server of this model);
  2. the server with batching (--max-batch-size, --batch-timeout-ms);
  3. the naive server: the same with --max-batch-size 1.
Each server gets --clients concurrent keep-alive clients that send --requests
TF Serving predict requests of one JPEG each. Prints throughput, p50/p99 latency
and the two ratios (goals: server/in-process >= 0.8, batching/naive >= 3).
Without --model-base-path a small Keras CNN (serving.toy.save_cnn_model) is
exported to a temporary folder first.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the serving test harness
from serving_harness import ServerProcess, encode, random_pixels, smooth_pixels  # noqa: E402


class Connection:
    """A minimal HTTP/1.1 keep-alive client: the load generator must cost the
    server's CPUs as little as possible (they are shared on one machine)."""

    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(head + body)
        status_line = await self.reader.readline()
        status = int(status_line.split()[1])
        length, keep_alive = 0, True
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep_alive = False
        data = await self.reader.readexactly(length)
        if not keep_alive:
            await self.close()
        return status, data

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            try:
                await self.writer.wait_closed()
            except OSError:
                pass
            self.writer = None


def predict_requests(url: str, model: str, images: list[bytes]) -> list[tuple[bytes, bytes]]:
    u = urlsplit(url)
    out = []
    for img in images:
        body = json.dumps({"instances": [{"b64": base64.b64encode(img).decode()}]}).encode()
        head = (f"POST /v1/models/{model}:predict HTTP/1.1\r\nHost: {u.netloc}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        out.append((head, body))
    return out


async def load(url: str, reqs: list[tuple[bytes, bytes]], n_requests: int, clients: int) -> dict:
    u = urlsplit(url)
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n_requests))

    async def client() -> None:
        nonlocal errors
        conn = Connection(u.hostname, u.port)
        try:
            for i in counter:
                head, body = reqs[i % len(reqs)]
                t0 = time.perf_counter()
                status, _ = await conn.request(head, body)
                latencies.append(time.perf_counter() - t0)
                errors += status != 200
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"rps": n_requests / wall, "p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99)),
            "errors": errors, "wall": wall}


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process, all threads (Linux /proc; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class InProcess:
    """The SavedModel's serving_default called directly on batches: the ceiling for any server."""

    def __init__(self, model_dir: Path, images: list[bytes], batch: int):
        import tensorflow as tf

        self.fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
        (self.name,) = self.fn.structured_input_signature[1]
        self.batch = batch
        self.batches = [tf.constant([images[(i + j) % len(images)] for j in range(batch)])
                        for i in range(0, len(images), batch)]
        for b in self.batches[:2]:
            self.fn(**{self.name: b})  # warm-up

    def run(self, n_images: int) -> dict:
        done, t0, c0 = 0, time.perf_counter(), time.process_time()
        while done < n_images:
            self.fn(**{self.name: self.batches[(done // self.batch) % len(self.batches)]})
            done += self.batch
        return {"ips": done / (time.perf_counter() - t0), "cpu_ms": (time.process_time() - c0) * 1000 / done}


def measure(server: ServerProcess, reqs, n_requests: int, clients: int) -> dict:
    s0, c0 = process_cpu_s(server.proc.pid), time.process_time()
    result = asyncio.run(load(server.url, reqs, n_requests, clients))
    s1, c1 = process_cpu_s(server.proc.pid), time.process_time()
    result["server_cpu_ms"] = None if s0 is None or s1 is None else (s1 - s0) * 1000 / n_requests
    result["client_cpu_ms"] = (c1 - c0) * 1000 / n_requests
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-base-path", help="an exported model repository (default: export a small CNN)")
    p.add_argument("--requests", type=int, default=600, help="per server per round")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=5.0)
    p.add_argument("--image-size", type=int, default=96, help="side of the JPEGs sent")
    p.add_argument("--images", choices=["smooth", "noise"], default="smooth",
                   help="photo-like smooth colour fields, or uniform noise (the slowest JPEGs to decode)")
    p.add_argument("--cnn-size", type=int, default=96, help="input side of the default CNN")
    p.add_argument("--cnn-width", type=int, default=32, help="first conv width of the default CNN")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds; medians are printed")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from machine import machine_line
    print(machine_line(), flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        if args.model_base_path:
            base = Path(args.model_base_path)
        else:
            from serving.toy import save_cnn_model

            base = Path(tmp) / "cnn"
            save_cnn_model(base / "1", size=args.cnn_size, width=args.cnn_width)
        from serving.repository import list_versions

        versions = list_versions(base)
        if not versions:
            p.error(f"{base} has no version folders")
        model_dir = base / str(versions[0])
        rng = np.random.default_rng(0)
        make = smooth_pixels if args.images == "smooth" else random_pixels
        images = [encode(make(rng, args.image_size, args.image_size), "JPEG", quality=90) for _ in range(64)]
        model_name = base.name

        print(f"model {model_dir}, {args.requests} requests x 1 image ({args.image_size}px {args.images} JPEG), "
              f"{args.clients} clients, {args.rounds} rounds, {os.cpu_count()} CPUs", flush=True)
        fwd = InProcess(model_dir, images, args.max_batch_size)
        fwd1 = InProcess(model_dir, images, 1)
        common = ["--batch-timeout-ms", str(args.batch_timeout_ms), "--poll-seconds", "0", "--log-level", "warning"]
        with ServerProcess(base, "--max-batch-size", str(args.max_batch_size), *common) as on, \
                ServerProcess(base, "--max-batch-size", "1", *common) as off:
            reqs = {s: predict_requests(s.url, model_name, images) for s in (on, off)}
            for s in (on, off):  # warm-up
                asyncio.run(load(s.url, reqs[s], 4 * args.clients, args.clients))
            rounds = []
            # Interleaved rounds: load from other jobs on a shared machine drifts, and
            # each round's three measurements are taken close together.
            for i in range(args.rounds):
                r = {"fwd": fwd.run(args.requests), "fwd1": fwd1.run(args.requests // 4),
                     "on": measure(on, reqs[on], args.requests, args.clients),
                     "off": measure(off, reqs[off], args.requests, args.clients)}
                rounds.append(r)
                print(f"round {i + 1}: in-process {r['fwd']['ips']:.1f} img/s, batching {r['on']['rps']:.1f} req/s, "
                      f"batching off {r['off']['rps']:.1f} req/s", flush=True)

    def med(values) -> float:
        return float(np.median(list(values)))

    def row(name: str, key: str) -> str:
        rs = [r[key] for r in rounds]
        cpu = ""
        if all(r["server_cpu_ms"] is not None for r in rs):
            cpu = (f"   CPU {med(r['server_cpu_ms'] for r in rs):.2f} ms/req"
                   f" (+client {med(r['client_cpu_ms'] for r in rs):.2f})")
        return (f"{name:<34}{med(r['rps'] for r in rs):8.1f} req/s   p50 {med(r['p50'] for r in rs):7.1f} ms"
                f"   p99 {med(r['p99'] for r in rs):7.1f} ms   errors {sum(r['errors'] for r in rs)}{cpu}")

    print("medians over the rounds:")
    print(f"{'in-process forward, batch ' + str(args.max_batch_size):<34}{med(r['fwd']['ips'] for r in rounds):8.1f}"
          f" img/s   CPU {med(r['fwd']['cpu_ms'] for r in rounds):.2f} ms/image")
    print(f"{'in-process forward, batch 1':<34}{med(r['fwd1']['ips'] for r in rounds):8.1f}"
          f" img/s   CPU {med(r['fwd1']['cpu_ms'] for r in rounds):.2f} ms/image")
    print(row(f"server, batching (max {args.max_batch_size})", "on"))
    print(row("server, batching off (max 1)", "off"))
    r1 = med(r["on"]["rps"] / r["fwd"]["ips"] for r in rounds)
    r2 = med(r["on"]["rps"] / r["off"]["rps"] for r in rounds)
    print(f"server / in-process forward:   {r1:.2f}  (goal >= 0.8)")
    print(f"batching / batching off:       {r2:.2f}x (goal >= 3x; the model's own batch {args.max_batch_size} / "
          f"batch 1 speed-up is {med(r['fwd']['ips'] / r['fwd1']['ips'] for r in rounds):.2f}x)")
    if all(r[k]["server_cpu_ms"] for r in rounds for k in ("on", "off")):
        # The same comparisons in CPU time, which other jobs on a shared machine move less.
        c1 = med(r["fwd"]["cpu_ms"] / r["on"]["server_cpu_ms"] for r in rounds)
        c2 = med(r["off"]["server_cpu_ms"] / r["on"]["server_cpu_ms"] for r in rounds)
        print(f"CPU per image, in-process / server:        {c1:.2f}")
        print(f"CPU per request, batching off / batching:  {c2:.2f}x")
    errors = sum(r[k]["errors"] for r in rounds for k in ("on", "off"))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
