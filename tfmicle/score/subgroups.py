"""Scoring: metrics per patient subgroup (``--subgroups sex,age_band,site``).

A subgroup attribute names a metadata column of the scored images (records schema v2,
or any extra column of a CSV manifest; it is written to predictions_images.csv as
``meta_<column>``). Friendly names map onto each dataset's own column, the first one
present:

    sex         sex (HAM10000, ISIC 2020), Sex (CheXpert)
    age, age_band   age (HAM10000), age_approx (ISIC 2020), Age (CheXpert); banded
    site        localization (HAM10000), anatom_site_general_challenge (ISIC 2020)
    view        Frontal/Lateral (CheXpert)
    projection  AP/PA (CheXpert)

Any other name is a column name itself. Ages are banded into decades ("40-49") unless
band edges are given (``--age-bands 0,40,60``: "0-39", "40-59", "60+"; below the first
edge: "<0"). An empty or non-numeric age, and any empty value, is the group "unknown",
reported but never part of the largest gap; nor is a group with fewer than
``--subgroup-min-cases`` cases (default 5), whose metrics are noise.

Each subgroup's metrics are tfmicle.metrics.evaluate on the image rows of that group
(so case level = the mean of the case's images *in the group*), with case-bootstrap
CIs. The largest gap of an attribute is best minus worst group on the headline metric
(case level; ROC AUC, else top-1 accuracy), with a bootstrap CI of the difference that
resamples the cases of the two groups independently (metrics.difference_ci). Map:
docs/architecture.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from tfmicle.score.model import ScoreError

UNKNOWN = "unknown"
AGE_NAMES = ("age", "age_band")
FRIENDLY: dict[str, tuple[str, ...]] = {
    "sex": ("sex", "Sex", "gender", "Gender"),
    "age": ("age", "age_approx", "Age"),
    "age_band": ("age", "age_approx", "Age"),
    "site": ("localization", "anatom_site_general_challenge", "anatom_site_general", "site"),
    "view": ("Frontal/Lateral", "view"),
    "projection": ("AP/PA", "projection"),
}
GAP_METRICS = ("mean_auc", "top1_accuracy")   # headline metric, in order of preference
METRIC_LABELS = {"top1_accuracy": "top-1 accuracy", "mean_auc": "mean ROC AUC",
                 "mean_pr_auc": "mean PR AUC"}


def parse_subgroups(text: str | None) -> list[str]:
    """'sex, age_band,site' -> ['sex', 'age_band', 'site'] (no duplicates)."""
    names = [t.strip() for t in (text or "").split(",") if t.strip()]
    return list(dict.fromkeys(names))


def parse_age_bands(text: str | None) -> list[float] | None:
    """'0,40,60' -> [0.0, 40.0, 60.0] (strictly increasing); None: decades."""
    if text is None or not text.strip():
        return None
    try:
        edges = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ScoreError(f"--age-bands {text!r}: give increasing numbers, e.g. 0,40,60") from None
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ScoreError(f"--age-bands {text!r}: give increasing numbers, e.g. 0,40,60")
    return edges


def resolve_column(name: str, columns: Sequence[str]) -> str | None:
    """The metadata column a subgroup name stands for (None: the data has none)."""
    for c in FRIENDLY.get(name, ()) + (name,):
        if c in columns:
            return c
    lower = {c.lower(): c for c in columns}
    return lower.get(name.lower())


def _num(x: float) -> str:
    return f"{x:g}"


def age_band(text: str, edges: Sequence[float] | None = None) -> str:
    """An age as its band: decades '40-49' by default; with edges [e0, e1, ...],
    'e0-(e1-1)' ... 'eN+' and '<e0' below; 'unknown' when not a number."""
    try:
        age = float(text)
    except (TypeError, ValueError):
        return UNKNOWN
    if not math.isfinite(age):
        return UNKNOWN
    if edges is None:
        lo = int(math.floor(age / 10.0)) * 10
        return f"{lo}-{lo + 9}"
    if age < edges[0]:
        return f"<{_num(edges[0])}"
    for a, b in zip(edges, edges[1:]):
        if a <= age < b:
            return f"{_num(a)}-{_num(b - 1)}"
    return f"{_num(edges[-1])}+"


def group_values(name: str, raw: Sequence[str], edges: Sequence[float] | None) -> list[str]:
    """The subgroup of each row: banded for age names, else the text ('unknown' if '')."""
    if name in AGE_NAMES:
        return [age_band(v, edges) for v in raw]
    return [v.strip() or UNKNOWN for v in raw]


def _band_key(value: str):
    """Sort key: bands by their lower edge, other values as text, 'unknown' last."""
    if value == UNKNOWN:
        return (2, 0.0, value)
    head = value.lstrip("<").split("-")[0].rstrip("+")
    try:
        return (0, float(head) - (0.5 if value.startswith("<") else 0.0), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass
class Subgroups:
    """What --subgroups asks for: the attribute names and the age band edges."""
    names: list[str]
    age_edges: list[float] | None = None
    min_cases: int = 5          # smaller groups are reported but not part of the gap


def _scalars(task, labels, probs, auc_idx) -> dict:
    from tfmicle import metrics as M
    m = M.classification_metrics(task, labels, probs, auc_idx, per_class=False)
    m.pop("num_labeled")
    return m


def subgroup_metrics(task: str, probs, labels, case_ids: Sequence[str],
                     meta: Sequence[dict], columns: Sequence[str], class_names: Sequence[str],
                     want: Subgroups, auc_classes: Sequence[str] | None = None,
                     replicates: int = 1000, seed: int = 0) -> dict:
    """{name: {"column", "groups": {value: {...}}, "largest_gap": {...} | None}} for the
    image rows (probs [N, K] as written, labels, case_ids [N], meta [N] dicts).
    A name with no column in this data: {"column": None}."""
    import numpy as np
    from tfmicle import metrics as M
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels)
    case_ids = np.asarray([str(c) for c in case_ids], dtype=object)
    names = list(class_names)
    auc_idx = [names.index(c) for c in (auc_classes or names)]
    out = {}
    for name in want.names:
        col = resolve_column(name, columns)
        if col is None:
            out[name] = {"column": None, "groups": {}, "largest_gap": None}
            continue
        values = np.asarray(group_values(name, [m.get(col, "") for m in meta], want.age_edges),
                            dtype=object)
        groups, case_level = {}, {}
        for v in sorted(set(values.tolist()), key=_band_key):
            rows = np.flatnonzero(values == v)
            ev = M.evaluate(task, probs[rows], labels[rows], case_ids[rows].tolist(), names,
                            auc_classes, replicates, seed)
            groups[v] = {"num_images": ev["num_images"], "num_cases": ev["num_cases"],
                         "num_labeled_cases": ev["case"]["num_labeled"],
                         "case": _strip(ev["case"]), "image": _strip(ev["image"])}
            _, cp, cl, _ = M.aggregate_cases(case_ids[rows].tolist(), probs[rows], labels[rows])
            case_level[v] = (cl, cp)
        out[name] = {"column": col, "groups": groups,
                     "largest_gap": _largest_gap(task, groups, case_level, auc_idx,
                                                 replicates, seed, want.min_cases)}
    return out


def _strip(level: dict) -> dict:
    """The scalar metrics of one level and their CIs (per-class AUCs left out)."""
    keep = ("top1_accuracy", "top3_accuracy", "mean_auc", "mean_pr_auc")
    out = {k: level[k] for k in keep if k in level}
    if "ci95" in level:
        out["ci95"] = {k: v for k, v in level["ci95"].items() if k in keep}
    return out


def _eligible(groups: dict, min_cases: int) -> dict:
    """The groups a gap may compare: known value, at least min_cases cases."""
    return {v: g for v, g in groups.items() if v != UNKNOWN and g["num_cases"] >= min_cases}


def headline_metric(groups: dict) -> str | None:
    """The metric the gap is taken on: the first of GAP_METRICS defined in two groups."""
    for key in GAP_METRICS:
        defined = [g for g in groups.values() if _finite(g["case"].get(key))]
        if len(defined) >= 2:
            return key
    return None


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def _largest_gap(task, groups, case_level, auc_idx, replicates, seed,
                 min_cases: int) -> dict | None:
    """Best minus worst eligible group (case level) on the headline metric, with the
    bootstrap CI of that difference (cases of each group resampled independently)."""
    import numpy as np
    from tfmicle import metrics as M
    groups = _eligible(groups, min_cases)
    key = headline_metric(groups)
    if key is None:
        return None
    vals = {v: g["case"][key] for v, g in groups.items() if _finite(g["case"].get(key))}
    best = max(vals, key=lambda v: (vals[v], v))
    worst = min(vals, key=lambda v: (vals[v], v))
    gap = {"metric": key, "level": "case", "min_cases": min_cases, "best": best, "worst": worst,
           "best_value": vals[best], "worst_value": vals[worst],
           "difference": vals[best] - vals[worst], "ci95": None}
    if replicates > 0:
        (lb, pb), (lw, pw) = case_level[best], case_level[worst]
        ci = M.difference_ci(
            lambda r: _scalars(task, lb[r], pb[r], auc_idx),
            [np.array([i]) for i in range(len(pb))],
            lambda r: _scalars(task, lw[r], pw[r], auc_idx),
            [np.array([i]) for i in range(len(pw))], replicates, seed)
        gap["ci95"] = ci.get(key)
    return gap


def largest_gap_overall(result: dict) -> tuple[str, dict] | None:
    """(attribute, gap) with the largest difference among the attributes, comparing
    like with like: the attributes whose gap uses the most preferred metric."""
    gaps = [(n, r["largest_gap"]) for n, r in result.items() if r.get("largest_gap")]
    if not gaps:
        return None
    for key in GAP_METRICS:
        same = [(n, g) for n, g in gaps if g["metric"] == key]
        if same:
            return max(same, key=lambda ng: ng[1]["difference"])
    return None


def beyond_noise(gap: dict) -> bool | None:
    """Whether a gap is a finding: its bootstrap 95 % CI excludes 0 (None: no CI)."""
    ci = gap.get("ci95")
    if not ci or not all(_finite(c) for c in ci):
        return None
    return bool(ci[0] > 0 or ci[1] < 0)


def _gap_text(name: str, gap: dict) -> str:
    return (f"{METRIC_LABELS[gap['metric']]} (case level) by {name}: {gap['best']} "
            f"{gap['best_value']:.3f} vs {gap['worst']} {gap['worst_value']:.3f}, difference "
            f"{fmt_ci(gap['difference'], gap['ci95'])}")


def _verdict(gap: dict) -> str:
    found = beyond_noise(gap)
    if found is None:
        return "no CI (bootstrap off), so not judged"
    return ("a gap beyond noise (the 95 % CI excludes 0)" if found else
            "no gap beyond noise (the 95 % CI includes 0)")


def flag_lines(result: dict, run_name: str) -> list[str]:
    """The report's first lines on subgroups: the largest gap over the attributes and
    whether it is a finding (its CI excludes 0) or "no gap beyond noise"; when it is
    noise, the largest gap of another attribute that is beyond noise, if any."""
    found = largest_gap_overall(result)
    if not found:
        return []
    name, gap = found
    text = f"**Largest subgroup gap ({run_name}):** {_gap_text(name, gap)}: {_verdict(gap)}."
    if not beyond_noise(gap):
        other = [(n, r["largest_gap"]) for n, r in result.items()
                 if r.get("largest_gap") and beyond_noise(r["largest_gap"])]
        if other:
            n, g = max(other, key=lambda ng: ng[1]["difference"])
            text += f" Beyond noise: {_gap_text(n, g)}."
    return [text, ""]


def report_lines(result: dict, task: str, run_name: str) -> list[str]:
    """Markdown: one table per attribute (groups, cases, images, metrics with CIs)."""
    from tfmicle.tasks import MULTICLASS
    keys = (["top1_accuracy"] if task == MULTICLASS else []) + ["mean_auc", "mean_pr_auc"]
    lines = [f"## Subgroups: {run_name}", "",
             "Case level within each group (the mean of the case's images in the group); "
             "brackets: bootstrap 95 % CI resampling the group's cases. The largest gap "
             "compares known groups of at least the minimum number of cases.", ""]
    for name, r in result.items():
        if r["column"] is None:
            lines += [f"### {name}", "", f"No metadata column for `{name}` in this data.", ""]
            continue
        lines += [f"### {name} (column `{r['column']}`)", "",
                  "| group | cases | images | " + " | ".join(METRIC_LABELS[k] for k in keys)
                  + " |", "|---|---|---|" + "---|" * len(keys)]
        for v, g in r["groups"].items():
            cells = [fmt_ci(g["case"].get(k), (g["case"].get("ci95") or {}).get(k)) for k in keys]
            lines.append(f"| {v} | {g['num_cases']} | {g['num_images']} | "
                         + " | ".join(cells) + " |")
        gap = r["largest_gap"]
        if not gap:
            lines += ["", "Largest gap: none (fewer than two groups with a defined metric "
                          "and enough cases)."]
        if gap:
            lines += ["", f"Largest gap: {METRIC_LABELS[gap['metric']]} {gap['best']} "
                          f"{gap['best_value']:.3f} vs {gap['worst']} {gap['worst_value']:.3f}, "
                          f"difference {fmt_ci(gap['difference'], gap['ci95'])}: "
                          f"{_verdict(gap)}."]
        lines.append("")
    return lines


def fmt_ci(v, ci) -> str:
    if not _finite(v):
        return "n/a"
    if ci and all(_finite(c) for c in ci):
        sep = " to " if ci[0] < 0 else "–"    # an en dash after a minus sign reads badly
        return f"{v:.3f} ({ci[0]:.3f}{sep}{ci[1]:.3f})"
    return f"{v:.3f}"


__all__ = ["Subgroups", "parse_subgroups", "parse_age_bands", "resolve_column", "age_band",
           "group_values", "subgroup_metrics", "largest_gap_overall", "beyond_noise",
           "flag_lines", "report_lines",
           "headline_metric", "fmt_ci", "FRIENDLY", "UNKNOWN"]
