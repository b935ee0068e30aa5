"""/docs and /redoc work with no network but the server's: every file their pages load is
served by the app itself (serving.docs), read-only and confined to its folder, behind the
same API key rule as the other routes; and a headless Chromium that can reach only
127.0.0.1 renders every route of the OpenAPI document on both pages."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time

import pytest

from serving.docs import ASSETS, ASSETS_URL, assets_dir

from test_serving_units import FakeModel

pytest.importorskip("httpx")  # TestClient's transport

KEY = "docs-key-123"
PAGES = ("/docs", "/redoc")
# URLs a page loads: attributes, and the JavaScript object keys of FastAPI's page templates
_REFS = re.compile(r"""(?:\b(?:src|href|spec-url)\s*=\s*|\burl\s*:\s*)["']([^"']+)["']""")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # Debian's package is chromium


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.repository import ModelRepository
    from tfmicle.model_format import publish

    base = tmp_path_factory.mktemp("fake")
    (base / "1").mkdir()
    (base / "1" / "saved_model.pb").write_bytes(b"\x08")
    publish(base / "1")
    repository = ModelRepository(base, "fake", loader=lambda folder, name, version: FakeModel(version))
    app = create_app(ServingConfig(model_base_path=str(base), model_name="fake", api_key=KEY), repository)
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.mark.parametrize("page", PAGES)
def test_every_file_a_docs_page_loads_is_served_here(client, page):
    r = client.get(page)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    refs = _REFS.findall(r.text)
    assert "/openapi.json" in refs and any(ref.startswith(ASSETS_URL + "/") for ref in refs), refs
    assert not re.search(r"https?:|//", " ".join(refs)), refs  # nothing off-host, no scheme-relative URL
    assert not re.search(r"https?://", r.text), "an absolute URL in the page"
    for ref in refs:
        assert ref.startswith("/"), ref
        got = client.get(ref)
        assert got.status_code == 200 and got.content, (ref, got.status_code)
        kind = got.headers["content-type"].split(";")[0]
        assert kind in ("application/json", "text/javascript", "application/javascript", "text/css", "image/png"), \
            (ref, kind)


def test_the_asset_package_holds_every_file_the_pages_name():
    folder = assets_dir()
    assert all((folder / name).stat().st_size > 0 for name in ASSETS)


def test_docs_pages_and_files_need_the_key_as_every_route_but_health_does(client):
    for path in (*PAGES, "/openapi.json", f"{ASSETS_URL}/{ASSETS[0]}"):
        r = client.get(path, headers={"Authorization": ""})
        assert r.status_code == 401 and "API key" in r.json()["error"], path
        assert client.get(path).status_code == 200, path
    assert client.get("/v2/health/live", headers={"Authorization": ""}).status_code == 200


def asgi_get(app, path: str, method: str = "GET") -> tuple[int, bytes]:
    """One request with this exact path (an HTTP client would remove dot segments)."""
    import asyncio

    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"testserver"), (b"authorization", f"Bearer {KEY}".encode())],
             "client": ("127.0.0.1", 1), "server": ("testserver", 80)}
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")


def test_the_asset_route_is_read_only_and_stays_in_its_folder(client):
    app = client.app
    assert (assets_dir().parent / "core.py").is_file()  # what an escape one level up would read
    # ASGI paths arrive percent-decoded: "../" here is also what %2e%2e%2f becomes (the
    # browser test sends those encoded to the real server)
    for path in (f"{ASSETS_URL}/../core.py", f"{ASSETS_URL}/../../serving/docs.py", f"{ASSETS_URL}/./../core.py",
                 f"{ASSETS_URL}//etc/passwd", f"{ASSETS_URL}/../../../../../../etc/passwd", f"{ASSETS_URL}/",
                 f"{ASSETS_URL}/\x00"):
        status, body = asgi_get(app, path)
        assert status == 404 and b"import" not in body and b"root:" not in body, (path, status, body[:80])
    for method in ("PUT", "POST", "DELETE", "PATCH"):
        assert asgi_get(app, f"{ASSETS_URL}/{ASSETS[0]}", method)[0] == 405, method
    assert asgi_get(app, f"{ASSETS_URL}/{ASSETS[0]}", "HEAD")[0] == 200


# -- a real browser ------------------------------------------------------------------


def find_browser() -> str:
    """A headless Chromium on PATH. Missing: a failure under CI (CI=true), else a skip."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    msg = (f"needs a headless Chromium ({' or '.join(BROWSERS)} on PATH; "
           "setup.sh installs Debian's chromium package)")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def rendered_dom(browser: str, url: str, profile: str) -> str:
    """The page's DOM after its scripts ran, in a Chromium that can reach 127.0.0.1 only."""
    args = [browser, "--headless", "--disable-gpu", "--no-first-run", f"--user-data-dir={profile}",
            # offline, explicitly: no name resolves except 127.0.0.1, and any other address
            # (an IP literal) goes to a proxy that is not there
            "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
            "--proxy-server=127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
            # virtual time waits for pending requests: the DOM is dumped after the page
            # fetched /openapi.json and rendered it
            "--virtual-time-budget=20000", "--dump-dom", url]
    if os.geteuid() == 0:
        args.insert(1, "--no-sandbox")  # Chromium's sandbox refuses to run as root (CI is root)
    out = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def raw_get(base_url: str, path: str) -> tuple[int, bytes]:
    import http.client
    from urllib.parse import urlsplit

    where = urlsplit(base_url)
    conn = http.client.HTTPConnection(where.hostname, where.port, timeout=30)
    try:
        conn.putrequest("GET", path, skip_accept_encoding=True)
        conn.endheaders()
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


