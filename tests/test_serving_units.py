"""Unit tests of the serving pieces that need no server: image checks, base64,
the dynamic batcher (with a stand-in model) and the SavedModel contract."""

from __future__ import annotations

import asyncio
import base64
import struct
import threading
import zlib

import numpy as np
import pytest

from serving.errors import ApiError
from serving_harness import encode, random_pixels
from serving.images import decode_base64, validate_image


# -- images ----------------------------------------------------------------------------
def png_with_header(width: int, height: int) -> bytes:
    """A tiny PNG whose IHDR claims width x height (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_with_header(width: int, height: int) -> bytes:
    """A real small JPEG with its SOF0 dimensions patched to width x height."""
    data = bytearray(encode(np.full((16, 16, 3), 90, np.uint8), "JPEG"))
    i = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, i + 5, height, width)
    return bytes(data)


def test_valid_images_report_type_and_size():
    rng = np.random.default_rng(0)
    info = validate_image(encode(random_pixels(rng, 20, 30), "PNG"), 10_000)
    assert (info.format, info.width, info.height) == ("PNG", 30, 20)
    info = validate_image(encode(random_pixels(rng, 64, 48), "JPEG"), 10_000)
    assert (info.format, info.width, info.height) == ("JPEG", 48, 64)


@pytest.mark.parametrize(
    "data, status, words",
    [
        (b"", 400, "empty"),
        (b"definitely not an image", 400, "not a JPEG, PNG, DICOM, BMP, TIFF or WebP image"),
        (b"GIF89a" + b"\0" * 20, 415, "GIF"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n" + b"\0" * 20, 415, "JPEG 2000"),
        (b"BM" + b"\0" * 40, 400, "truncated or corrupt BMP"),  # served now: a BMP that is not one
        (png_with_header(5000, 5000), 413, "25000000 pixels"),  # over our limit, under Pillow's
        (png_with_header(30000, 30000), 413, "pixels"),  # over Pillow's own bomb limit too
        (jpeg_with_header(4000, 3000), 413, "4000x3000"),
    ],
)
def test_bad_images_are_refused_with_the_right_status(data, status, words):
    with pytest.raises(ApiError) as e:
        validate_image(data, max_pixels=1_000_000)
    assert e.value.status == status
    assert words in e.value.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused_before_the_model(fmt):
    data = encode(random_pixels(np.random.default_rng(1), 64, 64), fmt)
    for cut in (len(data) // 2, len(data) - 40):
        with pytest.raises(ApiError) as e:
            validate_image(data[:cut], max_pixels=1_000_000)
        assert e.value.status == 400 and "truncated or corrupt" in e.value.message


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch):
    from PIL import ImageFile

    calls = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: calls.append(1))
    with pytest.raises(ApiError):
        validate_image(png_with_header(2000, 2000), max_pixels=1_000_000)
    assert calls == []  # refused from the header alone


def test_base64_variants():
    raw = bytes(range(256)) * 3
    std = base64.b64encode(raw).decode()
    assert decode_base64(std) == raw
    assert decode_base64(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    assert decode_base64("\n".join(std[i:i + 76] for i in range(0, len(std), 76))) == raw
    assert decode_base64("data:image/png;base64," + std) == raw
    for bad in ("not base64!", "abcde", 12, ""):
        with pytest.raises(ApiError) as e:
            decode_base64(bad)
        assert e.value.status == 400


# -- batcher -------------------------------------------------------------------------------
class FakeModel:
    """Row i = [first byte, length] of image i; records every call's batch size."""

    name = "fake"

    def __init__(self, version=1, fail_on=None):
        self.version = version
        self.calls: list[int] = []
        self.fail_on = fail_on
        self.lock = threading.Lock()

    def predict(self, images):
        import tensorflow as tf

        with self.lock:
            self.calls.append(len(images))
        if self.fail_on is not None and self.fail_on in images:
            raise tf.errors.InvalidArgumentError(None, None, "cannot decode")
        return np.array([[img[0], len(img)] for img in images], np.float32)


def run_batcher(model, requests, max_batch_size=8, timeout_ms=20.0, versions=None):
    from serving.batcher import Batcher

    async def main():
        b = Batcher(lambda: model, max_batch_size, timeout_ms, 10_000)
        await b.start()
        try:
            vs = versions or [None] * len(requests)
            return await asyncio.gather(*(b.predict(r, v) for r, v in zip(requests, vs)), return_exceptions=True)
        finally:
            await b.stop()

    return asyncio.run(main())


