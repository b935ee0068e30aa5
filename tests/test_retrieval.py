"""The retrieval metric and the pixel-leakage filter of experiments/retrieval.py against
hand-computed cases."""
from __future__ import annotations

import itertools
import math
import os
import sys

import numpy as np
import pytest

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from tfmicle.retrieval import (chance_ap, chance_metrics, cosine_similarity,  # noqa: E402
                                   retrieval_metrics, shared_block_mask)


def _noise(shape, seed):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


# --------------------------------------------------------------------------- leakage filter

def test_shifted_patch_shares_blocks_and_unrelated_patch_does_not():
    a = _noise((12, 12, 3), 0)
    shifted = _noise((12, 12, 3), 1)
    shifted[:, :8] = a[:, 4:]                       # a shifted left by 4 px
    other = _noise((12, 12, 3), 2)
    m = shared_block_mask([a, shifted, other])
    assert m[0, 1] and m[1, 0]
    assert not m[0, 2] and not m[2, 0] and not m[1, 2]
    assert m.diagonal().all()


def test_one_4x4_block_anywhere_is_enough_and_3x4_is_not():
    a = _noise((10, 10, 3), 3)
    b = _noise((10, 10, 3), 4)
    b[5:9, 0:4] = a[1:5, 2:6]                       # one exact 4x4 block, other position
    c = _noise((10, 10, 3), 5)
    c[5:8, 0:4] = a[1:4, 2:6]                       # only 3x4 pixels in common
    m = shared_block_mask([a, b, c])
    assert m[0, 1]
    assert not m[0, 2]


def test_constant_blocks_do_not_count():
    a = _noise((10, 10, 3), 6)
    b = _noise((10, 10, 3), 7)
    a[0:5, 0:5] = (0, 0, 0)                         # the same black 5x5 square in both
    b[4:9, 3:8] = (0, 0, 0)
    flat = np.full((10, 10, 3), 200, np.uint8)      # a patch that is all one colour
    m = shared_block_mask([a, b, flat, flat.copy()])
    assert not m[0, 1]
    assert not m[2, 3] and not m[2, 2]              # nothing non-constant to share
    assert m[0, 0] and m[1, 1]


def test_block_must_match_in_every_channel_and_block_size_is_a_parameter():
    a = _noise((8, 8, 3), 8)
    b = a.copy()
    b[..., 2] ^= 1                                  # same layout, blue channel differs
    assert not shared_block_mask([a, b])[0, 1]
    c = _noise((8, 8, 3), 9)
    c[0:2, 0:2] = a[4:6, 4:6]                       # a 2x2 block in common
    assert not shared_block_mask([a, c], block=4)[0, 1]
    assert shared_block_mask([a, c], block=2)[0, 1]


def test_patches_of_different_sizes_and_grayscale():
    a = _noise((16, 16), 10)
    small = a[3:9, 5:12].copy()                     # a 6x7 crop
    tiny = a[0:3, 0:3].copy()                       # smaller than a block: shares nothing
    m = shared_block_mask([a, small, tiny])
    assert m[0, 1] and not m[0, 2] and not m[2, 2]


# --------------------------------------------------------------------------- retrieval

def _on_circle(degrees):
    r = np.radians(degrees)
    return np.stack([np.cos(r), np.sin(r)], axis=1)


# Items on the unit circle at these angles; cosine similarity falls with the angle.
ANGLES = [0, 10, 25, 45, 70]
GROUPS = [0, 1, 0, 1, 0]


def test_cosine_similarity_matches_angles_and_ignores_scale():
    f = _on_circle(ANGLES) * np.array([[1.0], [3.0], [0.5], [2.0], [7.0]])
    s = cosine_similarity(f)
    assert s[0, 2] == pytest.approx(math.cos(math.radians(25)))
    assert s[3, 4] == pytest.approx(math.cos(math.radians(25)))
    assert np.allclose(np.diag(s), 1.0)
    assert np.allclose(cosine_similarity(np.zeros((2, 3))), 0.0)


