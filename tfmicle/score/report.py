"""Scoring: what a scored source becomes on disk. Prediction tables (image and case
level, CSV or Parquet), skipped.csv, and the report: report.md with ROC / PR /
confusion figures, one column per scored source. Map: docs/architecture.md."""
from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from typing import Sequence

from tfmicle import fileio
from tfmicle.score.model import ScoringModel
from tfmicle.score.predict import Predictions
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.score")

META_PREFIX = "meta_"   # metadata columns of predictions_images (records schema v2, CSV)


def _f(v) -> str:
    """Exact text of a float (shortest repr that reads back to the same value)."""
    v = float(v)
    return repr(v) if math.isfinite(v) else ""


def _label_text(task: str, class_names, label) -> str:
    if task == MULTICLASS:
        return class_names[int(label)] if int(label) >= 0 else ""
    return ""


def tables(model: ScoringModel, pred: Predictions) -> dict[str, tuple[list[str], list[list]]]:
    """{"predictions_images": (header, rows), "predictions_cases": ..., "skipped": ...}."""
    import numpy as np
    from tfmicle import metrics as M
    src, names, task = pred.source, model.class_names, model.task
    labels = np.asarray(src.labels)[pred.rows] if len(pred.rows) else np.asarray(src.labels)[:0]
    prob_cols = [f"prob_{c}" for c in names]
    label_cols = ["label"] if task == MULTICLASS else [f"label_{c}" for c in names]
    pred_col = ["predicted"] if task == MULTICLASS else []

    def label_values(lab):
        if task == MULTICLASS:
            return [_label_text(task, names, lab)]
        return [("" if math.isnan(v) else str(int(v))) for v in lab]

    def predicted(p):
        return [names[int(np.argmax(p))]] if task == MULTICLASS else []

    meta_cols, meta = src.metadata()
    img_rows = []
    for j, r in enumerate(pred.rows):
        img_rows.append([src.image_ids[r], src.case_ids[r], *label_values(labels[j]),
                         *predicted(pred.probs[j]), *[_f(v) for v in pred.probs[j]],
                         *[meta[r].get(c, "") for c in meta_cols]])
    case_ids = [src.case_ids[r] for r in pred.rows]
    cases, cprobs, clabels, counts = M.aggregate_cases(case_ids, pred.probs, labels)
    case_rows = []
    for c in range(len(cases)):
        case_rows.append([cases[c], int(counts[c]), *label_values(clabels[c]),
                          *predicted(cprobs[c]), *[_f(v) for v in cprobs[c]]])
    return {
        "predictions_images": (["image_id", "case_id", *label_cols, *pred_col, *prob_cols,
                                *[META_PREFIX + c for c in meta_cols]], img_rows),
        "predictions_cases": (["case_id", "num_images", *label_cols, *pred_col, *prob_cols],
                              case_rows),
        "skipped": (["image_id", "case_id", "reason"], [list(s) for s in pred.skipped]),
    }


def write_table(path_stem: str, header: list[str], rows: list[list], fmt: str) -> str:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        cols = {}
        for i, h in enumerate(header):
            vals = [r[i] for r in rows]
            if h.startswith("prob_"):
                vals = [float(v) if v != "" else None for v in vals]
            elif h == "num_images":
                vals = [int(v) for v in vals]
            cols[h] = vals
        buf = io.BytesIO()   # then one write: the folder may be a URL (tfmicle.fileio)
        pq.write_table(pa.table(cols) if rows else pa.table({h: [] for h in header}), buf)
        fileio.write_bytes(path_stem + ".parquet", buf.getvalue())
        return path_stem + ".parquet"
    fileio.write_text(path_stem + ".csv", csv_text(header, rows))
    return path_stem + ".csv"


