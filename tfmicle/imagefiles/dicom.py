"""DICOM images: one frame to a display-ready uint8 array (the modality and VOI LUTs,
MONOCHROME1 inverted, 8 bits), and what the header says before any pixel is decoded
(size, frames, whether this installation can decode the transfer syntax). pydicom is
imported when a DICOM file is first met."""
from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from tfmicle.imagefiles.kinds import ImageError


def to_uint8(arr: np.ndarray) -> np.ndarray:
    """Min-max scales any numeric array to uint8 (a constant image becomes 0)."""
    arr = np.asarray(arr, dtype=np.float64)
    lo, hi = float(np.min(arr)), float(np.max(arr))
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.clip(np.round((arr - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


def _frames(ds) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def _multi_frame(frames: int) -> ImageError:
    # a frame is not an image of the case: refused rather than picked
    return ImageError(f"unsupported: multi-frame DICOM ({frames} frames)")


@dataclass(frozen=True)
class DicomHeader:
    rows: int
    columns: int
    frames: int
    transfer_syntax: str        # the UID
    syntax_name: str            # e.g. "JPEG-LS Lossless Image Compression"
    decodable: bool             # a pixel data decoder for it is installed


def read_header(data: bytes) -> DicomHeader:
    """The header of a DICOM file, read without its pixel data. Raises ImageError
    (corrupt) when it cannot be parsed or has no image size."""
    import pydicom
    from pydicom.pixels import get_decoder

    try:
        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
        syntax = ds.file_meta.TransferSyntaxUID
    except Exception as e:      # pydicom raises many types for a damaged header
        raise ImageError(f"corrupt: DICOM: {type(e).__name__}: {e}") from None
    try:
        decodable = bool(get_decoder(syntax).is_available)
    except (NotImplementedError, ValueError):   # no decoder exists for this UID
        decodable = False
    return DicomHeader(rows, columns, _frames(ds), str(syntax), syntax.name, decodable)


def unsupported_reason(header: DicomHeader) -> str | None:
    """Why a DICOM file cannot become one image here, from its header alone; None when
    it can."""
    if header.frames > 1:
        return str(_multi_frame(header.frames))
    if not header.decodable:
        return (f"unsupported: DICOM transfer syntax {header.syntax_name} "
                f"({header.transfer_syntax}): no decoder for it is installed")
    return None


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
    if _frames(ds) > 1:
        raise _multi_frame(_frames(ds))
    try:
        arr = ds.pixel_array
    except Exception as e:   # truncated pixel data, missing codec for the transfer syntax
        raise ImageError(f"corrupt: DICOM pixel data: {type(e).__name__}: {e}") from None
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if int(getattr(ds, "SamplesPerPixel", 1) or 1) > 1:
        # colour: pydicom converts YBR to RGB; no LUTs apply
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ImageError(f"unsupported: DICOM colour array of shape {arr.shape}")
        return arr if arr.dtype == np.uint8 else to_uint8(arr)
    if arr.ndim != 2:
        raise ImageError(f"unsupported: DICOM array of shape {arr.shape}")
    arr = apply_modality_lut(arr, ds)
    arr = apply_voi_lut(arr, ds, prefer_lut=True)
    out = to_uint8(arr)
    invert = photometric == "MONOCHROME1"
    if str(getattr(ds, "PresentationLUTShape", "")).upper() == "INVERSE":
        invert = not invert
    if invert:
        out = 255 - out
    return out
