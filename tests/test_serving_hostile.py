"""Hostile clients against a real `python -m serving` process, over raw sockets: input that
parsers turn into exceptions, input echoed back, requests uvicorn answers before the app,
and connections that stall. Every answer must be a JSON 4xx, and the server must keep
serving (on the same keep-alive connection where HTTP allows it).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import socket
import threading
import time

import numpy as np
import pytest

from serving_harness import ServerProcess, encode, random_pixels
from serving.toy import expected_mean_colour, save_mean_colour_model

pytestmark = pytest.mark.slow

LABELS = ["red", "green", "blue", "grey"]
W = np.array([[4.0, -2.0, -2.0, 0.5], [-2.0, 4.0, -2.0, 0.5], [-2.0, -2.0, 4.0, 0.5]], np.float32)
B = np.array([0.0, 0.1, -0.1, 0.2], np.float32)
HEADER_TIMEOUT, BODY_TIMEOUT, KEEP_ALIVE = 1.0, 1.0, 1.5
MAX_HEADER_BYTES = 8192
MAX_ERROR_BYTES = 400  # an error body quotes at most a 64-character excerpt of the input


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "colours"
    save_mean_colour_model(base / "1", W, B, labels=LABELS)
    with ServerProcess(base, "--poll-seconds", "0", "--header-timeout", str(HEADER_TIMEOUT),
                       "--body-timeout", str(BODY_TIMEOUT), "--keep-alive-timeout", str(KEEP_ALIVE),
                       "--max-header-bytes", str(MAX_HEADER_BYTES)) as s:
        yield s
        log = s.log_text()
    assert "Traceback" not in log, log[-3000:]


def address(server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def image_b64(seed: int = 0) -> tuple[np.ndarray, str]:
    pixels = random_pixels(np.random.default_rng(seed), 32, 32)
    return pixels, base64.b64encode(encode(pixels)).decode()


def check_json_4xx(status: int, headers, body: bytes, expect: int | None = None) -> str:
    assert 400 <= status < 500, (status, body[:300])
    if expect is not None:
        assert status == expect, (status, body[:300])
    assert headers.get("content-type", "").startswith("application/json"), headers
    assert len(body) <= MAX_ERROR_BYTES, (len(body), body[:300])
    error = json.loads(body)
    assert set(error) == {"error"} and isinstance(error["error"], str) and error["error"]
    return error["error"]


# -- hostile values in every body, path and header parser -------------------------------------------
HUGE = "9" * 5000  # over Python's 4300-digit int() limit
BIG = "1" + "0" * 40  # a valid int() but more than any field can mean
# name -> value; str.isdigit() passes the first three
ODD_DIGITS = {"superscript 2": "²", "arabic-indic 3": "٣", "fullwidth 12": "１２", "5000 digits": HUGE,
              "-5000 digits": "-" + HUGE, "1e3": "1e3", "space 7": " 7"}
VERSIONS = {k: ODD_DIGITS[k] for k in list(ODD_DIGITS)[:6]}
SHAPE = '{{"inputs": [{{"name": "images", "shape": {shape}, "datatype": "BYTES", "data": ["{img}"]}}]}}'
_, IMG = image_b64()
BINARY = json.dumps({"inputs": [{"name": "images", "shape": [1], "datatype": "BYTES",
                                 "parameters": {"binary_data_size": 4}}]}).encode() + b"\0\0\0\0"
MEGA = "n" * 1_000_000


def _json(path: str, text: str) -> tuple:
    return "POST", path, {"Content-Type": "application/json"}, text.encode()


HOSTILE = {
    # JSON bodies holding integers int() refuses or no field can hold
    "classify huge int": _json("/classify", f'{{"images": [{HUGE}]}}'),
    "classify huge int in extra key": _json("/classify", f'{{"images": ["{IMG}"], "n": {HUGE}}}'),
    "predict huge int": _json("/v1/models/colours:predict", f'{{"instances": [{{"b64": {HUGE}}}]}}'),
    "predict huge negative int": _json("/v1/models/colours:predict", f'{{"instances": [-{HUGE}]}}'),
    "oip shape huge": _json("/v2/models/colours/infer", SHAPE.format(shape=f"[{HUGE}]", img=IMG)),
    "oip shape big": _json("/v2/models/colours/infer", SHAPE.format(shape=f"[{BIG}]", img=IMG)),
    "oip shape 30 digits": _json("/v2/models/colours/infer", SHAPE.format(shape="[" + "9" * 30 + "]", img=IMG)),
    "oip shape of many big dims": _json("/v2/models/colours/infer",
                                        SHAPE.format(shape="[" + ",".join(["9" * 29] * 5000) + "]", img=IMG)),
    "oip shape float": _json("/v2/models/colours/infer", SHAPE.format(shape="[1e999]", img=IMG)),
    "oip shape NaN": _json("/v2/models/colours/infer", SHAPE.format(shape="[NaN]", img=IMG)),
    "oip parameters huge": _json("/v2/models/colours/infer",
                                 f'{{"parameters": {{"x": {HUGE}}}, "inputs": [{{"name": "images", "shape": [1], '
                                 f'"datatype": "BYTES", "data": ["{IMG}"]}}]}}'),
    "oip binary_data_size huge string": ("POST", "/v2/models/colours/infer",
                                         {"Inference-Header-Content-Length": str(len(BINARY) - 4)},
                                         BINARY.replace(b"4}", b'"' + MEGA[:100_000].encode() + b'"}')),
    "json deeply nested": _json("/classify", "[" * 100_000),
    "json lone surrogate": _json("/classify", '{"images": ["\\ud800"]}'),
    "json not utf-8": ("POST", "/classify", {"Content-Type": "application/json"}, b'{"images": ["\xff\xfe"]}'),
    # echoes: a 1 MB name, type, signature or key comes back as a short excerpt
    "oip 1 MB input name": _json("/v2/models/colours/infer",
                                 f'{{"inputs": [{{"name": "{MEGA}", "shape": [1], "datatype": "BYTES", "data": ["{IMG}"]}}]}}'),
    "oip 1 MB output name": _json("/v2/models/colours/infer",
                                  f'{{"inputs": [{{"name": "images", "shape": [1], "datatype": "BYTES", "data": ["{IMG}"]}}],'
                                  f' "outputs": [{{"name": "{MEGA}"}}]}}'),
    "oip 1 MB datatype": _json("/v2/models/colours/infer",
                               f'{{"inputs": [{{"name": "images", "shape": [1], "datatype": "{MEGA}", "data": ["{IMG}"]}}]}}'),
    "predict 1 MB signature": _json("/v1/models/colours:predict",
                                    f'{{"signature_name": "{MEGA}", "instances": [{{"b64": "{IMG}"}}]}}'),
    "classify 1 MB key": _json("/classify", f'{{"images": ["{IMG}"], "{MEGA}": 1}}'),
    "predict 1 MB key": _json("/v1/models/colours:predict", f'{{"instances": [{{"b64": "{IMG}"}}], "{MEGA}": 1}}'),
    # numeric headers and the query
    **{f"inference header length {k}": ("POST", "/v2/models/colours/infer",
                                        {"Inference-Header-Content-Length": v}, BINARY) for k, v in ODD_DIGITS.items()},
    "inference header length past the body": ("POST", "/v2/models/colours/infer",
                                              {"Inference-Header-Content-Length": "99999"}, BINARY),
    **{f"top_k {k}": ("POST", f"/classify?top_k={v}", {"Content-Type": "application/json"},
                      f'{{"images": ["{IMG}"]}}'.encode()) for k, v in (("5000 digits", HUGE), ("superscript 2", "²"),
                                                                         ("41 digits", BIG))},
    # version segments of every versioned route
    **{f"v1 status version {k}": ("GET", f"/v1/models/colours/versions/{v}", {}, b"") for k, v in VERSIONS.items()},
    **{f"v1 metadata version {k}": ("GET", f"/v1/models/colours/versions/{v}/metadata", {}, b"")
       for k, v in VERSIONS.items()},
    **{f"v1 predict version {k}": ("POST", f"/v1/models/colours/versions/{v}:predict",
                                     {"Content-Type": "application/json"},
                                     f'{{"instances": [{{"b64": "{IMG}"}}]}}'.encode()) for k, v in VERSIONS.items()},
    **{f"v2 ready version {k}": ("GET", f"/v2/models/colours/versions/{v}/ready", {}, b"") for k, v in VERSIONS.items()},
    **{f"v2 infer version {k}": ("POST", f"/v2/models/colours/versions/{v}/infer",
                                   {"Content-Type": "application/json"},
                                   SHAPE.format(shape="[1]", img=IMG).encode()) for k, v in VERSIONS.items()},
    # multipart
    "multipart bad part header": ("POST", "/classify", {"Content-Type": "multipart/form-data; boundary=xx"},
                                  b"--xx\r\nContent-Disposition: form-data; name=\xff\xfe\r\n\r\n" + b"\0" * 10
                                  + b"\r\n--xx--\r\n"),
    "multipart 1000 fields": ("POST", "/classify", {"Content-Type": "multipart/form-data; boundary=xx"},
                              b"".join(b"--xx\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i
                                       for i in range(1000)) + b"--xx--\r\n"),
    "multipart boundary of 4 KB": ("POST", "/classify", {"Content-Type": "multipart/form-data; boundary=" + "b" * 4000},
                                   b"--" + b"b" * 4000 + b"--\r\n"),
    "multipart never closed": ("POST", "/classify", {"Content-Type": "multipart/form-data; boundary=xx"},
                               b"--xx\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a.png\"\r\n\r\nabc"),
    "v1 model name of 4 KB": ("GET", "/v1/models/" + "m" * 4000, {}, b""),
    "websocket upgrade": ("GET", "/classify", {"Upgrade": "websocket", "Connection": "Upgrade",
                                               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                               "Sec-WebSocket-Version": "13"}, b""),
    "v1 model name of invalid UTF-8": ("GET", "/v1/models/%ff%fe%00", {}, b""),
    "v2 model name of control characters": ("GET", "/v2/models/%0d%0a%1b[31m", {}, b""),
    "content type of 4 KB": ("POST", "/classify", {"Content-Type": "x/" + "y" * 4000}, b"{}"),
}


def _send(conn: http.client.HTTPConnection, method: str, path: str, headers: dict, body: bytes):
    from urllib.parse import quote

    raw = {k: v.encode("utf-8") for k, v in headers.items()}  # non-Latin-1 digits go out as UTF-8 bytes
    conn.request(method, quote(path, safe="/:?=&%"), body=body or None, headers=raw)
    r = conn.getresponse()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_input_gets_a_json_4xx_and_the_connection_keeps_serving(server, case):
    method, path, headers, body = HOSTILE[case]
    conn = http.client.HTTPConnection(*address(server), timeout=30)
    try:
        _send(conn, "GET", "/v2/health/live", {}, b"")
        sock = conn.sock
        status, got_headers, reply = _send(conn, method, path, headers, body)
        error = check_json_4xx(status, got_headers, reply)
        assert "n" * 100 not in error and "9" * 100 not in error  # no long echo
        assert got_headers.get("connection", "").lower() != "close", got_headers
        status, _, reply = _send(conn, "GET", "/v2/health/ready", {}, b"")
        assert status == 200 and json.loads(reply) == {"ready": True}
        assert conn.sock is sock  # the same keep-alive connection answered
    finally:
        conn.close()


def test_a_1_mb_name_comes_back_as_a_short_escaped_excerpt(server):
    conn = http.client.HTTPConnection(*address(server), timeout=30)
    name = "<x>\n\"" + "n" * 1_000_000
    body = json.dumps({"inputs": [{"name": name, "shape": [1], "datatype": "BYTES", "data": [IMG]}]})
    status, headers, reply = _send(conn, "POST", "/v2/models/colours/infer", {"Content-Type": "application/json"},
                                   body.encode())
    conn.close()
    error = check_json_4xx(status, headers, reply, 400)
    assert "unknown input '<x>\\n\"nnnn" in error and "(1000005 chars)" in error, error
    assert "\n" not in error and error.count("n") < 80


# -- what uvicorn answers before the app: JSON too, and the connection closes -------------------------
PROTOCOL_ERRORS = {
    "URL over --max-header-bytes": (b"GET /v1/models/" + b"m" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 431),
    "header over --max-header-bytes": (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"v" * 20_000 + b"\r\n\r\n", 431),
    "Content-Length not a number": (b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n", 400),
    "Content-Length of 5000 digits": (b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: "
                                      + HUGE.encode() + b"\r\n\r\n", 400),
    "Content-Length non-ASCII digit": ("POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: ²\r\n\r\n".encode(), 400),
    "two Content-Lengths": (b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
    "garbage request line": (b"\x00\x01\x02 not http\r\n\r\n", 400),
    "raw non-ASCII byte in the path": (b"GET /v1/models/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "bad chunked body": (b"POST /classify HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                         b"Content-Type: application/json\r\n\r\nzz\r\n", 400),
}


def read_response(sock: socket.socket, timeout: float = 10.0) -> tuple[int, dict, bytes, bool]:
    """(status, headers, body, closed afterwards) of one response on a raw socket."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed without a response: {data[:200]!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        body += sock.recv(65536)
    try:
        closed = sock.recv(1) == b""
    except (ConnectionResetError, TimeoutError, socket.timeout):
        closed = False
    return status, headers, body, closed


