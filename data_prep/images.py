"""Reading one source image into bytes fit for ``image/encoded``.

Every image is decoded once with Pillow to validate it. JPEG and PNG files whose
longer side is within ``max_side`` and that carry no EXIF rotation pass through byte
for byte; larger or rotated ones are resized / turned upright and re-encoded (JPEG
stays JPEG, everything else becomes PNG; the EXIF Orientation tag is dropped). DICOM
files get the modality and VOI LUTs, MONOCHROME1 inversion and 8-bit scaling, and
become PNG.

The bytes that go into a record are then decoded once more with TensorFlow's decoder,
the one training uses (``decode_error``): Pillow accepts some files that TensorFlow
rejects (a JPEG without its end-of-image marker). Such a file is re-encoded from what
Pillow decoded, and skipped only if that fails too. TensorFlow is imported lazily, in
the worker, on the first check.
"""
from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from tfmicle import fileio

# Decompression-bomb guard stays on (PIL's default), but as an error, not a warning.
Image.MAX_IMAGE_PIXELS = 30_000 * 30_000
# The image types data_prep prepares and tfmicle.score scores (one list for both).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".dcm", ".dicom", ".bmp", ".tif",
                    ".tiff", ".gif", ".webp")
DICOM_EXTENSIONS = (".dcm", ".dicom")
EXIF_ORIENTATION = 0x0112       # TIFF/EXIF tag 274; 1 = upright, 5-8 swap width and height


def is_image_file(name: str) -> bool:
    """A file data_prep reads as an image (and tfmicle.score scores): by extension, no
    hidden files."""
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


class ImageError(Exception):
    """An image that cannot be used; the message is the reason written to skipped.csv."""


@dataclass(frozen=True)
class ImageOptions:
    max_side: int = 1024        # 0: never resize
    jpeg_quality: int = 95


@dataclass
class EncodedImage:
    data: bytes
    format: str                 # "JPEG" | "PNG"
    width: int
    height: int
    passthrough: bool           # True when data are the source bytes unchanged


def is_dicom(path: str, head: bytes) -> bool:
    return head[128:132] == b"DICM" or path.lower().endswith(DICOM_EXTENSIONS)


def load_image(path: str, options: ImageOptions = ImageOptions()) -> EncodedImage:
    """Reads, validates and (if needed) converts one image file. Raises ImageError."""
    if fileio.is_url(path):
        _import_tf()                        # the worker's TF set-up before gfile imports it
    try:
        data = fileio.read_bytes(path)      # a local path or a URL (gs://, ram://...)
    except FileNotFoundError:
        raise ImageError("missing: file not found") from None
    except IsADirectoryError:
        raise ImageError("unreadable: is a directory") from None
    except OSError as e:
        raise ImageError(f"unreadable: {e.strerror or e}") from None
    return encode_bytes(data, path, options)


def encode_bytes(data: bytes, path: str = "", options: ImageOptions = ImageOptions()) -> EncodedImage:
    """Same as load_image for bytes already read (``path`` only names the source)."""
    if not data:
        raise ImageError("corrupt: empty file")
    if is_dicom(path, data[:132]):
        return checked(_from_array(dicom_to_uint8(data), options), data, options)
    img, fmt, rotated, size = _open_checked(data, options, draft=True)
    if fmt == "MPO":                    # camera JPEG with an embedded preview: a JPEG
        fmt = "JPEG"
    elif getattr(img, "n_frames", 1) > 1:
        raise ImageError(f"unsupported: multi-frame {fmt} ({img.n_frames} frames)")
    w, h = _upright_size(size, rotated)
    fits = _fit(w, h, options.max_side) == (w, h) and not rotated
    if fmt == "JPEG" and img.mode in ("L", "RGB") and fits:
        return checked(EncodedImage(data, "JPEG", w, h, True), data, options)
    if fmt == "PNG" and img.mode in ("L", "LA", "RGB", "RGBA", "P") and fits:
        return checked(EncodedImage(data, "PNG", w, h, True), data, options)
    return checked(_reencode(img, fmt, rotated, (w, h), options), data, options)


