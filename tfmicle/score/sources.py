"""Scoring: what to score. A records folder (one split), a TFDS split
(``tfds:NAME[/CONFIG]``), a folder of images, or a CSV manifest, each as a Source: one
row per image (ids, labels in the model's class order) and a tf.data of its encoded
images.

Image files: the same types data_prep accepts (tfmicle.imagefiles, DICOM and TIFF
included). Those tf.io.decode_image reads go in as they are; the others go through
data_prep's reader, tfmicle.imagefiles.load_image (DICOM LUTs, MONOCHROME1, 16-bit
scaling), exactly as they would have been written into records. Any path may be a URL
(tfmicle.fileio; the bytes through tf.io.read_file). Map: docs/architecture.md.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable

from tfmicle import fileio
from tfmicle.csvfiles import CsvError, parse_multi_value, read_csv
from tfmicle.imagefiles import (FULL_SIZE, IMAGE_EXTENSIONS, is_image_file, load_image,
                                tf_decodes_directly)
from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.tasks import MULTICLASS

def needs_conversion(path: str) -> bool:
    """True for files TensorFlow cannot decode (DICOM, TIFF): data_prep's reader
    turns them into PNG first."""
    return not tf_decodes_directly(path)


def converted_bytes(path) -> bytes:
    """tfmicle.imagefiles.load_image at full size (no resize: the model's preprocessing
    crops and resizes); raises its ImageError."""
    path = path.decode() if isinstance(path, bytes) else str(path)
    return load_image(path, FULL_SIZE).data


@dataclass
class Source:
    """What to score: one row per image (ids, labels) plus how to read the bytes. A
    records source learns its rows while it is scored (one pass over the records)."""
    spec: str
    kind: str                      # records | tfds | folder | csv
    image_ids: list[str] | None
    case_ids: list[str] | None
    labels: object                 # multiclass: int array [N] (-1 unlabeled); multilabel: [N, K]
    paths: list[str] | None = None              # folder / csv
    records: tuple[str, str, int] | None = None  # (data_dir, split, dataset classes);
                                   # data_dir "" for tfds
    expected: int | None = None    # records / tfds: images of the split per its metadata
    convert_labels: Callable | None = None  # records / tfds: (label_class, label_multi) -> labels
    tfds: object = None            # tfds: the TfdsSource
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # id, case, reason
    meta_columns: list[str] = field(default_factory=list)   # patient / acquisition metadata
    meta: list[dict[str, str]] | None = None   # one {column: text} per row (records: lazy)

    @property
    def reads_rows(self) -> bool:
        """records / tfds: ids and labels come with the images (set while scoring)."""
        return self.kind in ("records", "tfds")

    def __len__(self) -> int:
        if self.image_ids is not None:
            return len(self.image_ids)
        return int(self.expected or 0)

    def encoded(self):
        """tf.data of dicts, in row order: index (int64), image (encoded string), and for
        records / tfds image_id, case_id, label_class, label_multi."""
        import tensorflow as tf
        if self.reads_rows:
            from tfmicle.data.pipeline import PipelineConfig, image_examples
            data_dir, split, k = self.records
            return image_examples(PipelineConfig(data_dir, split, tfds=self.tfds),
                                  k).enumerate().map(
                lambda i, el: {"index": i, **el})
        idx = tf.data.Dataset.range(len(self.paths))
        files = tf.data.Dataset.from_tensor_slices(tf.constant(self.paths, tf.string))
        convert = tf.data.Dataset.from_tensor_slices(
            tf.constant([needs_conversion(p) for p in self.paths], tf.bool))

        def read(i, p, c):
            image = tf.cond(c, lambda: tf.numpy_function(converted_bytes, [p], tf.string,
                                                         stateful=False),
                            lambda: tf.io.read_file(p))
            return {"index": i, "image": tf.reshape(image, [])}
        return tf.data.Dataset.zip((idx, files, convert)).map(
            read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def set_rows(self, image_ids, case_ids, label_class, label_multi) -> None:
        """Records / tfds: the rows, in index order, from the record fields."""
        self.image_ids = [b.decode("utf-8", "replace") for b in image_ids]
        self.case_ids = [b.decode("utf-8", "replace") for b in case_ids]
        self.labels = self.convert_labels(label_class, label_multi)

    def read_rows(self) -> None:
        """Records / tfds: one pass over the split without decoding images (used when scoring
        could not account for every image)."""
        import numpy as np
        cols = {k: [] for k in ("image_id", "case_id", "label_class", "label_multi")}
        meta = self.encoded().map(lambda el: {k: el[k] for k in cols})
        for el in meta.as_numpy_iterator():
            for k in cols:
                cols[k].append(el[k])
        k = self.records[2]
        self.set_rows(cols["image_id"], cols["case_id"], np.asarray(cols["label_class"], np.int64),
                      np.asarray(cols["label_multi"], np.float64).reshape(-1, k))


    def metadata(self) -> tuple[list[str], list[dict[str, str]]]:
        """(metadata columns, one {column: text} per row). Records (schema v2) read them
        once, after scoring learnt the rows, matched by (case id, image id) because the
        record pipeline interleaves shards; v1 records, folders: no columns."""
        if self.image_ids is None:      # records before scoring: columns from dataset.json
            return self.meta_columns, []
        if self.meta is None:
            self.meta = [{} for _ in range(len(self))]
            if self.kind == "records":
                from tfmicle.data import records
                data_dir, split, _ = self.records
                cols, rows = records.read_image_metadata(data_dir, split)
                queues: dict[tuple[str, str], list[dict]] = {}
                for case_id, image_id, m in rows:
                    queues.setdefault((case_id, image_id), []).append(m)
                for i, key in enumerate(zip(self.case_ids, self.image_ids)):
                    q = queues.get(key)
                    self.meta[i] = q.pop(0) if q else {}
                self.meta_columns = cols
        return self.meta_columns, self.meta


def _multi_value(raw: str, where: str) -> float:
    """A multi-label cell, read as data_prep reads one (1, 0, -1, blank -> NaN)."""
    try:
        return parse_multi_value(raw or "")
    except ValueError:
        raise ScoreError(f"{where}: {raw!r} is not 1, 0, -1 or blank") from None


def _empty_labels(task: str, n: int, k: int):
    import numpy as np
    return np.full(n, -1, np.int64) if task == MULTICLASS else np.full((n, k), np.nan)


def records_source(data_dir: str, split: str, model: ScoringModel) -> Source:
    from tfmicle.data import records
    info = records.load_dataset_info(data_dir)
    splits = info.get("splits", {})
    if split not in splits:
        raise ScoreError(f"split '{split}' not in {data_dir} (has: {', '.join(splits)}); "
                         "choose one with --split")
    records.list_shards(data_dir, split)
    expected = splits[split].get("images")
    out = _dataset_source(f"{data_dir} ({split})", "records", data_dir, split,
                          info.get("task", MULTICLASS), list(info.get("class_names", [])),
                          int(expected) if expected is not None else None, model)
    out.meta_columns = list(info.get("metadata_columns") or [])  # schema v2
    return out


def tfds_source(spec: str, split: str, model: ScoringModel, options: dict | None = None
                ) -> Source:
    """spec tfds:NAME[/CONFIG]; options: TfdsSource fields (image_key, label_key,
    case_key, data_dir, manual_dir). Labels: the ClassLabel's names, matched to the
    model's classes by name."""
    from tfmicle.data import tfds_source as T
    name, _, config = spec[len(T.SPEC_PREFIX):].partition("/")
    try:
        src = T.TfdsSource(name, config, **(options or {}))
        T.builder(src)
        T.check_split(src, split)
        n = T.count(src, split, "image")
        info = T.dataset_info(src)
    except TypeError as e:  # an unknown option
        raise ScoreError(f"{spec}: {e}") from None
    out = _dataset_source(f"{src.spec} ({split})", "tfds", "", split, info["task"],
                          info["class_names"], n, model)
    out.tfds = src
    return out


