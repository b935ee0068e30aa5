"""Scoring: the calibration part of the report. The numbers are tfmicle.calibration's
(ECE over 15 equal-width bins with a case-bootstrap CI, Brier score, NLL), computed on
the probabilities written to the prediction tables and stored in metrics.json under
"calibration"; this module writes the report's section (figures.py draws
reliability.png).
Map: docs/architecture.md."""
from __future__ import annotations

import math
import os
from typing import Sequence

from tfmicle.score.model import ScoringModel
from tfmicle.tasks import MULTICLASS


def evaluate(model: ScoringModel, probs, labels, case_ids: Sequence[str], replicates: int,
             seed: int) -> dict:
    """metrics.json's "calibration": tfmicle.calibration.evaluate_calibration."""
    from tfmicle.calibration import evaluate_calibration
    return evaluate_calibration(model.task, probs, labels, case_ids, model.class_names,
                                replicates, seed)


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
    # export fits T on the split's images, so its ECE is image level: compare it with the
    # image-level rows below, not the case-level ones
    return (f"Probabilities are temperature-scaled (T = {ts}), fitted at export on split "
            f"`{cal['split']}` ({cal['num_images']} images): image-level ECE "
            f"{b['ece']:.3f} → {a['ece']:.3f}, image-level NLL {b['nll']:.3f} → "
            f"{a['nll']:.3f}.")


def ece_label(task: str, bins: int, level: str) -> str:
    """The one label of an ECE in the report (calibration and shift sections alike), so
    an image-level value is never read against a case-level one."""
    what = "top-class confidence" if task == MULTICLASS else "mean over classes"
    return f"ECE ({bins} bins, {what}), {level} level"


def section(model: ScoringModel, runs: list, figure: str | None) -> list[str]:
    """The report's "Calibration" section (markdown lines); [] when nothing is labeled."""
    runs_cal = [r.metrics.get("calibration") if r.metrics else None for r in runs]
    if not any(runs_cal):
        return []
    bins = next(c for c in runs_cal if c)["bins"]
    lines = ["## Calibration", "", _temperature_line(model.metadata), "",
             "| | " + " | ".join(r.name for r in runs) + " |", "|---|" + "---|" * len(runs)]
    for key, label in (("ece", None), ("brier", "Brier score"), ("nll", "NLL")):
        for level in ("case", "image"):
            row = ece_label(model.task, bins, level) if key == "ece" else f"{label}, {level} level"
            lines.append(f"| {row} | " + " | ".join(_cell(c, level, key) for c in runs_cal)
                         + " |")
    lines += ["", "ECE: sum over bins of (share of the cases at case level, of the images at "
              "image level) × |accuracy − mean confidence|; lower is better. Compare a "
              "case-level ECE only with another case level one (the shift section's are). "
              "Brackets: bootstrap 95 % CI (cases resampled).", ""]
    if model.task != MULTICLASS:
        lines += ["| class (case level) | "
                  + " | ".join(f"ECE {r.name} | Brier {r.name}" for r in runs)
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


__all__ = ["evaluate", "ece_label", "section"]
