"""Scoring: the whole job. Load the model, open the sources, predict, write each
source's tables and metrics.json (the run sections), compute what spans the runs
(shift, explanations), then the report in the sections' fixed order (sections.py).
The library entry point is ``score()``; ``python -m tfmicle.score`` is its CLI.
Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Callable, Sequence

from tfmicle import fileio
from tfmicle.score.card import version_card, write_scored_card
from tfmicle.score.model import ScoreError, ScoringModel, load_model
from tfmicle.score.options import FORMATS, RUNNERS, ScoreOptions
from tfmicle.score.predict import Predictions, predict
from tfmicle.score.figures import write_figures, write_reliability
from tfmicle.score.report import Scored, parquet_available, tables, write_report, write_table
from tfmicle.score.sections import (Calibration, Explanations, Job, Metrics, Provenance, Section,
                                    Shift, SubgroupMetrics, apply)
from tfmicle.score.similar import SimilarCases, check_index
from tfmicle.score.sources import Source, declared_meta_columns, open_source
from tfmicle.score.subgroups import Subgroups, resolve_column

log = logging.getLogger("tfmicle.score")


def run_sections(job: Job) -> list[Section]:
    """The sections of one run, in the order their keys appear in its metrics.json."""
    return [Metrics(job), Calibration(job), Provenance(job), SubgroupMetrics(job),
            SimilarCases(job)]


def score_one(model: ScoringModel, source: Source, out_dir: str,
              options: ScoreOptions = ScoreOptions(),
              progress: Callable[[int], None] | None = None, name: str = "",
              predictor: Callable[..., Predictions] = predict) -> Scored:
    """Predicts one source and writes its tables and metrics.json into out_dir (options:
    format, batch_size, replicates, seed, auc_classes, subgroups; with subgroups,
    metrics.json gets "subgroups", tfmicle.score.subgroups).
    predictor: predict (this process) or tfmicle.score.beam.predictor(...)."""
    from tfmicle import metrics as M
    fileio.makedirs(out_dir)
    # --similar needs each image's embedding: from the same model call (local runner only)
    extra = {"embeddings": True} if options.similar else {}
    pred = predictor(model, source, options.batch_size, progress, **extra)
    files = {}
    for stem, (header, rows) in tables(model, pred).items():
        fmt = "csv" if stem == "skipped" else options.format
        files[stem] = write_table(fileio.join(out_dir, stem), header, rows, fmt)
    if not len(pred.rows):  # an exit 0 would pass for a scored dataset
        raise ScoreError(f"{source.spec}: none of its {len(pred.skipped)} images could be "
                         f"read or decoded (reasons: {files['skipped']})" if pred.skipped
                         else f"{source.spec} has no images to score")
    run = Scored(name or source.spec, pred, None, out_dir, files)
    for section in run_sections(Job(model, options, out_dir)):
        apply(section.compute([run]), [run])
    if run.metrics:
        files["metrics"] = fileio.join(out_dir, "metrics.json")
        fileio.write_text(files["metrics"], json.dumps(M.to_json_safe(run.metrics), indent=2))
    return run


def score(model_path: str, data: str, out_dir: str,
          options: ScoreOptions = ScoreOptions()) -> dict:
    """The whole scoring job; returns {"runs": [...], "report": path, ...}.
    options (ScoreOptions): with subgroups, metrics per patient subgroup of each run;
    with model_card, the version's card with these results added (card.py) into out_dir;
    with compare, the shift summary (tfmicle.score.shift) goes to DIR/shift.json and the
    report; explain N: Grad-CAM overlays of each labelled source (needs the model's
    serving_explain); runner "beam": an Apache Beam pipeline with beam_args as its
    options (tfmicle.score.beam); tables, metrics and report are the same code."""
    o = options
    for flag, path in (("--model", model_path), ("--data", data), ("--compare", o.compare),
                       ("--images", o.images_root), ("--out", out_dir), ("--similar", o.similar)):
        fileio.check_url(path, flag)
    if o.similar and (o.similar_k < 1 or o.runner != "local"):
        raise ScoreError("--similar-k must be >= 1" if o.similar_k < 1 else
                         "--similar needs --runner local (the Beam rows carry no embeddings)")
    if o.runner == "beam":
        fileio.check_shared(out_dir, "--runner beam")
    predictor = _predictor(o.runner, o.beam_args)
    if o.format not in FORMATS:
        raise ScoreError(f"unknown format {o.format!r} (csv | parquet)")
    if o.format == "parquet" and not parquet_available():
        raise ScoreError("--format parquet needs pyarrow (pip install pyarrow); "
                         "or use --format csv")
    if o.batch_size < 1:
        raise ScoreError("--batch-size must be >= 1")
    if o.explain < 0:
        raise ScoreError("--explain must be >= 0")
    subgroups = o.subgroups
    if subgroups and subgroups.names:   # before the model loads: a typo costs no wait
        declared = declared_meta_columns(data)
        if declared is not None:
            _check_subgroup_columns(subgroups, declared, data)
    model = load_model(model_path)
    card = version_card(model) if o.model_card else None  # refused before any scoring
    if o.explain and model.explain_fn is None:
        raise ScoreError(f"--explain: {model.path} was exported without the "
                         "'serving_explain' signature; re-export it with a current "
                         "tfmicle.export, or omit --explain")
    if o.similar:   # a mismatched index is refused before anything is predicted
        check_index(o.similar, model)
    classes = list(o.auc_classes) if o.auc_classes else list(model.class_names)
    for c in classes:
        if c not in model.class_names:
            raise ScoreError(f"--auc-classes: unknown class {c!r} (classes: "
                             f"{', '.join(model.class_names)})")
    sources = [("primary", open_source(data, model, o.split, o.images_root, o.tfds_options),
                out_dir)]
    if o.compare:
        sources.append(("compare", open_source(o.compare, model, o.compare_split or o.split,
                                               o.images_root, o.tfds_options),
                        fileio.join(out_dir, "compare")))
    for _, src, _ in sources:
        src.check_found()
    if subgroups and subgroups.names:
        _check_subgroup_columns(subgroups, sources[0][1].meta_columns, sources[0][1].spec)
    job = Job(model, replace(o, auc_classes=classes), out_dir)
    runs = []
    for name, src, d in sources:
        bar = o.progress(len(src), name) if o.progress else None
        try:
            runs.append(score_one(model, src, d, job.options, bar, name, predictor(d)))
        finally:
            if bar is not None and hasattr(bar, "close"):
                bar.close()
    out = {"model": model.path, "version": model.version, "runs": [
        {"name": r.name, "source": r.pred.source.spec, "scored": int(len(r.pred.rows)),
         "skipped": len(r.pred.skipped), "files": r.files, "metrics": r.metrics}
        for r in runs]}
    metrics, calibration, _, groups, similar = run_sections(job)   # computed by score_one
    shift, explanations = Shift(job), Explanations(job)
    for section in (shift, explanations):
        apply(section.compute(runs), runs, out)
    if o.report:
        labelled = [r for r in runs if r.metrics]
        figures = write_figures(model, labelled, out_dir, classes) if labelled else {}
        reliability = write_reliability(model, runs, out_dir)
        if reliability:
            figures["reliability"] = reliability
        body = [s.lines(runs, figures)
                for s in (metrics, shift, groups, calibration, similar, explanations)]
        out["report"] = write_report(model, runs, out_dir, figures, body, groups.lead(runs),
                                     [Shift.FILE] if shift.summary else [])
        out["figures"] = figures
    if card is not None:
        out["model_card"] = write_scored_card(card, out_dir, runs[0].metrics,
                                              runs[0].pred.source.spec, shift.summary,
                                              runs[1].pred.source.spec if len(runs) > 1 else None)
    return out


def _predictor(runner: str, beam_args: Sequence[str]) -> Callable[[str], Callable]:
    """out_dir -> the predictions function of the runner (checked before any work)."""
    if runner not in RUNNERS:
        raise ScoreError(f"--runner {runner!r}: use local or beam")
    if runner == "local":
        if beam_args:
            raise ScoreError("--beam-args needs --runner beam")
        return lambda out_dir: predict
    try:
        from tfmicle.score import beam
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "apache_beam":
            raise
        raise ScoreError("--runner beam needs Apache Beam: pip install 'tfmicle[beam]'") \
            from None
    return lambda out_dir: beam.predictor(beam_args, out_dir)


def _check_subgroup_columns(subgroups: Subgroups, columns: Sequence[str], where: str) -> None:
    """Every --subgroups name resolves to one of the source's metadata columns."""
    for n in subgroups.names:
        if resolve_column(n, columns) is None:
            raise ScoreError(f"--subgroups {n}: no such metadata column in {where} "
                             f"(has: {', '.join(columns) or 'none'})")


__all__ = ["score", "score_one", "ScoreOptions", "FORMATS", "RUNNERS"]
