"""Scoring: ``--similar INDEX``, how well a case index retrieves. For each held-out case (the
mean of its images' L2-normalised embeddings, re-normalised: the index's own rule) the k
nearest reference cases are found by exact cosine search, and precision@k is the share
of them whose class is the query's. It is reported overall and per class, each next to
chance: the share of the query's class among the reference cases, which is the expected
precision@k of a random ranking. CIs: percentile bootstrap over the query cases.

Leakage guard: a reference case with the query's case id is never one of its
neighbours (an index built from the split being scored would otherwise find each case
itself). The index must have been built by the scored model (``check_matches``);
``check_index`` refuses a mismatch before anything is predicted.
Map: docs/architecture.md."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from tfmicle.caseindex import store
from tfmicle.caseindex.search import cosine_top_k
from tfmicle.score.index import case_vectors, check_embedding_model
from tfmicle.score.model import ScoringModel
from tfmicle.score.sections import Part, Section

KEY = "similar_cases"   # its key in metrics.json


def check_index(path: str, model: ScoringModel) -> None:
    """Before scoring: the model can embed cases and the index at path is complete and
    was built by it (one-line CaseIndexError / ScoreError otherwise). Reads only the
    marker, not the embeddings."""
    check_embedding_model(model, "--similar")
    info = store.read_info(path)
    header = store.CaseIndex(path, np.zeros((0, 0), np.float32), [], [], {},
                             str(info.get("model_fingerprint")), info.get("model_version"), info)
    store.check_matches(header, model.path, model.version)


def precision_at_k(reference: np.ndarray, reference_labels: np.ndarray,
                   reference_ids: Sequence[str], queries: np.ndarray, query_labels: np.ndarray,
                   query_ids: Sequence[str], k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """reference [N, D] unit rows with labels [N] (int; any value, compared for equality)
    and case ids [N] (unique); queries [Q, D] with labels [Q] and case ids [Q] ->
    (precision@k [Q] float64: the share of the query's k nearest reference cases, the one
    with its own case id excluded, that share its label (of min(k, candidates) found);
    chance [Q] float64: the share of its label among those candidates; self [Q] bool:
    whether its own case was in the reference and so excluded)."""
    row_of = {c: i for i, c in enumerate(reference_ids)}
    own = np.array([row_of.get(c, -1) for c in query_ids], np.int64)
    # one more than k: at most one row (the query's own case) is dropped
    rows, _ = cosine_top_k(reference, queries, k + 1)
    counts = {y: int(n) for y, n in zip(*np.unique(reference_labels, return_counts=True))}
    n = len(reference_ids)
    precision = np.full(len(query_ids), np.nan)
    chance = np.full(len(query_ids), np.nan)
    for j, y in enumerate(query_labels):
        found = [r for r in rows[j] if r != own[j]][:k]
        if found:
            precision[j] = float(np.mean(reference_labels[found] == y))
        excluded = own[j] >= 0
        same = counts.get(y, 0) - int(excluded and reference_labels[own[j]] == y)
        if n - excluded > 0:
            chance[j] = same / (n - excluded)
    return precision, chance, own >= 0


def _ci_of(values: np.ndarray, labels: np.ndarray, classes: Sequence[int], replicates: int,
           seed: int) -> dict:
    """{"all": [low, high], class: [low, high]}: percentile bootstrap of the mean of values
    (per query) over all queries and over each class's, resampling query cases."""
    from tfmicle import metrics as M
    if replicates <= 0:
        return {}

    def stat(rows: np.ndarray) -> dict:
        v, y = values[rows], labels[rows]
        out = {"all": float(np.mean(v))}
        for c in classes:
            out[str(c)] = float(np.mean(v[y == c])) if np.any(y == c) else np.nan
        return out
    return M.bootstrap_ci(stat, [np.array([i]) for i in range(len(values))], replicates, seed)


