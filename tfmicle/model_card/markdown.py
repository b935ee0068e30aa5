"""model_card.md: the card's JSON as a page a reviewer reads, section by section (model
details, intended use, training data, pretraining, evaluation, limitations). Rendered
from the JSON alone, so the two never disagree when tfmicle writes them."""
from __future__ import annotations

import math


def _f(v, digits: int = 3) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return "n/a" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _ci(ci) -> str:
    if not ci:
        return "point estimate"
    if isinstance(ci, dict):
        ci = (ci.get("lower_bound"), ci.get("upper_bound"))
    return f"{_f(ci[0])} to {_f(ci[1])}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows] + [""])


def _data_lines(td: dict) -> list[str]:
    lines = [f"Records: `{td.get('data_dir')}`"]
    src = td.get("source") or {}
    if src:
        lines[0] += f", converted from `{src.get('input')}` ({src.get('format')}"
        lines[0] += f", manifest sha256 `{str(src.get('sha256'))[:12]}…`)" if src.get("sha256") else ")"
    lines += ["", f"Trained on split `{td.get('train_split')}` at label fraction "
                  f"{_f(td.get('label_fraction'))}: {_f(td.get('train_cases'))} labelled cases, "
                  f"{_f(td.get('train_images'))} images; validated on `{td.get('eval_split')}`.", ""]
    splits, classes = td.get("splits") or {}, td.get("class_names") or []
    if splits:
        has_labels = any("label_counts" in s for s in splits.values())
        multi = any(isinstance(v, dict) for s in splits.values()
                    for v in (s.get("label_counts") or {}).values())
        head = ["split", "cases", "images", "patients"]
        if has_labels and not multi:
            head += [f"cases: {c}" for c in classes]
        rows = []
        for name, s in splits.items():
            row = [name, s.get("cases"), s.get("images"), s.get("patients")]
            if has_labels and not multi:
                row += [(s.get("label_counts") or {}).get(c) for c in classes]
            rows.append(row)
        lines += _table(head, rows)
        if not has_labels:
            lines += ["Cases per class: not recorded in dataset.json.", ""]
    else:
        lines += ["Counts per split: unknown (dataset.json unreadable).", ""]
    if td.get("train_images_per_class"):
        per = dict(zip(classes, td["train_images_per_class"])) \
            if isinstance(td["train_images_per_class"], list) else td["train_images_per_class"]
        lines += ["Labelled training images per class: "
                  + ", ".join(f"{k} {_f(v)}" for k, v in per.items()) + ".", ""]
    cols = td.get("metadata_columns")
    lines.append("Metadata columns: " + (", ".join(f"`{c}`" for c in cols) if cols else
                                         "none" if cols is not None else "unknown") + ".")
    dup, near = td.get("duplicates"), td.get("near_duplicates")
    if dup:
        lines.append("Duplicates removed by data_prep: " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in dup.items()) + ".")
    lines.append("Near-identical photo pairs: " + (", ".join(
        f"{k} {v}" for k, v in near.items() if k != "file") if near else "none listed") + ".")
    return lines + [""]


def _pretraining_lines(card: dict) -> list[str]:
    ext = card.get("tfmicle") or {}
    pre, ft = ext.get("pretraining") or {}, ext.get("finetuning") or {}
    lines = [f"Initialisation: {pre.get('summary')}.", ""]
    runs = [r for r in pre.get("runs") or [] if r.get("readable")]
    if runs:
        lines += _table(["run", "method", "data", "split", "steps", "batch", "init"],
                        [[f"`{r['path']}`", "SimCLRv2 import" if r.get("imported") else r.get("method"),
                          r.get("tfds") or r.get("data_dir"), r.get("train_split"), r.get("steps"),
                          r.get("batch_size"), r.get("init")] for r in runs])
    lines += ["Fine-tuning: " + ", ".join(f"{k.replace('_', ' ')} {_f(v, 6)}" for k, v in ft.items()
                                          if v is not None) + ".", ""]
    return lines


