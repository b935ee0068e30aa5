"""Scoring: the whole job. Load the model, open the sources, predict, write each
source's tables and metrics.json, then the report. The library entry point is
``score()``; ``python -m tfmicle.score`` is its CLI. Map: docs/architecture.md."""
from __future__ import annotations

import json
import logging
from dataclasses import replace
from typing import Callable, Sequence

from tfmicle import fileio
from tfmicle.score import calib, explain as explain_mod
from tfmicle.score.model import ScoreError, ScoringModel, load_model
from tfmicle.score.options import FORMATS, RUNNERS, ScoreOptions
from tfmicle.score.predict import Predictions, predict
from tfmicle.score.figures import write_figures, write_reliability
from tfmicle.score.report import Scored, parquet_available, tables, write_report, write_table
from tfmicle.score.sources import Source, declared_meta_columns, open_source
from tfmicle.score.subgroups import Subgroups, resolve_column, subgroup_metrics

log = logging.getLogger("tfmicle.score")


def score_one(model: ScoringModel, source: Source, out_dir: str,
              options: ScoreOptions = ScoreOptions(),
              progress: Callable[[int], None] | None = None, name: str = "",
              predictor: Callable[..., Predictions] = predict) -> Scored:
    """Predicts one source and writes its tables and metrics.json into out_dir (options:
    format, batch_size, replicates, seed, auc_classes, subgroups; with subgroups,
    metrics.json gets "subgroups", tfmicle.score.subgroups).
    predictor: predict (this process) or tfmicle.score.beam.predictor(...)."""
    import numpy as np
    from tfmicle import metrics as M
    fmt, replicates, seed = options.format, options.replicates, options.seed
    auc_classes, subgroups = options.auc_classes, options.subgroups
    fileio.makedirs(out_dir)
    pred = predictor(model, source, options.batch_size, progress)
    files = {}
    for stem, (header, rows) in tables(model, pred).items():
        if stem == "skipped":
            files[stem] = write_table(fileio.join(out_dir, stem), header, rows, "csv")
        else:
            files[stem] = write_table(fileio.join(out_dir, stem), header, rows, fmt)
    if not len(pred.rows):  # an exit 0 would pass for a scored dataset
        raise ScoreError(f"{source.spec}: none of its {len(pred.skipped)} images could be "
                         f"read or decoded (reasons: {files['skipped']})" if pred.skipped
                         else f"{source.spec} has no images to score")
    labels = np.asarray(source.labels)[pred.rows] if len(pred.rows) else None
    result = None
    if labels is not None and M.has_labels(model.task, labels):
        case_ids = [source.case_ids[r] for r in pred.rows]
        # The metrics see exactly the probabilities written (float32 -> float64).
        result = M.evaluate(model.task, pred.probs.astype(np.float64), labels, case_ids,
                            model.class_names, auc_classes, replicates, seed)
        result["calibration"] = calib.evaluate(model, pred.probs.astype(np.float64), labels,
                                               case_ids, replicates, seed)
        result.update({"source": source.spec, "num_skipped": len(pred.skipped),
                       "model": model.path, "model_version": model.version})
        if subgroups and subgroups.names:
            columns, meta = source.metadata()
            result["subgroups"] = subgroup_metrics(
                model.task, pred.probs.astype(np.float64), labels, case_ids,
                [meta[r] for r in pred.rows], columns, model.class_names, subgroups,
                auc_classes, replicates, seed)
            result["age_bands"] = subgroups.age_edges or "decades"
        files["metrics"] = fileio.join(out_dir, "metrics.json")
        fileio.write_text(files["metrics"], json.dumps(M.to_json_safe(result), indent=2))
    else:
        log.info("%s: none of the %d scored images has a label: predictions only (no "
                 "metrics.json)", source.spec, len(pred.rows))
    return Scored(name or source.spec, pred, result, out_dir, files)


