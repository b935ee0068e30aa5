"""Scoring: the Source interface (what every source has: spec, the per-image rows, the
tf.data stream of its encoded images with a read reason per image, metadata, its Beam
work) and the image reader of file sources. The sources: source_files.py (image folder,
CSV manifest), source_records.py (records split, TFDS split); sources.open_source picks
one. Image files: the same types data_prep accepts (tfmicle.imagefiles, DICOM and TIFF
included). Those tf.io.decode_image reads go in as they are; the others go through
data_prep's reader, tfmicle.imagefiles.load_image (DICOM LUTs, MONOCHROME1, 16-bit
scaling), exactly as they would have been written into records. Any path may be a URL
(tf.io.gfile). Map: docs/architecture.md."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator

from tfmicle.imagefiles import (FULL_SIZE, ImageError, load_image, tf_decodes_directly,
                                tf_error_message)

# The fields of a dataset source's stream that carry its rows (records / TFDS).
ROW_FIELDS = ("image_id", "case_id", "label_class", "label_multi")


def needs_conversion(path: str) -> bool:
    """True for files TensorFlow cannot decode (DICOM, TIFF): data_prep's reader
    turns them into PNG first."""
    return not tf_decodes_directly(path)


def converted_bytes(path) -> bytes:
    """tfmicle.imagefiles.load_image at full size (no resize: the model's preprocessing
    crops and resizes); raises its ImageError."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    return load_image(path, FULL_SIZE).data


def read_image(path, convert) -> tuple[bytes, str]:
    """A file source's image as (encoded bytes, "") or (b"", why it cannot be read):
    data_prep's reason (tfmicle.imagefiles.ImageError) for a file it converts, else
    "unreadable: " and the filesystem's error. Decoding is checked later, by the decoder
    that scores the image."""
    import tensorflow as tf
    path = path.decode() if isinstance(path, bytes) else str(path)
    try:
        if convert:
            return converted_bytes(path), ""
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read(), ""
    except ImageError as e:   # data_prep's reason, as skipped.csv of data_prep has it
        return b"", str(e)
    except Exception as e:  # noqa: BLE001 - any read failure is a skipped row
        return b"", f"unreadable: {tf_error_message(e, clean=True)}"


class Source(ABC):
    """What to score: one row per image (ids, labels) plus how to read its bytes.

    Every source has spec (what the user named), image_ids / case_ids [N] and labels
    (multiclass: int [N], -1 unlabeled; multilabel: float [N, K], NaN unknown), skipped
    (rows refused before scoring: (image id, case id, reason)) and meta_columns. A
    dataset source (records, TFDS) learns its rows while it is scored: until then
    image_ids is None and len() is the split's size from its metadata."""
    kind: ClassVar[str]                        # a name for messages and tests only
    row_fields: ClassVar[tuple[str, ...]] = ()  # stream fields that carry the rows
    spread_after_read: ClassVar[bool] = False   # Beam: one work item gives many images

    def __init__(self, spec: str, image_ids: list[str] | None, case_ids: list[str] | None,
                 labels, meta_columns: list[str] | None = None,
                 skipped: list[tuple[str, str, str]] | None = None):
        self.spec = spec
        self.image_ids = image_ids
        self.case_ids = case_ids
        self.labels = labels
        self.meta_columns = list(meta_columns or [])
        self.skipped = list(skipped or [])

    def __len__(self) -> int:
        return len(self.image_ids or ())

    @abstractmethod
    def encoded(self):
        """tf.data of dicts, one per row in row order: index (int64), image (encoded
        string; "" when it could not be read), reason ("" or why the image could not be
        read), and the row_fields."""

    def take_rows(self, fields: dict) -> None:
        """A dataset source's rows, from its row_fields of every streamed element in
        index order ({field: numpy [N, ...]}); other sources know theirs already."""

    @abstractmethod
    def metadata(self) -> tuple[list[str], list[dict[str, str]]]:
        """(metadata columns, one {column: text} per row)."""

    def check_found(self) -> None:
        """Raises ScoreError when the source names images but none was found."""

    # --runner beam (tfmicle.score.beam): the work the workers share, no Beam here.
    @abstractmethod
    def work_lines(self) -> list[str]:
        """The work list: one JSON line per work item (an image, or a records shard)."""

    @staticmethod
    @abstractmethod
    def read_work(line: str) -> Iterator[tuple[dict, bytes]]:
        """A work line -> (key, encoded bytes) per image, on a worker. A module-level
        function, so Beam pickles it by name."""

    @abstractmethod
    def take_beam_rows(self, rows: list[dict]) -> list[int]:
        """The pipeline's rows (their keys plus "p" or "error"), in any order -> the row
        index of each (a dataset source sorts them and learns its rows first)."""


__all__ = ["Source", "ROW_FIELDS", "read_image", "needs_conversion", "converted_bytes"]
