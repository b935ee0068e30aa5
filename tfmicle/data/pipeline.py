"""tf.data pipelines over case-grouped records: SimCLR pairs, MICLe pairs, supervised
and eval. All randomness is seeded (stateless ops fed by a seeded random stream).

Two sources give the same cases: data_prep's records (data_dir) and a TFDS dataset
(PipelineConfig.tfds, read by tfmicle.data.tfds_source); everything after read_cases
is shared."""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import tensorflow as tf

from tfmicle.data import records, tfds_source
from tfmicle.data.tfds_source import TfdsSource
from tfmicle.tasks import MULTICLASS
from tfmicle.data.augment import (AugmentConfig, augment_batch, augment_view, decode_view,
                                  decode_views, preprocess_eval)

AUTOTUNE = tf.data.AUTOTUNE
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineConfig:
    """How records (or a TFDS split, with tfds set) become batches. batch_size is the
    global batch."""
    data_dir: str                  # records folder; "" with tfds
    split: str = "train"
    batch_size: int = 256
    image_size: int = 224
    shuffle_buffer: int = 10_000
    cache: bool = False
    seed: int = 0
    case_ids: tuple[str, ...] | None = None  # keep only these cases (label subsets)
    tfds: TfdsSource | None = None  # read this TFDS dataset instead of data_dir

    @property
    def where(self) -> str:
        """The source, for messages: the records folder or tfds:name[/config]."""
        return self.tfds.spec if self.tfds is not None else self.data_dir


SHARD_CYCLE = 8  # shards read at once, one record from each in turn


def interleave_shards(files: tf.data.Dataset, num_files: int, read) -> tf.data.Dataset:
    """The one record order of a split: read(file) of SHARD_CYCLE files at a time, one
    element from each in turn (deterministic). Scoring on Beam (tfmicle.score.beam)
    rebuilds this order from per-shard record counts through the same function."""
    return files.interleave(read, cycle_length=max(min(num_files, SHARD_CYCLE), 1),
                            num_parallel_calls=AUTOTUNE, deterministic=True)


def read_cases(cfg: PipelineConfig, shuffle: bool,
               file_seed: tf.Tensor | None = None) -> tf.data.Dataset:
    """Parsed cases (records.parse_case dicts) of one split; shards interleaved in
    parallel, optionally filtered to cfg.case_ids and cached. shuffle: shard order
    shuffled (seeded by cfg.seed); file_seed [2]: shard order permuted statelessly by
    this seed instead (the per-epoch order of epoch_stream). A TFDS source is read in
    its own fixed order (shuffle and file_seed do not apply)."""
    if cfg.tfds is not None:
        return _filter_and_cache(tfds_source.read_cases(cfg.tfds, cfg.split), cfg)
    paths = records.list_shards(cfg.data_dir, cfg.split)
    if file_seed is not None:
        files = tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.constant(paths), file_seed))
    else:
        files = tf.data.Dataset.from_tensor_slices(paths)
        if shuffle:
            files = files.shuffle(len(paths), seed=cfg.seed)
    ds = interleave_shards(files, len(paths), tf.data.TFRecordDataset)
    return _filter_and_cache(ds.map(records.parse_case, num_parallel_calls=AUTOTUNE), cfg)


def _filter_and_cache(ds: tf.data.Dataset, cfg: PipelineConfig) -> tf.data.Dataset:
    """Cases filtered to cfg.case_ids (when set), cached (cfg.cache)."""
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


def _batches_by_step(ds: tf.data.Dataset, cfg: PipelineConfig, start_step: int,
                     batch_fn) -> tf.data.Dataset:
    """Batches (whole ones), then applies batch_fn(batch, seed) (the vectorised half of
    the augmentation) with a seed of (cfg.seed, global step), so a resumed run
    continues the stream; prefetches."""
    base = tf.constant([cfg.seed, 7919], tf.int64)
    ds = ds.batch(cfg.batch_size, drop_remainder=True).enumerate(start=start_step)
    ds = ds.map(lambda step, batch: batch_fn(batch, tf.random.experimental.stateless_fold_in(
        base, step)), num_parallel_calls=AUTOTUNE)
    return ds.prefetch(AUTOTUNE)


def _pair_batch_fn(aug: AugmentConfig):
    def fn(batch, seed):
        s = tf.random.experimental.stateless_split(seed, 2)
        out = {k: v for k, v in batch.items() if k != "case_key"}
        out["view1"] = augment_batch(batch["view1"], s[0], aug)
        out["view2"] = augment_batch(batch["view2"], s[1], aug)
        out["same_case"] = same_case_counts(batch["case_key"])
        return out
    return fn


