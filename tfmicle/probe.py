"""A linear probe of frozen features: multinomial logistic regression (scikit-learn,
class-balanced) on standardised features, its regularisation chosen on a validation
split, with balanced accuracy, macro ROC AUC and per-class recall, and bootstrap CIs
over cases. What a self-supervised encoder bought, measured without fine-tuning (the
demo and the HAM10000 experiments)."""
from __future__ import annotations

import numpy as np


def lesion_groups(cases, rows) -> list[np.ndarray]:
    """For bootstrap_ci: the positions in `rows` of each case (cases[rows[pos]])."""
    by: dict[str, list[int]] = {}
    for pos, q in enumerate(rows):
        by.setdefault(str(cases[q]), []).append(pos)
    return [np.array(v) for v in by.values()]


def probe_metrics(labels: np.ndarray, probs: np.ndarray, num_classes: int) -> dict:
    """Balanced accuracy, macro ROC AUC (over classes present with both outcomes) and
    per-class recall of multi-class probabilities [N, K]."""
    from tfmicle.metrics import roc_auc
    pred = probs.argmax(1)
    recall = [float((pred[labels == k] == k).mean()) if (labels == k).any() else float("nan")
              for k in range(num_classes)]
    aucs = [roc_auc((labels == k).astype(int), probs[:, k]) for k in range(num_classes)
            if 0 < (labels == k).sum() < len(labels)]
    return {"balanced_accuracy": float(np.nanmean(recall)), "macro_auc": float(np.mean(aucs)),
            "recall": recall}


PROBE_C = (0.01, 0.1, 1.0)   # inverse L2 strength; chosen on validation lesions


def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], num_classes: int,
                 replicates: int = 1000, seed: int = 0, test_lesions=None) -> dict:
    """Multinomial logistic regression (class-balanced) on standardised frozen features:
    C chosen on validation balanced accuracy, then test metrics with bootstrap CIs over
    test lesions. Each arg is (features [N, D], labels [N])."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from tfmicle.metrics import bootstrap_ci
    mu, sd = train[0].mean(0), train[0].std(0) + 1e-6
    z = [(x - mu) / sd for x, _ in (train, val, test)]
    grid = {}
    best = None
    for c in PROBE_C:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=300)
        with warnings.catch_warnings():
            # lbfgs may stop at max_iter on weakly regularised, separable features; the
            # validation choice of C sees the result either way
            warnings.simplefilter("ignore", ConvergenceWarning)
            clf.fit(z[0], train[1])
        probs = _full_probs(clf, z[1], num_classes)
        grid[c] = probe_metrics(val[1], probs, num_classes)["balanced_accuracy"]
        if best is None or grid[c] > grid[best[0]]:
            best = (c, clf)
    probs = _full_probs(best[1], z[2], num_classes)
    out = probe_metrics(test[1], probs, num_classes)
    out.update({"C": best[0], "val_grid": {f"{k:g}": v for k, v in grid.items()}})
    if test_lesions is not None:
        groups = lesion_groups(np.asarray(test_lesions), np.arange(len(test[1])))

        def stat(r):
            m = probe_metrics(test[1][r], probs[r], num_classes)
            return {"balanced_accuracy": m["balanced_accuracy"], "macro_auc": m["macro_auc"]}
        ci = bootstrap_ci(stat, groups, replicates=replicates, seed=seed)
        out["balanced_accuracy_ci"] = ci["balanced_accuracy"]
        out["macro_auc_ci"] = ci["macro_auc"]
    out["probs"] = probs
    return out


def probe_summary(rows: list[dict], labels: np.ndarray, lesions: np.ndarray,
                  num_classes: int, replicates: int = 1000, seed: int = 0) -> dict:
    """Seeds' probe results -> {"per_seed": [...without probs], "balanced_accuracy",
    "macro_auc" (mean, std over seeds, 95 % CI of the seed mean by lesion bootstrap),
    "recall" [K] (mean over seeds)}."""
    from tfmicle.metrics import bootstrap_ci
    probs = [r["probs"] for r in rows]
    groups = lesion_groups(np.asarray(lesions), np.arange(len(labels)))

    def stat(r):
        ms = [probe_metrics(labels[r], p[r], num_classes) for p in probs]
        return {k: float(np.mean([m[k] for m in ms]))
                for k in ("balanced_accuracy", "macro_auc")}
    ci = bootstrap_ci(stat, groups, replicates=replicates, seed=seed)
    out = {"per_seed": [{k: v for k, v in r.items() if k != "probs"} for r in rows],
           "recall": np.mean([r["recall"] for r in rows], axis=0).tolist()}
    for k in ("balanced_accuracy", "macro_auc"):
        v = [r[k] for r in rows]
        out[k] = {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1
                  else 0.0, "ci": ci[k], "values": v}
    return out


def _full_probs(clf, x: np.ndarray, num_classes: int) -> np.ndarray:
    """predict_proba with a column for every class (a class absent from training gets 0)."""
    p = clf.predict_proba(x)
    out = np.zeros((len(x), num_classes))
    out[:, clf.classes_.astype(int)] = p
    return out


