"""`--workers 2`: /metrics from either worker sums over both (prometheus_client's
multiprocess mode), against a real `python -m serving` with two worker processes."""

from __future__ import annotations

import base64
import re
import socket
import time

import numpy as np
import pytest

from serving_harness import ServerProcess, encode, random_pixels
from serving.toy import save_mean_colour_model

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample(text: str, pattern: str) -> float:
    m = re.search(pattern + r" ([0-9.e+]+)", text)
    return float(m.group(1)) if m else 0.0


def test_metrics_sum_over_workers(tmp_path):
    base = tmp_path / "m"
    save_mean_colour_model(base / "1", np.eye(3, 4, dtype=np.float32), np.zeros(4, np.float32), labels=list("abcd"))
    image = base64.b64encode(encode(random_pixels(np.random.default_rng(1), 32, 32))).decode()
    loads = r'serving_model_loads_total\{model="m",result="success"\}'
    ok = r'serving_requests_total\{method="POST",route="/classify",status="200"\}'
    with ServerProcess(base, "--workers", "2", "--port", str(free_port()), "--poll-seconds", "0",
                       startup_timeout=240) as server:
        deadline = time.monotonic() + 180
        while sample(httpx.get(server.url + "/metrics").text, loads) < 2:  # each worker loaded the model once
            assert time.monotonic() < deadline, "the second worker never loaded the model"
            time.sleep(0.5)
        n = 30
        for _ in range(n):  # a new connection each time, so the kernel spreads them over the workers
            r = httpx.post(server.url + "/classify", json={"images": [image]}, headers={"Connection": "close"})
            assert r.status_code == 200, r.text
        scrapes = [httpx.get(server.url + "/metrics", headers={"Connection": "close"}).text for _ in range(8)]
        log = server.log_text()
    for text in scrapes:  # whichever worker answered, the totals are the two workers' sum
        assert sample(text, ok) == n, re.findall(ok + ".*", text)
        assert sample(text, loads) == 2
        assert sample(text, r'serving_model_version\{model="m"\}') == 1
        assert sample(text, r"serving_images_total") == n
    assert "Traceback" not in log
