"""Approximate search for large indexes: faiss-cpu's inverted-file index (IVF-Flat on
inner product, i.e. cosine on the stored unit rows), from the optional extra
``similar-ann`` (``pip install tfmicle[similar-ann]``), imported only when used.

IVF proposes ``CANDIDATES * k`` rows by scanning ``nprobe`` of its ``sqrt(N)`` lists;
those rows are then scored exactly and ordered as exact search orders them
(``search.top_of``: similarity, then row), so a returned similarity is always the exact
one and only recall can differ. Below ``ANN_MIN_CASES`` exact search is interactive and
used instead (README, "Similar cases", has the measurements behind both numbers).
"""
from __future__ import annotations

import importlib.util

import numpy as np

from .search import top_of
from .store import l2_normalise

ANN_MIN_CASES = 100_000  # exact search's p99 passes 100 ms about here (D = 512, 2 cores; README)
NPROBE = 32               # lists scanned per query: recall@10 1.000 at 10^5 and 10^6 benchmark vectors (README)
CANDIDATES = 4            # rows proposed per result, re-scored exactly
TRAIN_PER_LIST = 39       # faiss warns with fewer training points per list


def available() -> bool:
    """True when faiss (the similar-ann extra) can be imported."""
    return importlib.util.find_spec("faiss") is not None


class IvfIndex:
    """IVF-Flat over index rows [N, D] (unit rows, float16 or float32; faiss keeps a
    float32 copy: N * D * 4 bytes more). Training takes seconds at 10^5 rows and about
    half a minute at 10^6 on 2 cores."""

    def __init__(self, embeddings: np.ndarray, nprobe: int = NPROBE, seed: int = 0):
        import faiss

        x = np.ascontiguousarray(embeddings, np.float32)
        self.embeddings = embeddings
        self.nlist = max(1, int(np.sqrt(x.shape[0])))
        quantiser = faiss.IndexFlatIP(x.shape[1])
        self.index = faiss.IndexIVFFlat(quantiser, x.shape[1], self.nlist, faiss.METRIC_INNER_PRODUCT)
        rng = np.random.default_rng(seed)
        sample = x[rng.choice(x.shape[0], min(x.shape[0], TRAIN_PER_LIST * self.nlist), replace=False)]
        self.index.train(sample)
        self.index.add(x)
        self.index.nprobe = min(nprobe, self.nlist)
        self._quantiser = quantiser  # the IVF index does not own it

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """queries [Q, D] -> (rows [Q, <= k] int64, exact similarities [Q, <= k] float32),
        each row sorted by similarity then row. Fewer than k only when the scanned lists
        hold fewer than k rows."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        q = l2_normalise(queries)
        n = self.embeddings.shape[0]
        _, cand = self.index.search(np.ascontiguousarray(q), min(n, CANDIDATES * k))
        out_r, out_s = [], []
        for qi, rows in zip(q, cand):
            rows = rows[rows >= 0].astype(np.int64)  # -1: fewer candidates than asked
            sims = self.embeddings[rows].astype(np.float32) @ qi
            s, r = top_of(sims, rows, min(k, len(rows)))
            out_r.append(r)
            out_s.append(s.astype(np.float32))
        width = min(len(r) for r in out_r)
        return np.stack([r[:width] for r in out_r]), np.stack([s[:width] for s in out_s])


__all__ = ["ANN_MIN_CASES", "NPROBE", "CANDIDATES", "available", "IvfIndex"]
