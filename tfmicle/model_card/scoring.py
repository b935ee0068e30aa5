"""What ``tfmicle.score --model-card`` adds to a copy of a version's card: held-out
performance (case level, with the bootstrap CIs of metrics.json), the subgroup tables
with each attribute's largest gap and its CI (``--subgroups``), and the shift between
the scored and the comparison data (``--compare``). The version's own card is never
changed: the copy goes to score's output folder."""
from __future__ import annotations

import copy

from tfmicle.model_card.build import SUBGROUPS_UNKNOWN, metric

SKIP = ("num_labeled", "roc_auc", "pr_auc", "ci95")  # not scalar metrics of a level


def _scalars(level: dict) -> dict:
    return {k: v for k, v in level.items() if k not in SKIP and isinstance(v, (int, float))}


def _heldout(metrics: dict, source: str) -> tuple[dict, list[dict]]:
    case = metrics.get("case") or {}
    ci = case.get("ci95") or {}
    values = {k: v for k, v in _scalars(case).items()   # top-3 of three classes is always 1
              if not ("top3" in k and len(metrics.get("class_names") or []) <= 3)}
    perf = [metric(k, v, f"held-out {source}, case level", ci.get(k)) for k, v in values.items()]
    cal = (metrics.get("calibration") or {}).get("case") or {}
    if "ece" in cal:
        perf.append(metric("ece", cal["ece"], f"held-out {source}, case level",
                           (cal.get("ci95") or {}).get("ece")))
    block = {"source": source, "num_cases": metrics.get("num_cases"),
             "num_images": metrics.get("num_images"), "level": "case", "metrics": values,
             "ci95": {k: ci.get(k) for k in values}, "bootstrap": metrics.get("bootstrap"),
             "calibration": {k: cal.get(k) for k in ("ece", "brier", "nll", "ci95")} if cal else None}
    return block, perf


def _subgroups(result: dict, source: str) -> tuple[dict, list[dict], str]:
    attrs, perf, found, missing = {}, [], [], []
    for name, r in result.items():
        if r.get("column") is None:
            missing.append(name)
            attrs[name] = {"column": None, "groups": {}, "largest_gap": None}
            continue
        groups = {}
        for value, g in (r.get("groups") or {}).items():
            case = g.get("case") or {}
            groups[value] = {"num_cases": g.get("num_cases"), "num_images": g.get("num_images"),
                             "metrics": _scalars(case), "ci95": case.get("ci95") or {}}
        gap = r.get("largest_gap")
        attrs[name] = {"column": r["column"], "groups": groups, "largest_gap": gap}
        key = gap["metric"] if gap else None
        for value, g in groups.items():
            if key in g["metrics"]:
                perf.append(metric(key, g["metrics"][key], f"held-out {source}, {name} = "
                                   f"{value}, case level", g["ci95"].get(key)))
        if gap:
            ci = gap.get("ci95")
            ci_text = f" (95 % CI {ci[0]:.3f} to {ci[1]:.3f})" if ci and None not in ci else \
                " (no CI)"
            found.append(f"{name}: {gap['metric']} {gap['best']} {gap['best_value']:.3f} vs "
                         f"{gap['worst']} {gap['worst_value']:.3f}, difference "
                         f"{gap['difference']:.3f}{ci_text}")
        else:
            found.append(f"{name}: no gap measured (fewer than two groups with enough cases)")
    text = f"Subgroup performance measured on {source}: " + "; ".join(found) + "."
    if missing:
        text += (f" {SUBGROUPS_UNKNOWN} for {', '.join(missing)}: the scored data has no such "
                 "metadata column.")
    return {"evaluated": True, "source": source, "attributes": attrs, "statement": text}, perf, text


def _shift(summary: dict, source: str, compare: str) -> tuple[dict, list[dict], str]:
    perf, parts = [], []
    for key, m in (summary.get("metrics") or {}).items():
        perf.append(metric(key, m.get("compare"), f"comparison {compare}, case level"))
        ci = m.get("ci95")
        verdict = ("no CI" if m.get("exceeds_ci") is None else
                   "beyond noise" if m["exceeds_ci"] else "within noise")
        drop = m.get("drop")
        parts.append(f"{key} {m.get('primary'):.3f} -> {m.get('compare'):.3f} (drop "
                     f"{drop:.3f}{f', 95 % CI {ci[0]:.3f} to {ci[1]:.3f}' if ci else ''}: "
                     f"{verdict})" if drop is not None else f"{key}: n/a")
    text = f"Dataset shift from {source} to {compare}, case level: " + "; ".join(parts) + "."
    return {"primary": source, "compare": compare, **summary}, perf, text


def add_scoring(card: dict, metrics: dict, source: str, shift: dict | None = None,
                compare: str | None = None) -> dict:
    """A copy of card with score's results added. metrics: the primary run's metrics.json
    (with "subgroups" when --subgroups ran); shift: shift.json's summary (--compare)."""
    out = copy.deepcopy(card)
    ext, qa, cons = out.setdefault("tfmicle", {}), out["quantitative_analysis"], out["considerations"]
    ext["heldout"], perf = _heldout(metrics, source)
    limitations = cons["limitations"]
    if metrics.get("subgroups"):
        ext["subgroups"], more, text = _subgroups(metrics["subgroups"], source)
        perf += more
        limitations[:] = [lim for lim in limitations
                          if not lim["description"].startswith(SUBGROUPS_UNKNOWN)]
        limitations.insert(0, {"description": text})
    if shift:
        ext["shift"], more, text = _shift(shift, source, compare or "the comparison data")
        perf += more
        limitations.append({"description": text})
    qa["performance_metrics"] = qa["performance_metrics"] + perf
    return out


__all__ = ["add_scoring"]
