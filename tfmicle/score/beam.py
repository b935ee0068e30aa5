"""Scoring on Apache Beam (``python -m tfmicle.score --runner beam``): the predictions
of one source from an ``apache_beam.ml.inference`` RunInference pipeline, handed back
as the local path's ``Predictions``, so the tables, metrics.json and the report come
from the same code (tfmicle.score.job) and the numbers are the local ones.

The pipeline: the images of the source (the source's work list, spread over the
workers, which read it: records, one shard per work item, exploded to images and
spread again; folders / CSV manifests, one file per work item) -> RunInference with
``SavedModelHandler`` (the exported SavedModel: encoded image bytes in; probabilities
and embedding out, in batches of --batch-size; the same eval preprocessing and
``predict_preprocessed`` as the local path, or ``serving_default`` for a model without
it) -> one JSON line per image in a staging folder under the output folder, which the
driver reads back, puts in the local path's row order (bootstrap CIs depend on it) and
deletes.

Workers must reach the model and data paths (a bucket or a shared filesystem) and
have tfmicle installed; DirectRunner by default, any other runner through
``--beam-args``. Apache Beam is an optional extra: ``pip install 'tfmicle[beam]'``.
Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
from typing import Callable, Iterable, Sequence

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import (KeyedModelHandler, ModelHandler, PredictionResult,
                                           RunInference)
from apache_beam.options.pipeline_options import PipelineOptions

from tfmicle import model_format as mf
from tfmicle.score.beam_rows import ERROR, assemble
from tfmicle.score.model import ScoreError, ScoringModel, call_encoded_outputs, load_model
from tfmicle.score.predict import Predictions, _decode_error
from tfmicle.score.sources import Source

log = logging.getLogger("tfmicle.score")
STAGING = ".beam-score"   # under the run's output folder; deleted when read back


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
    # the work list in a file, not in the job graph (Dataflow limits its size)
    work = FileSystems.join(staging, "work.jsonl")
    _write_lines(work, source.work_lines())
    images = (p | "WorkList" >> beam.io.ReadFromText(work)
              | "SpreadWork" >> beam.Reshuffle()
              | "Read" >> beam.FlatMap(type(source).read_work))
    if source.spread_after_read:    # e.g. a records shard's images over the workers
        images = images | "SpreadImages" >> beam.Reshuffle()
    (images
     | "Predict" >> RunInference(handler)
     | "Rows" >> beam.Map(_row_line)
     | "Write" >> beam.io.WriteToText(FileSystems.join(staging, "rows")))
    p.run().wait_until_finish()
    rows = [json.loads(x) for x in _read_lines(FileSystems.join(staging, "rows*"))]
    _delete(staging)
    return rows


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


__all__ = ["SavedModelHandler", "run_pipeline", "predictor", "STAGING"]
