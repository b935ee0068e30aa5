"""Scoring: the report's figures. roc.png and pr.png (one panel per class; each scored
source at case level, solid, and at image level, dashed) and confusion.png (multi-class;
per source the counts and the row-normalised matrix side by side), and reliability.png
(the calibration section's; the numbers are calib.py's). Map: docs/architecture.md."""
from __future__ import annotations

import io
import logging
import math
from typing import Sequence

from tfmicle import fileio
from tfmicle.score.model import ScoringModel
from tfmicle.score.report import Scored, level_arrays
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.score")

# Both levels always: a case-level curve of a few dozen cases is a coarse staircase, and
# the image-level one beside it shows what the images say (its points are not
# independent: images of one case are correlated, so its AUC carries no CI here).
LEVEL_STYLES = (("case", "-"), ("image", "--"))


def save_png(fig, path: str, dpi: int = 110) -> str:
    """A matplotlib figure as PNG at ``path`` (a local path or a URL)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    fileio.write_bytes(path, buf.getvalue())
    return path


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def class_curves(model: ScoringModel, scored: Scored, level: str) -> dict:
    """{class index: (0/1 targets y, scores)} of one source at "case" or "image" level."""
    from tfmicle import metrics as M
    labels, probs = level_arrays(model, scored, level)
    y, valid = M.binary_targets(model.task, labels, model.num_classes)
    return {c: (y[valid[:, c], c], probs[valid[:, c], c]) for c in range(model.num_classes)}


def _curve_figure(plt, model: ScoringModel, runs: list[Scored], idx: list[int], kind: str):
    from tfmicle import metrics as M
    curves = [{lv: class_curves(model, r, lv) for lv, _ in LEVEL_STYLES} for r in runs]
    ncol = min(len(idx), 4)
    nrow = int(math.ceil(len(idx) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
    for ax, c in zip(axes.ravel(), idx):
        for i, (run, cv) in enumerate(zip(runs, curves)):
            for level, ls in LEVEL_STYLES:
                y, s = cv[level][c]
                if y.size == 0 or y.min() == y.max():
                    continue
                if kind == "roc":
                    x, yy, _ = M.roc_curve(y, s)
                    v = M.roc_auc(y, s)
                else:
                    yy, x, _ = M.precision_recall_curve(y, s)
                    v = M.average_precision(y, s)
                ax.plot(x, yy, ls, color=f"C{i}",
                        drawstyle="steps-post" if kind == "pr" else "default",
                        label=f"{run.name}, {level} ({v:.3f})")
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
    fig.suptitle(("ROC" if kind == "roc" else "Precision-recall")
                 + " curves: case level (solid), image level (dashed)")
    fig.tight_layout()
    return fig


def _confusion_figure(plt, model: ScoringModel, runs: list[Scored]):
    """Per source two panels whose title says what is drawn: counts, then the
    row-normalised matrix (each true class's share); both coloured by what they show."""
    import numpy as np
    from tfmicle import metrics as M
    k = model.num_classes
    side = 1.0 + 0.45 * k + 2
    fig, axes = plt.subplots(1, 2 * len(runs), figsize=(side * 2 * len(runs), side),
                             squeeze=False)
    for j, run in enumerate(runs):
        labels, probs = level_arrays(model, run, "case")
        cm = M.confusion_matrix(labels, np.argmax(probs, axis=1), k)
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        for ax, (what, shown, fmt) in zip(axes[0, 2 * j:2 * j + 2], (
                ("counts", cm, "{:d}"), ("rows normalised", norm, "{:.2f}"))):
            vmax = max(int(cm.max()), 1) if what == "counts" else 1.0
            ax.imshow(shown, cmap="Blues", vmin=0, vmax=vmax)
            if k <= 15:
                for r in range(k):
                    for c in range(k):
                        ax.text(c, r, fmt.format(shown[r, c]), ha="center", va="center",
                                fontsize=7, color="white" if shown[r, c] > vmax / 2 else "black")
            ax.set_xticks(range(k), model.class_names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), model.class_names, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(f"{run.name}: {what}", fontsize=9)
    fig.suptitle("Confusion matrix (case level): counts and rows normalised")
    fig.tight_layout()
    return fig


def write_reliability(model: ScoringModel, runs: list, out_dir: str) -> str | None:
    """reliability.png (case level): mean confidence against observed accuracy (multi-
    class: top class) or frequency of positives (multi-label: one panel per class) per
    bin, one line per scored source; None without matplotlib or calibration."""
    runs = [r for r in runs if r.metrics and r.metrics.get("calibration")]
    if not runs:
        return None
    plt = _pyplot()
    if plt is None:
        return None
    import numpy as np
    panels = [p["name"] for p in runs[0].metrics["calibration"]["reliability"]]
    ncol = min(len(panels), 4)
    nrow = int(math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(max(4.8, 3.8 * ncol), 3.8 * nrow),
                             squeeze=False)
    styles = ["o-", "s--", "^:", "d-."]
    for i, (ax, name) in enumerate(zip(axes.ravel(), panels)):
        ax.plot([0, 1], [0, 1], color="0.75", lw=0.8, label="perfect")
        for run, st in zip(runs, styles):
            cal = run.metrics["calibration"]
            r = cal["reliability"][i]
            count = np.asarray(r["count"], dtype=np.float64)
            keep = count > 0
            if not keep.any():
                continue
            ece = cal["case"]["ece"] if model.task == MULTICLASS else \
                cal["case"]["ece_per_class"][i]
            conf = np.asarray(r["confidence"], dtype=np.float64)[keep]
            acc = np.asarray(r["accuracy"], dtype=np.float64)[keep]
            ax.plot(conf, acc, st, ms=3, label=f"{run.name} (case-level ECE {ece:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("mean confidence" if model.task == MULTICLASS else "mean probability",
                      fontsize=8)
        ax.set_ylabel("accuracy" if model.task == MULTICLASS else "fraction positive",
                      fontsize=8)
        ax.legend(fontsize=7, loc="upper left")
    for ax in axes.ravel()[len(panels):]:
        ax.axis("off")
    bins = runs[0].metrics["calibration"]["bins"]
    fig.suptitle(f"Reliability (case level, {bins} bins)")
    fig.tight_layout()
    path = save_png(fig, fileio.join(out_dir, "reliability.png"))
    plt.close(fig)
    return path


def write_figures(model: ScoringModel, runs: list[Scored], out_dir: str,
                  classes: Sequence[str]) -> dict[str, str]:
    """roc.png, pr.png (one panel per class, sources overlaid, case and image level) and
    confusion.png (multi-class, case level); {} without matplotlib."""
    plt = _pyplot()
    if plt is None:
        log.warning("matplotlib is not installed: report.md without figures "
                    "(pip install matplotlib)")
        return {}
    idx = [model.class_names.index(c) for c in classes]
    files = {}
    for kind in ("roc", "pr"):
        fig = _curve_figure(plt, model, runs, idx, kind)
        files[kind] = save_png(fig, fileio.join(out_dir, f"{kind}.png"))
        plt.close(fig)
    if model.task == MULTICLASS:
        fig = _confusion_figure(plt, model, runs)
        files["confusion"] = save_png(fig, fileio.join(out_dir, "confusion.png"))
        plt.close(fig)
    return files


__all__ = ["LEVEL_STYLES", "save_png", "class_curves", "write_reliability", "write_figures"]
