"""Scoring on Beam, the parts that need no Beam: how the driver turns the pipeline's
rows (a key per image: its place in the source and, for records, its ids, labels and
metadata; plus "p" [K] or "error") back into the local path's Predictions: the local
row order (each source's take_beam_rows), and the skipped images with the local path's
reasons (a file that could not be read carries its reason in its key; one that could
not be decoded, the model handler's, which is the local path's words). What a worker
makes of a work line is the source's (Source.read_work: source_files.read_file,
source_records.shard_images). tfmicle.score.beam wires them into a pipeline.
Map: docs/architecture.md."""
from __future__ import annotations

import logging

from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.predict import Predictions
from tfmicle.score.source_files import read_file, work_line
from tfmicle.score.source_records import record_order, shard_images
from tfmicle.score.sources import Source

log = logging.getLogger("tfmicle.score")
ERROR = "error"           # the inference key of an image that could not be decoded
REASON = "reason"         # the key's field of a file that could not be read


def assemble(model: ScoringModel, source: Source, rows: list[dict]) -> Predictions:
    """The pipeline's rows as the local path's Predictions: row order, the records'
    ids, labels and metadata, and the skipped images with the local path's reasons."""
    import numpy as np
    index = source.take_beam_rows(rows)
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
        reasons = {i: by_index[i].get(REASON) or by_index[i].get(ERROR, "not scored")
                   if i in by_index else "not scored" for i in failed}
        skipped += [(source.image_ids[i], source.case_ids[i], reasons[i]) for i in failed]
        log.warning("%d image(s) of %s could not be read or decoded: skipped (see "
                    "skipped.csv)", len(failed), source.spec)
    return Predictions(source, np.asarray(scored, np.int64), probs, skipped)


__all__ = ["ERROR", "REASON", "work_line", "shard_images", "read_file", "record_order",
           "assemble"]
