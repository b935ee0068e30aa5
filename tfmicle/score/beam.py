"""Scoring on Apache Beam (``python -m tfmicle.score --runner beam``): the predictions
of one source from an ``apache_beam.ml.inference`` RunInference pipeline, handed back
as the local path's ``Predictions``, so the tables, metrics.json and the report come
from the same code (tfmicle.score.job) and the numbers are the local ones.

The pipeline: the images of the source (records: one shard per work item, exploded to
images; folders / CSV manifests: a work list of paths the workers read) -> Reshuffle
(spreads the images over the workers) -> RunInference with ``SavedModelHandler`` (the
exported SavedModel: encoded image bytes in; probabilities and embedding out, in
batches of --batch-size; the same eval preprocessing and ``predict_preprocessed`` as
the local path, or ``serving_default`` for a model without it) -> one JSON line per
image in a staging folder under the output folder, which the driver reads back, puts
in the local path's row order (bootstrap CIs depend on it) and deletes.

Workers must reach the model and data paths (a bucket or a shared filesystem) and
have tfmicle installed; DirectRunner by default, any other runner through
``--beam-args``. Apache Beam is an optional extra: ``pip install 'tfmicle[beam]'``.
Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
import math
from typing import Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler, PredictionResult,
                                           RunInference)
from apache_beam.options.pipeline_options import PipelineOptions

from tfmicle import model_format as mf
from tfmicle.score.model import ScoreError, ScoringModel, call_encoded_outputs, load_model
from tfmicle.score.predict import Predictions, _decode_error, _failure_reasons
from tfmicle.score.sources import Source, converted_bytes, needs_conversion

log = logging.getLogger("tfmicle.score")
STAGING = ".beam-score"   # under the run's output folder; deleted when read back
ERROR = "error"           # the inference key of an image that could not be decoded


class _Loaded:
    """The model on a worker: the scoring model plus the per-image step that runs
    before batching (eval preprocessing, or a decode check for serving_default)."""

    def __init__(self, model: ScoringModel):
        import tensorflow as tf
        from tfmicle.data.augment import decode_image, preprocess_eval
        self.model = model
        self.fn = model.preprocessed_fn
        spec = [tf.TensorSpec([], tf.string)]
        if self.fn is not None:
            size = int(model.image_size)
            self.prepare = tf.function(lambda s: preprocess_eval(s, size), input_signature=spec)
        else:   # decode once to find corrupt images; the model decodes again itself
            self.prepare = tf.function(lambda s: tf.shape(decode_image(s))[0],
                                       input_signature=spec)

    def __call__(self, batch: list[bytes], prepared: list) -> dict:
        """The model's outputs of a batch of good images, {name: numpy [B, ...]}."""
        import numpy as np
        if self.fn is None:
            return call_encoded_outputs(self.model.encoded_fn, batch)
        out = self.fn(np.stack(prepared))
        return {k: v.numpy() for k, v in out.items()}


class SavedModelHandler(ModelHandler[bytes, PredictionResult, _Loaded]):
    """RunInference's handler for an exported model (tfmicle.model_format's layout, or
    any SavedModel with the serving contract): encoded image bytes in; per image a
    PredictionResult whose inference is {"probabilities": [K] float32, "embedding": [D]}
    (embedding when the model has one), or {"error": reason} for an image that cannot
    be decoded (the local path skips it with the same reason). Batches of exactly
    batch_size images, except at the end of a bundle."""

    def __init__(self, model_path: str, batch_size: int = 64):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self.model_path = model_path   # a version folder: every worker loads that version

    def load_model(self) -> _Loaded:
        return _Loaded(load_model(self.model_path))

    def run_inference(self, batch: Sequence[bytes], model: _Loaded,
                      inference_args: dict | None = None) -> Iterable[PredictionResult]:
        import tensorflow as tf
        results: list = [None] * len(batch)
        good, prepared = [], []
        for i, data in enumerate(batch):
            try:
                prepared.append(model.prepare(tf.constant(data, tf.string)))
                good.append(i)
            except tf.errors.OpError:   # the local path's ignore_errors drops it alike
                results[i] = PredictionResult(data, {ERROR: _decode_error(data)})
        if good:
            out = model([batch[i] for i in good], prepared)
            for n, i in enumerate(good):
                results[i] = PredictionResult(batch[i], {name: v[n] for name, v in out.items()})
        return results

    def get_num_bytes(self, batch: Sequence[bytes]) -> int:
        return sum(len(b) for b in batch)

    def get_metrics_namespace(self) -> str:
        return "tfmicle_score"