def _reencode(img: Image.Image, fmt: str, rotated: int, upright: tuple[int, int],
              options: ImageOptions) -> EncodedImage:
    """Re-encodes a decoded image upright, at the size ``upright`` (w, h) fits into."""
    if rotated:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(_to_uint8(np.asarray(img)), options)
    return _encode(_normalise_mode(img), options, "JPEG" if fmt == "JPEG" else "PNG",
                   _fit(upright[0], upright[1], options.max_side))


def _orientation(img: Image.Image) -> int:
    """The EXIF Orientation (1..8) of an opened image; 1 when absent or invalid."""
    try:
        o = int(img.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:                   # a damaged EXIF block: treat as upright
        return 1
    return o if 1 <= o <= 8 else 1


def _upright_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _open_checked(data: bytes, options: ImageOptions, draft: bool
                  ) -> tuple[Image.Image, str, int, tuple[int, int]]:
    """Opens and fully decodes ``data`` with Pillow; returns (image, format, EXIF
    orientation to undo or 0 when upright, stored (w, h) before any draft scaling).
    JPEGs are decoded at a reduced scale when ``draft``."""
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format
        w, h = img.size
        orientation = _orientation(img)
        rotated = orientation if orientation != 1 else 0
        uw, uh = _upright_size((w, h), orientation)
        target = _fit(uw, uh, options.max_side)
        if draft and fmt in ("JPEG", "MPO") and img.mode in ("L", "RGB"):
            # libjpeg entropy-decodes the whole stream whatever the scale, so truncated
            # or damaged data fail just the same; only the IDCT runs at a reduced size:
            # 1/8 when the bytes pass through, the smallest scale >= target otherwise.
            if target != (uw, uh) or rotated:
                img.draft(img.mode, _upright_size(target, orientation))
            else:
                img.draft(img.mode, (max(1, (w + 7) // 8), max(1, (h + 7) // 8)))
        img.load()                      # decode: truncated/corrupt data raise here
    except Image.DecompressionBombError as e:
        raise ImageError(f"too large: {e}") from None
    except Image.UnidentifiedImageError:
        raise ImageError("corrupt: not a readable image (unknown format or damaged header)") \
            from None
    except Exception as e:              # PIL raises many types for bad data
        raise ImageError(f"corrupt: {type(e).__name__}: {e}") from None
    if w < 1 or h < 1:
        raise ImageError("corrupt: zero-size image")
    return img, fmt, rotated, (w, h)


def checked(enc: EncodedImage, source: bytes, options: ImageOptions) -> EncodedImage:
    """``enc`` if TensorFlow decodes its bytes; a passthrough image that TensorFlow
    rejects is re-encoded from a full Pillow decode. Raises ImageError otherwise."""
    err = decode_error(enc.data)
    if err is None:
        return enc
    if enc.passthrough:
        img, fmt, rotated, size = _open_checked(source, options, draft=False)
        enc = _reencode(img, "JPEG" if fmt in ("JPEG", "MPO") else fmt, rotated,
                        _upright_size(size, rotated), options)
        if decode_error(enc.data) is None:
            return enc
    raise ImageError(f"corrupt: TensorFlow cannot decode it ({err})")


_tf = None


def decode_error(data: bytes, full: bool = False) -> str | None:
    """None when TensorFlow's image decoder (the one training uses) reads ``data``;
    otherwise its error's first line. JPEGs are checked at 1/8 scale unless ``full``:
    libjpeg entropy-decodes the whole stream at every scale, so the verdict is the same."""
    tf = _import_tf()
    try:
        if data[:3] == b"\xff\xd8\xff" and not full:
            tf.io.decode_jpeg(data, ratio=8)
        else:
            tf.io.decode_image(data, expand_animations=False)
    except (tf.errors.OpError, ValueError) as e:
        msg = str(getattr(e, "message", e)).strip().splitlines()
        return (msg[0] if msg else type(e).__name__)[:200]
    return None


def _import_tf():
    """TensorFlow, imported once per process; in a worker process (TF not imported yet)
    with its console logging off and one thread (the workers are the parallelism)."""
    global _tf
    if _tf is None:
        if "tensorflow" not in sys.modules:
            # a worker process: its decode failures are reported in skipped.csv, so
            # TensorFlow's own error lines for them would only be noise on the console
            os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
        import tensorflow as tf
        try:                            # one thread per worker: the workers are the parallelism
            tf.config.threading.set_intra_op_parallelism_threads(1)
            tf.config.threading.set_inter_op_parallelism_threads(1)
        except RuntimeError:            # already initialised (e.g. in the main process)
            pass
        _tf = tf
    return _tf


def _fit(w: int, h: int, max_side: int) -> tuple[int, int]:
    """(w, h) scaled so that the longer side is max_side; unchanged when it fits."""
    if max_side <= 0 or max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def _normalise_mode(img: Image.Image) -> Image.Image:
    if img.mode in ("L", "RGB"):
        return img
    if img.mode in ("LA", "RGBA", "PA") or (img.mode == "P" and "transparency" in img.info):
        return img.convert("RGBA")
    if img.mode == "1":
        return img.convert("L")
    return img.convert("RGB")


def _encode(img: Image.Image, options: ImageOptions, fmt: str,
            target: tuple[int, int] | None = None) -> EncodedImage:
    target = target or _fit(img.size[0], img.size[1], options.max_side)
    if img.size != target:
        img = img.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
    if fmt == "JPEG" and img.mode not in ("L", "RGB"):
        fmt = "PNG"
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, "JPEG", quality=options.jpeg_quality, optimize=True)
    else:
        img.save(buf, "PNG", compress_level=6)
    return EncodedImage(buf.getvalue(), fmt, img.size[0], img.size[1], False)


def _from_array(arr: np.ndarray, options: ImageOptions) -> EncodedImage:
    mode = "L" if arr.ndim == 2 else {3: "RGB", 4: "RGBA"}[arr.shape[-1]]
    return _encode(Image.fromarray(arr, mode), options, "PNG")


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scales any numeric array to uint8 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.round((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def dicom_to_uint8(data: bytes) -> np.ndarray:
    """Decodes one DICOM image to a display-ready uint8 array ([H, W] or [H, W, 3]).

    Applies the Modality LUT (rescale slope/intercept or LUT sequence), then the VOI
    LUT (or window centre/width), inverts MONOCHROME1 so that high X-ray attenuation
    (bone) is bright as in MONOCHROME2, and scales to 8 bits. Multi-frame files are
    rejected: a frame is not an image of the case.
    """
    import pydicom
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:
        raise ImageError(f"corrupt: DICOM: {e}") from None
    if "PixelData" not in ds:
        raise ImageError("unsupported: DICOM without pixel data")
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    if frames > 1:
        raise ImageError(f"unsupported: multi-frame DICOM ({frames} frames)")
    try:
        arr = ds.pixel_array
    except Exception as e:   # truncated pixel data, missing codec for the transfer syntax
        raise ImageError(f"corrupt: DICOM pixel data: {type(e).__name__}: {e}") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        # colour: pydicom converts YBR to RGB; no LUTs apply
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"unsupported: DICOM colour array of shape {arr.shape}")
        return arr if arr.dtype == np.uint8 else _to_uint8(arr)
    if arr.ndim != 2:
        raise ImageError(f"unsupported: DICOM array of shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, prefer_lut=True)
    out = _to_uint8(arr)
    invert = photometric == "MONOCHROME1"
    if str(getattr(ds, "PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    if invert:
        out = 255 - out
    return out


def probe_size(path: str) -> int:
    """File size in bytes, 0 when it cannot be stat'ed (the image is reported later)."""
    try:
        return fileio.getsize(path)
    except OSError:
        return 0
