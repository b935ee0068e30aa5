"""Scoring on Beam, the parts that need no Beam: what a worker makes of one records
shard or one work-list line (a key per image: its place in the source and, for records,
its ids, labels and metadata), and how the driver turns the pipeline's rows (key plus
"p" [K] or "error") back into the local path's Predictions: the local row order
(records: the order tfmicle.data.pipeline.interleave_shards reads the shards in, rebuilt
from the records per shard), the records' rows, and the skipped images with the local
path's reasons. tfmicle.score.beam wires them into a pipeline. Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
import math
from typing import Sequence

from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.predict import Predictions, _failure_reasons
from tfmicle.score.sources import Source, converted_bytes, needs_conversion

log = logging.getLogger("tfmicle.score")
ERROR = "error"           # the inference key of an image that could not be decoded


def work_line(index: int, path: str) -> str:
    """A folder / CSV source's row as a line of the work list the workers read."""
    return json.dumps({"at": [index], "path": path, "convert": needs_conversion(path)})


def shard_images(item: tuple[int, str], num_labels: int):
    """One records shard -> (key, encoded image) per image; the key holds the image's
    place (shard, record, image) and its ids, labels and metadata."""
    import tensorflow as tf
    from tfmicle.data.records import decode_case
    shard, path = item
    for pos, serialized in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
        c = decode_case(serialized)
        # image_examples pads an unlabeled case's label_multi to K NaNs
        multi = list(c.label_multi) if c.label_multi else [math.nan] * num_labels
        for j, (image, image_id) in enumerate(zip(c.images, c.image_ids)):
            yield {"at": [shard, pos, j], "id": image_id, "case": c.case_id,
                   "class": c.label_class, "multi": multi,
                   "meta": c.meta[j] if c.meta else {}}, image


def read_file(line: str):
    """A work-list line {"at": row, "path", "convert"} -> (key, bytes); b"" when the file
    cannot be read (the driver asks the local path's reasons for those rows)."""
    import tensorflow as tf
    item = json.loads(line)
    try:
        if item["convert"]:
            data = converted_bytes(item["path"])
        else:
            with tf.io.gfile.GFile(item["path"], "rb") as f:
                data = f.read()
    except Exception:  # noqa: BLE001 - any failure is a skipped row, explained later
        data = b""
    return {"at": item["at"]}, data


def record_order(counts: Sequence[int]) -> list[tuple[int, int]]:
    """(shard, record) in the order the local path reads a split with these records per
    shard: tfmicle.data.pipeline.interleave_shards over stand-in shards."""
    import numpy as np
    import tensorflow as tf
    from tfmicle.data.pipeline import interleave_shards
    n = tf.constant(list(counts), tf.int64)
    ds = interleave_shards(
        tf.data.Dataset.range(len(counts)), len(counts),
        lambda s: tf.data.Dataset.range(n[s]).map(lambda r: tf.stack([s, r])))
    out = [b for b in ds.batch(1 << 16).as_numpy_iterator()]
    return [tuple(x) for x in np.concatenate(out).tolist()] if out else []


def assemble(model: ScoringModel, source: Source, rows: list[dict]) -> Predictions:
    """The pipeline's rows as the local path's Predictions: row order, the records'
    ids, labels and metadata, and the skipped images with the local path's reasons."""
    import numpy as np
    if source.kind == "records":
        counts: dict[int, int] = {}
        for r in rows:
            s, pos, _ = r["at"]
            counts[s] = max(counts.get(s, 0), pos + 1)
        num = max(counts, default=-1) + 1
        rank = {sr: i for i, sr in enumerate(record_order([counts.get(s, 0)
                                                            for s in range(num)]))}
        rows.sort(key=lambda r: (rank[tuple(r["at"][:2])], r["at"][2]))
        k = source.records[2]
        source.set_rows([r["id"].encode() for r in rows], [r["case"].encode() for r in rows],
                        np.asarray([r["class"] for r in rows], np.int64),
                        np.asarray([r["multi"] for r in rows], np.float64).reshape(-1, k))
        # metadata columns: the union over cases in shard order, as records reads them
        columns: dict[str, None] = {}
        for r in sorted(rows, key=lambda r: r["at"]):
            columns.update(dict.fromkeys(r["meta"]))
        source.meta_columns, source.meta = list(columns), [r["meta"] for r in rows]
        index = list(range(len(rows)))
    else:
        index = [r["at"][0] for r in rows]
    by_index = dict(zip(index, rows))
    scored = sorted(i for i, r in by_index.items() if ERROR not in r)
    widths = {len(by_index[i]["p"]) for i in scored} - {model.num_classes}
    if widths:
        raise ScoreError(f"the model returns {widths.pop()} classes but labels.txt has "
                         f"{model.num_classes}")
    probs = np.asarray([by_index[i]["p"] for i in scored], np.float32) \
        .reshape(len(scored), model.num_classes)
    failed = sorted(set(range(len(source))) - set(scored))
    skipped = list(source.skipped)
    if failed:
        if source.kind == "records":
            reasons = {i: by_index[i].get(ERROR, "not scored") for i in failed}
        else:   # a few files: the local path's own reasons (read, convert, decode)
            reasons = _failure_reasons(source, failed)
        skipped += [(source.image_ids[i], source.case_ids[i], reasons[i]) for i in failed]
        log.warning("%d image(s) of %s could not be read or decoded: skipped (see "
                    "skipped.csv)", len(failed), source.spec)
    return Predictions(source, np.asarray(scored, np.int64), probs, skipped)


__all__ = ["ERROR", "work_line", "shard_images", "read_file", "record_order", "assemble"]
