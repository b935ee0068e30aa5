"""Serving takes DICOM, TIFF, BMP and WebP besides JPEG and PNG, converted on the server by
tfmicle.imagefiles (the code data_prep writes records with), on all three API surfaces;
what cannot become one image (a multi-frame DICOM, a transfer syntax nothing here
decodes) is a 415, and the pixel limit comes before any decoding. In-process
(FastAPI's TestClient) against the mean-colour model of ``serving.toy``."""

from __future__ import annotations

import base64
import csv
import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from serving.errors import ApiError
from serving.images import validate_image
from serving.toy import expected_mean_colour, save_mean_colour_model

from test_imagefiles import _dicom

pytest.importorskip("httpx")  # TestClient's transport

LABELS = ["red", "green", "blue", "grey"]
W = np.array([[4.0, -2.0, -2.0, 0.5], [-2.0, 4.0, -2.0, 0.5], [-2.0, -2.0, 4.0, 0.5]], np.float32)
B = np.array([0.0, 0.1, -0.1, 0.2], np.float32)
SIZE = 8  # the toy model's resize: sides that are multiples of it keep the mean exactly


@pytest.fixture(scope="module")
def model_base(tmp_path_factory):
    base = tmp_path_factory.mktemp("models") / "colours"
    save_mean_colour_model(base / "1", W, B, labels=LABELS, size=SIZE)
    return base


@pytest.fixture(scope="module")
def client(model_base):
    from fastapi.testclient import TestClient

    from serving.app import create_app
    from serving.config import ServingConfig

    with TestClient(create_app(ServingConfig(model_base_path=str(model_base), poll_seconds=0))) as c:
        yield c


def pillow_bytes(pixels: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, **kw)
    return buf.getvalue()


def dicom_bytes(tmp_path, gray: np.ndarray, **kw) -> bytes:
    return _dicom(tmp_path / "x.dcm", gray, **kw).read_bytes()


def grey_ramp(rng: np.random.Generator) -> np.ndarray:
    """16 x 24 values spanning exactly 0..255, so the 8-bit scaling is the identity."""
    g = rng.integers(0, 256, (16, 24)).astype(np.uint16)
    g[0, 0], g[0, 1] = 0, 255
    return g


def sample(kind: str, tmp_path, seed: int = 0) -> tuple[bytes, np.ndarray]:
    """(file bytes, the HxWx3 pixels the model should see)."""
    rng = np.random.default_rng(seed)
    if kind == "DICOM":
        g = grey_ramp(rng)
        return dicom_bytes(tmp_path, g), np.repeat(g[..., None], 3, axis=-1).astype(np.uint8)
    rgb = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)
    kw = {"lossless": True} if kind == "WEBP" else {}
    return pillow_bytes(rgb, kind, **kw), rgb


def probs(top: list[dict]) -> np.ndarray:
    d = {x["label"]: x["score"] for x in top}
    return np.array([d[label] for label in LABELS])


def assert_error(r, status: int, words: str) -> None:
    assert r.status_code == status, (r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error"} and words.lower() in body["error"].lower(), body


@pytest.mark.parametrize("kind", ["TIFF", "BMP", "WEBP", "DICOM"])
def test_each_new_type_is_classified_from_its_pixels(client, tmp_path, kind):
    data, pixels = sample(kind, tmp_path)
    r = client.post("/classify", files={"files": (f"x.{kind.lower()}", data)}, params={"top_k": 4})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(probs(r.json()["images"][0]["top"]), expected_mean_colour(pixels, W, B),
                               atol=1e-5)


def test_new_types_on_the_tf_serving_and_open_inference_routes(client, tmp_path):
    (tif, tif_px), (dcm, dcm_px), (bmp, bmp_px) = (sample(k, tmp_path, s) for s, k in
                                                   enumerate(("TIFF", "DICOM", "BMP")))
    want = np.stack([expected_mean_colour(p, W, B) for p in (tif_px, dcm_px, bmp_px)])
    b64 = [base64.b64encode(d).decode() for d in (tif, dcm, bmp)]
    r = client.post("/v1/models/colours:predict", json={"instances": [{"b64": s} for s in b64]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(r.json()["predictions"], want, atol=1e-5)
    r = client.post("/v2/models/colours/infer", json={"inputs": [
        {"name": "images", "shape": [3], "datatype": "BYTES", "data": b64}]})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.reshape(r.json()["outputs"][0]["data"], (3, 4)), want, atol=1e-5)
    # the binary tensor extension: length-prefixed raw bytes after a JSON header
    header = ('{"inputs": [{"name": "images", "shape": [3], "datatype": "BYTES", '
              '"parameters": {"binary_data_size": %d}}]}'
              % sum(4 + len(d) for d in (tif, dcm, bmp))).encode()
    blob = b"".join(struct.pack("<I", len(d)) + d for d in (tif, dcm, bmp))
    r = client.post("/v2/models/colours/infer", content=header + blob, headers={
        "Content-Type": "application/octet-stream", "Inference-Header-Content-Length": str(len(header))})
    assert r.status_code == 200, r.text
    np.testing.assert_allclose(np.reshape(r.json()["outputs"][0]["data"], (3, 4)), want, atol=1e-5)


def test_a_multi_frame_dicom_is_415_on_every_route(client, tmp_path):
    data = dicom_bytes(tmp_path, np.zeros((3, 16, 16), np.uint16), frames=3)
    s = base64.b64encode(data).decode()
    for r in (client.post("/classify", files={"files": ("cine.dcm", data)}),
              client.post("/v1/models/colours:predict", json={"instances": [{"b64": s}]}),
              client.post("/v2/models/colours/infer", json={"inputs": [
                  {"name": "images", "shape": [1], "datatype": "BYTES", "data": [s]}]})):
        assert_error(r, 415, "multi-frame DICOM (3 frames)")


def test_a_dicom_in_a_transfer_syntax_nothing_here_decodes_is_415(client, tmp_path):
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    if get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS decoder is installed here")
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(tmp_path, np.zeros((16, 16), np.uint16))))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not really JPEG-LS"])
    ds["PixelData"].VR = "OB"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    r = client.post("/classify", files={"files": ("ls.dcm", buf.getvalue())})
    assert_error(r, 415, "transfer syntax JPEG-LS Lossless Image Compression (1.2.840.10008.1.2.4.80)")


