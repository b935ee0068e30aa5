"""Scoring: the distribution-shift summary of ``--compare`` (primary set vs compare set).

All at case level (the mean of a case's image probabilities), from the rows written to
the two predictions files:
- the class prevalence of each set (multi-class: share of labelled cases per class;
  multi-label: share of positives among the definite labels of each class);
- each metric's drop, primary minus compare, with a bootstrap 95 % CI of the drop that
  resamples the cases of each set independently (tfmicle.metrics.difference_ci);
- the expected calibration error (ECE) of each set;
- a plain sentence per metric saying whether the drop is larger than its uncertainty
  (the CI of the drop excludes 0).

ECE is tfmicle.calibration's (15 equal-width bins on the top-class confidence for
multi-class, per class on the class probability for multi-label, definite labels only,
the mean over classes reported), the same as the report's calibration section.
Map: docs/architecture.md.
"""
from __future__ import annotations

import math
from typing import Sequence

from tfmicle.tasks import MULTICLASS

ECE_BINS = 15
SHIFT_METRICS = ("top1_accuracy", "mean_auc", "mean_pr_auc")


def expected_calibration_error(task: str, probs, labels, bins: int = ECE_BINS) -> dict:
    """{"ece": float, "per_class": [K] (multi-label only)}: tfmicle.calibration's ECE,
    the one the calibration section of the report shows."""
    from tfmicle.calibration import ece_of, pairs
    from tfmicle.tasks import MULTICLASS
    per = [ece_of(c, y, bins) for c, y in pairs(task, probs, labels)]
    if task == MULTICLASS:
        return {"ece": per[0]}
    finite = [e for e in per if not math.isnan(e)]
    return {"ece": sum(finite) / len(finite) if finite else math.nan, "per_class": per}


def prevalence(task: str, labels, class_names: Sequence[str]) -> dict:
    """{"labelled_cases": n, "classes": {class: share}} of case-level labels."""
    import numpy as np
    from tfmicle import metrics as M
    from tfmicle.tasks import MULTICLASS
    k = len(class_names)
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        lab = lab[lab >= 0]
        counts = np.bincount(lab, minlength=k)[:k]
        share = counts / len(lab) if len(lab) else np.full(k, math.nan)
        return {"labelled_cases": int(len(lab)), "classes": dict(zip(class_names, share.tolist()))}
    y, valid = M.binary_targets(task, labels, k)
    n = valid.sum(axis=0)
    share = np.where(n > 0, (y * valid).sum(axis=0) / np.maximum(n, 1), math.nan)
    return {"labelled_cases": int(valid.any(axis=1).sum()),
            "classes": dict(zip(class_names, share.tolist()))}


def _case_arrays(task, probs, labels, case_ids):
    from tfmicle import metrics as M
    _, cp, cl, _ = M.aggregate_cases(case_ids, probs, labels)
    return cl, cp