# --------------------------------------------------------------------------- workers

def _shard_images(item: tuple[int, str], num_labels: int):
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


def _read_file(line: str):
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


def _row_line(keyed: tuple[dict, PredictionResult]) -> str:
    key, result = keyed
    inf = result.inference
    if ERROR in inf:
        return json.dumps({**key, ERROR: inf[ERROR]})
    # float32 -> float -> JSON repr round-trips exactly
    return json.dumps({**key, "p": [float(v) for v in inf[mf.PROBABILITIES_OUTPUT]]})


# --------------------------------------------------------------------------- driver

def _pipeline_options(beam_args: Sequence[str]) -> PipelineOptions:
    try:
        return PipelineOptions(list(beam_args))
    except Exception as e:  # noqa: BLE001 - Beam's own message, as one line
        raise ScoreError(f"--beam-args: {e}") from None


def _write_lines(path: str, lines: Iterable[str]) -> None:
    with FileSystems.create(path) as f:
        for line in lines:
            f.write(line.encode("utf-8") + b"\n")


def _read_lines(pattern: str) -> list[str]:
    lines = []
    for m in sorted(FileSystems.match([pattern])[0].metadata_list, key=lambda m: m.path):
        with FileSystems.open(m.path) as f:
            lines += [x for x in f.read().decode("utf-8").splitlines() if x.strip()]
    return lines


def _delete(path: str) -> None:
    if FileSystems.exists(path):
        FileSystems.delete([path])


def run_pipeline(model: ScoringModel, source: Source, staging: str, batch_size: int = 64,
                 beam_args: Sequence[str] = ()) -> list[dict]:
    """Runs the scoring pipeline over source; returns one dict per image (its key, and
    "p" [K] or "error"), in no particular order."""
    options = _pipeline_options(beam_args)
    _delete(staging)   # a crashed run's results must not be read back
    handler = KeyedModelHandler(SavedModelHandler(model.path, batch_size))
    try:
        p = beam.Pipeline(options=options)
    except Exception as e:  # noqa: BLE001 - an unknown runner and the like
        raise ScoreError(f"--beam-args: {e}") from None
    log.info("beam: scoring %s with %s, options %s", source.spec, model.path,
             " ".join(beam_args) or "(DirectRunner)")
    if source.kind == "records":
        from tfmicle.data.records import list_shards
        data_dir, split, k = source.records
        shards = list(enumerate(list_shards(data_dir, split)))
        images = (p | "Shards" >> beam.Create(shards, reshuffle=True)
                  | "Images" >> beam.FlatMap(_shard_images, k))
    else:   # a work list in a file, not in the job graph (Dataflow limits its size)
        work = FileSystems.join(staging, "work.jsonl")
        _write_lines(work, (json.dumps({"at": [i], "path": path,
                                        "convert": needs_conversion(path)})
                            for i, path in enumerate(source.paths)))
        images = (p | "WorkList" >> beam.io.ReadFromText(work)
                  | "SpreadPaths" >> beam.Reshuffle()
                  | "Read" >> beam.Map(_read_file))
    (images
     | "SpreadImages" >> beam.Reshuffle()
     | "Predict" >> RunInference(handler)
     | "Rows" >> beam.Map(_row_line)
     | "Write" >> beam.io.WriteToText(FileSystems.join(staging, "rows")))
    p.run().wait_until_finish()
    rows = [json.loads(x) for x in _read_lines(FileSystems.join(staging, "rows*"))]
    _delete(staging)
    return rows


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


def predictor(beam_args: Sequence[str], out_dir: str
              ) -> Callable[..., Predictions]:
    """A drop-in for tfmicle.score.predict.predict that runs on Beam, staging its rows
    under out_dir."""
    def predict(model: ScoringModel, source: Source, batch_size: int = 64,
                progress: Callable[[int], None] | None = None) -> Predictions:
        rows = run_pipeline(model, source, FileSystems.join(out_dir, STAGING), batch_size,
                            beam_args)
        pred = assemble(model, source, rows)
        if progress:
            progress(len(source))
        return pred
    return predict

__all__ = ["SavedModelHandler", "run_pipeline", "record_order", "assemble", "predictor",
           "STAGING"]
