"""`python -m tfmicle.score`: batch-score held-out data with an exported SavedModel and
write predictions, metrics and a report.

    python -m tfmicle.score --model MODELS/<name>[/<version>] --data SRC --out DIR \\
        [--split test] [--compare SRC2 [--compare-split S]] [--format csv|parquet]

SRC is one of
- a records folder (a data_prep output, dataset.json inside): one split (--split);
- a folder of images (searched recursively); an image inside a first-level folder
  named like a model class is labeled with that class;
- a CSV manifest: column ``image`` (path, relative to the CSV's folder or --images),
  optional ``case_id`` (default: the image), optional ``label`` (a class name) for a
  multi-class model, or one column per class (1 / 0 / -1 / blank) for a multi-label one.

DIR gets predictions_images.csv (one row per image: ids, label, predicted class,
prob_<class>...), predictions_cases.csv (the mean of the image probabilities of each
case), skipped.csv (images that could not be read or decoded: listed, never fatal),
metrics.json when labels exist (tfmicle.metrics.evaluate: image and case level, bootstrap
95 % CIs resampling cases), and report.md with roc.png, pr.png and confusion.png.
--compare SRC2 scores a second dataset (e.g. an external test set) into DIR/compare/
and puts it beside the first in report.md and the figures.

Scoring preprocesses in tf.data with tfmicle's one eval preprocessing (the same
function the exported graph runs), in parallel with the model, and calls the model's
``predict_preprocessed``; a SavedModel without it (any model that follows the serving
contract) is called through ``serving_default`` with the encoded images.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Callable, Sequence

from tfmicle import cli
from tfmicle.tasks import MULTICLASS

log = logging.getLogger("tfmicle.score")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
FORMATS = ("csv", "parquet")


class ScoreError(ValueError):
    """A user mistake in the scoring input (one line, exit 2)."""


# --------------------------------------------------------------------------- model

@dataclass
class ScoringModel:
    path: str
    version: int | None
    class_names: list[str]
    task: str
    image_size: int | None
    metadata: dict
    _loaded: object = field(repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def preprocessed_fn(self):
        """predict_preprocessed (pixels [B, S, S, 3]) when the model has it."""
        if self.image_size and hasattr(self._loaded, "predict_preprocessed"):
            return self._loaded.predict_preprocessed
        return None

    @property
    def encoded_fn(self):
        return self._loaded.signatures["serving_default"]


def resolve_model_path(path: str) -> tuple[str, int | None]:
    """A version folder, or a model folder (its highest integer version)."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        base = os.path.basename(os.path.normpath(path))
        return path, int(base) if base.isdigit() else None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model {path} not found")
    versions = sorted((int(n) for n in os.listdir(path)
                       if n.isdigit() and os.path.isfile(os.path.join(path, n, "saved_model.pb"))),
                      reverse=True)
    if not versions:
        raise FileNotFoundError(f"no SavedModel in {path} (expected {path}/<version>/"
                                "saved_model.pb)")
    return os.path.join(path, str(versions[0])), versions[0]


