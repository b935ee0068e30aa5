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


def save_png(fig, path: str, dpi: int = 110) -> str:
    """A matplotlib figure as PNG at ``path`` (a local path or a URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fileio.write_bytes(path, buf.getvalue())
    return path


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


def _curves(model: ScoringModel, scored: Scored, level: str = "case"):
    """{class index: (labels y, scores)} at case level, for the figures."""
    import numpy as np
    from tfmicle import metrics as M
    src, pred = scored.pred.source, scored.pred
    labels = np.asarray(src.labels)[pred.rows]
    probs = pred.probs.astype(np.float64)
    if level == "case":
        _, probs, labels, _ = M.aggregate_cases([src.case_ids[r] for r in pred.rows],
                                                probs, labels)
    y, valid = M.binary_targets(model.task, labels, model.num_classes)
    return {c: (y[valid[:, c], c], probs[valid[:, c], c]) for c in range(model.num_classes)}, \
        labels, probs


def write_figures(model: ScoringModel, runs: list[Scored], out_dir: str,
                  classes: Sequence[str]) -> dict[str, str]:
    """roc.png, pr.png (one panel per class, runs overlaid) and confusion.png
    (multi-class; one panel per run), at case level. {} without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: report.md without figures "
                    "(pip install matplotlib)")
        return {}
    import numpy as np
    from tfmicle import metrics as M
    idx = [model.class_names.index(c) for c in classes]
    data = [(_curves(model, r)) for r in runs]
    files = {}
    ncol = min(len(idx), 4)
    nrow = int(math.ceil(len(idx) / ncol))
    styles = ["-", "--", ":", "-."]
    for kind in ("roc", "pr"):
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
        for ax, c in zip(axes.ravel(), idx):
            for (curves, _, _), run, ls in zip(data, runs, styles):
                y, s = curves[c]
                if y.size == 0 or y.min() == y.max():
                    continue
                if kind == "roc":
                    x, yy, _ = M.roc_curve(y, s)
                    v = M.roc_auc(y, s)
                else:
                    yy, x, _ = M.precision_recall_curve(y, s)
                    v = M.average_precision(y, s)
                ax.plot(x, yy, ls, drawstyle="steps-post" if kind == "pr" else "default",
                        label=f"{run.name} ({v:.3f})")
            if kind == "roc":
                ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
            ax.set_title(model.class_names[c], fontsize=9)
            ax.set_xlabel("false positive rate" if kind == "roc" else "recall", fontsize=8)
            ax.set_ylabel("true positive rate" if kind == "roc" else "precision", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
            else:
                ax.text(0.5, 0.5, "one outcome only", ha="center", va="center", fontsize=8,
                        color="0.5")
        for ax in axes.ravel()[len(idx):]:
            ax.axis("off")
        fig.suptitle(("ROC" if kind == "roc" else "Precision-recall") + " curves (case level)")
        fig.tight_layout()
        files[kind] = save_png(fig, fileio.join(out_dir, f"{kind}.png"))
        plt.close(fig)
    if model.task == MULTICLASS:
        k = model.num_classes
        fig, axes = plt.subplots(1, len(runs), figsize=(1.0 + 0.45 * k * len(runs) + 3 * len(runs),
                                                        1.0 + 0.45 * k + 2), squeeze=False)
        for ax, (curves, labels, probs), run in zip(axes.ravel(), data, runs):
            cm = M.confusion_matrix(labels, np.argmax(probs, axis=1), k)
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            if k <= 15:
                for i in range(k):
                    for j in range(k):
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xticks(range(k), model.class_names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), model.class_names, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(run.name, fontsize=9)
        fig.suptitle("Confusion matrix (case level, rows normalised)")
        fig.tight_layout()
        files["confusion"] = save_png(fig, fileio.join(out_dir, "confusion.png"))
        plt.close(fig)
    return files


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


def write_report(model: ScoringModel, runs: list[Scored], out_dir: str, figures: dict,
                 auc_classes: Sequence[str], shift: dict | None = None,
                 sections: Sequence[str] = ()) -> str:
    """report.md; shift: the --compare shift summary; sections: extra markdown lines
    (calibration, explanations) placed before the figures."""
    from tfmicle.score import shift as S
    from tfmicle.score import subgroups as G
    lines = ["# Scoring report", ""]
    for r in runs:   # the largest subgroup gap first: what a reviewer reads first
        found = G.largest_gap_overall((r.metrics or {}).get("subgroups") or {})
        if found:
            name, gap = found
            lines += [f"**Largest subgroup gap ({r.name}):** {G.METRIC_LABELS[gap['metric']]} "
                      f"(case level) by {name}: {gap['best']} {gap['best_value']:.3f} vs "
                      f"{gap['worst']} {gap['worst_value']:.3f}, difference "
                      f"{G.fmt_ci(gap['difference'], gap['ci95'])}.", ""]
    meta = model.metadata
    lines += [f"- Model: `{model.path}`" + (f" (version {model.version})" if model.version else ""),
              f"- Task: {model.task}, {model.num_classes} classes"
              + (f", image size {model.image_size}" if model.image_size else ""),
              ]
    if meta.get("config_hash"):
        lines.append(f"- Training config hash: `{meta['config_hash']}`, checkpoint step "
                     f"{meta.get('step')}")
    lines.append("")
    lines += ["| | " + " | ".join(r.name for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines.append("| source | " + " | ".join(f"`{r.pred.source.spec}`" for r in runs) + " |")
    lines.append("| images scored | " + " | ".join(str(len(r.pred.rows)) for r in runs) + " |")
    lines.append("| images skipped | " + " | ".join(str(len(r.pred.skipped)) for r in runs)
                 + " |")
    lines.append("| cases | " + " | ".join(str(r.metrics["num_cases"]) if r.metrics else "–"
                                           for r in runs) + " |")
    keys = ([("top1_accuracy", "top-1 accuracy"), ("top3_accuracy", "top-3 accuracy")]
            if model.task == MULTICLASS else [])
    keys += [("mean_auc", f"mean ROC AUC ({len(auc_classes)} classes)"),
             ("mean_pr_auc", f"mean PR AUC ({len(auc_classes)} classes)")]
    for level in ("case", "image"):
        for key, label in keys:
            lines.append(f"| {label}, {level} level | "
                         + " | ".join(_cell(r.metrics, level, key) for r in runs) + " |")
    lines += ["", "Values in brackets: bootstrap 95 % confidence interval (cases resampled).",
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
    if shift:
        lines += S.report_lines(shift, model.class_names)
    for r in runs:
        if (r.metrics or {}).get("subgroups"):
            lines += G.report_lines(r.metrics["subgroups"], model.task, r.name)
    lines += list(sections)
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
    if shift:
        lines.append("- shift: `shift.json`")
    path = fileio.join(out_dir, "report.md")
    fileio.write_text(path, "\n".join(lines) + "\n")
    return path


__all__ = ["tables", "write_table", "parquet_available", "Scored", "write_figures",
           "write_report"]
