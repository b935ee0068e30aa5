"""Calibration in plain numpy: expected calibration error (ECE), reliability bins, the
Brier score, negative log-likelihood, and temperature scaling fitted by minimising NLL
(Guo et al. 2017, "On Calibration of Modern Neural Networks"). Used by the score report
(``tfmicle.score``) and by ``tfmicle.export --calibrate``.

Label conventions are tfmicle.metrics' (the record schema's): multiclass labels int
[N] with -1 unlabeled (left out); multilabel labels float [N, K] with 1 / 0 counted and
-1 (uncertain) / NaN (not mentioned) left out of that class.

- multiclass: ECE over the top-class confidence max_k p_k against whether the top
  class is the label; Brier = mean over examples of sum_k (p_k - y_k)^2; one
  temperature T for all classes: p = softmax(z / T).
- multilabel: per class, ECE of p_c against the frequency of positives; Brier =
  mean (p_c - y_c)^2; one temperature per class: p_c = sigmoid(z_c / T_c). The
  summary values are the means over the classes that have labels.

Bins: ECE_BINS equal-width bins ((m-1)/M, m/M], m = 1..M (the first also takes 0);
ECE = sum_m |B_m| / n * |accuracy(B_m) - confidence(B_m)|.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from tfmicle.metrics import aggregate_cases, binary_targets, bootstrap_ci, case_rows
from tfmicle.tasks import MULTICLASS

ECE_BINS = 15  # Guo et al. 2017 use 15 equal-width bins
# Temperatures searched (log scale). NLL keeps falling towards T -> 0 when every
# validation prediction is right (separable split): the bound is kept, and flagged.
T_RANGE = (0.05, 100.0)
_EPS = 1e-12  # probabilities are clipped to [eps, 1 - eps] inside logs


# --------------------------------------------------------------------------- binary pieces

def bin_index(confidence, bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence in [0, 1]: m - 1 for ((m-1)/M, m/M], 0 for exactly 0."""
    c = np.asarray(confidence, dtype=np.float64)
    return np.clip(np.ceil(c * bins).astype(np.int64) - 1, 0, bins - 1)


