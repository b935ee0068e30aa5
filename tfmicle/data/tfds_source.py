"""TensorFlow Datasets (TFDS) as a data source, next to data_prep's records.

A TFDS split is read into exactly the element structure ``records.parse_case`` gives
(case_id, patient_id, images [N] encoded, image_ids [N], views [0], label_class,
label_multi [0], meta_keys [0], meta [N, 0]: no metadata columns), so pipeline.py's
SimCLR / MICLe pairs, epoch_stream, supervised and evaluation batches, and scoring run
on it unchanged: one pipeline, two sources.

- Images stay encoded (``tfds.decode.SkipDecoding``) and are decoded by
  ``augment.decode_image`` like record images.
- Every example is its own case (case id = image id = its ``tfds_id``, e.g.
  ``imagenet2012-train.tfrecord-00012-of-01024__345``) unless ``case_key`` names a
  feature; then the examples sharing its value form one case. Grouping reads the
  case feature once (case_sizes) and then emits each case as soon as its last image
  is read, so a split stored case by case holds one case in memory at a time and a
  shuffled one at worst the split's encoded images.
- Labels come from a ClassLabel feature (``label_key``; "" = unlabeled, -1): the task
  is multiclass and the class names are the ClassLabel's.
- Order: a prepared split is read in parts (even TFDS sub-splits, about one per shard,
  at most MAX_PARTS) whose order epoch_stream draws from its per-epoch seed, as records
  shuffle their shards; then come its permutations within windows of
  data.shuffle_buffer examples. Everywhere else (and when TFDS does not know the
  split's size, as under tfds.testing.mock_data) the order is TFDS's own, fixed.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import tensorflow as tf

from tfmicle.config import ConfigError, TfdsConfig
from tfmicle.tasks import MULTICLASS

SPEC_PREFIX = "tfds:"  # how a TFDS source is named in messages, finetune.json and scoring
MAX_PARTS = 64  # most parts an epoch's read order permutes (ImageNet: 1024 shards)


class TfdsError(ConfigError):
    """A TFDS source is misconfigured or not prepared (user-facing, one line)."""


@dataclass(frozen=True)
class TfdsSource:
    """Which TFDS dataset and features to read. name may carry a version
    ("mnist:3.0.1"); config "" = the builder's default."""
    name: str
    config: str = ""
    image_key: str = "image"
    label_key: str = "label"
    case_key: str = ""
    data_dir: str = ""
    manual_dir: str = ""
    prepare: bool = False

    @property
    def spec(self) -> str:
        """tfds:name[/config]."""
        return SPEC_PREFIX + self.name + (f"/{self.config}" if self.config else "")


def from_config(t: TfdsConfig) -> TfdsSource:
    """data.tfds of a config as a TfdsSource (TfdsError without a name)."""
    if not t.name:
        raise TfdsError("data.source is tfds but data.tfds.name is not set "
                        "(e.g. --set data.tfds.name=imagenet2012)")
    return TfdsSource(t.name, t.config, t.image_key, t.label_key, t.case_key, t.data_dir,
                      t.manual_dir, t.prepare)


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError:  # pragma: no cover - a dependency of the install
        raise TfdsError("data.source tfds needs tensorflow-datasets "
                        "(pip install -e '.[tfds]')") from None
    return tfds


@functools.lru_cache(maxsize=16)
def builder(src: TfdsSource):
    """The TFDS builder of src, prepared first when src.prepare (a manual dataset such as
    imagenet2012 reads its downloaded archives from src.manual_dir). Checks the feature
    keys."""
    tfds = _tfds()
    kwargs = {"data_dir": src.data_dir or None}
    if src.config:
        kwargs["config"] = src.config
    try:
        b = tfds.builder(src.name, **kwargs)
    except Exception as e:  # noqa: BLE001 - TFDS raises several kinds (unknown name, config)
        raise TfdsError(f"{src.spec}: {_first_line(e)}") from None
    if src.prepare:
        cfg = tfds.download.DownloadConfig(manual_dir=src.manual_dir or None)
        try:
            b.download_and_prepare(download_config=cfg)
        except Exception as e:  # noqa: BLE001
            raise TfdsError(f"{src.spec}: cannot prepare: {_first_line(e)}") from None
    features = b.info.features
    if src.image_key not in features:
        raise TfdsError(f"{src.spec}: no image feature {src.image_key!r} (features: "
                        f"{', '.join(features.keys())})")
    if not isinstance(features[src.image_key], tfds.features.Image):
        raise TfdsError(f"{src.spec}: feature {src.image_key!r} is "
                        f"{type(features[src.image_key]).__name__}, not an Image")
    for role, key in (("label", src.label_key), ("case", src.case_key)):
        if key and key not in features:
            raise TfdsError(f"{src.spec}: no {role} feature {key!r} (features: "
                            f"{', '.join(features.keys())})")
    if src.label_key and not isinstance(features[src.label_key], tfds.features.ClassLabel):
        raise TfdsError(f"{src.spec}: label feature {src.label_key!r} is not a ClassLabel")
    return b


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


