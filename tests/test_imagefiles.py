"""tfmicle.imagefiles (data_prep's image reader, shared with score and serving): validation,
pass-through, resizing and DICOM photometric handling."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from tfmicle.imagefiles import ImageError, ImageOptions, encode_bytes, load_image


def _jpeg(w=32, h=32, seed=0, mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode == "RGB" else (h, w)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, "JPEG")
    return buf.getvalue()


def _dicom(path, pixels: np.ndarray, photometric="MONOCHROME2", frames=1, **extra):
    """A minimal uncompressed DICOM file written with pydicom."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "OT"
    ds.PhotometricInterpretation = photometric
    ds.SamplesPerPixel = 1
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
    for k, v in extra.items():
        setattr(ds, k, v)
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_jpeg_within_max_side_passes_through_unchanged(tmp_path):
    data = _jpeg(40, 24)
    (tmp_path / "a.jpg").write_bytes(data)
    enc = load_image(str(tmp_path / "a.jpg"), ImageOptions(max_side=40))
    assert enc.data == data and enc.passthrough and enc.format == "JPEG"
    assert (enc.width, enc.height) == (40, 24)


def test_larger_image_is_resized_keeping_aspect_and_format(tmp_path):
    (tmp_path / "a.jpg").write_bytes(_jpeg(64, 48))
    enc = load_image(str(tmp_path / "a.jpg"), ImageOptions(max_side=32))
    assert not enc.passthrough and enc.format == "JPEG"
    img = Image.open(io.BytesIO(enc.data))
    assert img.format == "JPEG" and img.size == (32, 24)
    png = io.BytesIO()
    Image.fromarray(np.zeros((50, 100, 4), np.uint8), "RGBA").save(png, "PNG")
    enc = encode_bytes(png.getvalue(), "x.png", ImageOptions(max_side=20))
    assert Image.open(io.BytesIO(enc.data)).format == "PNG" and (enc.width, enc.height) == (20, 10)


def test_sixteen_bit_png_becomes_eight_bit_png():
    arr = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 200
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    enc = encode_bytes(buf.getvalue(), "x.png")
    out = _decode(enc.data)
    assert enc.format == "PNG" and out.dtype == np.uint8
    assert out.min() == 0 and out.max() == 255
    assert np.all(np.diff(out.ravel().astype(int)) >= 0)    # order of intensities kept


@pytest.mark.parametrize("payload, reason", [
    (b"", "corrupt"),
    (b"this is not an image at all", "corrupt"),
    (None, "corrupt"),          # truncated JPEG
])
def test_bad_bytes_raise_image_error(tmp_path, payload, reason):
    if payload is None:
        payload = _jpeg(32, 32)[:300]
    (tmp_path / "x.jpg").write_bytes(payload)
    with pytest.raises(ImageError, match=f"^{reason}"):
        load_image(str(tmp_path / "x.jpg"))


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.99])
def test_jpeg_truncated_late_in_the_scan_is_caught_when_passing_through(keep):
    data = _jpeg(256, 192, seed=3)
    with pytest.raises(ImageError, match="^corrupt"):
        encode_bytes(data[: int(len(data) * keep)], "x.jpg", ImageOptions(max_side=0))
    with pytest.raises(ImageError, match="^corrupt"):           # resize path as well
        encode_bytes(data[: int(len(data) * keep)], "x.jpg", ImageOptions(max_side=64))


def test_missing_file_and_directory_raise_image_error(tmp_path):
    with pytest.raises(ImageError, match="^missing"):
        load_image(str(tmp_path / "nope.jpg"))
    with pytest.raises(ImageError, match="^unreadable"):
        load_image(str(tmp_path))


def test_real_chest_radiograph_dicom_converts_with_lungs_dark():
    pydicom_data = pytest.importorskip("pydicom.data")
    import pydicom
    path = pydicom_data.get_testdata_file("RG1_UNCR.dcm", download=False)
    raw = pydicom.dcmread(path).pixel_array.astype(np.float64)     # MONOCHROME1: high = dark
    enc = load_image(path, ImageOptions(max_side=0))
    img = Image.open(io.BytesIO(enc.data))
    assert img.format == "PNG" and img.mode == "L"
    assert img.size == (1841, 1955) == (raw.shape[1], raw.shape[0])
    out = np.asarray(img).astype(np.float64)
    assert out.min() < 30 and out.max() > 220                     # full 8-bit range used
    # MONOCHROME1 must be inverted: displayed brightness falls as the stored value rises
    assert np.corrcoef(out.ravel(), raw.ravel())[0, 1] < -0.95
    h, w = out.shape
    lungs = np.concatenate([out[int(.3 * h):int(.5 * h), int(.2 * w):int(.35 * w)].ravel(),
                            out[int(.3 * h):int(.5 * h), int(.65 * w):int(.8 * w)].ravel()])
    spine = out[int(.3 * h):int(.5 * h), int(.47 * w):int(.53 * w)]
    assert lungs.mean() + 40 < spine.mean()                       # lungs dark, spine bright
    small = load_image(path, ImageOptions(max_side=256))
    assert Image.open(io.BytesIO(small.data)).size == (241, 256)


def test_dicom_modality_lut_window_and_monochrome1(tmp_path):
    ramp = np.tile(np.arange(0, 4000, 250, dtype=np.uint16), (4, 1))          # 4 x 16
    kw = dict(RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=1000, WindowWidth=4000)
    m2 = _decode(load_image(str(_dicom(tmp_path / "m2.dcm", ramp, **kw))).data)
    m1 = _decode(load_image(str(_dicom(tmp_path / "m1.dcm", ramp, "MONOCHROME1", **kw))).data)
    assert m2.shape == (4, 16) and m2.dtype == np.uint8
    # hand-computed: HU = 2 * v - 1000 spans [-1000, 6500]; window [-1000, 3000] clips the top
    hu = 2.0 * ramp[0] - 1000
    inside = hu < 3000 - 1
    assert np.all(np.diff(m2[0][inside].astype(int)) > 0)
    assert np.all(m2[0][~inside] == 255) and m2[0, 0] == 0
    np.testing.assert_array_equal(m1, 255 - m2)


def test_multiframe_dicom_is_an_error(tmp_path):
    frames = np.zeros((3, 8, 8), np.uint16)
    path = _dicom(tmp_path / "cine.dcm", frames, frames=3)
    with pytest.raises(ImageError, match="multi-frame"):
        load_image(str(path))


def test_dicom_detected_by_magic_without_extension(tmp_path):
    px = np.arange(64, dtype=np.uint16).reshape(8, 8)
    p = _dicom(tmp_path / "IM0001", px)
    out = _decode(load_image(str(p)).data)
    assert out.shape == (8, 8) and out[0, 0] == 0 and out[-1, -1] == 255
