"""Scoring: the sources that are datasets, a records split and a TFDS split (the Source
interface: tfmicle/score/source_base.py). They learn their rows (ids, labels) while they are
scored, from the same stream as the images: one pass over the data. Labels are the
dataset's classes mapped onto the model's by name. Map: docs/architecture.md."""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.source_base import ROW_FIELDS, Source
from tfmicle.tasks import MULTICLASS


class DatasetSource(Source):
    """A split read through tfmicle.data.pipeline.image_examples; rows in its order."""
    row_fields = ROW_FIELDS

    def __init__(self, spec: str, data_dir: str, split: str, num_labels: int,
                 expected: int | None, convert_labels: Callable, tfds=None,
                 meta_columns: list[str] | None = None):
        super().__init__(spec, None, None, None, meta_columns)
        self.data_dir, self.split = data_dir, split   # data_dir "" for TFDS
        self.num_labels = num_labels    # K of the dataset's label_multi (>= 1)
        self.expected = expected        # images of the split per its metadata
        self.convert_labels = convert_labels   # (label_class, label_multi) -> labels
        self.tfds = tfds                # the tfmicle.data.tfds_source.TfdsSource
        self.meta: list[dict[str, str]] | None = None

    def __len__(self) -> int:
        if self.image_ids is not None:
            return len(self.image_ids)
        return int(self.expected or 0)

    def encoded(self):
        from tfmicle.data.pipeline import PipelineConfig, image_examples
        return image_examples(PipelineConfig(self.data_dir, self.split, tfds=self.tfds),
                              self.num_labels).enumerate().map(
            lambda i, el: {"index": i, "reason": "", **el})

    def take_rows(self, fields: dict) -> None:
        """fields: image_id, case_id [N] bytes, label_class [N] int, label_multi [N, K]."""
        import numpy as np
        self.image_ids = [b.decode("utf-8", "replace") for b in fields["image_id"]]
        self.case_ids = [b.decode("utf-8", "replace") for b in fields["case_id"]]
        self.labels = self.convert_labels(
            np.asarray(fields["label_class"], np.int64),
            np.asarray(fields["label_multi"], np.float64).reshape(-1, self.num_labels))

    def metadata(self) -> tuple[list[str], list[dict[str, str]]]:
        if self.image_ids is None:      # before scoring: the columns the metadata declares
            return self.meta_columns, []
        if self.meta is None:
            self.meta = self._read_metadata()
        return self.meta_columns, self.meta

    def _read_metadata(self) -> list[dict[str, str]]:
        return [{} for _ in range(len(self))]


class TfdsSplitSource(DatasetSource):
    """A TFDS split (``tfds:NAME[/CONFIG]``), through tfmicle.data.tfds_source."""
    kind = "tfds"

    def work_lines(self) -> list[str]:
        # a user mistake, not a bug: one line, exit 2 (the local runner scores TFDS)
        raise ScoreError(f"{self.spec}: --runner beam scores records, image folders and CSV "
                         "manifests, not a TFDS split; drop --runner beam")

    read_work = None    # no Beam work list (work_lines says why)

    def take_beam_rows(self, rows: list[dict]) -> list[int]:
        raise NotImplementedError


class RecordsSource(DatasetSource):
    """One split of a records folder (data_prep's output); schema v2 metadata per image."""
    kind = "records"
    spread_after_read = True     # one shard, many images

    def _read_metadata(self) -> list[dict[str, str]]:
        """Read once, after scoring learnt the rows, matched by (case id, image id)
        because the record pipeline interleaves shards; v1 records: no columns."""
        from tfmicle.data import records
        cols, rows = records.read_image_metadata(self.data_dir, self.split)
        queues: dict[tuple[str, str], list[dict]] = {}
        for case_id, image_id, m in rows:
            queues.setdefault((case_id, image_id), []).append(m)
        meta = []
        for key in zip(self.case_ids, self.image_ids):
            q = queues.get(key)
            meta.append(q.pop(0) if q else {})
        self.meta_columns = cols
        return meta

    def work_lines(self) -> list[str]:
        import json
        from tfmicle.data.records import list_shards
        return [json.dumps({"shard": s, "path": p, "k": self.num_labels})
                for s, p in enumerate(list_shards(self.data_dir, self.split))]

    @staticmethod
    def read_work(line: str) -> Iterator[tuple[dict, bytes]]:
        import json
        item = json.loads(line)
        yield from shard_images((item["shard"], item["path"]), item["k"])

    def take_beam_rows(self, rows: list[dict]) -> list[int]:
        """Sorts rows into the local order (the order interleave_shards reads the
        shards in, rebuilt from the records per shard) and learns ids, labels and
        metadata from them."""
        import numpy as np
        counts: dict[int, int] = {}
        for r in rows:
            s, pos, _ = r["at"]
            counts[s] = max(counts.get(s, 0), pos + 1)
        num = max(counts, default=-1) + 1
        rank = {sr: i for i, sr in enumerate(record_order([counts.get(s, 0)
                                                            for s in range(num)]))}
        rows.sort(key=lambda r: (rank[tuple(r["at"][:2])], r["at"][2]))
        self.take_rows({"image_id": [r["id"].encode() for r in rows],
                        "case_id": [r["case"].encode() for r in rows],
                        "label_class": np.asarray([r["class"] for r in rows], np.int64),
                        "label_multi": np.asarray([r["multi"] for r in rows], np.float64)})
        # metadata columns: the union over cases in shard order, as records reads them
        columns: dict[str, None] = {}
        for r in sorted(rows, key=lambda r: r["at"]):
            columns.update(dict.fromkeys(r["meta"]))
        self.meta_columns, self.meta = list(columns), [r["meta"] for r in rows]
        return list(range(len(rows)))


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


def records_source(data_dir: str, split: str, model: ScoringModel) -> RecordsSource:
    from tfmicle.data import records
    info = records.load_dataset_info(data_dir)
    splits = info.get("splits", {})
    if split not in splits:
        raise ScoreError(f"split '{split}' not in {data_dir} (has: {', '.join(splits)}); "
                         "choose one with --split")
    records.list_shards(data_dir, split)
    expected = splits[split].get("images")
    names = list(info.get("class_names", []))
    return RecordsSource(f"{data_dir} ({split})", data_dir, split, max(len(names), 1),
                         int(expected) if expected is not None else None,
                         _label_converter(data_dir, info.get("task", MULTICLASS), names, model),
                         meta_columns=list(info.get("metadata_columns") or []))  # schema v2


def tfds_source(spec: str, split: str, model: ScoringModel, options: dict | None = None
                ) -> TfdsSplitSource:
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
    names = list(info["class_names"])
    return TfdsSplitSource(f"{src.spec} ({split})", "", split, max(len(names), 1), n,
                           _label_converter(src.spec, info["task"], names, model), tfds=src)


def _label_converter(where: str, task: str, names: list[str], model: ScoringModel
                     ) -> Callable:
    """(label_class [N], label_multi [N, K]) -> labels in the model's class order: the
    dataset's labels (class names, task) mapped onto the model's classes by name."""
    import numpy as np
    if names and task != model.task:
        raise ScoreError(f"{where} is {task} but the model is {model.task}")
    missing = [n for n in names if n not in model.class_names]
    label_map = np.array([model.class_names.index(n) if n in model.class_names else -1
                          for n in names] + [-1], np.int64)

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

    return convert


__all__ = ["DatasetSource", "RecordsSource", "TfdsSplitSource", "records_source",
           "tfds_source", "shard_images", "record_order"]