def class_names(src: TfdsSource) -> list[str]:
    """The ClassLabel's names ([] when unlabeled)."""
    if not src.label_key:
        return []
    return list(builder(src).info.features[src.label_key].names)


def check_split(src: TfdsSource, split: str) -> None:
    """TfdsError when the dataset is not prepared or its metadata does not know split
    (TFDS slicing such as "train[:10%]" is accepted)."""
    splits = builder(src).info.splits
    if not list(splits.keys()):
        _examples(src, split)  # not prepared: TFDS knows no splits; this says so
        return
    try:
        splits[split]
    except Exception:  # noqa: BLE001 - KeyError / ValueError / AssertionError by version
        raise TfdsError(f"split {split!r} not in {src.spec} (has: "
                        f"{', '.join(splits.keys())})") from None


def dataset_info(src: TfdsSource) -> dict:
    """What data_prep's dataset.json says, for a TFDS dataset: task, class_names."""
    return {"task": MULTICLASS, "class_names": class_names(src), "source": src.spec}


def _examples(src: TfdsSource, split: str) -> tf.data.Dataset:
    """The split's examples in TFDS order, the image left encoded, with tfds_id."""
    tfds = _tfds()
    b = builder(src)
    rc = tfds.ReadConfig(add_tfds_id=True, try_autocache=False)
    try:
        return b.as_dataset(split=split, shuffle_files=False, read_config=rc,
                            decoders={src.image_key: tfds.decode.SkipDecoding()})
    except AssertionError as e:  # "could not find data in ...": not prepared
        manual = getattr(b, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
        how = f"tfds build {src.spec[len(SPEC_PREFIX):]}"
        if manual or src.manual_dir:
            how += f" --manual_dir {src.manual_dir or 'DIR'}"
        if src.data_dir:
            how += f" --data_dir {src.data_dir}"
        raise TfdsError(f"{src.spec} is not prepared in {src.data_dir or 'the TFDS data dir'}"
                        f" (run `{how}` or set data.tfds.prepare: true): "
                        f"{_first_line(e)}") from None
    except (KeyError, ValueError) as e:
        raise TfdsError(f"{src.spec} split {split!r}: {_first_line(e)}") from None


def _case_id(src: TfdsSource, ex: dict) -> tf.Tensor:
    """The case of an example: its case_key feature as a string, else its tfds_id."""
    if not src.case_key:
        return tf.reshape(ex["tfds_id"], [])
    value = ex[src.case_key]
    return tf.reshape(value if value.dtype == tf.string else tf.strings.as_string(value), [])


def _empty(dtype: tf.DType, rows: tf.Tensor | None = None) -> tf.Tensor:
    """[0] (or [rows, 0]) tensor of static shape [None] ([None, None]), as parse_case's
    views / label_multi / meta_keys / meta have: a static [0] float component makes
    ragged_batch build a dense [B, 0] batch, and unbatching that crashes TensorFlow 2.21
    (segfault)."""
    if rows is None:
        return tf.raw_ops.PlaceholderWithDefault(input=tf.zeros([0], dtype), shape=[None])
    return tf.raw_ops.PlaceholderWithDefault(input=tf.zeros(tf.stack([rows, 0]), dtype),
                                             shape=[None, None])


def _no_pairs() -> tf.Tensor:
    """[0, 2] int64 of static shape [None, 2], as parse_case's near_pairs (see _empty)."""
    return tf.raw_ops.PlaceholderWithDefault(input=tf.zeros([0, 2], tf.int64),
                                             shape=[None, 2])


def _as_case(src: TfdsSource):
    """One TFDS example -> a one-image case in records.parse_case's structure."""
    def fn(ex):
        case_id = _case_id(src, ex)
        label = tf.cast(ex[src.label_key], tf.int64) if src.label_key else \
            tf.constant(-1, tf.int64)
        return {"case_id": case_id, "patient_id": case_id,
                "images": tf.reshape(ex[src.image_key], [1]),
                "image_ids": tf.reshape(ex["tfds_id"], [1]), "views": _empty(tf.string),
                "label_class": label, "label_multi": _empty(tf.float32),
                "meta_keys": _empty(tf.string), "meta": _empty(tf.string, 1),
                "near_pairs": _no_pairs()}
    return fn


@functools.lru_cache(maxsize=32)
def case_sizes(src: TfdsSource, split: str) -> tuple[tuple[bytes, ...], tuple[int, ...]]:
    """(case ids in order of first appearance, images of each): one pass over the
    split's case feature (images are read but not decoded)."""
    sizes: dict[bytes, int] = {}
    ids = _examples(src, split).map(lambda ex: _case_id(src, ex),
                                    num_parallel_calls=tf.data.AUTOTUNE)
    for c in ids.as_numpy_iterator():
        sizes[c] = sizes.get(c, 0) + 1
    return tuple(sizes), tuple(sizes.values())


def _grouper(src: TfdsSource, split: str
             ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """cases -> grouped cases: one-image cases -> one case per distinct case id, its
    images in read order; the label of a case is its last example's (examples of one
    case share it in a sane dataset). A case is emitted as soon as its last image is
    read (its size is known from case_sizes, read here, eagerly), so only incomplete
    cases wait in memory."""
    ids, sizes = case_sizes(src, split)
    if not ids:
        return lambda cases: cases
    index = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(ids, tf.string), tf.range(len(ids), dtype=tf.int64)), -1)
    size_of = tf.constant(sizes, tf.int64)

    def merge(b):
        return {"case_id": b["case_id"][0], "patient_id": b["patient_id"][0],
                "images": tf.reshape(b["images"], [-1]),
                "image_ids": tf.reshape(b["image_ids"], [-1]),
                "views": _empty(tf.string), "label_class": b["label_class"][-1],
                "label_multi": _empty(tf.float32), "meta_keys": _empty(tf.string),
                "meta": _empty(tf.string, tf.shape(b["images"])[0]),
                "near_pairs": _no_pairs()}

    def group(cases: tf.data.Dataset) -> tf.data.Dataset:
        return cases.group_by_window(
            key_func=lambda c: index.lookup(c["case_id"]),
            reduce_func=lambda key, window: window.batch(tf.gather(size_of, key)),
            window_size_func=lambda key: tf.gather(size_of, key)).map(merge)
    return group


