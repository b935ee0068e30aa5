"""The case-grouped TFRecord schema (version 3; its table is in docs/architecture.md):
one owner, shared by data_prep (writing) and training / scoring (reading).

Version 2 adds patient / acquisition metadata per image (``meta/keys``, ``image/meta``);
version 3 adds the case's near-identical image pairs (``image/near_pairs``: one
photograph with other colour processing or crop), so MICLe never takes such a pair as
"two photos of one case". Older records read back with no metadata and no such pairs.

One ``tf.train.Example`` per case. Shards are ``<dir>/<split>-00000-of-000NN.tfrecord``;
``<dir>/dataset.json`` describes the dataset; nested label-fraction subsets are
``<dir>/subsets/<split>-<pct>pct.txt`` (one case id per line). ``<dir>`` may be a URL
(``gs://...``; files through tfmicle.fileio, shards through TFRecordDataset).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import tensorflow as tf

from tfmicle import fileio

SCHEMA_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)  # v1 = v2 without metadata; v2 = v3 without near pairs
DATASET_JSON = "dataset.json"
SUBSETS_DIR = "subsets"

K_CASE_ID = "case/id"
K_PATIENT_ID = "patient/id"
K_IMAGES = "image/encoded"
K_IMAGE_IDS = "image/id"
K_VIEWS = "image/view"
K_LABEL_CLASS = "label/class"
K_LABEL_MULTI = "label/multi"
K_META_KEYS = "meta/keys"       # v2: M metadata column names of the case
K_META = "image/meta"           # v2: N * M strings, image-major (image i: [i*M, (i+1)*M))
K_NEAR_PAIRS = "image/near_pairs"  # v3: 2P int64, image index pairs (a, b) that are one photo

UNLABELED = -1


def _bytes_list(values: Sequence[bytes | str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]))


def encode_case(case_id: str, images: Sequence[bytes], image_ids: Sequence[str],
                patient_id: str | None = None, views: Sequence[str] | None = None,
                label_class: int = UNLABELED,
                label_multi: Sequence[float] | None = None,
                meta_keys: Sequence[str] | None = None,
                meta: Sequence[Sequence[str]] | None = None,
                near_pairs: Sequence[tuple[int, int]] | None = None) -> tf.train.Example:
    """Builds the Example of one case.

    images: N >= 1 encoded JPEG/PNG byte strings in source order; image_ids: N ids;
    views: N view tags or None; label_multi: K floats (1, 0, -1 uncertain, NaN blank);
    meta_keys: M metadata column names; meta: N rows of M strings (source text, ''
    unknown), one row per image because some metadata (a CheXpert view, an ISIC site)
    differs between the images of a case; near_pairs: (a, b) image indices of
    near-identical images (one photograph re-processed); none: nothing is written, so
    such records stay byte-identical to v2's.
    """
    if len(images) < 1:
        raise ValueError(f"case {case_id!r} has no images")
    if len(image_ids) != len(images):
        raise ValueError(f"case {case_id!r}: {len(images)} images but {len(image_ids)} ids")
    if views and len(views) != len(images):
        raise ValueError(f"case {case_id!r}: {len(images)} images but {len(views)} views")
    meta_keys = list(meta_keys or [])
    meta = [list(row) for row in (meta or [])] if meta_keys else []
    if meta_keys and (len(meta) != len(images) or any(len(r) != len(meta_keys) for r in meta)):
        raise ValueError(f"case {case_id!r}: metadata must be {len(images)} rows of "
                         f"{len(meta_keys)} values")
    if any(not (0 <= a < len(images) and 0 <= b < len(images) and a != b)
           for a, b in near_pairs or []):
        raise ValueError(f"case {case_id!r}: near pairs must be two different indices "
                         f"below {len(images)}")
    feats = {
        K_CASE_ID: _bytes_list([case_id]),
        K_PATIENT_ID: _bytes_list([patient_id or case_id]),
        K_IMAGES: _bytes_list(images),
        K_IMAGE_IDS: _bytes_list(image_ids),
        K_VIEWS: _bytes_list(list(views or [])),
        K_LABEL_CLASS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label_class)])),
        K_LABEL_MULTI: tf.train.Feature(float_list=tf.train.FloatList(
            value=[float(v) for v in (label_multi or [])])),
        K_META_KEYS: _bytes_list(meta_keys),
        K_META: _bytes_list([v for row in meta for v in row]),
    }
    if near_pairs:
        feats[K_NEAR_PAIRS] = tf.train.Feature(int64_list=tf.train.Int64List(
            value=[int(v) for p in near_pairs for v in p]))
    return tf.train.Example(features=tf.train.Features(feature=feats))


_FEATURES = {
    K_CASE_ID: tf.io.FixedLenFeature([], tf.string),
    K_PATIENT_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    K_IMAGES: tf.io.VarLenFeature(tf.string),
    K_IMAGE_IDS: tf.io.VarLenFeature(tf.string),
    K_VIEWS: tf.io.VarLenFeature(tf.string),
    K_LABEL_CLASS: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    K_LABEL_MULTI: tf.io.VarLenFeature(tf.float32),
    K_META_KEYS: tf.io.VarLenFeature(tf.string),      # absent in v1: empty
    K_META: tf.io.VarLenFeature(tf.string),
    K_NEAR_PAIRS: tf.io.VarLenFeature(tf.int64),      # absent before v3: empty
}


def parse_case(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized case (a scalar tf.string) inside tf.data.

    Returns case_id [], patient_id [], images [N] string, image_ids [N], views [N or 0],
    label_class [] int64, label_multi [K] float32, meta_keys [M] string, meta [N, M]
    string (M = 0 for v1 records), near_pairs [P, 2] int64 (image indices of
    near-identical pairs; P = 0 before v3).
    """
    p = tf.io.parse_single_example(serialized, _FEATURES)
    keys = tf.sparse.to_dense(p[K_META_KEYS])
    images = tf.sparse.to_dense(p[K_IMAGES])
    return {
        "case_id": p[K_CASE_ID],
        "patient_id": p[K_PATIENT_ID],
        "images": images,
        "image_ids": tf.sparse.to_dense(p[K_IMAGE_IDS]),
        "views": tf.sparse.to_dense(p[K_VIEWS]),
        "label_class": p[K_LABEL_CLASS],
        "label_multi": tf.sparse.to_dense(p[K_LABEL_MULTI], default_value=math.nan),
        "meta_keys": keys,
        "meta": tf.reshape(tf.sparse.to_dense(p[K_META]), [-1, tf.size(keys)]),
        "near_pairs": tf.reshape(tf.sparse.to_dense(p[K_NEAR_PAIRS]), [-1, 2]),
    }