def _dataset_source(spec: str, kind: str, data_dir: str, split: str, task: str,
                    names: list[str], expected: int | None, model: ScoringModel) -> Source:
    """A records / tfds Source: the dataset's labels (class names, task) mapped onto the
    model's classes by name."""
    import numpy as np
    where = spec.rsplit(" (", 1)[0]
    if names and task != model.task:
        raise ScoreError(f"{where} is {task} but the model is {model.task}")
    missing = [n for n in names if n not in model.class_names]
    label_map = np.array([model.class_names.index(n) if n in model.class_names else -1
                          for n in names] + [-1], np.int64)
    k = max(len(names), 1)

    def unknown(name):
        return ScoreError(f"{where}: class {name!r} is not one of the model's classes "
                          f"({', '.join(model.class_names)})")

    def convert(label_class, label_multi):
        n = len(label_class)
        if task == MULTICLASS:
            raw = np.asarray(label_class, np.int64)
            bad = [m for m in missing if np.any(raw == names.index(m))]
            if bad:
                raise unknown(bad[0])
            return np.where(raw >= 0, label_map[np.maximum(raw, 0)], -1) if n else raw
        if missing:
            raise unknown(missing[0])
        labels = np.full((n, model.num_classes), np.nan)
        if n and names:
            labels[:, label_map[:len(names)]] = np.asarray(label_multi,
                                                           np.float64)[:, :len(names)]
        return labels

    return Source(spec, kind, None, None, None, records=(data_dir, split, k),
                  expected=expected, convert_labels=convert)