def score(model_path: str, data: str, out_dir: str,
          options: ScoreOptions = ScoreOptions()) -> dict:
    """The whole scoring job; returns {"runs": [...], "report": path, ...}.
    options (ScoreOptions): with subgroups, metrics per patient subgroup of each run;
    with compare, the shift summary (tfmicle.score.shift) goes to DIR/shift.json and the
    report; explain N: Grad-CAM overlays of each labelled source (needs the model's
    serving_explain); runner "beam": an Apache Beam pipeline with beam_args as its
    options (tfmicle.score.beam); tables, metrics and report are the same code."""
    o = options
    split, compare, compare_split, fmt = o.split, o.compare, o.compare_split, o.format
    batch_size, replicates, seed, auc_classes = o.batch_size, o.replicates, o.seed, o.auc_classes
    images_root, report, progress_factory, subgroups = o.images_root, o.report, o.progress, \
        o.subgroups
    explain, tfds_options, runner, beam_args = o.explain, o.tfds_options, o.runner, o.beam_args
    for flag, path in (("--model", model_path), ("--data", data), ("--compare", compare),
                       ("--images", images_root), ("--out", out_dir)):
        fileio.check_url(path, flag)
    if runner == "beam":
        fileio.check_shared(out_dir, "--runner beam")
    predictor = _predictor(runner, beam_args)
    if fmt not in FORMATS:
        raise ScoreError(f"unknown format {fmt!r} (csv | parquet)")
    if fmt == "parquet" and not parquet_available():
        raise ScoreError("--format parquet needs pyarrow (pip install pyarrow); "
                         "or use --format csv")
    if batch_size < 1:
        raise ScoreError("--batch-size must be >= 1")
    if explain < 0:
        raise ScoreError("--explain must be >= 0")
    if subgroups and subgroups.names:   # before the model loads: a typo costs no wait
        declared = declared_meta_columns(data)
        if declared is not None:
            _check_subgroup_columns(subgroups, declared, data)
    model = load_model(model_path)
    if explain and model.explain_fn is None:
        raise ScoreError(f"--explain: {model.path} was exported without the "
                         "'serving_explain' signature; re-export it with a current "
                         "tfmicle.export, or omit --explain")
    classes = list(auc_classes) if auc_classes else list(model.class_names)
    for c in classes:
        if c not in model.class_names:
            raise ScoreError(f"--auc-classes: unknown class {c!r} (classes: "
                             f"{', '.join(model.class_names)})")
    sources = [("primary", open_source(data, model, split, images_root, tfds_options), out_dir)]
    if compare:
        sources.append(("compare", open_source(compare, model, compare_split or split,
                                               images_root, tfds_options),
                        fileio.join(out_dir, "compare")))
    for _, src, _ in sources:
        src.check_found()
    if subgroups and subgroups.names:
        _check_subgroup_columns(subgroups, sources[0][1].meta_columns, sources[0][1].spec)
    runs = []
    for name, src, d in sources:
        bar = progress_factory(len(src), name) if progress_factory else None
        try:
            runs.append(score_one(model, src, d, replace(options, auc_classes=classes),
                                  bar, name, predictor(d)))
        finally:
            if bar is not None and hasattr(bar, "close"):
                bar.close()
    out = {"model": model.path, "version": model.version, "runs": [
        {"name": r.name, "source": r.pred.source.spec, "scored": int(len(r.pred.rows)),
         "skipped": len(r.pred.skipped), "files": r.files, "metrics": r.metrics}
        for r in runs]}
    if len(runs) == 2 and all(r.metrics for r in runs):
        out["shift"] = _shift(model, runs, classes, replicates, seed)
        fileio.write_text(fileio.join(out_dir, "shift.json"),
                          json.dumps(_json_safe(out["shift"]), indent=2))
    explained = {r.name: explain_mod.explain(model, r, explain)
                 for r in runs if explain and r.metrics}
    for run in out["runs"]:
        if run["name"] in explained and explained[run["name"]]["csv"]:
            run["files"]["explanations"] = explained[run["name"]]["csv"]
    if report:
        figures = write_figures(model, [r for r in runs if r.metrics], out_dir, classes) \
            if any(r.metrics for r in runs) else {}
        reliability = write_reliability(model, runs, out_dir)
        if reliability:
            figures["reliability"] = reliability
        sections = calib.section(model, runs, reliability) + \
            explain_mod.section(runs, explained, out_dir)
        out["report"] = write_report(model, runs, out_dir, figures, classes, out.get("shift"),
                                     sections)
        out["figures"] = figures
    out["explanations"] = {k: v["items"] for k, v in explained.items()}
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


def _shift(model: ScoringModel, runs: list[Scored], classes: Sequence[str], replicates: int,
           seed: int) -> dict:
    """The shift summary of primary vs compare from the rows written."""
    import numpy as np
    from tfmicle.score.shift import shift_summary
    sets = []
    for r in runs:
        src, pred = r.pred.source, r.pred
        sets.append((pred.probs.astype(np.float64), np.asarray(src.labels)[pred.rows],
                     [src.case_ids[i] for i in pred.rows]))
    return shift_summary(model.task, model.class_names, sets[0], sets[1], classes, replicates,
                         seed)


def _json_safe(obj):
    from tfmicle import metrics as M
    return M.to_json_safe(obj)


__all__ = ["score", "score_one", "ScoreOptions", "FORMATS", "RUNNERS"]
