"""Same-group nearest-neighbour retrieval on features, with a pixel-leakage filter.

Used by the demo and the MICLe-vs-SimCLR experiment on PH2 patches (group = lesion),
but nothing here knows about PH2: it takes features, group ids, the query indices and,
per query, the candidates to leave out.

Why the filter: PH2 patches of one lesion overlap (a Similar "b" patch is its "a" patch
shifted by 8 px; some "a" patches overlap each other), so a query's nearest neighbour
can be a patch holding the same pixels, which any encoder, even an untrained one,
finds. ``shared_block_mask`` marks every pair of patches that share an exact,
non-constant k x k block of pixels (anywhere in either patch), and the retrieval leaves
those candidates out for that query.

Metrics (per query, then averaged over the queries that keep at least one relevant
candidate):
- top-1: the most similar candidate (cosine; ties go to the lower index) is of the
  query's group;
- AP: average precision of the candidates ranked by cosine similarity, relevant =
  same group (``tfmicle.metrics.average_precision``: mean of the precision at the rank
  of each relevant candidate when scores have no ties); mAP is its mean.
``chance_metrics`` gives the exact expectation of both under a uniformly random
ranking of the same candidates.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfmicle.metrics import average_precision


# --------------------------------------------------------------------------- leakage

def _block_rows(patch: np.ndarray, block: int) -> np.ndarray:
    """All block x block windows (stride 1) of one patch that are not a single colour,
    as rows of bytes [n, block * block * C] uint8."""
    a = np.asarray(patch)
    if a.ndim == 2:
        a = a[..., None]
    if a.dtype != np.uint8:
        raise ValueError(f"patches must be uint8 pixels, got {a.dtype}")
    h, w, c = a.shape
    if h < block or w < block:
        return np.zeros((0, block * block * c), np.uint8)
    win = np.lib.stride_tricks.sliding_window_view(a, (block, block), axis=(0, 1))
    # win: [h-b+1, w-b+1, C, b, b] -> [n, b, b, C]
    win = np.moveaxis(win, 2, -1).reshape(-1, block, block, c)
    flat = win.reshape(len(win), block * block, c)
    constant = (flat == flat[:, :1, :]).all(axis=(1, 2))
    return np.ascontiguousarray(flat[~constant].reshape(-1, block * block * c))


def shared_block_mask(patches: Sequence[np.ndarray], block: int = 4) -> np.ndarray:
    """[N, N] bool: True where patches i and j share at least one exact, non-constant
    block x block window of pixels (at any position in each). The diagonal is True
    for every patch that has a non-constant window. Patches are uint8 [H, W, C] (or
    [H, W]) and may differ in size but not in channels."""
    import scipy.sparse as sp

    rows = [_block_rows(p, block) for p in patches]
    n = len(rows)
    if n == 0:
        return np.zeros((0, 0), bool)
    width = {r.shape[1] for r in rows}
    if len(width) > 1:
        raise ValueError("patches must all have the same number of channels")
    allrows = np.concatenate(rows, axis=0)
    owner = np.repeat(np.arange(n), [len(r) for r in rows])
    if len(allrows) == 0:
        return np.zeros((n, n), bool)
    keys = allrows.view(np.dtype((np.void, allrows.shape[1]))).ravel()
    _, block_id = np.unique(keys, return_inverse=True)
    block_id = block_id.ravel()
    incidence = sp.csr_matrix((np.ones(len(owner), np.int32), (owner, block_id)),
                              shape=(n, int(block_id.max()) + 1))
    shared = (incidence @ incidence.T).tocoo()
    out = np.zeros((n, n), bool)
    out[shared.row, shared.col] = shared.data > 0
    return out


# --------------------------------------------------------------------------- retrieval

def cosine_similarity(features: np.ndarray) -> np.ndarray:
    """[N, N] cosine similarities of the rows (a zero row has similarity 0 to all)."""
    f = np.asarray(features, dtype=np.float64)
    norm = np.linalg.norm(f, axis=1, keepdims=True)
    f = f / np.where(norm > 0, norm, 1.0)
    return f @ f.T


def _candidates(q: int, n: int, exclude: np.ndarray | None) -> np.ndarray:
    keep = np.ones(n, bool)
    keep[q] = False
    if exclude is not None:
        keep &= ~exclude[q]
    return np.flatnonzero(keep)


def retrieval_metrics(features: np.ndarray, groups: Sequence, queries: Sequence[int],
                      exclude: np.ndarray | None = None) -> dict:
    """Top-1 accuracy and mAP of same-group retrieval by cosine similarity.

    features [N, D]; groups [N] (any hashable ids); queries: indices into the N items;
    exclude: optional [N, N] bool, exclude[q, j] True leaves item j out of query q's
    candidates (the query itself is always left out). Queries left with no candidate
    of their group are skipped (counted in ``skipped_queries``).

    Returns {"top1", "map", "queries", "skipped_queries", "mean_candidates",
    "mean_relevant"} (top1 and map NaN when no query is usable).
    """
    feats = np.asarray(features)
    groups = np.asarray(groups)
    n = len(feats)
    if len(groups) != n:
        raise ValueError(f"{len(groups)} group ids for {n} feature rows")
    if exclude is not None and np.asarray(exclude).shape != (n, n):
        raise ValueError(f"exclude must be [{n}, {n}], got {np.asarray(exclude).shape}")
    p = per_query(feats, groups, queries, exclude)
    return _summary(p["top1"], p["ap"], p["candidates"], p["relevant"],
                    len(queries) - len(p["query"]))


def per_query(features: np.ndarray, groups, queries: Sequence[int],
              exclude: np.ndarray | None = None, chance: bool = False) -> dict:
    """retrieval_metrics per usable query (for bootstraps over groups): arrays "query"
    (index), "top1" (hit 0/1), "ap", "candidates", "relevant". chance=True gives the
    exact expectations of a random ranking instead (features unused)."""
    groups = np.asarray(groups)
    n = len(groups)
    sim = None if chance else cosine_similarity(features)
    out: dict[str, list] = {k: [] for k in ("query", "top1", "ap", "candidates", "relevant")}
    for q in queries:
        cand = _candidates(int(q), n, exclude)
        relevant = groups[cand] == groups[q]
        r = int(relevant.sum())
        if r == 0:
            continue
        if chance:
            top1, ap = r / len(cand), chance_ap(r, len(cand))
        else:
            scores = sim[q, cand]
            top1 = float(relevant[int(np.argmax(scores))])
            ap = average_precision(relevant.astype(np.int64), scores)
        for k, v in (("query", int(q)), ("top1", top1), ("ap", ap),
                     ("candidates", len(cand)), ("relevant", r)):
            out[k].append(v)
    return {k: np.asarray(v) for k, v in out.items()}


def chance_ap(num_relevant: int, num_candidates: int) -> float:
    """Expected average precision of a uniformly random ranking of num_candidates
    items of which num_relevant are relevant:
    (R - 1) / (N - 1) + H_N (N - R) / (N (N - 1)), H_N the N-th harmonic number
    (1.0 when N = 1)."""
    r, n = int(num_relevant), int(num_candidates)
    if not 0 < r <= n:
        raise ValueError(f"need 0 < relevant <= candidates, got {r} of {n}")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (r - 1) / (n - 1) + harmonic * (n - r) / (n * (n - 1))


def chance_metrics(groups: Sequence, queries: Sequence[int],
                   exclude: np.ndarray | None = None) -> dict:
    """The expected top-1 (R / N) and AP (``chance_ap``) of a random ranking, over the
    same queries and candidates as ``retrieval_metrics``."""
    p = per_query(None, groups, queries, exclude, chance=True)
    return _summary(p["top1"], p["ap"], p["candidates"], p["relevant"],
                    len(queries) - len(p["query"]))


def _summary(top1, aps, n_cand, n_rel, skipped) -> dict:
    if not len(top1):
        return {"top1": float("nan"), "map": float("nan"), "queries": 0,
                "skipped_queries": skipped, "mean_candidates": float("nan"),
                "mean_relevant": float("nan")}
    return {"top1": float(np.mean(top1)), "map": float(np.mean(aps)), "queries": len(top1),
            "skipped_queries": skipped, "mean_candidates": float(np.mean(n_cand)),
            "mean_relevant": float(np.mean(n_rel))}


# --------------------------------------------------------------------------- features

def centred(x: np.ndarray) -> np.ndarray:
    """Features minus their mean over the evaluated set (no labels used), so cosine
    compares directions around the data's centre rather than the all-positive corner."""
    x = np.asarray(x, np.float64)
    return x - x.mean(axis=0, keepdims=True)


