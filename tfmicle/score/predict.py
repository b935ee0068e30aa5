"""Scoring: the predictions of one source. Images are preprocessed in tf.data with
tfmicle's one eval preprocessing (the function the exported graph runs), in parallel
with the model; images that cannot be read or decoded are skipped and listed with the
reason, never fatal. Map: docs/architecture.md."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from tfmicle.imagefiles import ImageError, decode_error, tf_error_message
from tfmicle.score.model import ScoreError, ScoringModel, call_encoded
from tfmicle.score.sources import Source, converted_bytes, needs_conversion

log = logging.getLogger("tfmicle.score")


@dataclass
class Predictions:
    source: Source
    rows: object        # int [M]: indices into source rows that were scored
    probs: object       # float32 [M, K]
    skipped: list[tuple[str, str, str]]


def _decode_error(data: bytes) -> str:
    """Why TensorFlow's decoder refuses ``data``, as one short line."""
    return decode_error(data, full=True, clean=True) or "could not be decoded"


def predict(model: ScoringModel, source: Source, batch_size: int = 64,
            progress: Callable[[int], None] | None = None) -> Predictions:
    """Scores every image of source; unreadable / undecodable images are skipped and
    listed (with the reason)."""
    import numpy as np
    import tensorflow as tf
    from tfmicle.data.augment import decode_image, preprocess_eval

    fn = model.preprocessed_fn
    size = int(model.image_size) if fn is not None else 0
    meta_keys = ("image_id", "case_id", "label_class", "label_multi") \
        if source.reads_rows else ()

    def prep(el):
        out = {"index": el["index"], **{k: el[k] for k in meta_keys}}
        if fn is not None:
            out["x"] = preprocess_eval(el["image"], size)
        else:  # decode once to find corrupt images (an output, so it runs); the model
            # decodes again itself
            out["decoded_height"] = tf.shape(decode_image(el["image"]))[0]
            out["x"] = el["image"]
        return out

    ds = source.encoded().map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=False).batch(batch_size).prefetch(2)
    rows, probs, meta = [], [], {k: [] for k in meta_keys}
    for batch in ds:
        x = batch["x"]
        out = fn(x)["probabilities"].numpy() if fn is not None else \
            call_encoded(model.encoded_fn, x)
        rows.append(batch["index"].numpy())
        probs.append(out.astype(np.float32))
        for k in meta_keys:
            meta[k].append(batch[k].numpy())
        if progress:
            progress(len(out))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    probs = np.concatenate(probs) if probs else np.zeros((0, model.num_classes), np.float32)
    if probs.shape[1] != model.num_classes:
        raise ScoreError(f"the model returns {probs.shape[1]} classes but labels.txt has "
                         f"{model.num_classes}")
    if source.reads_rows:
        complete = source.expected == len(rows) and np.array_equal(rows, np.arange(len(rows)))
        if complete:
            cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in meta.items()}
            source.set_rows(cat["image_id"], cat["case_id"], cat["label_class"],
                            cat["label_multi"].reshape(len(rows), source.records[2]))
        else:  # some image failed (or dataset.json is off): learn every row's ids
            source.read_rows()
    failed = sorted(set(range(len(source))) - set(rows.tolist()))
    skipped = list(source.skipped)
    if failed:
        reasons = _failure_reasons(source, failed)
        skipped += [(source.image_ids[i], source.case_ids[i], reasons[i]) for i in failed]
        log.warning("%d image(s) of %s could not be read or decoded: skipped (see "
                    "skipped.csv)", len(failed), source.spec)
        if progress:
            progress(len(failed))
    return Predictions(source, rows, probs, skipped)


def _failure_reasons(source: Source, failed: list[int]) -> dict[int, str]:
    import tensorflow as tf
    want = set(failed)
    out = {}
    if source.reads_rows:
        for el in source.encoded().as_numpy_iterator():
            if el["index"] in want:
                out[int(el["index"])] = _decode_error(el["image"])
        return out
    for i in failed:
        if needs_conversion(source.paths[i]):
            try:
                converted_bytes(source.paths[i])
            except ImageError as e:  # data_prep's reason, as skipped.csv of data_prep has it
                out[i] = str(e)
                continue
        try:
            data = tf.io.read_file(source.paths[i]).numpy()
        except Exception as e:  # noqa: BLE001
            out[i] = f"unreadable: {tf_error_message(e, clean=True)}"
            continue
        out[i] = _decode_error(data if not needs_conversion(source.paths[i])
                               else converted_bytes(source.paths[i]))
    return out


__all__ = ["Predictions", "predict"]
