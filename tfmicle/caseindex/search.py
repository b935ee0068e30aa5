"""Exact cosine top-k over a case index, in chunks (numpy only).

Memory stays bounded whatever the index size: the similarities of one chunk of rows
([Q, chunk]) and, for a float16 index, that chunk's float32 copy are all that is made
besides the [Q, k] result; the [Q, N] matrix is never built.

Order: highest similarity first; equal similarities (as computed) by ascending row,
so the answer is the same on every call. A zero query (or a zero row) has similarity 0
with everything: a zero query gets the first k rows, each with similarity 0.
"""
from __future__ import annotations

import numpy as np

from .store import l2_normalise

CHUNK_ELEMENTS = 1 << 23  # 32 MiB of float32 per chunk: few BLAS calls (each wakes its threads), small beside the index


def chunk_rows_for(dim: int, queries: int) -> int:
    """Rows per chunk so that neither the chunk's float32 copy [rows, D] nor the
    similarities [Q, rows] pass CHUNK_ELEMENTS (at least 256 rows)."""
    return max(256, CHUNK_ELEMENTS // max(1, dim, queries))


def top_of(sims: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """One query's candidates (sims [c], row numbers [c], rows unique) -> the best k,
    ordered by (-similarity, row). Only the candidates tied with or above the k-th value
    are sorted, so ties at the boundary are settled by row, not by partition order."""
    if sims.shape[0] > k:
        kth = np.partition(sims, sims.shape[0] - k)[sims.shape[0] - k]
        keep = np.flatnonzero(sims >= kth)
        sims, rows = sims[keep], rows[keep]
    order = np.lexsort((rows, -sims))[:k]
    return sims[order], rows[order]


def cosine_top_k(index: np.ndarray, queries: np.ndarray, k: int, chunk_rows: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """index [N, D] (float16 or float32, rows L2-normalised as ``build_index`` stores
    them), queries [Q, D] (any norm; normalised here) -> (rows [Q, min(k, N)] int64,
    similarities [Q, min(k, N)] float32), each row sorted as the module says.
    ValueError for k < 1, a dimension mismatch or a non-finite query."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    q = np.asarray(queries)
    if q.ndim != 2 or index.ndim != 2 or q.shape[1] != index.shape[1]:
        raise ValueError(f"queries {q.shape} and index {index.shape} must be [Q, D] and [N, D] with one D")
    if not np.all(np.isfinite(q)):
        raise ValueError("queries hold NaN or inf")
    q = l2_normalise(q)
    n, nq = index.shape[0], q.shape[0]
    kk = min(k, n)
    step = chunk_rows or chunk_rows_for(index.shape[1], nq)
    best_s = [np.empty(0, np.float32) for _ in range(nq)]
    best_i = [np.empty(0, np.int64) for _ in range(nq)]
    for start in range(0, n, step):
        chunk = index[start:start + step]
        if chunk.dtype != np.float32:
            chunk = chunk.astype(np.float32)  # numpy's float16 matmul has no BLAS: copy one chunk
        sims = q @ chunk.T  # [Q, rows]
        rows = np.arange(start, start + chunk.shape[0], dtype=np.int64)
        for j in range(nq):
            best_s[j], best_i[j] = top_of(np.concatenate([best_s[j], sims[j]]),
                                        np.concatenate([best_i[j], rows]), kk)
    if n == 0:
        return np.zeros((nq, 0), np.int64), np.zeros((nq, 0), np.float32)
    return np.stack(best_i), np.stack(best_s).astype(np.float32)


__all__ = ["cosine_top_k", "top_of", "chunk_rows_for", "CHUNK_ELEMENTS"]