def load_model(path: str) -> ScoringModel:
    """Loads an exported model (tfmicle.export's layout, or any SavedModel following
    the serving contract)."""
    import tensorflow as tf
    vdir, version = resolve_model_path(path)
    meta_path = os.path.join(vdir, "assets", "metadata.json")
    metadata = {}
    if os.path.isfile(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            metadata = json.load(f)
    loaded = tf.saved_model.load(vdir)
    if "serving_default" not in loaded.signatures:
        raise ScoreError(f"{vdir} has no serving_default signature")
    labels_path = os.path.join(vdir, "assets", "labels.txt")
    names = None
    if os.path.isfile(labels_path):
        with open(labels_path, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f]
        while names and not names[-1]:
            names.pop()
    names = names or metadata.get("class_names")
    if not names:
        out = _call_encoded(loaded.signatures["serving_default"], [_probe_png()])
        names = [str(i) for i in range(out.shape[1])]
    return ScoringModel(vdir, version, list(names), metadata.get("task", MULTICLASS),
                        metadata.get("image_size"), metadata, loaded)


def _probe_png() -> bytes:
    import numpy as np
    import tensorflow as tf
    return tf.io.encode_png(np.full((16, 16, 3), 128, np.uint8)).numpy()


def _call_encoded(fn, images):
    import tensorflow as tf
    (name, _), = fn.structured_input_signature[1].items()
    out = fn(**{name: tf.constant(list(images) if not tf.is_tensor(images) else images)})
    key = "probabilities" if "probabilities" in out else next(iter(out))
    return out[key].numpy()


# --------------------------------------------------------------------------- sources

@dataclass
class Source:
    """What to score: one row per image (ids, labels) plus how to read the bytes. A
    records source learns its rows while it is scored (one pass over the records)."""
    spec: str
    kind: str                      # records | folder | csv
    image_ids: list[str] | None
    case_ids: list[str] | None
    labels: object                 # multiclass: int array [N] (-1 unlabeled); multilabel: [N, K]
    paths: list[str] | None = None              # folder / csv
    records: tuple[str, str, int] | None = None  # (data_dir, split, dataset classes)
    expected: int | None = None    # records: images of the split per dataset.json
    convert_labels: Callable | None = None  # records: (label_class, label_multi) -> labels
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # id, case, reason

    def __len__(self) -> int:
        if self.image_ids is not None:
            return len(self.image_ids)
        return int(self.expected or 0)

    def encoded(self):
        """tf.data of dicts, in row order: index (int64), image (encoded string), and for
        records image_id, case_id, label_class, label_multi."""
        import tensorflow as tf
        if self.kind == "records":
            from tfmicle.data.pipeline import PipelineConfig, image_examples
            data_dir, split, k = self.records
            return image_examples(PipelineConfig(data_dir, split), k).enumerate().map(
                lambda i, el: {"index": i, **el})
        idx = tf.data.Dataset.range(len(self.paths))
        files = tf.data.Dataset.from_tensor_slices(tf.constant(self.paths, tf.string))
        return tf.data.Dataset.zip((idx, files)).map(
            lambda i, p: {"index": i, "image": tf.io.read_file(p)},
            num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)

    def set_rows(self, image_ids, case_ids, label_class, label_multi) -> None:
        """Records: the rows, in index order, from the record fields."""
        self.image_ids = [b.decode("utf-8", "replace") for b in image_ids]
        self.case_ids = [b.decode("utf-8", "replace") for b in case_ids]
        self.labels = self.convert_labels(label_class, label_multi)

    def read_rows(self) -> None:
        """Records: one pass over the split without decoding images (used when scoring
        could not account for every image)."""
        import numpy as np
        cols = {k: [] for k in ("image_id", "case_id", "label_class", "label_multi")}
        meta = self.encoded().map(lambda el: {k: el[k] for k in cols})
        for el in meta.as_numpy_iterator():
            for k in cols:
                cols[k].append(el[k])
        k = self.records[2]
        self.set_rows(cols["image_id"], cols["case_id"], np.asarray(cols["label_class"], np.int64),
                      np.asarray(cols["label_multi"], np.float64).reshape(-1, k))


def _multi_value(raw: str, where: str) -> float:
    s = (raw or "").strip()
    if s == "":
        return math.nan
    try:
        v = float(s)
    except ValueError:
        raise ScoreError(f"{where}: {raw!r} is not 1, 0, -1 or blank") from None
    if v not in (1.0, 0.0, -1.0):
        raise ScoreError(f"{where}: {raw!r} is not 1, 0, -1 or blank")
    return v


def _empty_labels(task: str, n: int, k: int):
    import numpy as np
    return np.full(n, -1, np.int64) if task == MULTICLASS else np.full((n, k), np.nan)


def records_source(data_dir: str, split: str, model: ScoringModel) -> Source:
    import numpy as np
    from tfmicle.data import records
    info = records.load_dataset_info(data_dir)
    splits = info.get("splits", {})
    if split not in splits:
        raise ScoreError(f"split '{split}' not in {data_dir} (has: {', '.join(splits)}); "
                         "choose one with --split")
    records.list_shards(data_dir, split)
    names = list(info.get("class_names", []))
    task = info.get("task", MULTICLASS)
    if names and task != model.task:
        raise ScoreError(f"{data_dir} is {task} but the model is {model.task}")
    missing = [n for n in names if n not in model.class_names]
    label_map = np.array([model.class_names.index(n) if n in model.class_names else -1
                          for n in names] + [-1], np.int64)
    k = max(len(names), 1)

    def unknown(name):
        return ScoreError(f"{data_dir}: class {name!r} is not one of the model's classes "
                          f"({', '.join(model.class_names)})")

    def convert(label_class, label_multi):
        n = len(label_class)
        if task == MULTICLASS:
            raw = np.asarray(label_class, np.int64)
            bad = [m for m in missing if np.any(raw == names.index(m))]
            if bad:
                raise unknown(bad[0])
            return np.where(raw >= 0, label_map[np.maximum(raw, 0)], -1) if n else raw
        if missing:
            raise unknown(missing[0])
        labels = np.full((n, model.num_classes), np.nan)
        if n and names:
            labels[:, label_map[:len(names)]] = np.asarray(label_multi,
                                                           np.float64)[:, :len(names)]
        return labels

    expected = splits[split].get("images")
    return Source(f"{data_dir} ({split})", "records", None, None, None,
                  records=(data_dir, split, k),
                  expected=int(expected) if expected is not None else None,
                  convert_labels=convert)


def folder_source(root: str, model: ScoringModel) -> Source:
    paths = []
    for d, dirs, files in os.walk(root):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                paths.append(os.path.join(d, f))
    if not paths:
        raise ScoreError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {root}")
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    labels = _empty_labels(model.task, len(paths), model.num_classes)
    if model.task == MULTICLASS:
        for i, r in enumerate(rel):
            top = r.split("/", 1)[0] if "/" in r else None
            if top in model.class_names:
                labels[i] = model.class_names.index(top)
    return Source(root, "folder", rel, list(rel), labels, paths=paths)


def csv_source(path: str, model: ScoringModel, images_root: str | None = None) -> Source:
    import numpy as np
    root = images_root or os.path.dirname(os.path.abspath(path))
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = reader.fieldnames or []
        rows = list(reader)
    col = "image" if "image" in cols else "path" if "path" in cols else None
    if col is None:
        raise ScoreError(f"{path}: no 'image' column (columns: {', '.join(cols) or 'none'})")
    multi_cols = [c for c in model.class_names if c in cols] if model.task != MULTICLASS else []
    n = len(rows)
    labels = _empty_labels(model.task, n, model.num_classes)
    image_ids, case_ids, paths, skipped = [], [], [], []
    keep = []
    for i, row in enumerate(rows):
        where = f"{path} row {i + 2}"
        rel = (row.get(col) or "").strip()
        if not rel:
            raise ScoreError(f"{where}: empty '{col}'")
        full = rel if os.path.isabs(rel) else os.path.join(root, rel)
        case = (row.get("case_id") or "").strip() or rel
        if model.task == MULTICLASS:
            lab = (row.get("label") or "").strip()
            if lab:
                if lab not in model.class_names:
                    raise ScoreError(f"{where}: unknown class {lab!r} (classes: "
                                     f"{', '.join(model.class_names)})")
                labels[i] = model.class_names.index(lab)
        else:
            for c in multi_cols:
                labels[i, model.class_names.index(c)] = _multi_value(row.get(c), f"{where} {c}")
        if not os.path.isfile(full):
            skipped.append((rel, case, "file not found"))
            continue
        keep.append(i)
        image_ids.append(rel)
        case_ids.append(case)
        paths.append(full)
    if not rows:
        raise ScoreError(f"{path} has no rows")
    return Source(path, "csv", image_ids, case_ids, labels[np.asarray(keep, np.int64)],
                  paths=paths, skipped=skipped)


def open_source(spec: str, model: ScoringModel, split: str | None = None,
                images_root: str | None = None) -> Source:
    """records folder | image folder | CSV manifest, by what spec is."""
    from tfmicle.data import records
    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, records.DATASET_JSON)):
            return records_source(spec, split or "test", model)
        return folder_source(spec, model)
    if os.path.isfile(spec):
        if spec.lower().endswith((".csv", ".tsv", ".txt")):
            return csv_source(spec, model, images_root)
        raise ScoreError(f"{spec}: expected a records folder, an image folder or a .csv "
                         "manifest")
    raise FileNotFoundError(f"data {spec} not found")