def folder_source(root: str, model: ScoringModel) -> Source:
    paths = []
    for d, dirs, files in fileio.walk(root):
        dirs.sort()
        for f in sorted(files):
            if is_image_file(f):
                paths.append(fileio.join(d, f))
    if not paths:
        raise ScoreError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    rel = [fileio.relpath(p, root).replace(os.sep, "/") for p in paths]
    labels = _empty_labels(model.task, len(paths), model.num_classes)
    if model.task == MULTICLASS:
        for i, r in enumerate(rel):
            top = r.split("/", 1)[0] if "/" in r else None
            if top in model.class_names:
                labels[i] = model.class_names.index(top)
    return Source(root, "folder", rel, list(rel), labels, paths=paths)


def csv_source(path: str, model: ScoringModel, images_root: str | None = None) -> Source:
    import numpy as np
    root = images_root or fileio.dirname(fileio.abspath(path))
    cols, rows = read_csv(path)  # as data_prep reads it: , or tab or ; and stripped cells
    col = "image" if "image" in cols else "path" if "path" in cols else None
    if col is None:
        raise ScoreError(f"{path}: no 'image' column (columns: {', '.join(cols) or 'none'})")
    multi_cols = [c for c in model.class_names if c in cols] if model.task != MULTICLASS else []
    # Every other column is metadata (e.g. sex, age, site for --subgroups).
    meta_cols = [c for c in cols if c not in {col, "case_id", "label", *multi_cols}]
    n = len(rows)
    labels = _empty_labels(model.task, n, model.num_classes)
    image_ids, case_ids, paths, skipped, meta = [], [], [], [], []
    keep = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 2}"
        rel = (row.get(col) or "").strip()
        if not rel:
            raise ScoreError(f"{where}: empty '{col}'")
        full = rel if fileio.isabs(rel) else fileio.join(root, rel)
        case = (row.get("case_id") or "").strip() or rel
        if model.task == MULTICLASS:
            lab = (row.get("label") or "").strip()
            if lab:
                if lab not in model.class_names:
                    raise ScoreError(f"{where}: unknown class {lab!r} (classes: "
                                     f"{', '.join(model.class_names)})")
                labels[i] = model.class_names.index(lab)
        else:
            for c in multi_cols:
                labels[i, model.class_names.index(c)] = _multi_value(row.get(c), f"{where} {c}")
        if not fileio.isfile(full):
            skipped.append((rel, case, "file not found"))
            continue
        keep.append(i)
        meta.append({c: row.get(c) or "" for c in meta_cols})
        image_ids.append(rel)
        case_ids.append(case)
        paths.append(full)
    if not rows:
        raise ScoreError(f"{path} has no rows")
    return Source(path, "csv", image_ids, case_ids, labels[np.asarray(keep, np.int64)],
                  paths=paths, skipped=skipped, meta_columns=meta_cols, meta=meta)


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


__all__ = ["Source", "records_source", "tfds_source", "folder_source", "csv_source", "open_source",
           "declared_meta_columns",
           "is_image_file", "needs_conversion", "converted_bytes"]
