"""Scoring: ``--explain N``. Grad-CAM overlays (the model's ``serving_explain``
signature) for the N most confident errors and the N most confident correct
predictions of a labelled source, written to <out>/explain/ and shown in the report.

Image level, from the probabilities written to predictions_images:
- multiclass: confidence = the top probability, correct = top class == label; the
  heatmap explains the predicted class;
- multilabel: every (image, class) with a definite label is a decision (p >= 0.5 means
  positive), confidence = max(p, 1 - p); the heatmap explains that class.
Ties are broken by row order. Map: docs/architecture.md."""
from __future__ import annotations

import logging
import os

from tfmicle import fileio
from tfmicle import model_format as mf
from tfmicle.score.model import ScoreError, ScoringModel
from tfmicle.score.report import csv_text
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.score")
EXPLAIN_DIR = "explain"


def select(task: str, probs, labels, n: int) -> list[dict]:
    """The n most confident errors, then the n most confident correct decisions:
    [{"kind": "error" | "correct", "row" (index into probs), "class", "confidence"}]."""
    import numpy as np
    p = np.asarray(probs, dtype=np.float64)
    if task == MULTICLASS:
        lab = np.asarray(labels).astype(np.int64).ravel()
        rows = np.flatnonzero(lab >= 0)
        cls = np.argmax(p[rows], axis=1)
        conf = p[rows, cls]
        ok = cls == lab[rows]
    else:
        lab = np.asarray(labels, dtype=np.float64).reshape(p.shape)
        rows, cls = np.nonzero((lab == 0) | (lab == 1))
        pc = p[rows, cls]
        conf = np.maximum(pc, 1 - pc)
        ok = (pc >= 0.5) == (lab[rows, cls] == 1)
    out = []
    for kind, mask in (("error", ~ok), ("correct", ok)):
        idx = np.flatnonzero(mask)
        idx = idx[np.argsort(-conf[idx], kind="stable")][:n]
        out += [{"kind": kind, "row": int(rows[i]), "class": int(cls[i]),
                 "confidence": float(conf[i])} for i in idx]
    return out


def _images_of(source, wanted: set[int]) -> dict[int, bytes]:
    """Encoded bytes of the wanted source rows (one pass, stops when all are found)."""
    found = {}
    for el in source.encoded().as_numpy_iterator():
        i = int(el["index"])
        if i in wanted:
            found[i] = el["image"]
            if len(found) == len(wanted):
                break
    return found


