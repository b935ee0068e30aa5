"""End-to-end tests against a real `python -m serving` (uvicorn) process on 127.0.0.1.

The model is the mean-colour SavedModel of ``serving.toy``: for a PNG whose sides
are multiples of 32 its probabilities are softmax(mean(pixels/255) @ W + b),
computed here in numpy from the pixels we sent.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct

import numpy as np
import pytest

from serving_harness import ServerProcess, encode, random_pixels
from serving.toy import expected_mean_colour, save_mean_colour_model

from test_serving_units import jpeg_with_header, png_with_header

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.slow

KEY = "test-key-123"
LABELS = ["red", "green", "blue", "grey"]
W = np.array([[4.0, -2.0, -2.0, 0.5], [-2.0, 4.0, -2.0, 0.5], [-2.0, -2.0, 4.0, 0.5]], np.float32)
B = np.array([0.0, 0.1, -0.1, 0.2], np.float32)
MAX_BODY = 1_000_000
MAX_IMAGES = 4
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "colours"
    save_mean_colour_model(base / "1", W, B, labels=LABELS)
    with ServerProcess(
        base, "--max-batch-size", "8", "--batch-timeout-ms", "5", "--max-body-bytes", str(MAX_BODY),
        "--max-images", str(MAX_IMAGES), "--max-pixels", str(MAX_PIXELS), "--poll-seconds", "0",
        env={"SERVING_API_KEY": KEY}, api_key=KEY,
    ) as s:
        yield s
        log = s.log_text()
    assert "Traceback" not in log


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server.url, headers=server.headers, timeout=30) as c:
        yield c


def picture(seed: int, h: int = 64, w: int = 96) -> np.ndarray:
    return random_pixels(np.random.default_rng(seed), h, w)


def expected(pixels: np.ndarray) -> np.ndarray:
    return expected_mean_colour(pixels, W, B)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def assert_error(r, status: int, words: str = ""):
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert "Traceback" not in body["error"]
    assert words.lower() in body["error"].lower(), body["error"]


def scores_by_label(top: list[dict]) -> np.ndarray:
    d = {x["label"]: x["score"] for x in top}
    return np.array([d[label] for label in LABELS])


# -- /classify -----------------------------------------------------------------------------
def test_classify_multipart_case_of_two_images(client):
    a, b = picture(1), picture(2, 32, 32)
    files = [("files", ("a.png", encode(a), "image/png")), ("files", ("b.png", encode(b), "image/png"))]
    r = client.post("/classify", files=files, params={"top_k": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["top_k"]) == ("colours", 1, 4)
    assert [im["filename"] for im in body["images"]] == ["a.png", "b.png"]
    for im, pixels in zip(body["images"], (a, b)):
        np.testing.assert_allclose(scores_by_label(im["top"]), expected(pixels), atol=1e-5)
        scores = [x["score"] for x in im["top"]]
        assert scores == sorted(scores, reverse=True)
    case = (expected(a) + expected(b)) / 2
    assert body["case"]["num_images"] == 2
    np.testing.assert_allclose(scores_by_label(body["case"]["top"]), case, atol=1e-5)


def test_classify_json_top_k_and_jpeg(client):
    solid = np.zeros((64, 64, 3), np.uint8)
    solid[...] = (10, 200, 30)  # flat colour: JPEG keeps it (nearly) exactly
    r = client.post("/classify", json={"images": [b64(encode(solid, "JPEG", quality=95))]}, params={"top_k": 2})
    assert r.status_code == 200, r.text
    body = r.json()
    exp = expected(solid)
    top2 = np.argsort(-exp)[:2]
    assert [x["label"] for x in body["images"][0]["top"]] == [LABELS[i] for i in top2] == ["green", "grey"]
    np.testing.assert_allclose([x["score"] for x in body["images"][0]["top"]], exp[top2], atol=2e-3)
    assert body["case"]["top"] == body["images"][0]["top"]


# -- TF Serving REST --------------------------------------------------------------------------
def test_tf_serving_predict_instances_and_inputs(client):
    pics = [picture(10), picture(11, 32, 64)]
    inst = client.post("/v1/models/colours:predict", json={"instances": [{"b64": b64(encode(p))} for p in pics]})
    assert inst.status_code == 200, inst.text
    assert list(inst.json()) == ["predictions"]
    np.testing.assert_allclose(inst.json()["predictions"], [expected(p) for p in pics], atol=1e-5)

    named = client.post("/v1/models/colours/versions/1:predict",
                        json={"signature_name": "serving_default",
                              "instances": [{"images": {"b64": b64(encode(p))}} for p in pics]})
    np.testing.assert_allclose(named.json()["predictions"], inst.json()["predictions"], atol=1e-6)

    cols = client.post("/v1/models/colours:predict", json={"inputs": {"images": [{"b64": b64(encode(p))} for p in pics]}})
    assert cols.status_code == 200 and list(cols.json()) == ["outputs"]
    np.testing.assert_allclose(cols.json()["outputs"], inst.json()["predictions"], atol=1e-6)
    bare = client.post("/v1/models/colours:predict", json={"inputs": [{"b64": b64(encode(p))} for p in pics]})
    np.testing.assert_allclose(bare.json()["outputs"], inst.json()["predictions"], atol=1e-6)


def test_tf_serving_status_and_metadata(client):
    r = client.get("/v1/models/colours")
    assert r.json() == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    assert client.get("/v1/models/colours/versions/1").status_code == 200
    meta = client.get("/v1/models/colours/metadata").json()
    assert meta["model_spec"] == {"name": "colours", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["inputs"]["images"]["dtype"] == "DT_STRING"
    assert sig["inputs"]["images"]["tensor_shape"]["dim"] == [{"size": "-1", "name": ""}]
    assert sig["outputs"]["probabilities"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["outputs"]["probabilities"]["tensor_shape"]["dim"]] == ["-1", "4"]
    assert sig["method_name"] == "tensorflow/serving/predict"


# -- Open Inference Protocol v2 ------------------------------------------------------------------
def test_oip_v2_infer_as_a_standard_client_sends_it(client):
    pics = [picture(20), picture(21), picture(22, 32, 32)]
    req = {
        "id": "req-42",
        "inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", "data": [b64(encode(p)) for p in pics]}],
        "outputs": [{"name": "probabilities"}],
    }
    r = client.post("/v2/models/colours/infer", json=req)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["model_name"], body["model_version"], body["id"]) == ("colours", "1", "req-42")
    (out,) = body["outputs"]
    assert (out["name"], out["datatype"], out["shape"]) == ("probabilities", "FP32", [3, 4])
    np.testing.assert_allclose(np.reshape(out["data"], out["shape"]), [expected(p) for p in pics], atol=1e-5)
    v = client.post("/v2/models/colours/versions/1/infer", json={"inputs": req["inputs"]})
    assert v.status_code == 200 and "id" not in v.json()


def test_oip_v2_binary_tensor_extension(client):
    """tritonclient's defaults: raw BYTES after a JSON header, binary FP32 output."""
    pics = [picture(30), picture(31)]
    raw = b"".join(struct.pack("<I", len(d)) + d for d in (encode(p) for p in pics))
    header = json.dumps({
        "inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "parameters": {"binary_data_size": len(raw)}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    r = client.post("/v2/models/colours/infer", content=header + raw,
                    headers={"Content-Type": "application/octet-stream",
                             "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    meta = json.loads(r.content[:n])
    (out,) = meta["outputs"]
    assert out["shape"] == [2, 4] and out["parameters"]["binary_data_size"] == 2 * 4 * 4
    probs = np.frombuffer(r.content[n:], "<f4").reshape(2, 4)
    np.testing.assert_allclose(probs, [expected(p) for p in pics], atol=1e-5)


def test_oip_v2_metadata_and_health(server, client):
    assert client.get("/v2/models/colours").json() == {
        "name": "colours", "versions": ["1"], "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "images", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 4]}],
    }
    assert client.get("/v2/models/colours/ready").json() == {"name": "colours", "ready": True}
    assert client.get("/v2/models/colours/versions/1/ready").status_code == 200
    assert client.get("/v2").json()["extensions"] == ["binary_tensor_data"]
    # health checks need no key (a load balancer / HEALTHCHECK has none)
    assert httpx.get(server.url + "/v2/health/live").json() == {"live": True}
    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}


def test_openapi_documents_every_body(client):
    spec = client.get("/openapi.json").json()
    for name in ("ClassifyRequest", "PredictRequest", "InferRequest", "ErrorResponse", "ClassifyResponse"):
        assert name in spec["components"]["schemas"]
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}
    assert "requestBody" in spec["paths"]["/v2/models/{name}/infer"]["post"]


# -- bad input: each a JSON 4xx, and the server keeps serving -----------------------------------------
def _good() -> bytes:
    return encode(picture(99, 32, 32))


def _trunc(fmt: str) -> bytes:
    data = encode(picture(5), fmt)
    return data[: len(data) // 2]


BAD_REQUESTS = {
    "garbage bytes": (lambda c: c.post("/classify", files={"files": ("x.png", b"\x00\x01garbage" * 50)}), 400, "not a JPEG, PNG, DICOM, BMP, TIFF or WebP"),
    "gif": (lambda c: c.post("/classify", files={"files": ("x.gif", b"GIF89a" + b"\0" * 64)}), 415, "GIF"),
    "truncated jpeg": (lambda c: c.post("/classify", files={"files": ("x.jpg", _trunc("JPEG"))}), 400, "truncated"),
    "truncated png": (lambda c: c.post("/classify", json={"images": [b64(_trunc("PNG"))]}), 400, "truncated"),
    "png bomb": (lambda c: c.post("/classify", files={"files": ("b.png", png_with_header(40000, 40000))}), 413, "pixels"),
    "png over --max-pixels": (lambda c: c.post("/v1/models/colours:predict", json={"instances": [{"b64": b64(png_with_header(2000, 2000))}]}), 413, "--max-pixels"),
    "jpeg bomb": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(jpeg_with_header(30000, 30000))]}]}), 413, "pixels"),
    "body over limit (Content-Length)": (lambda c: c.post("/classify", files={"files": ("big.png", b"\x89PNG\r\n\x1a\n" + b"\0" * MAX_BODY)}), 413, "--max-body-bytes"),
    "body over limit (streamed)": (lambda c: c.post("/classify", content=(b"x" * 65536 for _ in range(40)), headers={"Content-Type": "application/json"}), 413, "--max-body-bytes"),
    "too many images (multipart)": (lambda c: c.post("/classify", files=[("files", ("a.png", _good()))] * (MAX_IMAGES + 1)), 413, "--max-images"),
    "too many images (json)": (lambda c: c.post("/classify", json={"images": [b64(_good())] * (MAX_IMAGES + 1)}), 413, "--max-images"),
    "too many images (oip)": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "images", "shape": [MAX_IMAGES + 1], "datatype": "BYTES", "data": [b64(_good())] * (MAX_IMAGES + 1)}]}), 413, "--max-images"),
    "empty body": (lambda c: c.post("/classify"), 400, "empty"),
    "empty json body": (lambda c: c.post("/v1/models/colours:predict", content=b"", headers={"Content-Type": "application/json"}), 400, "empty"),
    "multipart without boundary": (lambda c: c.post("/classify", content=b"--x\r\n", headers={"Content-Type": "multipart/form-data"}), 400, "boundary"),
    "empty multipart": (lambda c: c.post("/classify", files={"other": ("a.txt", b"hi")}), 400, "no images"),
    "empty image list": (lambda c: c.post("/classify", json={"images": []}), 400, "no images"),
    "wrong content type": (lambda c: c.post("/classify", content=_good(), headers={"Content-Type": "image/png"}), 415, "Content-Type"),
    "wrong content type (predict)": (lambda c: c.post("/v1/models/colours:predict", files={"files": ("a.png", _good())}), 415, "Content-Type"),
    "malformed json": (lambda c: c.post("/classify", content=b'{"images": [', headers={"Content-Type": "application/json"}), 400, "malformed JSON"),
    "json of the wrong shape": (lambda c: c.post("/classify", json={"images": "abc"}), 422, "images"),
    "json not an object": (lambda c: c.post("/v2/models/colours/infer", json=[1, 2]), 422, "object"),
    "malformed base64": (lambda c: c.post("/classify", json={"images": ["@@not base64@@"]}), 400, "base64"),
    "b64 missing in predict": (lambda c: c.post("/v1/models/colours:predict", json={"instances": ["plain string"]}), 400, "b64"),
    "predict with both forms": (lambda c: c.post("/v1/models/colours:predict", json={"instances": [], "inputs": []}), 400, "exactly one"),
    "oip wrong datatype": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "images", "shape": [1], "datatype": "FP32", "data": [1.0]}]}), 400, "BYTES"),
    "oip shape mismatch": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "images", "shape": [2], "datatype": "BYTES", "data": [b64(_good())]}]}), 400, "shape"),
    "oip unknown input": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "pixels", "shape": [1], "datatype": "BYTES", "data": [b64(_good())]}]}), 400, "unknown input"),
    "oip unknown output": (lambda c: c.post("/v2/models/colours/infer", json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(_good())]}], "outputs": [{"name": "embedding"}]}), 400, "unknown output"),
    "bad top_k": (lambda c: c.post("/classify?top_k=0", json={"images": [b64(_good())]}), 422, "top_k"),
    "unknown model": (lambda c: c.post("/v1/models/nope:predict", json={"instances": [{"b64": b64(_good())}]}), 404, "nope"),
    "unknown model (oip)": (lambda c: c.get("/v2/models/nope"), 404, "nope"),
    "unknown version": (lambda c: c.post("/v1/models/colours/versions/9:predict", json={"instances": [{"b64": b64(_good())}]}), 404, "version 9"),
    "unknown version (oip)": (lambda c: c.post("/v2/models/colours/versions/2/infer", json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [b64(_good())]}]}), 404, "version 2"),
    "unknown route": (lambda c: c.get("/v3/whatever"), 404, "not found"),
    "wrong method": (lambda c: c.get("/classify"), 405, "not allowed"),
    "missing api key": (lambda c: httpx.post(str(c.base_url) + "/classify", json={"images": [b64(_good())]}), 401, "missing API key"),
    "wrong api key": (lambda c: c.post("/classify", json={"images": [b64(_good())]}, headers={"Authorization": "Bearer wrong"}), 401, "wrong API key"),
    "metrics need the key": (lambda c: httpx.get(str(c.base_url) + "/metrics"), 401, "API key"),
}


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_input_gets_a_json_4xx(client, case):
    send, status, words = BAD_REQUESTS[case]
    assert_error(send(client), status, words)


