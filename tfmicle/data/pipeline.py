"""tf.data pipelines over case-grouped records: SimCLR pairs, MICLe pairs, supervised
and eval. All randomness is seeded (stateless ops fed by a seeded random stream)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import tensorflow as tf

from tfmicle.data import records
from tfmicle.data.augment import (AugmentConfig, augment_batch, crop_view, decode_image,
                                  preprocess_eval)

AUTOTUNE = tf.data.AUTOTUNE


@dataclass(frozen=True)
class PipelineConfig:
    """How records become batches. batch_size is the global batch."""
    data_dir: str
    split: str = "train"
    batch_size: int = 256
    image_size: int = 224
    shuffle_buffer: int = 10_000
    cache: bool = False
    seed: int = 0
    case_ids: tuple[str, ...] | None = None  # keep only these cases (label subsets)


def read_cases(cfg: PipelineConfig, shuffle: bool) -> tf.data.Dataset:
    """Parsed cases (records.parse_case dicts) of one split; shards interleaved in
    parallel, optionally filtered to cfg.case_ids and cached."""
    paths = records.list_shards(cfg.data_dir, cfg.split)
    files = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        files = files.shuffle(len(paths), seed=cfg.seed)
    ds = files.interleave(tf.data.TFRecordDataset, cycle_length=min(len(paths), 8),
                          num_parallel_calls=AUTOTUNE, deterministic=True)
    ds = ds.map(records.parse_case, num_parallel_calls=AUTOTUNE)
    if cfg.case_ids is not None:
        keep = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(list(cfg.case_ids), tf.string),
                                                tf.ones([len(cfg.case_ids)], tf.int32)), 0)
        ds = ds.filter(lambda c: keep.lookup(c["case_id"]) > 0)
    if cfg.cache:
        ds = ds.cache()
    return ds


def _images_of_cases(cases: tf.data.Dataset) -> tf.data.Dataset:
    """Cases -> one element per image: image (encoded), case_id, image_id, label_class,
    label_multi."""
    def explode(c):
        n = tf.shape(c["images"])[0]
        return tf.data.Dataset.from_tensor_slices({
            "image": c["images"], "image_id": c["image_ids"],
            "case_id": tf.fill([n], c["case_id"]),
            "label_class": tf.fill([n], c["label_class"]),
            "label_multi": tf.tile(c["label_multi"][tf.newaxis], [n, 1]),
        })
    return cases.flat_map(explode)


def _with_seeds(ds: tf.data.Dataset, seed: int) -> tf.data.Dataset:
    """Zips each element with its own stateless seed [2] int64 from a seeded stream."""
    seeds = tf.data.Dataset.random(seed=seed).batch(2, drop_remainder=True)
    return tf.data.Dataset.zip((ds, seeds))


def _finish(ds: tf.data.Dataset, cfg: PipelineConfig, drop_remainder: bool = True,
            batch_fn=None):
    """Batches, applies batch_fn(batch, seed) (the vectorised half of the augmentation)
    with a seeded per-batch seed, prefetches."""
    ds = ds.batch(cfg.batch_size, drop_remainder=drop_remainder)
    if batch_fn is not None:
        ds = _with_seeds(ds, cfg.seed + 7919).map(batch_fn, num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _pair_batch_fn(aug: AugmentConfig):
    def fn(batch, seed):
        s = tf.random.experimental.stateless_split(seed, 2)
        out = dict(batch)
        out["view1"] = augment_batch(batch["view1"], s[0], aug)
        out["view2"] = augment_batch(batch["view2"], s[1], aug)
        return out
    return fn


def simclr_pairs(cfg: PipelineConfig, aug: AugmentConfig) -> tf.data.Dataset:
    """Infinite batches {view1, view2 [B, S, S, 3] float32, label [B] int32}: every image
    of every case is an example; its two views are two augmentations of it."""
    ds = _images_of_cases(read_cases(cfg, shuffle=True))
    ds = ds.repeat().shuffle(cfg.shuffle_buffer, seed=cfg.seed)

    def views(el, seed):
        img = decode_image(el["image"])
        s = tf.random.experimental.stateless_split(seed, 2)
        return {"view1": crop_view(img, s[0], cfg.image_size, aug),
                "view2": crop_view(img, s[1], cfg.image_size, aug),
                "label": tf.cast(el["label_class"], tf.int32)}
    return _finish(_with_seeds(ds, cfg.seed).map(views, num_parallel_calls=AUTOTUNE), cfg,
                   batch_fn=_pair_batch_fn(aug))


def micle_pick(num_images: tf.Tensor, seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Two indices into a case's images: distinct and uniformly drawn when the case has
    >= 2 images, (0, 0) for a single-image case."""
    i = tf.random.stateless_uniform([], seed, 0, num_images, dtype=tf.int32)
    seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
    # j uniform over the other n - 1 images.
    off = tf.random.stateless_uniform([], seed2, 1, tf.maximum(num_images, 2), dtype=tf.int32)
    j = tf.where(num_images >= 2, (i + off) % num_images, i)
    return i, j