def explain(model: ScoringModel, scored, n: int) -> dict:
    """Writes <scored.out_dir>/explain/<kind>_<rank>.png and explanations.csv; returns
    {"items": [...], "csv": path} (items: picks plus image_id, label, predicted, peak,
    png)."""
    import numpy as np
    import tensorflow as tf
    from tfmicle.overlay import peak, side_by_side_png

    fn = model.explain_fn
    if fn is None:
        raise ScoreError(f"--explain: {model.path} was exported without the "
                         f"'{mf.EXPLAIN_SIGNATURE}' signature; re-export it with a current "
                         "tfmicle.export")
    pred, src = scored.pred, scored.pred.source
    labels = np.asarray(src.labels)[pred.rows]
    picks = select(model.task, pred.probs, labels, n)
    if not picks:
        return {"items": [], "csv": None}
    rows = [int(pred.rows[p["row"]]) for p in picks]
    images = _images_of(src, set(rows))
    out_dir = fileio.join(scored.out_dir, EXPLAIN_DIR)
    fileio.makedirs(out_dir)
    res = fn(**{mf.IMAGES_INPUT: tf.constant([images[r] for r in rows]),
                mf.CLASSES_INPUT: tf.constant([p["class"] for p in picks], tf.int32)})
    heat, pixels = res[mf.HEATMAP_OUTPUT].numpy(), res[mf.PIXELS_OUTPUT].numpy()
    names = model.class_names
    items, rank = [], {"error": 0, "correct": 0}
    for j, (p, r) in enumerate(zip(picks, rows)):
        rank[p["kind"]] += 1
        path = fileio.join(out_dir, f"{p['kind']}_{rank[p['kind']]}.png")
        fileio.write_bytes(path, side_by_side_png(pixels[j], heat[j]))
        lab = labels[p["row"]]
        if model.task == MULTICLASS:
            label = names[int(lab)]
            predicted = names[int(np.argmax(pred.probs[p["row"]]))]
        else:
            label = f"{names[p['class']]}={int(lab[p['class']])}"
            prob = float(pred.probs[p["row"], p["class"]])
            predicted = f"{names[p['class']]}={int(prob >= 0.5)}"
        pr, pc = peak(heat[j])
        items.append({**p, "image_id": src.image_ids[r], "case_id": src.case_ids[r],
                      "label": label, "predicted": predicted, "explained": names[p["class"]],
                      "peak_row": pr, "peak_col": pc, "png": path})
    csv_path = fileio.join(out_dir, "explanations.csv")
    cols = ["kind", "image_id", "case_id", "label", "predicted", "explained", "confidence",
            "peak_row", "peak_col", "png"]
    fileio.write_text(csv_path, csv_text(cols, (
        [repr(it[c]) if c == "confidence" else
         fileio.relpath(it[c], scored.out_dir) if c == "png" else it[c] for c in cols]
        for it in items)))
    return {"items": items, "csv": csv_path, "input_size": int(heat.shape[1])}


def cam_grid(size: int) -> int:
    """The side of Grad-CAM's grid for tfmicle's ResNet at this input size: the last
    block's stride is 8 with the small-image stem (<= 32 px: 32 px -> 4 x 4) and 32
    above (stem stride 2, max-pool, three stride-2 groups: 224 px -> 7 x 7)."""
    from tfmicle.models.resnet import small_stem
    return -(-size // (8 if small_stem(size) else 32))


def _sizes_line(size: int) -> str:
    from tfmicle.overlay import CONTOUR_LEVEL, MIN_SIDE, PANEL_ALPHA
    panel = size * max(1, -(-MIN_SIDE // size))
    g = cam_grid(size)
    return (f"Left: the image the model saw (the centre crop, resized to {size} px); right: "
            f"the heatmap of the explained class's evidence blended over it at alpha "
            f"{PANEL_ALPHA} (red = strongest) with a white outline where it reaches "
            f"{CONTOUR_LEVEL:g} of its maximum. Grad-CAM on the encoder's last convolutional "
            f"block gives a {g} x {g} grid (tfmicle's ResNet: input/8 up to 32 px, input/32 "
            f"above), interpolated to {size} x {size}; each panel is shown at {panel} x "
            f"{panel} px (nearest). Peak: (row, col) in the {size} px image.")


def section(runs: list, explained: dict, report_dir: str) -> list[str]:
    """The report's "Explanations" section: per source, a table with each overlay."""
    if not any(explained.get(r.name, {}).get("items") for r in runs):
        return []
    size = next(e["input_size"] for e in explained.values() if e.get("items"))
    lines = ["## Explanations (Grad-CAM)", "", _sizes_line(size), ""]
    for r in runs:
        items = explained.get(r.name, {}).get("items")
        if not items:
            continue
        lines += [f"### {r.name}", "", "| | image | label | predicted | confidence | peak | "
                  "overlay |", "|---|---|---|---|---|---|---|"]
        for it in items:
            rel = fileio.relpath(it["png"], report_dir).replace(os.sep, "/")
            lines.append(f"| {it['kind']} | `{it['image_id']}` | {it['label']} | "
                         f"{it['predicted']} | {it['confidence']:.3f} | "
                         f"({it['peak_row']}, {it['peak_col']}) | ![]({rel}) |")
        lines.append("")
    return lines


__all__ = ["EXPLAIN_DIR", "select", "explain", "cam_grid", "section"]