@dataclass
class Case:
    """A case read back in Python (for tools, inspection and tests)."""
    case_id: str
    patient_id: str
    images: list[bytes]
    image_ids: list[str]
    views: list[str] = field(default_factory=list)
    label_class: int = UNLABELED
    label_multi: list[float] = field(default_factory=list)
    meta: list[dict[str, str]] = field(default_factory=list)   # per image; [] in v1
    near_pairs: list[tuple[int, int]] = field(default_factory=list)  # image index pairs


def decode_case(serialized: bytes) -> Case:
    """Parses one serialized Example in plain Python (no graph)."""
    ex = tf.train.Example.FromString(serialized)
    f = ex.features.feature

    def strs(k: str) -> list[str]:
        return [v.decode("utf-8") for v in f[k].bytes_list.value] if k in f else []

    return Case(
        case_id=strs(K_CASE_ID)[0],
        patient_id=(strs(K_PATIENT_ID) or strs(K_CASE_ID))[0],
        images=list(f[K_IMAGES].bytes_list.value),
        image_ids=strs(K_IMAGE_IDS),
        views=strs(K_VIEWS),
        label_class=int(f[K_LABEL_CLASS].int64_list.value[0]) if K_LABEL_CLASS in f else UNLABELED,
        label_multi=list(f[K_LABEL_MULTI].float_list.value) if K_LABEL_MULTI in f else [],
        meta=_meta_rows(strs(K_META_KEYS), strs(K_META)),
        near_pairs=_pairs(list(f[K_NEAR_PAIRS].int64_list.value)) if K_NEAR_PAIRS in f else [],
    )