def test_batcher_merges_requests_and_returns_each_its_own_rows():
    rng = np.random.default_rng(0)
    requests = [[bytes([int(rng.integers(256))]) * int(rng.integers(1, 50)) for _ in range(int(rng.integers(1, 4)))]
                for _ in range(40)]
    model = FakeModel()
    results = run_batcher(model, requests, max_batch_size=8)
    for req, res in zip(requests, results):
        expected = np.array([[img[0], len(img)] for img in req], np.float32)
        np.testing.assert_array_equal(res.probabilities, expected)
    n_images = sum(len(r) for r in requests)
    assert sum(model.calls) == n_images
    assert max(model.calls) <= 8
    assert len(model.calls) <= n_images / 4  # merged, not one call per request


def test_batching_off_makes_one_call_per_image_and_big_requests_run_in_chunks():
    model = FakeModel()
    results = run_batcher(model, [[b"a", b"bb", b"ccc"], [b"d"]], max_batch_size=1)
    assert model.calls == [1, 1, 1, 1]
    np.testing.assert_array_equal(results[0].probabilities[:, 1], [1, 2, 3])
    model = FakeModel()
    results = run_batcher(model, [[bytes([i]) for i in range(20)]], max_batch_size=8)
    assert model.calls == [8, 8, 4]
    np.testing.assert_array_equal(results[0].probabilities[:, 0], np.arange(20))


def test_batcher_isolates_an_image_the_model_cannot_decode():
    model = FakeModel(fail_on=b"BAD")
    results = run_batcher(model, [[b"ok1"], [b"x", b"BAD"], [b"ok2", b"ok3"]], max_batch_size=8)
    assert isinstance(results[1], ApiError) and results[1].status == 422 and "image 1" in results[1].message
    np.testing.assert_array_equal(results[0].probabilities[:, 0], [ord("o")])
    np.testing.assert_array_equal(results[2].probabilities[:, 1], [3, 3])


def test_batcher_refuses_a_pinned_version_that_is_not_served():
    results = run_batcher(FakeModel(version=3), [[b"a"], [b"b"], [b"c"]], versions=[3, 2, None])
    assert results[0].model.version == 3 and results[2].model.version == 3
    assert isinstance(results[1], ApiError) and results[1].status == 404


# -- the SavedModel contract ------------------------------------------------------------------
@pytest.mark.slow
def test_load_version_checks_the_contract(tmp_path):
    import tensorflow as tf

    from serving.model import ModelLoadError, load_version
    from serving.toy import save_mean_colour_model

    w, b = np.eye(3, 4, dtype=np.float32) * 4, np.zeros(4, np.float32)
    ok = save_mean_colour_model(tmp_path / "ok", w, b, labels=list("abcd"))
    model = load_version(ok, "m", 7)
    assert (model.version, model.labels, model.output.name, model.output.shape) == (7, list("abcd"), "probabilities", (None, 4))

    save_mean_colour_model(tmp_path / "nolabels", w, b, output_name="scores")
    model = load_version(tmp_path / "nolabels", "m", 1)
    assert model.labels == ["0", "1", "2", "3"] and model.output.name == "scores"

    save_mean_colour_model(tmp_path / "badlabels", w, b, labels=list("abc"))
    with pytest.raises(ModelLoadError, match="3 names but the model has 4"):
        load_version(tmp_path / "badlabels", "m", 1)

    class FloatInput(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 8, 8, 3], tf.float32, name="pixels")])
        def serve(self, pixels):
            return {"probabilities": tf.nn.softmax(tf.reduce_mean(pixels, axis=[1, 2]))}

    m = FloatInput()
    tf.saved_model.save(m, str(tmp_path / "float"), signatures={"serving_default": m.serve})
    with pytest.raises(ModelLoadError, match="1-D tf.string"):
        load_version(tmp_path / "float", "m", 1)

    (tmp_path / "garbage").mkdir()
    (tmp_path / "garbage" / "saved_model.pb").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_version(tmp_path / "garbage", "m", 1)
    with pytest.raises(ModelLoadError, match="no saved_model.pb"):
        load_version(tmp_path, "m", 1)


# -- the publish rule (tfmicle.model_format) -----------------------------------------------------------
def test_parse_uint_takes_ascii_digits_only():
    from tfmicle.model_format import parse_uint

    assert [parse_uint(t) for t in ("0", "12", "007", "9" * 18)] == [0, 12, 7, 10**18 - 1]
    # str.isdigit() passes all of these; int() refuses the first, reads the next two as 3 and 12
    for text in ("²", "٣", "１２", "9" * 19, "9" * 5000, "", " 1", "-1", "1e3", "+1"):
        assert parse_uint(text) is None, text


