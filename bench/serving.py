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

from serving.harness import ServerProcess, encode, random_pixels  # noqa: E402


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


def in_process(model_dir: Path, images: list[bytes], batch: int, n_images: int) -> float:
    import tensorflow as tf

    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    (name,) = fn.structured_input_signature[1]
    batches = [tf.constant([images[(i + j) % len(images)] for j in range(batch)]) for i in range(0, len(images), batch)]
    for b in batches[:2]:
        fn(**{name: b})  # warm-up
    done, t0 = 0, time.perf_counter()
    while done < n_images:
        fn(**{name: batches[(done // batch) % len(batches)]})
        done += batch
    return done / (time.perf_counter() - t0)


def serve_and_load(base: Path, args, reqs_for, max_batch: int) -> dict:
    extra = ["--max-batch-size", str(max_batch), "--batch-timeout-ms", str(args.batch_timeout_ms),
             "--poll-seconds", "0", "--log-level", "warning"]
    with ServerProcess(base, *extra) as server:
        reqs = reqs_for(server.url)
        asyncio.run(load(server.url, reqs, min(args.requests, 4 * args.clients), args.clients))  # warm-up
        return asyncio.run(load(server.url, reqs, args.requests, args.clients))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model-base-path", help="an exported model repository (default: export a small CNN)")
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-batch-size", type=int, default=32)
    p.add_argument("--batch-timeout-ms", type=float, default=5.0)
    p.add_argument("--image-size", type=int, default=96, help="side of the random JPEGs sent")
    p.add_argument("--cnn-size", type=int, default=96, help="input side of the default CNN")
    p.add_argument("--cnn-width", type=int, default=32, help="first conv width of the default CNN")
    args = p.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
        images = [encode(random_pixels(rng, args.image_size, args.image_size), "JPEG", quality=90) for _ in range(64)]
        model_name = base.name

        def reqs_for(url: str):
            return predict_requests(url, model_name, images)

        print(f"model {model_dir}, {args.requests} requests x 1 image ({args.image_size}px JPEG), "
              f"{args.clients} clients, {os.cpu_count()} CPUs", flush=True)
        fwd = in_process(model_dir, images, args.max_batch_size, max(args.requests, 256))
        print(f"in-process forward, batch {args.max_batch_size}: {fwd:8.1f} images/s", flush=True)
        batched = serve_and_load(base, args, reqs_for, args.max_batch_size)
        naive = serve_and_load(base, args, reqs_for, 1)

    def row(name: str, r: dict) -> str:
        return (f"{name:<34}{r['rps']:8.1f} req/s   p50 {r['p50']:7.1f} ms   p99 {r['p99']:7.1f} ms"
                f"   errors {r['errors']}")

    print(row(f"server, batching (max {args.max_batch_size})", batched))
    print(row("server, batching off (max 1)", naive))
    r1 = batched["rps"] / fwd
    r2 = batched["rps"] / naive["rps"]
    print(f"server / in-process forward:   {r1:.2f}  (goal >= 0.8)")
    print(f"batching / batching off:       {r2:.2f}x (goal >= 3x)")
    return 0 if batched["errors"] == naive["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