def _pairs(flat: list[int]) -> list[tuple[int, int]]:
    return [(int(flat[i]), int(flat[i + 1])) for i in range(0, len(flat) - 1, 2)]


def _meta_rows(keys: list[str], flat: list[str]) -> list[dict[str, str]]:
    """N * M image-major values -> N dicts; [] without keys (v1)."""
    m = len(keys)
    return [dict(zip(keys, flat[i:i + m])) for i in range(0, len(flat), m)] if m else []


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-00000-of-00004.tfrecord``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of one split; raises FileNotFoundError when there are none."""
    paths = fileio.glob(fileio.join(data_dir, f"{split}-[0-9]*-of-[0-9]*.tfrecord"))
    if not paths:
        raise FileNotFoundError(f"no '{split}' shards in {data_dir}")
    return paths


def iter_cases(data_dir: str, split: str):
    """Yields the Cases of one split in shard order (plain Python)."""
    for path in list_shards(data_dir, split):
        for rec in tf.data.TFRecordDataset(path):
            yield decode_case(rec.numpy())


def read_image_metadata(data_dir: str, split: str
                        ) -> tuple[list[str], list[tuple[str, str, dict[str, str]]]]:
    """(metadata columns, [(case id, image id, {column: value})] for every image of a
    split), shard by shard, without reading the images into Python. Columns: the union
    over cases in first-seen order; v1 records give no columns and empty dicts. The
    training pipelines interleave shards, so match rows by (case id, image id)."""
    feats = {k: _FEATURES[k] for k in (K_IMAGE_IDS, K_META_KEYS, K_META)}
    feats[K_CASE_ID] = _FEATURES[K_CASE_ID]
    columns: dict[str, None] = {}
    rows = []

    def parse(s):
        p = tf.io.parse_single_example(s, feats)
        return {k: (tf.sparse.to_dense(v) if isinstance(v, tf.SparseTensor) else v)
                for k, v in p.items()}

    for el in tf.data.TFRecordDataset(list_shards(data_dir, split)).map(parse) \
            .as_numpy_iterator():
        keys = [k.decode("utf-8") for k in el[K_META_KEYS]]
        columns.update(dict.fromkeys(keys))
        case_id = el[K_CASE_ID].decode("utf-8", "replace")
        image_ids = [i.decode("utf-8", "replace") for i in el[K_IMAGE_IDS]]
        meta = _meta_rows(keys, [v.decode("utf-8", "replace") for v in el[K_META]])
        rows += [(case_id, i, m) for i, m in zip(image_ids, meta or [{} for _ in image_ids])]
    return list(columns), rows


def load_dataset_info(data_dir: str) -> dict:
    """Reads ``dataset.json``; raises FileNotFoundError with the path when missing."""
    path = fileio.join(data_dir, DATASET_JSON)
    if not fileio.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {data_dir} a data_prep output?)")
    return json.loads(fileio.read_text(path))


def subset_path(data_dir: str, split: str, fraction: float) -> str:
    """Path of the case-id list of a label-fraction subset, e.g. ``subsets/train-10pct.txt``."""
    pct = np.round(fraction * 100, 6)
    return fileio.join(data_dir, SUBSETS_DIR, f"{split}-{pct:g}pct.txt")


def read_subset(data_dir: str, split: str, fraction: float) -> list[str]:
    """Case ids of a nested label-fraction subset written by data_prep."""
    path = subset_path(data_dir, split, fraction)
    if not fileio.isfile(path):
        raise FileNotFoundError(f"label subset {path} not found (data_prep --label-fractions)")
    return [line.strip() for line in fileio.read_text(path).splitlines() if line.strip()]
