"""Scoring: what to score. A records folder (one split), a TFDS split
(``tfds:NAME[/CONFIG]``), a folder of images, or a CSV manifest, each a Source: one
row per image (ids, labels in the model's class order), a tf.data of its encoded
images, its metadata. The interface is source_base.Source; source_files.py has the
folder and CSV sources, source_records.py the records and TFDS ones; this module picks
one (``open_source``, the one factory). Map: docs/architecture.md.
"""
from __future__ import annotations

from tfmicle import fileio
from tfmicle.csvfiles import CsvError, read_csv
from tfmicle.imagefiles import is_image_file
from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.source_base import (ROW_FIELDS, Source, converted_bytes, needs_conversion,
                                       read_image)
from tfmicle.score.source_files import csv_source, folder_source
from tfmicle.score.source_records import records_source, tfds_source


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
