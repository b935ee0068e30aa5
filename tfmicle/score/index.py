"""The index tool (``python -m tfmicle.index``): a labelled reference archive embedded with
an exported model's ``embedding`` output and written as a case index
(``tfmicle.caseindex``) for similar-case retrieval.

It is batch inference over a source, so it is scoring's machinery: the model is loaded
by ``load_model`` (the one loader, ``tfmicle.model_load``), the data opened by
``open_source`` (records split, CSV manifest, image folder, TFDS split) and run through
``predict`` (one pass; an image that cannot be read or decoded is skipped and counted,
never fatal). A case is the mean of its images' L2-normalised embeddings, re-normalised
(``caseindex.store.case_embeddings``), the same rule as a query at serving and
``score --similar`` time.

An index holds confirmed cases: its rows are what a clinician is shown as "similar
cases with this diagnosis", so a reference case without a label is left out (and
counted), and a source with no labelled case at all is refused. One class per case:
multi-class models only. Map: docs/architecture.md.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from tfmicle import fileio
from tfmicle.caseindex import store
from tfmicle.model_format import EMBEDDING_OUTPUT
from tfmicle.score.model import ScoreError, ScoringModel, load_model
from tfmicle.score.predict import Predictions, predict
from tfmicle.score.sources import declared_meta_columns, open_source
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.index")

META_JOIN = " | "   # a case whose images disagree on a metadata column keeps each value once


@dataclass(frozen=True)
class IndexOptions:
    """How to build an index; the defaults are the CLI's."""
    split: str = "train"                 # records / TFDS split of the reference data
    meta_cols: Sequence[str] = ()        # metadata columns kept beside each case
    dtype: str = store.DEFAULT_DTYPE     # float32 | float16 (embeddings.npy)
    images_root: str | None = None       # folder a CSV manifest's paths are relative to
    batch_size: int = 64                 # images per model call
    progress: Callable[[int, str], Callable[[int], None]] | None = field(default=None, compare=False)


def check_embedding_model(model: ScoringModel, what: str) -> None:
    """ScoreError (one line) unless the model can index cases: an ``embedding`` output
    and one class per case."""
    if not model.has_embedding:
        raise ScoreError(f"{what}: {model.path} has no '{EMBEDDING_OUTPUT}' output in its serving "
                         "signature; re-export it with a current tfmicle.export")
    if model.task != MULTICLASS:
        raise ScoreError(f"{what}: the model is {model.task}; a case index keeps one class per "
                         "case, so it needs a multiclass model")


def case_vectors(pred: Predictions) -> tuple[list[str], np.ndarray, np.ndarray]:
    """A run's scored images (with embeddings) -> (case ids [C] in order of first
    appearance, case embeddings [C, D] float32 (``store.case_embeddings``), case labels
    [C] int64: the class index, -1 for a case none of whose images is labelled).
    ScoreError when two images of one case carry different classes."""
    src = pred.source
    ids = [src.case_ids[r] for r in pred.rows]
    cases, emb = store.case_embeddings(pred.embeddings, ids)
    position = {c: i for i, c in enumerate(cases)}
    labels = np.full(len(cases), -1, np.int64)
    for cid, y in zip(ids, np.asarray(src.labels, np.int64)[pred.rows]):
        j = position[cid]
        if y >= 0 and labels[j] >= 0 and labels[j] != y:
            raise ScoreError(f"{src.spec}: the images of case {cid!r} carry two classes "
                             f"({labels[j]} and {y}); a case has one class")
        if y >= 0:
            labels[j] = y
    return cases, emb, labels