def read_cases(src: TfdsSource, split: str) -> tf.data.Dataset:
    """The split as cases (records.parse_case dicts), in a deterministic order."""
    cases = _examples(src, split).map(_as_case(src), num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True)
    return _grouper(src, split)(cases) if src.case_key else cases


def epoch_reader(src: TfdsSource, split: str
                 ) -> Callable[[tf.Tensor], tf.data.Dataset] | None:
    """For epoch_stream: file_seed [2] int64 -> the split's cases, its parts read one
    after another in an order drawn statelessly from file_seed. The parts are even TFDS
    sub-splits, one per shard up to MAX_PARTS (so a part seldom starts inside a shard it
    must skip into). None when the split has one shard or TFDS does not know its size
    (then epochs read in TFDS's fixed order)."""
    tfds = _tfds()
    splits = builder(src).info.splits
    try:
        shards, total = int(splits[split].num_shards or 0), int(splits[split].num_examples)
    except Exception:  # noqa: BLE001 - no metadata (mocked), or a split TFDS cannot size
        return None
    n = min(shards, MAX_PARTS, total)
    if n < 2:
        return None
    parts = tfds.even_splits(split, n=n)
    sizes = tf.constant([int(splits[p].num_examples) for p in parts], tf.int64)
    datasets = [_examples(src, p).map(_as_case(src), num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True) for p in parts]
    group = _grouper(src, split) if src.case_key else (lambda cases: cases)

    def read(file_seed: tf.Tensor) -> tf.data.Dataset:
        order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64),
                                                         file_seed)
        choice = tf.data.Dataset.from_tensor_slices(order).flat_map(
            lambda i: tf.data.Dataset.from_tensors(i).repeat(tf.gather(sizes, i)))
        return group(tf.data.Dataset.choose_from_datasets(datasets, choice))
    return read


def count(src: TfdsSource, split: str, per: str) -> int:
    """Images (per="image") or cases (per="case") of a split: the dataset's known
    cardinality or the TFDS metadata, or (cases with a case_key) one pass."""
    if per == "case" and src.case_key:
        return len(case_sizes(src, split)[0])
    n = int(_examples(src, split).cardinality())
    if n >= 0:
        return n
    try:
        return int(builder(src).info.splits[split].num_examples)
    except Exception:  # noqa: BLE001 - no metadata: count by reading
        return int(_examples(src, split).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


__all__ = ["TfdsSource", "TfdsError", "SPEC_PREFIX", "from_config", "builder", "class_names",
           "check_split", "dataset_info", "case_sizes", "read_cases", "epoch_reader", "count"]
