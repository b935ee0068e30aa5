"""TensorFlow Datasets (TFDS) as a data source, next to data_prep's records.

A TFDS split is read into exactly the element structure ``records.parse_case`` gives
(case_id, patient_id, images [N] encoded, image_ids [N], views [0], label_class,
label_multi [0]), so pipeline.py's SimCLR / MICLe pairs, epoch_stream, supervised and
evaluation batches, and scoring run on it unchanged: one pipeline, two sources.

- Images stay encoded (``tfds.decode.SkipDecoding``) and are decoded by
  ``augment.decode_image`` like record images.
- Every example is its own case (case id = image id = its ``tfds_id``, e.g.
  ``imagenet2012-train.tfrecord-00012-of-01024__345``) unless ``case_key`` names a
  feature; then the examples sharing its value form one case, grouped with
  ``group_by_reducer`` over the split (which holds the split's encoded images in memory
  while it groups; fine for medical sets, not for ImageNet, which has no case feature).
- Labels come from a ClassLabel feature (``label_key``; "" = unlabeled, -1): the task
  is multiclass and the class names are the ClassLabel's.
- The read order is TFDS's own (deterministic, files not shuffled): epoch_stream's
  per-epoch permutations happen within windows of data.shuffle_buffer examples.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import tensorflow as tf

from tfmicle.config import ConfigError, TfdsConfig
from tfmicle.tasks import MULTICLASS

SPEC_PREFIX = "tfds:"  # how a TFDS source is named in messages, finetune.json and scoring


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
    """TfdsError when the prepared dataset's metadata does not know split (TFDS slicing
    such as "train[:10%]" is accepted). Without metadata (not prepared) every split
    passes here and reading it fails with the TFDS message."""
    splits = builder(src).info.splits
    if not list(splits.keys()):
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
        raise TfdsError(f"{src.spec} is not prepared in {src.data_dir or 'the TFDS data dir'}"
                        f" (run `tfds build {src.name}"
                        f"{' --manual_dir ' + src.manual_dir if src.manual_dir else ''}`"
                        f" or set data.tfds.prepare: true): {_first_line(e)}") from None
    except (KeyError, ValueError) as e:
        raise TfdsError(f"{src.spec} split {split!r}: {_first_line(e)}") from None


def _as_case(src: TfdsSource):
    """One TFDS example -> a one-image case in records.parse_case's structure."""
    def fn(ex):
        tid = ex["tfds_id"]
        case_id = tf.strings.as_string(ex[src.case_key]) \
            if src.case_key and ex[src.case_key].dtype != tf.string else \
            (ex[src.case_key] if src.case_key else tid)
        label = tf.cast(ex[src.label_key], tf.int64) if src.label_key else \
            tf.constant(-1, tf.int64)
        return {"case_id": tf.reshape(case_id, []), "patient_id": tf.reshape(case_id, []),
                "images": tf.reshape(ex[src.image_key], [1]),
                "image_ids": tf.reshape(tid, [1]), "views": tf.zeros([0], tf.string),
                "label_class": label, "label_multi": tf.zeros([0], tf.float32)}
    return fn


def _group_cases(cases: tf.data.Dataset) -> tf.data.Dataset:
    """One-image cases -> one case per distinct case_id, images in read order; the label
    of a case is its last example's (examples of one case share it in a sane dataset)."""
    def init(_):
        return {"case_id": tf.constant(""), "patient_id": tf.constant(""),
                "images": tf.zeros([0], tf.string), "image_ids": tf.zeros([0], tf.string),
                "views": tf.zeros([0], tf.string), "label_class": tf.constant(-1, tf.int64),
                "label_multi": tf.zeros([0], tf.float32)}

    def reduce(state, c):
        return {**c, "images": tf.concat([state["images"], c["images"]], 0),
                "image_ids": tf.concat([state["image_ids"], c["image_ids"]], 0)}
    reducer = tf.data.experimental.Reducer(init, reduce, lambda s: s)
    return cases.apply(tf.data.experimental.group_by_reducer(
        lambda c: tf.strings.to_hash_bucket_fast(c["case_id"], 2 ** 62), reducer))


def read_cases(src: TfdsSource, split: str) -> tf.data.Dataset:
    """The split as cases (records.parse_case dicts), in a deterministic order."""
    cases = _examples(src, split).map(_as_case(src), num_parallel_calls=tf.data.AUTOTUNE,
                                      deterministic=True)
    return _group_cases(cases) if src.case_key else cases


def count(src: TfdsSource, split: str, per: str) -> int:
    """Images (per="image") or cases (per="case") of a split: the TFDS metadata's (or
    the dataset's known cardinality) when every example is its own case, else one pass
    over the split."""
    if per == "image" or not src.case_key:
        n = int(_examples(src, split).cardinality())
        if n >= 0:
            return n
        try:
            return int(builder(src).info.splits[split].num_examples)
        except Exception:  # noqa: BLE001 - no metadata: count below
            pass
    ds = read_cases(src, split)
    if per == "case":
        return int(ds.reduce(tf.constant(0, tf.int64), lambda n, c: n + 1))
    return int(ds.reduce(tf.constant(0, tf.int64),
                         lambda n, c: n + tf.cast(tf.shape(c["images"])[0], tf.int64)))


__all__ = ["TfdsSource", "TfdsError", "SPEC_PREFIX", "from_config", "builder", "class_names", "check_split",
           "dataset_info", "read_cases", "count"]