def case_metadata(pred: Predictions, cases: Sequence[str], columns: Sequence[str]
                  ) -> dict[str, list[str]]:
    """{column: [C] text} for the cases (in that order): each case's distinct non-empty
    values of the column over its scored images, in image order, joined by META_JOIN
    ("" when none)."""
    _, meta = pred.source.metadata()
    values: dict[str, dict[str, list[str]]] = {c: {} for c in columns}
    for r in pred.rows:
        cid = pred.source.case_ids[r]
        for c in columns:
            seen = values[c].setdefault(cid, [])
            v = (meta[r].get(c) or "").strip() if meta else ""
            if v and v not in seen:
                seen.append(v)
    return {c: [META_JOIN.join(values[c].get(cid, [])) for cid in cases] for c in columns}


def _check_columns(wanted: Sequence[str], have: Sequence[str], where: str) -> None:
    for c in wanted:
        if c not in have:
            raise ScoreError(f"--meta-cols {c}: no such metadata column in {where} "
                             f"(has: {', '.join(have) or 'none'})")


def build(model_path: str, data: str, out: str, options: IndexOptions = IndexOptions()) -> dict:
    """Embeds the labelled cases of ``data`` (a split of it) with the model (a version
    folder, or a model folder's highest published version) and writes the index to
    ``out`` (a local path or a URL; the marker last: ``store.build_index``). Returns
    {"index", "model", "version", "fingerprint", "cases", "images", "unlabelled_cases",
    "skipped_images", "per_class"}. ScoreError / UsageError: one line, exit 2."""
    o = options
    for flag, path in (("--model", model_path), ("--data", data), ("--images", o.images_root),
                       ("--out", out)):
        fileio.check_url(path, flag)
    if o.dtype not in store.DTYPES:
        raise ScoreError(f"--dtype {o.dtype}: one of {', '.join(store.DTYPES)}")
    if o.batch_size < 1:
        raise ScoreError("--batch-size must be >= 1")
    if o.meta_cols:   # before the model loads: a typo costs no wait
        declared = declared_meta_columns(data)
        if declared is not None:
            _check_columns(o.meta_cols, declared, data)
    model = load_model(model_path)
    check_embedding_model(model, "index")
    source = open_source(data, model, o.split, o.images_root)
    source.check_found()
    _check_columns(o.meta_cols, source.meta_columns, source.spec)
    bar = o.progress(len(source), "index") if o.progress else None
    try:
        pred = predict(model, source, o.batch_size, bar, embeddings=True)
    finally:
        if bar is not None and hasattr(bar, "close"):
            bar.close()
    if not len(pred.rows):
        raise ScoreError(f"{source.spec}: none of its {len(pred.skipped)} images could be read or "
                         "decoded" if pred.skipped else f"{source.spec} has no images")
    cases, emb, labels = case_vectors(pred)
    keep = np.flatnonzero(labels >= 0)
    if not len(keep):
        raise ScoreError(f"{source.spec} has no labelled case: a case index holds confirmed cases "
                         "(give labels: a records split with classes, a CSV 'label' column, or "
                         "class-named folders)")
    if len(keep) < len(cases):
        log.warning("%d of %d cases of %s have no label: left out of the index",
                    len(cases) - len(keep), len(cases), source.spec)
    if pred.skipped:
        log.warning("%d image(s) of %s could not be read or decoded: skipped (first: %s: %s)",
                    len(pred.skipped), source.spec, pred.skipped[0][0], pred.skipped[0][2])
    kept = [cases[i] for i in keep]
    names = [model.class_names[labels[i]] for i in keep]
    meta = case_metadata(pred, cases, o.meta_cols)
    fingerprint = store.model_fingerprint(model.path)
    store.build_index(out, emb[keep], kept, names, {c: [v[i] for i in keep] for c, v in meta.items()},
                      fingerprint, model.version, o.dtype, source=source.spec)
    return {"index": out, "model": model.path, "version": model.version,
            "fingerprint": fingerprint, "cases": len(kept), "images": int(len(pred.rows)),
            "unlabelled_cases": len(cases) - len(kept), "skipped_images": len(pred.skipped),
            "per_class": {c: names.count(c) for c in model.class_names}}


__all__ = ["IndexOptions", "build", "case_vectors", "case_metadata", "check_embedding_model",
           "META_JOIN"]
