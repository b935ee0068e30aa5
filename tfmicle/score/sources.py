"""Scoring: what to score. A records folder (one split), a TFDS split
(``tfds:NAME[/CONFIG]``), a folder of images, or a CSV manifest, each a Source: one
row per image (ids, labels in the model's class order), a tf.data of its encoded
images, its metadata. This module holds the interface, ``open_source`` (the one
factory) and the image reader of file sources; source_files.py has the folder and CSV
sources, source_records.py the records and TFDS ones.

Image files: the same types data_prep accepts (tfmicle.imagefiles, DICOM and TIFF
included). Those tf.io.decode_image reads go in as they are; the others go through
data_prep's reader, tfmicle.imagefiles.load_image (DICOM LUTs, MONOCHROME1, 16-bit
scaling), exactly as they would have been written into records. Any path may be a URL
(tfmicle.fileio; the bytes through tf.io.read_file). Map: docs/architecture.md.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Iterator

from tfmicle import fileio
from tfmicle.csvfiles import CsvError, read_csv
from tfmicle.imagefiles import (FULL_SIZE, ImageError, is_image_file, load_image,
                                tf_decodes_directly, tf_error_message)
from tfmicle.score.model import ScoreError, ScoringModel

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


def declared_meta_columns(spec: str) -> list[str] | None:
    """The metadata columns a source declares before anything is loaded: a records
    folder's dataset.json ``metadata_columns`` (v1: none), a CSV manifest's header less
    its image / case_id / label columns (a multi-label class column counts too: only the
    model knows the classes), none for an image folder; None where only opening the
    source tells (TFDS) or it cannot be read (open_source says why)."""
    from tfmicle.data import records
    if spec.startswith("tfds:"):
        return None
    if fileio.isdir(spec):
        if fileio.isfile(fileio.join(spec, records.DATASET_JSON)):
            return list(records.load_dataset_info(spec).get("metadata_columns") or [])
        return []
    if fileio.isfile(spec) and spec.lower().endswith((".csv", ".tsv", ".txt")):
        try:
            cols, _ = read_csv(spec)
        except CsvError:
            return None
        return [c for c in cols if c not in ("image", "path", "case_id", "label")]
    return None


def open_source(spec: str, model: ScoringModel, split: str | None = None,
                images_root: str | None = None, tfds_options: dict | None = None) -> Source:
    """records folder | tfds:NAME[/CONFIG] | image folder | CSV manifest, by what spec
    is. split: of records or TFDS (default test)."""
    from tfmicle.data import records
    from tfmicle.score.source_files import csv_source, folder_source
    from tfmicle.score.source_records import records_source, tfds_source
    if spec.startswith("tfds:"):
        return tfds_source(spec, split or "test", model, tfds_options)
    if fileio.isdir(spec):
        if fileio.isfile(fileio.join(spec, records.DATASET_JSON)):
            return records_source(spec, split or "test", model)
        return folder_source(spec, model)
    if fileio.isfile(spec):
        if spec.lower().endswith((".csv", ".tsv", ".txt")):
            return csv_source(spec, model, images_root)
        raise ScoreError(f"{spec}: expected a records folder, an image folder or a .csv "
                         "manifest")
    raise FileNotFoundError(f"data {spec} not found")


__all__ = ["Source", "ROW_FIELDS", "open_source", "declared_meta_columns", "read_image",
           "is_image_file", "needs_conversion", "converted_bytes"]
