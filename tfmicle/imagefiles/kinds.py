"""The image file types the project reads, in one table: how each is recognised (its
leading bytes, its file name), and who takes it as it is. data_prep, tfmicle.score and
serving all read this table, so adding an image type is one row here (and, when Pillow
cannot read it, a reader in ``tfmicle.imagefiles.encode``)."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable


class ImageError(Exception):
    """An image that cannot be used. The message is the reason (data_prep writes it to
    skipped.csv, score too); it starts with ``corrupt:``, ``unsupported:``, ``too
    large:``, ``missing:`` or ``unreadable:``."""


@dataclass(frozen=True)
class ImageKind:
    name: str                               # as messages name it: "JPEG", "WebP"
    extensions: tuple[str, ...]             # file names data_prep and score read as this kind
    matches: Callable[[bytes], bool]        # the leading bytes (at least 132 of them)
    passes: bool = False                    # records and the exported model take it as it is
    served: bool = False                    # serving takes it (converted to PNG unless passes)
    tf_direct: tuple[str, ...] = ()         # of extensions, those score hands to TensorFlow
                                            # unconverted (the rest go through encode_bytes)
    pillow: str = ""                        # Pillow's format name; "" when Pillow cannot open it


def _starts(*magics: bytes) -> Callable[[bytes], bool]:
    return lambda head: head.startswith(magics)


# In sniffing order (also the order messages list them in). DICOM's signature sits after a 128-byte preamble that may hold anything.
KINDS: tuple[ImageKind, ...] = (
    ImageKind("JPEG", (".jpg", ".jpeg", ".jpe", ".jfif"), _starts(b"\xff\xd8\xff"),
              passes=True, served=True, tf_direct=(".jpg", ".jpeg"), pillow="JPEG"),
    ImageKind("PNG", (".png",), _starts(b"\x89PNG\r\n\x1a\n"),
              passes=True, served=True, tf_direct=(".png",), pillow="PNG"),
    ImageKind("DICOM", (".dcm", ".dicom"), lambda head: head[128:132] == b"DICM", served=True),
    ImageKind("BMP", (".bmp",), _starts(b"BM"), served=True, tf_direct=(".bmp",), pillow="BMP"),
    ImageKind("TIFF", (".tif", ".tiff"), _starts(b"II*\x00", b"MM\x00*"), served=True,
              pillow="TIFF"),
    ImageKind("GIF", (".gif",), _starts(b"GIF87a", b"GIF89a"), tf_direct=(".gif",),
              pillow="GIF"),
    ImageKind("WebP", (".webp",), lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
              served=True, pillow="WEBP"),
    # recognised so that serving can name it; nothing reads it
    ImageKind("JPEG 2000", (), _starts(b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")),
)
BY_NAME = {k.name: k for k in KINDS}
# The image types data_prep prepares and tfmicle.score scores, by file name.
IMAGE_EXTENSIONS = tuple(e for k in KINDS for e in k.extensions)
DICOM_EXTENSIONS = BY_NAME["DICOM"].extensions
TF_DIRECT = tuple(e for k in KINDS for e in k.tf_direct)
PASSING = tuple(k.name for k in KINDS if k.passes)      # what records hold: JPEG, PNG
SERVED = tuple(k.name for k in KINDS if k.served)


def sniff(data: bytes) -> ImageKind | None:
    """The kind from the leading bytes alone; None when no row matches."""
    head = data[:132]
    return next((k for k in KINDS if k.matches(head)), None)


def is_image_file(name: str) -> bool:
    """A file data_prep reads as an image (and tfmicle.score scores): by extension, no
    hidden files."""
    base = os.path.basename(name)
    return base.lower().endswith(IMAGE_EXTENSIONS) and not base.startswith(".")


def is_dicom(path: str, head: bytes) -> bool:
    """DICOM by its signature, or by its name (a file without the 128-byte preamble)."""
    return BY_NAME["DICOM"].matches(head) or path.lower().endswith(DICOM_EXTENSIONS)


def tf_decodes_directly(path: str) -> bool:
    """True for files score hands to TensorFlow as they are (JPEG, PNG, BMP, GIF by name);
    the others (DICOM, TIFF, ...) become PNG through encode_bytes first."""
    return path.lower().endswith(TF_DIRECT)


def one_of(names: tuple[str, ...]) -> str:
    """("JPEG", "PNG", "BMP") -> "JPEG, PNG or BMP"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