# --------------------------------------------------------------------------- predict

@dataclass
class Predictions:
    source: Source
    rows: object        # int [M]: indices into source rows that were scored
    probs: object       # float32 [M, K]
    skipped: list[tuple[str, str, str]]


def _decode_error(data: bytes) -> str:
    import tensorflow as tf
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except Exception as e:  # noqa: BLE001 - the message is what we want
        return _clean_tf_message(e)
    return "could not be decoded"


def _clean_tf_message(e: BaseException) -> str:
    """A TF op error as one short line (no function-node prefix or op suffix)."""
    import re
    msg = str(e).strip().splitlines()
    msg = msg[0] if msg else type(e).__name__
    msg = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", msg)
    msg = re.sub(r"\s*\[Op:\w+\]\s*$", "", msg)
    return msg[:200]


def predict(model: ScoringModel, source: Source, batch_size: int = 64,
            progress: Callable[[int], None] | None = None) -> Predictions:
    """Scores every image of source; unreadable / undecodable images are skipped and
    listed (with the reason)."""
    import numpy as np
    import tensorflow as tf
    from tfmicle.data.augment import decode_image, preprocess_eval

    fn = model.preprocessed_fn
    size = int(model.image_size) if fn is not None else 0
    meta_keys = ("image_id", "case_id", "label_class", "label_multi") \
        if source.kind == "records" else ()

    def prep(el):
        out = {"index": el["index"], **{k: el[k] for k in meta_keys}}
        if fn is not None:
            out["x"] = preprocess_eval(el["image"], size)
        else:  # decode once to find corrupt images (an output, so it runs); the model
            # decodes again itself
            out["decoded_height"] = tf.shape(decode_image(el["image"]))[0]
            out["x"] = el["image"]
        return out

    ds = source.encoded().map(prep, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=False).batch(batch_size).prefetch(2)
    rows, probs, meta = [], [], {k: [] for k in meta_keys}
    for batch in ds:
        x = batch["x"]
        out = fn(x)["probabilities"].numpy() if fn is not None else \
            _call_encoded(model.encoded_fn, x)
        rows.append(batch["index"].numpy())
        probs.append(out.astype(np.float32))
        for k in meta_keys:
            meta[k].append(batch[k].numpy())
        if progress:
            progress(len(out))
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    probs = np.concatenate(probs) if probs else np.zeros((0, model.num_classes), np.float32)
    if probs.shape[1] != model.num_classes:
        raise ScoreError(f"the model returns {probs.shape[1]} classes but labels.txt has "
                         f"{model.num_classes}")
    if source.kind == "records":
        complete = source.expected == len(rows) and np.array_equal(rows, np.arange(len(rows)))
        if complete:
            cat = {k: np.concatenate(v) if v else np.zeros(0) for k, v in meta.items()}
            source.set_rows(cat["image_id"], cat["case_id"], cat["label_class"],
                            cat["label_multi"].reshape(len(rows), source.records[2]))
        else:  # some image failed (or dataset.json is off): learn every row's ids
            source.read_rows()
    failed = sorted(set(range(len(source))) - set(rows.tolist()))
    skipped = list(source.skipped)
    if failed:
        reasons = _failure_reasons(source, failed)
        skipped += [(source.image_ids[i], source.case_ids[i], reasons[i]) for i in failed]
        log.warning("%d image(s) of %s could not be read or decoded: skipped (see "
                    "skipped.csv)", len(failed), source.spec)
        if progress:
            progress(len(failed))
    return Predictions(source, rows, probs, skipped)