@pytest.mark.slow
def test_a_browser_with_no_network_renders_every_route_on_both_pages(tmp_path):
    import httpx
    import numpy as np

    from serving_harness import ServerProcess
    from serving.toy import save_mean_colour_model

    browser = find_browser()
    save_mean_colour_model(tmp_path / "colours" / "1", np.eye(3, 4, dtype=np.float32), np.zeros(4, np.float32),
                           labels=["a", "b", "c", "d"])
    # No API key: a browser opening a page sends no Authorization header (the key rule of
    # these routes is the in-process test above).
    with ServerProcess(tmp_path / "colours", "--poll-seconds", "0") as server:
        spec = httpx.get(server.url + "/openapi.json", timeout=30).json()
        operations = {(path, op["operationId"]) for path, item in spec["paths"].items() for op in item.values()}
        assert ("/classify", "classify_classify_post") in operations  # what the page must show
        start = time.perf_counter()
        swagger = rendered_dom(browser, server.url + "/docs", tempfile.mkdtemp(dir=tmp_path))
        redoc = rendered_dom(browser, server.url + "/redoc", tempfile.mkdtemp(dir=tmp_path))
        seconds = time.perf_counter() - start
        for raw in (f"{ASSETS_URL}/%2e%2e/core.py", f"{ASSETS_URL}/..%2fcore.py", f"{ASSETS_URL}/%2e%2e%2f%2e%2e%2fdocs.py"):
            status, body = raw_get(server.url, raw)  # sent as written, undecoded by any client
            assert status == 404 and b"import" not in body, (raw, status, body[:80])
        log = server.log_text()
    # Swagger UI draws one opblock per operation, its path in data-path; ReDoc one section per
    # operationId. The description names /classify too, so the text alone would prove nothing.
    for path, operation_id in sorted(operations):
        assert f'data-path="{path}"' in swagger, f"Swagger UI did not render {path}"
        assert f'data-section-id="operation/{operation_id}"' in redoc, f"ReDoc did not render {operation_id}"
    for name in ASSETS:  # the browser took every file from this server
        assert re.search(rf"GET {re.escape(ASSETS_URL)}/{re.escape(name)} 200", log), name
    assert "Traceback" not in log
    assert seconds < 120, seconds
