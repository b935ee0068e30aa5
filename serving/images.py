"""Check encoded images before they reach the model.

The model decodes and resizes inside its graph, so the server never resizes.
It only makes sure every image is one the model can take, in three steps that
get more expensive: the type from the magic bytes, the dimensions from the
header against ``max_pixels`` (a decompression bomb is refused before any
pixel is decoded), then a full decode with Pillow that catches truncated and
corrupt data. A bad image is a 4xx here instead of a model error later.
"""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from dataclasses import dataclass

from PIL import Image

from .errors import ApiError

JPEG = "JPEG"
PNG = "PNG"

_SUPPORTED = ((b"\xff\xd8\xff", JPEG), (b"\x89PNG\r\n\x1a\n", PNG))
# Recognised, but not something the model contract covers: 415, not 400.
_OTHER_TYPES = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"DICM", "DICOM"),
)


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def sniff(data: bytes) -> str | None:
    """JPEG, PNG or None, from the first bytes alone."""
    for magic, name in _SUPPORTED:
        if data.startswith(magic):
            return name
    return None


def _other_type(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    if len(data) > 132 and data[128:132] == b"DICM":
        return "DICOM"
    for magic, name in _OTHER_TYPES:
        if data.startswith(magic):
            return name
    return None


def _where(index: int | None) -> str:
    return "image" if index is None else f"image {index}"


def validate_image(data: bytes, max_pixels: int, index: int | None = None) -> ImageInfo:
    """Return the image's type and size, or raise ApiError (400, 413 or 415)."""
    where = _where(index)
    if not data:
        raise ApiError(400, f"{where} is empty")
    fmt = sniff(data)
    if fmt is None:
        other = _other_type(data)
        if other is not None:
            raise ApiError(415, f"{where} is {other}; this server takes JPEG or PNG images")
        raise ApiError(400, f"{where} is not a JPEG or PNG image (unrecognised leading bytes)")
    try:
        with warnings.catch_warnings():
            # Pillow warns (then errors) on huge images; our own limit comes first.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=[fmt]) as im:
                width, height = im.size
                if width <= 0 or height <= 0:
                    raise ApiError(400, f"{where} has an empty size {width}x{height}")
                if width * height > max_pixels:
                    raise ApiError(
                        413,
                        f"{where} is {width}x{height} = {width * height} pixels, over the limit "
                        f"of {max_pixels} pixels (--max-pixels)",
                    )
                if fmt == JPEG:
                    # Decode at 1/8 scale: libjpeg still reads every entropy-coded
                    # segment (so truncation and broken Huffman data are found)
                    # but skips most of the inverse DCT.
                    im.draft(im.mode, (max(1, width // 8), max(1, height // 8)))
                im.load()
    except ApiError:
        raise
    except Image.DecompressionBombError:
        raise ApiError(413, f"{where} declares too many pixels (decompression bomb refused)") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError, Image.UnidentifiedImageError):
        raise ApiError(400, f"{where} is a truncated or corrupt {fmt}") from None
    return ImageInfo(fmt, width, height)


def decode_base64(text: object, index: int | None = None) -> bytes:
    """Strict base64 (standard or URL-safe alphabet, padding optional) -> bytes."""
    where = _where(index)
    if not isinstance(text, str):
        raise ApiError(400, f"{where}: expected a base64 string, got {type(text).__name__}")
    s = "".join(text.split())  # line-wrapped base64 (MIME style) is common
    if s.startswith("data:"):  # data URL: data:image/png;base64,....
        head, _, s = s.partition(",")
        if ";base64" not in head:
            raise ApiError(400, f"{where}: data URL is not base64-encoded")
    if "-" in s or "_" in s:
        s = s.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        out = base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{where} is not valid base64") from None
    if not out:
        raise ApiError(400, f"{where} is empty")
    return out
