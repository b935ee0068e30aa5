"""The case-grouped TFRecord schema (version 1; its table is in docs/architecture.md):
one owner, shared by data_prep (writing) and training / scoring (reading).

One ``tf.train.Example`` per case. Shards are ``<dir>/<split>-00000-of-000NN.tfrecord``;
``<dir>/dataset.json`` describes the dataset; nested label-fraction subsets are
``<dir>/subsets/<split>-<pct>pct.txt`` (one case id per line).
"""
from __future__ import annotations

import glob
import json
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import tensorflow as tf

SCHEMA_VERSION = 1
DATASET_JSON = "dataset.json"
SUBSETS_DIR = "subsets"

K_CASE_ID = "case/id"
K_PATIENT_ID = "patient/id"
K_IMAGES = "image/encoded"
K_IMAGE_IDS = "image/id"
K_VIEWS = "image/view"
K_LABEL_CLASS = "label/class"
K_LABEL_MULTI = "label/multi"

UNLABELED = -1


def _bytes_list(values: Sequence[bytes | str]) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(
        value=[v.encode("utf-8") if isinstance(v, str) else bytes(v) for v in values]))


def encode_case(case_id: str, images: Sequence[bytes], image_ids: Sequence[str],
                patient_id: str | None = None, views: Sequence[str] | None = None,
                label_class: int = UNLABELED,
                label_multi: Sequence[float] | None = None) -> tf.train.Example:
    """Builds the Example of one case.

    images: N >= 1 encoded JPEG/PNG byte strings in source order; image_ids: N ids;
    views: N view tags or None; label_multi: K floats (1, 0, -1 uncertain, NaN blank).
    """
    if len(images) < 1:
        raise ValueError(f"case {case_id!r} has no images")
    if len(image_ids) != len(images):
        raise ValueError(f"case {case_id!r}: {len(images)} images but {len(image_ids)} ids")
    if views and len(views) != len(images):
        raise ValueError(f"case {case_id!r}: {len(images)} images but {len(views)} views")
    feats = {
        K_CASE_ID: _bytes_list([case_id]),
        K_PATIENT_ID: _bytes_list([patient_id or case_id]),
        K_IMAGES: _bytes_list(images),
        K_IMAGE_IDS: _bytes_list(image_ids),
        K_VIEWS: _bytes_list(list(views or [])),
        K_LABEL_CLASS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label_class)])),
        K_LABEL_MULTI: tf.train.Feature(float_list=tf.train.FloatList(
            value=[float(v) for v in (label_multi or [])])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feats))


_FEATURES = {
    K_CASE_ID: tf.io.FixedLenFeature([], tf.string),
    K_PATIENT_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    K_IMAGES: tf.io.VarLenFeature(tf.string),
    K_IMAGE_IDS: tf.io.VarLenFeature(tf.string),
    K_VIEWS: tf.io.VarLenFeature(tf.string),
    K_LABEL_CLASS: tf.io.FixedLenFeature([], tf.int64, default_value=UNLABELED),
    K_LABEL_MULTI: tf.io.VarLenFeature(tf.float32),
}


def parse_case(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """Parses one serialized case (a scalar tf.string) inside tf.data.

    Returns case_id [], patient_id [], images [N] string, image_ids [N], views [N or 0],
    label_class [] int64, label_multi [K] float32.
    """
    p = tf.io.parse_single_example(serialized, _FEATURES)
    return {
        "case_id": p[K_CASE_ID],
        "patient_id": p[K_PATIENT_ID],
        "images": tf.sparse.to_dense(p[K_IMAGES]),
        "image_ids": tf.sparse.to_dense(p[K_IMAGE_IDS]),
        "views": tf.sparse.to_dense(p[K_VIEWS]),
        "label_class": p[K_LABEL_CLASS],
        "label_multi": tf.sparse.to_dense(p[K_LABEL_MULTI], default_value=math.nan),
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
    )


def shard_name(split: str, index: int, num_shards: int) -> str:
    """``<split>-00000-of-00004.tfrecord``."""
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def list_shards(data_dir: str, split: str) -> list[str]:
    """Sorted shard paths of one split; raises FileNotFoundError when there are none."""
    paths = sorted(glob.glob(os.path.join(data_dir, f"{split}-[0-9]*-of-[0-9]*.tfrecord")))
    if not paths:
        raise FileNotFoundError(f"no '{split}' shards in {data_dir}")
    return paths


def iter_cases(data_dir: str, split: str):
    """Yields the Cases of one split in shard order (plain Python)."""
    for path in list_shards(data_dir, split):
        for rec in tf.data.TFRecordDataset(path):
            yield decode_case(rec.numpy())


def load_dataset_info(data_dir: str) -> dict:
    """Reads ``dataset.json``; raises FileNotFoundError with the path when missing."""
    path = os.path.join(data_dir, DATASET_JSON)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found (is {data_dir} a data_prep output?)")
    with open(path) as f:
        return json.load(f)


def subset_path(data_dir: str, split: str, fraction: float) -> str:
    """Path of the case-id list of a label-fraction subset, e.g. ``subsets/train-10pct.txt``."""
    pct = np.round(fraction * 100, 6)
    return os.path.join(data_dir, SUBSETS_DIR, f"{split}-{pct:g}pct.txt")


def read_subset(data_dir: str, split: str, fraction: float) -> list[str]:
    """Case ids of a nested label-fraction subset written by data_prep."""
    path = subset_path(data_dir, split, fraction)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label subset {path} not found (data_prep --label-fractions)")
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]
