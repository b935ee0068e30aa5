"""data_prep.splits: patient-level splits and nested, stratified label subsets."""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from data_prep.cases import CaseSpec, ImageRef
from data_prep.errors import UserError
from data_prep.splits import assign_splits, label_subsets

FRACS = {"train": 0.7, "validation": 0.1, "test": 0.2}


def _case(cid, patient, label=0, split=None, multi=None):
    return CaseSpec(cid, patient, [ImageRef(f"{cid}.jpg", cid)], label, multi, split)


def test_split_is_per_patient_deterministic_and_close_to_fractions():
    cases = [_case(f"c{i}", f"p{i // 3}", i % 4) for i in range(6000)]   # 2000 patients
    a = assign_splits(cases, FRACS, seed=7)
    assert a == assign_splits(list(reversed(cases)), FRACS, seed=7)[::-1]   # order-free
    per_patient = {}
    for c, s in zip(cases, a):
        assert per_patient.setdefault(c.patient_id, s) == s
    counts = Counter(per_patient.values())
    for name, f in FRACS.items():                       # binomial sd ~ 0.01 at n=2000
        assert abs(counts[name] / 2000 - f) < 0.04, (name, counts)
    other = assign_splits(cases, FRACS, seed=8)
    assert other != a                                    # the seed matters


def test_source_split_wins_and_unlabeled_patients_get_their_own_split():
    cases = [_case("a1", "pa", 0, "valid"), _case("a2", "pa", 1),      # pa: source split
             _case("u1", "pu", -1), _case("u2", "pu", -1),              # no label at all
             _case("m1", "pm", -1), _case("m2", "pm", 2)]               # one labeled case
    s = assign_splits(cases, FRACS, seed=0)
    assert s[0] == s[1] == "valid"
    assert s[2] == s[3] == "unlabeled"
    assert s[4] == s[5] in FRACS


def test_patient_in_two_source_splits_is_an_error():
    cases = [_case("a", "p", 0, "train"), _case("b", "p", 0, "test")]
    with pytest.raises(UserError, match="patient 'p'"):
        assign_splits(cases, FRACS, seed=0)


def test_multiclass_subsets_are_nested_and_stratified():
    sizes = {0: 500, 1: 300, 2: 150, 3: 7}
    ids, labels = [], []
    for k, n in sizes.items():
        for i in range(n):
            ids.append(f"k{k}-{i}")
            labels.append(k)
    ids.append("unl")                                     # unlabeled: never in a subset
    labels.append(-1)
    fr = [0.01, 0.05, 0.1, 0.25, 0.5, 1.0]
    subs = label_subsets(ids, labels, [None] * len(ids), fr, seed=3, task="multiclass")
    for f in fr:
        per = Counter(int(i[1]) for i in subs[f])
        for k, n in sizes.items():       # hand formula: max(1, round half up (f * n))
            assert per[k] == (n if f == 1 else max(1, math.floor(f * n + 0.5))), (f, k)
        assert "unl" not in subs[f]
    for small, big in zip(fr, fr[1:]):
        assert set(subs[small]) <= set(subs[big])
    again = label_subsets(ids[::-1], labels[::-1], [None] * len(ids), fr, 3, "multiclass")
    assert again == subs
    assert label_subsets(ids, labels, [None] * len(ids), fr, 4, "multiclass")[0.1] != subs[0.1]


def test_multilabel_subsets_are_nested_and_keep_positive_shares():
    rng = np.random.default_rng(0)
    n, prev = 2000, np.array([0.5, 0.2, 0.05, 0.01])
    y = (rng.random((n, 4)) < prev).astype(float)
    y[rng.random((n, 4)) < 0.1] = -1.0                       # uncertain
    y[rng.random((n, 4)) < 0.1] = np.nan                     # blank
    ids = [f"c{i}" for i in range(n)]
    multi = [list(r) for r in y] + [[math.nan] * 4]          # last: all blank = unlabeled
    ids.append("blank")
    fr = [0.05, 0.1, 0.25, 1.0]
    subs = label_subsets(ids, [-1] * len(ids), multi, fr, seed=1, task="multilabel")
    assert len(subs[1.0]) == n and "blank" not in subs[1.0]
    row = {i: r for i, r in zip(ids, multi)}
    full_share = (y == 1).mean(axis=0)
    for f in fr:
        assert len(subs[f]) == max(1, math.floor(f * n + 0.5))
        share = np.mean([[v == 1 for v in row[i]] for i in subs[f]], axis=0)
        # every prefix tracks the full positive share within 3 cases per class (a random
        # subset of 500 would miss by ~8 for the 16 % class: one standard deviation)
        assert np.all(np.abs(share - full_share) * len(subs[f]) <= 3.0), (f, share, full_share)
    for small, big in zip(fr, fr[1:]):
        assert set(subs[small]) <= set(subs[big])
