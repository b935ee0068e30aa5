"""Classification metrics as the paper reports them, in plain numpy (no scikit-learn at
run time): top-1 / top-3 accuracy, per-class ROC AUC and PR AUC (average precision),
mean AUC over a chosen subset of classes, case-level aggregation (mean of the image
probabilities of a case) and bootstrap 95 % confidence intervals that resample cases.

Label conventions (the record schema's):
- multiclass: labels int [N], -1 = unlabeled (left out of every metric);
- multilabel: labels float [N, K], 1 positive, 0 negative; -1 (uncertain) and NaN
  (not mentioned) are left out of that class's metrics, so the metrics use definite
  labels only, whatever uncertainty policy training used.

Definitions match scikit-learn's: ``roc_auc`` = roc_auc_score (ties count one half),
``average_precision`` = average_precision_score (step-wise, no interpolation), a
multiclass class's AUC is one-vs-rest.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

from tfmicle.tasks import MULTICLASS


# --------------------------------------------------------------------------- binary

def _binary_inputs(y_true, scores):
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{y.shape[0]} labels but {s.shape[0]} scores")
    return y, s


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of s, tied values sharing their average rank."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # Group boundaries of equal values.
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], len(s)]
    avg = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(s), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with tied scores counting 1/2);
    NaN when only one class is present."""
    y, s = _binary_inputs(y_true, scores)
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = _average_ranks(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _threshold_counts(y, s):
    """True and false positives at each distinct score, from the highest score down."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted, y_sorted = s[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s_sorted) - 1]
    tps = np.cumsum(y_sorted)[last].astype(np.float64)
    fps = (last + 1) - tps
    return tps, fps, s_sorted[last]


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), starting at (0, 0) with threshold +inf."""
    y, s = _binary_inputs(y_true, scores)
    tps, fps, thr = _threshold_counts(y, s)
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    thr = np.r_[np.inf, thr]
    fpr = fps / fps[-1] if fps[-1] > 0 else np.full_like(fps, np.nan)
    tpr = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return fpr, tpr, thr


def precision_recall_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) by decreasing threshold, ending at recall 0 /
    precision 1 (scikit-learn's convention, reversed order)."""
    y, s = _binary_inputs(y_true, scores)
    tps, fps, thr = _threshold_counts(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1] if tps[-1] > 0 else np.full_like(tps, np.nan)
    return np.r_[1.0, precision], np.r_[0.0, recall], np.r_[np.inf, thr]


def average_precision(y_true, scores) -> float:
    """PR AUC as average precision: sum over thresholds of (R_n - R_{n-1}) P_n; NaN
    when there is no positive."""
    y, s = _binary_inputs(y_true, scores)
    if not y.any():
        return math.nan
    precision, recall, _ = precision_recall_curve(y, s)
    return float(np.sum(np.diff(recall) * precision[1:]))


# --------------------------------------------------------------------------- multiclass

def top_k_accuracy(labels, probs, k: int = 1) -> float:
    """Share of labeled examples (label >= 0) whose label is among the k highest
    probabilities (ties broken by class index); NaN when nothing is labeled."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    probs = np.asarray(probs, dtype=np.float64)
    keep = labels >= 0
    if not keep.any():
        return math.nan
    labels, probs = labels[keep], probs[keep]
    k = min(k, probs.shape[1])
    topk = np.argsort(-probs, axis=1, kind="mergesort")[:, :k]
    return float(np.mean(np.any(topk == labels[:, None], axis=1)))


def confusion_matrix(labels, preds, num_classes: int) -> np.ndarray:
    """[true, predicted] counts over labeled examples."""
    labels = np.asarray(labels).astype(np.int64).ravel()
    preds = np.asarray(preds).astype(np.int64).ravel()
    keep = labels >= 0
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (labels[keep], preds[keep]), 1)
    return cm


# --------------------------------------------------------------------------- per class

def binary_targets(task: str, labels, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(Y, valid): 0/1 targets [N, K] and where they count. multiclass: one-vs-rest over
    labeled rows; multilabel: entries equal to 0 or 1 only."""
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        y = (lab[:, None] == np.arange(num_classes)[None, :]).astype(np.float64)
        valid = np.repeat((lab >= 0)[:, None], num_classes, axis=1)
        return y, valid
    lab = np.asarray(labels, dtype=np.float64).reshape(-1, num_classes)
    valid = (lab == 0) | (lab == 1)
    return np.where(valid, lab, 0.0), valid


def per_class_auc(task: str, labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """(ROC AUC [K], PR AUC [K]); NaN for a class without both outcomes."""
    probs = np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    y, valid = binary_targets(task, labels, k)
    roc = np.full(k, math.nan)
    pr = np.full(k, math.nan)
    for c in range(k):
        m = valid[:, c]
        roc[c] = roc_auc(y[m, c], probs[m, c])
        pr[c] = average_precision(y[m, c], probs[m, c])
    return roc, pr


def nanmean(values, indices: Sequence[int] | None = None) -> float:
    """Mean over the chosen entries that are defined (NaN when none is)."""
    v = np.asarray(values, dtype=np.float64)
    if indices is not None:
        v = v[np.asarray(list(indices), dtype=np.int64)]
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def has_labels(task: str, labels) -> bool:
    """Whether any example carries a usable label."""
    if labels is None:
        return False
    a = np.asarray(labels, dtype=np.float64)
    if a.size == 0:
        return False
    return bool(np.any(a >= 0)) if task == MULTICLASS else bool(np.any((a == 0) | (a == 1)))


# --------------------------------------------------------------------------- cases

def aggregate_cases(case_ids: Sequence[str], probs, labels=None
                    ) -> tuple[list[str], np.ndarray, np.ndarray | None, np.ndarray]:
    """Case-level predictions: the mean of the image probabilities of each case.

    Returns (case ids in order of first appearance, probabilities [C, K] float64,
    the label of each case's first image or None, images per case [C])."""
    ids = [str(c) for c in case_ids]
    probs = np.asarray(probs, dtype=np.float64)
    order, inverse = {}, np.empty(len(ids), dtype=np.int64)
    for i, c in enumerate(ids):
        inverse[i] = order.setdefault(c, len(order))
    n = len(order)
    sums = np.zeros((n, probs.shape[1]))
    np.add.at(sums, inverse, probs)
    counts = np.bincount(inverse, minlength=n)
    first = np.full(n, -1, dtype=np.int64)
    for i in range(len(ids) - 1, -1, -1):
        first[inverse[i]] = i
    case_labels = None if labels is None else np.asarray(labels)[first]
    return list(order), sums / counts[:, None], case_labels, counts


def case_rows(case_ids: Sequence[str], cases: Sequence[str]) -> list[np.ndarray]:
    """The image rows of each case of ``cases`` (aggregate_cases' order): [C] arrays of
    row indices, the unit the case bootstrap resamples."""
    index = {c: i for i, c in enumerate(cases)}
    groups: list[list[int]] = [[] for _ in cases]
    for row, c in enumerate(case_ids):
        groups[index[str(c)]].append(row)
    return [np.asarray(g, dtype=np.int64) for g in groups]


# --------------------------------------------------------------------------- summaries

def classification_metrics(task: str, labels, probs, auc_indices: Sequence[int] | None = None,
                           per_class: bool = True) -> dict:
    """Scalar metrics (and per-class AUCs) of one set of predictions.

    Keys: num_labeled, top1_accuracy / top3_accuracy (multiclass), mean_auc and
    mean_pr_auc (over auc_indices, default all classes), and with per_class the lists
    roc_auc / pr_auc [K]."""
    probs = np.asarray(probs, dtype=np.float64)
    out: dict = {}
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        out["num_labeled"] = int(np.sum(lab >= 0))
        out["top1_accuracy"] = top_k_accuracy(lab, probs, 1)
        out["top3_accuracy"] = top_k_accuracy(lab, probs, 3)
    else:
        _, valid = binary_targets(task, labels, probs.shape[1])
        out["num_labeled"] = int(np.sum(valid.any(axis=1)))
    roc, pr = per_class_auc(task, labels, probs)
    out["mean_auc"] = nanmean(roc, auc_indices)
    out["mean_pr_auc"] = nanmean(pr, auc_indices)
    if per_class:
        out["roc_auc"] = roc.tolist()
        out["pr_auc"] = pr.tolist()
    return out


class _CaseDraws:
    """Rows of bootstrap replicates that resample groups (cases) with replacement."""

    def __init__(self, groups: Sequence[np.ndarray]):
        self.n = len(groups)
        self.sizes = np.array([len(g) for g in groups], dtype=np.int64)
        self.flat = np.concatenate([np.asarray(g, dtype=np.int64) for g in groups]) \
            if self.n else np.zeros(0, np.int64)
        self.offsets = np.r_[0, np.cumsum(self.sizes)[:-1]]

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One replicate: ``len(groups)`` cases drawn with one ``rng.integers`` call; the
        rows of the drawn cases, concatenated in draw order."""
        pick = rng.integers(0, self.n, self.n)
        counts = self.sizes[pick]
        total = int(counts.sum())
        # rows of the picked cases: offset of the case + position within it.
        starts = np.repeat(self.offsets[pick] - np.r_[0, np.cumsum(counts)[:-1]], counts)
        return self.flat[starts + np.arange(total)]


def _percentiles(values: dict[str, list[float]], alpha: float) -> dict:
    out = {}
    for name, vs in values.items():
        a = np.asarray(vs)
        a = a[~np.isnan(a)]
        out[name] = ([float(np.percentile(a, 100 * alpha / 2)),
                      float(np.percentile(a, 100 * (1 - alpha / 2)))] if a.size
                     else [math.nan, math.nan])
    return out


def bootstrap_ci(statistic: Callable[[np.ndarray], dict], groups: Sequence[np.ndarray],
                 replicates: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap confidence intervals that resample groups (cases).

    groups: for each case, the indices of its rows. Each replicate draws
    ``len(groups)`` cases with replacement (``numpy.random.default_rng(seed).integers``,
    one call per replicate) and calls ``statistic(rows)`` with the rows of the drawn
    cases, concatenated in draw order; statistic returns {name: float}.
    Returns {name: [low, high]} at the (alpha/2, 1 - alpha/2) percentiles of the
    replicates where the value is defined (NaN pairs when none is).
    """
    draws = _CaseDraws(groups)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(replicates)):
        for name, v in statistic(draws.draw(rng)).items():
            values.setdefault(name, []).append(float(v))
    return _percentiles(values, alpha)


def difference_ci(statistic_a: Callable[[np.ndarray], dict], groups_a: Sequence[np.ndarray],
                  statistic_b: Callable[[np.ndarray], dict], groups_b: Sequence[np.ndarray],
                  replicates: int = 1000, seed: int = 0, alpha: float = 0.05) -> dict:
    """Percentile bootstrap CI of a difference a - b between two independent sets (two
    datasets, two disjoint subgroups): each replicate resamples the cases of a, then
    those of b (one generator, seeded once, as in bootstrap_ci), and records
    statistic_a(rows_a)[name] - statistic_b(rows_b)[name] for the names both return.
    Returns {name: [low, high]}; NaN pairs where no replicate defines the difference."""
    da, db = _CaseDraws(groups_a), _CaseDraws(groups_b)
    rng = np.random.default_rng(seed)
    values: dict[str, list[float]] = {}
    for _ in range(int(replicates)):
        va = statistic_a(da.draw(rng))
        vb = statistic_b(db.draw(rng))
        for name in va:
            if name in vb:
                values.setdefault(name, []).append(float(va[name]) - float(vb[name]))
    return _percentiles(values, alpha)


def _scalar_metrics(task, labels, probs, auc_indices):
    m = classification_metrics(task, labels, probs, auc_indices, per_class=False)
    m.pop("num_labeled")
    return m


def evaluate(task: str, probs, labels, case_ids: Sequence[str], class_names: Sequence[str],
             auc_classes: Sequence[str] | None = None, replicates: int = 1000,
             seed: int = 0) -> dict:
    """Image- and case-level metrics with bootstrap CIs (resampling cases).

    probs [N, K] image probabilities; labels as in the module doc; case_ids [N].
    Returns {"task", "class_names", "auc_classes", "num_images", "num_cases",
    "image": {...}, "case": {...}, "bootstrap": {...}} where each level holds the
    classification_metrics, per-class AUCs as {class: value} and "ci95"."""
    class_names = list(class_names)
    probs = np.asarray(probs, dtype=np.float64)
    auc_classes = list(auc_classes) if auc_classes else list(class_names)
    auc_idx = [class_names.index(c) for c in auc_classes]
    labels = np.asarray(labels)
    cases, case_probs, case_labels, _ = aggregate_cases(case_ids, probs, labels)
    groups = case_rows(case_ids, cases)
    out = {"task": task, "class_names": class_names, "auc_classes": auc_classes,
           "num_images": int(len(probs)), "num_cases": len(cases),
           "bootstrap": {"replicates": int(replicates), "seed": int(seed), "unit": "case",
                         "interval": "percentile 95%"}}
    levels = {"image": (labels, probs, groups),
              "case": (case_labels, case_probs, [np.array([i]) for i in range(len(cases))])}
    for level, (lab, pr, grp) in levels.items():
        m = classification_metrics(task, lab, pr, auc_idx)
        m["roc_auc"] = dict(zip(class_names, m["roc_auc"]))
        m["pr_auc"] = dict(zip(class_names, m["pr_auc"]))
        if replicates > 0 and len(grp):
            m["ci95"] = bootstrap_ci(
                lambda rows, lab=lab, pr=pr: _scalar_metrics(task, lab[rows], pr[rows], auc_idx),
                grp, replicates, seed)
        out[level] = m
    return out


def to_json_safe(obj):
    """NaN / inf -> None, numpy scalars -> Python, recursively (for json.dump)."""
    if isinstance(obj, dict):
        return {str(k): to_json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


__all__ = ["roc_auc", "roc_curve", "precision_recall_curve", "average_precision",
           "top_k_accuracy", "confusion_matrix", "binary_targets", "per_class_auc", "nanmean",
           "has_labels", "aggregate_cases", "classification_metrics", "bootstrap_ci", "difference_ci",
           "evaluate", "to_json_safe"]
