"""One image file -> bytes fit for ``image/encoded`` (JPEG or PNG), the way data_prep
writes records, score converts what TensorFlow cannot read and serving converts
DICOM, TIFF, BMP and WebP.

Every image is decoded once with Pillow to validate it. JPEG and PNG files whose
longer side is within ``max_side`` and that carry no EXIF rotation pass through byte
for byte; larger or rotated ones are resized / turned upright and re-encoded (JPEG
stays JPEG, everything else becomes PNG; the EXIF Orientation tag is dropped). DICOM
files get the modality and VOI LUTs, MONOCHROME1 inversion and 8-bit scaling
(``tfmicle.imagefiles.dicom``), and become PNG.

``encode_bytes`` then decodes the result once more with TensorFlow's decoder, the one
training uses (``tfdecode.decode_error``): Pillow accepts some files that TensorFlow
rejects (a JPEG without its end-of-image marker). Such a file is re-encoded from what
Pillow decoded, and refused only if that fails too. ``convert_bytes`` is the same
without that check (serving: the model's own decode is the check).
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from tfmicle import fileio
from tfmicle.imagefiles.dicom import dicom_to_uint8, read_header, to_uint8, unsupported_reason
from tfmicle.imagefiles.kinds import BY_NAME, ImageError, ImageKind, is_dicom
from tfmicle.imagefiles.tfdecode import decode_error, import_tf

# Decompression-bomb guard stays on (PIL's default), but as an error, not a warning.
Image.MAX_IMAGE_PIXELS = 30_000 * 30_000
EXIF_ORIENTATION = 0x0112       # TIFF/EXIF tag 274; 1 = upright, 5-8 swap width and height


@dataclass(frozen=True)
class ImageOptions:
    max_side: int = 1024        # 0: never resize
    jpeg_quality: int = 95


FULL_SIZE = ImageOptions(max_side=0)  # score and serving: the model crops and resizes itself


@dataclass
class EncodedImage:
    data: bytes
    format: str                 # "JPEG" | "PNG"
    width: int
    height: int
    passthrough: bool           # True when data are the source bytes unchanged


def load_image(path: str, options: ImageOptions = ImageOptions()) -> EncodedImage:
    """Reads, validates and (if needed) converts one image file. Raises ImageError."""
    if fileio.is_url(path):
        import_tf()                         # the worker's TF set-up before gfile imports it
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
    return checked(convert_bytes(data, path, options), data, options)


def convert_bytes(data: bytes, path: str = "", options: ImageOptions = ImageOptions()
                  ) -> EncodedImage:
    """encode_bytes without the TensorFlow check (Pillow and pydicom only)."""
    if not data:
        raise ImageError("corrupt: empty file")
    if is_dicom(path, data[:132]):
        return _from_array(dicom_to_uint8(data), options)
    img, fmt, rotated, size = _open_checked(data, options, draft=True)
    if fmt == "MPO":                    # camera JPEG with an embedded preview: a JPEG
        fmt = "JPEG"
    elif getattr(img, "n_frames", 1) > 1:
        raise ImageError(f"unsupported: multi-frame {fmt} ({img.n_frames} frames)")
    w, h = _upright_size(size, rotated)
    fits = _fit(w, h, options.max_side) == (w, h) and not rotated
    if fmt == "JPEG" and img.mode in ("L", "RGB") and fits:
        return EncodedImage(data, "JPEG", w, h, True)
    if fmt == "PNG" and img.mode in ("L", "LA", "RGB", "RGBA", "P") and fits:
        return EncodedImage(data, "PNG", w, h, True)
    return _reencode(img, fmt, rotated, (w, h), options)


def header_size(data: bytes, kind: ImageKind) -> tuple[int, int]:
    """(width, height) from the header alone, before any pixel is decoded: the place for
    a pixel limit. A DICOM file that cannot become one image here (several frames, a
    transfer syntax no installed decoder reads) is refused as unsupported. Raises
    ImageError."""
    if kind is BY_NAME["DICOM"]:
        header = read_header(data)
        reason = unsupported_reason(header)
        if reason:
            raise ImageError(reason)
        w, h = header.columns, header.rows
    elif not kind.pillow:
        raise ImageError(f"unsupported: {kind.name} images")
    else:
        try:
            with warnings.catch_warnings():
                # Pillow warns on large images; the caller's own limit comes first
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data), formats=[kind.pillow]) as im:
                    w, h = im.size
        except Image.DecompressionBombError as e:
            raise ImageError(f"too large: {e}") from None
        except Exception as e:          # PIL raises many types for a bad header
            raise ImageError(f"corrupt: {type(e).__name__}: {e}") from None
    if w < 1 or h < 1:
        raise ImageError("corrupt: zero-size image")
    return w, h


def verify(data: bytes) -> None:
    """Decodes ``data`` fully with Pillow and keeps nothing (JPEGs at 1/8 scale: the
    entropy decode, which finds truncation and damage, runs whole). Raises ImageError."""
    _open_checked(data, FULL_SIZE, draft=True)


def _reencode(img: Image.Image, fmt: str, rotated: int, upright: tuple[int, int],
              options: ImageOptions) -> EncodedImage:
    """Re-encodes a decoded image upright, at the size ``upright`` (w, h) fits into."""
    if rotated:
        img = ImageOps.exif_transpose(img)
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return _from_array(to_uint8(np.asarray(img)), options)
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