def shift_summary(task: str, class_names: Sequence[str], primary: tuple, compare: tuple,
                  auc_classes: Sequence[str] | None = None, replicates: int = 1000,
                  seed: int = 0) -> dict:
    """primary / compare: (probs [N, K], labels, case_ids [N]) image rows as written.
    Returns {"prevalence": {set: ...}, "ece": {set: ...}, "metrics": {metric:
    {"primary", "compare", "drop", "ci95", "exceeds_ci"}}}."""
    import numpy as np
    from tfmicle import metrics as M
    names = list(class_names)
    auc_idx = [names.index(c) for c in (auc_classes or names)]
    sets = {"primary": _case_arrays(task, *primary), "compare": _case_arrays(task, *compare)}

    def stat(labels, probs):
        def f(rows):
            m = M.classification_metrics(task, labels[rows], probs[rows], auc_idx,
                                         per_class=False)
            return {k: m[k] for k in SHIFT_METRICS if k in m}
        return f

    point = {s: stat(l, p)(np.arange(len(p))) for s, (l, p) in sets.items()}
    ci = {}
    if replicates > 0:
        (la, pa), (lb, pb) = sets["primary"], sets["compare"]
        ci = M.difference_ci(stat(la, pa), [np.array([i]) for i in range(len(pa))],
                             stat(lb, pb), [np.array([i]) for i in range(len(pb))],
                             replicates, seed)
    metrics = {}
    for key in SHIFT_METRICS:
        if key not in point["primary"]:
            continue
        a, b = point["primary"][key], point["compare"][key]
        c = ci.get(key)
        c = c if c and all(math.isfinite(x) for x in c) else None
        metrics[key] = {"primary": a, "compare": b, "drop": a - b, "ci95": c,
                        "exceeds_ci": None if c is None else bool(c[0] > 0 or c[1] < 0)}
    return {"level": "case",
            "prevalence": {s: prevalence(task, l, names) for s, (l, _) in sets.items()},
            "ece": {s: expected_calibration_error(task, p, l) for s, (l, p) in sets.items()},
            "ece_bins": ECE_BINS, "metrics": metrics}


def sentence(label: str, m: dict) -> str:
    """The plain sentence of one metric's drop."""
    a, b, d = m["primary"], m["compare"], m["drop"]
    if not (math.isfinite(a) and math.isfinite(b)):
        return f"{label}: not defined on both sets."
    direction = "lower" if d > 0 else "higher" if d < 0 else "the same"
    head = (f"{label} is {abs(d):.3f} {direction} on compare ({b:.3f}) than on primary "
            f"({a:.3f})" if d else f"{label} is the same on both sets ({a:.3f})")
    if m["ci95"] is None:
        return head + "; no CI (bootstrap off or undefined)."
    lo, hi = m["ci95"]
    ci = f"95 % CI of the drop {lo:.3f} to {hi:.3f}"
    if m["exceeds_ci"]:
        return (head + f" ({ci}): the {'drop' if d > 0 else 'gain'} is larger than the "
                "bootstrap uncertainty (the CI excludes 0).")
    return head + f" ({ci}): within the bootstrap uncertainty (the CI includes 0)."


def report_lines(summary: dict, class_names: Sequence[str], task: str = MULTICLASS
                 ) -> list[str]:
    """The report's shift section; its ECE carries the calibration section's label (case
    level, as every number here)."""
    from tfmicle.score.calib import ece_label
    from tfmicle.score.subgroups import METRIC_LABELS, fmt_ci
    p, c = summary["prevalence"]["primary"], summary["prevalence"]["compare"]
    lines = ["## Distribution shift (primary vs compare, case level)", "",
             "| class prevalence | primary | compare |", "|---|---|---|",
             f"| labelled cases | {p['labelled_cases']} | {c['labelled_cases']} |"]
    for name in class_names:
        lines.append(f"| {name} | {_pct(p['classes'][name])} | {_pct(c['classes'][name])} |")
    e = summary["ece"]
    lines += ["", "| metric | primary | compare | drop (primary − compare) |",
              "|---|---|---|---|"]
    for key, m in summary["metrics"].items():
        lines.append(f"| {METRIC_LABELS[key]} | {fmt_ci(m['primary'], None)} | "
                     f"{fmt_ci(m['compare'], None)} | {fmt_ci(m['drop'], m['ci95'])} |")
    lines.append(f"| {ece_label(task, summary['ece_bins'], summary['level'])} | "
                 f"{fmt_ci(e['primary']['ece'], None)} | "
                 f"{fmt_ci(e['compare']['ece'], None)} | |")
    lines.append("")
    for key, m in summary["metrics"].items():
        lines.append("- " + sentence(METRIC_LABELS[key], m))
    lines.append("")
    return lines


def _pct(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.1f} %"


__all__ = ["expected_calibration_error", "prevalence", "shift_summary", "sentence",
           "report_lines", "ECE_BINS"]
