"""Scoring: the sources that are image files, an image folder and a CSV manifest (the
Source interface: tfmicle/score/source_base.py). Their rows are known when they open; each
image is read by source_base.read_image, data_prep's reader for the types TensorFlow cannot
decode. Map: docs/architecture.md."""
from __future__ import annotations

import json
import os
from typing import Iterator

from tfmicle import fileio
from tfmicle.csvfiles import parse_multi_value, read_csv
from tfmicle.imagefiles import IMAGE_EXTENSIONS, is_image_file
from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.source_base import Source, needs_conversion, read_image
from tfmicle.tasks import MULTICLASS


def work_line(index: int, path: str) -> str:
    """A file source's row as a line of the Beam work list."""
    return json.dumps({"at": [index], "path": path, "convert": needs_conversion(path)})


def read_file(line: str) -> tuple[dict, bytes]:
    """A work-list line {"at": row, "path", "convert"} -> (key, bytes), on a Beam worker;
    a file that cannot be read gives b"" and its reason in the key, as the local path
    words it."""
    item = json.loads(line)
    data, reason = read_image(item["path"], item["convert"])
    return ({"at": item["at"], "reason": reason} if reason else {"at": item["at"]}), data


class FileSource(Source):
    """Images as files, one row per path (paths [N], in row order)."""

    def __init__(self, spec: str, paths: list[str], image_ids: list[str],
                 case_ids: list[str], labels, meta_columns: list[str] | None = None,
                 meta: list[dict[str, str]] | None = None,
                 skipped: list[tuple[str, str, str]] | None = None):
        super().__init__(spec, image_ids, case_ids, labels, meta_columns, skipped)
        self.paths = paths
        self.meta = meta if meta is not None else [{} for _ in image_ids]

    def encoded(self):
        import tensorflow as tf
        idx = tf.data.Dataset.range(len(self.paths))
        files = tf.data.Dataset.from_tensor_slices(tf.constant(self.paths, tf.string))
        convert = tf.data.Dataset.from_tensor_slices(
            tf.constant([needs_conversion(p) for p in self.paths], tf.bool))

        def read(i, p, c):
            image, reason = tf.numpy_function(read_image, [p, c], (tf.string, tf.string),
                                              stateful=False)
            return {"index": i, "image": tf.reshape(image, []),
                    "reason": tf.reshape(reason, [])}
        return tf.data.Dataset.zip((idx, files, convert)).map(
            read, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def metadata(self) -> tuple[list[str], list[dict[str, str]]]:
        return self.meta_columns, self.meta

    def work_lines(self) -> list[str]:
        return [work_line(i, p) for i, p in enumerate(self.paths)]

    @staticmethod
    def read_work(line: str) -> Iterator[tuple[dict, bytes]]:
        yield read_file(line)

    def take_beam_rows(self, rows: list[dict]) -> list[int]:
        return [r["at"][0] for r in rows]


class FolderSource(FileSource):
    """A folder of images, searched recursively; an image in a first-level folder named
    like a model class has that label. Image id = case id = the relative path."""
    kind = "folder"


class CsvSource(FileSource):
    """A CSV manifest (image / path, case_id, label or one column per class, metadata);
    a listed file that is missing is skipped before scoring."""
    kind = "csv"

    def __init__(self, *args, root: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.root = root     # the folder its paths are relative to

    def check_found(self) -> None:
        """None of its images exists: its paths are relative to another folder
        (data_prep refuses the same mistake the same way)."""
        if len(self) or not self.skipped:
            return
        raise ScoreError(f"{self.spec}: none of its {len(self.skipped)} images found under "
                         f"{self.root} (e.g. {self.skipped[0][0]}); pass --images ROOT, the "
                         "folder its paths are relative to")


def _multi_value(raw: str, where: str) -> float:
    """A multi-label cell, read as data_prep reads one (1, 0, -1, blank -> NaN)."""
    try:
        return parse_multi_value(raw or "")
    except ValueError:
        raise ScoreError(f"{where}: {raw!r} is not 1, 0, -1 or blank") from None


def empty_labels(task: str, n: int, k: int):
    """No label for n rows: multiclass int [n] of -1, multilabel float [n, k] of NaN."""
    import numpy as np
    return np.full(n, -1, np.int64) if task == MULTICLASS else np.full((n, k), np.nan)


def folder_source(root: str, model: ScoringModel) -> FolderSource:
    paths = []
    for d, dirs, files in fileio.walk(root):
        dirs.sort()
        for f in sorted(files):
            if is_image_file(f):
                paths.append(fileio.join(d, f))
    if not paths:
        raise ScoreError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    rel = [fileio.relpath(p, root).replace(os.sep, "/") for p in paths]
    labels = empty_labels(model.task, len(paths), model.num_classes)
    if model.task == MULTICLASS:
        for i, r in enumerate(rel):
            top = r.split("/", 1)[0] if "/" in r else None
            if top in model.class_names:
                labels[i] = model.class_names.index(top)
    return FolderSource(root, paths, rel, list(rel), labels)


def csv_source(path: str, model: ScoringModel, images_root: str | None = None
               ) -> CsvSource:
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
    labels = empty_labels(model.task, n, model.num_classes)
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
    return CsvSource(path, paths, image_ids, case_ids, labels[np.asarray(keep, np.int64)],
                     meta_cols, meta, skipped, root=root)


__all__ = ["FileSource", "FolderSource", "CsvSource", "folder_source", "csv_source",
           "work_line", "read_file", "empty_labels"]