def _failure_reasons(source: Source, failed: list[int]) -> dict[int, str]:
    import tensorflow as tf
    want = set(failed)
    out = {}
    if source.kind == "records":
        for el in source.encoded().as_numpy_iterator():
            if el["index"] in want:
                out[int(el["index"])] = _decode_error(el["image"])
        return out
    for i in failed:
        try:
            data = tf.io.read_file(source.paths[i]).numpy()
        except Exception as e:  # noqa: BLE001
            out[i] = f"unreadable: {_clean_tf_message(e)}"
            continue
        out[i] = _decode_error(data)
    return out


# --------------------------------------------------------------------------- writing

def _f(v) -> str:
    """Exact text of a float (shortest repr that reads back to the same value)."""
    v = float(v)
    return repr(v) if math.isfinite(v) else ""


def _label_text(task: str, class_names, label) -> str:
    if task == MULTICLASS:
        return class_names[int(label)] if int(label) >= 0 else ""
    return ""


def tables(model: ScoringModel, pred: Predictions) -> dict[str, tuple[list[str], list[list]]]:
    """{"predictions_images": (header, rows), "predictions_cases": ..., "skipped": ...}."""
    import numpy as np
    from tfmicle import metrics as M
    src, names, task = pred.source, model.class_names, model.task
    labels = np.asarray(src.labels)[pred.rows] if len(pred.rows) else np.asarray(src.labels)[:0]
    prob_cols = [f"prob_{c}" for c in names]
    label_cols = ["label"] if task == MULTICLASS else [f"label_{c}" for c in names]
    pred_col = ["predicted"] if task == MULTICLASS else []

    def label_values(lab):
        if task == MULTICLASS:
            return [_label_text(task, names, lab)]
        return [("" if math.isnan(v) else str(int(v))) for v in lab]

    def predicted(p):
        return [names[int(np.argmax(p))]] if task == MULTICLASS else []

    img_rows = []
    for j, r in enumerate(pred.rows):
        img_rows.append([src.image_ids[r], src.case_ids[r], *label_values(labels[j]),
                         *predicted(pred.probs[j]), *[_f(v) for v in pred.probs[j]]])
    case_ids = [src.case_ids[r] for r in pred.rows]
    cases, cprobs, clabels, counts = M.aggregate_cases(case_ids, pred.probs, labels)
    case_rows = []
    for c in range(len(cases)):
        case_rows.append([cases[c], int(counts[c]), *label_values(clabels[c]),
                          *predicted(cprobs[c]), *[_f(v) for v in cprobs[c]]])
    return {
        "predictions_images": (["image_id", "case_id", *label_cols, *pred_col, *prob_cols],
                               img_rows),
        "predictions_cases": (["case_id", "num_images", *label_cols, *pred_col, *prob_cols],
                              case_rows),
        "skipped": (["image_id", "case_id", "reason"], [list(s) for s in pred.skipped]),
    }