def _posts_by_status(client) -> dict[str, float]:
    """{status: count} of the POST requests the server has finished, from /metrics."""
    found: dict[str, float] = {}
    for status, n in re.findall(r'serving_requests_total\{method="POST",route="[^"]*",status="(\d+)"\} ([0-9.e+]+)',
                                client.get("/metrics").text):
        found[status] = found.get(status, 0.0) + float(n)
    return found


def test_clients_that_hang_up_mid_body_are_not_server_errors(server, client):
    import socket
    import time
    from urllib.parse import urlsplit

    before = sum(_posts_by_status(client).values())
    u = urlsplit(server.url)
    for path, ctype in (("/classify", "application/json"), ("/classify", "multipart/form-data; boundary=xyz"),
                        ("/v1/models/colours:predict", "application/json")):
        with socket.create_connection((u.hostname, u.port)) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
                      f"Content-Type: {ctype}\r\nContent-Length: 5000\r\n\r\n".encode() + b'{"images": ["')
    deadline = time.monotonic() + 30
    while sum((after := _posts_by_status(client)).values()) < before + 3:  # the server saw all three end
        assert time.monotonic() < deadline, after
        time.sleep(0.05)
    assert not [status for status in after if status.startswith("5")], after
    assert "Traceback" not in server.log_text()
    pixels = picture(321)
    r = client.post("/classify", files={"files": ("ok.png", encode(pixels))}, params={"top_k": 4})
    assert r.status_code == 200  # and it still serves
    np.testing.assert_allclose(scores_by_label(r.json()["images"][0]["top"]), expected(pixels), atol=1e-5)


