"""Scoring: the calibration part of the report. The numbers are tfmicle.calibration's
(ECE over 15 equal-width bins with a case-bootstrap CI, Brier score, NLL), computed on
the probabilities written to the prediction tables and stored in metrics.json under
"calibration"; this module draws reliability.png and writes the report's section.
Map: docs/architecture.md."""
from __future__ import annotations

import logging
import math
import os
from typing import Sequence

from tfmicle import fileio
from tfmicle.score.model import ScoringModel
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.score")


def evaluate(model: ScoringModel, probs, labels, case_ids: Sequence[str], replicates: int,
             seed: int) -> dict:
    """metrics.json's "calibration": tfmicle.calibration.evaluate_calibration."""
    from tfmicle.calibration import evaluate_calibration
    return evaluate_calibration(model.task, probs, labels, case_ids, model.class_names,
                                replicates, seed)


def write_reliability(model: ScoringModel, runs: list, out_dir: str) -> str | None:
    """reliability.png (case level): mean confidence against observed accuracy (multi-
    class: top class) or frequency of positives (multi-label: one panel per class) per
    bin, one line per scored source; None without matplotlib or calibration."""
    runs = [r for r in runs if r.metrics and r.metrics.get("calibration")]
    if not runs:
        return None
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
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
            ax.plot(conf, acc, st, ms=3, label=f"{run.name} (ECE {ece:.3f})")
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
    from tfmicle.score.report import save_png
    path = save_png(fig, fileio.join(out_dir, "reliability.png"))
    plt.close(fig)
    return path


def _cell(cal: dict | None, level: str, key: str) -> str:
    if not cal:
        return "–"
    v = cal.get(level, {}).get(key)
    if v is None or not math.isfinite(v):
        return "n/a"
    ci = cal.get(level, {}).get("ci95", {}).get(key)
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{v:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
    return f"{v:.3f}"


def _temperature_line(meta: dict) -> str:
    cal = meta.get("calibration")
    if not cal:
        return ("The model was exported without calibration (`python -m tfmicle.export "
                "--calibrate valid` fits temperature scaling).")
    t = cal["temperature"]
    ts = f"{t:.3f}" if isinstance(t, (int, float)) else ", ".join(f"{v:.3f}" for v in t)
    b, a = cal["before"], cal["after"]
    return (f"Probabilities are temperature-scaled (T = {ts}), fitted at export on split "
            f"`{cal['split']}` ({cal['num_images']} images): ECE {b['ece']:.3f} → "
            f"{a['ece']:.3f}, NLL {b['nll']:.3f} → {a['nll']:.3f}.")


def section(model: ScoringModel, runs: list, figure: str | None) -> list[str]:
    """The report's "Calibration" section (markdown lines); [] when nothing is labeled."""
    runs_cal = [r.metrics.get("calibration") if r.metrics else None for r in runs]
    if not any(runs_cal):
        return []
    bins = next(c for c in runs_cal if c)["bins"]
    lines = ["## Calibration", "", _temperature_line(model.metadata), "",
             "| | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
    what = "top-class confidence" if model.task == MULTICLASS else "mean over classes"
    for key, label in (("ece", f"ECE ({bins} bins, {what})"), ("brier", "Brier score"),
                       ("nll", "NLL")):
        for level in ("case", "image"):
            lines.append(f"| {label}, {level} level | "
                         + " | ".join(_cell(c, level, key) for c in runs_cal) + " |")
    lines += ["", "ECE: sum over bins of (share of cases) × |accuracy − mean confidence|; "
              "lower is better. Brackets: bootstrap 95 % CI (cases resampled).", ""]
    if model.task != MULTICLASS:
        lines += ["| class | " + " | ".join(f"ECE {r.name} | Brier {r.name}" for r in runs)
                  + " |", "|---|" + "---|---|" * len(runs)]
        for i, c in enumerate(model.class_names):
            cells = []
            for cal in runs_cal:
                for key in ("ece_per_class", "brier_per_class"):
                    v = cal["case"][key][i] if cal else None
                    cells.append("n/a" if v is None or not math.isfinite(v) else f"{v:.3f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    if figure:
        lines += [f"![Reliability diagram]({os.path.basename(figure)})", ""]
    return lines


__all__ = ["evaluate", "write_reliability", "section"]