def write_table(path_stem: str, header: list[str], rows: list[list], fmt: str) -> str:
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        cols = {}
        for i, h in enumerate(header):
            vals = [r[i] for r in rows]
            if h.startswith("prob_"):
                vals = [float(v) if v != "" else None for v in vals]
            elif h == "num_images":
                vals = [int(v) for v in vals]
            cols[h] = vals
        pq.write_table(pa.table(cols) if rows else pa.table({h: [] for h in header}),
                       path_stem + ".parquet")
        return path_stem + ".parquet"
    with open(path_stem + ".csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path_stem + ".csv"


def parquet_available() -> bool:
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- report

@dataclass
class Scored:
    name: str
    pred: Predictions
    metrics: dict | None
    out_dir: str
    files: dict


def score_one(model: ScoringModel, source: Source, out_dir: str, fmt: str = "csv",
              batch_size: int = 64, replicates: int = 1000, seed: int = 0,
              auc_classes: Sequence[str] | None = None,
              progress: Callable[[int], None] | None = None, name: str = "") -> Scored:
    """Predicts one source and writes its tables and metrics.json into out_dir."""
    import numpy as np
    from tfmicle import metrics as M
    os.makedirs(out_dir, exist_ok=True)
    pred = predict(model, source, batch_size, progress)
    files = {}
    for stem, (header, rows) in tables(model, pred).items():
        if stem == "skipped":
            files[stem] = write_table(os.path.join(out_dir, stem), header, rows, "csv")
        else:
            files[stem] = write_table(os.path.join(out_dir, stem), header, rows, fmt)
    labels = np.asarray(source.labels)[pred.rows] if len(pred.rows) else None
    result = None
    if labels is not None and M.has_labels(model.task, labels):
        case_ids = [source.case_ids[r] for r in pred.rows]
        # The metrics see exactly the probabilities written (float32 -> float64).
        result = M.evaluate(model.task, pred.probs.astype(np.float64), labels, case_ids,
                            model.class_names, auc_classes, replicates, seed)
        result.update({"source": source.spec, "num_skipped": len(pred.skipped),
                       "model": model.path, "model_version": model.version})
        with open(os.path.join(out_dir, "metrics.json"), "w") as f:
            json.dump(M.to_json_safe(result), f, indent=2)
        files["metrics"] = os.path.join(out_dir, "metrics.json")
    else:
        log.info("%s has no labels: predictions only (no metrics.json)", source.spec)
    return Scored(name or source.spec, pred, result, out_dir, files)


def _curves(model: ScoringModel, scored: Scored, level: str = "case"):
    """{class index: (labels y, scores)} at case level, for the figures."""
    import numpy as np
    from tfmicle import metrics as M
    src, pred = scored.pred.source, scored.pred
    labels = np.asarray(src.labels)[pred.rows]
    probs = pred.probs.astype(np.float64)
    if level == "case":
        _, probs, labels, _ = M.aggregate_cases([src.case_ids[r] for r in pred.rows],
                                                probs, labels)
    y, valid = M.binary_targets(model.task, labels, model.num_classes)
    return {c: (y[valid[:, c], c], probs[valid[:, c], c]) for c in range(model.num_classes)}, \
        labels, probs


def write_figures(model: ScoringModel, runs: list[Scored], out_dir: str,
                  classes: Sequence[str]) -> dict[str, str]:
    """roc.png, pr.png (one panel per class, runs overlaid) and confusion.png
    (multi-class; one panel per run), at case level. {} without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.warning("matplotlib is not installed: report.md without figures "
                    "(pip install matplotlib)")
        return {}
    import numpy as np
    from tfmicle import metrics as M
    idx = [model.class_names.index(c) for c in classes]
    data = [(_curves(model, r)) for r in runs]
    files = {}
    ncol = min(len(idx), 4)
    nrow = int(math.ceil(len(idx) / ncol))
    styles = ["-", "--", ":", "-."]
    for kind in ("roc", "pr"):
        fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), squeeze=False)
        for ax, c in zip(axes.ravel(), idx):
            for (curves, _, _), run, ls in zip(data, runs, styles):
                y, s = curves[c]
                if y.size == 0 or y.min() == y.max():
                    continue
                if kind == "roc":
                    x, yy, _ = M.roc_curve(y, s)
                    v = M.roc_auc(y, s)
                else:
                    yy, x, _ = M.precision_recall_curve(y, s)
                    v = M.average_precision(y, s)
                ax.plot(x, yy, ls, drawstyle="steps-post" if kind == "pr" else "default",
                        label=f"{run.name} ({v:.3f})")
            if kind == "roc":
                ax.plot([0, 1], [0, 1], color="0.8", lw=0.8)
            ax.set_title(model.class_names[c], fontsize=9)
            ax.set_xlabel("false positive rate" if kind == "roc" else "recall", fontsize=8)
            ax.set_ylabel("true positive rate" if kind == "roc" else "precision", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right" if kind == "roc" else "lower left")
            else:
                ax.text(0.5, 0.5, "one outcome only", ha="center", va="center", fontsize=8,
                        color="0.5")
        for ax in axes.ravel()[len(idx):]:
            ax.axis("off")
        fig.suptitle(("ROC" if kind == "roc" else "Precision-recall") + " curves (case level)")
        fig.tight_layout()
        files[kind] = os.path.join(out_dir, f"{kind}.png")
        fig.savefig(files[kind], dpi=110)
        plt.close(fig)
    if model.task == MULTICLASS:
        k = model.num_classes
        fig, axes = plt.subplots(1, len(runs), figsize=(1.0 + 0.45 * k * len(runs) + 3 * len(runs),
                                                        1.0 + 0.45 * k + 2), squeeze=False)
        for ax, (curves, labels, probs), run in zip(axes.ravel(), data, runs):
            cm = M.confusion_matrix(labels, np.argmax(probs, axis=1), k)
            norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
            ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
            if k <= 15:
                for i in range(k):
                    for j in range(k):
                        ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                                color="white" if norm[i, j] > 0.5 else "black")
            ax.set_xticks(range(k), model.class_names, rotation=90, fontsize=7)
            ax.set_yticks(range(k), model.class_names, fontsize=7)
            ax.set_xlabel("predicted")
            ax.set_ylabel("true")
            ax.set_title(run.name, fontsize=9)
        fig.suptitle("Confusion matrix (case level, rows normalised)")
        fig.tight_layout()
        files["confusion"] = os.path.join(out_dir, "confusion.png")
        fig.savefig(files["confusion"], dpi=110)
        plt.close(fig)
    return files


def _cell(m: dict | None, level: str, key: str) -> str:
    if not m or m.get(level) is None:
        return "–"
    v = m[level].get(key)
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    ci = (m[level].get("ci95") or {}).get(key)
    if ci and all(c is not None and math.isfinite(c) for c in ci):
        return f"{v:.3f} ({ci[0]:.3f}–{ci[1]:.3f})"
    return f"{v:.3f}"


def write_report(model: ScoringModel, runs: list[Scored], out_dir: str, figures: dict,
                 auc_classes: Sequence[str]) -> str:
    lines = ["# Scoring report", ""]
    meta = model.metadata
    lines += [f"- Model: `{model.path}`" + (f" (version {model.version})" if model.version else ""),
              f"- Task: {model.task}, {model.num_classes} classes"
              + (f", image size {model.image_size}" if model.image_size else ""),
              ]
    if meta.get("config_hash"):
        lines.append(f"- Training config hash: `{meta['config_hash']}`, checkpoint step "
                     f"{meta.get('step')}")
    lines.append("")
    lines += ["| | " + " | ".join(r.name for r in runs) + " |",
              "|---|" + "---|" * len(runs)]
    lines.append("| source | " + " | ".join(f"`{r.pred.source.spec}`" for r in runs) + " |")
    lines.append("| images scored | " + " | ".join(str(len(r.pred.rows)) for r in runs) + " |")
    lines.append("| images skipped | " + " | ".join(str(len(r.pred.skipped)) for r in runs)
                 + " |")
    lines.append("| cases | " + " | ".join(str(r.metrics["num_cases"]) if r.metrics else "–"
                                           for r in runs) + " |")
    keys = ([("top1_accuracy", "top-1 accuracy"), ("top3_accuracy", "top-3 accuracy")]
            if model.task == MULTICLASS else [])
    keys += [("mean_auc", f"mean ROC AUC ({len(auc_classes)} classes)"),
             ("mean_pr_auc", f"mean PR AUC ({len(auc_classes)} classes)")]
    for level in ("case", "image"):
        for key, label in keys:
            lines.append(f"| {label}, {level} level | "
                         + " | ".join(_cell(r.metrics, level, key) for r in runs) + " |")
    lines += ["", "Values in brackets: bootstrap 95 % confidence interval (cases resampled).",
              "Case level: the mean of the image probabilities of a case.", ""]
    if any(r.metrics for r in runs):
        lines += ["## Per class (case level)", "",
                  "| class | " + " | ".join(f"ROC AUC {r.name} | PR AUC {r.name}" for r in runs)
                  + " |", "|---|" + "---|---|" * len(runs)]
        for c in model.class_names:
            cells = []
            for r in runs:
                for kind in ("roc_auc", "pr_auc"):
                    v = (r.metrics or {}).get("case", {}).get(kind, {}).get(c)
                    cells.append("n/a" if v is None or not math.isfinite(v) else f"{v:.3f}")
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
        lines.append("")
    if figures:
        lines += ["## Figures", ""]
        for kind, title in (("roc", "ROC curves"), ("pr", "Precision-recall curves"),
                            ("confusion", "Confusion matrix")):
            if kind in figures:
                lines += [f"### {title}", "", f"![{title}]({os.path.basename(figures[kind])})", ""]
    for r in runs:
        if r.pred.skipped:
            lines += [f"## Skipped images: {r.name}", "",
                      f"{len(r.pred.skipped)} image(s) could not be read or decoded "
                      f"(all in `{os.path.relpath(r.files['skipped'], out_dir)}`):", ""]
            lines += [f"- `{s[0]}`: {s[2]}" for s in r.pred.skipped[:20]]
            if len(r.pred.skipped) > 20:
                lines.append(f"- ... and {len(r.pred.skipped) - 20} more")
            lines.append("")
    lines += ["## Files", ""]
    for r in runs:
        for k, p in r.files.items():
            lines.append(f"- {r.name}: `{os.path.relpath(p, out_dir)}`")
    path = os.path.join(out_dir, "report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def score(model_path: str, data: str, out_dir: str, split: str | None = None,
          compare: str | None = None, compare_split: str | None = None, fmt: str = "csv",
          batch_size: int = 64, replicates: int = 1000, seed: int = 0,
          auc_classes: Sequence[str] | None = None, images_root: str | None = None,
          report: bool = True, progress_factory: Callable[[int, str], Callable] | None = None
          ) -> dict:
    """The whole scoring job; returns {"runs": [...], "report": path, ...}.
    progress_factory(total, name) -> callback(n_done) (and an optional .close())."""
    if fmt not in FORMATS:
        raise ScoreError(f"unknown format {fmt!r} (csv | parquet)")
    if fmt == "parquet" and not parquet_available():
        raise ScoreError("--format parquet needs pyarrow (pip install pyarrow); "
                         "or use --format csv")
    if batch_size < 1:
        raise ScoreError("--batch-size must be >= 1")
    model = load_model(model_path)
    classes = list(auc_classes) if auc_classes else list(model.class_names)
    for c in classes:
        if c not in model.class_names:
            raise ScoreError(f"--auc-classes: unknown class {c!r} (classes: "
                             f"{', '.join(model.class_names)})")
    sources = [("primary", open_source(data, model, split, images_root), out_dir)]
    if compare:
        sources.append(("compare", open_source(compare, model, compare_split or split,
                                               images_root), os.path.join(out_dir, "compare")))
    runs = []
    for name, src, d in sources:
        bar = progress_factory(len(src), name) if progress_factory else None
        try:
            runs.append(score_one(model, src, d, fmt, batch_size, replicates, seed, classes,
                                  bar, name))
        finally:
            if bar is not None and hasattr(bar, "close"):
                bar.close()
    out = {"model": model.path, "version": model.version, "runs": [
        {"name": r.name, "source": r.pred.source.spec, "scored": int(len(r.pred.rows)),
         "skipped": len(r.pred.skipped), "files": r.files, "metrics": r.metrics}
        for r in runs]}
    if report:
        figures = write_figures(model, [r for r in runs if r.metrics], out_dir, classes) \
            if any(r.metrics for r in runs) else {}
        out["report"] = write_report(model, runs, out_dir, figures, classes)
        out["figures"] = figures
    return out


# --------------------------------------------------------------------------- CLI

def build_parser() -> cli.ArgumentParser:
    p = cli.ArgumentParser(
        prog="python -m tfmicle.score",
        description="Batch-score a records split, an image folder or a CSV manifest with an "
                    "exported model: per-image and per-case predictions, metrics.json "
                    "(when labeled) and report.md with ROC / PR / confusion figures.")
    p.add_argument("--model", required=True, help="MODELS/<name> (highest version) or "
                                                  "MODELS/<name>/<version>")
    p.add_argument("--data", required=True, help="records folder, image folder or CSV manifest")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--split", help="records split to score (default: test)")
    p.add_argument("--compare", metavar="SRC2", help="a second dataset, reported side by side")
    p.add_argument("--compare-split", help="split of --compare records (default: --split)")
    p.add_argument("--images", help="root folder of the CSV manifest's image paths "
                                    "(default: the CSV's folder)")
    p.add_argument("--format", default="csv", choices=FORMATS,
                   help="prediction tables as csv (default) or parquet (needs pyarrow)")
    p.add_argument("--batch-size", type=int, default=64, help="images per model call")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="bootstrap replicates for the 95%% CIs (0 = none; default 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    p.add_argument("--auc-classes", help="comma-separated classes for the mean AUC "
                                         "(default: all), e.g. the CheXpert competition five")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.format == "parquet" and not parquet_available():
        sys.stderr.write("tfmicle.score: error: --format parquet needs pyarrow "
                         "(pip install pyarrow); or use --format csv\n")
        return cli.USAGE_EXIT
    cli.quiet_tensorflow()
    cli.setup_logging(args.verbose)

    def progress_factory(total: int, name: str):
        from tqdm import tqdm
        bar = tqdm(total=total, unit="img", desc=name, disable=args.quiet, file=sys.stderr,
                   dynamic_ncols=True)

        class Bar:
            def __call__(self, n):
                bar.update(n)

            def close(self):
                bar.close()
        return Bar()

    def body() -> int:
        auc = [c.strip() for c in args.auc_classes.split(",") if c.strip()] \
            if args.auc_classes else None
        result = score(args.model, args.data, args.out, args.split, args.compare,
                       args.compare_split, args.format, args.batch_size, args.bootstrap,
                       args.seed, auc, args.images, True, progress_factory)
        for run in result["runs"]:
            m = run["metrics"]
            summary = ""
            if m:
                c = m["case"]
                parts = [f"{k}={c[k]:.4f}" for k in ("top1_accuracy", "mean_auc")
                         if c.get(k) is not None and math.isfinite(c[k])]
                summary = " (case level: " + ", ".join(parts) + ")" if parts else ""
            print(f"{run['name']}: {run['scored']} images scored, {run['skipped']} skipped"
                  f"{summary}")
        print(result.get("report", args.out))
        return 0

    return cli.run("tfmicle.score", body, (ScoreError,))


if __name__ == "__main__":
    sys.exit(main())