def test_retrieval_metrics_hand_computed():
    # Query 0 (0 deg): ranking 1 (10, other), 2 (25, same), 3 (45, other), 4 (70, same)
    #   -> top-1 0, AP = (1/2 + 2/4) / 2 = 1/2.
    # Query 2 (25 deg): ranking 1 (15, other), 3 (20, other), 0 (25, same), 4 (45, same)
    #   -> top-1 0, AP = (1/3 + 2/4) / 2 = 5/12.
    f = _on_circle(ANGLES)
    r = retrieval_metrics(f, GROUPS, [0, 2])
    assert r["top1"] == 0.0
    assert r["map"] == pytest.approx((1 / 2 + 5 / 12) / 2)
    assert r["queries"] == 2 and r["skipped_queries"] == 0
    assert r["mean_candidates"] == 4 and r["mean_relevant"] == 2
    # Query 1 (10 deg, group 1): ranking 0 (10), 2 (15), 3 (35, same), 4 (60)
    #   -> top-1 0, AP = 1/3.
    r1 = retrieval_metrics(f, GROUPS, [1])
    assert r1["top1"] == 0.0 and r1["map"] == pytest.approx(1 / 3)


def test_excluded_candidates_are_left_out_per_query():
    f = _on_circle(ANGLES)
    exclude = np.zeros((5, 5), bool)
    exclude[0, 1] = True        # query 0 loses its nearest (other-group) neighbour
    # Query 0: ranking 2 (same), 3 (other), 4 (same) -> top-1 1, AP = (1 + 2/3) / 2 = 5/6.
    r = retrieval_metrics(f, GROUPS, [0], exclude=exclude)
    assert r["top1"] == 1.0 and r["map"] == pytest.approx(5 / 6)
    assert r["mean_candidates"] == 3
    # The exclusion is per query: query 2 still sees item 1 (AP 5/12 as above).
    r2 = retrieval_metrics(f, GROUPS, [2], exclude=exclude)
    assert r2["map"] == pytest.approx(5 / 12)
    # Excluding both same-group candidates of query 0 leaves nothing to find: skipped.
    exclude[0, 2] = exclude[0, 4] = True
    r3 = retrieval_metrics(f, GROUPS, [0, 2], exclude=exclude)
    assert r3["queries"] == 1 and r3["skipped_queries"] == 1
    assert r3["map"] == pytest.approx(5 / 12)


def test_perfect_features_score_one_and_singleton_groups_are_skipped():
    f = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, -1]], float)
    r = retrieval_metrics(f, ["a", "a", "b", "b", "c"], [0, 1, 2, 3, 4])
    assert r["top1"] == 1.0 and r["map"] == 1.0
    assert r["queries"] == 4 and r["skipped_queries"] == 1
    empty = retrieval_metrics(f, ["a", "b", "c", "d", "e"], [0])
    assert math.isnan(empty["top1"]) and empty["queries"] == 0


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 2)), [0, 1], [0])
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((3, 2)), [0, 1, 1], [0], exclude=np.zeros((2, 2), bool))


# --------------------------------------------------------------------------- chance

def _brute_force_chance_ap(r, n):
    """Mean AP over every placement of r relevant items among n ranks."""
    aps = []
    for pos in itertools.combinations(range(1, n + 1), r):
        aps.append(np.mean([(k + 1) / p for k, p in enumerate(pos)]))
    return float(np.mean(aps))


def test_chance_ap_hand_computed_and_brute_force():
    assert chance_ap(1, 1) == 1.0
    assert chance_ap(1, 2) == pytest.approx(0.75)            # (1 + 1/2) / 2
    assert chance_ap(2, 3) == pytest.approx(29 / 36)         # (1 + 5/6 + 7/12) / 3
    assert chance_ap(3, 3) == pytest.approx(1.0)
    for r, n in [(1, 5), (2, 5), (3, 7), (4, 9), (1, 10)]:
        assert chance_ap(r, n) == pytest.approx(_brute_force_chance_ap(r, n))
    with pytest.raises(ValueError):
        chance_ap(0, 3)


def test_chance_metrics_use_the_same_candidates():
    exclude = np.zeros((5, 5), bool)
    exclude[0, 1] = True
    c = chance_metrics(GROUPS, [0, 1], exclude=exclude)
    # Query 0: 3 candidates, 2 relevant; query 1: 4 candidates, 1 relevant.
    assert c["top1"] == pytest.approx((2 / 3 + 1 / 4) / 2)
    assert c["map"] == pytest.approx((chance_ap(2, 3) + chance_ap(1, 4)) / 2)
    assert c["queries"] == 2


def test_random_features_average_to_chance():
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(6), 4)
    queries = list(range(24))
    runs = [retrieval_metrics(rng.normal(size=(24, 8)), groups, queries) for _ in range(300)]
    c = chance_metrics(groups, queries)
    assert np.mean([r["map"] for r in runs]) == pytest.approx(c["map"], abs=0.01)
    assert np.mean([r["top1"] for r in runs]) == pytest.approx(c["top1"], abs=0.015)