def test_other_recognised_types_are_still_415(client):
    gif = pillow_bytes(np.zeros((8, 8), np.uint8), "GIF")
    assert_error(client.post("/classify", files={"files": ("x.gif", gif)}), 415,
                 "is GIF; this server takes JPEG, PNG, DICOM, BMP, TIFF or WebP images")


def test_the_pixel_limit_comes_before_any_dicom_decoding(tmp_path, monkeypatch):
    import tfmicle.imagefiles.encode as enc

    def never(data):
        raise AssertionError("pixels decoded")

    monkeypatch.setattr(enc, "dicom_to_uint8", never)
    data = dicom_bytes(tmp_path, np.zeros((64, 80), np.uint16))
    with pytest.raises(ApiError) as e:
        validate_image(data, max_pixels=64 * 80 - 1)
    assert e.value.status == 413 and "80x64 = 5120 pixels" in e.value.message
    for fmt in ("TIFF", "BMP", "WEBP"):
        big = pillow_bytes(np.zeros((64, 80, 3), np.uint8), fmt)
        with pytest.raises(ApiError) as e:
            validate_image(big, max_pixels=1000)
        assert e.value.status == 413 and "80x64" in e.value.message


def test_exif_orientation_is_applied_and_a_broken_file_is_400():
    rng = np.random.default_rng(4)
    im = Image.fromarray(rng.integers(0, 256, (16, 24, 3), dtype=np.uint8))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    buf = io.BytesIO()
    im.save(buf, "WEBP", lossless=True, exif=exif.tobytes())
    info = validate_image(buf.getvalue(), max_pixels=10_000)
    assert (info.format, info.width, info.height) == ("WebP", 16, 24)  # upright size
    got = Image.open(io.BytesIO(info.data))
    assert got.format == "PNG" and got.size == (16, 24)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ImageOps.exif_transpose(
        Image.open(io.BytesIO(buf.getvalue())))))
    tif = pillow_bytes(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), "TIFF")
    with pytest.raises(ApiError) as e:
        validate_image(tif[: len(tif) // 2], max_pixels=10_000)
    assert e.value.status == 400 and "truncated or corrupt TIFF" in e.value.message


@pytest.mark.slow
def test_a_real_chest_radiograph_scores_the_same_served_and_batch_scored(client, model_base, tmp_path):
    """pydicom-data's CR (MONOCHROME1, VOI window): the probabilities /classify returns
    are the ones tfmicle.score writes for the same file."""
    pydicom_data = pytest.importorskip("pydicom.data")
    from tfmicle import score

    path = pydicom_data.get_testdata_file("RG1_UNCR.dcm", download=False)
    data = open(path, "rb").read()
    r = client.post("/classify", files={"files": ("RG1_UNCR.dcm", data)}, params={"top_k": 4})
    assert r.status_code == 200, r.text
    served = probs(r.json()["images"][0]["top"])
    folder = tmp_path / "cr"
    folder.mkdir()
    (folder / "RG1_UNCR.dcm").write_bytes(data)
    score.score(str(model_base), str(folder), str(tmp_path / "out"),
                score.ScoreOptions(replicates=0, report=False))
    with open(tmp_path / "out" / "predictions_images.csv", newline="") as f:
        (row,) = list(csv.DictReader(f))
    scored = np.array([float(row[f"prob_{label}"]) for label in LABELS])
    np.testing.assert_allclose(served, scored, atol=1e-6)
    assert abs(served.sum() - 1) < 1e-5 and served.std() > 1e-3  # a real, non-uniform answer