@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
def test_requests_uvicorn_refuses_get_json_too(server, case):
    raw, expect = PROTOCOL_ERRORS[case]
    with socket.create_connection(address(server)) as s:
        s.sendall(raw)
        status, headers, body, closed = read_response(s)
    error = check_json_4xx(status, headers, body, expect)
    assert headers.get("connection") == "close" and closed, (headers, closed)
    assert "Traceback" not in error
    with contextlib.closing(http.client.HTTPConnection(*address(server), timeout=30)) as conn:  # and the server still serves
        assert _send(conn, "GET", "/v2/health/ready", {}, b"")[0] == 200


# -- stalled connections ----------------------------------------------------------------------------
def closed_within(sock: socket.socket, limit: float) -> tuple[float, bytes]:
    """Seconds until the server closed the socket (reading whatever it sent first)."""
    start = time.monotonic()
    sock.settimeout(limit)
    got = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        got += chunk
    return time.monotonic() - start, got


def test_stalled_clients_are_disconnected_while_others_are_served(server):
    host, port = address(server)
    pixels, img = image_b64(7)
    stalled = {
        "silent": b"",
        "half request line": b"POST /clas",
        "half headers": b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: applic",
        "half body": b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 5000\r\n\r\n{\"images\": [\"",
    }
    socks = {}
    many = []
    for name, data in stalled.items():
        socks[name] = socket.create_connection((host, port))
        if data:
            socks[name].sendall(data)
    for _ in range(100):  # and many more: the limit is the timeout, not the file descriptors
        s = socket.create_connection((host, port))
        s.sendall(b"GET /v2/hea")
        many.append(s)
    # a well-behaved client on a kept-alive connection, idle between requests for less than the
    # keep-alive timeout, is served all along
    answers = []

    def good_client():
        with contextlib.closing(http.client.HTTPConnection(host, port, timeout=30)) as conn:
            for _ in range(6):
                body = json.dumps({"images": [img]}).encode()
                status, _, reply = _send(conn, "POST", "/classify?top_k=4", {"Content-Type": "application/json"}, body)
                answers.append((status, json.loads(reply)))
                time.sleep(0.3)

    t = threading.Thread(target=good_client)
    t.start()
    slack = 3.0  # a loaded 2-core machine
    results = {}
    for name, s in socks.items():
        results[name] = closed_within(s, HEADER_TIMEOUT + BODY_TIMEOUT + slack)
        s.close()
    t.join()
    many_closed = []
    for s in many:
        many_closed.append(closed_within(s, HEADER_TIMEOUT + slack)[0] < HEADER_TIMEOUT + slack)
        s.close()

    for name, (elapsed, got) in results.items():
        limit = BODY_TIMEOUT if name == "half body" else HEADER_TIMEOUT
        assert elapsed < limit + slack, (name, elapsed)
    assert results["silent"][1] == b""  # nothing sent, nothing answered: just closed
    for name in ("half request line", "half headers"):
        assert results[name][1].startswith(b"HTTP/1.1 408 "), results[name][1][:200]
        assert b"--header-timeout" in results[name][1]
    assert results["half body"][1].startswith(b"HTTP/1.1 408 ") and b"--body-timeout" in results["half body"][1]
    assert all(many_closed), sum(many_closed)
    assert len(answers) == 6 and all(status == 200 for status, _ in answers), answers[:1]
    want = expected_mean_colour(pixels, W, B)
    for _, body in answers:
        got = {x["label"]: x["score"] for x in body["images"][0]["top"]}
        np.testing.assert_allclose([got[k] for k in LABELS], want, atol=1e-5)


def test_a_refused_body_that_stalls_is_closed(server):
    """After an early 413 uvicorn goes on reading the body the client still sends; a client
    that stalls in it is closed after the header timeout (uvicorn alone never closed it)."""
    with socket.create_connection(address(server)) as s:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 900000000\r\n\r\n")
        s.settimeout(10)
        assert s.recv(65536).startswith(b"HTTP/1.1 413 ")
        s.sendall(b'{"images": ["' + b"A" * 1000)  # more of the refused body, then nothing
        elapsed, _ = closed_within(s, HEADER_TIMEOUT + 3.0)
    assert elapsed < HEADER_TIMEOUT + 3.0, elapsed


def test_header_timeout_counts_from_the_first_byte_not_between_bytes(server):
    """A client that drips a byte at a time is cut off at the header timeout all the same."""
    host, port = address(server)
    request = b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
    with socket.create_connection((host, port)) as s:
        start = time.monotonic()
        closed_at = None
        for i in range(len(request)):
            try:
                s.sendall(request[i:i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.monotonic() - start
                break
            time.sleep(0.1)
            s.settimeout(0.001)
            try:
                if s.recv(65536).startswith(b"HTTP/1.1 408"):
                    closed_at = time.monotonic() - start
                    break
            except (BlockingIOError, socket.timeout, TimeoutError):
                pass
        assert closed_at is not None and closed_at < HEADER_TIMEOUT + 3.0, closed_at


def test_idle_keep_alive_connections_are_closed(server):
    with contextlib.closing(http.client.HTTPConnection(*address(server), timeout=30)) as conn:
        assert _send(conn, "GET", "/v2/health/live", {}, b"")[0] == 200
        elapsed, got = closed_within(conn.sock, KEEP_ALIVE + 3.0)
    assert got == b"" and KEEP_ALIVE - 0.5 < elapsed < KEEP_ALIVE + 3.0, elapsed