def test_server_still_serves_after_bad_input_and_never_answered_5xx(client):
    for send, _, _ in BAD_REQUESTS.values():  # all of them again, back to back
        assert send(client).status_code < 500
    pixels = picture(123)
    r = client.post("/classify", files={"files": ("ok.png", encode(pixels))}, params={"top_k": 4})
    assert r.status_code == 200
    np.testing.assert_allclose(scores_by_label(r.json()["images"][0]["top"]), expected(pixels), atol=1e-5)
    metrics = client.get("/metrics").text
    assert not re.search(r'serving_requests_total\{[^}]*status="5\d\d"', metrics)


# -- /metrics --------------------------------------------------------------------------------------------
def test_metrics(client):
    client.post("/classify", json={"images": [b64(_good())]})
    text = client.get("/metrics").text
    assert 'serving_model_version{model="colours"} 1.0' in text
    assert re.search(r'serving_requests_total\{method="POST",route="/classify",status="200"\} [1-9]', text)
    assert "serving_request_duration_seconds_bucket" in text
    assert re.search(r"serving_batch_size_count [1-9]", text)
    assert 'serving_model_loads_total{model="colours",result="success"} 1.0' in text


# -- concurrency ---------------------------------------------------------------------------------------------
def test_500_requests_from_32_clients_each_get_their_own_answer(server, client):
    rng = np.random.default_rng(7)
    pics = [random_pixels(rng, 32 * int(rng.integers(1, 4)), 32 * int(rng.integers(1, 4))) for _ in range(40)]
    data = [encode(p) for p in pics]
    # single-request answers, one at a time
    single = []
    for d in data:
        r = client.post("/v1/models/colours:predict", json={"instances": [{"b64": b64(d)}]})
        single.append(np.array(r.json()["predictions"][0]))
    np.testing.assert_allclose(single, [expected(p) for p in pics], atol=1e-5)

    def batches_so_far() -> tuple[float, float]:
        text = client.get("/metrics").text
        count = float(re.search(r"serving_batch_size_count ([0-9.e+]+)", text).group(1))
        total = float(re.search(r"serving_batch_size_sum ([0-9.e+]+)", text).group(1))
        return count, total

    calls0, images0 = batches_so_far()
    n_requests, n_clients = 500, 32
    jobs = [(i, i % len(data), ("classify", "predict", "infer")[i % 3]) for i in range(n_requests)]

    async def one(c: httpx.AsyncClient, idx: int, route: str) -> np.ndarray:
        d = b64(data[idx])
        if route == "classify":
            r = await c.post("/classify", json={"images": [d]}, params={"top_k": 4})
            r.raise_for_status()
            return scores_by_label(r.json()["images"][0]["top"])
        if route == "predict":
            r = await c.post("/v1/models/colours:predict", json={"instances": [{"b64": d}]})
            r.raise_for_status()
            return np.array(r.json()["predictions"][0])
        r = await c.post("/v2/models/colours/infer",
                         json={"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES", "data": [d]}]})
        r.raise_for_status()
        return np.array(r.json()["outputs"][0]["data"])

    async def run() -> list:
        queue: asyncio.Queue = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        results: list = [None] * n_requests
        limits = httpx.Limits(max_connections=n_clients, max_keepalive_connections=n_clients)
        async with httpx.AsyncClient(base_url=server.url, headers=server.headers, timeout=60, limits=limits) as c:
            async def worker():
                while not queue.empty():
                    i, idx, route = queue.get_nowait()
                    try:
                        results[i] = await one(c, idx, route)
                    except Exception as e:  # counted below
                        results[i] = e
            await asyncio.gather(*(worker() for _ in range(n_clients)))
        return results

    results = asyncio.run(run())
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    for (i, idx, route), got in zip(jobs, results):
        np.testing.assert_allclose(got, single[idx], atol=1e-5, err_msg=f"request {i} ({route})")
    calls1, images1 = batches_so_far()
    assert images1 - images0 == n_requests
    assert calls1 - calls0 < 0.9 * n_requests  # requests from different clients shared model calls