def reliability_bins(confidence, outcome, bins: int = ECE_BINS) -> dict:
    """{"count" [M], "confidence" [M] mean confidence, "accuracy" [M] mean outcome}
    (NaN for empty bins) of paired confidences and 0/1 outcomes."""
    c = np.asarray(confidence, dtype=np.float64).ravel()
    y = np.asarray(outcome, dtype=np.float64).ravel()
    b = bin_index(c, bins)
    count = np.bincount(b, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        conf = np.bincount(b, weights=c, minlength=bins) / count
        acc = np.bincount(b, weights=y, minlength=bins) / count
    return {"count": count.astype(np.int64), "confidence": conf, "accuracy": acc}


def ece_of(confidence, outcome, bins: int = ECE_BINS) -> float:
    """ECE of paired confidences and 0/1 outcomes; NaN when there are none."""
    r = reliability_bins(confidence, outcome, bins)
    n = r["count"].sum()
    if n == 0:
        return math.nan
    keep = r["count"] > 0
    return float(np.sum(r["count"][keep] / n * np.abs(r["accuracy"][keep]
                                                      - r["confidence"][keep])))


def _top_class(probs, labels):
    """(confidence, correct) of the labeled rows of a multiclass prediction."""
    p = np.asarray(probs, dtype=np.float64)
    lab = np.asarray(labels).astype(np.int64).ravel()
    keep = lab >= 0
    p, lab = p[keep], lab[keep]
    return p.max(axis=1), (np.argmax(p, axis=1) == lab).astype(np.float64)


def pairs(task: str, probs, labels) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (confidence, outcome) pairs ECE is computed on: one pair of arrays for
    multiclass (top class), one per class for multilabel (definite labels only)."""
    probs = np.asarray(probs, dtype=np.float64)
    if task == MULTICLASS:
        return [_top_class(probs, labels)]
    y, valid = binary_targets(task, labels, probs.shape[1])
    return [(probs[valid[:, c], c], y[valid[:, c], c]) for c in range(probs.shape[1])]


# --------------------------------------------------------------------------- summaries

def brier_per_class(task: str, probs, labels) -> np.ndarray:
    """multiclass: [1] mean over labeled examples of sum_k (p_k - y_k)^2; multilabel: [K]
    mean (p_c - y_c)^2 over the definite labels of each class (NaN without any)."""
    probs = np.asarray(probs, dtype=np.float64)
    y, valid = binary_targets(task, labels, probs.shape[1])
    if task == MULTICLASS:
        rows = valid[:, 0]
        if not rows.any():
            return np.array([math.nan])
        return np.array([float(np.mean(np.sum((probs[rows] - y[rows]) ** 2, axis=1)))])
    out = np.full(probs.shape[1], math.nan)
    for c in range(probs.shape[1]):
        m = valid[:, c]
        if m.any():
            out[c] = float(np.mean((probs[m, c] - y[m, c]) ** 2))
    return out


def nll(task: str, probs, labels) -> float:
    """Mean negative log-likelihood of the labels (multiclass: -log p_label; multilabel:
    binary cross-entropy averaged over the definite entries)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        keep = lab >= 0
        return float(-np.mean(np.log(p[keep, lab[keep]]))) if keep.any() else math.nan
    y, valid = binary_targets(task, labels, p.shape[1])
    ce = -(y * np.log(p) + (1 - y) * np.log(1 - p))
    return float(ce[valid].mean()) if valid.any() else math.nan


def _mean(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    v = v[~np.isnan(v)]
    return float(v.mean()) if v.size else math.nan


def calibration_metrics(task: str, probs, labels, bins: int = ECE_BINS) -> dict:
    """{"ece", "brier", "nll"} (multilabel: means over classes, plus "ece_per_class" and
    "brier_per_class" lists [K])."""
    eces = [ece_of(c, y, bins) for c, y in pairs(task, probs, labels)]
    briers = brier_per_class(task, probs, labels)
    out = {"ece": _mean(eces), "brier": _mean(briers), "nll": nll(task, probs, labels)}
    if task != MULTICLASS:
        out["ece_per_class"] = [float(e) for e in eces]
        out["brier_per_class"] = briers.tolist()
    return out


def evaluate_calibration(task: str, probs, labels, case_ids: Sequence[str],
                         class_names: Sequence[str], replicates: int = 1000, seed: int = 0,
                         bins: int = ECE_BINS) -> dict:
    """Calibration at image and case level (case: the mean of its images' probabilities,
    as tfmicle.metrics.evaluate) with case-bootstrap 95 % CIs of ECE and Brier
    (metrics.bootstrap_ci, the same resampling as the other metrics), and the case-level
    reliability bins: {"bins", "image": {..., "ci95"}, "case": {...}, "reliability":
    [{"name", "count", "confidence", "accuracy"}, ...] (one entry multiclass, one per
    class multilabel)}."""
    probs = np.asarray(probs, dtype=np.float64)
    labels = np.asarray(labels)
    cases, case_probs, case_labels, _ = aggregate_cases(case_ids, probs, labels)
    groups = case_rows(case_ids, cases)
    out: dict = {"bins": bins}
    levels = {"image": (labels, probs, groups),
              "case": (case_labels, case_probs, [np.array([i]) for i in range(len(cases))])}
    for level, (lab, pr, grp) in levels.items():
        m = calibration_metrics(task, pr, lab, bins)
        if replicates > 0 and len(grp):
            def stat(rows, lab=lab, pr=pr):
                s = calibration_metrics(task, pr[rows], lab[rows], bins)
                return {"ece": s["ece"], "brier": s["brier"]}
            m["ci95"] = bootstrap_ci(stat, grp, replicates, seed)
        out[level] = m
    names = ["top class"] if task == MULTICLASS else list(class_names)
    out["reliability"] = [{"name": n, **{k: v.tolist() for k, v in
                                         reliability_bins(c, y, bins).items()}}
                          for n, (c, y) in zip(names, pairs(task, case_probs, case_labels))]
    return out


# --------------------------------------------------------------------------- temperature

def scaled_probabilities(task: str, logits, temperature) -> np.ndarray:
    """softmax(z / T) (multiclass, T a scalar) or sigmoid(z_c / T_c) (multilabel, T [K]
    or a scalar), in float64."""
    z = np.asarray(logits, dtype=np.float64) / np.asarray(temperature, dtype=np.float64)
    if task == MULTICLASS:
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)
    return 1.0 / (1.0 + np.exp(-z))


def _golden_min(f, lo: float, hi: float, iters: int = 100) -> float:
    """Minimiser of a unimodal f on [lo, hi] by golden-section search."""
    g = (math.sqrt(5) - 1) / 2
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = f(c), f(d)
    for _ in range(iters):
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = f(d)
    return (a + b) / 2


def _fit_one(nll_of_t) -> float:
    # NLL is convex in 1/T (a log-sum-exp of a linear function of 1/T minus a linear
    # term), so it is unimodal in log T too: a golden-section search over log T finds it.
    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    return float(math.exp(_golden_min(lambda u: nll_of_t(math.exp(u)), lo, hi)))


def at_bound(temperature) -> bool:
    """Whether a fitted temperature (or any of a list) sits on a bound of T_RANGE (the
    NLL optimum lies beyond it, e.g. a separable validation split)."""
    ts = np.atleast_1d(np.asarray(temperature, dtype=np.float64))
    return bool(np.any(np.abs(np.log(ts)[:, None] - np.log(T_RANGE)[None, :]) < 1e-6))


def fit_temperature(task: str, logits, labels):
    """Temperature scaling by minimising NLL on labelled logits [N, K]: a float T for
    multiclass, a list [K] for multilabel (1.0 for a class without definite labels).
    Searched in T_RANGE."""
    z = np.asarray(logits, dtype=np.float64)
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        keep = lab >= 0
        if not keep.any():
            return 1.0
        zk, lk = z[keep], lab[keep]
        return _fit_one(lambda t: nll(task, scaled_probabilities(task, zk, t), lk))
    y, valid = binary_targets(task, labels, z.shape[1])
    temps = []
    for c in range(z.shape[1]):
        m = valid[:, c]
        if not m.any():
            temps.append(1.0)
            continue
        zc, yc = z[m, c], y[m, c]

        def f(t, zc=zc, yc=yc):
            # binary cross-entropy of sigmoid(zc / t), stably: log(1 + e^-x) + (1 - y) x
            x = zc / t
            return float(np.mean(np.logaddexp(0.0, -x) + (1 - yc) * x))
        temps.append(_fit_one(f))
    return temps


__all__ = ["ECE_BINS", "T_RANGE", "bin_index", "reliability_bins", "ece_of", "pairs",
           "brier_per_class", "nll", "calibration_metrics", "evaluate_calibration",
           "scaled_probabilities", "at_bound", "fit_temperature"]
