"""HAM10000 for the experiments: the records (through data_prep's ham10000 format, as a
user's download), same-lesion retrieval over distinct photos, and the linear probe of
the 7 diagnoses. Used by micle_vs_simclr.py --dataset ham10000, label_efficiency.py
--dataset ham10000, choose_derm_settings.py --dataset ham10000 and the demo.

The split is by lesion, seeded by --split-seed (default 0) and fixed across the training
seeds: the settings search reads only train and validation lesions, so the test lesions
of the reported tables are never seen by a choice. Seeds vary initialisation, data
order and augmentation; the bootstrap over test lesions gives the sampling spread.

Retrieval (question: are distinct photos of one lesion close?): the items are every
test photo; the queries are photos of test lesions with two or more photos; relevant
means another photo of the query's lesion. A pair listed in near_duplicate_pairs.csv
(one photograph re-processed) is left out for that query, as a relevant item and as a
candidate, so the measure is about distinct photos; queries left with no relevant item
are skipped.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from tfmicle.probe import (lesion_groups, linear_probe, probe_metrics,  # noqa: F401
                           probe_summary)

log = logging.getLogger("experiments.ham10000")

SPLITS = {"train": 0.7, "validation": 0.1, "test": 0.2}
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")   # data_prep's class order
HAM10000_CLASSES_N = len(CLASSES)
PAIRS_FILE = "near_duplicate_pairs.csv"


def default_data_dir() -> str:
    """../shared/data/ham10000 beside the repository (tests and CI), else ''."""
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.path.join(os.path.dirname(repo), "shared", "data", "ham10000")
    return path if os.path.isdir(path) else ""


def prepare_records(data: str, out: str, split_seed: int, workers: int = 0,
                    label_fractions=(0.1, 1.0)) -> dict:
    """data_prep --format ham10000 (``data_prep.convert``) into out; dataset.json."""
    from data_prep.convert import ConvertConfig, convert
    cfg = ConvertConfig(format="ham10000", input=data, out=out, split_fractions=dict(SPLITS),
                        split_seed=split_seed, label_fractions=list(label_fractions),
                        subset_splits=("train",), overwrite=True, workers=workers)
    return convert(cfg)


def near_duplicate_pairs(data: str) -> set[frozenset]:
    """The listed near-identical pairs {frozenset({image_a, image_b})}; empty without
    the file."""
    from tfmicle.csvfiles import read_csv
    path = os.path.join(data, PAIRS_FILE)
    if not os.path.isfile(path):
        log.warning("%s not found: retrieval counts near-identical pairs as distinct", path)
        return set()
    _, rows = read_csv(path)
    return {frozenset((r["image_a"], r["image_b"])) for r in rows}


@dataclass
class Split:
    """Every image of one split in evaluation order."""
    image_ids: list[str]
    lesions: np.ndarray          # [N] str
    labels: np.ndarray           # [N] int
    meta: list[dict]


def split_images(cfg, data_dir: str, split: str) -> tuple[Split, object]:
    """(Split, the evaluation() dataset it was read from) at cfg.data.image_size."""
    from tfmicle.data.pipeline import PipelineConfig, evaluation
    from tfmicle.retrieval import features_of
    ds = evaluation(PipelineConfig(data_dir, split, batch_size=256,
                                   image_size=cfg.data.image_size))
    _, extra = features_of(None, ds, want=("image_id", "case_id", "label_class"))
    return Split([i.decode() for i in extra["image_id"]],
                 np.array([c.decode() for c in extra["case_id"]]),
                 extra["label_class"].astype(int), []), ds


def exclusion(image_ids: list[str], pairs: set[frozenset]) -> np.ndarray:
    """[N, N] bool: True where (i, j) is a listed near-identical pair."""
    index = {i: n for n, i in enumerate(image_ids)}
    out = np.zeros((len(image_ids), len(image_ids)), bool)
    for p in pairs:
        a, b = tuple(p)
        if a in index and b in index:
            out[index[a], index[b]] = out[index[b], index[a]] = True
    return out


def retrieval_queries(lesions: np.ndarray) -> list[int]:
    """Indices of the photos of lesions with two or more photos."""
    ids, counts = np.unique(lesions, return_counts=True)
    multi = set(ids[counts >= 2].tolist())
    return [n for n, les in enumerate(lesions) if les in multi]


def retrieval_table(features: dict[str, list[np.ndarray]], split: Split,
                    pairs: set[frozenset], replicates: int = 1000, seed: int = 0) -> dict:
    """features: {method: [features [N, D] of each seed]} on one split (the queries
    are the same for every seed). Returns {"per_seed": {method: [{"map", "top1"}]},
    "summary": {method: {"map", "top1" (means over seeds of the per-query values),
    "map_ci", "top1_ci"}}, "diff": {"a-b": {"map", "map_ci"}}, "queries", "lesions"}:
    95 % bootstrap CIs resample test lesions (with their queries) for the seed mean;
    differences are paired (same resampled lesions)."""
    from tfmicle.metrics import bootstrap_ci
    from tfmicle.retrieval import centred, per_query
    exclude = exclusion(split.image_ids, pairs)
    queries = retrieval_queries(split.lesions)
    chance = per_query(None, split.lesions, queries, exclude, chance=True)
    per = {m: [per_query(centred(f), split.lesions, queries, exclude) for f in fs]
           for m, fs in features.items()}
    mean = {m: {k: np.mean([r[k] for r in rs], axis=0) for k in ("ap", "top1")}
            for m, rs in per.items()}
    mean["chance"] = {k: chance[k] for k in ("ap", "top1")}
    groups = lesion_groups(split.lesions, chance["query"])
    pairs_d = [(a, b) for a, b in (("micle", "simclr"), ("micle", "random_init"),
                                   ("simclr", "random_init")) if a in per and b in per]

    def stat(r):
        out = {f"{m}/{k}": float(np.mean(v[k][r])) for m, v in mean.items()
               for k in ("ap", "top1")}
        out.update({f"{a}-{b}": float(np.mean(mean[a]["ap"][r] - mean[b]["ap"][r]))
                    for a, b in pairs_d})
        return out
    ci = bootstrap_ci(stat, groups, replicates=replicates, seed=seed)
    return {
        "per_seed": {m: [{"map": float(r["ap"].mean()), "top1": float(r["top1"].mean())}
                         for r in rs] for m, rs in per.items()},
        "summary": {m: {"map": float(v["ap"].mean()), "top1": float(v["top1"].mean()),
                        "map_ci": ci[f"{m}/ap"], "top1_ci": ci[f"{m}/top1"]}
                    for m, v in mean.items()},
        "diff": {f"{a}-{b}": {"map": float(np.mean(mean[a]["ap"] - mean[b]["ap"])),
                              "map_ci": ci[f"{a}-{b}"]} for a, b in pairs_d},
        "queries": int(len(chance["query"])), "lesions": len(groups),
        "skipped_queries": int(len(queries) - len(chance["query"])),
    }


def positive_similarity(features: np.ndarray, split: Split, pairs: set[frozenset]) -> dict:
    """Diagnostic: mean cosine (centred features) of distinct same-lesion photo pairs
    vs. of photos of different lesions."""
    from tfmicle.retrieval import centred, cosine_similarity
    sim = cosine_similarity(centred(features))
    same = split.lesions[:, None] == split.lesions[None, :]
    np.fill_diagonal(same, False)
    same &= ~exclusion(split.image_ids, pairs)
    diff = split.lesions[:, None] != split.lesions[None, :]
    return {"same_lesion": float(sim[same].mean()) if same.any() else float("nan"),
            "other_lesion": float(sim[diff].mean())}
