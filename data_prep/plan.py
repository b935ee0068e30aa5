"""The conversion plan: which case goes to which split and shard, in which order.

Both runners execute the same plan, so they write the same cases to the same splits.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field

from data_prep.cases import CaseSpec
from data_prep.manifest import Manifest, probe_size
from data_prep.splits import UNLABELED_SPLIT, assign_splits


@dataclass
class SplitPlan:
    name: str
    cases: list[CaseSpec] = field(default_factory=list)
    source_bytes: int = 0
    num_shards: int = 1

    def shard_of(self, i: int) -> int:
        """Shard of the i-th case of the split (round robin)."""
        return i % self.num_shards


@dataclass
class WorkItem:
    split: str
    shard: int
    case: CaseSpec


@dataclass
class Plan:
    manifest: Manifest
    splits: dict[str, SplitPlan]

    def work(self) -> list[WorkItem]:
        """Cases grouped by shard, shard by shard (one open shard at a time)."""
        items = []
        for sp in self.splits.values():
            for k in range(sp.num_shards):
                items.extend(WorkItem(sp.name, k, c) for c in sp.cases[k::sp.num_shards])
        return items

    @property
    def num_images(self) -> int:
        return sum(len(c.images) for sp in self.splits.values() for c in sp.cases)


def make_plan(manifest: Manifest, split_fractions: dict[str, float], seed: int,
              shard_mb: float) -> Plan:
    names = assign_splits(manifest.cases, split_fractions, seed)
    order = list(split_fractions) + sorted({n for n in names if n not in split_fractions
                                            and n != UNLABELED_SPLIT}) + [UNLABELED_SPLIT]
    splits = {n: SplitPlan(n) for n in order}
    for case, name in zip(manifest.cases, names):
        sp = splits[name]
        sp.cases.append(case)
        sp.source_bytes += sum(probe_size(r.path) for r in case.images if r.path)
    for sp in splits.values():
        # Sources list cases in their own order (HAM10000's metadata is sorted by
        # diagnosis); training shuffles within a buffer, so shards written in source
        # order would feed it label-blocked windows. A seeded order keeps the output
        # deterministic.
        random.Random(f"{seed}/{sp.name}").shuffle(sp.cases)
    target = max(shard_mb, 1e-6) * (1 << 20)
    for sp in splits.values():
        sp.num_shards = max(1, min(len(sp.cases), math.ceil(sp.source_bytes / target)))
    return Plan(manifest, {n: sp for n, sp in splits.items()
                           if sp.cases or n in split_fractions})
