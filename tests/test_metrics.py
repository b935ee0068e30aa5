"""tfmicle.metrics against scikit-learn (and hand-computed values) on fixed arrays."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from tfmicle import metrics as M


@pytest.fixture
def binary():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) * 0.6 + 0.4 * y, 2)  # rounded: many ties
    return y, s


def test_roc_auc_and_curve_match_sklearn(binary):
    y, s = binary
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    fpr, tpr, _ = M.roc_curve(y, s)
    sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr)
    np.testing.assert_allclose(tpr, sk_tpr)


def test_roc_auc_hand_computed_with_ties():
    # positives 0.8, 0.5; negatives 0.5, 0.2: pairs (0.8>0.5, 0.8>0.2, 0.5=0.5, 0.5>0.2)
    assert M.roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4)
    assert math.isnan(M.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))


def test_average_precision_matches_sklearn(binary):
    y, s = binary
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s),
                                                      abs=1e-12)
    y2, s2 = [0, 1, 1, 0, 1], [0.1, 0.9, 0.4, 0.4, 0.35]
    assert M.average_precision(y2, s2) == pytest.approx(skm.average_precision_score(y2, s2))
    assert math.isnan(M.average_precision([0, 0], [0.3, 0.2]))


def test_top_k_and_confusion_match_sklearn():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(6), 200)
    labels = rng.integers(0, 6, 200)
    for k in (1, 3):
        assert M.top_k_accuracy(labels, probs, k) == pytest.approx(
            skm.top_k_accuracy_score(labels, probs, k=k, labels=range(6)))
    np.testing.assert_array_equal(M.confusion_matrix(labels, probs.argmax(1), 6),
                                  skm.confusion_matrix(labels, probs.argmax(1), labels=range(6)))
    # unlabeled rows (-1) are left out
    lab2 = labels.copy()
    lab2[:50] = -1
    assert M.top_k_accuracy(lab2, probs, 1) == pytest.approx(
        skm.accuracy_score(labels[50:], probs[50:].argmax(1)))


def test_multiclass_per_class_auc_is_one_vs_rest():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), 150)
    labels = rng.integers(0, 4, 150)
    roc, pr = M.per_class_auc("multiclass", labels, probs)
    for c in range(4):
        assert roc[c] == pytest.approx(skm.roc_auc_score(labels == c, probs[:, c]))
        assert pr[c] == pytest.approx(skm.average_precision_score(labels == c, probs[:, c]))
    assert M.nanmean(roc) == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"))


def test_multilabel_auc_uses_definite_labels_and_chosen_classes():
    rng = np.random.default_rng(2)
    n, k = 120, 5
    probs = rng.random((n, k))
    y = rng.choice([1.0, 0.0, -1.0, np.nan], (n, k), p=[0.35, 0.4, 0.15, 0.1])
    roc, pr = M.per_class_auc("multilabel", y, probs)
    for c in range(k):
        m = (y[:, c] == 0) | (y[:, c] == 1)
        assert roc[c] == pytest.approx(skm.roc_auc_score(y[m, c], probs[m, c]))
        assert pr[c] == pytest.approx(skm.average_precision_score(y[m, c], probs[m, c]))
    chosen = [0, 2, 4]
    got = M.classification_metrics("multilabel", y, probs, chosen)
    assert got["mean_auc"] == pytest.approx(np.mean([roc[c] for c in chosen]))


def test_case_aggregation_is_mean_of_image_probabilities():
    case_ids = ["b", "a", "b", "c", "a", "b"]
    probs = np.array([[.2, .8], [.6, .4], [.4, .6], [.9, .1], [.1, .9], [.3, .7]])
    labels = np.array([1, 0, 1, 0, 0, 1])
    cases, cp, cl, counts = M.aggregate_cases(case_ids, probs, labels)
    assert cases == ["b", "a", "c"]
    np.testing.assert_allclose(cp, [[0.3, 0.7], [0.35, 0.65], [0.9, 0.1]])
    np.testing.assert_array_equal(cl, [1, 0, 0])
    np.testing.assert_array_equal(counts, [3, 2, 1])


def test_bootstrap_ci_resamples_cases_like_a_sklearn_reference():
    rng = np.random.default_rng(4)
    n_cases = 60
    sizes = rng.integers(1, 4, n_cases)
    case_ids = np.repeat([f"c{i}" for i in range(n_cases)], sizes)
    y_case = rng.integers(0, 2, n_cases)
    y = np.repeat(y_case, sizes)
    s = rng.random(len(y)) * 0.7 + 0.3 * y
    groups = []
    start = 0
    for sz in sizes:
        groups.append(np.arange(start, start + sz))
        start += sz
    got = M.bootstrap_ci(lambda rows: {"auc": M.roc_auc(y[rows], s[rows])}, groups,
                         replicates=300, seed=7)
    # Reference: the documented protocol written out with scikit-learn.
    ref_rng = np.random.default_rng(7)
    vals = []
    for _ in range(300):
        pick = ref_rng.integers(0, n_cases, n_cases)
        rows = np.concatenate([groups[p] for p in pick])
        if len(set(y[rows])) == 2:
            vals.append(skm.roc_auc_score(y[rows], s[rows]))
    np.testing.assert_allclose(got["auc"], np.percentile(vals, [2.5, 97.5]), rtol=1e-12)
    # And the interval is about as wide as the Hanley-McNeil normal approximation.
    auc = skm.roc_auc_score(y, s)
    npos, nneg = y.sum(), (1 - y).sum()
    q1, q2 = auc / (2 - auc), 2 * auc ** 2 / (1 + auc)
    se = math.sqrt((auc * (1 - auc) + (npos - 1) * (q1 - auc ** 2)
                    + (nneg - 1) * (q2 - auc ** 2)) / (npos * nneg))
    assert got["auc"][0] < auc < got["auc"][1]
    assert 0.5 < (got["auc"][1] - got["auc"][0]) / (2 * 1.96 * se) < 2.0


def test_evaluate_image_and_case_levels_against_sklearn():
    rng = np.random.default_rng(5)
    case_ids = [f"c{i // 2}" for i in range(40)]
    labels = np.repeat(rng.integers(0, 3, 20), 2)
    probs = rng.dirichlet(np.ones(3), 40)
    out = M.evaluate("multiclass", probs, labels, case_ids, ["x", "y", "z"], ["x", "z"],
                     replicates=50, seed=0)
    assert out["num_images"] == 40 and out["num_cases"] == 20
    assert out["image"]["top1_accuracy"] == pytest.approx(
        skm.accuracy_score(labels, probs.argmax(1)))
    cp = probs.reshape(20, 2, 3).mean(axis=1)
    cl = labels[::2]
    assert out["case"]["top1_accuracy"] == pytest.approx(skm.accuracy_score(cl, cp.argmax(1)))
    want = np.mean([skm.roc_auc_score(cl == c, cp[:, c]) for c in (0, 2)])
    assert out["case"]["mean_auc"] == pytest.approx(want)
    assert out["case"]["roc_auc"]["y"] == pytest.approx(skm.roc_auc_score(cl == 1, cp[:, 1]))
    lo, hi = out["case"]["ci95"]["mean_auc"]
    assert lo <= want <= hi
    json_safe = M.to_json_safe({"a": math.nan, "b": np.float32(0.5), "c": [np.int64(3)]})
    assert json_safe == {"a": None, "b": 0.5, "c": [3]}
