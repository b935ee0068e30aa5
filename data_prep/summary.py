"""dataset.json, skipped.csv and the subset files, from what a runner wrote."""
from __future__ import annotations

import csv
import io
import math
from collections import Counter
from typing import Sequence

from data_prep.cases import SKIPPED_COLUMNS, Skip
from data_prep.local_runner import CaseSummary
from data_prep.splits import label_subsets
from tfmicle.tasks import MULTICLASS


def split_stats(cases: Sequence[CaseSummary], task: str, class_names: list[str]) -> dict:
    """cases, images, patients, images_per_case, label_counts, unlabeled_cases of one split."""
    per_case = Counter(len(c.image_ids) for c in cases)
    stats = {
        "cases": len(cases),
        "images": sum(len(c.image_ids) for c in cases),
        "patients": len({c.patient_id for c in cases}),
        "images_per_case": {str(k): per_case[k] for k in sorted(per_case)},
    }
    if task == MULTICLASS:
        counts = Counter(c.label_class for c in cases)
        stats["label_counts"] = {name: counts.get(i, 0) for i, name in enumerate(class_names)}
        stats["unlabeled_cases"] = sum(v for k, v in counts.items() if k < 0)
    else:
        lc = {name: {"positive": 0, "negative": 0, "uncertain": 0, "blank": 0}
              for name in class_names}
        unlabeled = 0
        for c in cases:
            vals = c.label_multi or [math.nan] * len(class_names)
            if all(math.isnan(v) for v in vals):
                unlabeled += 1
            for name, v in zip(class_names, vals):
                key = ("blank" if math.isnan(v) else "positive" if v == 1 else
                       "negative" if v == 0 else "uncertain")
                lc[name][key] += 1
        stats["label_counts"] = lc
        stats["unlabeled_cases"] = unlabeled
    return stats


def make_subsets(cases: Sequence[CaseSummary], fractions: Sequence[float], seed: int,
                 task: str) -> dict[float, list[str]]:
    return label_subsets([c.case_id for c in cases], [c.label_class for c in cases],
                         [c.label_multi for c in cases], fractions, seed, task)


def skipped_csv(skipped: Sequence[Skip]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(SKIPPED_COLUMNS)
    for s in skipped:
        w.writerow(s.as_row())
    return buf.getvalue()


def skip_reasons(skipped: Sequence[Skip]) -> dict[str, int]:
    """Counts by the reason's first word (missing, corrupt, unreadable, conflict, ...)."""
    return dict(sorted(Counter(s.reason.split(":", 1)[0] for s in skipped).items()))