def same_case_counts(case_key: tf.Tensor) -> tf.Tensor:
    """case_key [B] int64 -> [B] float32: for each example, how many other examples of
    the batch come from its case (each such pair is a false negative for NT-Xent).
    The batch's same-case pairs are sum / 2."""
    eq = tf.cast(tf.equal(case_key[:, tf.newaxis], case_key[tf.newaxis, :]), tf.float32)
    return tf.reduce_sum(eq, axis=1) - 1.0


def _case_key(case_id: tf.Tensor) -> tf.Tensor:
    return tf.strings.to_hash_bucket_fast(case_id, 2 ** 62)


def epoch_stream(cfg: PipelineConfig, per: str, num_items: int, start_step: int = 0,
                 keep=None) -> tf.data.Dataset:
    """Infinite stream of (item, seed [2] int64) in epochs, ready for batching by
    cfg.batch_size; items are cases (per="case") or images (per="image").

    Epoch e: the shards in an order drawn from (cfg.seed, e) (with cfg.cache, the cached
    record order), then a permutation drawn from (cfg.seed, e, window) within every
    window of cfg.shuffle_buffer items (a full permutation when the split fits one
    window), cut to a whole number of batches: the last num_items % batch_size items of
    each epoch are left out, different ones each epoch. So no batch spans two epochs and
    an item never meets itself in a batch. Shuffling within each epoch and then
    repeating is SimCLR's order; repeating first and then shuffling draws with
    replacement.

    Every permutation and item seed is stateless, a function of (cfg.seed, epoch,
    position) only (tf.data's shuffle would also depend on TensorFlow's global seed), so
    the stream from start_step on is exactly what an uninterrupted run sees from that
    step: a resumed run continues the data instead of replaying it. With fewer items
    than a batch, epochs are not cut and batches do span them.

    keep: optional predicate on an item (a filter applied before the permutation, e.g.
    labeled images only); num_items then counts the items it keeps.
    """
    b = cfg.batch_size
    per_epoch = (num_items // b) * b if num_items >= b else num_items
    if per_epoch <= 0:
        raise ValueError(f"no examples in split '{cfg.split}' of {cfg.where}")
    start_epoch, skip = divmod(start_step * b, per_epoch)
    if num_items > cfg.shuffle_buffer:
        # data_prep writes cases in a seeded order; records kept in a source order
        # (e.g. sorted by label) would give label-blocked batches
        log.warning("shuffle buffer %d < the %d %ss of split '%s': each epoch is shuffled "
                    "only within windows of %d; raise data.shuffle_buffer",
                    cfg.shuffle_buffer, num_items, per, cfg.split, cfg.shuffle_buffer)
    base = tf.constant([cfg.seed, 104_729], tf.int64)
    # A TFDS split permutes its parts per epoch (tfds_source.epoch_reader) when TFDS can
    # cut it into parts; a cached split, or a TFDS one that cannot be cut, is built once
    # and re-read every epoch.
    tfds_epoch = tfds_source.epoch_reader(cfg.tfds, cfg.split) \
        if cfg.tfds is not None and not cfg.cache else None
    cached = read_cases(cfg, shuffle=False) \
        if cfg.cache or (cfg.tfds is not None and tfds_epoch is None) else None

    def epoch(e):
        es = tf.random.experimental.stateless_fold_in(base, e)
        file_seed = tf.random.experimental.stateless_fold_in(es, -1)
        if cached is not None:
            cases = cached
        elif tfds_epoch is not None:
            cases = _filter_and_cache(tfds_epoch(file_seed), replace(cfg, cache=False))
        else:
            cases = read_cases(cfg, shuffle=False, file_seed=file_seed)
        items = _images_of_cases(cases) if per == "image" else cases
        if keep is not None:
            items = items.filter(keep)

        def permute(w, window):
            idx = tf.random.experimental.stateless_shuffle(
                tf.range(tf.shape(w["case_id"])[0]),
                tf.random.experimental.stateless_fold_in(es, window))
            return {k: tf.gather(v, idx) for k, v in w.items()}
        items = (items.ragged_batch(cfg.shuffle_buffer).enumerate()
                 .map(lambda i, w: permute(w, i)).unbatch().take(per_epoch))
        seed_of = lambda i: tf.random.experimental.stateless_fold_in(es, i)  # noqa: E731
        return items.enumerate().map(lambda i, x: (x, seed_of(i)))
    return tf.data.Dataset.range(start_epoch, 2 ** 62).flat_map(epoch).skip(skip)


def _finish_pairs(ds: tf.data.Dataset, cfg: PipelineConfig, aug: AugmentConfig,
                  start_step: int) -> tf.data.Dataset:
    return _batches_by_step(ds, cfg, start_step, _pair_batch_fn(aug))


SIMCLR_UNITS = ("case", "image")


def simclr_pairs(cfg: PipelineConfig, aug: AugmentConfig, unit: str = "case",
                 start_step: int = 0) -> tf.data.Dataset:
    """Infinite batches {view1, view2 [B, S, S, 3] float32, label [B] int32, same_case
    [B] float32}; the two views of an example are two augmentations of one image.

    unit="case" (default, for case-grouped data): one example per case per epoch, an
    image picked uniformly at random from the case each time it comes round, so two
    images of one case never meet in a batch as negatives. unit="image": plain
    image-level SimCLR, every image an example (images of one case may share a batch).
    """
    if unit not in SIMCLR_UNITS:
        raise ValueError(f"unknown SimCLR unit {unit!r} (one of {SIMCLR_UNITS})")
    if unit == "image":
        n = count_items(cfg, "image")

        def views(el, seed):
            s = tf.random.experimental.stateless_split(seed, 4)
            v1, v2 = decode_views(el["image"], s[:2], cfg.image_size, aug)
            return {"view1": augment_view(v1, s[2], aug), "view2": augment_view(v2, s[3], aug),
                    "label": tf.cast(el["label_class"], tf.int32),
                    "case_key": _case_key(el["case_id"])}
    else:
        n = count_items(cfg, "case")

        def views(c, seed):
            s = tf.random.experimental.stateless_split(seed, 5)
            i, _ = micle_pick(tf.shape(c["images"])[0], s[0])
            v1, v2 = decode_views(c["images"][i], s[1:3], cfg.image_size, aug)
            return {"view1": augment_view(v1, s[3], aug), "view2": augment_view(v2, s[4], aug),
                    "label": tf.cast(c["label_class"], tf.int32),
                    "case_key": _case_key(c["case_id"])}
    ds = epoch_stream(cfg, unit, n, start_step).map(views, num_parallel_calls=AUTOTUNE)
    return _finish_pairs(ds, cfg, aug, start_step)


def micle_pick(num_images: tf.Tensor, seed: tf.Tensor,
               near_pairs: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
    """Two indices into a case's images. i is uniform; j is uniform over the other
    images that do not form a near-identical pair with i (near_pairs [P, 2] int64 image
    indices: one photograph re-processed), and j = i when there is none (a
    single-image case, or one whose other images are all copies of i's photo).

    Without pairs this is i uniform and j uniform over the other n - 1 images."""
    n = tf.cast(num_images, tf.int32)
    i = tf.random.stateless_uniform([], seed, 0, n, dtype=tf.int32)
    seed2 = tf.random.experimental.stateless_fold_in(seed, 1)
    # The other images in the order i+1, i+2, ... (mod n), kept unless paired with i:
    # without pairs, the k-th kept one is (i + k) % n.
    others = (i + tf.range(1, tf.maximum(n, 1), dtype=tf.int32)) % tf.maximum(n, 1)
    if near_pairs is not None:
        p = tf.cast(tf.reshape(near_pairs, [-1, 2]), tf.int32)
        o = others[:, tf.newaxis]
        paired = tf.reduce_any(((p[:, 0] == i) & (p[:, 1] == o)) |
                               ((p[:, 1] == i) & (p[:, 0] == o)), axis=1)
        others = tf.boolean_mask(others, tf.logical_not(paired))
    k = tf.size(others, out_type=tf.int32)
    off = tf.random.stateless_uniform([], seed2, 1, tf.maximum(k + 1, 2), dtype=tf.int32)
    j = tf.gather(tf.concat([others, tf.reshape(i, [1])], 0), off - 1)
    return i, j


def micle_pairs(cfg: PipelineConfig, aug: AugmentConfig,
                start_step: int = 0) -> tf.data.Dataset:
    """Infinite batches like simclr_pairs, one example per case per epoch: a case with
    >= 2 photos gives views of two different photos (picked at random each time the case
    comes round; a near-identical pair of the records, one photograph re-processed, is
    never taken); a case with one photo gives two views of one image. A case never
    appears twice in a batch when the split has at least batch_size cases."""
    def views(c, seed):
        s = tf.random.experimental.stateless_split(seed, 5)
        i, j = micle_pick(tf.shape(c["images"])[0], s[0], c["near_pairs"])
        v1 = decode_view(c["images"][i], s[1], cfg.image_size, aug)
        v2 = decode_view(c["images"][j], s[2], cfg.image_size, aug)
        return {"view1": augment_view(v1, s[3], aug), "view2": augment_view(v2, s[4], aug),
                "label": tf.cast(c["label_class"], tf.int32),
                "case_key": _case_key(c["case_id"])}
    ds = epoch_stream(cfg, "case", count_items(cfg, "case"), start_step)
    return _finish_pairs(ds.map(views, num_parallel_calls=AUTOTUNE), cfg, aug, start_step)


def _is_labeled(task: str):
    if task == MULTICLASS:
        return lambda el: el["label_class"] >= 0
    return lambda el: tf.size(el["label_multi"]) > 0


def supervised(cfg: PipelineConfig, aug: AugmentConfig, task: str = MULTICLASS,
               num_items: int | None = None, start_step: int = 0,
               class_weights: list[float] | None = None) -> tf.data.Dataset:
    """Infinite batches (image [B, S, S, 3], label) for fine-tuning, or (image, label,
    weight [B] float32) with class_weights (K floats, multiclass). multiclass: label
    [B] int32, unlabeled (-1) images dropped; multilabel: label [B, K] float32 as stored
    (1, 0, -1, NaN), cases without targets dropped.

    The order is epoch_stream's over labeled images (num_items of them; counted with a
    pass when None): each epoch a seeded permutation, then the next epoch, so every
    labeled image is seen once per epoch, and from start_step on the stream is what an
    uninterrupted run sees (a resumed run continues the data)."""
    keep = _is_labeled(task)
    if num_items is None:
        num_items = int(_images_of_cases(read_cases(cfg, shuffle=False)).filter(keep)
                        .reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))
    weights = None if class_weights is None else tf.constant(class_weights, tf.float32)

    def example(el, seed):
        s = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
        img = augment_view(decode_view(el["image"], s[0], cfg.image_size, aug), s[1], aug)
        if task != MULTICLASS:
            return img, el["label_multi"]
        label = tf.cast(el["label_class"], tf.int32)
        if weights is None:
            return img, label
        return img, label, tf.gather(weights, tf.maximum(label, 0))

    ds = epoch_stream(cfg, "image", num_items, start_step, keep=keep)
    return _batches_by_step(ds.map(example, num_parallel_calls=AUTOTUNE), cfg, start_step,
                            lambda b, seed: (augment_batch(b[0], seed, aug),) + tuple(b[1:]))


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
    return ds.batch(cfg.batch_size).prefetch(AUTOTUNE)


def count_examples(data_dir: str, split: str, per: str) -> int:
    """Number of images (per="image") or cases (per="case") of a split, from dataset.json."""
    info = records.load_dataset_info(data_dir)
    s = info["splits"][split]
    return int(s["images"] if per == "image" else s["cases"])


def count_items(cfg: PipelineConfig, per: str) -> int:
    """Images (per="image") or cases (per="case") a pipeline over cfg reads: from
    dataset.json (or the TFDS metadata), or by one pass over the records when
    cfg.case_ids filters them."""
    if cfg.case_ids is None:
        if cfg.tfds is not None:
            return tfds_source.count(cfg.tfds, cfg.split, per)
        return count_examples(cfg.data_dir, cfg.split, per)
    cases = read_cases(cfg, shuffle=False)
    if per == "case":
        return int(cases.reduce(tf.constant(0, tf.int64), lambda n, c: n + 1))
    return int(cases.reduce(tf.constant(0, tf.int64),
                            lambda n, c: n + tf.cast(tf.shape(c["images"])[0], tf.int64)))


def pretrain_dataset(method: str, cfg: PipelineConfig, aug: AugmentConfig,
                     simclr_unit: str = "case", start_step: int = 0) -> tf.data.Dataset:
    """simclr | micle pair batches from start_step on (see epoch_stream)."""
    if method == "simclr":
        return simclr_pairs(cfg, aug, simclr_unit, start_step)
    if method == "micle":
        return micle_pairs(cfg, aug, start_step)
    raise ValueError(f"unknown pretraining method {method!r} (simclr | micle)")


def pretrain_examples(method: str, simclr_unit: str = "case") -> str:
    """What one pretraining example is: "image" for image-level SimCLR, else "case"."""
    return "image" if method == "simclr" and simclr_unit == "image" else "case"
