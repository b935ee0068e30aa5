"""Calibration maths (tfmicle.calibration): ECE, Brier and NLL against hand-computed
cases, and temperature scaling recovering the temperature of a deliberately
over-confident model. numpy only, fast."""
import math

import numpy as np
import pytest

from tfmicle import calibration as C


def test_ece_multiclass_hand_computed():
    # top-class confidences and whether the top class is right, in 15 bins of width 1/15:
    #   0.9 right, 0.9 wrong   -> bin (13/15, 14/15]: |0.5 - 0.9|  * 2/5 = 0.16
    #   0.5 right              -> bin (7/15, 8/15]:   |1 - 0.5|    * 1/5 = 0.10
    #   0.35 wrong, 0.37 right -> bin (5/15, 6/15]:   |0.5 - 0.36| * 2/5 = 0.056
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.2, 0.5, 0.3],
                      [0.35, 0.33, 0.32], [0.31, 0.32, 0.37]])
    labels = np.array([0, 1, 1, 2, 2])
    assert C.calibration_metrics("multiclass", probs, labels)["ece"] == pytest.approx(0.316)
    # an unlabeled row (-1) is left out: same value
    probs_u = np.vstack([probs, [[0.99, 0.005, 0.005]]])
    assert C.calibration_metrics("multiclass", probs_u, np.r_[labels, -1])["ece"] == \
        pytest.approx(0.316)
    # Brier: sum_k (p_k - y_k)^2 per example, by hand, averaged
    y = np.eye(3)[labels]
    brier = np.mean(np.sum((probs - y) ** 2, axis=1))
    assert C.calibration_metrics("multiclass", probs, labels)["brier"] == pytest.approx(brier)
    assert C.calibration_metrics("multiclass", probs, labels)["nll"] == pytest.approx(
        -np.mean(np.log([0.9, 0.05, 0.5, 0.32, 0.37])))


def test_ece_multilabel_per_class_hand_computed():
    # class 0: p 0.1 (y 0), 0.15 (y 1), 0.8 (y 1) fall in three different bins:
    #   (|0 - 0.1| + |1 - 0.15| + |1 - 0.8|) / 3
    # class 1: the -1 (uncertain) and NaN rows are left out; p 0.6 and 0.62, both y 0:
    #   every bin has frequency 0, so ECE = mean p = 0.61 however they are binned
    probs = np.array([[0.1, 0.6], [0.15, 0.62], [0.8, 0.99], [0.5, 0.01]])
    labels = np.array([[0, 0], [1, 0], [1, -1], [np.nan, np.nan]])
    m = C.calibration_metrics("multilabel", probs, labels)
    want0 = (0.1 + 0.85 + 0.2) / 3
    assert m["ece_per_class"] == pytest.approx([want0, 0.61])
    assert m["ece"] == pytest.approx((want0 + 0.61) / 2)
    assert m["brier_per_class"] == pytest.approx([(0.01 + 0.85 ** 2 + 0.04) / 3,
                                                  (0.36 + 0.62 ** 2) / 2])


def test_reliability_bins_edges():
    r = C.reliability_bins([0.0, 1.0, 0.5, 0.52], [1, 1, 0, 1])
    assert r["count"][0] == 1 and r["count"][14] == 1 and r["count"][7] == 2
    assert r["accuracy"][7] == pytest.approx(0.5)
    assert r["confidence"][7] == pytest.approx(0.51)
    assert math.isnan(r["accuracy"][3])


def _sample_multiclass(n, k, seed):
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, (n, k))
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    labels = np.array([rng.choice(k, p=row) for row in p])
    return z, labels


def test_temperature_recovers_overconfidence_multiclass():
    # labels drawn from softmax(z): the calibrated model. Logits x 5 are over-confident.
    z, labels = _sample_multiclass(8000, 4, 0)
    t = C.fit_temperature("multiclass", 5 * z, labels)
    assert t == pytest.approx(5.0, rel=0.08)
    before = C.nll("multiclass", C.scaled_probabilities("multiclass", 5 * z, 1.0), labels)
    after = C.nll("multiclass", C.scaled_probabilities("multiclass", 5 * z, t), labels)
    assert after < before - 0.5
    # and ECE drops with it
    ece_b = C.calibration_metrics("multiclass", C.scaled_probabilities("multiclass", 5 * z, 1),
                                  labels)["ece"]
    ece_a = C.calibration_metrics("multiclass", C.scaled_probabilities("multiclass", 5 * z, t),
                                  labels)["ece"]
    assert ece_a < 0.03 < 0.2 < ece_b
    # the NLL at the fitted T is the minimum over a grid (numpy reference)
    grid = np.linspace(3, 7, 81)
    nlls = [-np.mean(np.log(C.scaled_probabilities("multiclass", 5 * z, g)[
        np.arange(len(labels)), labels])) for g in grid]
    assert abs(grid[int(np.argmin(nlls))] - t) <= 0.06


def test_temperature_per_class_multilabel():
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, (6000, 3))
    y = (rng.random(z.shape) < 1 / (1 + np.exp(-z))).astype(float)
    y[rng.random(z.shape) < 0.1] = np.nan   # not mentioned: left out
    y[:50, 2] = -1                           # uncertain: left out
    scales = np.array([5.0, 2.0, 0.5])       # over-, over- and under-confident classes
    t = C.fit_temperature("multilabel", z * scales, y)
    assert t == pytest.approx(scales.tolist(), rel=0.1)
    before = C.nll("multilabel", C.scaled_probabilities("multilabel", z * scales, 1.0), y)
    after = C.nll("multilabel", C.scaled_probabilities("multilabel", z * scales, t), y)
    assert after < before


def test_evaluate_calibration_case_level_and_bootstrap():
    z, labels = _sample_multiclass(300, 3, 2)
    probs = C.scaled_probabilities("multiclass", 3 * z, 1.0)
    cases = [f"c{i // 2}" for i in range(300)]  # two images per case, same label
    labels[1::2] = labels[0::2]
    out = C.evaluate_calibration("multiclass", probs, labels, cases, ["a", "b", "c"], 200, 0)
    case_probs = (probs[0::2] + probs[1::2]) / 2
    want = C.calibration_metrics("multiclass", case_probs, labels[0::2])
    assert out["case"]["ece"] == pytest.approx(want["ece"])
    lo, hi = out["case"]["ci95"]["ece"]
    assert lo <= out["case"]["ece"] <= hi and hi - lo > 0.01
    assert sum(out["reliability"][0]["count"]) == 150