def csv_text(header: Sequence[str], rows) -> str:
    """A CSV (csv module's dialect, '\r\n' rows) as one string, for fileio.write_text."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class Scored:
    name: str
    pred: Predictions
    metrics: dict | None
    out_dir: str
    files: dict


def level_arrays(model: ScoringModel, scored: Scored, level: str):
    """(labels, probabilities float64) of one scored source at "image" level (the rows
    written) or "case" level (the mean of a case's images, as metrics.json has it)."""
    import numpy as np
    from tfmicle import metrics as M
    src, pred = scored.pred.source, scored.pred
    labels = np.asarray(src.labels)[pred.rows]
    probs = pred.probs.astype(np.float64)
    if level == "case":
        _, probs, labels, _ = M.aggregate_cases([src.case_ids[r] for r in pred.rows],
                                                probs, labels)
    return labels, probs


TOP_K = (1, 3)   # the top-k accuracies metrics.json holds (tfmicle.metrics)


def shown_top_k(model: ScoringModel) -> list[int]:
    """The k of the top-k rows the report shows: multi-class, k < K only (top-k of
    k >= K classes is 1 whatever the model does)."""
    return [k for k in TOP_K if k < model.num_classes] if model.task == MULTICLASS else []


def auc_scope(model: ScoringModel, scored: Scored, level: str, kind: str,
              auc_classes: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """(the classes of auc_classes whose kind ("roc_auc" | "pr_auc") is defined at this
    level, {class: why not} for the others: "no positive", "no negative", "no label")."""
    from tfmicle import metrics as M
    values = ((scored.metrics or {}).get(level) or {}).get(kind) or {}
    labels, _ = level_arrays(model, scored, level)
    y, valid = M.binary_targets(model.task, labels, model.num_classes)
    pos, neg = (y * valid).sum(axis=0), (valid & (y == 0)).sum(axis=0)
    defined, why = [], {}
    for c in auc_classes:
        v = values.get(c)
        if v is not None and math.isfinite(v):
            defined.append(c)
            continue
        i = model.class_names.index(c)
        why[c] = ("no label" if pos[i] + neg[i] == 0 else "no positive" if pos[i] == 0
                  else "no negative" if neg[i] == 0 else "undefined")
    return defined, why


def scope_text(name: str, defined: Sequence[str], why: dict[str, str], total: int) -> str:
    """'mean ROC AUC (7 classes)', or with classes left out 'mean ROC AUC over 5 of 7
    classes (akiec, bcc, bkl, mel, nv; df, vasc have no positive)'."""
    if not why:
        return f"{name} ({total} classes)"
    by_reason: dict[str, list[str]] = {}
    for c, reason in why.items():
        by_reason.setdefault(reason, []).append(c)
    left_out = "; ".join(f"{', '.join(cs)} {'has' if len(cs) == 1 else 'have'} {reason}"
                         for reason, cs in by_reason.items())
    named = ", ".join(defined) + "; " if defined else ""
    return f"{name} over {len(defined)} of {total} classes ({named}{left_out})"


def _mean_label(model: ScoringModel, runs: list[Scored], level: str, kind: str, name: str,
                auc_classes: Sequence[str]) -> tuple[str, list[str]]:
    """The row label of a mean AUC at one level and notes: when the sources disagree on
    which classes have an AUC, a note per source names them."""
    scopes = [(r, auc_scope(model, r, level, kind, auc_classes)) for r in runs if r.metrics]
    texts = {r.name: scope_text(name, d, w, len(auc_classes)) for r, (d, w) in scopes}
    if len(set(texts.values())) <= 1:
        return (next(iter(texts.values())) if texts else
                f"{name} ({len(auc_classes)} classes)"), []
    return (f"{name} over the classes where it is defined (below)",
            [f"- {level.capitalize()} level, {n}: {t}." for n, t in texts.items()])


def _cell(m: dict | None, level: str, key: str) -> str:
    if not m or m.get(level) is None:
        return "–"
    v = m[level].get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    ci = (m[level].get("ci95") or {}).get(key)
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{v:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
    return f"{v:.3f}"


def metrics_lines(model: ScoringModel, runs: list[Scored], auc_classes: Sequence[str]
                  ) -> list[str]:
    """The report's metrics: one column per source (images, cases, top-k, mean AUCs at
    case and image level, with CIs), then the per-class AUCs (case level)."""
    lines = ["| | " + " | ".join(r.name for r in runs) + " |",
             "|---|" + "---|" * len(runs)]
    lines.append("| source | " + " | ".join(f"`{r.pred.source.spec}`" for r in runs) + " |")
    lines.append("| images scored | " + " | ".join(str(len(r.pred.rows)) for r in runs) + " |")
    lines.append("| images skipped | " + " | ".join(str(len(r.pred.skipped)) for r in runs)
                 + " |")
    lines.append("| cases | " + " | ".join(str(r.metrics["num_cases"]) if r.metrics else "–"
                                           for r in runs) + " |")
    keys = [(f"top{k}_accuracy", f"top-{k} accuracy") for k in shown_top_k(model)]
    notes = []
    for level in ("case", "image"):
        for key, label in keys:
            lines.append(f"| {label}, {level} level | "
                         + " | ".join(_cell(r.metrics, level, key) for r in runs) + " |")
        for key, kind, name in (("mean_auc", "roc_auc", "mean ROC AUC"),
                                ("mean_pr_auc", "pr_auc", "mean PR AUC")):
            label, extra = _mean_label(model, runs, level, kind, name, auc_classes)
            notes += extra
            lines.append(f"| {label}, {level} level | "
                         + " | ".join(_cell(r.metrics, level, key) for r in runs) + " |")
    lines += [""] + notes + ([""] if notes else [])
    lines += ["Values in brackets: bootstrap 95 % confidence interval (cases resampled).",
              "Case level: the mean of the image probabilities of a case.", ""]
    if any(r.metrics for r in runs):
        lines += ["## Per class (case level)", "",
                  "| class | " + " | ".join(f"ROC AUC {r.name} | PR AUC {r.name}" for r in runs)
                  + " |", "|---|" + "---|---|" * len(runs)]
        for c in model.class_names:
            cells = []
            for r in runs:
                for kind in ("roc_auc", "pr_auc"):
                    v = (r.metrics or {}).get("case", {}).get(kind, {}).get(c)
                    cells.append("n/a" if v is None or not math.isfinite(v) else f"{v:.3f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def write_report(model: ScoringModel, runs: list[Scored], out_dir: str, figures: dict,
                 body: Sequence[Sequence[str]], lead: Sequence[str] = (),
                 extra_files: Sequence[str] = ()) -> str:
    """report.md: lead (the lines a reviewer reads first), the model, body (each
    section's lines, in order), the figures, the skipped images and the files written
    (extra_files: files of the whole job, relative to out_dir)."""
    lines = ["# Scoring report", ""] + list(lead)
    meta = model.metadata
    lines += [f"- Model: `{model.path}`" + (f" (version {model.version})" if model.version else ""),
              f"- Task: {model.task}, {model.num_classes} classes"
              + (f", image size {model.image_size}" if model.image_size else ""),
              ]
    if meta.get("config_hash"):
        lines.append(f"- Training config hash: `{meta['config_hash']}`, checkpoint step "
                     f"{meta.get('step')}")
    lines.append("")
    for section in body:
        lines += list(section)
    if figures:
        lines += ["## Figures", ""]
        for kind, title in (("roc", "ROC curves"), ("pr", "Precision-recall curves"),
                            ("confusion", "Confusion matrix")):
            if kind in figures:
                lines += [f"### {title}", "", f"![{title}]({os.path.basename(figures[kind])})", ""]
    for r in runs:
        if r.pred.skipped:
            lines += [f"## Skipped images: {r.name}", "",
                      f"{len(r.pred.skipped)} image(s) could not be read or decoded "
                      f"(all in `{fileio.relpath(r.files['skipped'], out_dir)}`):", ""]
            lines += [f"- `{s[0]}`: {s[2]}" for s in r.pred.skipped[:20]]
            if len(r.pred.skipped) > 20:
                lines.append(f"- ... and {len(r.pred.skipped) - 20} more")
            lines.append("")
    lines += ["## Files", ""]
    for r in runs:
        for k, p in r.files.items():
            lines.append(f"- {r.name}: `{fileio.relpath(p, out_dir)}`")
    for name in extra_files:
        lines.append(f"- {os.path.splitext(name)[0]}: `{name}`")
    path = fileio.join(out_dir, "report.md")
    fileio.write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["tables", "write_table", "csv_text", "parquet_available", "Scored", "level_arrays",
           "shown_top_k", "auc_scope", "scope_text", "metrics_lines", "write_report"]
