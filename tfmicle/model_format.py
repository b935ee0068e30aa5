"""The exported-model format: one owner for what ``tfmicle.export`` writes and what
``serving`` and ``tfmicle.score`` read, as ``tfmicle/data/records.py`` is for the records.

A model repository (TF Serving's layout)::

    MODELS/<name>/<version>/          integer versions; the highest is the one served
        saved_model.pb, variables/
        assets/labels.txt             class names, one per line, in output index order
        assets/metadata.json          FORMAT, task, class names, image size, training run...

Contract of the SavedModel: signature ``serving_default`` takes ``images`` (1-D
tf.string, encoded images) and returns ``probabilities`` float32 [batch, K] (and
``embedding``); tfmicle's export also has ``serving_pixels``, ``serving_explain``
(Grad-CAM, below) and the ``predict_preprocessed`` function. The probabilities are
calibrated when the model was exported with ``--calibrate`` (metadata "calibration"). New versions must pass a smoke test on
``probe_images()`` before they are published or served.

This module imports no TensorFlow (numpy and Pillow only), so the server can use it
without pulling in training. Map: docs/architecture.md.
"""
from __future__ import annotations

import io
import json
import os
from typing import Sequence

SAVED_MODEL_FILE = "saved_model.pb"
SAVED_MODEL_TEXT_FILE = "saved_model.pbtxt"
ASSETS_DIR = "assets"
LABELS_FILE = os.path.join(ASSETS_DIR, "labels.txt")
METADATA_FILE = os.path.join(ASSETS_DIR, "metadata.json")
FORMAT = "tfmicle-classifier"
FORMAT_VERSION = 1

SIGNATURE = "serving_default"            # encoded images -> outputs
PIXELS_SIGNATURE = "serving_pixels"      # float RGB pixels -> outputs
PREPROCESSED_FUNCTION = "predict_preprocessed"  # pixels [B, S, S, 3], no preprocessing
IMAGES_INPUT = "images"
PROBABILITIES_OUTPUT = "probabilities"
EMBEDDING_OUTPUT = "embedding"
# Grad-CAM (optional; models exported before it lack it): images + classes [B] int32
# (-1 = the top class) -> probabilities, heatmap [B, S, S] in [0, 1], the explained
# class [B] and the model's input pixels [B, S, S, 3] (what the heatmap lies over).
EXPLAIN_SIGNATURE = "serving_explain"
CLASSES_INPUT = "classes"
HEATMAP_OUTPUT = "heatmap"
EXPLAINED_CLASS_OUTPUT = "explained_class"
PIXELS_OUTPUT = "pixels"


# --------------------------------------------------------------------------- versions

def list_versions(base: str | os.PathLike) -> list[int]:
    """Integer-named sub-folders of a model folder, highest first (hidden and temporary
    folders ignored; [] when base cannot be read)."""
    try:
        entries = list(os.scandir(base))
    except OSError:
        return []
    return sorted({int(e.name) for e in entries if e.name.isdigit() and e.is_dir()},
                  reverse=True)


def next_version(base: str | os.PathLike) -> int:
    """1 + the highest integer-named folder in base (1 when none)."""
    return max(list_versions(base), default=0) + 1


def has_saved_model(version_dir: str | os.PathLike) -> bool:
    return any(os.path.isfile(os.path.join(version_dir, f))
               for f in (SAVED_MODEL_FILE, SAVED_MODEL_TEXT_FILE))


def resolve_version(path: str) -> tuple[str, int | None]:
    """(version folder, version) of a version folder, or of a model folder (its highest
    integer version holding a SavedModel). FileNotFoundError when there is none."""
    if os.path.isfile(os.path.join(path, SAVED_MODEL_FILE)):
        base = os.path.basename(os.path.normpath(path))
        return path, int(base) if base.isdigit() else None
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model {path} not found")
    for v in list_versions(path):
        if os.path.isfile(os.path.join(path, str(v), SAVED_MODEL_FILE)):
            return os.path.join(path, str(v)), v
    raise FileNotFoundError(f"no SavedModel in {path} (expected {path}/<version>/"
                            f"{SAVED_MODEL_FILE})")


# --------------------------------------------------------------------------- assets

def write_labels(version_dir: str | os.PathLike, class_names: Sequence[str]) -> str:
    path = os.path.join(version_dir, LABELS_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(f"{c}\n" for c in class_names))
    return path


def read_labels(version_dir: str | os.PathLike) -> list[str] | None:
    """The class names of labels.txt (trailing blank lines dropped); None without it."""
    path = os.path.join(version_dir, LABELS_FILE)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f.read().splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def write_metadata(version_dir: str | os.PathLike, metadata: dict) -> str:
    path = os.path.join(version_dir, METADATA_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(metadata, f, indent=2)
    return path


def read_metadata(version_dir: str | os.PathLike) -> dict:
    """metadata.json ({} for a SavedModel without one: any model that follows the
    contract can be served and scored)."""
    path = os.path.join(version_dir, METADATA_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


# --------------------------------------------------------------------------- probes

def probe_images() -> list[bytes]:
    """A small PNG and a small JPEG of seeded random pixels (40 x 36): the smoke test
    every new version must pass (export's check, the server's load, scoring a model
    without labels.txt)."""
    import numpy as np
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (40, 36, 3), dtype=np.uint8)
    out = []
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


__all__ = ["SAVED_MODEL_FILE", "LABELS_FILE", "METADATA_FILE", "FORMAT", "FORMAT_VERSION",
           "SIGNATURE", "PIXELS_SIGNATURE", "PREPROCESSED_FUNCTION", "IMAGES_INPUT",
           "PROBABILITIES_OUTPUT", "EMBEDDING_OUTPUT",
           "EXPLAIN_SIGNATURE", "CLASSES_INPUT", "HEATMAP_OUTPUT", "EXPLAINED_CLASS_OUTPUT",
           "PIXELS_OUTPUT", "list_versions", "next_version",
           "has_saved_model", "resolve_version", "write_labels", "read_labels",
           "write_metadata", "read_metadata", "probe_images"]