def _evaluation_lines(card: dict) -> list[str]:
    ext = card.get("tfmicle") or {}
    perf = card["quantitative_analysis"]["performance_metrics"]
    lines = ["| metric | value | 95 % CI | slice |", "|---|---|---|---|"]
    lines += [f"| {m['type']} | {_f(m['value'])} | {_ci(m['confidence_interval'])} | {m['slice']} |"
              for m in perf]
    lines.append("")
    val = ext.get("validation") or {}
    if val.get("note"):
        lines += [f"Validation (step {_f(val.get('step'))}): {val['note']}.", ""]
    cal = ext.get("calibration")
    if cal:
        t = cal.get("temperature")
        t = _f(t) if not isinstance(t, list) else ", ".join(_f(x) for x in t)
        b, a = cal.get("before") or {}, cal.get("after") or {}
        lines += [f"Calibration: {cal.get('method')}, T = {t}, fitted on `{cal.get('split')}` "
                  f"({_f(cal.get('num_images'))} images), image level: ECE {_f(b.get('ece'))} -> "
                  f"{_f(a.get('ece'))}, NLL {_f(b.get('nll'))} -> {_f(a.get('nll'))}, Brier "
                  f"{_f(b.get('brier'))} -> {_f(a.get('brier'))}.", ""]
    else:
        lines += ["Calibration: none (exported without `--calibrate`).", ""]
    held = ext.get("heldout")
    lines += ([f"Held-out: `{held['source']}`, {_f(held.get('num_cases'))} cases, "
               f"{_f(held.get('num_images'))} images (rows above marked held-out; bootstrap "
               "95 % CIs resample cases)."] if held else
              ["Held-out performance: not in this card (`python -m tfmicle.score --model-card` "
               "adds it)."]) + [""]
    sub = ext.get("subgroups") or {}
    lines += ["### Subgroups", "", sub.get("statement", "Subgroup performance is unknown."), ""]
    for name, a in (sub.get("attributes") or {}).items():
        if a.get("column") is None:
            continue
        keys = sorted({k for g in a["groups"].values() for k in g["metrics"]})
        lines += [f"{name} (column `{a['column']}`):", ""]
        lines += _table(["group", "cases", "images"] + keys,
                        [[v, g["num_cases"], g["num_images"]]
                         + [f"{_f(g['metrics'].get(k))} ({_ci(g['ci95'].get(k))})" for k in keys]
                         for v, g in a["groups"].items()])
    shift = ext.get("shift")
    if shift:
        lines += ["### Dataset shift", "", f"`{shift['primary']}` vs `{shift['compare']}` "
                  "(case level; the drop's CI resamples both sets' cases):", ""]
        lines += _table(["metric", "scored", "comparison", "drop", "95 % CI"],
                        [[k, m.get("primary"), m.get("compare"), m.get("drop"), _ci(m.get("ci95"))]
                         for k, m in (shift.get("metrics") or {}).items()])
    return lines


def render(card: dict) -> str:
    """The card as markdown."""
    d, p, c = card["model_details"], card["model_parameters"], card["considerations"]
    v = d.get("version") or {}
    lines = [f"# Model card: {d['name']}, version {v.get('name')}", "",
             "Generated by tfmicle from the training run and its records "
             f"({card.get('schema')}). Fields marked TO BE COMPLETED BY THE DEPLOYER are "
             "for whoever deploys the model to fill in.", "",
             "## Model details", "", d.get("overview", ""), "",
             f"- Version: {v.get('name')}, exported {v.get('date')}",
             "- Owners: " + "; ".join(f"{o.get('name')} ({o.get('contact')})" for o in d.get("owners", [])),
             "- License: " + "; ".join(x.get("custom_text") or x.get("identifier", "") for x in d.get("licenses", []))]
    lines += [f"- Reference: {r['reference']}" for r in d.get("references", [])]
    lines += ["", "## Intended use", ""]
    lines += [f"- Use: {u['description']}" for u in c.get("use_cases", [])]
    lines += [f"- Users: {u['description']}" for u in c.get("users", [])]
    lines += ["", "## Model parameters", "", f"- Architecture: {p.get('model_architecture')}",
              f"- Input: {p.get('input_format')}", f"- Output: {p.get('output_format')}", "",
              "## Training data", ""]
    lines += _data_lines((card.get("tfmicle") or {}).get("training_data") or {})
    lines += ["## Pretraining and fine-tuning", ""] + _pretraining_lines(card)
    lines += ["## Evaluation", ""] + _evaluation_lines(card)
    lines += ["## Limitations and caveats", ""]
    lines += [f"- {x['description']}" for x in c.get("limitations", [])]
    lines += ["", "## Trade-offs", ""] + [f"- {x['description']}" for x in c.get("tradeoffs", [])]
    lines += ["", "## Ethical considerations", ""]
    lines += [f"- {x['name']} Mitigation: {x['mitigation_strategy']}"
              for x in c.get("ethical_considerations", [])]
    return "\n".join(lines) + "\n"


__all__ = ["render"]
