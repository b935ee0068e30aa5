"""Scoring: the predictions of one source. Images are preprocessed in tf.data with
tfmicle's one eval preprocessing (the function the exported graph runs), in parallel
with the model; images that cannot be read or decoded are skipped and listed with the
reason, never fatal. The reason is learnt in the same pass: an image that fails comes
out of the stream flagged, with its bytes or the read error. Map: docs/architecture.md."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from tfmicle.imagefiles import decode_error
from tfmicle.model_format import EMBEDDING_OUTPUT
from tfmicle.score.model import ScoreError, ScoringModel, call_encoded_outputs
from tfmicle.score.sources import Source

log = logging.getLogger("tfmicle.score")


@dataclass
class Predictions:
    source: Source
    rows: object        # int [M]: indices into source rows that were scored
    probs: object       # float32 [M, K]
    skipped: list[tuple[str, str, str]]
    embeddings: object = None   # float32 [M, D], the model's embedding of each scored
                                # image; only when asked for (--similar, the index tool)


def _decode_error(data: bytes) -> str:
    """Why TensorFlow's decoder refuses ``data``, as one short line."""
    return decode_error(data, full=True, clean=True) or "could not be decoded"


def _flagged(source: Source, model: ScoringModel):
    """source.encoded() as dicts index, the row fields, x (the model's input: pixels
    [S, S, 3], or the encoded image for serving_default), ok (bool), reason (the read
    error, or "") and failed (the bytes of an image that did not decode, else "")."""
    import tensorflow as tf
    from tfmicle.data.augment import decode_image, preprocess_eval
    fn = model.preprocessed_fn
    size = int(model.image_size) if fn is not None else 0
    keep = ("index", *source.row_fields)

    def good(el):
        if fn is not None:
            x, height = preprocess_eval(el["image"], size), tf.constant(size)
        else:   # decode once to find corrupt images (an output, so it runs); the model
            # decodes again itself
            x, height = el["image"], tf.shape(decode_image(el["image"]))[0]
        return {**{k: el[k] for k in keep}, "x": x, "decoded_height": height, "ok": True,
                "reason": "", "failed": ""}

    def bad(el):
        x = tf.zeros([size, size, 3], tf.float32) if fn is not None else tf.constant("")
        return {**{k: el[k] for k in keep}, "x": x, "decoded_height": tf.constant(0),
                "ok": False, "reason": el["reason"], "failed": el["image"]}

    def one(el):
        # exactly one element per image: good(el), or bad(el) when reading or good failed
        one_el = tf.data.Dataset.from_tensors(el)
        ok = one_el.filter(lambda e: tf.equal(e["reason"], "")).map(good).ignore_errors(
            log_warning=False)
        return ok.concatenate(one_el.map(bad)).take(1)
    return source.encoded().interleave(one, block_length=1, num_parallel_calls=tf.data.AUTOTUNE,
                                       deterministic=True)


def predict(model: ScoringModel, source: Source, batch_size: int = 64,
            progress: Callable[[int], None] | None = None,
            embeddings: bool = False) -> Predictions:
    """Scores every image of source in one pass over it; unreadable / undecodable images
    are skipped and listed (with the reason). embeddings: also keep the model's
    ``embedding`` output of each scored image (Predictions.embeddings [M, D]) from the
    same call (ScoreError when the model has none)."""
    import numpy as np
    import tensorflow as tf

    fn = model.preprocessed_fn
    ds = _flagged(source, model).batch(batch_size).prefetch(2)
    rows, probs, failed, embedded = [], [], [], []
    fields = {k: [] for k in source.row_fields}
    for batch in ds:
        ok = batch["ok"].numpy()
        index = batch["index"].numpy()
        if ok.any():
            x = batch["x"] if ok.all() else tf.boolean_mask(batch["x"], ok)
            out = {k: v.numpy() for k, v in fn(x).items()} if fn is not None else \
                call_encoded_outputs(model.encoded_fn, x)
            rows.append(index[ok])
            probs.append(out["probabilities"].astype(np.float32))
            if embeddings:
                if EMBEDDING_OUTPUT not in out:
                    raise ScoreError(f"{model.path} has no '{EMBEDDING_OUTPUT}' output")
                embedded.append(out[EMBEDDING_OUTPUT].astype(np.float32))
        for j in np.flatnonzero(~ok):
            reason = batch["reason"][j].numpy().decode("utf-8", "replace")
            failed.append((int(index[j]), reason or _decode_error(batch["failed"][j].numpy())))
        for k in fields:
            fields[k].append(batch[k].numpy())
        if progress:
            progress(len(ok))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    probs = np.concatenate(probs) if probs else np.zeros((0, model.num_classes), np.float32)
    if probs.shape[1] != model.num_classes:
        raise ScoreError(f"the model returns {probs.shape[1]} classes but labels.txt has "
                         f"{model.num_classes}")
    if fields:
        source.take_rows({k: np.concatenate(v) if v else np.zeros(0) for k, v in fields.items()})
    skipped = list(source.skipped)
    if failed:
        skipped += [(source.image_ids[i], source.case_ids[i], why) for i, why in failed]
        log.warning("%d image(s) of %s could not be read or decoded: skipped (see "
                    "skipped.csv)", len(failed), source.spec)
    emb = None
    if embeddings:
        emb = np.concatenate(embedded) if embedded else np.zeros((0, 0), np.float32)
    return Predictions(source, rows, probs, skipped, emb)


__all__ = ["Predictions", "predict"]