def micle_pairs(cfg: PipelineConfig, aug: AugmentConfig) -> tf.data.Dataset:
    """Infinite batches like simclr_pairs, one example per case: a case with >= 2 images
    gives views of two different images (picked at random each time the case comes
    round); a single-image case gives two views of its one image."""
    ds = read_cases(cfg, shuffle=True).repeat().shuffle(cfg.shuffle_buffer, seed=cfg.seed)

    def views(c, seed):
        s = tf.random.experimental.stateless_split(seed, 3)
        i, j = micle_pick(tf.shape(c["images"])[0], s[0])
        return {"view1": crop_view(decode_image(c["images"][i]), s[1], cfg.image_size, aug),
                "view2": crop_view(decode_image(c["images"][j]), s[2], cfg.image_size, aug),
                "label": tf.cast(c["label_class"], tf.int32)}
    return _finish(_with_seeds(ds, cfg.seed).map(views, num_parallel_calls=AUTOTUNE), cfg,
                   batch_fn=_pair_batch_fn(aug))


def supervised(cfg: PipelineConfig, aug: AugmentConfig, task: str = "multiclass",
               repeat: bool = True) -> tf.data.Dataset:
    """Batches (image [B, S, S, 3], label) for fine-tuning. multiclass: label [B] int32,
    unlabeled (-1) images dropped; multilabel: label [B, K] float32 as stored (1, 0, -1,
    NaN), cases without targets dropped."""
    ds = _images_of_cases(read_cases(cfg, shuffle=True))
    if task == "multiclass":
        ds = ds.filter(lambda el: el["label_class"] >= 0)
    else:
        ds = ds.filter(lambda el: tf.size(el["label_multi"]) > 0)
    if repeat:
        ds = ds.repeat()
    ds = ds.shuffle(cfg.shuffle_buffer, seed=cfg.seed)

    def example(el, seed):
        img = crop_view(decode_image(el["image"]), seed, cfg.image_size, aug)
        label = (tf.cast(el["label_class"], tf.int32) if task == "multiclass"
                 else el["label_multi"])
        return img, label

    def batch_fn(batch, seed):
        return augment_batch(batch[0], seed, aug), batch[1]
    return _finish(_with_seeds(ds, cfg.seed).map(example, num_parallel_calls=AUTOTUNE), cfg,
                   batch_fn=batch_fn)


def image_examples(cfg: PipelineConfig, num_labels: int = 0) -> tf.data.Dataset:
    """Every image of a split (or of cfg.case_ids) once, in record order, unbatched:
    dicts of image (encoded), case_id, image_id, label_class [] int64, label_multi.
    With num_labels K > 0, an unlabeled case's empty label_multi becomes K NaNs, so a
    multi-label split with unlabeled cases still batches."""
    cases = read_cases(cfg, shuffle=False)
    if num_labels > 0:
        def pad(c):
            c = dict(c)
            m = c["label_multi"]
            c["label_multi"] = tf.cond(tf.size(m) > 0, lambda: m,
                                       lambda: tf.fill([num_labels], float("nan")))
            c["label_multi"].set_shape([num_labels])
            return c
        cases = cases.map(pad, num_parallel_calls=AUTOTUNE, deterministic=True)
    return _images_of_cases(cases)


def evaluation(cfg: PipelineConfig, num_labels: int = 0) -> tf.data.Dataset:
    """One pass, in record order, every image once: batches of dicts image [B, S, S, 3]
    (centre crop, as the exported model), case_id, image_id, label_class, label_multi
    (padded to num_labels, see image_examples)."""
    def prep(el):
        el = dict(el)
        el["image"] = preprocess_eval(el["image"], cfg.image_size)
        return el
    ds = image_examples(cfg, num_labels).map(prep, num_parallel_calls=AUTOTUNE,
                                             deterministic=True)
    return _finish(ds, cfg, drop_remainder=False)


def count_examples(data_dir: str, split: str, per: str) -> int:
    """Number of images (per="image") or cases (per="case") of a split, from dataset.json."""
    info = records.load_dataset_info(data_dir)
    s = info["splits"][split]
    return int(s["images"] if per == "image" else s["cases"])


def pretrain_dataset(method: str, cfg: PipelineConfig, aug: AugmentConfig) -> tf.data.Dataset:
    """simclr | micle pair batches."""
    if method == "simclr":
        return simclr_pairs(cfg, aug)
    if method == "micle":
        return micle_pairs(cfg, aug)
    raise ValueError(f"unknown pretraining method {method!r} (simclr | micle)")


def class_names(data_dir: str) -> Sequence[str]:
    return records.load_dataset_info(data_dir).get("class_names", [])
