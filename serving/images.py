"""Check encoded images before they reach the model, and convert the types it does not
take.

The model decodes and resizes inside its graph, so the server never resizes. It makes
sure every image is one the model can take, in steps that get more expensive: the type
from the magic bytes, the dimensions from the header against ``max_pixels`` (a
decompression bomb, or a huge DICOM, is refused before any pixel is decoded; so is a
multi-frame DICOM or one in a transfer syntax nothing here decodes), then a full decode
that catches truncated and corrupt data. JPEG and PNG reach the model as they were
sent; DICOM, TIFF, BMP and WebP become PNG on the way, through the code data_prep
writes records with (``tfmicle.imagefiles``: modality / VOI LUT, MONOCHROME1
inverted, 8 bits, EXIF orientation applied). A bad image is a 4xx here instead of a
model error later.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

from tfmicle.imagefiles import (FULL_SIZE, SERVED, ImageError, ImageKind, convert_bytes,
                                header_size, one_of, sniff, verify)

from .errors import ApiError


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int
    data: bytes  # what the model gets: the bytes sent (JPEG, PNG) or the PNG made of them
    # (for a converted image, width and height are the PNG's: upright)


def _where(index: int | None) -> str:
    return "image" if index is None else f"image {index}"


def _refusal(e: ImageError, where: str, kind: ImageKind) -> ApiError:
    """tfmicle.imagefiles' reason -> the HTTP answer: unsupported 415, too large 413,
    anything else (corrupt) 400."""
    reason = str(e)
    if reason.startswith("unsupported: "):
        return ApiError(415, f"{where} is unsupported: {reason[len('unsupported: '):]}")
    if reason.startswith("too large"):
        return ApiError(413, f"{where} declares too many pixels (decompression bomb refused)")
    return ApiError(400, f"{where} is a truncated or corrupt {kind.name}")


def validate_image(data: bytes, max_pixels: int, index: int | None = None) -> ImageInfo:
    """Return the image's type, size and the bytes for the model, or raise ApiError
    (400, 413 or 415)."""
    where = _where(index)
    if not data:
        raise ApiError(400, f"{where} is empty")
    kind = sniff(data)
    if kind is None:
        raise ApiError(400, f"{where} is not a {one_of(SERVED)} image (unrecognised leading bytes)")
    if not kind.served:
        raise ApiError(415, f"{where} is {kind.name}; this server takes {one_of(SERVED)} images")
    try:
        width, height = header_size(data, kind)
    except ImageError as e:
        raise _refusal(e, where, kind) from None
    if width * height > max_pixels:
        raise ApiError(
            413,
            f"{where} is {width}x{height} = {width * height} pixels, over the limit "
            f"of {max_pixels} pixels (--max-pixels)",
        )
    try:
        if kind.passes:
            verify(data)  # the model decodes the bytes as they were sent
            return ImageInfo(kind.name, width, height, data)
        enc = convert_bytes(data, "", FULL_SIZE)
        return ImageInfo(kind.name, enc.width, enc.height, enc.data)  # upright: EXIF applied
    except ImageError as e:
        raise _refusal(e, where, kind) from None
    except Exception:  # a LUT or codec failing on hostile bytes: the client's image, not a 500
        raise ApiError(400, f"{where} is a truncated or corrupt {kind.name}") from None


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