def colour_statistics(images: np.ndarray) -> np.ndarray:
    """[N, H, W, 3] -> per-channel mean and standard deviation of each image, each
    statistic scaled to unit variance over the set: [N, 6]."""
    f = np.concatenate([images.mean(axis=(1, 2)), images.std(axis=(1, 2))], axis=1)
    return f / np.maximum(f.std(axis=0, keepdims=True), 1e-8)


def features_of(encoder, dataset, want=("image_id",)) -> tuple[np.ndarray, dict]:
    """Runs a Keras encoder (or None: no features) over a pipeline.evaluation() dataset
    in inference mode: returns (features [N, D], {key: array} for the keys in `want`,
    "pixels" [N, S, S, 3] being the preprocessed images)."""
    import tensorflow as tf

    fn = tf.function(lambda x: encoder(x, training=False), reduce_retracing=True)
    feats, extra = [], {k: [] for k in want}
    for batch in dataset:
        if encoder is not None:
            feats.append(fn(batch["image"]).numpy())
        for k in want:
            v = batch["image"] if k == "pixels" else batch[k]
            extra[k].append(v.numpy())
    out = {k: np.concatenate(v) for k, v in extra.items()}
    return (np.concatenate(feats) if feats else np.zeros((0, 0))), out


def evaluate_features(features: dict, groups: Sequence, queries: Sequence[int],
                      exclude: np.ndarray) -> dict:
    """{name: features [N, D]} -> {name: {"filtered", "unfiltered"} retrieval_metrics}
    (features centred first), plus "chance" on the same queries and candidates."""
    out = {name: {"filtered": retrieval_metrics(centred(f), groups, queries, exclude=exclude),
                  "unfiltered": retrieval_metrics(centred(f), groups, queries)}
           for name, f in features.items()}
    out["chance"] = {"filtered": chance_metrics(groups, queries, exclude=exclude),
                     "unfiltered": chance_metrics(groups, queries)}
    return out


__all__ = ["shared_block_mask", "cosine_similarity", "retrieval_metrics", "per_query",
           "chance_ap",
           "chance_metrics", "centred", "colour_statistics", "features_of",
           "evaluate_features"]