def test_publish_rule(tmp_path):
    import json
    import os

    from tfmicle.model_format import PUBLISHED_FILE, list_versions, publish, resolve_version, unpublished_reason

    base = tmp_path / "m"
    v = base / "1"
    files = {"saved_model.pb": b"\x08" * 300, "variables/variables.index": b"i" * 40,
             "variables/variables.data-00000-of-00001": b"d" * 5000, "assets/labels.txt": b"a\nb\n"}
    for rel, data in files.items():
        (v / rel).parent.mkdir(parents=True, exist_ok=True)
        (v / rel).write_bytes(data)
    for odd in ("²", "٣", "01", ".tmp-export-2-x"):  # not version folders
        (base / odd).mkdir()
    assert list_versions(base) == [1]
    assert f"no {PUBLISHED_FILE}" in unpublished_reason(v)
    with pytest.raises(FileNotFoundError, match="no published version"):
        resolve_version(str(base))
    with pytest.raises(FileNotFoundError, match="not published"):
        resolve_version(str(v))

    publish(v)
    marker = json.loads((v / PUBLISHED_FILE).read_text())
    assert marker["files"] == {rel: len(data) for rel, data in files.items()}
    assert sorted(os.listdir(v)) == ["assets", PUBLISHED_FILE, "saved_model.pb", "variables"]  # no temp file left
    assert unpublished_reason(v) is None
    assert resolve_version(str(base)) == (str(v), 1) and resolve_version(str(v)) == (str(v), 1)

    (v / "assets/labels.txt").write_bytes(b"a\n")  # a copy still in progress
    assert "assets/labels.txt has 2 bytes" in unpublished_reason(v)
    (v / "assets/labels.txt").write_bytes(files["assets/labels.txt"])
    (v / "variables/variables.index").unlink()
    assert "variables/variables.index, listed in" in unpublished_reason(v)
    (v / "variables/variables.index").write_bytes(files["variables/variables.index"])
    assert unpublished_reason(v) is None
    (v / PUBLISHED_FILE).write_text('{"files": {"saved_mo')  # the marker itself half-copied
    assert "unreadable" in unpublished_reason(v)
    with pytest.raises(FileNotFoundError, match="nothing to publish"):
        publish(tmp_path / "empty")


def test_publish_command(tmp_path, capsys):
    from conftest import run_main
    from tfmicle.model_format import main, unpublished_reason

    code, _, err = run_main(main, ["publish", tmp_path], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nothing to publish" in err
    (tmp_path / "saved_model.pb").write_bytes(b"\x08" * 10)
    code, _, err = run_main(main, ["publish", tmp_path], capsys)
    assert code == 0, err
    assert unpublished_reason(tmp_path) is None


def test_score_opens_published_versions_only(tmp_path):
    """tfmicle.score follows the same rule as the server: an unpublished folder is refused
    with the reason (the CLI prints it as its one-line error), a published one loads."""
    from serving.toy import save_mean_colour_model
    from tfmicle.model_format import PUBLISHED_FILE
    from tfmicle.score import load_model

    version = save_mean_colour_model(tmp_path / "m" / "1", np.eye(3, 2, dtype=np.float32), np.zeros(2, np.float32),
                                     labels=["p", "q"])
    marker = (version / PUBLISHED_FILE).read_bytes()
    (version / PUBLISHED_FILE).unlink()
    for path in (version, version.parent):
        with pytest.raises(FileNotFoundError, match=f"no {PUBLISHED_FILE}"):
            load_model(str(path))
    (version / PUBLISHED_FILE).write_bytes(marker)
    assert load_model(str(version.parent)).class_names == ["p", "q"]


def test_an_unexpected_error_is_a_json_500_that_closes_the_connection(tmp_path):
    """A real server fault stays a 500, but says Connection: close: Starlette re-raises after
    the response and uvicorn then drops the connection, which a keep-alive client would
    otherwise only learn from a reset on its next request."""
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig
    from serving.repository import ModelRepository
    from tfmicle.model_format import publish

    (tmp_path / "1").mkdir()
    (tmp_path / "1" / "saved_model.pb").write_bytes(b"\x08")
    publish(tmp_path / "1")
    repository = ModelRepository(tmp_path, "fake", loader=lambda folder, name, version: FakeModel(version))
    app = create_app(ServingConfig(model_base_path=str(tmp_path), model_name="fake"), repository)

    async def boom():
        raise RuntimeError("a bug, not the client's fault")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.json() == {"error": "internal server error"}
    assert r.headers["connection"] == "close"


def test_a_parser_gap_is_a_400_and_a_server_fault_stays_one():
    from concurrent.futures import ThreadPoolExecutor

    from serving.metrics import Metrics
    from serving.state import State

    state = State(config=None, repository=None, metrics=Metrics(), batcher=None, pool=ThreadPoolExecutor(1))

    def gap(text):  # a parser that forgot a case: int("²") raises ValueError
        return int(text)

    def fault():
        raise MemoryError

    with pytest.raises(ApiError) as e:
        asyncio.run(state.offload(gap, "²"))
    assert e.value.status == 400 and "ValueError" in e.value.message
    assert 'serving_invalid_requests_total{status="400"} 1.0' in state.metrics.render().decode()
    with pytest.raises(MemoryError):
        asyncio.run(state.offload(fault))
    state.pool.shutdown()
