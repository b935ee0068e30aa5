"""Patient-level splits and nested, stratified label-fraction subsets.

Both are pure functions of (ids, labels, seed): the same input gives the same
output on any machine and in any runner (a SHA-256 of seed and id, no RNG state).
"""
from __future__ import annotations

import hashlib
import math
from typing import Sequence

import numpy as np

from data_prep.cases import CaseSpec
from data_prep.errors import UserError
from tfmicle.tasks import MULTICLASS

UNLABELED_SPLIT = "unlabeled"
DEFAULT_SPLIT_FRACTIONS = {"train": 0.8, "validation": 0.1, "test": 0.1}
DEFAULT_LABEL_FRACTIONS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0)


def unit_hash(seed: int, key: str, salt: str = "split") -> float:
    """A uniform number in [0, 1) from (seed, salt, key)."""
    d = hashlib.sha256(f"{seed}\x00{salt}\x00{key}".encode("utf-8")).digest()
    return int.from_bytes(d[:8], "big") / 2.0 ** 64


def validate_split_fractions(fractions: dict[str, float]) -> dict[str, float]:
    if not fractions:
        raise UserError("split fractions: at least one split is needed")
    for name, f in fractions.items():
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise UserError(f"split name {name!r}: use letters, digits, - and _")
        if name == UNLABELED_SPLIT:
            raise UserError(f"split name {name!r} is reserved for cases without labels")
        if not (0.0 <= f <= 1.0) or math.isnan(f):
            raise UserError(f"split fraction {name}={f}: must be within [0, 1]")
    total = sum(fractions.values())
    if abs(total - 1.0) > 1e-6:
        raise UserError(f"split fractions add up to {total:g}, not 1")
    return dict(fractions)


def validate_label_fractions(fractions: Sequence[float]) -> list[float]:
    out = sorted(set(float(f) for f in fractions))
    for f in out:
        if not (0.0 < f <= 1.0):
            raise UserError(f"label fraction {f:g}: must be within (0, 1]")
    return out


def hash_split(patient_id: str, fractions: dict[str, float], seed: int) -> str:
    u = unit_hash(seed, patient_id)
    acc = 0.0
    names = [n for n, f in fractions.items() if f > 0]
    for name in names:
        acc += fractions[name]
        if u < acc:
            return name
    return names[-1]


def assign_splits(cases: Sequence[CaseSpec], fractions: dict[str, float],
                  seed: int) -> list[str]:
    """The split of each case; all cases of one patient (of one split group, when
    data_prep.duplicates merged patients that share an image) share it.

    A group with a source split (format's own, or the csv split column) keeps it;
    a group without any labeled case goes to 'unlabeled'; every other group is
    placed by the seeded hash of its id (the patient id). A patient given two different
    source splits is an error (the source would leak a patient across splits).
    """
    source: dict[str, str] = {}
    labeled: set[str] = set()
    for c in cases:
        if c.source_split:
            prev = source.setdefault(c.group, c.source_split)
            if prev != c.source_split:
                raise UserError(f"patient {c.patient_id!r} is in source splits {prev!r} and "
                                f"{c.source_split!r}; a patient must stay in one split")
        if c.labeled:
            labeled.add(c.group)
    out = []
    for c in cases:
        g = c.group
        if g in source:
            out.append(source[g])
        elif g not in labeled:
            out.append(UNLABELED_SPLIT)
        else:
            out.append(hash_split(g, fractions, seed))
    return out


def label_subsets(case_ids: Sequence[str], label_class: Sequence[int],
                  label_multi: Sequence[Sequence[float] | None], fractions: Sequence[float],
                  seed: int, task: str) -> dict[float, list[str]]:
    """Nested, stratified subsets of the labeled cases of one split.

    multiclass: in each class, cases are ordered by a seeded hash of the case id and
    the subset of fraction f takes the first max(1, round(f * n_class)) of them.
    multilabel: one greedy order in which every prefix keeps each class's share of
    positives (cases without any positive count as one more group); the subset of
    fraction f is the first max(1, round(f * n)) cases. Subsets are prefixes of one
    order, so a smaller fraction is always inside a larger one. Returns sorted ids.
    """
    fractions = validate_label_fractions(fractions)
    n = len(case_ids)
    if task == MULTICLASS:
        by_class: dict[int, list[str]] = {}
        for cid, lc in zip(case_ids, label_class):
            if lc >= 0:
                by_class.setdefault(int(lc), []).append(cid)
        for ids in by_class.values():
            ids.sort(key=lambda i: (unit_hash(seed, i, "subset"), i))
        out = {}
        for f in fractions:
            chosen = []
            for ids in by_class.values():
                k = len(ids) if f >= 1.0 else min(len(ids), max(1, math.floor(f * len(ids) + 0.5)))
                chosen.extend(ids[:k])
            out[f] = sorted(chosen)
        return out

    keep = [i for i in range(n) if label_multi[i] is not None
            and any(not math.isnan(v) for v in label_multi[i])]
    order = _stratified_order([case_ids[i] for i in keep],
                              [label_multi[i] for i in keep], seed)
    out = {}
    for f in fractions:
        k = len(order) if f >= 1.0 else min(len(order), max(1, math.floor(f * len(order) + 0.5)))
        out[f] = sorted(order[:k])
    return out


def _stratified_order(ids: list[str], labels: list[Sequence[float]], seed: int) -> list[str]:
    if not ids:
        return []
    pos = np.array([[v == 1.0 for v in lab] for lab in labels], dtype=bool)
    groups = np.concatenate([pos, ~pos.any(axis=1, keepdims=True)], axis=1)   # [n, K+1]
    n, g = groups.shape
    base = sorted(range(n), key=lambda i: (unit_hash(seed, ids[i], "subset"), ids[i]))
    queues = [[i for i in base if groups[i, j]] for j in range(g)]
    heads = [0] * g
    share = groups.sum(axis=0) / n
    got = np.zeros(g)
    taken = np.zeros(n, dtype=bool)
    order: list[str] = []
    for t in range(1, n + 1):
        deficit = t * share - got
        for j in np.argsort(-deficit, kind="stable"):
            q = queues[j]
            while heads[j] < len(q) and taken[q[heads[j]]]:
                heads[j] += 1
            if heads[j] < len(q):
                i = q[heads[j]]
                break
        else:   # pragma: no cover - every case is in at least one group
            raise AssertionError("no case left")
        taken[i] = True
        got += groups[i]
        order.append(ids[i])
    return order