def similar_metrics(run, model: ScoringModel, index: store.CaseIndex, k: int, replicates: int,
                    seed: int) -> dict | None:
    """metrics.json's ``similar_cases`` for one scored run (with embeddings), or None when
    none of its cases is labelled."""
    cases, emb, labels = case_vectors(run.pred)
    keep = np.flatnonzero(labels >= 0)
    if not len(keep):
        return None
    names = list(model.class_names)
    ref_labels = np.array([names.index(v) if v in names else -2 for v in index.labels], np.int64)
    y = labels[keep]
    prec, chance, self_found = precision_at_k(index.embeddings, ref_labels, index.case_ids,
                                              emb[keep], y, [cases[i] for i in keep], k)
    present = [c for c in range(len(names)) if np.any(y == c)]
    ci = _ci_of(prec, y, present, replicates, seed)
    nan2 = [float("nan")] * 2
    per_class = {}
    for c in range(len(names)):
        m = y == c
        per_class[names[c]] = {
            "queries": int(m.sum()), "reference_cases": int(np.sum(ref_labels == c)),
            "precision_at_k": float(np.mean(prec[m])) if m.any() else None,
            "precision_at_k_ci": ci.get(str(c), nan2) if m.any() and ci else None,
            "chance": float(np.mean(chance[m])) if m.any() else None}
    # macro: each class present among the queries counts once, whatever its prevalence
    macro = [c for c in per_class.values() if c["queries"]]
    return {"index": index.path, "k": k, "index_cases": index.count,
            "index_model_version": index.model_version, "queries": int(len(keep)),
            "unlabelled_queries": int(len(cases) - len(keep)),
            "excluded_same_case": int(self_found.sum()),
            "precision_at_k": float(np.mean(prec)), "precision_at_k_ci": ci.get("all"),
            "chance": float(np.mean(chance)),
            "precision_at_k_macro": float(np.mean([c["precision_at_k"] for c in macro])),
            "chance_macro": float(np.mean([c["chance"] for c in macro])), "per_class": per_class}


class SimilarCases(Section):
    """--similar INDEX: precision@k of the index's nearest cases, per run with labels."""

    def compute(self, runs):
        o = self.job.options
        part = Part()
        if not o.similar:
            return part
        model = self.job.model
        index = store.read_index(o.similar)
        store.check_matches(index, model.path, model.version)   # rebuilt since check_index?
        for r in runs:
            if r.metrics and r.pred.embeddings is not None:
                m = similar_metrics(r, model, index, o.similar_k, o.replicates, o.seed)
                if m:
                    part.metrics[r.name] = {KEY: m}
        return part

    def lines(self, runs, figures):
        out = []
        for r in runs:
            m = (r.metrics or {}).get(KEY)
            if m:
                out += report_lines(m, r.name if len(runs) > 1 else "")
        return out


def _pct(v: float | None, ci: Sequence[float] | None = None) -> str:
    if v is None:
        return "n/a"
    text = f"{100 * v:.1f} %"
    if ci and all(np.isfinite(ci)):
        text += f" ({100 * ci[0]:.1f}-{100 * ci[1]:.1f})"
    return text


def report_lines(m: dict, name: str = "") -> list[str]:
    """report.md's "Similar cases" section of one run's ``similar_cases``."""
    k = m["k"]
    title = f"## Similar cases{f' ({name})' if name else ''}"
    lines = [title, "",
             f"Index `{m['index']}` ({m['index_cases']} reference cases, model version "
             f"{m['index_model_version']}); {m['queries']} labelled query cases, each the mean of its "
             f"images' normalised embeddings. precision@{k}: the share of the {k} nearest reference "
             f"cases (cosine) with the query's class; chance: the share of that class among the "
             f"reference cases (a random ranking's expected precision@{k}). 95 % CIs bootstrap the "
             f"query cases. A reference case with the query's case id is excluded "
             f"({m['excluded_same_case']} queries had one).", "",
             f"| class | queries | reference cases | precision@{k} (95 % CI) | chance |",
             "|---|---:|---:|---:|---:|",
             f"| all | {m['queries']} | {m['index_cases']} | "
             f"{_pct(m['precision_at_k'], m['precision_at_k_ci'])} | {_pct(m['chance'])} |",
             f"| mean over classes | | | {_pct(m['precision_at_k_macro'])} | "
             f"{_pct(m['chance_macro'])} |"]
    for c, v in m["per_class"].items():
        lines.append(f"| {c} | {v['queries']} | {v['reference_cases']} | "
                     f"{_pct(v['precision_at_k'], v['precision_at_k_ci'])} | {_pct(v['chance'])} |")
    return lines + [""]


__all__ = ["SimilarCases", "check_index", "precision_at_k", "similar_metrics", "report_lines", "KEY"]
